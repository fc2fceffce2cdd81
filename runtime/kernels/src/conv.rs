//! Convolutions over channels_last tensors, every rank lifted to 3-D (a 1-D length `L`
//! is `[1, 1, L]`): direct grouped convolution (depthwise is one group per input
//! channel) and transposed convolution.

use core::mem::MaybeUninit;

use crate::act::{Act, Clamp};
use crate::isa::Isa;
use crate::lanes::Vector;
use crate::simd::{axpy, bias_vector, mul_acc, part, part_mut};
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
    /// The kernel is stored in panels of [`PANEL`] output channels, each panel's rows
    /// (taps by input channels) together, rather than `[.., cin, cout]`: every block of
    /// channels then reads its weights as a few sequential streams, which the hardware
    /// prefetcher follows once the weights outgrow the caches. Only where
    /// [`Conv::can_panel`] holds; elsewhere the convolution writes nothing.
    pub panels: bool,
}

/// A convolution's kernel ([`Conv::route`]) not known where it is called: [`conv_at`]
/// decides when it runs.
pub const ANY: u8 = 0;
/// Every tap inside the input, one group: tiles of pixels as a matrix product.
pub const VALID: u8 = 1;
/// One input and one output channel a group, and at most 64 taps.
pub const DEPTHWISE: u8 = 2;
/// Everything else: grouped convolutions, and windows with taps outside the input.
pub const GENERAL: u8 = 3;
/// [`VALID`] where tiles need not straddle rows: each tile is pixels of one row (of
/// the whole map for 1x1 windows of stride 1) and reads x from one base at a constant
/// step, so a tile's pixels take one address register, not one each. A row's last
/// tile steps back to end at the row's end and stores only its new pixels; the route
/// is taken where that recomputes at most an eighth of the pixels.
pub const ROWS: u8 = 4;
/// [`VALID`] over 7 to 9 output pixels in all (a 3x3 map at the end of a network):
/// one tile of [`SMALL_TILE`] pixels rather than two of [`TILE`], which computed 12.
/// A step compiled for it alone takes the route; out of line it runs as [`VALID`].
pub const SMALL: u8 = 5;

/// Output channels per weight panel ([`Conv::panels`]): a multiple of every register
/// width, so one layout serves every instruction set.
pub const PANEL: usize = 16;

impl Conv {
    /// The weights may be stored in panels: one group, every tap inside the input, and
    /// output channels a multiple of [`PANEL`].
    #[inline]
    pub fn can_panel(&self) -> bool {
        self.groups == 1
            && self.cout.is_multiple_of(PANEL)
            && self.windows.iter().all(Window::is_valid)
    }

    /// Which of [`VALID`], [`ROWS`], [`SMALL`], [`DEPTHWISE`] and [`GENERAL`] runs the
    /// convolution.
    #[inline]
    pub const fn route(&self) -> u8 {
        let [d, h, w] = self.windows;
        if self.groups == 1 && d.is_valid() && h.is_valid() && w.is_valid() {
            let pixels = self.batch * d.output * h.output * w.output;
            if TILE < pixels && pixels <= SMALL_TILE {
                SMALL
            } else if self.rows_fit() {
                ROWS
            } else {
                VALID
            }
        } else if self.groups != 0
            && self.cin / self.groups == 1
            && self.cout / self.groups == 1
            && d.kernel * h.kernel * w.kernel <= MAX_TAPS
        {
            DEPTHWISE
        } else {
            GENERAL
        }
    }

    /// Pixels of a [`ROWS`] tile's row: a row of the output, or every pixel for 1x1
    /// windows of stride 1, which read the input's pixels in order.
    #[inline]
    const fn row_run(&self) -> usize {
        let [d, h, w] = self.windows;
        let pointwise = d.kernel == 1
            && d.stride == 1
            && h.kernel == 1
            && h.stride == 1
            && w.kernel == 1
            && w.stride == 1;
        if pointwise {
            self.batch * d.output * h.output * w.output
        } else {
            w.output
        }
    }

    /// Whether [`ROWS`] tiles recompute at most an eighth of the pixels, with either
    /// tile width that some instruction set takes for these output channels.
    #[inline]
    const fn rows_fit(&self) -> bool {
        let run = self.row_run();
        const fn fits(run: usize, t: usize) -> bool {
            run.div_ceil(t) * t * 8 <= run * 9
        }
        // Wide tiles where one register (of 1 to 16 lanes) holds the channels.
        run >= WIDE_TILE
            && (self.cout > 16 || fits(run, WIDE_TILE))
            && (self.cout <= 1 || fits(run, TILE))
    }

    /// Whether [`ROWS`] tiles of `t` pixels recompute no more pixels than those of
    /// `than`.
    #[inline]
    const fn rows_take(&self, t: usize, than: usize) -> bool {
        let run = self.row_run();
        run >= t && run.div_ceil(t) * t <= run.div_ceil(than) * than
    }

