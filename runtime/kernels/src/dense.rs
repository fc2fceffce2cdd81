//! Dense layers: `y = act(x W + b)` for `rows` rows, `W` stored `[k, n]` row-major as
//! Keras keeps it.

use crate::act::Act;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
use crate::simd::bias_vector;
use crate::simd::{axpy, part, part_mut};

/// A dense layer with fixed sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dense {
    /// Rows (all axes of the input but the last).
    pub rows: usize,
    /// Inputs per row.
    pub k: usize,
    /// Outputs per row.
    pub n: usize,
    /// Fused activation.
    pub act: Act,
}

/// Output columns per block: the accumulators of one block stay in registers.
const BLOCK: usize = 32;

/// `y = act(x W + b)`.
#[inline]
pub fn dense(p: &Dense, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (k, n) = (p.k, p.n);
    if x.len() < p.rows * k
        || w.len() < k * n
        || y.len() < p.rows * n
        || bias.is_some_and(|b| b.len() < n)
    {
        return;
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // Pairs of rows share each weight load, for layers applied over time steps
        // or positions; the full 32-column blocks are the ones that pay for it.
        let paired = if n >= 32 { p.rows / 2 * 2 } else { 0 };
        for r in (0..paired).step_by(2) {
            // SAFETY: the lengths of x, w, y and bias were checked against rows, k and
            // n above; rows `r` and `r + 1` of x and y lie inside them.
            unsafe {
                rows2_avx2(
                    k,
                    n,
                    x.as_ptr().add(r * k),
                    w.as_ptr(),
                    bias.map(<[f32]>::as_ptr),
                    y.as_mut_ptr().add(r * n),
                )
            };
            p.act.apply(unsafe { part_mut(y, r * n, 2 * n) });
        }
        for r in paired..p.rows {
            // SAFETY: the lengths of x, w, y and bias were checked against rows, k and
            // n above; row `r` of x and y lies inside them.
            unsafe {
                row_avx2(
                    k,
                    n,
                    x.as_ptr().add(r * k),
                    w.as_ptr(),
                    bias.map(<[f32]>::as_ptr),
                    y.as_mut_ptr().add(r * n),
                )
            };
            p.act.apply(unsafe { part_mut(y, r * n, n) });
        }
        #[allow(clippy::needless_return)]
        return;
    }
    #[cfg(all(
        target_arch = "x86_64",
        not(all(target_feature = "avx2", target_feature = "fma"))
    ))]
    {
        for r in 0..p.rows {
            // SAFETY: the lengths of x, w, y and bias were checked against rows, k and
            // n above; row `r` of x and y lies inside them.
            unsafe {
                sse::row(
                    k,
                    n,
                    x.as_ptr().add(r * k),
                    w.as_ptr(),
                    bias.map(<[f32]>::as_ptr),
                    y.as_mut_ptr().add(r * n),
                )
            };
            p.act.apply(unsafe { part_mut(y, r * n, n) });
        }
        #[allow(clippy::needless_return)]
        return;
    }
    #[allow(unreachable_code)]
    for r in 0..p.rows {
        // SAFETY (every `part` below): the lengths of x, w, y and bias were checked
        // against rows, k and n above, and every range stays inside them.
        let (xr, yr) = unsafe { (part(x, r * k, k), part_mut(y, r * n, n)) };
        let mut start = 0;
        while start < n {
            let width = if n - start >= BLOCK { BLOCK } else { n - start };
            let mut acc = [0f32; BLOCK];
            let acc = &mut acc[..width];
            if let Some(b) = bias {
                acc.copy_from_slice(unsafe { part(b, start, width) });
            }
            for (i, &xv) in xr.iter().enumerate() {
                axpy(acc, xv, unsafe { part(w, i * n + start, width) });
            }
            unsafe { part_mut(yr, start, width) }.copy_from_slice(acc);
            start += width;
        }
        p.act.apply(yr);
    }
}

