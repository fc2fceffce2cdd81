//! Dense layers: `y = act(x W + b)` for `rows` rows, `W` stored `[k, n]` row-major as
//! Keras keeps it.

use crate::act::Act;
use crate::simd::axpy;

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
    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)).take(p.rows) {
        let mut start = 0;
        while start < n {
            let width = if n - start >= BLOCK { BLOCK } else { n - start };
            let mut acc = [0f32; BLOCK];
            if let Some(b) = bias {
                acc[..width].copy_from_slice(&b[start..start + width]);
            }
            for (i, &xv) in xr.iter().enumerate() {
                axpy(
                    &mut acc[..width],
                    xv,
                    &w[i * n + start..i * n + start + width],
                );
            }
            yr[start..start + width].copy_from_slice(&acc[..width]);
            start += width;
        }
        p.act.apply(yr);
    }
}
