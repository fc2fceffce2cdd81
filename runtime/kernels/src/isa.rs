//! The instruction sets the kernels are compiled for, chosen once when a model is made.
//!
//! Every SIMD kernel is generic over an [`Isa`] token and runs its loops inside the
//! token's [`Isa::vectorize`], a function compiled with that ISA's target features, so
//! one `cargo build` carries the baseline, AVX2+FMA and AVX-512F versions of each
//! kernel. A token can be made only where the CPU has its instructions: [`Dispatch`]
//! detects them once (with the `std` feature; without it, only what the build enables at
//! compile time counts) and every later call runs the chosen version with no further
//! branch.

use crate::lanes::S;

/// The registers of each ISA, inside the crate: a register type used outside its
/// ISA's `vectorize` would run instructions the CPU may lack.
pub(crate) mod sealed {
    use crate::lanes::Vector;

    pub trait Sealed {
        /// The widest float register.
        type F: Vector;
        /// Half of it, for channel counts the full width does not divide.
        type H: Vector;
        /// Multiply-adds are fused: a faster loop order is free to change the rounding.
        /// Without it, kernels sum in the portable loop's order, to the same bits.
        const FMA: bool;
    }
}

/// An instruction set the kernels have a version for; a value of the type proves the
/// CPU has it.
pub trait Isa: Copy + sealed::Sealed {
    /// What [`Dispatch`] calls it.
    const LEVEL: Level;
    /// Runs `f` in a function compiled with this ISA's target features: the kernels'
    /// `inline(always)` loops are inlined into it and get its instructions.
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R;
}

/// The instruction set levels, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// What every CPU of the target has: SSE2 on x86-64, scalar code elsewhere.
    Baseline,
    /// AVX2 and FMA (x86-64-v3).
    Avx2,
    /// AVX-512F (x86-64-v4).
    Avx512,
}

impl Level {
    /// Every level, narrowest first.
    pub const ALL: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];

    /// The name `model!`'s `isa = "..."` option takes.
    pub const fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// The level of a name from [`Level::name`].
    pub fn parse(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// Scalar code: the baseline where the target is not x86-64.
#[derive(Debug, Clone, Copy, Default)]
pub struct Portable;

impl sealed::Sealed for Portable {
    type F = S;
    type H = S;
    const FMA: bool = false;
}

impl Isa for Portable {
    const LEVEL: Level = Level::Baseline;
    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// SSE2, part of every x86-64: four lanes, products and sums in the portable order.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Sse2;

#[cfg(target_arch = "x86_64")]
impl sealed::Sealed for Sse2 {
    type F = crate::lanes::V4;
    type H = S;
    const FMA: bool = false;
}

#[cfg(target_arch = "x86_64")]
impl Isa for Sse2 {
    const LEVEL: Level = Level::Baseline;
    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// AVX2 and FMA: eight lanes, fused multiply-adds.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// The token, where the CPU has AVX2 and FMA.
    pub fn detect() -> Option<Avx2> {
        if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
            return Some(Avx2(()));
        }
        #[cfg(any(feature = "std", test))]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Avx2(()));
        }
        None
    }
}

#[cfg(target_arch = "x86_64")]
impl sealed::Sealed for Avx2 {
    type F = crate::lanes::V8;
    type H = crate::lanes::V4;
    const FMA: bool = true;
}

#[cfg(target_arch = "x86_64")]
impl Isa for Avx2 {
    const LEVEL: Level = Level::Avx2;
    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx,avx2,fma")]
        unsafe fn with<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: an `Avx2` exists only where `detect` found AVX2 and FMA.
        unsafe { with(f) }
    }
}

/// AVX-512F: sixteen lanes, fused multiply-adds, and the AVX2 registers for halves.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    /// The token, where the CPU has AVX-512F (which implies AVX2 and FMA).
    pub fn detect() -> Option<Avx512> {
        if cfg!(target_feature = "avx512f") {
            return Some(Avx512(()));
        }
        #[cfg(any(feature = "std", test))]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Avx512(()));
        }
        None
    }
}

