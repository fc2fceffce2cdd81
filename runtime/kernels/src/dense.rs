//! Dense layers: `y = act(x W + b)` for `rows` rows, `W` stored `[k, n]` row-major as
//! Keras keeps it.

use crate::act::Act;
use crate::conv::{conv_in, Conv};
use crate::isa::Isa;
use crate::lanes::Vector;
use crate::simd::{bias_vector, part_mut};
use crate::window::Window;

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

/// `y = act(x W + b)`.
pub fn dense<I: Isa>(isa: I, p: &Dense, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    isa.vectorize(
        #[inline(always)]
        || dense_in::<I>(isa, p, x, w, bias, y),
    );
}

/// [`dense`] for code already inside `I::vectorize`: generated code runs all its steps
/// inside one, so that each step's constants reach the inlined loops.
#[inline(always)]
pub fn dense_in<I: Isa>(
    isa: I,
    p: &Dense,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (k, n) = (p.k, p.n);
    if x.len() < p.rows * k
        || w.len() < k * n
        || y.len() < p.rows * n
        || bias.is_some_and(|b| b.len() < n)
    {
        return;
    }
    if p.rows >= 3 {
        // Three rows and more: the convolution's pixel tiles, a 1x1 convolution over the
        // rows with the same `[k, n]` weights, share each weight load among six rows.
        let rows = Window {
            input: p.rows,
            output: p.rows,
            ..Window::UNIT
        };
        let c = Conv {
            batch: 1,
            windows: [Window::UNIT, Window::UNIT, rows],
            cin: k,
            cout: n,
            groups: 1,
            act: p.act,
            panels: false,
        };
        conv_in::<I>(isa, &c, x, w, bias, y);
        return;
    }
    let (xp, wp, yp, bp) = (
        x.as_ptr(),
        w.as_ptr(),
        y.as_mut_ptr(),
        bias.map(<[f32]>::as_ptr),
    );
    if I::FMA {
        // Two rows share each weight load; the full blocks are the ones that pay for it.
        let paired = if n >= fused::block_columns::<I>() {
            p.rows / 2 * 2
        } else {
            0
        };
        for r in (0..paired).step_by(2) {
            // SAFETY: the lengths of x, w, y and bias were checked against rows, k and
            // n above; rows `r` and `r + 1` of x and y lie inside them.
            unsafe { fused::rows2::<I>(k, n, xp.add(r * k), wp, bp, yp.add(r * n)) };
            p.act.apply(isa, unsafe { part_mut(y, r * n, 2 * n) });
        }
        for r in paired..p.rows {
            // SAFETY: as above, for row `r`.
            unsafe { fused::row::<I>(k, n, xp.add(r * k), wp, bp, yp.add(r * n)) };
            p.act.apply(isa, unsafe { part_mut(y, r * n, n) });
        }
    } else {
        for r in 0..p.rows {
            // SAFETY: as above, for row `r`.
            unsafe { exact_row::<I::F>(k, n, xp.add(r * k), wp, bp, yp.add(r * n)) };
            p.act.apply(isa, unsafe { part_mut(y, r * n, n) });
        }
    }
}

/// Vectors of output columns one block keeps in registers.
const BLOCK: usize = 8;

