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
