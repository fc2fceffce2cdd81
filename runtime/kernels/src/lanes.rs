//! One float or four, eight or sixteen: the activation math is written once over
//! [`Lanes`] and runs on a single `f32`, SSE's `f32 x 4`, AVX2's `f32 x 8` or AVX-512's
//! `f32 x 16` with the same operations in the same order (no fused multiply-add), so all
//! give the same bits. [`Vector`] adds the loads, stores and multiply-adds the kernels'
//! loops are written against. Comparisons give lane masks and
//! `select` blends by them: no branch on data anywhere.
//!
//! The trait is public so that code generators can implement it for a symbolic value
//! and trace the one definition of each activation into their own IR.

use core::ops::{Add, Div, Mul, Neg, Sub};

/// Float lanes the activation math runs on.
pub trait Lanes:
    Copy
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    /// Every lane `v`.
    fn splat(v: f32) -> Self;
    /// Lane mask of `self > o` (all ones where true).
    fn gt(self, o: Self) -> Self;
    /// Lane mask of `self < o`.
    fn lt(self, o: Self) -> Self;
    /// Lane mask of `self >= o`.
    fn ge(self, o: Self) -> Self;
    /// `mask ? a : b` per lane.
    fn select(mask: Self, a: Self, b: Self) -> Self;
    /// Truncation toward zero, as a float.
    fn trunc(self) -> Self;
    /// `2^(n-1)` for integral `n` in the normal exponent range (NaN stays unspecified).
    fn pow2_minus_1(self) -> Self;
    /// The exponent field minus 126, as a float (for `log`).
    fn exponent(self) -> Self;
    /// The mantissa scaled into `[0.5, 1)` (for `log`).
    fn mantissa(self) -> Self;
    /// The correctly rounded square root (NaN below zero).
    fn sqrt(self) -> Self;
    /// Rounding toward negative infinity, for `|self| < 2^31` (the range `exp` uses).
    /// AVX and AVX-512 override it with their one rounding instruction: exact, so the
    /// same bits as the truncation, compare and blend here.
    #[inline(always)]
    fn floor(self) -> Self {
        let t = self.trunc();
        t - Self::select(t.gt(self), Self::splat(1.0), Self::splat(0.0))
    }
    /// `self > o ? self : o`, x86 `maxps`: NaN in either gives `o`. The SIMD lanes
    /// override it with that one instruction rather than leave the optimiser to find
    /// it in a compare and a blend.
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        Self::select(self.gt(o), self, o)
    }
    /// `self < o ? self : o`, x86 `minps`: NaN in either gives `o`.
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        Self::select(self.lt(o), self, o)
    }
}

/// A register of float lanes the kernels load, multiply-add and store: the one
/// interface the convolution, dense and pooling loops are written against, so each is
/// written once for every width.
pub trait Vector: Lanes {
    /// Floats per register.
    const LANES: usize;
    /// `LANES` floats from `p`.
    ///
    /// # Safety
    /// `p` is readable for `LANES` floats, and the CPU has the instructions of the
    /// [`crate::isa::Isa`] this type belongs to.
    unsafe fn load(p: *const f32) -> Self;
    /// `LANES` floats into `p`.
    ///
    /// # Safety
    /// `p` is writable for `LANES` floats; the CPU as for [`Vector::load`].
    unsafe fn store(self, p: *mut f32);
    /// `self * b + c`: fused (one rounding) where the ISA has FMA, else a product
    /// then a sum, which is the portable loop's rounding.
    fn mul_add(self, b: Self, c: Self) -> Self;
}

impl Vector for S {
    const LANES: usize = 1;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> S {
        // SAFETY: the caller guarantees one readable float.
        S(unsafe { *p })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees one writable float.
        unsafe { *p = self.0 }
    }
    #[inline(always)]
    fn mul_add(self, b: S, c: S) -> S {
        S(c.0 + self.0 * b.0)
    }
}

/// One float; SSE registers on x86-64 so selects stay branch-free.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct S(pub f32);

macro_rules! scalar_op {
    ($trait:ident, $f:ident, $op:tt) => {
        impl $trait for S {
            type Output = S;
            #[inline(always)]
            fn $f(self, o: S) -> S {
                S(self.0 $op o.0)
            }
        }
    };
}
scalar_op!(Add, add, +);
scalar_op!(Sub, sub, -);
scalar_op!(Mul, mul, *);
scalar_op!(Div, div, /);

