//! Per-axis kernels: scale-and-shift (BatchNormalization at inference, Rescaling,
//! Normalization), PReLU, LayerNormalization, GroupNormalization, UnitNormalization,
//! activations and softmax. Each works on `outer x n x inner` views: groups of `n`
//! values spaced `inner` apart, the axes Keras names wherever they are.

use crate::act::{exp, fmax, log, Act};
use crate::isa::Isa;

/// `outer` blocks of `n` values, each value `inner` floats from the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strided {
    /// Product of the axes before the named ones.
    pub outer: usize,
    /// Product of the named axes.
    pub n: usize,
    /// Product of the axes after them.
    pub inner: usize,
}

impl Strided {
    /// Total floats.
    pub const fn len(&self) -> usize {
        self.outer * self.n * self.inner
    }

    /// True when empty.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    fn fits(&self, x: &[f32], y: &[f32], params: &[&[f32]]) -> bool {
        x.len() >= self.len() && y.len() >= self.len() && params.iter().all(|p| p.len() >= self.n)
    }
}

/// Named axes shorter than this run several positions per call of [`per_position`]'s
/// function.
const SHORT: usize = 64;

/// Calls `f(params, x, y)` on each run of values that share one position of the named
/// axes (`params` is that position's entry of each parameter), or, where the named axes
/// are last, on each block of `n` values with the whole parameter slices: loops with no
/// division per element, and unit strides the compiler vectorizes.
#[inline(always)]
fn per_position<const P: usize>(
    p: &Strided,
    params: [&[f32]; P],
    x: &[f32],
    y: &mut [f32],
    mut f: impl FnMut([&[f32]; P], &[f32], &mut [f32]),
) {
    let (Some(x), Some(y)) = (x.get(..p.len()), y.get_mut(..p.len())) else {
        return;
    };
    // `get` rather than indexing below: a bound the optimiser cannot see would leave a
    // panic path; the checks here make the fallbacks unreachable.
    if p.n == 0 || p.inner == 0 || params.iter().any(|q| q.len() < p.n) {
        return;
    }
    if p.inner == 1 {
        let mut o = 0;
        if p.n < SHORT {
            // Few named values (an image's 3 channels): the parameters repeated `k` times
            // make runs of `k * n` values, so that a call's loop, not its overhead, takes
            // the time. The same operations per element as below.
            let k = SHORT / p.n;
            let m = k * p.n;
            let tiled: [[f32; SHORT]; P] = core::array::from_fn(|i| {
                core::array::from_fn(|j| params[i].get(j % p.n).copied().unwrap_or(0.0))
            });
            while o + k <= p.outer {
                let at = o * p.n..o * p.n + m;
                if let (Some(x), Some(y)) = (x.get(at.clone()), y.get_mut(at)) {
                    f(tiled.each_ref().map(|q| q.get(..m).unwrap_or(&[])), x, y);
                }
                o += k;
            }
        }
        while o < p.outer {
            let at = o * p.n..(o + 1) * p.n;
            if let (Some(x), Some(y)) = (x.get(at.clone()), y.get_mut(at)) {
                f(params.map(|q| q.get(..p.n).unwrap_or(&[])), x, y);
            }
            o += 1;
        }
        return;
    }
    for o in 0..p.outer {
        for j in 0..p.n {
            let at = (o * p.n + j) * p.inner..(o * p.n + j + 1) * p.inner;
            if let (Some(x), Some(y)) = (x.get(at.clone()), y.get_mut(at)) {
                f(params.map(|q| q.get(j..j + 1).unwrap_or(&[])), x, y);
            }
        }
    }
}

/// `y = x * scale[j] + offset[j]` for the value at position `j` of the named axes.
#[inline]
pub fn scale_shift(p: &Strided, scale: &[f32], offset: &[f32], x: &[f32], y: &mut [f32]) {
    per_position(p, [scale, offset], x, y, |[s, b], x, y| {
        if let ([s], [b]) = (s, b) {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * s + b;
            }
        } else {
            for (((y, &x), &s), &b) in y.iter_mut().zip(x).zip(s).zip(b) {
                *y = x * s + b;
            }
        }
    });
}

