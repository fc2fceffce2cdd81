//! Each plan step as Cranelift IR, with the step's parameters as constants: the
//! dispatch, the register-blocked passes of vector accumulators the dense and window
//! kernels share (output channels in registers), and the elementwise kernels. Windows
//! are in `kernels_window.rs`, normalisations and attention in `kernels_norm.rs`, the
//! recurrence in `kernels_recurrent.rs`.

use super::act::Tape;
use super::fx::{Addr, Fx};
use crate::plan::{Kernel, Plan, Step};
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::Variable;
use kerac::merge::{Fold, RANK};
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

/// Emits one plan step.
pub(super) fn step(fx: &mut Fx, plan: &Plan, step: &Step) {
    let arena = fx.arena;
    let value = |id: usize| Addr {
        base: arena,
        off: plan.values[id].offset as i64,
    };
    let weights = fx.weights;
    let weight = |id: usize| Addr {
        base: weights,
        off: plan.weights[id].offset as i64,
    };
    let x = step.inputs.first().map(|&v| value(v));
    let xs: Vec<Addr> = step.inputs.iter().map(|&v| value(v)).collect();
    let y = value(step.output);
    let x = x.unwrap_or(y);
    match &step.kernel {
        Kernel::Dense { p, w, b } => {
            let (k, n) = (p.k, p.n);
            let (w, b) = (weight(*w), b.map(weight));
            let ps = passes(n, fx.lanes);
            fx.for_n(p.rows, |fx, r| {
                let xr = fx.at(x, &[(r, k)]);
                let yr = fx.at(y, &[(r, n)]);
                for pass in &ps {
                    let acc = init(fx, pass, b, 0.0);
                    axpy(fx, pass, &acc, (xr, 1), (w, n), k);
                    store(fx, pass, &acc, None, p.act, yr);
                }
            });
        }
        Kernel::Conv { p, w, b } => {
            super::kernels_window::conv(fx, p, x, weight(*w), b.map(weight), y)
        }
        Kernel::ConvTranspose { p, w, b } => {
            super::kernels_window::conv_transpose(fx, p, x, weight(*w), b.map(weight), y)
        }
        Kernel::Pool(p) => super::kernels_window::pool(fx, p, x, y),
        Kernel::GlobalPool(p) => {
            let c = p.channels;
            let ps = passes(c, fx.lanes);
            fx.for_n(p.batch, |fx, b| {
                let xb = fx.at(x, &[(b, p.positions * c)]);
                let yb = fx.at(y, &[(b, c)]);
                for pass in &ps {
                    let acc = init(fx, pass, None, if p.max { f32::NEG_INFINITY } else { 0.0 });
                    lanewise(fx, pass, &acc, (xb, c), None, p.positions, |fx, a, v, _| {
                        if p.max {
                            fx.max(v, a)
                        } else {
                            fx.b.ins().fadd(a, v)
                        }
                    });
                    let scale = (!p.max).then(|| 1.0 / p.positions as f32);
                    store(fx, pass, &acc, scale, Act::Linear, yb);
                }
            });
        }
        Kernel::ScaleShift { p, scale, offset } => {
            let (s, o) = (weight(*scale), weight(*offset));
            per_channel(fx, p, x, y, &[s, o], |fx, v, w| {
                let m = fx.b.ins().fmul(v, w[0]);
                fx.b.ins().fadd(m, w[1])
            });
        }
        Kernel::Prelu { p, alpha } => {
            per_channel(fx, p, x, y, &[weight(*alpha)], |fx, v, w| {
                let ty = fx.b.func.dfg.value_type(v);
                let zero = fx.splat(ty, 0.0);
                let pos = fx.max(v, zero);
                let nv = fx.b.ins().fneg(v);
                let neg = fx.max(nv, zero);
                let neg = fx.b.ins().fneg(neg);
                let m = fx.b.ins().fmul(w[0], neg);
                fx.b.ins().fadd(pos, m)
            });
        }
        Kernel::Activation(act) => {
            let n = plan.values[step.output].len;
            fx.chunks(n, |fx, ty, ix| {
                let a = fx.ix(x, ix);
                let v = fx.load(ty, a);
                let v = fx.act(*act, v);
                let b = fx.ix(y, ix);
                fx.store(v, b);
            });
        }
        Kernel::Softmax { p, log } => super::kernels_norm::softmax(fx, p, *log, x, y),
        Kernel::LayerNorm { p, gamma, beta } => {
            super::kernels_norm::layer_norm(fx, p, gamma.map(weight), beta.map(weight), x, y)
        }
        Kernel::GroupNorm { p, gamma, beta } => {
            super::kernels_norm::group_norm(fx, p, gamma.map(weight), beta.map(weight), x, y)
        }
        Kernel::UnitNorm(p) => super::kernels_norm::unit_norm(fx, p, x, y),
        Kernel::Merge {
            fold,
            shape,
            strides,
        } => merge(fx, *fold, shape, strides, &xs, y),
        Kernel::Concat { outer, parts } => {
            let row: usize = parts.iter().sum();
            fx.for_n(*outer, |fx, o| {
                let mut at = 0;
                for (xi, &n) in xs.iter().zip(parts) {
                    let from = fx.at(*xi, &[(o, n)]);
                    let to = fx.at(y.add(at), &[(o, row)]);
                    copy(fx, from, to, n);
                    at += n;
                }
            });
        }
        Kernel::BatchDot(p) => super::kernels_norm::batch_dot(fx, p, xs[0], xs[1], y),
        Kernel::StridedCopy(p) => {
            merge(fx, Fold::Add, &p.shape, &[p.strides], &[x.add(p.offset)], y)
        }
        Kernel::Resample(p) => super::kernels_window::resample(fx, p, x, y),
        Kernel::Gather { p, table } => super::kernels_window::gather(fx, p, x, weight(*table), y),
        Kernel::Attention { p, w } => {
            super::kernels_norm::attention(fx, p, [xs[0], xs[1], xs[2]], w.map(weight), y)
        }
        Kernel::Recurrent {
            p,
            u,
            rb,
            initial,
            masked,
        } => {
            let states = xs.len() - 1 - *masked as usize;
            let init = |i: usize| xs.get(i).copied().filter(|_| *initial && i <= states);
            let mask = xs.last().copied().filter(|_| *masked);
            super::kernels_recurrent::recurrent(
                fx,
                p,
                x,
                weight(*u),
                rb.map(weight),
                [init(1), init(2)],
                mask,
                y,
            )
        }
    }
}

