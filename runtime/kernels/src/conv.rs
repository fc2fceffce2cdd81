//! Convolutions over channels_last tensors, every rank lifted to 3-D (a 1-D length `L`
//! is `[1, 1, L]`): direct grouped convolution (depthwise is one group per input
//! channel) and transposed convolution.

use crate::act::Act;
use crate::simd::{axpy, dot, part, part_mut};
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
    let mut pixel = 0;
    for b in 0..p.batch {
        for od in 0..wd.output {
            for oh in 0..wh.output {
                for ow in 0..ww.output {
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
                    p.act.apply(out);
                    pixel += 1;
                }
            }
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

/// `y = act(conv_transpose(x, w) + b)`; `w` is `[kd, kh, kw, cout, cin]`.
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
                                let ki = ((kd * wh.kernel + kh) * ww.kernel + kw) * cout * cin;
                                let out = unsafe { part_mut(y, oi, cout) };
                                for (co, o) in out.iter_mut().enumerate() {
                                    *o += dot(xs, unsafe { part(w, ki + co * cin, cin) });
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