/// One row of `x W + b` without fused multiply-adds: the output columns in registers,
/// `BLOCK` vectors at a time, then one vector, then one by one. Each column sums in the
/// portable loop's order, so every width gives the same bits.
///
/// # Safety
/// `x` holds `k` floats, `w` `k * n`, `y` `n`, and `bias` (when given) `n`; the ISA of
/// `V` is enabled.
#[inline(always)]
unsafe fn exact_row<V: Vector>(
    k: usize,
    n: usize,
    x: *const f32,
    w: *const f32,
    bias: Option<*const f32>,
    y: *mut f32,
) {
    // SAFETY (the whole body): every offset is below the lengths of the contract.
    unsafe {
        let mut start = 0;
        while start + BLOCK * V::LANES <= n {
            let mut acc = [V::splat(0.0); BLOCK];
            for (j, a) in acc.iter_mut().enumerate() {
                *a = bias_vector(bias, start + j * V::LANES);
            }
            for i in 0..k {
                let v = V::splat(*x.add(i));
                let wr = w.add(i * n + start);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = v.mul_add(V::load(wr.add(j * V::LANES)), *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                a.store(y.add(start + j * V::LANES));
            }
            start += BLOCK * V::LANES;
        }
        while start + V::LANES <= n {
            let mut a: V = bias_vector(bias, start);
            for i in 0..k {
                a = V::splat(*x.add(i)).mul_add(V::load(w.add(i * n + start)), a);
            }
            a.store(y.add(start));
            start += V::LANES;
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

/// The fused multiply-add kernels (AVX2, AVX-512F): free to reorder the sums, they keep
/// more independent chains in flight.
mod fused {
    use super::*;

    /// Blocks of half vectors pay where the half is itself a fused 8-wide register
    /// (AVX-512's AVX2 half); AVX2's SSE half has no FMA, and its full vectors do better
    /// on the columns left.
    #[inline(always)]
    pub(super) fn half_blocks<I: Isa>() -> bool {
        <I::H>::LANES >= 8
    }

    /// The narrowest block [`rows2`] runs.
    #[inline(always)]
    pub(super) fn block_columns<I: Isa>() -> usize {
        4 * if half_blocks::<I>() {
            <I::H>::LANES
        } else {
            <I::F>::LANES
        }
    }

    /// One row of `x W + b` with the output columns in registers: blocks of four full
    /// vectors, then of four half vectors, then the columns left over (see [`tail`]).
    ///
    /// # Safety
    /// `x` holds `k` floats, `w` `k * n`, `y` `n`, and `bias` (when given) `n`; `I` is
    /// enabled.
    #[inline(always)]
    pub(super) unsafe fn row<I: Isa>(
        k: usize,
        n: usize,
        x: *const f32,
        w: *const f32,
        bias: Option<*const f32>,
        y: *mut f32,
    ) {
        // SAFETY: as the contract says.
        unsafe {
            let mut start = blocks::<I::F>(k, n, 0, x, w, bias, y);
            if half_blocks::<I>() {
                start = blocks::<I::H>(k, n, start, x, w, bias, y);
            }
            tail::<I>(
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

    /// Blocks of four `V` of one row from column `start` while they fit below `n`, in
    /// eight accumulators: two sets, over even and odd inputs, so that eight independent
    /// FMA chains hide the FMA latency; they are added at the end. Each input value is
    /// broadcast once per block. Returns the first column left.
    ///
    /// # Safety
    /// As for [`row`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocks<V: Vector>(
        k: usize,
        n: usize,
        mut start: usize,
        x: *const f32,
        w: *const f32,
        bias: Option<*const f32>,
        y: *mut f32,
    ) -> usize {
        let l = V::LANES;
        // SAFETY (the whole body): every offset stays inside the buffers the contract
        // names.
        unsafe {
            let pairs = k / 2;
            while start + 4 * l <= n {
                let mut even: [V; 4] = [
                    bias_vector(bias, start),
                    bias_vector(bias, start + l),
                    bias_vector(bias, start + 2 * l),
                    bias_vector(bias, start + 3 * l),
                ];
                let mut odd = [V::splat(0.0); 4];
                for i in 0..pairs {
                    let v0 = V::splat(*x.add(2 * i));
                    let v1 = V::splat(*x.add(2 * i + 1));
                    let w0 = w.add(2 * i * n + start);
                    let w1 = w0.add(n);
                    for j in 0..4 {
                        even[j] = v0.mul_add(V::load(w0.add(l * j)), even[j]);
                        odd[j] = v1.mul_add(V::load(w1.add(l * j)), odd[j]);
                    }
                }
                if k % 2 == 1 {
                    let v = V::splat(*x.add(k - 1));
                    let wr = w.add((k - 1) * n + start);
                    for (j, a) in even.iter_mut().enumerate() {
                        *a = v.mul_add(V::load(wr.add(l * j)), *a);
                    }
                }
                for j in 0..4 {
                    (even[j] + odd[j]).store(y.add(start + l * j));
                }
                start += 4 * l;
            }
        }
        start
    }

    /// Two adjacent rows of `x W + b`: blocks of four full vectors, then of four half
    /// vectors, in eight accumulators (two rows x four vectors), so each weight vector
    /// loaded feeds two FMAs; the columns left over take [`tail`], row by row.
    ///
    /// # Safety
    /// `x` holds `2 * k` floats, `w` `k * n`, `y` `2 * n`, and `bias` (when given) `n`;
    /// `I` is enabled.
    #[inline(always)]
    pub(super) unsafe fn rows2<I: Isa>(
        k: usize,
        n: usize,
        x: *const f32,
        w: *const f32,
        bias: Option<*const f32>,
        y: *mut f32,
    ) {
        // SAFETY: as the contract says.
        unsafe {
            let mut start = blocks2::<I::F>(k, n, 0, x, w, bias, y);
            if half_blocks::<I>() {
                start = blocks2::<I::H>(k, n, start, x, w, bias, y);
            }
            let rest = n - start;
            let (b, w) = (bias.map(|b| b.add(start)), w.add(start));
            // The leftover columns of both rows, as a narrower matrix with row stride n.
            tail::<I>(k, n, rest, x, w, b, y.add(start));
            tail::<I>(k, n, rest, x.add(k), w, b, y.add(n + start));
        }
    }

    /// [`blocks`] for two rows at once.
    ///
    /// # Safety
    /// As for [`rows2`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocks2<V: Vector>(
        k: usize,
        n: usize,
        mut start: usize,
        x: *const f32,
        w: *const f32,
        bias: Option<*const f32>,
        y: *mut f32,
    ) -> usize {
        let l = V::LANES;
        // SAFETY (the whole body): every offset stays inside the buffers the contract
        // names.
        unsafe {
            let (x1, y1) = (x.add(k), y.add(n));
            while start + 4 * l <= n {
                let mut a0: [V; 4] = [
                    bias_vector(bias, start),
                    bias_vector(bias, start + l),
                    bias_vector(bias, start + 2 * l),
                    bias_vector(bias, start + 3 * l),
                ];
                let mut a1 = a0;
                for i in 0..k {
                    let v0 = V::splat(*x.add(i));
                    let v1 = V::splat(*x1.add(i));
                    let wr = w.add(i * n + start);
                    for j in 0..4 {
                        let wv = V::load(wr.add(l * j));
                        a0[j] = v0.mul_add(wv, a0[j]);
                        a1[j] = v1.mul_add(wv, a1[j]);
                    }
                }
                for j in 0..4 {
                    a0[j].store(y.add(start + l * j));
                    a1[j].store(y1.add(start + l * j));
                }
                start += 4 * l;
            }
        }
        start
    }

    /// Columns `0..cols` of one row of `x W + b`, `W` having row stride `n`: a full
    /// vector at a time, then a half vector, then one by one.
    ///
    /// # Safety
    /// `x` holds `k` floats, `w` `(k - 1) * n + cols`, `y` `cols`, `bias` (when given)
    /// `cols`; `I` is enabled.
    #[inline(always)]
    unsafe fn tail<I: Isa>(
        k: usize,
        n: usize,
        cols: usize,
        x: *const f32,
        w: *const f32,
        bias: Option<*const f32>,
        y: *mut f32,
    ) {
        // SAFETY (the whole body): as the contract says.
        unsafe {
            let mut start = vectors::<I::F>(k, n, 0, cols, x, w, bias, y);
            start = vectors::<I::H>(k, n, start, cols, x, w, bias, y);
            for col in start..cols {
                let mut acc = bias.map_or(0.0, |b| *b.add(col));
                for i in 0..k {
                    acc += *x.add(i) * *w.add(i * n + col);
                }
                *y.add(col) = acc;
            }
        }
    }

    /// Columns from `start` while a whole `V` fits below `cols`, each in four FMA chains;
    /// returns the first column left.
    ///
    /// # Safety
    /// As for [`tail`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn vectors<V: Vector>(
        k: usize,
        n: usize,
        mut start: usize,
        cols: usize,
        x: *const f32,
        w: *const f32,
        bias: Option<*const f32>,
        y: *mut f32,
    ) -> usize {
        // SAFETY (the whole body): as the contract says.
        unsafe {
            while start + V::LANES <= cols {
                let zero = V::splat(0.0);
                let mut acc = [bias_vector(bias, start), zero, zero, zero];
                for i in 0..k {
                    acc[i % 4] =
                        V::splat(*x.add(i)).mul_add(V::load(w.add(i * n + start)), acc[i % 4]);
                }
                ((acc[0] + acc[1]) + (acc[2] + acc[3])).store(y.add(start));
                start += V::LANES;
            }
        }
        start
    }
}