/// `y[o, j, i] = f(x[o, j, i], params[..][j])` over a [`kerac::norm::Strided`] shape.
fn per_channel(
    fx: &mut Fx,
    p: &kerac::norm::Strided,
    x: Addr,
    y: Addr,
    params: &[Addr],
    f: impl Fn(&mut Fx, Value, &[Value]) -> Value,
) {
    let (n, inner) = (p.n, p.inner);
    fx.for_n(p.outer, |fx, o| {
        let xo = fx.at(x, &[(o, n * inner)]);
        let yo = fx.at(y, &[(o, n * inner)]);
        if inner == 1 {
            // Channels last: the parameters run alongside the values.
            fx.chunks(n, |fx, ty, ix| {
                let ws: Vec<Value> = params
                    .iter()
                    .map(|&a| {
                        let a = fx.ix(a, ix);
                        fx.load(ty, a)
                    })
                    .collect();
                let xa = fx.ix(xo, ix);
                let v = fx.load(ty, xa);
                let r = f(fx, v, &ws);
                let ya = fx.ix(yo, ix);
                fx.store(r, ya);
            });
        } else {
            fx.for_n(n, |fx, j| {
                let xj = fx.at(xo, &[(j, inner)]);
                let yj = fx.at(yo, &[(j, inner)]);
                let pj: Vec<Addr> = params.iter().map(|&a| fx.at(a, &[(j, 1)])).collect();
                fx.chunks(inner, |fx, ty, ix| {
                    let ws: Vec<Value> = pj.iter().map(|&a| fx.bcast(ty, a)).collect();
                    let xa = fx.ix(xj, ix);
                    let v = fx.load(ty, xa);
                    let r = f(fx, v, &ws);
                    let ya = fx.ix(yj, ix);
                    fx.store(r, ya);
                });
            });
        }
    });
}