/// PReLU: `x` where `x >= 0`, else `alpha[j] * x`.
#[inline]
pub fn prelu(p: &Strided, alpha: &[f32], x: &[f32], y: &mut [f32]) {
    per_position(p, [alpha], x, y, |[a], x, y| {
        if let [a] = a {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = fmax(x, 0.0) + a * -fmax(-x, 0.0);
            }
        } else {
            for ((y, &x), &a) in y.iter_mut().zip(x).zip(a) {
                *y = fmax(x, 0.0) + a * -fmax(-x, 0.0);
            }
        }
    });
}

/// An elementwise activation from `x` into `y`.
pub fn activation<I: Isa>(isa: I, act: Act, x: &[f32], y: &mut [f32]) {
    isa.vectorize(
        #[inline(always)]
        || activation_in::<I>(isa, act, x, y),
    );
}

/// [`activation`] for code already inside `I::vectorize`.
#[inline(always)]
pub fn activation_in<I: Isa>(isa: I, act: Act, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    y[..n].copy_from_slice(&x[..n]);
    act.apply(isa, &mut y[..n]);
}

/// Softmax (or log-softmax) over the named axes.
#[inline]
pub fn softmax(p: &Strided, log_softmax: bool, x: &[f32], y: &mut [f32]) {
    if !p.fits(x, y, &[]) {
        return;
    }
    // `get`, not indexing: `fits` bounds every position, but where this kernel is not
    // inlined with its constants the optimiser cannot see it, and an index would leave
    // a panic path. The `None` arms are never taken.
    for o in 0..p.outer {
        for i in 0..p.inner {
            let at = |j: usize| (o * p.n + j) * p.inner + i;
            let xv = |j: usize| x.get(at(j)).copied().unwrap_or(0.0);
            let mut max = f32::NEG_INFINITY;
            for j in 0..p.n {
                max = fmax(xv(j), max);
            }
            let mut sum = 0.0;
            for j in 0..p.n {
                sum += exp(xv(j) - max);
            }
            let (inv, log_sum) = (1.0 / sum, log(sum));
            for j in 0..p.n {
                let shifted = xv(j) - max;
                if let Some(out) = y.get_mut(at(j)) {
                    *out = if log_softmax {
                        shifted - log_sum
                    } else {
                        exp(shifted) * inv
                    };
                }
            }
        }
    }
}

