//! Windows over each channel on its own: depthwise convolutions (one output per input
//! channel) and max and average pooling, padded or not. Output positions go by runs
//! along each axis whose taps inside the input are the same (the edges, and the
//! interior between them), so padding costs no test and no wasted operation, and an
//! average's divisor is a constant of its run. Within a run, tiles of six adjacent
//! pixels keep `6 x NV` channel vectors in registers; each weight vector loaded serves
//! the six, and the inputs are the FMAs' memory operands. The sums run bias first, then
//! the taps in order, as the runtime's depthwise tiles and pooling do.
//!
//! Registers: rdi x and rcx y (the sample's first pixel), rsi w, rdx bias, r9 the
//! loop counters; rax and rbx the x (at the run's first tap) and y of the current row
//! of a run, r10 and r11 those of the current tile, r15 the first channel of a block,
//! in bytes.

use super::elementwise::Binary;
use super::{disp, vectors, Asm, Ctl, Listing, Refused, Wide, M, R};
use crate::emit::clif::window::{segments, tame};
use crate::emit::tape::Tape;
use iced_x86::code_asm::*;
use kerac::window::Window;
use kerac::Act;

/// Output pixels per tile.
const TILE: usize = 6;
/// Taps a listing unrolls at most (a 7x7 window has 49).
const MAX_TAPS: usize = 64;
/// Frame slots of the loop counters: samples, depth, rows and tiles.
const SLOTS: [i32; 4] = [8, 16, 24, 32];

/// What a window computes per channel.
#[derive(Clone, Copy, PartialEq)]
enum Op {
    /// Bias (or zero), then the weighted sum of the taps, then the activation.
    Depthwise { bias: bool, act: Act },
    /// The largest tap.
    Max,
    /// The mean of the taps inside the input.
    Average,
}

/// A depthwise convolution or a pooling window.
pub(in crate::emit::clif) struct Depthwise {
    batch: usize,
    windows: [Window; 3],
    channels: usize,
    op: Op,
}

impl Depthwise {
    /// Max or average pooling.
    pub fn pool(p: &kerac::pool::Pool) -> Option<Depthwise> {
        let conv = kerac::conv::Conv {
            batch: p.batch,
            windows: p.windows,
            cin: p.channels,
            cout: p.channels,
            groups: p.channels,
            act: Act::Linear,
            panels: false,
        };
        let mut d = Depthwise::new(&conv, false)?;
        d.op = if p.max { Op::Max } else { Op::Average };
        Some(d)
    }

    /// `p` where it is depthwise with a depth multiplier of 1 and its offsets fit
    /// 32-bit displacements.
    pub fn new(p: &kerac::conv::Conv, bias: bool) -> Option<Depthwise> {
        let groups = p.groups.max(1);
        if groups == 1 || p.cin != groups || p.cout != groups {
            return None;
        }
        let windows = p.windows.each_ref().map(tame);
        let taps = windows
            .iter()
            .try_fold(1usize, |n, w| n.checked_mul(w.kernel))?;
        // Both buffers, and the strides over them, within a displacement's reach.
        let floats = |len: fn(&Window) -> usize| {
            windows
                .iter()
                .try_fold(p.cin.checked_mul(4)?, |n, w| n.checked_mul(len(w).max(1)))
        };
        let near = |b: Option<usize>| b.is_some_and(|b| b < 1 << 30);
        let px = p.cin.checked_mul(4)?;
        let spans = windows.iter().all(|w| {
            near(
                w.stride
                    .checked_mul(w.output)
                    .and_then(|s| s.checked_mul(px)),
            ) && near(
                w.dilation
                    .checked_mul(w.kernel)
                    .and_then(|s| s.checked_add(w.pad_before))
                    .and_then(|s| s.checked_mul(px)),
            )
        });
        if taps > MAX_TAPS
            || p.cin == 0
            || !near(floats(|w| w.input))
            || !near(floats(|w| w.output))
            || !spans
        {
            return None;
        }
        Some(Depthwise {
            batch: p.batch,
            windows,
            channels: p.cin,
            op: Op::Depthwise { bias, act: p.act },
        })
    }

