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

use crate::isa::Isa;
pub use crate::lanes::Lanes;
use crate::lanes::{Vector, S};

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
    /// 1 where `x` is nonzero, else 0: a Keras mask (`x != 0`) as numbers.
    NonZero,
    /// `max(x, c)`, NaN kept (Keras's `maximum` with a constant).
    Max(f32),
    /// `min(x, c)`, NaN kept.
    Min(f32),
    /// `min(max(x, lo), hi)`, NaN kept (Keras's `clip`).
    Clip {
        /// Lower bound.
        lo: f32,
        /// Upper bound.
        hi: f32,
    },
    /// `|x|`.
    Abs,
    /// `sqrt(x)`, correctly rounded; NaN below zero.
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// Natural logarithm: `-inf` at zero, NaN below.
    Log,
    /// `c / x`: a constant divided by the tensor.
    DivInto(f32),
    /// `x^p` for a constant `p`, as `exp(p log|x|)` with `pow`'s signs, zeros and
    /// infinities.
    Pow(f32),
    /// Every value `c`, whatever the input (`zeros_like`, `ones_like`, `full_like`).
    Fill(f32),
}

/// `a > b ? a : b`: the semantics of x86 `maxps`, so every backend agrees on NaN.
#[inline(always)]
pub fn fmax(a: f32, b: f32) -> f32 {
    vmax(S(a), S(b)).0
}

/// `a < b ? a : b`: the semantics of x86 `minps`.
#[inline(always)]
pub fn fmin(a: f32, b: f32) -> f32 {
    vmin(S(a), S(b)).0
}

/// `e^x` (Cephes `expf` polynomial, range-reduced by `ln 2`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_l(S(x)).0
}

/// Natural logarithm for positive normal arguments (Cephes `logf`).
#[inline(always)]
pub fn log(x: f32) -> f32 {
    log_l(S(x)).0
}

/// Hyperbolic tangent (Cephes `tanhf`: an odd polynomial near 0, `exp` elsewhere).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    tanh_l(S(x)).0
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    sigmoid_l(S(x)).0
}

/// The error function (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_l(S(x)).0
}

/// `log(1 + e^x)`, stable at both ends.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    softplus_l(S(x)).0
}

#[inline(always)]
fn c<T: Lanes>(v: f32) -> T {
    T::splat(v)
}

#[inline(always)]
fn vmax<T: Lanes>(a: T, b: T) -> T {
    a.max(b)
}

#[inline(always)]
fn vmin<T: Lanes>(a: T, b: T) -> T {
    a.min(b)
}

/// Clamps `x` into `[lo, hi]`; NaN stays NaN.
#[inline(always)]
fn clamp<T: Lanes>(x: T, lo: f32, hi: f32) -> T {
    vmin(c(hi), vmax(c(lo), x))
}

/// `e^x` over any [`Lanes`]: the definition [`exp`] and the code generators share.
#[inline(always)]
pub fn exp_l<T: Lanes>(x: T) -> T {
    let x = clamp(x, -86.6, 88.72);
    let n = (x * c(core::f32::consts::LOG2_E) + c(0.5)).floor();
    let r = x - n * c(0.693_359_4) - n * c(-2.121_944_4e-4);
    let z = r * r;
    let p = ((((c::<T>(1.987_569_1e-4) * r + c(1.398_199_9e-3)) * r + c(8.333_452e-3)) * r
        + c(4.166_579_6e-2))
        * r
        + c(1.666_666_5e-1))
        * r
        + c(5.000_000_1e-1);
    let y = p * z + r + c(1.0);
    // 2^(n-1) * 2 keeps the exponent field in range at both ends of the clamp.
    y * n.pow2_minus_1() * c(2.0)
}

