//! Scaled dot-product attention over projected queries, keys and values, per head:
//! `softmax(q k^T * scale + mask) v`. The softmax runs online (a running maximum and
//! sum, rescaling the accumulated output), so no score matrix is stored; a causal mask
//! adds -1e9 to future keys, as Keras does, by a select rather than a shorter loop, so
//! every loop keeps a constant trip count.

use crate::act::{exp, fmax, tanh};
use crate::isa::Isa;
use crate::lanes::Lanes;
use crate::simd::{axpy, dot, part, part_mut};

/// Attention with fixed sizes. Queries are `[batch, tq, heads, dk]`, keys
/// `[batch, tk, heads, dk]`, values `[batch, tk, heads, dv]`, the output
/// `[batch, tq, heads, dv]`, all row-major.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attention {
    /// Sequences per call.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Query steps.
    pub tq: usize,
    /// Key and value steps.
    pub tk: usize,
    /// Floats per query and key head.
    pub dk: usize,
    /// Floats per value head.
    pub dv: usize,
    /// Factor on every score.
    pub scale: f32,
    /// Query `i` sees keys `0..=i` only.
    pub causal: bool,
    /// Additive scores, `sum_d w[d] * tanh(scale * (q_d + k_d))` (AdditiveAttention,
    /// Attention's `concat` mode), instead of `scale * q . k`.
    pub additive: bool,
}

/// What Keras adds to a masked score.
pub const MASKED: f32 = -1e9;

/// Runs attention; see [`Attention`] for the layouts. `w` holds the `dk` weights of
/// additive scores.
pub fn attention<I: Isa>(
    isa: I,
    p: &Attention,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    w: &[f32],
    y: &mut [f32],
) {
    isa.vectorize(
        #[inline(always)]
        || attention_in::<I>(isa, p, q, k, v, w, y),
    );
}

/// [`attention`] for code already inside `I::vectorize`: generated code runs all its steps
/// inside one, so that each step's constants reach the inlined loops.
#[inline(always)]
pub fn attention_in<I: Isa>(
    _isa: I,
    p: &Attention,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    w: &[f32],
    y: &mut [f32],
) {
    let (h, dk, dv) = (p.heads, p.dk, p.dv);
    if (p.additive && w.len() < dk)
        || q.len() < p.batch * p.tq * h * dk
        || k.len() < p.batch * p.tk * h * dk
        || v.len() < p.batch * p.tk * h * dv
        || y.len() < p.batch * p.tq * h * dv
    {
        return;
    }
    // SAFETY (every `part` below): the lengths were checked above against the sizes,
    // and every offset below lies inside them.
    for b in 0..p.batch {
        for i in 0..p.tq {
            for head in 0..h {
                let qi = unsafe { part(q, ((b * p.tq + i) * h + head) * dk, dk) };
                let out = unsafe { part_mut(y, ((b * p.tq + i) * h + head) * dv, dv) };
                out.fill(0.0);
                let (mut max, mut sum) = (MASKED, 0.0f32);
                for j in 0..p.tk {
                    let kj = unsafe { part(k, ((b * p.tk + j) * h + head) * dk, dk) };
                    let vj = unsafe { part(v, ((b * p.tk + j) * h + head) * dv, dv) };
                    let raw = if p.additive {
                        let mut s = 0.0;
                        for ((&a, &b), &wd) in qi.iter().zip(kj).zip(w) {
                            s += wd * tanh(p.scale * (a + b));
                        }
                        s
                    } else {
                        dot(qi, kj) * p.scale
                    };
                    let masked = crate::lanes::S::select(
                        crate::lanes::S(j as f32).gt(crate::lanes::S(i as f32)),
                        crate::lanes::S(raw + MASKED),
                        crate::lanes::S(raw),
                    )
                    .0;
                    let score = if p.causal { masked } else { raw };
                    let next = fmax(score, max);
                    let keep = exp(max - next);
                    let weight = exp(score - next);
                    sum = sum * keep + weight;
                    for o in out.iter_mut() {
                        *o *= keep;
                    }
                    axpy::<I>(out, weight, vj);
                    max = next;
                }
                let inv = 1.0 / sum;
                for o in out.iter_mut() {
                    *o *= inv;
                }
            }
        }
    }
}