impl Neg for S {
    type Output = S;
    #[inline(always)]
    fn neg(self) -> S {
        S(-self.0)
    }
}

#[inline(always)]
fn mask(c: bool) -> S {
    S(f32::from_bits((c as u32).wrapping_neg()))
}

impl Lanes for S {
    #[inline(always)]
    fn splat(v: f32) -> S {
        S(v)
    }
    #[inline(always)]
    fn gt(self, o: S) -> S {
        mask(self.0 > o.0)
    }
    #[inline(always)]
    fn lt(self, o: S) -> S {
        mask(self.0 < o.0)
    }
    #[inline(always)]
    fn ge(self, o: S) -> S {
        mask(self.0 >= o.0)
    }
    #[inline(always)]
    fn select(m: S, a: S, b: S) -> S {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::*;
            // SAFETY: SSE is part of the x86-64 baseline. In SSE registers the code
            // generator keeps the blend; a scalar `cmov` it may turn into a jump.
            unsafe {
                let (m, a, b) = (_mm_set_ss(m.0), _mm_set_ss(a.0), _mm_set_ss(b.0));
                S(_mm_cvtss_f32(_mm_or_ps(
                    _mm_and_ps(m, a),
                    _mm_andnot_ps(m, b),
                )))
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let m = m.0.to_bits();
            S(f32::from_bits((a.0.to_bits() & m) | (b.0.to_bits() & !m)))
        }
    }
    #[inline(always)]
    fn trunc(self) -> S {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::*;
            // SAFETY: SSE is part of the x86-64 baseline.
            S(unsafe { _mm_cvttss_si32(_mm_set_ss(self.0)) } as f32)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            S(self.0 as i32 as f32)
        }
    }
    #[inline(always)]
    fn pow2_minus_1(self) -> S {
        let n = S::trunc_i32(self);
        S(f32::from_bits(
            (n.wrapping_add(126) as u32).wrapping_shl(23),
        ))
    }
    #[inline(always)]
    fn exponent(self) -> S {
        S((((self.0.to_bits() >> 23) & 0xff) as i32 - 126) as f32)
    }
    #[inline(always)]
    fn mantissa(self) -> S {
        S(f32::from_bits(
            (self.0.to_bits() & 0x007f_ffff) | 0x3f00_0000,
        ))
    }
    #[inline(always)]
    fn sqrt(self) -> S {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::*;
            // SAFETY: SSE is part of the x86-64 baseline.
            S(unsafe { _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(self.0))) })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            S(soft_sqrt(self.0))
        }
    }
}

/// The correctly rounded square root in integer arithmetic, for targets whose core
/// library has none: a fixed trip count and masks instead of branches, so every input
/// takes the same path. Gives the same bits as IEEE `sqrt` (NaN's payload aside).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(crate) fn soft_sqrt(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = (bits >> 23) & 0xff;
    let m = bits & 0x007f_ffff;
    // Zero and subnormals (all ones) are normalised so the leading one is bit 23.
    let sub = ((e == 0) as u32).wrapping_neg();
    let lz = (m | 1).leading_zeros() - 8;
    let mant = ((m << lz) & sub) | ((m | 0x0080_0000) & !sub);
    let exp = ((-126 - lz as i32) & sub as i32) | ((e as i32 - 127) & !(sub as i32));
    // x = mant * 2^(exp - 23). Shifting by 25 or 26 makes the power even and puts the
    // integer root in [2^24, 2^25): 24 bits and one for rounding (sqrt has no ties).
    let shift = 25 + (exp & 1) as u32;
    let n = (mant as u64) << shift;
    let (mut rem, mut root, mut bit) = (n, 0u64, 1u64 << 48);
    for _ in 0..25 {
        let t = root + bit;
        let take = ((rem >= t) as u64).wrapping_neg();
        rem -= t & take;
        root = (root >> 1) + (bit & take);
        bit >>= 2;
    }
    let rounded = ((root + 1) >> 1) as u32;
    let half = (exp - 23 - shift as i32) >> 1;
    // The carry of a mantissa rounded up to 2^24 moves into the exponent.
    let value = (((half + 24 + 127) as u32) << 23).wrapping_add(rounded.wrapping_sub(0x0080_0000));
    let abs = bits & 0x7fff_ffff;
    let zero = ((abs == 0) as u32).wrapping_neg();
    let negative = (((bits >> 31) == 1 && abs != 0) as u32).wrapping_neg();
    let special = ((e == 0xff) as u32).wrapping_neg();
    let finite = (value & !special) | ((bits | (0x0040_0000 * (m != 0) as u32)) & special);
    let signed = (0x7fc0_0000 & negative) | (finite & !negative);
    f32::from_bits((bits & zero) | (signed & !zero))
}