/// LayerNormalization over the named axes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNorm {
    /// The groups normalized together.
    pub shape: Strided,
    /// Added to the variance.
    pub epsilon: f32,
    /// Keras's `rms_scaling`: divide by the deviation without centring.
    pub rms: bool,
}

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` per group.
#[inline]
pub fn layer_norm(
    p: &LayerNorm,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
) {
    let s = p.shape;
    let params_fit = gamma.is_none_or(|g| g.len() >= s.n) && beta.is_none_or(|b| b.len() >= s.n);
    let len = s
        .outer
        .checked_mul(s.n)
        .and_then(|v| v.checked_mul(s.inner));
    if !len.is_some_and(|len| x.len() >= len && y.len() >= len) || !params_fit {
        return;
    }
    // Pointers, not indexing: the bounds hold by the check above, which the optimiser
    // sees only where the call is inlined with constant shapes, and an index would
    // leave a panic path where it is not.
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    // Exactly `n` long, so that `j < n` bounds their indexing where nothing is known.
    let (gamma, beta) = (
        gamma.and_then(|g| g.get(..s.n)),
        beta.and_then(|b| b.get(..s.n)),
    );
    let n = s.n as f32;
    for o in 0..s.outer {
        for i in 0..s.inner {
            let at = |j: usize| (o * s.n + j) * s.inner + i;
            // SAFETY (every access below): `at(j) < outer * n * inner`, which x and y
            // hold (checked without overflow above).
            let xs = |j: usize| unsafe { *xp.add(at(j)) };
            let mut mean = 0.0;
            for j in 0..s.n {
                mean += xs(j);
            }
            mean /= n;
            let mut var = 0.0;
            for j in 0..s.n {
                let d = xs(j) - mean;
                var += d * d;
            }
            let inv = 1.0 / libm_sqrt(var / n + p.epsilon);
            let centre = if p.rms { 0.0 } else { mean };
            for j in 0..s.n {
                let mut v = (xs(j) - centre) * inv;
                if let Some(g) = gamma {
                    v *= g[j];
                }
                if let Some(b) = beta {
                    v += b[j];
                }
                unsafe { *yp.add(at(j)) = v };
            }
        }
    }
}

/// GroupNormalization over channels_last samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNorm {
    /// Batch size.
    pub batch: usize,
    /// Positions per sample.
    pub positions: usize,
    /// Channels.
    pub channels: usize,
    /// Channel groups.
    pub groups: usize,
    /// Added to the variance.
    pub epsilon: f32,
}

/// Normalizes each sample's channel groups over all positions.
#[inline]
pub fn group_norm(
    p: &GroupNorm,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
) {
    let (c, g) = (p.channels, p.groups);
    let total = p.batch * p.positions * c;
    let params_fit = gamma.is_none_or(|v| v.len() >= c) && beta.is_none_or(|v| v.len() >= c);
    if g == 0 || c % g != 0 || x.len() < total || y.len() < total || !params_fit {
        return;
    }
    let cg = c / g;
    let n = (p.positions * cg) as f32;
    for b in 0..p.batch {
        let base = b * p.positions * c;
        for grp in 0..g {
            let at = |pos: usize, k: usize| base + pos * c + grp * cg + k;
            let mut mean = 0.0;
            for pos in 0..p.positions {
                for k in 0..cg {
                    mean += x[at(pos, k)];
                }
            }
            mean /= n;
            let mut var = 0.0;
            for pos in 0..p.positions {
                for k in 0..cg {
                    let d = x[at(pos, k)] - mean;
                    var += d * d;
                }
            }
            let inv = 1.0 / libm_sqrt(var / n + p.epsilon);
            for pos in 0..p.positions {
                for k in 0..cg {
                    let ch = grp * cg + k;
                    let mut v = (x[at(pos, k)] - mean) * inv;
                    if let Some(gm) = gamma {
                        v *= gm[ch];
                    }
                    if let Some(bt) = beta {
                        v += bt[ch];
                    }
                    y[at(pos, k)] = v;
                }
            }
        }
    }
}

/// Scales each group of the named axes to unit L2 norm.
#[inline]
pub fn unit_norm(p: &Strided, x: &[f32], y: &mut [f32]) {
    if !p.fits(x, y, &[]) {
        return;
    }
    for o in 0..p.outer {
        for i in 0..p.inner {
            let at = |j: usize| (o * p.n + j) * p.inner + i;
            let mut sum = 0.0;
            for j in 0..p.n {
                sum += x[at(j)] * x[at(j)];
            }
            let inv = 1.0 / fmax(libm_sqrt(sum), 1e-12);
            for j in 0..p.n {
                y[at(j)] = x[at(j)] * inv;
            }
        }
    }
}

/// Square root without `std`: the hardware instruction where the target has one.
#[inline(always)]
pub(crate) fn libm_sqrt(x: f32) -> f32 {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        // `f32::sqrt` lives in std; these targets have an exact sqrt instruction.
        sqrt_hw(x)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        sqrt_newton(x)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn sqrt_hw(x: f32) -> f32 {
    use core::arch::x86_64::*;
    // SAFETY: SSE is part of the x86-64 baseline.
    unsafe { _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(x))) }
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn sqrt_hw(x: f32) -> f32 {
    use core::arch::aarch64::*;
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe { vget_lane_f32::<0>(vsqrt_f32(vdup_n_f32(x))) }
}

/// Correctly rounded-ish square root by Newton steps from a bit-level estimate.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
fn sqrt_newton(x: f32) -> f32 {
    let mut r = f32::from_bits((x.to_bits() >> 1) + 0x1fc0_0000);
    for _ in 0..4 {
        r = 0.5 * (r + x / r);
    }
    r
}