/// Natural logarithm over any [`Lanes`], as [`log`].
#[inline(always)]
pub fn log_l<T: Lanes>(x: T) -> T {
    let m = x.mantissa();
    let small = m.lt(c(core::f32::consts::FRAC_1_SQRT_2));
    let e = x.exponent() - T::select(small, c(1.0), c(0.0));
    let m = T::select(small, m + m - c(1.0), m - c(1.0));
    let z = m * m;
    let p = (((((((c::<T>(7.037_683_6e-2) * m - c(1.151_461e-1)) * m + c(1.167_699_9e-1)) * m
        - c(1.242_014_1e-1))
        * m
        + c(1.424_932_3e-1))
        * m
        - c(1.666_805_8e-1))
        * m
        + c(2.000_071_4e-1))
        * m
        - c(2.499_999_4e-1))
        * m
        + c(3.333_333e-1);
    let y = p * m * z + c::<T>(-2.121_944_4e-4) * e - c::<T>(0.5) * z;
    m + y + c::<T>(0.693_359_4) * e
}

/// `log` over every float: subnormals scaled into the normal range first, `-inf` at
/// zero, `inf` at `inf`, NaN for negatives and NaN.
#[inline(always)]
fn log_full<T: Lanes>(x: T) -> T {
    let tiny = x.lt(c(f32::MIN_POSITIVE));
    let scaled = T::select(tiny, x * c(16_777_216.0), x);
    let y = log_l(scaled) - T::select(tiny, c(16.635_532), c(0.0));
    let y = T::select(x.lt(c(f32::INFINITY)), y, x);
    T::select(
        x.gt(c(0.0)),
        y,
        T::select(x.ge(c(0.0)), c(f32::NEG_INFINITY), c(f32::NAN)),
    )
}

/// `x^p` for a constant `p`.
#[inline(always)]
fn pow_l<T: Lanes>(x: T, p: f32) -> T {
    let a = vmax(x, -x);
    let y = exp_l(c::<T>(p) * log_full(a));
    // `exp` saturates short of 0 and infinity; `pow` reaches them.
    let (at_zero, at_inf) = if p > 0.0 {
        (0.0, f32::INFINITY)
    } else {
        (f32::INFINITY, 0.0)
    };
    let y = T::select(a.lt(c(f32::from_bits(1))), c(at_zero), y);
    let y = T::select(a.ge(c(f32::INFINITY)), c(at_inf), y);
    let integral = p.abs() < 16_777_216.0 && (p as i32) as f32 == p;
    if !integral {
        T::select(x.lt(c(0.0)), c(f32::NAN), y)
    } else if (p as i32) & 1 == 1 {
        T::select(x.lt(c(0.0)), -y, y)
    } else {
        y
    }
}

#[inline(always)]
fn tanh_l<T: Lanes>(x: T) -> T {
    let z = vmax(x, -x);
    let z2 = x * x;
    let small = ((((c::<T>(-5.704_988_7e-3) * z2 + c(2.063_908_9e-2)) * z2 - c(5.373_971_6e-2))
        * z2
        + c(1.333_144_2e-1))
        * z2
        - c(3.333_328_2e-1))
        * z2
        * x
        + x;
    let large = c::<T>(1.0) - c::<T>(2.0) / (exp_l(z + z) + c(1.0));
    let large = T::select(x.lt(c(0.0)), -large, large);
    T::select(z.lt(c(0.625)), small, large)
}

#[inline(always)]
fn sigmoid_l<T: Lanes>(x: T) -> T {
    c::<T>(1.0) / (c::<T>(1.0) + exp_l(-x))
}

#[inline(always)]
fn swish_l<T: Lanes>(x: T) -> T {
    x * sigmoid_l(x)
}

#[inline(always)]
fn hard_swish<T: Lanes>(x: T) -> T {
    x * clamp(x + c(3.0), 0.0, 6.0) / c(6.0)
}

#[inline(always)]
fn relu_full<T: Lanes>(x: T, max: f32, slope: f32, threshold: f32) -> T {
    vmin(
        T::select(x.ge(c(threshold)), x, c::<T>(slope) * (x - c(threshold))),
        c(max),
    )
}

/// An activation over lane vectors of any width, for [`Act::apply`]'s loop. [`Act`]
/// itself branches through its whole `match` on every register; the types below fix
/// one activation, so their loop holds its code alone. A loop per activation through
/// `Act` would instead copy every activation's code into each, for the optimiser to
/// prune: most of a MobileNet crate's build.
trait Map: Copy {
    fn map<T: Lanes>(self, x: T) -> T;
}