/// One row of `x W + b` with the output columns in registers: 32 at a time in eight
/// accumulators, then 8 in four, then one by one; each input value is broadcast once
/// per block.
///
/// # Safety
/// `x` holds `k` floats, `w` `k * n`, `y` `n`, and `bias` (when given) `n`.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[inline(always)]
unsafe fn row_avx2(
    k: usize,
    n: usize,
    x: *const f32,
    w: *const f32,
    bias: Option<*const f32>,
    y: *mut f32,
) {
    use core::arch::x86_64::*;
    // SAFETY (the whole body): every offset stays inside the buffers the contract names;
    // loads and stores are the unaligned forms; AVX2 and FMA are enabled for this build.
    unsafe {
        let init = |col: usize| bias_vector(bias, col);
        let mut start = 0;
        // Two sets of accumulators, over even and odd inputs, so that eight independent
        // FMA chains hide the FMA latency; they are added once at the end.
        let pairs = k / 2;
        while start + 32 <= n {
            let mut even = [
                init(start),
                init(start + 8),
                init(start + 16),
                init(start + 24),
            ];
            let mut odd = [_mm256_setzero_ps(); 4];
            for i in 0..pairs {
                let v0 = _mm256_broadcast_ss(&*x.add(2 * i));
                let v1 = _mm256_broadcast_ss(&*x.add(2 * i + 1));
                let w0 = w.add(2 * i * n + start);
                let w1 = w0.add(n);
                for j in 0..4 {
                    even[j] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(w0.add(8 * j)), even[j]);
                    odd[j] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(w1.add(8 * j)), odd[j]);
                }
            }
            if k % 2 == 1 {
                let v = _mm256_broadcast_ss(&*x.add(k - 1));
                let wr = w.add((k - 1) * n + start);
                for (j, a) in even.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(v, _mm256_loadu_ps(wr.add(8 * j)), *a);
                }
            }
            for j in 0..4 {
                _mm256_storeu_ps(y.add(start + 8 * j), _mm256_add_ps(even[j], odd[j]));
            }
            start += 32;
        }
        if start < n {
            row_tail_avx2(
                k,
                n,
                n - start,
                x,
                w.add(start),
                bias.map(|b| b.add(start)),
                y.add(start),
            );
        }
    }
}

/// Two adjacent rows of `x W + b`: the full 32-column blocks in eight accumulators
/// (two rows x four vectors), so each weight vector loaded feeds two FMAs; the columns
/// left over take [`row_avx2`]'s path, row by row.
///
/// # Safety
/// `x` holds `2 * k` floats, `w` `k * n`, `y` `2 * n`, and `bias` (when given) `n`.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[inline(always)]
unsafe fn rows2_avx2(
    k: usize,
    n: usize,
    x: *const f32,
    w: *const f32,
    bias: Option<*const f32>,
    y: *mut f32,
) {
    use core::arch::x86_64::*;
    // SAFETY (the whole body): every offset stays inside the buffers the contract names;
    // loads and stores are the unaligned forms; AVX2 and FMA are enabled for this build.
    unsafe {
        let init = |col: usize| bias_vector(bias, col);
        let (x1, y1) = (x.add(k), y.add(n));
        let mut start = 0;
        while start + 32 <= n {
            let mut a0 = [
                init(start),
                init(start + 8),
                init(start + 16),
                init(start + 24),
            ];
            let mut a1 = a0;
            for i in 0..k {
                let v0 = _mm256_broadcast_ss(&*x.add(i));
                let v1 = _mm256_broadcast_ss(&*x1.add(i));
                let wr = w.add(i * n + start);
                for j in 0..4 {
                    let wv = _mm256_loadu_ps(wr.add(8 * j));
                    a0[j] = _mm256_fmadd_ps(v0, wv, a0[j]);
                    a1[j] = _mm256_fmadd_ps(v1, wv, a1[j]);
                }
            }
            for j in 0..4 {
                _mm256_storeu_ps(y.add(start + 8 * j), a0[j]);
                _mm256_storeu_ps(y1.add(start + 8 * j), a1[j]);
            }
            start += 32;
        }
        if start < n {
            let rest = n - start;
            let (b, w) = (bias.map(|b| b.add(start)), w.add(start));
            // The leftover columns of both rows, as a narrower matrix with row stride n.
            row_tail_avx2(k, n, rest, x, w, b, y.add(start));
            row_tail_avx2(k, n, rest, x1, w, b, y1.add(start));
        }
    }
}