    /// Floats of input, kernel and output.
    #[inline]
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
pub fn conv<I: Isa>(isa: I, p: &Conv, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    isa.vectorize(
        #[inline(always)]
        || conv_in::<I>(isa, p, x, w, bias, y),
    );
}

/// [`conv`] for code already inside `I::vectorize`: generated code runs all its steps
/// inside one, so that each step's constants reach the inlined loops.
#[inline(always)]
pub fn conv_in<I: Isa>(
    isa: I,
    p: &Conv,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    conv_at::<I, ANY, 0>(isa, p, x, w, bias, y);
}

/// [`conv_in`] for a convolution whose [`Conv::route`] is `ROUTE` and whose output
/// channels are `COUT` (or [`ANY`] and 0: either decided as it runs). The step an
/// emitter inlines then holds the one kernel and the register blocks its channels
/// take, not every one that some convolution needs: a third of the code or less for
/// the compiler to optimise a step. A `p` of another route writes nothing.
#[inline(always)]
pub fn conv_at<I: Isa, const ROUTE: u8, const COUT: usize>(
    isa: I,
    p: &Conv,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let route = p.route();
    if (ROUTE != ANY && route != ROUTE) || (COUT != 0 && p.cout != COUT) {
        return;
    }
    let (nx, nw, ny) = p.sizes();
    if p.groups == 0
        || x.len() < nx
        || w.len() < nw
        || y.len() < ny
        || bias.is_some_and(|b| b.len() < p.cout)
        || (p.panels && !p.can_panel())
    {
        return;
    }
    // Each `const` condition is decided when the function is instantiated, so that
    // the code of the other kernels is never generated.
    if const { ROUTE == SMALL } && route == SMALL {
        valid::<I, SMALL_TILE, COUT, false>(isa, p, x, w, bias, y);
        return;
    }
    if const { ROUTE == ANY || ROUTE == VALID } && (route == VALID || route == SMALL) {
        // Every tap inside the input (the plan pads inputs beforehand): tiles of pixels
        // anywhere in the output, across rows, with no edge cases.
        if const { COUT <= <I::F>::LANES } && p.cout <= <I::F>::LANES {
            valid::<I, WIDE_TILE, COUT, false>(isa, p, x, w, bias, y);
        } else if const { COUT == 0 || COUT > <I::F>::LANES } {
            valid::<I, TILE, COUT, false>(isa, p, x, w, bias, y);
        }
        return;
    }
    if const { ROUTE == ANY || ROUTE == ROWS } && route == ROWS {
        if const { <I::F>::LANES == 16 && (COUT == 0 || (8 < COUT && COUT <= 16)) }
            && 8 < p.cout
            && p.cout <= 16
            && p.rows_take(WIDER_TILE, WIDE_TILE)
        {
            valid::<I, WIDER_TILE, COUT, true>(isa, p, x, w, bias, y);
        } else if const { COUT <= <I::F>::LANES } && p.cout <= <I::F>::LANES {
            valid::<I, WIDE_TILE, COUT, true>(isa, p, x, w, bias, y);
        } else if const { <I::F>::LANES == 16 && (COUT == 0 || (16 < COUT && COUT <= 32)) }
            && 16 < p.cout
            && p.cout <= 32
            && p.rows_take(PAIR_ROW_TILE, TILE)
        {
            valid::<I, PAIR_ROW_TILE, COUT, true>(isa, p, x, w, bias, y);
        } else if const { COUT == 0 || COUT > <I::F>::LANES } {
            valid::<I, TILE, COUT, true>(isa, p, x, w, bias, y);
        }
        return;
    }
    if const { ROUTE == ANY || ROUTE == DEPTHWISE } && route == DEPTHWISE {
        if const { COUT == 8 && <I::F>::LANES == 16 } && pair_sliding_fits(p) {
            depthwise::<I, PAIR_TILE>(isa, p, x, w, bias, y);
        } else {
            depthwise::<I, TILE>(isa, p, x, w, bias, y);
        }
        return;
    }
    if const { ROUTE == ANY || ROUTE == GENERAL } {
        general::<I, COUT>(isa, p, x, w, bias, y);
    }
}

/// The loop over output pixels for what neither [`valid`] nor [`depthwise`] takes: a
/// tile of pixels where every width tap is inside the input and the channels fill
/// registers, else one pixel at a time. Its unsafe blocks rely on [`conv_at`]'s
/// checks of every length against the geometry.
#[inline(always)]
fn general<I: Isa, const COUT: usize>(
    isa: I,
    p: &Conv,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let [wd, wh, ww] = p.windows;
    let (cin_g, cout_g, cout) = (p.cin / p.groups.max(1), p.cout / p.groups.max(1), p.cout);
    let mut pixel = 0;
    for b in 0..p.batch {
        for od in 0..wd.output {
            for oh in 0..wh.output {
                let row_start = pixel;
                let mut ow = 0;
                while ow < ww.output {
                    let at = At {
                        b,
                        od,
                        oh,
                        ow,
                        pixel,
                    };
                    // SAFETY: lengths were checked above; `pixels` keeps to taps()
                    // and to whole tiles inside the output row.
                    let done = unsafe {
                        if const { COUT.is_multiple_of(<I::F>::LANES) }
                            && cout.is_multiple_of(<I::F>::LANES)
                        {
                            pixels::<I::F>(p, x, w, bias, y, at)
                        } else if const { COUT.is_multiple_of(<I::H>::LANES) }
                            && cout.is_multiple_of(<I::H>::LANES)
                        {
                            pixels::<I::H>(p, x, w, bias, y, at)
                        } else {
                            0
                        }
                    };
                    if done > 0 {
                        ow += done;
                        pixel += done;
                        continue;
                    }
                    // Grouped convolutions and channel counts no register width divides.
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
                                    let ws = unsafe { part(w, tap * cout, cout) };
                                    mul_acc::<I>(out, xs, ws);
                                    continue;
                                }
                                for g in 0..p.groups {
                                    let xs = unsafe { part(x, xi + g * cin_g, cin_g) };
                                    let og = unsafe { part_mut(out, g * cout_g, cout_g) };
                                    for (ci, &xv) in xs.iter().enumerate() {
                                        let row = (tap * cin_g + ci) * cout + g * cout_g;
                                        axpy::<I>(og, xv, unsafe { part(w, row, cout_g) });
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
                p.act.apply(isa, unsafe {
                    part_mut(y, row_start * cout, ww.output * cout)
                });
            }
        }
    }
}

/// A convolution all of whose taps are inside the input ([`Window::is_valid`] on every
/// axis), one group: an implicit matrix product over tiles of `T` output pixels taken
/// in order across rows, images and the batch, so that small maps (4x4 at the end of a
/// ResNet) share each weight load among as many pixels as wide ones. A last tile of
/// fewer pixels repeats its last pixel and stores only its own. With `ROWS`, tiles of
/// one row each (the [`ROWS`] route, which needs rows of at least `T` pixels).
#[inline(always)]
fn valid<I: Isa, const T: usize, const COUT: usize, const ROWS: bool>(
    isa: I,
    p: &Conv,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let [wd, wh, ww] = p.windows;
    let pixels = p.batch * wd.output * wh.output * ww.output;
    let (xp, wp, yp, bp) = (
        x.as_ptr(),
        w.as_ptr(),
        y.as_mut_ptr(),
        bias.map(<[f32]>::as_ptr),
    );
    // The next pixel's position, stepped with carries rather than divided out of its
    // index: out of line, the divisions by axis lengths cost more than a small tile.
    let mut at = (0, 0, 0, 0);
    let mut first = 0;
    // 1x1 windows of stride 1 read the input's pixels in order, as a matrix.
    let pointwise = p.windows.iter().all(|w| w.kernel == 1 && w.stride == 1);
    // Pixels before `done` have had their activation; a clamp is applied in
    // `valid_block` instead.
    let mut done = 0;
    let fused = p.act.clamp().is_some();
    // Tiles a band: where the weights outgrow L1, each tile of a band reads a block's
    // weights while the one before left them there, rather than the whole matrix from
    // L2 or beyond, for as many tiles as keep their input rows in half of L1.
    let [kd, kh, kw] = p.windows.map(|w| w.kernel);
    let k = kd * kh * kw * p.cin;
    // A row tile takes `T` pixels of the row it is in.
    if ROWS && (if pointwise { pixels } else { ww.output }) < T {
        return;
    }
    let band_tiles = if k * p.cout > L1_FLOATS {
        (L1_FLOATS / 2 / (T * k).max(1)).clamp(1, BAND)
    } else {
        1
    };
    let mut tiles = [const {
        Tile {
            bases: [0; T],
            first: 0,
            from: 0,
            count: 0,
        }
    }; BAND];
    // Eight output channels with 16-lane registers: pairs of taps in each register.
    let mut pair_weights = [0.0; PAIR_FLOATS];
    let pairs = if const { COUT == 8 && <I::F>::LANES == 16 } && fill_pairs(p, w, &mut pair_weights)
    {
        Some(pair_weights.as_ptr())
    } else {
        None
    };
    while first < pixels {
        if band_tiles == 1 {
            // Weights inside L1: each tile straight from where it is made, not through
            // the band's array, whose copies cost small layers a quarter of their time.
            let tile = next_tile::<T, ROWS>(p, pointwise, first, &mut at);
            first += tile.count - tile.from;
            // SAFETY: as for the band below.
            unsafe {
                all_columns::<I, T, COUT, ROWS>(
                    p,
                    xp,
                    wp,
                    bp,
                    yp,
                    core::slice::from_ref(&tile),
                    pairs,
                )
            };
            if !fused && ((first - done) * p.cout >= ACT_FLOATS || first == pixels) {
                // SAFETY: the pixels since `done` were just written, inside y.
                p.act.apply(isa, unsafe {
                    part_mut(y, done * p.cout, (first - done) * p.cout)
                });
                done = first;
            }
            continue;
        }
        let mut n = 0;
        while n < band_tiles && first < pixels {
            let tile = next_tile::<T, ROWS>(p, pointwise, first, &mut at);
            first += tile.count - tile.from;
            if let Some(t) = tiles.get_mut(n) {
                *t = tile;
            }
            n += 1;
        }
        let band = tiles.get(..n).unwrap_or_default();
        // SAFETY: `conv_at` checked x, w, y and bias against the geometry; every pixel
        // of the tiles is an output pixel, and a valid window keeps its taps inside x.
        unsafe { all_columns::<I, T, COUT, ROWS>(p, xp, wp, bp, yp, band, pairs) };
        // The activation runs over tiles while they are still in L1, in passes of at
        // least ACT_FLOATS: one call a tile cost 1x1 layers of 8 input channels as much
        // as the tile's products.
        if !fused && ((first - done) * p.cout >= ACT_FLOATS || first == pixels) {
            // SAFETY: the pixels since `done` were just written, inside y.
            p.act.apply(isa, unsafe {
                part_mut(y, done * p.cout, (first - done) * p.cout)
            });
            done = first;
        }
    }
}

/// Every output channel of a band of tiles: whole registers, then half and single
/// lanes only for channels the wider registers leave; or, with `pairs` (the weights
/// [`fill_pairs`] laid out), [`pair_block`]'s pairs of taps.
///
/// # Safety
/// As for [`valid_block`], for every tile of the band; `pairs` only where `I` is
/// AVX-512 and holds what [`fill_pairs`] wrote for `p`.
#[inline(always)]
unsafe fn all_columns<I: Isa, const T: usize, const COUT: usize, const ROWS: bool>(
    p: &Conv,
    xp: *const f32,
    wp: *const f32,
    bp: Option<*const f32>,
    yp: *mut f32,
    band: &[Tile<T>],
    pairs: Option<*const f32>,
) {
    // SAFETY: the caller's.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if const { COUT == 8 && <I::F>::LANES == 16 } {
            if let Some(pw) = pairs {
                for tile in band {
                    pair_block::<T, ROWS>(p, xp, pw, bp, yp, tile);
                }
                return;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = pairs;
        let mut co = columns::<I::F, T, ROWS>(p, xp, wp, bp, yp, band, 0);
        if const { <I::H>::LANES < <I::F>::LANES && (COUT == 0 || !COUT.is_multiple_of(<I::F>::LANES)) }
        {
            co = columns::<I::H, T, ROWS>(p, xp, wp, bp, yp, band, co);
        }
        if const { 1 < <I::H>::LANES && (COUT == 0 || !COUT.is_multiple_of(<I::H>::LANES)) } {
            columns::<crate::lanes::S, T, ROWS>(p, xp, wp, bp, yp, band, co);
        }
    }
}

/// The tile of output pixels from `first`: where each reads x. `at` is the position of
/// pixel `first` (image offset, depth, row, column), stepped to the tile's end. With
/// `ROWS`, a tile of `T` pixels of one row (of all pixels, `pointwise`), which must
/// hold `T`, and only the base of its first.
#[inline(always)]
fn next_tile<const T: usize, const ROWS: bool>(
    p: &Conv,
    pointwise: bool,
    first: usize,
    at: &mut (usize, usize, usize, usize),
) -> Tile<T> {
    let [wd, wh, ww] = p.windows;
    let pixels = p.batch * wd.output * wh.output * ww.output;
    let (mut image, mut od, mut oh, mut ow) = *at;
    let count = (pixels - first).min(T);
    let mut bases = [0; T];
    if ROWS {
        // The last tile of a row steps back to end with it.
        let (width, column) = if pointwise {
            (pixels, first)
        } else {
            (ww.output, ow)
        };
        let start = column.min(width.saturating_sub(T));
        bases[0] = if pointwise {
            start * p.cin
        } else {
            ((image + od * wd.stride * wh.input + oh * wh.stride) * ww.input + start * ww.stride)
                * p.cin
        };
        if !pointwise {
            ow = start + T;
            if ow >= ww.output {
                ow = 0;
                oh += 1;
                if oh == wh.output {
                    oh = 0;
                    od += 1;
                    if od == wd.output {
                        od = 0;
                        image += wd.input * wh.input;
                    }
                }
            }
            *at = (image, od, oh, ow);
        }
        let from = column - start;
        return Tile {
            bases,
            first: first - from,
            from,
            count: T,
        };
    }
    if pointwise {
        // Pixel after pixel in x too: no positions to step. A short last tile
        // repeats its last pixel.
        // A running sum, not products: vectorised, `t * cin` took 64-bit multiplies
        // and a store of the whole array that the loads of its items then waited on,
        // a fifth of the time of a 1x1 layer of 8 input channels.
        let mut at = first * p.cin;
        let last = first + count - 1;
        for (t, b) in (first..).zip(bases.iter_mut()) {
            *b = at;
            if t < last {
                at += p.cin;
            }
        }
    } else {
        let mut last = 0;
        for (t, b) in bases.iter_mut().enumerate() {
            if t >= count {
                *b = last;
                continue;
            }
            last = ((image + od * wd.stride * wh.input + oh * wh.stride) * ww.input
                + ow * ww.stride)
                * p.cin;
            *b = last;
            ow += 1;
            if ow == ww.output {
                ow = 0;
                oh += 1;
                if oh == wh.output {
                    oh = 0;
                    od += 1;
                    if od == wd.output {
                        od = 0;
                        image += wd.input * wh.input;
                    }
                }
            }
        }
    }
    *at = (image, od, oh, ow);
    Tile {
        bases,
        first,
        from: 0,
        count,
    }
}

/// Floats of output that [`valid`] leaves for its activation's next pass: 8 KiB, a
/// quarter of the smallest L1 data cache.
const ACT_FLOATS: usize = 2048;

/// Most tiles in a band of [`valid`].
const BAND: usize = 4;

/// Weight rows ahead that [`valid_block`] asks the cache for.
const PREFETCH_ROWS: usize = 16;

/// Floats of weights that stay in a core's L1 data cache (32 KiB, the smallest of
/// the x86-64 cores kerac targets), and need no prefetching.
const L1_FLOATS: usize = 8192;

/// Output pixels computed together by [`valid`]: where each reads the input, and the
/// pixels to store.
struct Tile<const T: usize> {
    bases: [usize; T],
    /// The output pixel of the tile's first.
    first: usize,
    /// The tile's pixels from `from` to `count` are stored: a [`ROWS`] tile that steps
    /// back from a row's end stores only those after the ones before it.
    from: usize,
    count: usize,
}

/// The output channels of a band of [`Tile`]s from `co` on, in blocks of `V` registers
/// (four at a time with 16-lane registers and their 32 names, two otherwise) while
/// whole registers fit, each block over every tile of the band. Returns the first
/// channel left.
///
/// # Safety
/// As for [`valid_block`], for every block and tile it runs.
#[inline(always)]
unsafe fn columns<V: Vector, const T: usize, const ROWS: bool>(
    p: &Conv,
    xp: *const f32,
    wp: *const f32,
    bias: Option<*const f32>,
    yp: *mut f32,
    tiles: &[Tile<T>],
    mut co: usize,
) -> usize {
    let (l, cout) = (V::LANES, p.cout);
    // SAFETY: each block lies below `cout`.
    unsafe {
        if const { T == SMALL_TILE } {
            if const { V::LANES == 16 } {
                while co + 2 * l <= cout {
                    band::<V, 2, T, ROWS>(p, xp, wp, bias, yp, tiles, co);
                    co += 2 * l;
                }
            }
            while co + l <= cout {
                band::<V, 1, T, ROWS>(p, xp, wp, bias, yp, tiles, co);
                co += l;
            }
        } else if const { T != TILE && T != PAIR_ROW_TILE } {
            // Wide tiles are for layers of one register of channels or less.
            while co + l <= cout {
                band::<V, 1, T, ROWS>(p, xp, wp, bias, yp, tiles, co);
                co += l;
            }
        } else if const { V::LANES == 16 && T == TILE } {
            while co + 4 * l <= cout {
                band::<V, 4, T, ROWS>(p, xp, wp, bias, yp, tiles, co);
                co += 4 * l;
            }
            // Three registers left run as two and one: one block width fewer for
            // every step to inline.
            if co + 2 * l <= cout {
                band::<V, 2, T, ROWS>(p, xp, wp, bias, yp, tiles, co);
                co += 2 * l;
            }
            if co + l <= cout {
                band::<V, 1, T, ROWS>(p, xp, wp, bias, yp, tiles, co);
                co += l;
            }
        } else {
            // Tiles of 6 with 16 registers, and AVX-512's pairs of registers for 8
            // pixels: two registers of channels, then one.
            while co + 2 * l <= cout {
                band::<V, 2, T, ROWS>(p, xp, wp, bias, yp, tiles, co);
                co += 2 * l;
            }
            if co + l <= cout {
                band::<V, 1, T, ROWS>(p, xp, wp, bias, yp, tiles, co);
                co += l;
            }
        }
    }
    co
}

/// [`valid_block`] for each tile of a band: the tiles share the block's weights while
/// they are in L1.
///
/// # Safety
/// As for [`valid_block`], for each tile.
#[inline(always)]
unsafe fn band<V: Vector, const NV: usize, const T: usize, const ROWS: bool>(
    p: &Conv,
    xp: *const f32,
    wp: *const f32,
    bias: Option<*const f32>,
    yp: *mut f32,
    tiles: &[Tile<T>],
    co: usize,
) {
    for tile in tiles {
        // SAFETY: the caller's.
        unsafe { valid_block::<V, NV, T, ROWS>(p, xp, wp, bias, yp, tile, co) };
    }
}

/// `NV` registers of output channels from `co` for the `T` pixels of `tile`, in
/// `T x NV` accumulators: each weight register loaded serves `T` pixels. The sums
/// run bias first, then the taps and channels in order: without FMA, the portable
/// loop's order.
///
/// # Safety
/// `p` is valid on every axis and one group; x, w, y and bias hold what `p` needs;
/// `tile` holds output pixels; `co + NV * V::LANES <= p.cout`; `V`'s ISA is enabled.
#[inline(always)]
unsafe fn valid_block<V: Vector, const NV: usize, const T: usize, const ROWS: bool>(
    p: &Conv,
    xp: *const f32,
    wp: *const f32,
    bias: Option<*const f32>,
    yp: *mut f32,
    tile: &Tile<T>,
    co: usize,
) {
    let [wd, wh, ww] = p.windows;
    let (cin, cout, l) = (p.cin, p.cout, V::LANES);
    // SAFETY (the whole body): offsets stay inside x, w, y and bias by the contract.
    unsafe {
        let b: [V; NV] = core::array::from_fn(|j| bias_vector(bias, co + j * l));
        let mut acc = [b; T];
        // Where row 0 of each register's columns is, and how far apart rows are.
        let (stride, cols): (usize, [usize; NV]) = if p.panels {
            let rows = wd.kernel * wh.kernel * ww.kernel * cin;
            let at = |c: usize| c / PANEL * rows * PANEL + c % PANEL;
            (PANEL, core::array::from_fn(|j| at(co + j * l)))
        } else {
            (cout, core::array::from_fn(|j| co + j * l))
        };
        // Undilated taps of a window row are one contiguous run in x and in w.
        let (runs, run) = runs(p);
        // Panels outside L1 are prefetched too, even from L2 (3x3 layers of 64-128
        // channels: 10% faster on AVX-512); those inside it would only lose load slots.
        // Rows inside L1 need no prefetch in either layout.
        let big = wd.kernel * wh.kernel * ww.kernel * cin * cout > L1_FLOATS;
        let far = p.panels && big;
        for kd in 0..wd.kernel {
            for kh in 0..wh.kernel {
                let row = (kd * wd.dilation * wh.input + kh * wh.dilation) * ww.input;
                for kw in 0..runs {
                    let off = (row + kw * ww.dilation) * cin;
                    let tap = (kd * wh.kernel + kh) * ww.kernel + kw;
                    let wrow = wp.add(tap * cin * stride);
                    // One row's pixels are a constant step apart: one base register.
                    let xs: [*const f32; T] = if ROWS {
                        let x0 = xp.add(tile.bases[0] + off);
                        core::array::from_fn(|t| x0.add(t * ww.stride * cin))
                    } else {
                        core::array::from_fn(|t| xp.add(tile.bases[t] + off))
                    };
                    // A trip count hidden from the optimiser: with it known (an inlined
                    // step), a first layer's few taps unrolled into hundreds of loads,
                    // which the scheduler hoisted and spilled (MobileNet's 3x3 of 3
                    // channels at 128x128: 56 -> 35 us, the model 13% faster).
                    for ci in 0..core::hint::black_box(run) {
                        let wr = wrow.add(ci * stride);
                        // Rows of w are `cout` apart: a stride the hardware prefetcher
                        // follows late on layers whose weights come from memory. A
                        // panel's rows are one line each: each stream a line ahead.
                        if far {
                            for c in cols {
                                crate::simd::prefetch(wr.add(PREFETCH_ROWS * PANEL + c));
                            }
                        } else if !p.panels && big {
                            for line in (0..NV * l).step_by(16) {
                                crate::simd::prefetch(wr.add(PREFETCH_ROWS * cout + co + line));
                            }
                        }
                        let wv: [V; NV] = core::array::from_fn(|j| V::load(wr.add(cols[j])));
                        for t in 0..T {
                            let v = V::splat(*xs[t].add(ci));
                            for j in 0..NV {
                                acc[t][j] = v.mul_add(wv[j], acc[t][j]);
                            }
                        }
                    }
                }
            }
        }
        // A clamp is applied here, to the registers: no pass over the output after.
        let clamp = p.act.clamp();
        // Every pixel tested in a loop of constant length, which unrolls and keeps the
        // accumulators in registers.
        for (t, a) in acc.iter().enumerate() {
            if t < tile.from || t >= tile.count {
                continue;
            }
            let out = yp.add((tile.first + t) * cout + co);
            for (j, &v) in a.iter().enumerate() {
                let v = match clamp {
                    Some(c) => c.apply(v),
                    None => v,
                };
                v.store(out.add(j * l));
            }
        }
    }
}

/// Floats of [`fill_pairs`]'s weights: 96 registers, room for 7x7 windows of 3
/// channels.
const PAIR_FLOATS: usize = 96 * 16;

/// Weight runs of [`valid_block`]: a window row's taps where they are contiguous in x
/// (undilated), else each tap's channels. Returns the runs per window row and the
/// floats per run.
#[inline(always)]
fn runs(p: &Conv) -> (usize, usize) {
    let ww = p.windows[2];
    if ww.dilation == 1 {
        (1, ww.kernel * p.cin)
    } else {
        (ww.kernel, p.cin)
    }
}

/// Lays out the weights of a convolution of 8 output channels for [`pair_block`]:
/// for each run of taps, registers of two consecutive rows interleaved, lane `2j`
/// from the first and `2j + 1` from the second. An odd run's last row is halved into
/// both lanes, which the same input then feeds: a zero in the second lane would make
/// an infinite input's product there `inf * 0`, a NaN where Keras has an inf. Returns
/// false, writing nothing, where they do not fit [`PAIR_FLOATS`] or the layout does not
/// apply.
#[inline(always)]
fn fill_pairs(p: &Conv, w: &[f32], out: &mut [f32; PAIR_FLOATS]) -> bool {
    let [wd, wh, _] = p.windows;
    let (runs, run) = runs(p);
    let per_run = run.div_ceil(2);
    let total = wd.kernel * wh.kernel * runs;
    if p.cout != 8 || p.groups != 1 || p.panels || total * per_run * 16 > PAIR_FLOATS {
        return false;
    }
    for r in 0..total {
        for c in 0..per_run {
            for j in 0..8 {
                let row = r * run + 2 * c;
                let at = (r * per_run + c) * 16 + 2 * j;
                let first = w.get(row * 8 + j).copied().unwrap_or(0.0);
                let (first, second) = if 2 * c + 1 < run {
                    (first, w.get((row + 1) * 8 + j).copied().unwrap_or(0.0))
                } else {
                    (first * 0.5, first * 0.5)
                };
                if let Some(pair) = out.get_mut(at..at + 2) {
                    pair.copy_from_slice(&[first, second]);
                }
            }
        }
    }
    true
}

/// [`valid_block`] for 8 output channels on AVX-512: each 16-lane accumulator holds one
/// pixel's channels for two taps side by side, fed by one 8-byte broadcast of two
/// neighbouring input floats, and its pairs are added when the tile is stored. Half
/// the multiply-adds and broadcasts of 8-lane registers, which left the first layer of
/// a narrow MobileNet (3x3, 3 channels in, 8 out) bound on them at half the peak.
///
/// # Safety
/// As for [`valid_block`] with `co` 0 and `p.cout` 8; `pw` holds what [`fill_pairs`]
/// wrote for `p`; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_block<const T: usize, const ROWS: bool>(
    p: &Conv,
    xp: *const f32,
    pw: *const f32,
    bias: Option<*const f32>,
    yp: *mut f32,
    tile: &Tile<T>,
) {
    use crate::lanes::{Lanes, V16, V8};

    let [wd, wh, ww] = p.windows;
    let cin = p.cin;
    let (runs, run) = runs(p);
    let (pairs, per_run) = (run / 2, run.div_ceil(2));
    // SAFETY (the whole body): offsets stay inside x, w, y and bias by the contract; a
    // pair reads floats `2c` and `2c + 1 < run` of its run.
    unsafe {
        let mut acc = [V16::splat(0.0); T];
        let mut wr = pw;
        for kd in 0..wd.kernel {
            for kh in 0..wh.kernel {
                let row = (kd * wd.dilation * wh.input + kh * wh.dilation) * ww.input;
                for kw in 0..runs {
                    let off = (row + kw * ww.dilation) * cin;
                    let xs: [*const f32; T] = if ROWS {
                        let x0 = xp.add(tile.bases[0] + off);
                        core::array::from_fn(|t| x0.add(t * ww.stride * cin))
                    } else {
                        core::array::from_fn(|t| xp.add(tile.bases[t] + off))
                    };
                    // Hidden from the optimiser, as in `valid_block`.
                    for c in 0..core::hint::black_box(pairs) {
                        let wv = V16::load(wr.add(c * 16));
                        for t in 0..T {
                            acc[t] = V16::splat_pair(xs[t].add(2 * c)).mul_add(wv, acc[t]);
                        }
                    }
                    if run % 2 == 1 {
                        // The odd tap, half its weight in each lane of a pair.
                        let wv = V16::load(wr.add(pairs * 16));
                        for t in 0..T {
                            acc[t] = V16::splat(*xs[t].add(run - 1)).mul_add(wv, acc[t]);
                        }
                    }
                    wr = wr.add(per_run * 16);
                }
            }
        }
        // Two pixels at a time, one register of both: neighbours in y.
        let b8: V8 = bias_vector(bias, 0);
        let b = V16::twice(b8);
        let clamp = p.act.clamp();
        for t in (0..T).step_by(2) {
            let keep = |t: usize| tile.from <= t && t < tile.count;
            if !keep(t) && !keep(t + 1) {
                continue;
            }
            let second = acc.get(t + 1).copied().unwrap_or(acc[t]);
            let v = V16::pair_sums(acc[t], second) + b;
            let v = match clamp {
                Some(c) => c.apply(v),
                None => v,
            };
            let mask = if keep(t) { 0x00ff } else { 0 } | if keep(t + 1) { 0xff00 } else { 0 };
            // The first pixel kept or not, its place is inside y: a tile's pixels
            // before `from` were stored by the tile before.
            v.store_masked(yp.add((tile.first + t) * 8), mask);
        }
    }
}

/// Where an output pixel is: sample, depth, row and column, and its index in the output.
#[derive(Clone, Copy)]
struct At {
    b: usize,
    od: usize,
    oh: usize,
    ow: usize,
    pixel: usize,
}

/// Output pixels per tile: 6 pixels x 2 vectors is 12 accumulators, plus two weight
/// vectors and a broadcast input, within the 16 registers of SSE and AVX2.
const TILE: usize = 6;

/// Output pixels per tile of layers with one register of channels or less: with 6, the
/// 6 chains of multiply-adds wait on each other's latency (4 cycles, 2 a cycle); 12
/// accumulators, a weight vector and a broadcast still fit in 16 registers.
const WIDE_TILE: usize = 12;

/// Output pixels of a [`ROWS`] tile of 9 to 16 channels on AVX-512, where rows take it
/// as well as [`WIDE_TILE`]: its 32 registers hold 16 accumulators, and each weight
/// vector loaded serves 16 pixels (ResNet's 3x3 layers of 16 channels over rows of 32,
/// which tiles of 12 overlap by 4: 12% faster).
const WIDER_TILE: usize = 16;

/// Output pixels of a [`ROWS`] tile of 17 to 32 channels on AVX-512, where rows take it
/// as well as [`TILE`]: 8 pixels x 2 registers of 16 accumulators (ResNet's 3x3 layers
/// of 32 channels over rows of 16, which tiles of 6 overlap by 2).
const PAIR_ROW_TILE: usize = 8;

/// Output pixels of a [`SMALL`] tile: 9 pixels x 2 vectors of 16 lanes, or x 1 of 8,
/// leave room for the weights and a broadcast.
const SMALL_TILE: usize = 9;

/// Vectors of output channels one pixel keeps in registers.
const PIXEL_BLOCK: usize = 8;

/// The register kernels at `at`, for plain and depthwise convolutions whose channels
/// `V` divides: a tile of `TILE` pixels where every width tap is inside the input, else
/// one pixel. Returns the pixels done; 0 for grouped convolutions, which it leaves to
/// the loop. Without FMA the sums run in the portable loop's order: the same bits.
///
/// # Safety
/// `x`, `w`, `y` and `bias` hold what `p` needs (checked by `conv`), `at` is an output
/// pixel, `p.cout % V::LANES == 0`, and `V`'s ISA is enabled.
#[inline(always)]
unsafe fn pixels<V: Vector>(
    p: &Conv,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    at: At,
) -> usize {
    let ww = p.windows[2];
    if p.groups != 1 {
        return 0;
    }
    let (xp, wp, yp, bp) = (
        x.as_ptr(),
        w.as_ptr(),
        y.as_mut_ptr(),
        bias.map(<[f32]>::as_ptr),
    );
    let inside = ww.interior();
    // SAFETY: the contract, and the tile only where all its width taps are inside.
    unsafe {
        if inside.contains(&at.ow) && inside.len() >= TILE {
            // The row's last interior tile starts early enough to end inside: it
            // computes again (to the same values) pixels the tile before stored, rather
            // than leaving up to `TILE - 1` pixels to the one-pixel kernel.
            let back = (at.ow + TILE).saturating_sub(inside.end);
            let tile = At {
                ow: at.ow - back,
                pixel: at.pixel - back,
                ..at
            };
            conv_tile::<V>(p, xp, wp, bp, yp, tile);
            return TILE - back;
        }
        conv_pixel::<V>(p, xp, wp, bp, yp, at);
    }
    1
}

/// `TILE` adjacent output pixels along the width, all of whose width taps are inside the
/// input, computed in registers: each weight load serves `TILE` pixels.
///
/// # Safety
/// As for [`pixels`], with the tile's width taps all inside and `p.groups == 1`.
#[inline(always)]
unsafe fn conv_tile<V: Vector>(
    p: &Conv,
    xp: *const f32,
    wp: *const f32,
    bias: Option<*const f32>,
    yp: *mut f32,
    at: At,
) {
    let [wd, wh, ww] = p.windows;
    let (cin, cout, l) = (p.cin, p.cout, V::LANES);
    let mut co = 0;
    while co < cout {
        // Two vectors of channels where there are two left, else one.
        let pair = cout - co >= 2 * l;
        // SAFETY (the whole block): offsets stay inside x, w, y and bias by the
        // function's contract.
        unsafe {
            let zero = V::splat(0.0);
            let first: V = bias_vector(bias, co);
            let second = if pair {
                bias_vector(bias, co + l)
            } else {
                zero
            };
            let mut acc = [[first, second]; TILE];
            for kd in wd.taps(at.od) {
                let id = wd.at(at.od, kd);
                for kh in wh.taps(at.oh) {
                    let ih = wh.at(at.oh, kh);
                    let row = ((at.b * wd.input + id) * wh.input + ih) * ww.input;
                    // With no dilation along the width, a window row's taps and channels
                    // are one contiguous run in x and in w: one loop of `kernel * cin`
                    // instead of `kernel` loops of `cin`.
                    let (runs, run) = if ww.dilation == 1 {
                        (1, ww.kernel * cin)
                    } else {
                        (ww.kernel, cin)
                    };
                    for kw in 0..runs {
                        let tap = (kd * wh.kernel + kh) * ww.kernel + kw;
                        let mut xs = [core::ptr::null(); TILE];
                        for (t, xs) in xs.iter_mut().enumerate() {
                            *xs = xp.add((row + ww.at(at.ow + t, kw)) * cin);
                        }
                        let wrow = wp.add(tap * cin * cout + co);
                        for ci in 0..run {
                            let w0 = V::load(wrow.add(ci * cout));
                            if pair {
                                let w1 = V::load(wrow.add(ci * cout + l));
                                for t in 0..TILE {
                                    let v = V::splat(*xs[t].add(ci));
                                    acc[t][0] = v.mul_add(w0, acc[t][0]);
                                    acc[t][1] = v.mul_add(w1, acc[t][1]);
                                }
                            } else {
                                for t in 0..TILE {
                                    let v = V::splat(*xs[t].add(ci));
                                    acc[t][0] = v.mul_add(w0, acc[t][0]);
                                }
                            }
                        }
                    }
                }
            }
            for (t, a) in acc.iter().enumerate() {
                let out = yp.add((at.pixel + t) * cout + co);
                a[0].store(out);
                if pair {
                    a[1].store(out.add(l));
                }
            }
        }
        co += if pair { 2 * l } else { l };
    }
}

/// One output pixel (at an edge, where taps fall in padding), its channels in
/// registers `PIXEL_BLOCK` vectors at a time, visiting only the taps inside the input.
///
/// # Safety
/// As for [`conv_tile`], for one pixel whose taps come from `taps()`.
#[inline(always)]
unsafe fn conv_pixel<V: Vector>(
    p: &Conv,
    xp: *const f32,
    wp: *const f32,
    bias: Option<*const f32>,
    yp: *mut f32,
    at: At,
) {
    let [wd, wh, ww] = p.windows;
    let (cin, cout, l) = (p.cin, p.cout, V::LANES);
    let mut co = 0;
    while co < cout {
        let vectors = ((cout - co) / l).min(PIXEL_BLOCK);
        // SAFETY (the whole block): offsets stay inside x, w, y and bias by the
        // function's contract.
        unsafe {
            let mut acc = [V::splat(0.0); PIXEL_BLOCK];
            for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                *a = bias_vector(bias, co + l * j);
            }
            let taps = ww.taps(at.ow);
            // As in `conv_tile`: undilated taps of a row are one contiguous run.
            let (kws, run) = if ww.dilation == 1 {
                (
                    taps.start..taps.start + (!taps.is_empty()) as usize,
                    taps.len() * cin,
                )
            } else {
                (taps, cin)
            };
            for kd in wd.taps(at.od) {
                for kh in wh.taps(at.oh) {
                    for kw in kws.clone() {
                        let xi = (((at.b * wd.input + wd.at(at.od, kd)) * wh.input
                            + wh.at(at.oh, kh))
                            * ww.input
                            + ww.at(at.ow, kw))
                            * cin;
                        let wrow =
                            wp.add(((kd * wh.kernel + kh) * ww.kernel + kw) * cin * cout + co);
                        for ci in 0..run {
                            let v = V::splat(*xp.add(xi + ci));
                            let wr = wrow.add(ci * cout);
                            for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                                *a = v.mul_add(V::load(wr.add(l * j)), *a);
                            }
                        }
                    }
                }
            }
            let out = yp.add(at.pixel * cout + co);
            for (j, a) in acc.iter().enumerate().take(vectors) {
                a.store(out.add(l * j));
            }
        }
        co += l * vectors;
    }
}