impl Map for Act {
    #[inline(always)]
    fn map<T: Lanes>(self, x: T) -> T {
        self.eval_lanes(x)
    }
}

/// `max(x, 0)`.
#[derive(Clone, Copy)]
struct ReluMap;
impl Map for ReluMap {
    #[inline(always)]
    fn map<T: Lanes>(self, x: T) -> T {
        vmax(x, c(0.0))
    }
}

/// [`Act::ReluFull`]'s.
#[derive(Clone, Copy)]
struct ReluFullMap(f32, f32, f32);
impl Map for ReluFullMap {
    #[inline(always)]
    fn map<T: Lanes>(self, x: T) -> T {
        relu_full(x, self.0, self.1, self.2)
    }
}

/// [`Act::Clip`]'s and [`Act::Relu6`]'s.
#[derive(Clone, Copy)]
struct ClipMap(f32, f32);
impl Map for ClipMap {
    #[inline(always)]
    fn map<T: Lanes>(self, x: T) -> T {
        clamp(x, self.0, self.1)
    }
}

/// [`Act::Sigmoid`]'s.
#[derive(Clone, Copy)]
struct SigmoidMap;
impl Map for SigmoidMap {
    #[inline(always)]
    fn map<T: Lanes>(self, x: T) -> T {
        sigmoid_l(x)
    }
}

/// [`Act::Swish`]'s.
#[derive(Clone, Copy)]
struct SwishMap;
impl Map for SwishMap {
    #[inline(always)]
    fn map<T: Lanes>(self, x: T) -> T {
        swish_l(x)
    }
}

/// [`Act::HardSwish`]'s.
#[derive(Clone, Copy)]
struct HardSwishMap;
impl Map for HardSwishMap {
    #[inline(always)]
    fn map<T: Lanes>(self, x: T) -> T {
        hard_swish(x)
    }
}

#[inline(always)]
fn erf_l<T: Lanes>(x: T) -> T {
    let z = vmax(x, -x);
    let t = c::<T>(1.0) / (c::<T>(1.0) + c::<T>(0.327_591_1) * z);
    let p = ((((c::<T>(1.061_405_4) * t - c(1.453_152)) * t + c(1.421_413_7)) * t
        - c(0.284_496_74))
        * t
        + c(0.254_829_6))
        * t;
    let y = c::<T>(1.0) - p * exp_l(-(z * z));
    T::select(x.lt(c(0.0)), -y, y)
}

#[inline(always)]
fn softplus_l<T: Lanes>(x: T) -> T {
    vmax(x, c(0.0)) + log_l(c::<T>(1.0) + exp_l(-vmax(x, -x)))
}

impl Act {
    /// The activation of one value.
    #[inline(always)]
    pub fn eval(self, x: f32) -> f32 {
        self.eval_lanes(S(x)).0
    }

