//! `kerac::attention`: scores, masked softmax and the weighted sum, per head.

use super::fx::{Addr, Fx};
use super::simd::f32c;
use cranelift_codegen::ir::{types, InstBuilder};
use kerac::Act;

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