/// Taps a depthwise window may have for [`depthwise`]; larger windows take the loop.
const MAX_TAPS: usize = 64;

/// Channels a depthwise convolution whose weights would fill half of L1 runs over the
/// whole map before the next ones: a multiple of every register width, so each
/// channel takes the same registers as without chunks. Such layers (672 channels of
/// 5x5 taps: 67 KB of weights, 37% faster on AVX-512) then keep one chunk's weights
/// and inputs in L1 across the pixels rather than read every channel's again from L2
/// for each pixel. Smaller ones would only list their taps again for each chunk.
const DW_CHUNK: usize = 128;

/// A depthwise convolution with one output per channel, row by row: `T` adjacent
/// pixels at a time where their width taps are all inside the input (the row's last
/// tile starts early enough to end inside, computing some pixels again to the same
/// values), one pixel at a time at the edges. Each row lists its tiles' taps once, as
/// offsets into x and w from its first tile (the others start whole pixels further
/// along x), and each edge pixel its own; every block of channels then runs over a
/// list with the tile's accumulators in registers. Listing the taps per tile took a
/// third of MobileNet's depthwise time. Wide layers go in chunks of [`DW_CHUNK`]
/// channels, each over the whole map. Returns false, having written nothing, for
/// windows of more than [`MAX_TAPS`] taps.
#[inline(always)]
fn depthwise<I: Isa, const T: usize>(
    isa: I,
    p: &Conv,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> bool {
    let [wd, wh, ww] = p.windows;
    if wd.kernel * wh.kernel * ww.kernel > MAX_TAPS {
        return false;
    }
    let c = p.cout;
    let inside = ww.interior();
    let tiles = inside.len() >= T;
    // Left uninitialised: zeroing them would be a `memset` on the stack, whose
    // instruction count varies with the stack's alignment, which the environment's size
    // moves. `edge` lists one edge pixel's taps; `row` those of the row's first tile,
    // which every tile of the row shares, `stride` floats further along x a pixel.
    let mut edge = [const { MaybeUninit::<(usize, usize)>::uninit() }; MAX_TAPS];
    let mut row = [const { MaybeUninit::<(usize, usize)>::uninit() }; MAX_TAPS];
    let taps_n = wd.kernel * wh.kernel * ww.kernel;
    let chunk = if taps_n * c > L1_FLOATS / 2 {
        DW_CHUNK
    } else {
        c
    };
    // Lists the taps of output position (od, oh) and width `first`, for widths `kws`;
    // returns how many.
    let list = |list: &mut [MaybeUninit<(usize, usize)>; MAX_TAPS],
                b: usize,
                od: usize,
                oh: usize,
                first: usize,
                kws: core::ops::Range<usize>| {
        let mut n = 0;
        for kd in wd.taps(od) {
            let id = wd.at(od, kd);
            for kh in wh.taps(oh) {
                let r = (b * wd.input + id) * wh.input + wh.at(oh, kh);
                for kw in kws.clone() {
                    let tap = (kd * wh.kernel + kh) * ww.kernel + kw;
                    if let Some(t) = list.get_mut(n) {
                        t.write(((r * ww.input + ww.at(first, kw)) * c, tap * c));
                    }
                    n += 1;
                }
            }
        }
        // SAFETY: the first `n` (at most MAX_TAPS, by the check above) were just
        // written.
        unsafe {
            core::slice::from_raw_parts(list.as_ptr().cast::<(usize, usize)>(), n.min(MAX_TAPS))
        }
    };
    // A clamp is applied to the registers as they are stored, not in a pass after.
    let clamp = p.act.clamp();
    let mut c0 = 0;
    while c0 < c {
        let count = (c - c0).min(chunk);
        // Every channel of a row is done once the last chunk has passed it.
        let last = c0 + count == c;
        let mut pixel = 0;
        for b in 0..p.batch {
            for od in 0..wd.output {
                for oh in 0..wh.output {
                    let row_start = pixel;
                    let row_taps = if tiles {
                        list(&mut row, b, od, oh, inside.start, 0..ww.kernel)
                    } else {
                        &[]
                    };
                    let mut ow = 0;
                    while ow < ww.output {
                        let tiled = tiles && inside.contains(&ow);
                        // The row's last tile starts early enough to end inside.
                        let first = if tiled {
                            (ow + T).min(inside.end) - T
                        } else {
                            ow
                        };
                        let out = pixel - (ow - first);
                        // The chunk's first channel, and the tile's first pixel along x
                        // from where `row_taps` start: offsets stay whole pixels of `c`
                        // floats.
                        let shift = if tiled {
                            (first - inside.start) * ww.stride * c
                        } else {
                            0
                        };
                        let a = DwArgs {
                            c: (c, count),
                            step: ww.stride * c,
                            run: if ww.stride == 1 && ww.dilation == 1 {
                                ww.kernel
                            } else {
                                0
                            },
                            taps: if tiled {
                                row_taps
                            } else {
                                list(&mut edge, b, od, oh, ow, ww.taps(ow))
                            },
                            xp: x.as_ptr().wrapping_add(c0 + shift),
                            wp: w.as_ptr().wrapping_add(c0),
                            bias: bias.map(|b| b.as_ptr().wrapping_add(c0)),
                            y: y.as_mut_ptr().wrapping_add(c0 + out * c),
                            clamp,
                        };
                        // SAFETY: `conv_at` checked x, w, y and bias against the geometry;
                        // every tap listed is inside x for every pixel of the tile, and the
                        // tile's pixels are output pixels.
                        unsafe {
                            if tiled {
                                depthwise_channels::<I, T>(a);
                                pixel += first + T - ow;
                                ow = first + T;
                            } else {
                                depthwise_channels::<I, 1>(a);
                                pixel += 1;
                                ow += 1;
                            }
                        }
                    }
                    // SAFETY: the row's pixels were just written, inside y.
                    if last && clamp.is_none() {
                        p.act
                            .apply(isa, unsafe { part_mut(y, row_start * c, ww.output * c) });
                    }
                }
            }
        }
        c0 += count;
    }
    true
}

/// Where [`depthwise_channels`] reads and writes.
#[derive(Clone, Copy)]
struct DwArgs<'a> {
    /// Floats a pixel, and channels to compute from the pointers on.
    c: (usize, usize),
    /// Floats between the tile's pixels in x.
    step: usize,
    /// Taps along a window row, where the taps are undilated and the stride 1 (else
    /// 0): for [`sliding_block`].
    run: usize,
    /// `(x, w)` offsets of each tap from `xp` and `wp`.
    taps: &'a [(usize, usize)],
    xp: *const f32,
    wp: *const f32,
    bias: Option<*const f32>,
    y: *mut f32,
    /// The activation, where it is a clamp.
    clamp: Option<Clamp>,
}