/// Columns `0..cols` of one row of `x W + b`, `W` having row stride `n`: 8 at a time in
/// four chains, then one by one.
///
/// # Safety
/// `x` holds `k` floats, `w` `(k - 1) * n + cols`, `y` `cols`, `bias` (when given) `cols`.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[inline(always)]
unsafe fn row_tail_avx2(
    k: usize,
    n: usize,
    cols: usize,
    x: *const f32,
    w: *const f32,
    bias: Option<*const f32>,
    y: *mut f32,
) {
    use core::arch::x86_64::*;
    // SAFETY (the whole body): as the contract says; unaligned loads and stores.
    unsafe {
        let mut start = 0;
        while start + 8 <= cols {
            let zero = _mm256_setzero_ps();
            let mut acc = [bias_vector(bias, start), zero, zero, zero];
            for i in 0..k {
                acc[i % 4] = _mm256_fmadd_ps(
                    _mm256_broadcast_ss(&*x.add(i)),
                    _mm256_loadu_ps(w.add(i * n + start)),
                    acc[i % 4],
                );
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            _mm256_storeu_ps(y.add(start), sum);
            start += 8;
        }
        for col in start..cols {
            let mut acc = bias.map_or(0.0, |b| *b.add(col));
            for i in 0..k {
                acc += *x.add(i) * *w.add(i * n + col);
            }
            *y.add(col) = acc;
        }
    }
}

/// The x86-64 baseline (SSE2) where AVX2+FMA is not enabled: the output columns of a
/// row in SSE registers, 32 at a time in eight accumulators, then 4 at a time, then one
/// by one. Each column sums in the portable loop's order, so the bits are the same.
#[cfg(all(
    target_arch = "x86_64",
    not(all(target_feature = "avx2", target_feature = "fma"))
))]
mod sse {
    use core::arch::x86_64::*;

    /// One row of `x W + b`.
    ///
    /// # Safety
    /// `x` holds `k` floats, `w` `k * n`, `y` `n`, and `bias` (when given) `n`.
    #[inline(always)]
    pub(super) unsafe fn row(
        k: usize,
        n: usize,
        x: *const f32,
        w: *const f32,
        bias: Option<*const f32>,
        y: *mut f32,
    ) {
        // SAFETY (the whole body): every offset is below the lengths of the contract;
        // SSE is part of the x86-64 baseline; loads and stores are the unaligned forms.
        unsafe {
            let mut start = 0;
            while start + 32 <= n {
                let mut acc = [_mm_setzero_ps(); 8];
                if let Some(b) = bias {
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm_loadu_ps(b.add(start + 4 * j));
                    }
                }
                for i in 0..k {
                    let v = _mm_set1_ps(*x.add(i));
                    let wr = w.add(i * n + start);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm_add_ps(*a, _mm_mul_ps(v, _mm_loadu_ps(wr.add(4 * j))));
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm_storeu_ps(y.add(start + 4 * j), *a);
                }
                start += 32;
            }
            while start + 4 <= n {
                let mut a = match bias {
                    Some(b) => _mm_loadu_ps(b.add(start)),
                    None => _mm_setzero_ps(),
                };
                for i in 0..k {
                    let v = _mm_set1_ps(*x.add(i));
                    a = _mm_add_ps(a, _mm_mul_ps(v, _mm_loadu_ps(w.add(i * n + start))));
                }
                _mm_storeu_ps(y.add(start), a);
                start += 4;
            }
            for c in start..n {
                let mut a = bias.map_or(0.0, |b| *b.add(c));
                for i in 0..k {
                    a += *x.add(i) * *w.add(i * n + c);
                }
                *y.add(c) = a;
            }
        }
    }
}
