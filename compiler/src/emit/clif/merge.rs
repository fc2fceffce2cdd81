//! `kerac::merge`: elementwise folds with broadcasting, concatenation, batched
//! products.

use super::fx::{Addr, Fx};
use super::simd::{copy, f32c, inverse_norm};
use cranelift_codegen::ir::{types, InstBuilder, Value};
use kerac::merge::{BatchDot, Fold, RANK};

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
pub(super) fn merge(
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

/// `kerac::merge::concat`: rows of the inputs side by side.
pub(super) fn concat(fx: &mut Fx, outer: usize, parts: &[usize], xs: &[Addr], y: Addr) {
    let row: usize = parts.iter().sum();
    fx.for_n(outer, |fx, o| {
        let mut at = 0;
        for (xi, &n) in xs.iter().zip(parts) {
            let from = fx.at(*xi, &[(o, n)]);
            let to = fx.at(y.add(at), &[(o, row)]);
            copy(fx, from, to, n);
            at += n;
        }
    });
}

pub(super) fn batch_dot(fx: &mut Fx, p: &BatchDot, a: Addr, b: Addr, y: Addr) {
    fx.for_n(p.batch, |fx, bi| {
        fx.for_n(p.m, |fx, i| {
            let abase = fx.at(a, &[(bi, p.a[0]), (i, p.a[1])]);
            let na = if p.normalize {
                inverse_norm(fx, abase, p.a[2], p.k)
            } else {
                f32c(fx, 1.0)
            };
            fx.for_n(p.n, |fx, j| {
                let bbase = fx.at(b, &[(bi, p.b[0]), (j, p.b[2])]);
                let nb = if p.normalize {
                    inverse_norm(fx, bbase, p.b[1], p.k)
                } else {
                    f32c(fx, 1.0)
                };
                let zero = f32c(fx, 0.0);
                let acc = fx.var(zero);
                fx.for_n(p.k, |fx, t| {
                    let aa = fx.at(abase, &[(t, p.a[2])]);
                    let av = fx.load(types::F32, aa);
                    let ba = fx.at(bbase, &[(t, p.b[1])]);
                    let bv = fx.load(types::F32, ba);
                    let m = fx.b.ins().fmul(av, bv);
                    let cur = fx.b.use_var(acc);
                    let s = fx.b.ins().fadd(cur, m);
                    fx.b.def_var(acc, s);
                });
                let s = fx.b.use_var(acc);
                let s = fx.b.ins().fmul(s, na);
                let s = fx.b.ins().fmul(s, nb);
                let o = fx.at(y, &[(bi, p.m * p.n), (i, p.n), (j, 1)]);
                fx.store(s, o);
            })
        })
    });
}