/// The first `count` channels of `T` depthwise pixels `step` floats apart in x, of
/// `c` floats each in y (`(c, count)`), in blocks of `I`'s registers, then its half
/// width, then one channel at a time.
///
/// # Safety
/// Each `(x, w)` of `taps` and every channel below `count` is inside x (for each of
/// the `T` pixels) and w; `y` is writable for `(T - 1) * c + count` floats, and bias
/// readable for `count`.
#[inline(always)]
unsafe fn depthwise_channels<I: Isa, const T: usize>(a: DwArgs) {
    // SAFETY: the contract; each block ends at or below `count`.
    unsafe {
        if const { T == PAIR_TILE } {
            // Taken only where `pair_sliding_fits`, on AVX-512.
            #[cfg(target_arch = "x86_64")]
            if a.c == (8, 8) && a.run == 3 {
                pair_sliding::<3>(a);
            } else if a.c == (8, 8) && a.run == 5 {
                pair_sliding::<5>(a);
            }
            return;
        }
        let co = depthwise_blocks::<I::F, T>(a, 0);
        let co = if const { <I::H>::LANES < <I::F>::LANES } {
            depthwise_blocks::<I::H, T>(a, co)
        } else {
            co
        };
        if const { 1 < <I::H>::LANES } {
            depthwise_blocks::<crate::lanes::S, T>(a, co);
        }
    }
}

