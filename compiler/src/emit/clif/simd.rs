//! Helpers every kernel family shares, and no kernel: register-blocked passes of
//! vector accumulators over output channels (dense and window kernels), copies,
//! reductions along a stride. Imports no kernel file.

use super::fx::{Addr, Fx};
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::Variable;
use kerac::Act;

/// Accumulators per pass. Cranelift loads each weight vector into a register of its
/// own, so accumulators, weights and the broadcast input must fit x86-64's 16 vector
/// registers: 6 measured fastest (8 spills, 4 leaves the loads under-used).
const MAX_ACC: usize = 6;

/// Copies `n` floats.
pub(super) fn copy(fx: &mut Fx, from: Addr, to: Addr, n: usize) {
    fx.chunks(n, |fx, ty, ix| {
        let a = fx.ix(from, ix);
        let v = fx.load(ty, a);
        let b = fx.ix(to, ix);
        fx.store(v, b);
    });
}

/// Floats at `.0 + t * .1` for `t = 0, 1, ...`.
pub(super) type Stream = (Addr, usize);

/// Columns `start..` in accumulators of the given widths (vectors, then single floats).
pub(super) struct Pass {
    start: usize,
    widths: Vec<usize>,
}

impl Pass {
    pub(super) fn cols(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.widths.iter().scan(self.start, |c, &w| {
            let col = *c;
            *c += w;
            Some((col, w))
        })
    }
}

pub(super) fn passes(n: usize, lanes: usize) -> Vec<Pass> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let mut widths = Vec::new();
        let mut col = start;
        while col < n && widths.len() < MAX_ACC {
            let w = if n - col >= lanes { lanes } else { 1 };
            widths.push(w);
            col += w;
        }
        out.push(Pass { start, widths });
        start = col;
    }
    out
}

/// Accumulators of a pass set from `init` (column 0 of the row) or zero.
pub(super) fn init(fx: &mut Fx, pass: &Pass, from: Option<Addr>, zero: f32) -> Vec<Variable> {
    pass.cols()
        .map(|(col, w)| {
            let ty = fx.ty(w);
            let v = match from {
                Some(a) => fx.load(ty, a.add(col)),
                None => fx.splat(ty, zero),
            };
            fx.var(v)
        })
        .collect()
}

/// `acc[col] += x[t * x_step] * w[t * w_step + col]` for `t` in `0..len`.
pub(super) fn axpy(fx: &mut Fx, pass: &Pass, acc: &[Variable], x: Stream, w: Stream, len: usize) {
    fx.for_n(len, |fx, t| {
        let xa = fx.at(x.0, &[(t, x.1)]);
        let xs = fx.load(types::F32, xa);
        let wa = fx.at(w.0, &[(t, w.1)]);
        let mut splats: Vec<(Type, Value)> = Vec::new();
        for ((col, width), &var) in pass.cols().zip(acc) {
            let ty = fx.ty(width);
            let xv = match splats.iter().find(|(t, _)| *t == ty) {
                Some(&(_, v)) => v,
                None => {
                    let v = fx.splat_value(ty, xs);
                    splats.push((ty, v));
                    v
                }
            };
            let wv = fx.load(ty, wa.add(col));
            let a = fx.b.use_var(var);
            let r = fx.fma(xv, wv, a);
            fx.b.def_var(var, r);
        }
    });
}

/// `acc[col] = f(acc[col], x[t * x_step + col], w[t * w_step + col])` for `t` in
/// `0..len`: per-channel updates (depthwise convolution, pooling).
pub(super) fn lanewise(
    fx: &mut Fx,
    pass: &Pass,
    acc: &[Variable],
    x: Stream,
    w: Option<Stream>,
    len: usize,
    f: impl Fn(&mut Fx, Value, Value, Option<Value>) -> Value,
) {
    fx.for_n(len, |fx, t| {
        let xa = fx.at(x.0, &[(t, x.1)]);
        let wa = w.map(|(w, s)| fx.at(w, &[(t, s)]));
        for ((col, width), &var) in pass.cols().zip(acc) {
            let ty = fx.ty(width);
            let xv = fx.load(ty, xa.add(col));
            let wv = wa.map(|wa| fx.load(ty, wa.add(col)));
            let a = fx.b.use_var(var);
            let r = f(fx, a, xv, wv);
            fx.b.def_var(var, r);
        }
    });
}

/// Stores a pass's accumulators at `y` (column 0 of the row), scaled and activated.
pub(super) fn store(
    fx: &mut Fx,
    pass: &Pass,
    acc: &[Variable],
    scale: Option<f32>,
    act: Act,
    y: Addr,
) {
    for ((col, width), &var) in pass.cols().zip(acc) {
        let mut v = fx.b.use_var(var);
        if let Some(s) = scale {
            let ty = fx.ty(width);
            let s = fx.splat(ty, s);
            v = fx.b.ins().fmul(v, s);
        }
        let v = fx.act(act, v);
        fx.store(v, y.add(col));
    }
}

pub(super) fn f32c(fx: &mut Fx, c: f32) -> Value {
    fx.b.ins().f32const(c)
}

/// Sums `f(x[t * step])` for `t` in `0..n`, from `init`.
pub(super) fn reduce(
    fx: &mut Fx,
    x: Addr,
    step: usize,
    n: usize,
    init: Value,
    f: impl Fn(&mut Fx, Value, Value) -> Value,
) -> Value {
    let acc = fx.var(init);
    fx.for_n(n, |fx, t| {
        let a = fx.at(x, &[(t, step)]);
        let v = fx.load(types::F32, a);
        let cur = fx.b.use_var(acc);
        let r = f(fx, cur, v);
        fx.b.def_var(acc, r);
    });
    fx.b.use_var(acc)
}

/// `1 / max(|x|, 1e-12)` over `n` floats `x[t * step]`.
pub(super) fn inverse_norm(fx: &mut Fx, x: Addr, step: usize, n: usize) -> Value {
    let zero = f32c(fx, 0.0);
    let sum = reduce(fx, x, step, n, zero, |fx, s, v| {
        let v2 = fx.b.ins().fmul(v, v);
        fx.b.ins().fadd(s, v2)
    });
    let root = fx.b.ins().sqrt(sum);
    let tiny = f32c(fx, 1e-12);
    let d = fx.max(root, tiny);
    let one = f32c(fx, 1.0);
    fx.b.ins().fdiv(one, d)
}
