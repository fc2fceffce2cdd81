//! The inner loops that decide speed, chosen in this one place: AVX2+FMA when the
//! target has it at compile time, else a portable version of the same algorithm.

/// `y += a * x` over `min(len)` values.
#[inline(always)]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        let n = y.len().min(x.len());
        let (yh, yt) = y[..n].split_at_mut(n - n % 8);
        let (xh, xt) = x[..n].split_at(n - n % 8);
        for (yc, xc) in yh.chunks_exact_mut(8).zip(xh.chunks_exact(8)) {
            use core::arch::x86_64::*;
            // SAFETY: both chunks hold exactly 8 floats (chunks_exact), the loads and the
            // store are unaligned forms, and avx2+fma are enabled for this build.
            unsafe {
                let acc = _mm256_fmadd_ps(
                    _mm256_set1_ps(a),
                    _mm256_loadu_ps(xc.as_ptr()),
                    _mm256_loadu_ps(yc.as_ptr()),
                );
                _mm256_storeu_ps(yc.as_mut_ptr(), acc);
            }
        }
        for (yv, &xv) in yt.iter_mut().zip(xt) {
            *yv += a * xv;
        }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

/// `y += a * x` elementwise over `min(len)` values (a depthwise tap over channels).
#[inline(always)]
pub(crate) fn mul_acc(y: &mut [f32], a: &[f32], x: &[f32]) {
    let n = y.len().min(a.len()).min(x.len());
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        let (yh, yt) = y[..n].split_at_mut(n - n % 8);
        let (ah, at) = a[..n].split_at(n - n % 8);
        let (xh, xt) = x[..n].split_at(n - n % 8);
        for ((yc, ac), xc) in yh
            .chunks_exact_mut(8)
            .zip(ah.chunks_exact(8))
            .zip(xh.chunks_exact(8))
        {
            use core::arch::x86_64::*;
            // SAFETY: every chunk holds exactly 8 floats (chunks_exact), the loads and
            // the store are unaligned forms, and avx2+fma are enabled for this build.
            unsafe {
                let acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(ac.as_ptr()),
                    _mm256_loadu_ps(xc.as_ptr()),
                    _mm256_loadu_ps(yc.as_ptr()),
                );
                _mm256_storeu_ps(yc.as_mut_ptr(), acc);
            }
        }
        for ((yv, &av), &xv) in yt.iter_mut().zip(at).zip(xt) {
            *yv += av * xv;
        }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    for ((yv, &av), &xv) in y[..n].iter_mut().zip(&a[..n]).zip(&x[..n]) {
        *yv += av * xv;
    }
}

/// `y = x > y ? x : y` (max) or `y += x`, elementwise over `min(len)` values: one tap
/// of a pooling window over all channels.
#[inline(always)]
pub(crate) fn pool_acc(y: &mut [f32], x: &[f32], max: bool) {
    let n = y.len().min(x.len());
    let (yh, yt) = y[..n].split_at_mut(n - n % 8);
    let (xh, xt) = x[..n].split_at(n - n % 8);
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    for (yc, xc) in yh.chunks_exact_mut(8).zip(xh.chunks_exact(8)) {
        use core::arch::x86_64::*;
        // SAFETY: both chunks hold exactly 8 floats (chunks_exact), the loads and the
        // store are unaligned forms, and avx2 is enabled for this build. `maxps(x, y)`
        // is `x > y ? x : y`, the runtime's `fmax`, NaN included.
        unsafe {
            let (xv, yv) = (_mm256_loadu_ps(xc.as_ptr()), _mm256_loadu_ps(yc.as_ptr()));
            let r = if max {
                _mm256_max_ps(xv, yv)
            } else {
                _mm256_add_ps(yv, xv)
            };
            _mm256_storeu_ps(yc.as_mut_ptr(), r);
        }
    }
    #[cfg(all(
        target_arch = "x86_64",
        not(all(target_feature = "avx2", target_feature = "fma"))
    ))]
    for (yc, xc) in yh.chunks_exact_mut(4).zip(xh.chunks_exact(4)) {
        use core::arch::x86_64::*;
        // SAFETY: both chunks hold exactly 4 floats (chunks_exact), the loads and the
        // store are unaligned forms, and SSE is part of the x86-64 baseline. `maxps`
        // is the runtime's `fmax`, as above.
        unsafe {
            let (xv, yv) = (_mm_loadu_ps(xc.as_ptr()), _mm_loadu_ps(yc.as_ptr()));
            let r = if max {
                _mm_max_ps(xv, yv)
            } else {
                _mm_add_ps(yv, xv)
            };
            _mm_storeu_ps(yc.as_mut_ptr(), r);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (yc, xc) in yh.chunks_exact_mut(8).zip(xh.chunks_exact(8)) {
        for (o, &v) in yc.iter_mut().zip(xc) {
            *o = if max { crate::act::fmax(v, *o) } else { *o + v };
        }
    }
    for (o, &v) in yt.iter_mut().zip(xt) {
        *o = if max { crate::act::fmax(v, *o) } else { *o + v };
    }
}

/// `sum(a * b)` over `min(len)` values, in eight interleaved partial sums.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n = a.len().min(b.len());
    let (ah, at) = a[..n].split_at(n - n % 8);
    let (bh, bt) = b[..n].split_at(n - n % 8);
    for (ac, bc) in ah.chunks_exact(8).zip(bh.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ac[i] * bc[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

/// `&s[start..start + len]` without a bounds check.
///
/// # Safety
/// `start + len <= s.len()`: kernels establish it for every use by checking their
/// buffer lengths against their constant parameters on entry.
#[inline(always)]
pub(crate) unsafe fn part(s: &[f32], start: usize, len: usize) -> &[f32] {
    // SAFETY: the caller guarantees the range is inside `s`.
    unsafe { s.get_unchecked(start..start + len) }
}

/// `&mut s[start..start + len]` without a bounds check.
///
/// # Safety
/// As for [`part`].
#[inline(always)]
pub(crate) unsafe fn part_mut(s: &mut [f32], start: usize, len: usize) -> &mut [f32] {
    // SAFETY: the caller guarantees the range is inside `s`.
    unsafe { s.get_unchecked_mut(start..start + len) }
}

/// Eight bias values from column `col`, or zeros without a bias.
///
/// # Safety
/// `bias`, when given, holds `col + 8` floats.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[inline(always)]
pub(crate) unsafe fn bias_vector(
    bias: Option<*const f32>,
    col: usize,
) -> core::arch::x86_64::__m256 {
    use core::arch::x86_64::*;
    // SAFETY: the caller guarantees the eight floats are there; the load is unaligned.
    unsafe {
        match bias {
            Some(b) => _mm256_loadu_ps(b.add(col)),
            None => _mm256_setzero_ps(),
        }
    }
}