    /// The kernel `(x, w, bias, y, -, counters)`.
    pub fn assemble(&self, wide: Wide, counting: bool) -> R<Listing> {
        let tape = match self.op {
            Op::Depthwise { act, .. } if act != Act::Linear => {
                Some(Tape::trace(|x| act.eval_lanes(x)))
            }
            _ => None,
        };
        let mut consts = super::act_constants(tape.as_ref());
        consts.push(f32::NEG_INFINITY.to_bits());
        let [sd, sh, sw] = self.windows.each_ref().map(segments);
        if self.op == Op::Average {
            for (_, _, dt) in &sd {
                for (_, _, ht) in &sh {
                    for (_, _, wt) in &sw {
                        let bits = scale(dt.len() * ht.len() * wt.len()).to_bits();
                        if !consts.contains(&bits) {
                            consts.push(bits);
                        }
                    }
                }
            }
        }
        let mut asm = Asm::new(wide, counting, consts.clone())?;
        if let Some(t) = &tape {
            if !super::fits(wide, &consts, t, &super::spare(wide, &[0]))? {
                return Err(Refused::NoRoom);
            }
        }
        let c = self.channels;
        let tail = c % wide.lanes();
        if tail != 0 {
            asm.set_mask(tail)?;
        }
        let [wd, wh, ww] = self.windows;
        let px = c * 4;
        // Bytes between x's and y's rows, planes and samples.
        let xs = [wh.input * ww.input * px, ww.input * px, px];
        let ys = [wh.output * ww.output * px, ww.output * px, px];
        let x_sample = wd.input * xs[0];
        let y_sample = wd.output * ys[0];
        let act = tape.as_ref();
        asm.repeat(self.batch, Ctl::Stack(SLOTS[0]), |asm| {
            for (d0, dn, dt) in &sd {
                for (h0, hn, ht) in &sh {
                    for (w0, wn, wt) in &sw {
                        // x at the run's first output and first tap inside, y at the
                        // run's first output.
                        let first = [
                            (wd, *d0, dt.start),
                            (wh, *h0, ht.start),
                            (ww, *w0, wt.start),
                        ];
                        let mut xoff: i64 = 0;
                        for (axis, (w, o, k)) in first.iter().enumerate() {
                            let at = (o * w.stride + k * w.dilation) as i64 - w.pad_before as i64;
                            xoff += at * xs[axis] as i64;
                        }
                        let yoff = d0 * ys[0] + h0 * ys[1] + w0 * ys[2];
                        let xoff = i32::try_from(xoff).map_err(|_| Refused::Far)?;
                        asm.x().lea(rax, qword_ptr(rdi + xoff))?;
                        asm.x().lea(rbx, qword_ptr(rcx + disp(yoff)?))?;
                        // Taps inside, as byte offsets from the first, and their rows of w.
                        let mut taps = Vec::new();
                        for kd in dt.clone() {
                            for kh in ht.clone() {
                                for kw in wt.clone() {
                                    let x = (kd - dt.start) * wd.dilation * xs[0]
                                        + (kh - ht.start) * wh.dilation * xs[1]
                                        + (kw - wt.start) * ww.dilation * xs[2];
                                    let w = ((kd * wh.kernel + kh) * ww.kernel + kw) * px;
                                    taps.push((x, w));
                                }
                            }
                        }
                        let run = Run {
                            taps: &taps,
                            pixel: ww.stride * px,
                            scale: scale(taps.len()),
                        };
                        asm.repeat(*dn, Ctl::Stack(SLOTS[1]), |asm| {
                            asm.repeat(*hn, Ctl::Stack(SLOTS[2]), |asm| {
                                asm.x().mov(r10, rax)?;
                                asm.x().mov(r11, rbx)?;
                                asm.repeat(wn / TILE, Ctl::Stack(SLOTS[3]), |asm| {
                                    self.tile(asm, &run, TILE, act)?;
                                    asm.x().add(r10, disp(TILE * run.pixel)?)?;
                                    asm.x().add(r11, disp(TILE * px)?)?;
                                    Ok(())
                                })?;
                                if wn % TILE > 0 {
                                    self.tile(asm, &run, wn % TILE, act)?;
                                }
                                asm.x().add(rax, disp(wh.stride * xs[1])?)?;
                                asm.x().add(rbx, disp(ys[1])?)?;
                                Ok(())
                            })?;
                            // Back to the run's first row, one plane on.
                            let x_back =
                                wd.stride as i64 * xs[0] as i64 - (hn * wh.stride * xs[1]) as i64;
                            let y_back = ys[0] as i64 - (hn * ys[1]) as i64;
                            asm.x()
                                .add(rax, i32::try_from(x_back).map_err(|_| Refused::Far)?)?;
                            asm.x()
                                .add(rbx, i32::try_from(y_back).map_err(|_| Refused::Far)?)?;
                            Ok(())
                        })?;
                    }
                }
            }
            asm.x().add(rdi, disp(x_sample)?)?;
            asm.x().add(rcx, disp(y_sample)?)?;
            Ok(())
        })?;
        asm.finish()
    }