    /// The activation of a lane vector: the one definition every width and every code
    /// generator shares.
    #[inline(always)]
    pub fn eval_lanes<T: Lanes>(self, x: T) -> T {
        const SELU_ALPHA: f32 = 1.673_263_2;
        const SELU_SCALE: f32 = 1.050_701;
        let zero = c::<T>(0.0);
        match self {
            Act::Linear => x,
            Act::Relu => vmax(x, zero),
            Act::ReluFull {
                max,
                slope,
                threshold,
            } => relu_full(x, max, slope, threshold),
            Act::Relu6 => clamp(x, 0.0, 6.0),
            Act::LeakyRelu(slope) => T::select(x.ge(zero), x, c::<T>(slope) * x),
            Act::Elu(alpha) => T::select(x.gt(zero), x, c::<T>(alpha) * (exp_l(x) - c(1.0))),
            Act::Selu => {
                c::<T>(SELU_SCALE)
                    * T::select(x.gt(zero), x, c::<T>(SELU_ALPHA) * (exp_l(x) - c(1.0)))
            }
            Act::Gelu => {
                c::<T>(0.5) * x * (c::<T>(1.0) + erf_l(x * c(core::f32::consts::FRAC_1_SQRT_2)))
            }
            Act::GeluTanh => {
                c::<T>(0.5)
                    * x
                    * (c::<T>(1.0)
                        + tanh_l(c::<T>(0.797_884_6) * (x + c::<T>(0.044_715) * x * x * x)))
            }
            Act::Sigmoid => sigmoid_l(x),
            Act::HardSigmoidKeras2 => clamp(c::<T>(0.2) * x + c(0.5), 0.0, 1.0),
            Act::HardSigmoid => clamp(x + c(3.0), 0.0, 6.0) / c(6.0),
            Act::Tanh => tanh_l(x),
            Act::Softplus => softplus_l(x),
            Act::Softsign => x / (c::<T>(1.0) + vmax(x, -x)),
            Act::Swish => swish_l(x),
            Act::Exponential => exp_l(x),
            Act::Mish => x * tanh_l(softplus_l(x)),
            Act::HardSwish => hard_swish(x),
            Act::Thresholded(theta) => T::select(x.gt(c(theta)), x, zero),
            Act::NonZero => T::select(x.gt(zero), c(1.0), T::select(x.lt(zero), c(1.0), zero)),
            // The constant first: `maxps` returns its second operand when either is NaN.
            Act::Max(v) => vmax(c(v), x),
            Act::Min(v) => vmin(c(v), x),
            Act::Clip { lo, hi } => clamp(x, lo, hi),
            Act::Abs => vmax(x, -x),
            Act::Sqrt => x.sqrt(),
            Act::Rsqrt => c::<T>(1.0) / x.sqrt(),
            Act::Log => log_full(x),
            Act::DivInto(v) => c::<T>(v) / x,
            Act::Pow(p) => pow_l(x, p),
            Act::Fill(v) => c(v),
        }
    }

    /// Applies the activation to every value with `isa`'s widest registers, then its
    /// half width, then one at a time: the same bits at every width. One function per
    /// ISA, not inlined into every kernel that fuses an activation: its dozens of
    /// activations at three widths would otherwise grow every step.
    #[inline]
    pub fn apply<I: Isa>(self, isa: I, data: &mut [f32]) {
        if self != Act::Linear {
            self.apply_out(isa, data);
        }
    }

    #[inline(never)]
    fn apply_out<I: Isa>(self, isa: I, data: &mut [f32]) {
        isa.vectorize(
            #[inline(always)]
            || self.apply_in::<I>(data),
        );
    }

    /// [`Act::apply`] for code already inside `I::vectorize`.
    #[inline(always)]
    fn apply_in<I: Isa>(self, data: &mut [f32]) {
        // The common activations each have a loop of their own (20-30% faster than
        // the shared loop for ReLU-like and sigmoid passes); the others share one,
        // which branches on `self` each register, always the same way.
        match self {
            Act::Linear => {}
            Act::Relu => each::<I, _>(ReluMap, data),
            Act::ReluFull {
                max,
                slope,
                threshold,
            } => each::<I, _>(ReluFullMap(max, slope, threshold), data),
            Act::Relu6 => each::<I, _>(ClipMap(0.0, 6.0), data),
            Act::Clip { lo, hi } => each::<I, _>(ClipMap(lo, hi), data),
            Act::Sigmoid => each::<I, _>(SigmoidMap, data),
            Act::Swish => each::<I, _>(SwishMap, data),
            Act::HardSwish => each::<I, _>(HardSwishMap, data),
            _ => each::<I, _>(self, data),
        }
    }
}

/// An activation that is one clamp, which a kernel applies to its accumulators as it
/// stores them instead of in a pass over the output afterwards: [`Act::clamp`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clamp {
    /// [`Act::Relu`].
    Relu,
    /// [`Act::Relu6`] and [`Act::Clip`]: `[lo, hi]`.
    Between(f32, f32),
}

impl Clamp {
    /// The clamp of a lane vector: the same operations as [`Act::apply`]'s loop, so
    /// the same bits.
    #[inline(always)]
    pub fn apply<T: Lanes>(self, x: T) -> T {
        match self {
            Clamp::Relu => ReluMap.map(x),
            Clamp::Between(lo, hi) => ClipMap(lo, hi).map(x),
        }
    }
}