impl S {
    #[inline(always)]
    fn trunc_i32(self) -> i32 {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::*;
            // SAFETY: SSE is part of the x86-64 baseline.
            unsafe { _mm_cvttss_si32(_mm_set_ss(self.0)) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self.0 as i32
        }
    }
}

/// Four lanes in an SSE register: SSE2 is part of every x86-64, so a plain
/// `cargo build` gets vector code too.
#[cfg(target_arch = "x86_64")]
pub(crate) use sse::V4;

#[cfg(target_arch = "x86_64")]
mod sse {
    use super::Lanes;
    use core::arch::x86_64::*;
    use core::ops::{Add, Div, Mul, Neg, Sub};

    /// Four floats in an SSE register.
    #[derive(Clone, Copy, Debug)]
    pub struct V4(pub __m128);

    macro_rules! vector_op {
        ($trait:ident, $f:ident, $intrinsic:ident) => {
            impl $trait for V4 {
                type Output = V4;
                #[inline(always)]
                fn $f(self, o: V4) -> V4 {
                    // SAFETY: SSE and SSE2 are part of the x86-64 baseline.
                    V4(unsafe { $intrinsic(self.0, o.0) })
                }
            }
        };
    }
    vector_op!(Add, add, _mm_add_ps);
    vector_op!(Sub, sub, _mm_sub_ps);
    vector_op!(Mul, mul, _mm_mul_ps);
    vector_op!(Div, div, _mm_div_ps);

    impl Neg for V4 {
        type Output = V4;
        #[inline(always)]
        fn neg(self) -> V4 {
            // SAFETY: SSE is part of the x86-64 baseline.
            V4(unsafe { _mm_xor_ps(self.0, _mm_set1_ps(-0.0)) })
        }
    }