    /// `tt` adjacent pixels of a run from r10 (x) and r11 (y), every channel block.
    fn tile(&self, asm: &mut Asm, run: &Run, tt: usize, act: Option<&Tape>) -> R<()> {
        let nv = vectors(asm.wide, tt);
        asm.channel_blocks(self.channels, nv, |asm, nv, masked| {
            self.block(asm, run, tt, nv, masked, act)
        })
    }

    fn block(
        &self,
        asm: &mut Asm,
        run: &Run,
        tt: usize,
        nv: usize,
        masked: bool,
        act: Option<&Tape>,
    ) -> R<()> {
        let l = asm.wide.lanes();
        let px = self.channels * 4;
        let acc = |t: usize, j: usize| t * nv + j;
        let wreg = |j: usize| tt * nv + j;
        let tmp = tt * nv + nv;
        let part = |j: usize| masked && j + 1 == nv;
        for j in 0..nv {
            match self.op {
                Op::Depthwise { bias: true, .. } => {
                    asm.load(acc(0, j), M::ix(rdx, r15, disp(j * l * 4)?), part(j))?
                }
                Op::Max => {
                    let low = asm.constant(f32::NEG_INFINITY.to_bits())?;
                    asm.load(acc(0, j), low, false)?
                }
                _ => asm.zero(acc(0, j))?,
            }
            for t in 1..tt {
                asm.copy(acc(t, j), acc(0, j))?;
            }
        }
        for &(x, w) in run.taps {
            if let Op::Depthwise { .. } = self.op {
                for j in 0..nv {
                    asm.load(wreg(j), M::ix(rsi, r15, disp(w + j * l * 4)?), part(j))?;
                }
            }
            for t in 0..tt {
                for j in 0..nv {
                    let at = M::ix(r10, r15, disp(x + t * run.pixel + j * l * 4)?);
                    match self.op {
                        Op::Depthwise { .. } => {
                            asm.fma_mem(acc(t, j), wreg(j), at, part(j), tmp)?
                        }
                        // max(v, acc), as the runtime's `fmax(v, acc)`.
                        Op::Max => {
                            asm.load(tmp, at, part(j))?;
                            asm.binary(Binary::Max, acc(t, j), tmp, acc(t, j))?;
                        }
                        Op::Average => {
                            asm.load(tmp, at, part(j))?;
                            asm.binary(Binary::Add, acc(t, j), acc(t, j), tmp)?;
                        }
                    }
                }
            }
        }
        if self.op == Op::Average {
            let s = asm.constant(run.scale.to_bits())?;
            asm.load(tmp, s, false)?;
            for t in 0..tt {
                for j in 0..nv {
                    asm.binary(Binary::Mul, acc(t, j), acc(t, j), tmp)?;
                }
            }
        }
        let mut outs = Vec::new();
        for t in 0..tt {
            for j in 0..nv {
                outs.push((
                    acc(t, j),
                    M::ix(r11, r15, disp(t * px + j * l * 4)?),
                    part(j),
                ));
            }
        }
        asm.store_all(act, &outs)
    }
}

/// The taps of a run of output positions: `(x, w)` byte offsets of each from the
/// first, the bytes between adjacent pixels' windows, and an average's factor.
struct Run<'a> {
    taps: &'a [(usize, usize)],
    pixel: usize,
    scale: f32,
}

/// The factor of a mean over `count` taps, as the runtime computes it.
fn scale(count: usize) -> f32 {
    1.0 / count.max(1) as f32
}
