//! Convolutions over channels_last tensors, every rank lifted to 3-D (a 1-D length `L`
//! is `[1, 1, L]`): direct grouped convolution (depthwise is one group per input
//! channel) and transposed convolution.

use crate::act::Act;
use crate::dense::{dense, Dense};
use crate::simd::{axpy, mul_acc, part, part_mut};
use crate::window::Window;

/// A (grouped) convolution with fixed geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv {
    /// Batch size.
    pub batch: usize,
    /// Depth, height and width axes.
    pub windows: [Window; 3],
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Channel groups.
    pub groups: usize,
    /// Fused activation.
    pub act: Act,
}

impl Conv {
    /// Floats of input, kernel and output.
    pub const fn sizes(&self) -> (usize, usize, usize) {
        let [d, h, w] = self.windows;
        let taps = d.kernel * h.kernel * w.kernel;
        if self.groups == 0 {
            return (0, 0, 0);
        }
        (
            self.batch * d.input * h.input * w.input * self.cin,
            taps * (self.cin / self.groups) * self.cout,
            self.batch * d.output * h.output * w.output * self.cout,
        )
    }
}

/// `y = act(conv(x, w) + b)`; `w` is `[kd, kh, kw, cin / groups, cout]`.
#[inline]
pub fn conv(p: &Conv, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (nx, nw, ny) = p.sizes();
    if p.groups == 0
        || x.len() < nx
        || w.len() < nw
        || y.len() < ny
        || bias.is_some_and(|b| b.len() < p.cout)
    {
        return;
    }
    let [wd, wh, ww] = p.windows;
    let (cin_g, cout_g, cout) = (p.cin / p.groups, p.cout / p.groups, p.cout);
    let pointwise = |w: &Window| w.kernel == 1 && w.stride == 1 && w.pad_before == 0;
    if p.groups == 1 && p.windows.iter().all(pointwise) {
        // A 1x1 convolution is a dense layer over the pixels, with the same weight
        // layout `[cin, cout]`: its kernel shares weight loads between pixel pairs.
        let rows = p.batch * wd.output * wh.output * ww.output;
        let d = Dense {
            rows,
            k: p.cin,
            n: cout,
            act: p.act,
        };
        dense(&d, x, w, bias, y);
        return;
    }
    let mut pixel = 0;
    for b in 0..p.batch {
        for od in 0..wd.output {
            for oh in 0..wh.output {
                let row_start = pixel;
                let mut ow = 0;
                while ow < ww.output {
                    #[cfg(all(
                        target_arch = "x86_64",
                        target_feature = "avx2",
                        target_feature = "fma"
                    ))]
                    if (p.groups == 1 || (cin_g == 1 && cout_g == 1))
                        && cout % 8 == 0
                        && ow + tile::TILE <= ww.output
                        && ww.taps(ow).len() == ww.kernel
                        && ww.taps(ow + tile::TILE - 1).len() == ww.kernel
                    {
                        // Interior tiles of TILE pixels, where every width tap lands
                        // inside; the edge pixels on either side take the path below.
                        // SAFETY: lengths were checked above; the tile's taps all land
                        // inside the input (checked just now), and `pixel + TILE` output
                        // pixels fit in y; the depthwise tile needs cin == cout.
                        unsafe {
                            if p.groups == 1 {
                                tile::conv_tile(p, x, w, bias, y, b, od, oh, ow, pixel)
                            } else {
                                tile::depthwise_tile(p, x, w, bias, y, b, od, oh, ow, pixel)
                            }
                        };
                        ow += tile::TILE;
                        pixel += tile::TILE;
                        continue;
                    }
                    #[cfg(all(
                        target_arch = "x86_64",
                        target_feature = "avx2",
                        target_feature = "fma"
                    ))]
                    if p.groups == 1 && cout % 8 == 0 {
                        // SAFETY: lengths were checked above; taps() keeps every
                        // position inside the input, and this output pixel is in y.
                        unsafe { tile::conv_pixel(p, x, w, bias, y, b, od, oh, ow, pixel) };
                        pixel += 1;
                        ow += 1;
                        continue;
                    }
                    #[cfg(all(
                        target_arch = "x86_64",
                        not(all(target_feature = "avx2", target_feature = "fma"))
                    ))]
                    if (p.groups == 1 || (cin_g == 1 && cout_g == 1)) && cout % 4 == 0 {
                        // SAFETY: lengths were checked above; taps() keeps every
                        // position inside the input, and this output pixel is in y; the
                        // depthwise pixel has cin == cout.
                        unsafe {
                            if p.groups == 1 {
                                sse::conv_pixel(p, x, w, bias, y, b, od, oh, ow, pixel)
                            } else {
                                sse::depthwise_pixel(p, x, w, bias, y, b, od, oh, ow, pixel)
                            }
                        };
                        pixel += 1;
                        ow += 1;
                        continue;
                    }
                    // SAFETY (every `part` in this loop nest): x, w, y and bias lengths
                    // were checked against the geometry above; taps() keeps every
                    // position inside the input.
                    let out = unsafe { part_mut(y, pixel * cout, cout) };
                    match bias {
                        Some(bias) => out.copy_from_slice(unsafe { part(bias, 0, cout) }),
                        None => out.fill(0.0),
                    }
                    for kd in wd.taps(od) {
                        let id = wd.at(od, kd);
                        for kh in wh.taps(oh) {
                            let ih = wh.at(oh, kh);
                            for kw in ww.taps(ow) {
                                let iw = ww.at(ow, kw);
                                let xi =
                                    (((b * wd.input + id) * wh.input + ih) * ww.input + iw) * p.cin;
                                let tap = (kd * wh.kernel + kh) * ww.kernel + kw;
                                if cin_g == 1 && cout_g == 1 {
                                    // Depthwise, one output per channel: one elementwise
                                    // product over all channels per tap.
                                    let xs = unsafe { part(x, xi, cout) };
                                    mul_acc(out, xs, unsafe { part(w, tap * cout, cout) });
                                    continue;
                                }
                                for g in 0..p.groups {
                                    let xs = unsafe { part(x, xi + g * cin_g, cin_g) };
                                    let og = unsafe { part_mut(out, g * cout_g, cout_g) };
                                    for (ci, &xv) in xs.iter().enumerate() {
                                        let row = (tap * cin_g + ci) * cout + g * cout_g;
                                        axpy(og, xv, unsafe { part(w, row, cout_g) });
                                    }
                                }
                            }
                        }
                    }
                    pixel += 1;
                    ow += 1;
                }
                // The activation once per output row rather than per pixel: one call
                // over `output * cout` floats still in L1, not `output` short calls.
                // SAFETY: the row's pixels were just written, inside y.
                p.act
                    .apply(unsafe { part_mut(y, row_start * cout, ww.output * cout) });
            }
        }
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod tile {
    use super::Conv;
    use crate::simd::bias_vector;
    use core::arch::x86_64::*;

    /// Output pixels per tile: 6 pixels x 16 channels is 12 accumulators, plus two
    /// weight vectors and a broadcast input, within the 16 AVX registers.
    pub(super) const TILE: usize = 6;

    /// `TILE` adjacent output pixels along the width, all of whose width taps are inside
    /// the input, computed in registers: each weight load serves `TILE` pixels.
    ///
    /// # Safety
    /// `x`, `w`, `y` and `bias` hold what `p` needs (checked by `conv`), the tile's width
    /// taps are all in range, `p.groups == 1` and `p.cout % 8 == 0`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn conv_tile(
        p: &Conv,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        b: usize,
        od: usize,
        oh: usize,
        ow: usize,
        pixel: usize,
    ) {
        let [wd, wh, ww] = p.windows;
        let (cin, cout) = (p.cin, p.cout);
        let (xp, wp, yp) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
        let mut co = 0;
        while co < cout {
            // Two vectors of channels where there are 16 left, else one.
            let pair = cout - co >= 16;
            // SAFETY (the whole block): offsets stay inside x, w, y and bias by the
            // function's contract; loads and stores are the unaligned forms.
            unsafe {
                let bias = bias.map(<[f32]>::as_ptr);
                let init = |k: usize| bias_vector(bias, co + 8 * k);
                let mut acc = [[init(0), if pair { init(1) } else { _mm256_setzero_ps() }]; TILE];
                for kd in wd.taps(od) {
                    let id = wd.at(od, kd);
                    for kh in wh.taps(oh) {
                        let ih = wh.at(oh, kh);
                        let row = ((b * wd.input + id) * wh.input + ih) * ww.input;
                        // With no dilation along the width, a window row's taps and
                        // channels are one contiguous run in x and in w: one loop of
                        // `kernel * cin` instead of `kernel` loops of `cin`.
                        let (runs, run) = if ww.dilation == 1 {
                            (1, ww.kernel * cin)
                        } else {
                            (ww.kernel, cin)
                        };
                        for kw in 0..runs {
                            let tap = (kd * wh.kernel + kh) * ww.kernel + kw;
                            let mut xs = [core::ptr::null(); TILE];
                            for (t, xs) in xs.iter_mut().enumerate() {
                                *xs = xp.add((row + ww.at(ow + t, kw)) * cin);
                            }
                            let wrow = wp.add(tap * cin * cout + co);
                            for ci in 0..run {
                                let w0 = _mm256_loadu_ps(wrow.add(ci * cout));
                                if pair {
                                    let w1 = _mm256_loadu_ps(wrow.add(ci * cout + 8));
                                    for t in 0..TILE {
                                        let v = _mm256_broadcast_ss(&*xs[t].add(ci));
                                        acc[t][0] = _mm256_fmadd_ps(v, w0, acc[t][0]);
                                        acc[t][1] = _mm256_fmadd_ps(v, w1, acc[t][1]);
                                    }
                                } else {
                                    for t in 0..TILE {
                                        let v = _mm256_broadcast_ss(&*xs[t].add(ci));
                                        acc[t][0] = _mm256_fmadd_ps(v, w0, acc[t][0]);
                                    }
                                }
                            }
                        }
                    }
                }
                for (t, a) in acc.iter().enumerate() {
                    let out = yp.add((pixel + t) * cout + co);
                    _mm256_storeu_ps(out, a[0]);
                    if pair {
                        _mm256_storeu_ps(out.add(8), a[1]);
                    }
                }
            }
            co += if pair { 16 } else { 8 };
        }
    }

    /// `TILE` adjacent output pixels of a depthwise convolution with one output per
    /// channel, eight channels at a time in `TILE` accumulators: each weight vector
    /// loaded serves `TILE` pixels, and no partial sum leaves a register.
    ///
    /// # Safety
    /// As for [`conv_tile`], with `p.groups == p.cin == p.cout` instead of one group.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn depthwise_tile(
        p: &Conv,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        b: usize,
        od: usize,
        oh: usize,
        ow: usize,
        pixel: usize,
    ) {
        let [wd, wh, ww] = p.windows;
        let c = p.cout;
        let (xp, wp, yp) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
        let mut co = 0;
        while co < c {
            // SAFETY (the whole block): offsets stay inside x, w, y and bias by the
            // function's contract; loads and stores are the unaligned forms.
            unsafe {
                let mut acc = [bias_vector(bias.map(<[f32]>::as_ptr), co); TILE];
                for kd in wd.taps(od) {
                    let id = wd.at(od, kd);
                    for kh in wh.taps(oh) {
                        let ih = wh.at(oh, kh);
                        let row = ((b * wd.input + id) * wh.input + ih) * ww.input;
                        for kw in 0..ww.kernel {
                            let tap = (kd * wh.kernel + kh) * ww.kernel + kw;
                            let wv = _mm256_loadu_ps(wp.add(tap * c + co));
                            for (t, a) in acc.iter_mut().enumerate() {
                                let xv =
                                    _mm256_loadu_ps(xp.add((row + ww.at(ow + t, kw)) * c + co));
                                *a = _mm256_fmadd_ps(xv, wv, *a);
                            }
                        }
                    }
                }
                for (t, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(yp.add((pixel + t) * c + co), *a);
                }
            }
            co += 8;
        }
    }

    /// Output channels one pixel keeps in registers.
    const PIXEL_BLOCK: usize = 64;

    /// One output pixel (at an edge, where taps fall in padding), its channels in
    /// registers `PIXEL_BLOCK` at a time, visiting only the taps inside the input.
    ///
    /// # Safety
    /// As for [`conv_tile`], for one pixel whose taps come from `taps()`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn conv_pixel(
        p: &Conv,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        b: usize,
        od: usize,
        oh: usize,
        ow: usize,
        pixel: usize,
    ) {
        let [wd, wh, ww] = p.windows;
        let (cin, cout) = (p.cin, p.cout);
        let (xp, wp, yp) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
        let mut co = 0;
        while co < cout {
            let vectors = ((cout - co) / 8).min(PIXEL_BLOCK / 8);
            // SAFETY (the whole block): offsets stay inside x, w, y and bias by the
            // function's contract; loads and stores are the unaligned forms.
            unsafe {
                let mut acc = [_mm256_setzero_ps(); PIXEL_BLOCK / 8];
                for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                    *a = bias_vector(bias.map(<[f32]>::as_ptr), co + 8 * j);
                }
                let taps = ww.taps(ow);
                // As in `conv_tile`: undilated taps of a row are one contiguous run.
                let (kws, run) = if ww.dilation == 1 {
                    (
                        taps.start..taps.start + (!taps.is_empty()) as usize,
                        taps.len() * cin,
                    )
                } else {
                    (taps, cin)
                };
                for kd in wd.taps(od) {
                    for kh in wh.taps(oh) {
                        for kw in kws.clone() {
                            let xi = (((b * wd.input + wd.at(od, kd)) * wh.input + wh.at(oh, kh))
                                * ww.input
                                + ww.at(ow, kw))
                                * cin;
                            let wrow =
                                wp.add(((kd * wh.kernel + kh) * ww.kernel + kw) * cin * cout + co);
                            for ci in 0..run {
                                let v = _mm256_broadcast_ss(&*xp.add(xi + ci));
                                let wr = wrow.add(ci * cout);
                                for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                                    *a = _mm256_fmadd_ps(v, _mm256_loadu_ps(wr.add(8 * j)), *a);
                                }
                            }
                        }
                    }
                }
                let out = yp.add(pixel * cout + co);
                for (j, a) in acc.iter().enumerate().take(vectors) {
                    _mm256_storeu_ps(out.add(8 * j), *a);
                }
            }
            co += 8 * vectors;
        }
    }
}

