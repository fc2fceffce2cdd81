//! Dense layers: `y = act(x W + b)` for `rows` rows, `W` stored `[k, n]` row-major as
//! Keras keeps it.

use crate::act::Act;
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
        for r in 0..p.rows {
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

/// One row of `x W + b` with the output columns in registers: 32 at a time in four
/// accumulators, then 8, then one by one; each input value is broadcast once per block.
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
        let init = |col: usize| match bias {
            Some(b) => _mm256_loadu_ps(b.add(col)),
            None => _mm256_setzero_ps(),
        };
        let mut start = 0;
        while start + 32 <= n {
            let mut acc = [
                init(start),
                init(start + 8),
                init(start + 16),
                init(start + 24),
            ];
            for i in 0..k {
                let v = _mm256_broadcast_ss(&*x.add(i));
                let wr = w.add(i * n + start);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(v, _mm256_loadu_ps(wr.add(8 * j)), *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(y.add(start + 8 * j), *a);
            }
            start += 32;
        }
        while start + 8 <= n {
            let mut acc = init(start);
            for i in 0..k {
                acc = _mm256_fmadd_ps(
                    _mm256_broadcast_ss(&*x.add(i)),
                    _mm256_loadu_ps(w.add(i * n + start)),
                    acc,
                );
            }
            _mm256_storeu_ps(y.add(start), acc);
            start += 8;
        }
        for col in start..n {
            let mut acc = bias.map_or(0.0, |b| *b.add(col));
            for i in 0..k {
                acc += *x.add(i) * *w.add(i * n + col);
            }
            *y.add(col) = acc;
        }
    }
}