/// The channels from `co` on in blocks of `V` registers while whole registers fit:
/// as many registers a block as `T` pixels' accumulators leave room for. Returns the
/// first channel left.
///
/// # Safety
/// As for [`depthwise_channels`].
#[inline(always)]
unsafe fn depthwise_blocks<V: Vector, const T: usize>(a: DwArgs, mut co: usize) -> usize {
    let (c, l) = (a.c.1, V::LANES);
    // SAFETY: each block ends at or below `c`.
    unsafe {
        if const { T > 1 } && (a.run == 3 || a.run == 5) {
            while co + l <= c {
                if a.run == 3 {
                    sliding_block::<V, T, 3>(a, co);
                } else {
                    sliding_block::<V, T, 5>(a, co);
                }
                co += l;
            }
            return co;
        }
        if const { T == 1 } {
            while co + 8 * l <= c {
                depthwise_block::<V, T, 8>(a, co);
                co += 8 * l;
            }
        } else if const { V::LANES == 16 } {
            // 32 registers: 6 x 4 accumulators and 4 weights.
            while co + 4 * l <= c {
                depthwise_block::<V, T, 4>(a, co);
                co += 4 * l;
            }
        }
        while co + 2 * l <= c {
            depthwise_block::<V, T, 2>(a, co);
            co += 2 * l;
        }
        if co + l <= c {
            depthwise_block::<V, T, 1>(a, co);
            co += l;
        }
    }
    co
}

