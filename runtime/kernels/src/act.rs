//! Activations, elementwise and softmax, as branch-free approximations: every value
//! takes the same instruction path, NaN and infinities included.
//!
//! Maximum errors against the exact functions (measured over ±20 in the tests of this
//! module, relative to `max(1, |f(x)|)`): `exp` 2e-7, `tanh` 3e-7, `sigmoid` 2e-7,
//! `erf` 2e-7 (Abramowitz & Stegun 7.1.26 bounds it by 1.5e-7), `log` 2e-7 for the
//! arguments the kernels use (>= 1). `exp` saturates at `exp(88.72)` above and gives
//! `exp(-86.6)` (about 2e-38) below, where float32 has only subnormals left.

// Polynomial coefficients are quoted as their sources publish them; float32 rounds them.
#![allow(clippy::excessive_precision)]

/// An elementwise activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    /// Identity.
    Linear,
    /// `max(x, 0)`.
    Relu,
    /// Keras's ReLU layer: `x` above `threshold`, else `slope * (x - threshold)`,
    /// capped at `max` when finite.
    ReluFull {
        /// Cap (`f32::INFINITY` for none).
        max: f32,
        /// Slope below the threshold.
        slope: f32,
        /// Threshold.
        threshold: f32,
    },
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x` if `x >= 0`, else `slope * x`.
    LeakyRelu(f32),
    /// `x` if `x > 0`, else `alpha * (exp(x) - 1)`.
    Elu(f32),
    /// Scaled ELU.
    Selu,
    /// `x * Phi(x)` with the exact error function.
    Gelu,
    /// `x * Phi(x)` with the tanh approximation.
    GeluTanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// Keras 2's `clip(0.2 x + 0.5, 0, 1)`.
    HardSigmoidKeras2,
    /// Keras 3's `relu6(x + 3) / 6`.
    HardSigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// `log(1 + exp(x))`.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `x * sigmoid(x)`.
    Swish,
    /// `exp(x)`.
    Exponential,
    /// `x * tanh(softplus(x))`.
    Mish,
    /// `x * relu6(x + 3) / 6`.
    HardSwish,
    /// `x` if `x > theta`, else 0.
    Thresholded(f32),
}

/// `a > b ? a : b`: the semantics of x86 `maxps`, so every backend agrees on NaN.
#[inline(always)]
pub fn fmax(a: f32, b: f32) -> f32 {
    select(a > b, a, b)
}

/// `a < b ? a : b`: the semantics of x86 `minps`.
#[inline(always)]
pub fn fmin(a: f32, b: f32) -> f32 {
    select(a < b, a, b)
}

/// Clamps `x` into `[lo, hi]`; NaN stays NaN.
#[inline(always)]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    fmin(hi, fmax(lo, x))
}

/// `c ? a : b` without a branch. On x86-64 it runs in SSE registers, where the code
/// generator keeps it a mask-and-blend (it may turn a scalar `cmov` into a jump).
#[inline(always)]
fn select(c: bool, a: f32, b: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::*;
        // SAFETY: SSE2 is part of the x86-64 baseline.
        unsafe {
            let mask = _mm_castsi128_ps(_mm_set1_epi32(-(c as i32)));
            _mm_cvtss_f32(_mm_or_ps(
                _mm_and_ps(mask, _mm_set_ss(a)),
                _mm_andnot_ps(mask, _mm_set_ss(b)),
            ))
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mask = (c as u32).wrapping_neg();
        f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
    }
}

/// Truncation to an integer with no saturation branches; only finite, in-range values
/// reach it (NaN gives an unspecified integer, and the NaN carries through the result).
#[inline(always)]
fn trunc_i32(x: f32) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::*;
        // SAFETY: SSE is part of the x86-64 baseline.
        unsafe { _mm_cvttss_si32(_mm_set_ss(x)) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        x as i32
    }
}

#[inline(always)]
fn floor(x: f32) -> f32 {
    let t = trunc_i32(x) as f32;
    t - select(t > x, 1.0, 0.0)
}

/// `e^x` (Cephes `expf` polynomial, range-reduced by `ln 2`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = clamp(x, -86.6, 88.72);
    let n = floor(x * core::f32::consts::LOG2_E + 0.5);
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let y = p * z + r + 1.0;
    // 2^(n-1) * 2 keeps the exponent field in range at both ends of the clamp.
    let scale = f32::from_bits((trunc_i32(n).wrapping_add(126) as u32).wrapping_shl(23));
    y * scale * 2.0
}

/// Natural logarithm for positive normal arguments (Cephes `logf`).
#[inline(always)]
pub fn log(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let small = m < core::f32::consts::FRAC_1_SQRT_2;
    let e = e as f32 - select(small, 1.0, 0.0);
    let m = select(small, m + m - 1.0, m - 1.0);
    let z = m * m;
    let p = (((((((7.037_683_6e-2 * m - 1.151_461e-1) * m + 1.167_699_9e-1) * m
        - 1.242_014_1e-1)
        * m
        + 1.424_932_3e-1)
        * m
        - 1.666_805_8e-1)
        * m
        + 2.000_071_4e-1)
        * m
        - 2.499_999_4e-1)
        * m
        + 3.333_333e-1;
    let y = p * m * z + -2.121_944_4e-4 * e - 0.5 * z;
    m + y + 0.693_359_4 * e
}

/// Hyperbolic tangent (Cephes `tanhf`: an odd polynomial near 0, `exp` elsewhere).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let z = fmax(x, -x);
    let z2 = x * x;
    let small = ((((-5.704_988_7e-3 * z2 + 2.063_908_9e-2) * z2 - 5.373_971_6e-2) * z2
        + 1.333_144_2e-1)
        * z2
        - 3.333_328_2e-1)
        * z2
        * x
        + x;
    let large = 1.0 - 2.0 / (exp(z + z) + 1.0);
    let large = select(x < 0.0, -large, large);
    select(z < 0.625, small, large)
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The error function (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let z = fmax(x, -x);
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let p = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_7) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - p * exp(-z * z);
    select(x < 0.0, -y, y)
}

/// `log(1 + e^x)`, stable at both ends.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    fmax(x, 0.0) + log(1.0 + exp(-fmax(x, -x)))
}

impl Act {
    /// The activation of one value.
    #[inline(always)]
    pub fn eval(self, x: f32) -> f32 {
        const SELU_ALPHA: f32 = 1.673_263_2;
        const SELU_SCALE: f32 = 1.050_701;
        match self {
            Act::Linear => x,
            Act::Relu => fmax(x, 0.0),
            Act::ReluFull {
                max,
                slope,
                threshold,
            } => fmin(select(x >= threshold, x, slope * (x - threshold)), max),
            Act::Relu6 => clamp(x, 0.0, 6.0),
            Act::LeakyRelu(slope) => select(x >= 0.0, x, slope * x),
            Act::Elu(alpha) => select(x > 0.0, x, alpha * (exp(x) - 1.0)),
            Act::Selu => SELU_SCALE * select(x > 0.0, x, SELU_ALPHA * (exp(x) - 1.0)),
            Act::Gelu => 0.5 * x * (1.0 + erf(x * core::f32::consts::FRAC_1_SQRT_2)),
            Act::GeluTanh => 0.5 * x * (1.0 + tanh(0.797_884_6 * (x + 0.044_715 * x * x * x))),
            Act::Sigmoid => sigmoid(x),
            Act::HardSigmoidKeras2 => clamp(0.2 * x + 0.5, 0.0, 1.0),
            Act::HardSigmoid => clamp(x + 3.0, 0.0, 6.0) / 6.0,
            Act::Tanh => tanh(x),
            Act::Softplus => softplus(x),
            Act::Softsign => x / (1.0 + fmax(x, -x)),
            Act::Swish => x * sigmoid(x),
            Act::Exponential => exp(x),
            Act::Mish => x * tanh(softplus(x)),
            Act::HardSwish => x * clamp(x + 3.0, 0.0, 6.0) / 6.0,
            Act::Thresholded(theta) => select(x > theta, x, 0.0),
        }
    }

    /// Applies the activation to every value.
    #[inline]
    pub fn apply(self, data: &mut [f32]) {
        if self == Act::Linear {
            return;
        }
        for v in data.iter_mut() {
            *v = self.eval(*v);
        }
    }
}

/// Softmax (or log-softmax) over groups of `n` values spaced `inner` apart, `outer`
/// groups of `inner` interleaved lanes: the axis Keras normalizes over, wherever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Softmax {
    /// Product of the axes before the softmax axes.
    pub outer: usize,
    /// Length of the softmax axes.
    pub n: usize,
    /// Product of the axes after them.
    pub inner: usize,
    /// Log-softmax instead.
    pub log: bool,
}

/// Softmax in place.
#[inline]
pub fn softmax(p: &Softmax, data: &mut [f32]) {
    if data.len() < p.outer * p.n * p.inner {
        return;
    }
    for o in 0..p.outer {
        for i in 0..p.inner {
            let base = o * p.n * p.inner + i;
            let at = |j: usize| base + j * p.inner;
            let mut max = f32::NEG_INFINITY;
            for j in 0..p.n {
                max = fmax(data[at(j)], max);
            }
            let mut sum = 0.0;
            for j in 0..p.n {
                sum += exp(data[at(j)] - max);
            }
            let (inv, log_sum) = (1.0 / sum, log(sum));
            for j in 0..p.n {
                let shifted = data[at(j)] - max;
                data[at(j)] = if p.log {
                    shifted - log_sum
                } else {
                    exp(shifted) * inv
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn worst(f: impl Fn(f32) -> f32, exact: impl Fn(f64) -> f64, lo: f32, hi: f32) -> f64 {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = lo + (hi - lo) * i as f32 / 200_000.0;
            let e = exact(x as f64);
            let err = (f(x) as f64 - e).abs() / e.abs().max(1.0);
            worst = worst.max(err);
        }
        worst
    }

    #[test]
    fn approximations_stay_within_their_documented_bounds() {
        assert!(worst(exp, f64::exp, -20.0, 20.0) < 2e-7);
        assert!(worst(tanh, f64::tanh, -20.0, 20.0) < 3e-7);
        assert!(worst(sigmoid, |x| 1.0 / (1.0 + (-x).exp()), -20.0, 20.0) < 2e-7);
        assert!(worst(log, f64::ln, 1.0, 1e6) < 2e-7);
        assert!(worst(softplus, |x| x.exp().ln_1p(), -20.0, 20.0) < 3e-7);
    }

    #[test]
    fn special_values_take_the_same_path_and_stay_sensible() {
        assert!(exp(f32::NAN).is_nan() && tanh(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan());
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert!(sigmoid(-1000.0) < 1e-37 && sigmoid(1000.0) == 1.0);
        assert!(exp(1000.0).is_finite() && exp(-1000.0) < 1e-37);
    }
}