    // SAFETY (every block below): SSE and SSE2 are part of the x86-64 baseline. The
    // operations are those of the AVX2 lanes at half the width, so the bits are the same.
    impl Lanes for V4 {
        #[inline(always)]
        fn splat(v: f32) -> V4 {
            V4(unsafe { _mm_set1_ps(v) })
        }
        #[inline(always)]
        fn gt(self, o: V4) -> V4 {
            V4(unsafe { _mm_cmpgt_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn lt(self, o: V4) -> V4 {
            V4(unsafe { _mm_cmplt_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn ge(self, o: V4) -> V4 {
            V4(unsafe { _mm_cmpge_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn select(m: V4, a: V4, b: V4) -> V4 {
            V4(unsafe { _mm_or_ps(_mm_and_ps(m.0, a.0), _mm_andnot_ps(m.0, b.0)) })
        }
        #[inline(always)]
        fn trunc(self) -> V4 {
            V4(unsafe { _mm_cvtepi32_ps(_mm_cvttps_epi32(self.0)) })
        }
        #[inline(always)]
        fn pow2_minus_1(self) -> V4 {
            unsafe {
                let n = _mm_cvttps_epi32(self.0);
                V4(_mm_castsi128_ps(_mm_slli_epi32::<23>(_mm_add_epi32(
                    n,
                    _mm_set1_epi32(126),
                ))))
            }
        }
        #[inline(always)]
        fn exponent(self) -> V4 {
            unsafe {
                let bits = _mm_castps_si128(self.0);
                let e = _mm_and_si128(_mm_srli_epi32::<23>(bits), _mm_set1_epi32(0xff));
                V4(_mm_cvtepi32_ps(_mm_sub_epi32(e, _mm_set1_epi32(126))))
            }
        }
        #[inline(always)]
        fn sqrt(self) -> V4 {
            V4(unsafe { _mm_sqrt_ps(self.0) })
        }
        #[inline(always)]
        fn mantissa(self) -> V4 {
            unsafe {
                let bits = _mm_castps_si128(self.0);
                let m = _mm_or_si128(
                    _mm_and_si128(bits, _mm_set1_epi32(0x007f_ffff)),
                    _mm_set1_epi32(0x3f00_0000),
                );
                V4(_mm_castsi128_ps(m))
            }
        }
        #[inline(always)]
        fn max(self, o: V4) -> V4 {
            // SAFETY: SSE is part of the x86-64 baseline.
            V4(unsafe { _mm_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn min(self, o: V4) -> V4 {
            // SAFETY: SSE is part of the x86-64 baseline.
            V4(unsafe { _mm_min_ps(self.0, o.0) })
        }
    }

    impl super::Vector for V4 {
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> V4 {
            // SAFETY: the caller guarantees four readable floats; the load is unaligned.
            V4(unsafe { _mm_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller guarantees four writable floats; the store is unaligned.
            unsafe { _mm_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        fn mul_add(self, b: V4, c: V4) -> V4 {
            // SSE2 has no FMA: the portable loop's product, then sum.
            c + self * b
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::V8;

/// Eight lanes in an AVX register. Its functions are `inline(always)` and run only
/// inside [`crate::isa::Avx2`] or [`crate::isa::Avx512`]'s `vectorize`, which the CPU was
/// checked to support when the token was made.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Lanes;
    use core::arch::x86_64::*;
    use core::ops::{Add, Div, Mul, Neg, Sub};

    /// Eight floats in an AVX register.
    #[derive(Clone, Copy, Debug)]
    pub struct V8(pub __m256);

    macro_rules! vector_op {
        ($trait:ident, $f:ident, $intrinsic:ident) => {
            impl $trait for V8 {
                type Output = V8;
                #[inline(always)]
                fn $f(self, o: V8) -> V8 {
                    // SAFETY: V8 runs only where the CPU has AVX2 (see the module's comment).
                    V8(unsafe { $intrinsic(self.0, o.0) })
                }
            }
        };
    }
    vector_op!(Add, add, _mm256_add_ps);
    vector_op!(Sub, sub, _mm256_sub_ps);
    vector_op!(Mul, mul, _mm256_mul_ps);
    vector_op!(Div, div, _mm256_div_ps);

    impl Neg for V8 {
        type Output = V8;
        #[inline(always)]
        fn neg(self) -> V8 {
            // SAFETY: V8 runs only where the CPU has AVX2.
            V8(unsafe { _mm256_xor_ps(self.0, _mm256_set1_ps(-0.0)) })
        }
    }

    // SAFETY (every block below): V8 runs only where the CPU has AVX2.
    impl Lanes for V8 {
        #[inline(always)]
        fn splat(v: f32) -> V8 {
            V8(unsafe { _mm256_set1_ps(v) })
        }
        #[inline(always)]
        fn gt(self, o: V8) -> V8 {
            V8(unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn lt(self, o: V8) -> V8 {
            V8(unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn ge(self, o: V8) -> V8 {
            V8(unsafe { _mm256_cmp_ps::<_CMP_GE_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn select(m: V8, a: V8, b: V8) -> V8 {
            V8(unsafe { _mm256_or_ps(_mm256_and_ps(m.0, a.0), _mm256_andnot_ps(m.0, b.0)) })
        }
        #[inline(always)]
        fn trunc(self) -> V8 {
            V8(unsafe { _mm256_cvtepi32_ps(_mm256_cvttps_epi32(self.0)) })
        }
        #[inline(always)]
        fn pow2_minus_1(self) -> V8 {
            unsafe {
                let n = _mm256_cvttps_epi32(self.0);
                V8(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(
                    _mm256_add_epi32(n, _mm256_set1_epi32(126)),
                )))
            }
        }
        #[inline(always)]
        fn exponent(self) -> V8 {
            unsafe {
                let bits = _mm256_castps_si256(self.0);
                let e = _mm256_and_si256(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(0xff));
                V8(_mm256_cvtepi32_ps(_mm256_sub_epi32(
                    e,
                    _mm256_set1_epi32(126),
                )))
            }
        }
        #[inline(always)]
        fn sqrt(self) -> V8 {
            V8(unsafe { _mm256_sqrt_ps(self.0) })
        }
        #[inline(always)]
        fn mantissa(self) -> V8 {
            unsafe {
                let bits = _mm256_castps_si256(self.0);
                let m = _mm256_or_si256(
                    _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
                    _mm256_set1_epi32(0x3f00_0000),
                );
                V8(_mm256_castsi256_ps(m))
            }
        }
        #[inline(always)]
        fn floor(self) -> V8 {
            V8(unsafe { _mm256_floor_ps(self.0) })
        }
        #[inline(always)]
        fn max(self, o: V8) -> V8 {
            // SAFETY: V8 runs only where the CPU has AVX2.
            V8(unsafe { _mm256_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn min(self, o: V8) -> V8 {
            // SAFETY: V8 runs only where the CPU has AVX2.
            V8(unsafe { _mm256_min_ps(self.0, o.0) })
        }
    }

    impl super::Vector for V8 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> V8 {
            // SAFETY: the caller guarantees eight readable floats and AVX; unaligned.
            V8(unsafe { _mm256_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller guarantees eight writable floats and AVX; unaligned.
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        fn mul_add(self, b: V8, c: V8) -> V8 {
            // SAFETY: V8 runs only where the CPU has AVX2 and FMA.
            V8(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::V16;

/// Sixteen lanes in an AVX-512 register. As for [`V8`]: it runs only inside
/// [`crate::isa::Avx512`]'s `vectorize`. AVX-512F alone has no float `and`/`or`/`xor`
/// (those are AVX-512DQ), so masks and blends go through the integer forms, bit for bit
/// the same operations as the narrower lanes.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Lanes;
    use core::arch::x86_64::*;
    use core::ops::{Add, Div, Mul, Neg, Sub};

    /// Sixteen floats in an AVX-512 register.
    #[derive(Clone, Copy, Debug)]
    pub struct V16(pub __m512);

    macro_rules! vector_op {
        ($trait:ident, $f:ident, $intrinsic:ident) => {
            impl $trait for V16 {
                type Output = V16;
                #[inline(always)]
                fn $f(self, o: V16) -> V16 {
                    // SAFETY: V16 runs only where the CPU has AVX-512F.
                    V16(unsafe { $intrinsic(self.0, o.0) })
                }
            }
        };
    }
    vector_op!(Add, add, _mm512_add_ps);
    vector_op!(Sub, sub, _mm512_sub_ps);
    vector_op!(Mul, mul, _mm512_mul_ps);
    vector_op!(Div, div, _mm512_div_ps);

    #[inline(always)]
    fn bits(v: __m512) -> __m512i {
        // SAFETY: a reinterpretation; V16 runs only where the CPU has AVX-512F.
        unsafe { _mm512_castps_si512(v) }
    }

    #[inline(always)]
    fn float(v: __m512i) -> V16 {
        // SAFETY: as for `bits`.
        V16(unsafe { _mm512_castsi512_ps(v) })
    }

    #[inline(always)]
    fn mask(k: __mmask16) -> V16 {
        // SAFETY: as for `bits`.
        float(unsafe { _mm512_maskz_set1_epi32(k, -1) })
    }

    impl Neg for V16 {
        type Output = V16;
        #[inline(always)]
        fn neg(self) -> V16 {
            // SAFETY: V16 runs only where the CPU has AVX-512F.
            float(unsafe { _mm512_xor_si512(bits(self.0), _mm512_set1_epi32(i32::MIN)) })
        }
    }

    // SAFETY (every block below): V16 runs only where the CPU has AVX-512F. The
    // operations are those of the AVX2 lanes at twice the width, so the bits are the same.
    impl Lanes for V16 {
        #[inline(always)]
        fn splat(v: f32) -> V16 {
            V16(unsafe { _mm512_set1_ps(v) })
        }
        #[inline(always)]
        fn gt(self, o: V16) -> V16 {
            mask(unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn lt(self, o: V16) -> V16 {
            mask(unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn ge(self, o: V16) -> V16 {
            mask(unsafe { _mm512_cmp_ps_mask::<_CMP_GE_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn select(m: V16, a: V16, b: V16) -> V16 {
            let (m, a, b) = (bits(m.0), bits(a.0), bits(b.0));
            float(unsafe { _mm512_or_si512(_mm512_and_si512(m, a), _mm512_andnot_si512(m, b)) })
        }
        #[inline(always)]
        fn trunc(self) -> V16 {
            V16(unsafe { _mm512_cvtepi32_ps(_mm512_cvttps_epi32(self.0)) })
        }
        #[inline(always)]
        fn pow2_minus_1(self) -> V16 {
            unsafe {
                let n = _mm512_cvttps_epi32(self.0);
                float(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                    n,
                    _mm512_set1_epi32(126),
                )))
            }
        }
        #[inline(always)]
        fn exponent(self) -> V16 {
            unsafe {
                let e = _mm512_and_si512(
                    _mm512_srli_epi32::<23>(bits(self.0)),
                    _mm512_set1_epi32(0xff),
                );
                V16(_mm512_cvtepi32_ps(_mm512_sub_epi32(
                    e,
                    _mm512_set1_epi32(126),
                )))
            }
        }
        #[inline(always)]
        fn sqrt(self) -> V16 {
            V16(unsafe { _mm512_sqrt_ps(self.0) })
        }
        #[inline(always)]
        fn mantissa(self) -> V16 {
            unsafe {
                float(_mm512_or_si512(
                    _mm512_and_si512(bits(self.0), _mm512_set1_epi32(0x007f_ffff)),
                    _mm512_set1_epi32(0x3f00_0000),
                ))
            }
        }
        #[inline(always)]
        fn floor(self) -> V16 {
            V16(unsafe {
                _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(self.0)
            })
        }
        #[inline(always)]
        fn max(self, o: V16) -> V16 {
            // SAFETY: as above; `vmaxps` has `maxps`'s NaN rule at every width.
            V16(unsafe { _mm512_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn min(self, o: V16) -> V16 {
            // SAFETY: as above; `vmaxps` has `maxps`'s NaN rule at every width.
            V16(unsafe { _mm512_min_ps(self.0, o.0) })
        }
    }

    impl V16 {
        /// The two floats at `p` over every pair of lanes, `[p0, p1, p0, p1, ..]`: one
        /// 8-byte broadcast.
        ///
        /// # Safety
        /// Two readable floats at `p`.
        #[inline(always)]
        pub(crate) unsafe fn splat_pair(p: *const f32) -> V16 {
            // SAFETY: the caller's; unaligned.
            V16(unsafe { _mm512_castpd_ps(_mm512_set1_pd(p.cast::<f64>().read_unaligned())) })
        }

        /// The sums of neighbouring lanes of `a` then of `b`: lane `j` is
        /// `a[2j] + a[2j + 1]` and lane `8 + j` is `b[2j] + b[2j + 1]`.
        #[inline(always)]
        pub(crate) fn pair_sums(a: V16, b: V16) -> V16 {
            // SAFETY: V16 runs only where the CPU has AVX-512F.
            unsafe {
                let even =
                    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                let odd =
                    _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                V16(_mm512_add_ps(
                    _mm512_permutex2var_ps(a.0, even, b.0),
                    _mm512_permutex2var_ps(a.0, odd, b.0),
                ))
            }
        }

        /// `v` in both halves.
        #[inline(always)]
        pub(crate) fn twice(v: super::V8) -> V16 {
            // SAFETY: V16 runs only where the CPU has AVX-512F.
            V16(unsafe { _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(v.0))) })
        }

        /// Stores the lanes whose bit is set in `keep`.
        ///
        /// # Safety
        /// The kept lanes' floats at `p` are writable.
        #[inline(always)]
        pub(crate) unsafe fn store_masked(self, p: *mut f32, keep: u16) {
            // SAFETY: the caller's; masked lanes are neither written nor faulted on.
            unsafe { _mm512_mask_storeu_ps(p, keep, self.0) }
        }
    }

    impl super::Vector for V16 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> V16 {
            // SAFETY: the caller guarantees sixteen readable floats; unaligned.
            V16(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller guarantees sixteen writable floats; unaligned.
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        fn mul_add(self, b: V16, c: V16) -> V16 {
            // SAFETY: V16 runs only where the CPU has AVX-512F.
            V16(unsafe { _mm512_fmadd_ps(self.0, b.0, c.0) })
        }
    }
}