/// The x86-64 baseline (SSE2, in every x86-64 CPU) where AVX2+FMA is not enabled: one
/// output pixel's channels kept in SSE registers across every tap, instead of a pass
/// over the output row in memory per input channel. Products and sums run in the order
/// of the portable loop, so the results are the same bits.
#[cfg(all(
    target_arch = "x86_64",
    not(all(target_feature = "avx2", target_feature = "fma"))
))]
mod sse {
    use super::Conv;
    use core::arch::x86_64::*;

    /// Output channels one pixel keeps in registers: eight of the sixteen SSE registers.
    const PIXEL_BLOCK: usize = 32;

    /// One output pixel, its channels in registers `PIXEL_BLOCK` at a time, visiting
    /// only the taps inside the input.
    ///
    /// # Safety
    /// `x`, `w`, `y` and `bias` hold what `p` needs (checked by `conv`), the pixel's taps
    /// come from `taps()`, `p.groups == 1` and `p.cout % 4 == 0`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn conv_pixel(
        p: &Conv,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        b: usize,
        od: usize,
        oh: usize,
        ow: usize,
        pixel: usize,
    ) {
        let [wd, wh, ww] = p.windows;
        let (cin, cout) = (p.cin, p.cout);
        let (xp, wp, yp) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
        let mut co = 0;
        while co < cout {
            let vectors = ((cout - co) / 4).min(PIXEL_BLOCK / 4);
            // SAFETY (the whole block): offsets stay inside x, w, y and bias by the
            // function's contract; SSE is part of the x86-64 baseline; loads and stores
            // are the unaligned forms.
            unsafe {
                let mut acc = [_mm_setzero_ps(); PIXEL_BLOCK / 4];
                if let Some(bias) = bias {
                    for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                        *a = _mm_loadu_ps(bias.as_ptr().add(co + 4 * j));
                    }
                }
                let taps = ww.taps(ow);
                // Undilated taps of a row are one contiguous run of the input row.
                let (kws, run) = if ww.dilation == 1 {
                    (
                        taps.start..taps.start + (!taps.is_empty()) as usize,
                        taps.len() * cin,
                    )
                } else {
                    (taps, cin)
                };
                for kd in wd.taps(od) {
                    for kh in wh.taps(oh) {
                        for kw in kws.clone() {
                            let xi = (((b * wd.input + wd.at(od, kd)) * wh.input + wh.at(oh, kh))
                                * ww.input
                                + ww.at(ow, kw))
                                * cin;
                            let wrow =
                                wp.add(((kd * wh.kernel + kh) * ww.kernel + kw) * cin * cout + co);
                            for ci in 0..run {
                                let v = _mm_set1_ps(*xp.add(xi + ci));
                                let wr = wrow.add(ci * cout);
                                for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                                    *a = _mm_add_ps(*a, _mm_mul_ps(v, _mm_loadu_ps(wr.add(4 * j))));
                                }
                            }
                        }
                    }
                }
                let out = yp.add(pixel * cout + co);
                for (j, a) in acc.iter().enumerate().take(vectors) {
                    _mm_storeu_ps(out.add(4 * j), *a);
                }
            }
            co += 4 * vectors;
        }
    }

    /// One output pixel of a depthwise convolution (one output per channel), its
    /// channels in registers `PIXEL_BLOCK` at a time across the taps inside the input.
    ///
    /// # Safety
    /// As for [`conv_pixel`], with `cin == cout` and one channel per group.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn depthwise_pixel(
        p: &Conv,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        b: usize,
        od: usize,
        oh: usize,
        ow: usize,
        pixel: usize,
    ) {
        let [wd, wh, ww] = p.windows;
        let c = p.cout;
        let (xp, wp, yp) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
        let mut co = 0;
        while co < c {
            let vectors = ((c - co) / 4).min(PIXEL_BLOCK / 4);
            // SAFETY (the whole block): as in `conv_pixel`.
            unsafe {
                let mut acc = [_mm_setzero_ps(); PIXEL_BLOCK / 4];
                if let Some(bias) = bias {
                    for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                        *a = _mm_loadu_ps(bias.as_ptr().add(co + 4 * j));
                    }
                }
                for kd in wd.taps(od) {
                    for kh in wh.taps(oh) {
                        for kw in ww.taps(ow) {
                            let xi = (((b * wd.input + wd.at(od, kd)) * wh.input + wh.at(oh, kh))
                                * ww.input
                                + ww.at(ow, kw))
                                * c
                                + co;
                            let wi = ((kd * wh.kernel + kh) * ww.kernel + kw) * c + co;
                            for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                                let xv = _mm_loadu_ps(xp.add(xi + 4 * j));
                                let wv = _mm_loadu_ps(wp.add(wi + 4 * j));
                                *a = _mm_add_ps(*a, _mm_mul_ps(xv, wv));
                            }
                        }
                    }
                }
                let out = yp.add(pixel * c + co);
                for (j, a) in acc.iter().enumerate().take(vectors) {
                    _mm_storeu_ps(out.add(4 * j), *a);
                }
            }
            co += 4 * vectors;
        }
    }
}

