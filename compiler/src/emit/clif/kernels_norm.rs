//! Normalisations, softmax and batched dot products: reductions along an axis, in the
//! runtime's order of operations (one float at a time, so sums round as the runtime's
//! portable kernels do).

use super::fx::{Addr, Fx};
use super::kernels::log_tape;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use kerac::merge::BatchDot;
use kerac::norm::{GroupNorm, LayerNorm, Strided};
use kerac::Act;

fn f32c(fx: &mut Fx, c: f32) -> Value {
    fx.b.ins().f32const(c)
}

/// Sums `f(x[t * step])` for `t` in `0..n`, from `init`.
fn reduce(
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

/// `1 / max(|x|, 1e-12)` over `n` floats `x[t * step]`.
fn inverse_norm(fx: &mut Fx, x: Addr, step: usize, n: usize) -> Value {
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

/// Attention as the runtime computes it: per query and head, an online softmax over
/// every key (a causal mask adds -1e9 by a select, so the loop bound stays constant),
/// the output rescaled and accumulated in place.
pub(super) fn attention(
    fx: &mut Fx,
    p: &kerac::attention::Attention,
    [q, k, v]: [Addr; 3],
    w: Option<Addr>,
    y: Addr,
) {
    use cranelift_codegen::ir::condcodes::IntCC;
    let (h, dk, dv) = (p.heads, p.dk, p.dv);
    fx.for_n(p.batch, |fx, b| {
        fx.for_n(p.tq, |fx, i| {
            fx.for_n(h, |fx, head| {
                let qi = fx.at(q, &[(b, p.tq * h * dk), (i, h * dk), (head, dk)]);
                let out = fx.at(y, &[(b, p.tq * h * dv), (i, h * dv), (head, dv)]);
                fx.chunks(dv, |fx, ty, ix| {
                    let z = fx.splat(ty, 0.0);
                    let a = fx.ix(out, ix);
                    fx.store(z, a);
                });
                let masked = f32c(fx, kerac::attention::MASKED);
                let max = fx.var(masked);
                let zero = f32c(fx, 0.0);
                let sum = fx.var(zero);
                fx.for_n(p.tk, |fx, j| {
                    let kj = fx.at(k, &[(b, p.tk * h * dk), (j, h * dk), (head, dk)]);
                    let vj = fx.at(v, &[(b, p.tk * h * dv), (j, h * dv), (head, dv)]);
                    let zero = f32c(fx, 0.0);
                    let dot = fx.var(zero);
                    let scale = f32c(fx, p.scale);
                    fx.for_n(dk, |fx, d| {
                        let qa = fx.at(qi, &[(d, 1)]);
                        let ka = fx.at(kj, &[(d, 1)]);
                        let (qv, kv) = (fx.load(types::F32, qa), fx.load(types::F32, ka));
                        let m = match (p.additive, w) {
                            (true, Some(w)) => {
                                let sum = fx.b.ins().fadd(qv, kv);
                                let scaled = fx.b.ins().fmul(scale, sum);
                                let t = fx.act(Act::Tanh, scaled);
                                let wa = fx.at(w, &[(d, 1)]);
                                let wd = fx.load(types::F32, wa);
                                fx.b.ins().fmul(wd, t)
                            }
                            _ => fx.b.ins().fmul(qv, kv),
                        };
                        let cur = fx.b.use_var(dot);
                        let s = fx.b.ins().fadd(cur, m);
                        fx.b.def_var(dot, s);
                    });
                    let raw = fx.b.use_var(dot);
                    let raw = if p.additive {
                        raw
                    } else {
                        fx.b.ins().fmul(raw, scale)
                    };
                    let score = if p.causal {
                        let future = fx.b.ins().icmp(IntCC::UnsignedGreaterThan, j, i);
                        let wide = fx.b.ins().bmask(types::I32, future);
                        let m = fx.b.ins().bitcast(
                            types::F32,
                            cranelift_codegen::ir::MemFlagsData::new(),
                            wide,
                        );
                        let shifted = fx.b.ins().fadd(raw, masked);
                        fx.select(m, shifted, raw)
                    } else {
                        raw
                    };
                    let old = fx.b.use_var(max);
                    let next = fx.max(score, old);
                    let d_old = fx.b.ins().fsub(old, next);
                    let keep = fx.act(Act::Exponential, d_old);
                    let d_new = fx.b.ins().fsub(score, next);
                    let weight = fx.act(Act::Exponential, d_new);
                    let s = fx.b.use_var(sum);
                    let s = fx.b.ins().fmul(s, keep);
                    let s = fx.b.ins().fadd(s, weight);
                    fx.b.def_var(sum, s);
                    fx.b.def_var(max, next);
                    fx.chunks(dv, |fx, ty, ix| {
                        let a = fx.ix(out, ix);
                        let o = fx.load(ty, a);
                        let kv = fx.splat_value(ty, keep);
                        let o = fx.b.ins().fmul(o, kv);
                        let va = fx.ix(vj, ix);
                        let vv = fx.load(ty, va);
                        let wv = fx.splat_value(ty, weight);
                        let o = fx.fma(wv, vv, o);
                        fx.store(o, a);
                    });
                });
                let s = fx.b.use_var(sum);
                let one = f32c(fx, 1.0);
                let inv = fx.b.ins().fdiv(one, s);
                fx.chunks(dv, |fx, ty, ix| {
                    let a = fx.ix(out, ix);
                    let o = fx.load(ty, a);
                    let iv = fx.splat_value(ty, inv);
                    let o = fx.b.ins().fmul(o, iv);
                    fx.store(o, a);
                });
            })
        })
    });
}