#[cfg(target_arch = "x86_64")]
impl sealed::Sealed for Avx512 {
    type F = crate::lanes::V16;
    type H = crate::lanes::V8;
    const FMA: bool = true;
}

#[cfg(target_arch = "x86_64")]
impl Isa for Avx512 {
    const LEVEL: Level = Level::Avx512;
    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx,avx2,fma,avx512f")]
        unsafe fn with<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: an `Avx512` exists only where `detect` found AVX-512F.
        unsafe { with(f) }
    }
}

/// The baseline of the target: SSE2 on x86-64, scalar code elsewhere.
#[cfg(target_arch = "x86_64")]
pub type Baseline = Sse2;
/// The baseline of the target: SSE2 on x86-64, scalar code elsewhere.
#[cfg(not(target_arch = "x86_64"))]
pub type Baseline = Portable;
#[cfg(target_arch = "x86_64")]
const BASELINE: Baseline = Sse2;
#[cfg(not(target_arch = "x86_64"))]
const BASELINE: Baseline = Portable;

/// Code to run with whichever [`Isa`] a [`Dispatch`] holds: generic code's way to be
/// monomorphised once per ISA and called through one `match`.
pub trait WithIsa {
    /// What the code returns.
    type Output;
    /// Runs the code with `isa`.
    fn with<I: Isa>(self, isa: I) -> Self::Output;
}

/// The ISA a model runs with, chosen once.
#[derive(Debug, Clone, Copy)]
pub enum Dispatch {
    /// The target's baseline.
    Baseline(Baseline),
    /// AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512),
}

impl Dispatch {
    /// The widest ISA the CPU has, up to `max`. With the `std` feature the CPU is asked
    /// at run time; without it, the build's target features decide.
    pub fn detect(max: Level) -> Dispatch {
        #[cfg(target_arch = "x86_64")]
        {
            if max >= Level::Avx512 {
                if let Some(t) = Avx512::detect() {
                    return Dispatch::Avx512(t);
                }
            }
            if max >= Level::Avx2 {
                if let Some(t) = Avx2::detect() {
                    return Dispatch::Avx2(t);
                }
            }
        }
        Dispatch::compiled(max)
    }

    /// The widest ISA the build's target features enable, up to `max`: what a constant
    /// (a model in a `static`) can know, and all a `no_std` build asks.
    pub const fn compiled(max: Level) -> Dispatch {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
        if max as u8 >= Level::Avx512 as u8 {
            return Dispatch::Avx512(Avx512(()));
        }
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        if max as u8 >= Level::Avx2 as u8 {
            return Dispatch::Avx2(Avx2(()));
        }
        let _ = max;
        Dispatch::Baseline(BASELINE)
    }

    /// The level chosen.
    pub const fn level(self) -> Level {
        match self {
            Dispatch::Baseline(_) => Level::Baseline,
            #[cfg(target_arch = "x86_64")]
            Dispatch::Avx2(_) => Level::Avx2,
            #[cfg(target_arch = "x86_64")]
            Dispatch::Avx512(_) => Level::Avx512,
        }
    }

    /// Runs `code` with the chosen ISA: one branch on a value fixed when the model was
    /// made, never on data. Subnormals are flushed to zero while it runs, as
    /// TensorFlow runs Keras models ([`crate::fp::flushed`]).
    #[inline(always)]
    pub fn run<W: WithIsa>(self, code: W) -> W::Output {
        crate::fp::flushed(
            #[inline(always)]
            || match self {
                Dispatch::Baseline(t) => code.with(t),
                #[cfg(target_arch = "x86_64")]
                Dispatch::Avx2(t) => code.with(t),
                #[cfg(target_arch = "x86_64")]
                Dispatch::Avx512(t) => code.with(t),
            },
        )
    }
}