impl Act {
    /// The clamp this activation is, if it is one.
    #[inline]
    pub const fn clamp(self) -> Option<Clamp> {
        match self {
            Act::Relu => Some(Clamp::Relu),
            Act::Relu6 => Some(Clamp::Between(0.0, 6.0)),
            Act::Clip { lo, hi } => Some(Clamp::Between(lo, hi)),
            _ => None,
        }
    }
}

/// `m` over every value with `I`'s widest registers, then its half width, then one
/// at a time: the same bits at every width.
#[inline(always)]
fn each<I: Isa, M: Map>(m: M, data: &mut [f32]) {
    let start = lanes::<I::F, M, true>(m, data, 0);
    // Less than one full register is left: one half register at most.
    let start = lanes::<I::H, M, false>(m, data, start);
    // `get_mut`, not indexing: the start is within the data, but the optimiser
    // cannot always see it, and an index would leave a panic path.
    for v in data.get_mut(start..).unwrap_or_default() {
        *v = m.map(S(*v)).0;
    }
}

/// Whole registers of `V` from `start`; returns the first value left.
#[inline(always)]
fn lanes<V: Vector, M: Map, const FOUR: bool>(m: M, data: &mut [f32], mut start: usize) -> usize {
    let p = data.as_mut_ptr();
    // Four registers an iteration: the polynomials are long chains of dependent
    // operations, and four independent ones keep the pipes busy. At the full width
    // only: unrolling the half width's loop too (one pass at most) took a crate
    // with MobileNet 4 times as long to build.
    let l = V::LANES;
    while FOUR && start + 4 * l <= data.len() {
        // SAFETY: `start + 4 * LANES <= len`; the ISA is the caller's.
        unsafe {
            let (a, b) = (V::load(p.add(start)), V::load(p.add(start + l)));
            let (c, d) = (V::load(p.add(start + 2 * l)), V::load(p.add(start + 3 * l)));
            m.map(a).store(p.add(start));
            m.map(b).store(p.add(start + l));
            m.map(c).store(p.add(start + 2 * l));
            m.map(d).store(p.add(start + 3 * l));
        }
        start += 4 * l;
    }
    while start + V::LANES <= data.len() {
        // SAFETY: `start + LANES <= len`; the ISA is the caller's.
        unsafe { m.map(V::load(p.add(start))).store(p.add(start)) };
        start += V::LANES;
    }
    start
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
    fn every_lane_width_gives_the_same_bits_as_one() {
        let acts = [
            Act::Relu,
            Act::ReluFull {
                max: f32::INFINITY,
                slope: 0.1,
                threshold: 0.5,
            },
            Act::LeakyRelu(0.2),
            Act::Clip { lo: -1.0, hi: 2.0 },
            Act::Max(0.5),
            Act::Min(0.5),
            Act::HardSigmoid,
            Act::HardSigmoidKeras2,
            Act::Thresholded(0.3),
            Act::NonZero,
            Act::Abs,
            Act::Swish,
            Act::Softsign,
            Act::Fill(1.0),
            Act::Relu6,
            Act::Elu(0.7),
            Act::Selu,
            Act::Gelu,
            Act::GeluTanh,
            Act::Sigmoid,
            Act::Tanh,
            Act::Softplus,
            Act::Mish,
            Act::HardSwish,
            Act::Exponential,
            Act::Sqrt,
            Act::Rsqrt,
            Act::Log,
            Act::DivInto(2.0),
            Act::Pow(2.5),
            Act::Pow(3.0),
            Act::Pow(-2.0),
        ];
        for act in acts {
            let xs: std::vec::Vec<f32> = (0..4001)
                .map(|i| (i as f32 - 2000.0) / 97.0)
                .chain([
                    f32::NAN,
                    f32::INFINITY,
                    -f32::INFINITY,
                    1e-40,
                    0.0,
                    -0.0,
                    3e38,
                ])
                .collect();
            for level in crate::isa::Level::ALL {
                let isa = crate::isa::Dispatch::detect(level);
                if isa.level() != level {
                    std::eprintln!("{}: not on this CPU, skipped", level.name());
                    continue;
                }
                let mut many = xs.clone();
                isa.run(Apply(act, &mut many));
                for (x, y) in xs.iter().zip(&many) {
                    // In the environment a model runs in: subnormals flushed.
                    let one = crate::fp::flushed(|| act.eval(*x));
                    // A NaN's sign and payload are not specified (the code generator
                    // may swap the operands of a product); that it is NaN is.
                    if one.is_nan() {
                        assert!(y.is_nan(), "{act:?} at {x}: {y}, {}", level.name());
                    } else {
                        // A subnormal can come out of a blend or a move, which do not
                        // flush it, where arithmetic gives zero: both read as zero.
                        let bits = |v: f32| {
                            if v.is_subnormal() {
                                0f32.copysign(v)
                            } else {
                                v
                            }
                            .to_bits()
                        };
                        assert_eq!(bits(one), bits(*y), "{act:?} at {x}, {}", level.name());
                    }
                }
            }
        }
    }

    /// An activation over a buffer, with whichever ISA a dispatch holds.
    struct Apply<'a>(Act, &'a mut [f32]);

    impl crate::isa::WithIsa for Apply<'_> {
        type Output = ();
        fn with<I: crate::isa::Isa>(self, isa: I) {
            self.0.apply(isa, self.1);
        }
    }

    #[test]
    fn log_sqrt_and_pow_over_every_range() {
        // Relative error over twelve decades, subnormals included.
        let mut worst_log = 0f64;
        for i in 0..=100_000 {
            let x = 10f64.powf(-40.0 + 80.0 * i as f64 / 100_000.0) as f32;
            let e = (x as f64).ln();
            let err = (Act::Log.eval(x) as f64 - e).abs() / e.abs().max(1.0);
            worst_log = worst_log.max(err);
        }
        assert!(worst_log < 3e-7, "log {worst_log}");
        assert_eq!(Act::Log.eval(0.0), f32::NEG_INFINITY);
        assert_eq!(Act::Log.eval(f32::INFINITY), f32::INFINITY);
        assert!(Act::Log.eval(-1.0).is_nan() && Act::Log.eval(f32::NAN).is_nan());
        for (p, x) in [
            (2.5f32, 3.7f32),
            (3.0, -1.5),
            (-2.0, -0.3),
            (0.3, 1e-30),
            (1.5, 1e4),
        ] {
            let e = (x as f64).powf(p as f64);
            let got = Act::Pow(p).eval(x) as f64;
            assert!((got - e).abs() <= 3e-6 * e.abs(), "{x}^{p}: {got} vs {e}");
        }
        assert_eq!(Act::Pow(2.5).eval(0.0), 0.0);
        assert_eq!(Act::Pow(-1.5).eval(0.0), f32::INFINITY);
        assert_eq!(Act::Pow(3.0).eval(-f32::INFINITY), -f32::INFINITY);
        assert!(Act::Pow(0.5).eval(-4.0).is_nan());
        assert_eq!(Act::Sqrt.eval(2.0), core::f32::consts::SQRT_2);
    }

    /// The integer square root the targets without one use: the same bits as the
    /// hardware's, over every exponent and special value.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn soft_sqrt_is_correctly_rounded() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let specials = [
            0u32,
            0x8000_0000,
            1,
            0x007f_ffff,
            0x0080_0000,
            0x7f7f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0xbf80_0000,
            0x3f80_0000,
            0x4000_0000,
        ];
        let randoms = (0..2_000_000).map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 32) as u32 & 0x7fff_ffff
        });
        for bits in specials.into_iter().chain(randoms) {
            let x = f32::from_bits(bits);
            let hard = crate::lanes::S(x).sqrt().0;
            let soft = crate::lanes::soft_sqrt(x);
            assert!(
                hard.to_bits() == soft.to_bits() || (hard.is_nan() && soft.is_nan()),
                "{x:e} ({bits:#x}): {hard:e} vs {soft:e}"
            );
        }
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
