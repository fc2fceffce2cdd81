//! Pooling over channels_last tensors lifted to 3-D: max and average windows (averages
//! count only the values inside the input, like Keras) and global pooling.

use crate::simd::{part, part_mut, pool_acc};
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
#[inline]
pub fn pool(p: &Pool, x: &[f32], y: &mut [f32]) {
    let [wd, wh, ww] = p.windows;
    let c = p.channels;
    if x.len() < p.batch * wd.input * wh.input * ww.input * c
        || y.len() < p.batch * wd.output * wh.output * ww.output * c
    {
        return;
    }
    let mut pixel = 0;
    for b in 0..p.batch {
        for od in 0..wd.output {
            for oh in 0..wh.output {
                for ow in 0..ww.output {
                    // SAFETY (both `part`s): x and y lengths were checked against the
                    // geometry above, and taps() keeps positions inside the input.
                    let out = unsafe { part_mut(y, pixel * c, c) };
                    out.fill(if p.max { f32::NEG_INFINITY } else { 0.0 });
                    let (td, th, tw) = (wd.taps(od), wh.taps(oh), ww.taps(ow));
                    let count = td.len() * th.len() * tw.len();
                    for kd in td {
                        for kh in th.clone() {
                            for kw in tw.clone() {
                                let xi = (((b * wd.input + wd.at(od, kd)) * wh.input
                                    + wh.at(oh, kh))
                                    * ww.input
                                    + ww.at(ow, kw))
                                    * c;
                                pool_acc(out, unsafe { part(x, xi, c) }, p.max);
                            }
                        }
                    }
                    if !p.max {
                        let inv = 1.0 / count.max(1) as f32;
                        out.iter_mut().for_each(|o| *o *= inv);
                    }
                    pixel += 1;
                }
            }
        }
    }
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
#[inline]
pub fn global_pool(p: &GlobalPool, x: &[f32], y: &mut [f32]) {
    let c = p.channels;
    if c == 0 || p.positions == 0 || x.len() < p.batch * p.positions * c || y.len() < p.batch * c {
        return;
    }
    for (sample, out) in x
        .chunks_exact(p.positions * c)
        .zip(y.chunks_exact_mut(c))
        .take(p.batch)
    {
        out.fill(if p.max { f32::NEG_INFINITY } else { 0.0 });
        for pixel in sample.chunks_exact(c) {
            pool_acc(out, pixel, p.max);
        }
        if !p.max {
            let inv = 1.0 / p.positions as f32;
            out.iter_mut().for_each(|o| *o *= inv);
        }
    }
}