/// `NV` registers of channels from `co` for `T` pixels: bias, then the taps in order
/// (without FMA, the portable loop's order and bits), each weight register loaded
/// serving the `T` pixels.
///
/// # Safety
/// As for [`depthwise_channels`], with `co + NV * V::LANES <= count`.
#[inline(always)]
unsafe fn depthwise_block<V: Vector, const T: usize, const NV: usize>(a: DwArgs, co: usize) {
    let (c, l) = (a.c.0, V::LANES);
    // SAFETY (the whole body): offsets stay inside x, w, y and bias by the contract.
    unsafe {
        let b: [V; NV] = core::array::from_fn(|j| bias_vector(a.bias, co + j * l));
        let mut acc = [b; T];
        for &(xo, wo) in a.taps {
            let wv: [V; NV] = core::array::from_fn(|j| V::load(a.wp.add(wo + co + j * l)));
            let xs = a.xp.add(xo + co);
            for (t, acc) in acc.iter_mut().enumerate() {
                for j in 0..NV {
                    acc[j] = V::load(xs.add(t * a.step + j * l)).mul_add(wv[j], acc[j]);
                }
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            for (j, &v) in acc.iter().enumerate() {
                let v = match a.clamp {
                    Some(k) => k.apply(v),
                    None => v,
                };
                v.store(a.y.add(t * c + co + j * l));
            }
        }
    }
}

/// [`depthwise_block`] of one register of channels for a tile of adjacent pixels
/// (stride 1), with `K` undilated taps a window row: the `T + K - 1` input pixels a
/// tile's window row covers are each loaded once and serve every tap that reads them,
/// rather than once a tap. Each accumulator still takes its taps in order, so the sums
/// are the same. (At stride 2 the same loop, unrolled less well, was slower.)
///
/// # Safety
/// As for [`depthwise_channels`], with `co + V::LANES <= count`, `a.step` the floats
/// of a pixel, and the taps in runs of `K` along a window row.
#[inline(always)]
unsafe fn sliding_block<V: Vector, const T: usize, const K: usize>(a: DwArgs, co: usize) {
    let c = a.c.0;
    // SAFETY (the whole body): offsets stay inside x, w, y and bias by the contract:
    // pixel `t`'s tap `k` of a row reads what `t + k` does at the row's first tap.
    unsafe {
        let mut acc = [bias_vector::<V>(a.bias, co); T];
        for row in a.taps.chunks_exact(K) {
            let (xo, _) = row[0];
            let wv: [V; K] = core::array::from_fn(|k| V::load(a.wp.add(row[k].1 + co)));
            let xs = a.xp.add(xo + co);
            for u in 0..T + K - 1 {
                let xv = V::load(xs.add(u * c));
                // Pixel t's tap k reads input pixel `t + k`.
                for k in 0..K {
                    if u >= k && u - k < T {
                        acc[u - k] = xv.mul_add(wv[k], acc[u - k]);
                    }
                }
            }
        }
        for (t, &v) in acc.iter().enumerate() {
            let v = match a.clamp {
                Some(k) => k.apply(v),
                None => v,
            };
            v.store(a.y.add(t * c + co));
        }
    }
}

/// Pixels of a depthwise tile of 8 channels on AVX-512 ([`pair_sliding`]): 6 registers
/// of two pixels each.
const PAIR_TILE: usize = 12;

/// Whether [`pair_sliding`] takes a depthwise convolution: 8 channels, stride 1,
/// undilated rows of 3 or 5 taps, and rows of at least [`PAIR_TILE`] pixels whose taps
/// are all inside.
#[inline(always)]
fn pair_sliding_fits(p: &Conv) -> bool {
    let ww = p.windows[2];
    p.cout == 8
        && ww.stride == 1
        && ww.dilation == 1
        && (ww.kernel == 3 || ww.kernel == 5)
        && ww.interior().len() >= PAIR_TILE
}

/// [`sliding_block`] of 8 channels on AVX-512: each register holds two neighbouring
/// pixels, which in x are 16 floats in a row, with the weights in both halves. Each
/// accumulator takes its taps in order, so the sums are those of 8-lane registers at
/// half the multiply-adds.
///
/// # Safety
/// As for [`sliding_block`], with `a.c` `(8, 8)` and the CPU having AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_sliding<const K: usize>(a: DwArgs) {
    use crate::lanes::{V16, V8};
    const T: usize = PAIR_TILE;
    // SAFETY (the whole body): as for `sliding_block`; the load at pixel `2q + k` reads
    // it and the next, at most `T + K - 2`, the last that the tile's windows cover.
    unsafe {
        let mut acc = [V16::twice(bias_vector::<V8>(a.bias, 0)); T / 2];
        for row in a.taps.chunks_exact(K) {
            let (xo, _) = row[0];
            let wv: [V16; K] = core::array::from_fn(|k| V16::twice(V8::load(a.wp.add(row[k].1))));
            let xs = a.xp.add(xo);
            // Pixels 2q and 2q + 1 take tap k from the 16 floats at pixel 2q + k: the
            // loads of one address (q, k and q + 1, k - 2) are one after unrolling.
            for (k, &wk) in wv.iter().enumerate() {
                for (q, acc) in acc.iter_mut().enumerate() {
                    *acc = V16::load(xs.add((2 * q + k) * 8)).mul_add(wk, *acc);
                }
            }
        }
        for (q, &v) in acc.iter().enumerate() {
            let v = match a.clamp {
                Some(k) => k.apply(v),
                None => v,
            };
            v.store(a.y.add(q * 16));
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
pub fn conv_transpose<I: Isa>(
    isa: I,
    p: &ConvTranspose,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    isa.vectorize(
        #[inline(always)]
        || conv_transpose_in::<I>(isa, p, x, w, bias, y),
    );
}

/// [`conv_transpose`] for code already inside `I::vectorize`: generated code runs all its steps
/// inside one, so that each step's constants reach the inlined loops.
#[inline(always)]
pub fn conv_transpose_in<I: Isa>(
    isa: I,
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
                                    let ws = unsafe { part(w, ki + ci * cout, cout) };
                                    axpy::<I>(out, xv, ws);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    p.act.apply(isa, y);
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::isa::{Dispatch, Level, WithIsa};
    use std::vec::Vec;

    /// A convolution with whichever ISA a dispatch holds.
    struct Run<'a>(&'a Conv, &'a [f32], &'a [f32], &'a [f32], &'a mut [f32]);

    impl WithIsa for Run<'_> {
        type Output = ();
        fn with<I: Isa>(self, isa: I) {
            // Eight output channels as an emitter passes them, a constant: the kernels
            // of that width (pairs of taps on AVX-512) exist only then.
            // So too a small map's tile, which only a step of that route holds.
            let (p, x, w, b, y) = (self.0, self.1, self.2, Some(self.3), self.4);
            match (p.route(), p.cout) {
                (SMALL, 8) => conv_at::<I, SMALL, 8>(isa, p, x, w, b, y),
                (SMALL, _) => conv_at::<I, SMALL, 0>(isa, p, x, w, b, y),
                (_, 8) => conv_at::<I, ANY, 8>(isa, p, x, w, b, y),
                _ => conv(isa, p, x, w, b, y),
            }
        }
    }

    /// A reference in the portable loop's order: bias, then each tap inside the input,
    /// then each input channel of the group; the activation last.
    fn reference(p: &Conv, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let [wd, wh, ww] = p.windows;
        let (cin_g, cout_g) = (p.cin / p.groups, p.cout / p.groups);
        let mut y = Vec::new();
        for b in 0..p.batch {
            for od in 0..wd.output {
                for oh in 0..wh.output {
                    for ow in 0..ww.output {
                        for co in 0..p.cout {
                            let g = co / cout_g;
                            let mut acc = bias[co];
                            for kd in wd.taps(od) {
                                for kh in wh.taps(oh) {
                                    for kw in ww.taps(ow) {
                                        let xi = (((b * wd.input + wd.at(od, kd)) * wh.input
                                            + wh.at(oh, kh))
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
                            y.push(p.act.eval(acc));
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn convolutions_match_the_loop_they_vectorise() {
        let window = |input: usize, kernel: usize, stride: usize, dilation: usize, same: bool| {
            let pad = if same { (kernel - 1) * dilation / 2 } else { 0 };
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
        // the register blocks' multiples; padded ones, and valid ones (the pixel tiles
        // across rows and the batch) with every width of register block and tail.
        let cases = [
            (3, 8, 1, 3, 1, 1, true),
            (5, 12, 1, 3, 2, 1, true),
            (4, 36, 1, 3, 1, 2, true),
            (16, 16, 16, 3, 1, 1, true),
            (40, 40, 40, 5, 2, 1, true),
            (6, 20, 2, 1, 1, 1, true),
            (8, 24, 1, 3, 1, 1, true),
            (8, 64, 1, 3, 1, 1, true),
            (24, 24, 24, 3, 1, 1, true),
            // Depthwise of 8 channels: two pixels a register on AVX-512 at stride 1.
            (8, 8, 8, 3, 1, 1, true),
            (8, 8, 8, 5, 1, 1, true),
            (8, 8, 8, 3, 2, 1, true),
            (12, 12, 12, 3, 1, 1, true),
            (32, 32, 32, 3, 2, 1, true),
            // Depthwise in chunks of channels, the last with every tail width.
            (203, 203, 203, 5, 1, 1, true),
            (460, 460, 460, 3, 2, 1, true),
            (3, 8, 1, 3, 1, 1, false),
            (5, 70, 1, 3, 2, 1, false),
            (4, 36, 1, 3, 1, 2, false),
            (16, 112, 1, 1, 1, 1, false),
            (8, 64, 1, 3, 1, 1, false),
            (3, 32, 1, 3, 2, 2, false),
            (7, 52, 1, 1, 2, 1, false),
            (9, 5, 1, 2, 1, 1, false),
            // Wide tiles: one register of channels or less, at every width; 8 output
            // channels by pairs of taps (runs of 9, 5, and dilated runs of 2).
            (3, 8, 1, 3, 2, 1, false),
            (1, 8, 1, 5, 2, 1, false),
            (2, 8, 1, 3, 1, 2, false),
            (3, 4, 1, 3, 2, 1, false),
            (3, 16, 1, 3, 2, 1, false),
            (2, 3, 1, 3, 1, 1, false),
            // 9 to 16 channels in AVX-512's row tiles of 16 (rows of 32 and 16, and
            // 1x1 over 126 pixels), whole and masked.
            (16, 16, 1, 3, 1, 1, false),
            (5, 12, 1, 3, 2, 1, false),
            (8, 12, 1, 1, 1, 1, false),
            // 17 to 32 channels in AVX-512's row tiles of 8 pixels by 2 registers.
            (7, 32, 1, 3, 1, 1, false),
            (5, 24, 1, 3, 1, 1, false),
            // Bands of tiles sharing weights that outgrow L1, with every tail width.
            (100, 90, 1, 1, 1, 1, false),
            (30, 50, 1, 3, 1, 1, false),
        ];
        // The activations run in a pass over each tile or row the kernel stored, or,
        // the clamps, on the registers as they are stored. Maps 9 wide, and 29 wide
        // for rows of several depthwise tiles at stride 2; valid ones 26 wide too, for
        // rows that the row tiles take, and of 8 output channels 101 wide, for row
        // tiles whose last starts an odd number of pixels back (pairs of pixels stored);
        // of 9 to 32 output channels 34 wide, for AVX-512's tiles of 16 and of 8.
        let acts = [
            Act::Linear,
            Act::Relu,
            Act::Relu6,
            Act::Clip { lo: -0.5, hi: 0.25 },
            Act::ReluFull {
                max: 0.75,
                slope: 0.1,
                threshold: 0.25,
            },
            Act::Swish,
        ];
        let mut routes = [0; 6];
        // Two images of 7 rows; and one image of a few pixels, for the small maps' tile
        // (1x1 over 3x3, in panels too; 3x3 over 5x3 and 5x5; 8 channels by pairs).
        let maps = cases
            .into_iter()
            .flat_map(|case| {
                let (cout, same) = (case.1, case.6);
                [9, 29, 26, 101, 34]
                    .into_iter()
                    .filter(move |&width| match width {
                        26 => !same,
                        101 => !same && cout == 8,
                        34 => !same && (9..=32).contains(&cout),
                        _ => true,
                    })
                    .map(move |width| (case, 2, 7, width))
            })
            .chain([
                ((40, 40, 1, 1, 1, 1, false), 1, 3, 3),
                ((16, 32, 1, 1, 1, 1, false), 1, 3, 3),
                ((20, 24, 1, 3, 1, 1, false), 1, 5, 3),
                ((20, 36, 1, 3, 1, 1, false), 1, 5, 5),
                ((3, 8, 1, 3, 1, 1, false), 1, 5, 5),
            ]);
        for ((cin, cout, groups, kernel, stride, dilation, same), batch, height, width, act) in
            maps.flat_map(|(case, b, h, w)| acts.map(|act| (case, b, h, w, act)))
        {
            let p = Conv {
                batch,
                windows: [
                    Window::UNIT,
                    window(height, kernel, stride, dilation, same),
                    window(width, kernel, stride, dilation, same),
                ],
                cin,
                cout,
                groups,
                act,
                panels: false,
            };
            routes[usize::from(p.route())] += 1;
            let (nx, nw, ny) = p.sizes();
            let x: Vec<f32> = (0..nx).map(|_| draw()).collect();
            let w: Vec<f32> = (0..nw).map(|_| draw()).collect();
            let bias: Vec<f32> = (0..cout).map(|_| draw()).collect();
            let expected = reference(&p, &x, &w, &bias);
            // The same weights in panels, where the convolution can read them so.
            let mut layouts = std::vec![(p, w.clone())];
            if p.can_panel() {
                let rows = nw / cout;
                let mut panels = Vec::new();
                for first in (0..cout).step_by(PANEL) {
                    for r in 0..rows {
                        panels.extend_from_slice(&w[r * cout + first..][..PANEL]);
                    }
                }
                layouts.push((Conv { panels: true, ..p }, panels));
            }
            for (level, (p, w)) in Level::ALL
                .into_iter()
                .flat_map(|l| layouts.iter().map(move |pw| (l, pw)))
            {
                let isa = Dispatch::detect(level);
                if isa.level() != level {
                    std::eprintln!("{}: not on this CPU, skipped", level.name());
                    continue;
                }
                let mut y = std::vec![0.0; ny];
                isa.run(Run(p, &x, w, &bias, &mut y));
                for (i, (a, e)) in y.iter().zip(&expected).enumerate() {
                    // Without FMA every kernel sums in the reference's order: the same
                    // bits. The wider kernels fuse the multiply-adds.
                    if level == Level::Baseline {
                        assert_eq!(a.to_bits(), e.to_bits(), "{p:?} at {i}: {a} vs {e}");
                    } else {
                        let ok = (a - e).abs() <= 1e-5 * (1.0 + e.abs());
                        assert!(ok, "{p:?} at {i}, {}", level.name());
                    }
                }
            }
        }
        // Every route ran, the row tiles among them.
        assert!(routes[1..].iter().all(|&n| n > 0), "{routes:?}");
    }
}
