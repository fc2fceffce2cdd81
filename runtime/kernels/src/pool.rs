//! Pooling over channels_last tensors lifted to 3-D: max and average windows (averages
//! count only the values inside the input, like Keras) and global pooling.

use crate::isa::Isa;
use crate::lanes::{Vector, S};
use crate::window::Window;

/// A pooling window with fixed geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Batch size.
    pub batch: usize,
    /// Depth, height and width axes.
    pub windows: [Window; 3],
    /// Channels.
    pub channels: usize,
    /// Max rather than average.
    pub max: bool,
}

/// Max or average pooling.
pub fn pool<I: Isa>(isa: I, p: &Pool, x: &[f32], y: &mut [f32]) {
    isa.vectorize(
        #[inline(always)]
        || pool_in::<I>(isa, p, x, y),
    );
}

/// [`pool`] for code already inside `I::vectorize`: generated code runs all its steps
/// inside one, so that each step's constants reach the inlined loops.
#[inline(always)]
pub fn pool_in<I: Isa>(_isa: I, p: &Pool, x: &[f32], y: &mut [f32]) {
    let [wd, wh, ww] = p.windows;
    let c = p.channels;
    if x.len() < p.batch * wd.input * wh.input * ww.input * c
        || y.len() < p.batch * wd.output * wh.output * ww.output * c
    {
        return;
    }
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let mut pixel = 0;
    for b in 0..p.batch {
        for od in 0..wd.output {
            for oh in 0..wh.output {
                for ow in 0..ww.output {
                    let count = wd.taps(od).len() * wh.taps(oh).len() * ww.taps(ow).len();
                    let scale = 1.0 / count.max(1) as f32;
                    let window = Taps { p, b, od, oh, ow };
                    // SAFETY: x and y lengths were checked against the geometry above,
                    // taps() keeps positions inside the input, and this pixel is in y.
                    unsafe {
                        let out = yp.add(pixel * c);
                        let co = channels::<I::F>(&window, scale, 0, xp, out);
                        let co = channels::<I::H>(&window, scale, co, xp, out);
                        channels::<S>(&window, scale, co, xp, out);
                    }
                    pixel += 1;
                }
            }
        }
    }
}

/// Vectors of channels one output pixel keeps in registers across its window.
const BLOCK: usize = 8;

/// One output pixel's window.
struct Taps<'a> {
    p: &'a Pool,
    b: usize,
    od: usize,
    oh: usize,
    ow: usize,
}

/// Channels from `co` of one output pixel, in whole registers of `V` while they fit
/// below the channel count, `BLOCK` at a time: each tap is a load and a `maxps` or add
/// per register, with no store until the window is done. Returns the first channel
/// left.
///
/// # Safety
/// `x` and `out` hold what the pool reads and writes at this pixel (checked by `pool`);
/// `V`'s ISA is enabled.
#[inline(always)]
unsafe fn channels<V: Vector>(
    t: &Taps,
    scale: f32,
    mut co: usize,
    x: *const f32,
    out: *mut f32,
) -> usize {
    let (p, l) = (t.p, V::LANES);
    let ([wd, wh, ww], c, max) = (p.windows, p.channels, p.max);
    while co + l <= c {
        let vectors = ((c - co) / l).min(BLOCK);
        let mut acc = [V::splat(if max { f32::NEG_INFINITY } else { 0.0 }); BLOCK];
        for kd in wd.taps(t.od) {
            for kh in wh.taps(t.oh) {
                for kw in ww.taps(t.ow) {
                    let xi = (((t.b * wd.input + wd.at(t.od, kd)) * wh.input + wh.at(t.oh, kh))
                        * ww.input
                        + ww.at(t.ow, kw))
                        * c
                        + co;
                    for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                        // SAFETY: the contract: taps() keeps the tap inside the input.
                        let v = unsafe { V::load(x.add(xi + l * j)) };
                        *a = if max { v.max(*a) } else { *a + v };
                    }
                }
            }
        }
        for (j, a) in acc.iter().enumerate().take(vectors) {
            let r = if max { *a } else { *a * V::splat(scale) };
            // SAFETY: the contract: the pixel's channels are in y.
            unsafe { r.store(out.add(co + l * j)) };
        }
        co += l * vectors;
    }
    co
}

/// Max or mean over every position of each sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalPool {
    /// Batch size.
    pub batch: usize,
    /// Positions per sample.
    pub positions: usize,
    /// Channels.
    pub channels: usize,
    /// Max rather than mean.
    pub max: bool,
}

/// Global max or average pooling.
pub fn global_pool<I: Isa>(isa: I, p: &GlobalPool, x: &[f32], y: &mut [f32]) {
    isa.vectorize(
        #[inline(always)]
        || global_pool_in::<I>(isa, p, x, y),
    );
}

/// [`global_pool`] for code already inside `I::vectorize`: generated code runs all its steps
/// inside one, so that each step's constants reach the inlined loops.
#[inline(always)]
pub fn global_pool_in<I: Isa>(_isa: I, p: &GlobalPool, x: &[f32], y: &mut [f32]) {
    let c = p.channels;
    if c == 0 || p.positions == 0 || x.len() < p.batch * p.positions * c || y.len() < p.batch * c {
        return;
    }
    let scale = 1.0 / p.positions as f32;
    for b in 0..p.batch {
        // SAFETY: the lengths were checked above: sample `b` has `positions * c` floats
        // of x and `c` of y.
        unsafe {
            let (xs, out) = (
                x.as_ptr().add(b * p.positions * c),
                y.as_mut_ptr().add(b * c),
            );
            let co = positions::<I::F>(p, scale, 0, xs, out);
            let co = positions::<I::H>(p, scale, co, xs, out);
            positions::<S>(p, scale, co, xs, out);
        }
    }
}

/// Channels from `co` of one sample, reduced over every position in whole registers of
/// `V`, `BLOCK` at a time, as [`channels`] does over a window; returns the first channel
/// left.
///
/// # Safety
/// `x` holds the sample's `positions * channels` floats, `out` its `channels`; `V`'s ISA
/// is enabled.
#[inline(always)]
unsafe fn positions<V: Vector>(
    p: &GlobalPool,
    scale: f32,
    mut co: usize,
    x: *const f32,
    out: *mut f32,
) -> usize {
    let (c, l, max) = (p.channels, V::LANES, p.max);
    while co + l <= c {
        let vectors = ((c - co) / l).min(BLOCK);
        let mut acc = [V::splat(if max { f32::NEG_INFINITY } else { 0.0 }); BLOCK];
        for pos in 0..p.positions {
            for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                // SAFETY: the contract: position `pos` is inside the sample.
                let v = unsafe { V::load(x.add(pos * c + co + l * j)) };
                *a = if max { v.max(*a) } else { *a + v };
            }
        }
        for (j, a) in acc.iter().enumerate().take(vectors) {
            let r = if max { *a } else { *a * V::splat(scale) };
            // SAFETY: the contract: the sample's channels are in y.
            unsafe { r.store(out.add(co + l * j)) };
        }
        co += l * vectors;
    }
    co
}