fn fold(fx: &mut Fx, f: Fold, acc: Value, v: Value) -> Value {
    match f {
        Fold::Add | Fold::Average => fx.b.ins().fadd(acc, v),
        Fold::Subtract => fx.b.ins().fsub(acc, v),
        Fold::Multiply => fx.b.ins().fmul(acc, v),
        Fold::Maximum => fx.max(v, acc),
        Fold::Minimum => fx.min(v, acc),
        Fold::Divide => fx.b.ins().fdiv(acc, v),
    }
}

/// Elementwise folds over inputs with their own strides (broadcasting), and strided
/// copies (one input): contiguous inputs run as vectors over the flat length.
fn merge(
    fx: &mut Fx,
    f: Fold,
    shape: &[usize; RANK],
    strides: &[[usize; RANK]],
    xs: &[Addr],
    y: Addr,
) {
    let total: usize = shape.iter().product();
    let n = strides.len();
    let mut contiguous = [0; RANK];
    let mut step = 1;
    for i in (0..RANK).rev() {
        contiguous[i] = if shape[i] == 1 { 0 } else { step };
        step *= shape[i];
    }
    let plain = |s: &[usize; RANK]| (0..RANK).all(|i| shape[i] == 1 || s[i] == contiguous[i]);
    let average = (f == Fold::Average).then(|| 1.0 / n as f32);
    if strides.iter().all(plain) {
        fx.chunks(total, |fx, ty, ix| {
            let a = fx.ix(xs[0], ix);
            let mut acc = fx.load(ty, a);
            for &x in &xs[1..] {
                let a = fx.ix(x, ix);
                let v = fx.load(ty, a);
                acc = fold(fx, f, acc, v);
            }
            if let Some(s) = average {
                let s = fx.splat(ty, s);
                acc = fx.b.ins().fmul(acc, s);
            }
            let b = fx.ix(y, ix);
            fx.store(acc, b);
        });
        return;
    }
    let dims: Vec<usize> = (0..RANK).filter(|&d| shape[d] > 1).collect();
    nest(fx, shape, &dims, &mut Vec::new(), &mut |fx, idx| {
        let at = |fx: &mut Fx, base: Addr, s: &[usize; RANK]| {
            let terms: Vec<(Value, usize)> =
                dims.iter().zip(idx).map(|(&d, &v)| (v, s[d])).collect();
            fx.at(base, &terms)
        };
        let a = at(fx, xs[0], &strides[0]);
        let mut acc = fx.load(types::F32, a);
        for (&x, s) in xs.iter().zip(strides).skip(1) {
            let a = at(fx, x, s);
            let v = fx.load(types::F32, a);
            acc = fold(fx, f, acc, v);
        }
        if let Some(s) = average {
            let s = fx.splat(types::F32, s);
            acc = fx.b.ins().fmul(acc, s);
        }
        let b = at(fx, y, &contiguous);
        fx.store(acc, b);
    });
}

/// Loops over the axes `dims` of `shape`, outermost first.
fn nest(
    fx: &mut Fx,
    shape: &[usize; RANK],
    dims: &[usize],
    idx: &mut Vec<Value>,
    body: &mut dyn FnMut(&mut Fx, &[Value]),
) {
    match dims.split_first() {
        None => body(fx, idx),
        Some((&d, rest)) => fx.for_n(shape[d], |fx, i| {
            idx.push(i);
            nest(fx, shape, rest, idx, body);
            idx.pop();
        }),
    }
}

/// The traced `log` of the runtime, for softmax.
pub(super) fn log_tape() -> Tape {
    Tape::trace(kerac::act::log_l)
}