/// A transposed convolution. Its windows are seen from the output: `input` is the
/// output length and `output` the input length (the forward convolution it transposes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvTranspose {
    /// Batch size.
    pub batch: usize,
    /// Depth, height and width axes.
    pub windows: [Window; 3],
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Fused activation.
    pub act: Act,
}

/// `y = act(conv_transpose(x, w) + b)`; `w` is `[kd, kh, kw, cin, cout]` (Keras's
/// `[.., cout, cin]` transposed per tap, so that each input channel scales a row).
#[inline]
pub fn conv_transpose(
    p: &ConvTranspose,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let [wd, wh, ww] = p.windows;
    let taps = wd.kernel * wh.kernel * ww.kernel;
    let (cin, cout) = (p.cin, p.cout);
    let nx = p.batch * wd.output * wh.output * ww.output * cin;
    let ny = p.batch * wd.input * wh.input * ww.input * cout;
    if x.len() < nx
        || w.len() < taps * cin * cout
        || y.len() < ny
        || bias.is_some_and(|b| b.len() < cout)
    {
        return;
    }
    // SAFETY (every `part` below): x, w, y and bias lengths were checked against the
    // geometry above; taps() keeps every output position inside the output.
    let y = unsafe { part_mut(y, 0, ny) };
    if cout == 0 {
        return;
    }
    for pixel in y.chunks_exact_mut(cout) {
        match bias {
            Some(bias) => pixel.copy_from_slice(unsafe { part(bias, 0, cout) }),
            None => pixel.fill(0.0),
        }
    }
    for b in 0..p.batch {
        for id in 0..wd.output {
            for ih in 0..wh.output {
                for iw in 0..ww.output {
                    let xi = (((b * wd.output + id) * wh.output + ih) * ww.output + iw) * cin;
                    let xs = unsafe { part(x, xi, cin) };
                    for kd in wd.taps(id) {
                        let od = wd.at(id, kd);
                        for kh in wh.taps(ih) {
                            let oh = wh.at(ih, kh);
                            for kw in ww.taps(iw) {
                                let ow = ww.at(iw, kw);
                                let oi =
                                    (((b * wd.input + od) * wh.input + oh) * ww.input + ow) * cout;
                                let ki = ((kd * wh.kernel + kh) * ww.kernel + kw) * cin * cout;
                                let out = unsafe { part_mut(y, oi, cout) };
                                for (ci, &xv) in xs.iter().enumerate() {
                                    axpy(out, xv, unsafe { part(w, ki + ci * cout, cout) });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    p.act.apply(y);
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A reference in the portable loop's order: bias, then each tap inside the input,
    /// then each input channel of the group.
    fn reference(p: &Conv, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let [wd, wh, ww] = p.windows;
        let (cin_g, cout_g) = (p.cin / p.groups, p.cout / p.groups);
        let mut y = Vec::new();
        for od in 0..wd.output {
            for oh in 0..wh.output {
                for ow in 0..ww.output {
                    for co in 0..p.cout {
                        let g = co / cout_g;
                        let mut acc = bias[co];
                        for kd in wd.taps(od) {
                            for kh in wh.taps(oh) {
                                for kw in ww.taps(ow) {
                                    let xi = ((wd.at(od, kd) * wh.input + wh.at(oh, kh))
                                        * ww.input
                                        + ww.at(ow, kw))
                                        * p.cin;
                                    let tap = (kd * wh.kernel + kh) * ww.kernel + kw;
                                    for ci in 0..cin_g {
                                        let wv = w[(tap * cin_g + ci) * p.cout + co];
                                        acc += x[xi + g * cin_g + ci] * wv;
                                    }
                                }
                            }
                        }
                        y.push(acc);
                    }
                }
            }
        }
        y
    }

    #[test]
    fn convolutions_match_the_loop_they_vectorise() {
        let window = |input: usize, kernel: usize, stride: usize, dilation: usize| {
            let pad = (kernel - 1) * dilation / 2;
            Window {
                input,
                output: (input + 2 * pad - (kernel - 1) * dilation - 1) / stride + 1,
                kernel,
                stride,
                dilation,
                pad_before: pad,
            }
        };
        let mut seed = 0x1234_5678_u32;
        let mut draw = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed % 2001) as f32 / 1000.0 - 1.0
        };
        // Plain, strided, dilated and depthwise convolutions, channels in and out of
        // the register blocks' multiples.
        let cases = [
            (3, 8, 1, 3, 1, 1),
            (5, 12, 1, 3, 2, 1),
            (4, 36, 1, 3, 1, 2),
            (16, 16, 16, 3, 1, 1),
            (40, 40, 40, 5, 2, 1),
            (6, 20, 2, 1, 1, 1),
        ];
        for (cin, cout, groups, kernel, stride, dilation) in cases {
            let p = Conv {
                batch: 1,
                windows: [
                    Window::UNIT,
                    window(7, kernel, stride, dilation),
                    window(9, kernel, stride, dilation),
                ],
                cin,
                cout,
                groups,
                act: Act::Linear,
            };
            let (nx, nw, ny) = p.sizes();
            let x: Vec<f32> = (0..nx).map(|_| draw()).collect();
            let w: Vec<f32> = (0..nw).map(|_| draw()).collect();
            let bias: Vec<f32> = (0..cout).map(|_| draw()).collect();
            let mut y = std::vec![0.0; ny];
            conv(&p, &x, &w, Some(&bias), &mut y);
            let expected = reference(&p, &x, &w, &bias);
            for (i, (a, e)) in y.iter().zip(&expected).enumerate() {
                // Without FMA every kernel sums in the reference's order: the same bits.
                // The AVX2 kernels fuse the multiply-adds.
                if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
                    assert!((a - e).abs() <= 1e-5 * (1.0 + e.abs()), "{p:?} at {i}");
                } else {
                    assert_eq!(a.to_bits(), e.to_bits(), "{p:?} at {i}: {a} vs {e}");
                }
            }
        }
    }
}
