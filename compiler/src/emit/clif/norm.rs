//! `kerac::norm`: per-channel maps, activations, softmax and the normalisations.

use super::fx::{Addr, Fx};
use super::simd::{f32c, inverse_norm, reduce};
use crate::emit::tape::Tape;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use kerac::norm::{GroupNorm, LayerNorm, Strided};
use kerac::Act;

/// `kerac::norm::scale_shift`: `y = x * scale + offset` per channel.
pub(super) fn scale_shift(fx: &mut Fx, p: &Strided, scale: Addr, offset: Addr, x: Addr, y: Addr) {
    per_channel(fx, p, x, y, &[scale, offset], |fx, v, w| {
        let m = fx.b.ins().fmul(v, w[0]);
        fx.b.ins().fadd(m, w[1])
    });
}

/// `kerac::norm::prelu`: `max(x, 0) + alpha * min(x, 0)` per channel.
pub(super) fn prelu(fx: &mut Fx, p: &Strided, alpha: Addr, x: Addr, y: Addr) {
    per_channel(fx, p, x, y, &[alpha], |fx, v, w| {
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

/// `kerac::norm::activation` on `n` floats.
pub(super) fn activation(fx: &mut Fx, act: Act, n: usize, x: Addr, y: Addr) {
    fx.chunks(n, |fx, ty, ix| {
        let a = fx.ix(x, ix);
        let v = fx.load(ty, a);
        let v = fx.act(act, v);
        let b = fx.ix(y, ix);
        fx.store(v, b);
    });
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

/// Runs `f` on every line along the normalised axis: its first float and the stride.
fn lines(fx: &mut Fx, p: &Strided, mut f: impl FnMut(&mut Fx, Value)) {
    let (n, inner) = (p.n, p.inner);
    fx.for_n(p.outer, |fx, o| {
        fx.for_n(inner, |fx, i| {
            let off = fx.b.ins().imul_imm_s(o, (n * inner) as i64);
            let off = fx.b.ins().iadd(off, i);
            f(fx, off)
        })
    });
}

/// The traced `log` of the runtime, for softmax.
pub(super) fn log_tape() -> Tape {
    Tape::trace(kerac::act::log_l)
}

pub(super) fn softmax(fx: &mut Fx, p: &Strided, log: bool, x: Addr, y: Addr) {
    let (n, inner) = (p.n, p.inner);
    let log_tape = log_tape();
    lines(fx, p, |fx, off| {
        let xl = fx.at(x, &[(off, 1)]);
        let yl = fx.at(y, &[(off, 1)]);
        let ninf = f32c(fx, f32::NEG_INFINITY);
        let max = reduce(fx, xl, inner, n, ninf, |fx, m, v| fx.max(v, m));
        let zero = f32c(fx, 0.0);
        let sum = reduce(fx, xl, inner, n, zero, |fx, s, v| {
            let d = fx.b.ins().fsub(v, max);
            let e = fx.act(Act::Exponential, d);
            fx.b.ins().fadd(s, e)
        });
        let one = f32c(fx, 1.0);
        let inv = fx.b.ins().fdiv(one, sum);
        let log_sum = log_tape.emit(fx, &[sum]);
        fx.for_n(n, |fx, j| {
            let a = fx.at(xl, &[(j, inner)]);
            let v = fx.load(types::F32, a);
            let shifted = fx.b.ins().fsub(v, max);
            let r = if log {
                fx.b.ins().fsub(shifted, log_sum)
            } else {
                let e = fx.act(Act::Exponential, shifted);
                fx.b.ins().fmul(e, inv)
            };
            let b = fx.at(yl, &[(j, inner)]);
            fx.store(r, b);
        });
    });
}

/// `1 / sqrt(var / n + eps)` and the mean of the `n` floats `x[t * step]`.
fn moments(fx: &mut Fx, x: Addr, step: usize, n: usize, epsilon: f32) -> (Value, Value) {
    let zero = f32c(fx, 0.0);
    let sum = reduce(fx, x, step, n, zero, |fx, s, v| fx.b.ins().fadd(s, v));
    let count = f32c(fx, n as f32);
    let mean = fx.b.ins().fdiv(sum, count);
    let var = reduce(fx, x, step, n, zero, |fx, s, v| {
        let d = fx.b.ins().fsub(v, mean);
        let d2 = fx.b.ins().fmul(d, d);
        fx.b.ins().fadd(s, d2)
    });
    let var = fx.b.ins().fdiv(var, count);
    let eps = f32c(fx, epsilon);
    let var = fx.b.ins().fadd(var, eps);
    let root = fx.b.ins().sqrt(var);
    let one = f32c(fx, 1.0);
    (fx.b.ins().fdiv(one, root), mean)
}

/// `(v - centre) * inv * gamma + beta`.
fn affine(
    fx: &mut Fx,
    v: Value,
    centre: Value,
    inv: Value,
    gamma: Option<Addr>,
    beta: Option<Addr>,
) -> Value {
    let d = fx.b.ins().fsub(v, centre);
    let mut r = fx.b.ins().fmul(d, inv);
    if let Some(g) = gamma {
        let g = fx.load(types::F32, g);
        r = fx.b.ins().fmul(r, g);
    }
    if let Some(b) = beta {
        let b = fx.load(types::F32, b);
        r = fx.b.ins().fadd(r, b);
    }
    r
}

pub(super) fn layer_norm(
    fx: &mut Fx,
    p: &LayerNorm,
    gamma: Option<Addr>,
    beta: Option<Addr>,
    x: Addr,
    y: Addr,
) {
    let s = p.shape;
    let (n, inner) = (s.n, s.inner);
    lines(fx, &s, |fx, off| {
        let xl = fx.at(x, &[(off, 1)]);
        let yl = fx.at(y, &[(off, 1)]);
        let (inv, mean) = moments(fx, xl, inner, n, p.epsilon);
        let centre = if p.rms { f32c(fx, 0.0) } else { mean };
        fx.for_n(n, |fx, j| {
            let a = fx.at(xl, &[(j, inner)]);
            let v = fx.load(types::F32, a);
            let g = gamma.map(|g| fx.at(g, &[(j, 1)]));
            let bt = beta.map(|b| fx.at(b, &[(j, 1)]));
            let r = affine(fx, v, centre, inv, g, bt);
            let b = fx.at(yl, &[(j, inner)]);
            fx.store(r, b);
        });
    });
}

pub(super) fn group_norm(
    fx: &mut Fx,
    p: &GroupNorm,
    gamma: Option<Addr>,
    beta: Option<Addr>,
    x: Addr,
    y: Addr,
) {
    let (c, g) = (p.channels, p.groups.max(1));
    let cg = c / g;
    let n = p.positions * cg;
    fx.for_n(p.batch, |fx, b| {
        fx.for_n(g, |fx, grp| {
            let xg = fx.at(x, &[(b, p.positions * c), (grp, cg)]);
            let yg = fx.at(y, &[(b, p.positions * c), (grp, cg)]);
            // Two nested loops (positions, channels of the group) as one reduction in
            // the runtime's order.
            let zero = f32c(fx, 0.0);
            let sum = fx.var(zero);
            fx.for_n(p.positions, |fx, pos| {
                let xp = fx.at(xg, &[(pos, c)]);
                let cur = fx.b.use_var(sum);
                let s = reduce(fx, xp, 1, cg, cur, |fx, s, v| fx.b.ins().fadd(s, v));
                fx.b.def_var(sum, s);
            });
            let total = fx.b.use_var(sum);
            let count = f32c(fx, n as f32);
            let mean = fx.b.ins().fdiv(total, count);
            let sq = fx.var(zero);
            fx.for_n(p.positions, |fx, pos| {
                let xp = fx.at(xg, &[(pos, c)]);
                let cur = fx.b.use_var(sq);
                let s = reduce(fx, xp, 1, cg, cur, |fx, s, v| {
                    let d = fx.b.ins().fsub(v, mean);
                    let d2 = fx.b.ins().fmul(d, d);
                    fx.b.ins().fadd(s, d2)
                });
                fx.b.def_var(sq, s);
            });
            let var = fx.b.use_var(sq);
            let var = fx.b.ins().fdiv(var, count);
            let eps = f32c(fx, p.epsilon);
            let var = fx.b.ins().fadd(var, eps);
            let root = fx.b.ins().sqrt(var);
            let one = f32c(fx, 1.0);
            let inv = fx.b.ins().fdiv(one, root);
            fx.for_n(p.positions, |fx, pos| {
                fx.for_n(cg, |fx, k| {
                    let a = fx.at(xg, &[(pos, c), (k, 1)]);
                    let v = fx.load(types::F32, a);
                    let gm = gamma.map(|gm| fx.at(gm, &[(grp, cg), (k, 1)]));
                    let bt = beta.map(|bt| fx.at(bt, &[(grp, cg), (k, 1)]));
                    let r = affine(fx, v, mean, inv, gm, bt);
                    let o = fx.at(yg, &[(pos, c), (k, 1)]);
                    fx.store(r, o);
                })
            });
        })
    });
}

pub(super) fn unit_norm(fx: &mut Fx, p: &Strided, x: Addr, y: Addr) {
    let (n, inner) = (p.n, p.inner);
    lines(fx, p, |fx, off| {
        let xl = fx.at(x, &[(off, 1)]);
        let yl = fx.at(y, &[(off, 1)]);
        let inv = inverse_norm(fx, xl, inner, n);
        fx.for_n(n, |fx, j| {
            let a = fx.at(xl, &[(j, inner)]);
            let v = fx.load(types::F32, a);
            let r = fx.b.ins().fmul(v, inv);
            let b = fx.at(yl, &[(j, inner)]);
            fx.store(r, b);
        });
    });
}
