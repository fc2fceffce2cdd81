//! Dense layers and single-group convolutions whose taps all lie inside their input
//! (every padded convolution, once the plan has padded its input): an implicit matrix
//! product. Output pixels go in tiles of six, in order across rows, images and the
//! batch, so small maps share each weight load as wide ones do; each tile keeps
//! `6 x NV` vectors of output channels in registers while the taps stream past, as the
//! runtime's `conv::valid` does. A table in the object holds where each pixel's window
//! starts in the input, so the listing needs no division and no branch on position.
//!
//! Registers: rdi x, rsi w, rdx bias, rcx y (the tile's first pixel), r8 the table
//! (the tile's first entry), r9 the loop counters; rax rbx rbp r10 r11 r12 the tile's
//! pixels in x, r13 the weight row, r14 the index along a run of taps, r15 the first
//! output channel of a block, in bytes.

use super::{disp, fits, sets, spare, vectors, Asm, Ctl, Listing, Refused, Wide, M, R};
use crate::emit::tape::Tape;
use iced_x86::code_asm::*;
use kerac::Act;

/// Output pixels per tile.
const TILE: usize = 6;
const PIXEL: [AsmRegister64; TILE] = [rax, rbx, rbp, r10, r11, r12];
const PIXEL32: [AsmRegister32; TILE] = [eax, ebx, ebp, r10d, r11d, r12d];
/// Weight rows ahead that a block asks the cache for, as the runtime does.
const PREFETCH_ROWS: usize = 16;
/// Runs of taps unrolled into one listing at most (a 3-D 3x3x3 window has 9).
const MAX_RUNS: usize = 64;

/// `y[p] = act(bias + sum over runs r, i < run of x[start[p] + runs[r] + i] * w[r * run + i])`
/// for every output pixel `p`, rows of `w` and `y` being `n` floats.
pub(in crate::emit::clif) struct Gemm {
    /// Output pixels.
    pub pixels: usize,
    /// Output channels.
    pub n: usize,
    /// Where each pixel's window starts in x, in bytes: the table.
    pub starts: Vec<u32>,
    /// Where each run of taps starts from a window's start, in bytes.
    pub runs: Vec<usize>,
    /// Floats of x (and rows of w) in one run.
    pub run: usize,
    pub bias: bool,
    pub act: Act,
}

impl Gemm {
    /// A dense layer: one pixel per row, one run over its inputs.
    pub fn dense(p: &kerac::dense::Dense, bias: bool) -> Option<Gemm> {
        let starts = (0..p.rows)
            .map(|r| u32::try_from(r.checked_mul(p.k)?.checked_mul(4)?).ok())
            .collect::<Option<Vec<u32>>>()?;
        Gemm {
            pixels: p.rows,
            n: p.n,
            starts,
            runs: vec![0],
            run: p.k,
            bias,
            act: p.act,
        }
        .checked()
    }

    /// A single-group convolution valid on every axis (`None` for any other).
    pub fn conv(p: &kerac::conv::Conv, bias: bool) -> Option<Gemm> {
        let windows = p.windows.each_ref().map(crate::emit::clif::window::tame);
        if p.groups.max(1) != 1 || !windows.iter().all(|w| w.is_valid()) {
            return None;
        }
        let [wd, wh, ww] = windows;
        let cin = p.cin;
        let pixels = p
            .batch
            .checked_mul(wd.output)?
            .checked_mul(wh.output)?
            .checked_mul(ww.output)?;
        if pixels > 1 << 24 {
            return None;
        }
        let mut starts = Vec::with_capacity(pixels);
        for b in 0..p.batch {
            for od in 0..wd.output {
                for oh in 0..wh.output {
                    for ow in 0..ww.output {
                        let image = b.checked_mul(wd.input)?.checked_mul(wh.input)?;
                        let row = image
                            .checked_add(od.checked_mul(wd.stride)?.checked_mul(wh.input)?)?
                            .checked_add(oh.checked_mul(wh.stride)?)?;
                        let at = row
                            .checked_mul(ww.input)?
                            .checked_add(ow.checked_mul(ww.stride)?)?
                            .checked_mul(cin)?
                            .checked_mul(4)?;
                        starts.push(u32::try_from(at).ok()?);
                    }
                }
            }
        }
        // Undilated taps of a window row are one run in x and in w.
        let (widths, run) = if ww.dilation == 1 {
            (1, ww.kernel.checked_mul(cin)?)
        } else {
            (ww.kernel, cin)
        };
        let mut runs = Vec::new();
        for kd in 0..wd.kernel {
            for kh in 0..wh.kernel {
                for kw in 0..widths {
                    if runs.len() == MAX_RUNS {
                        return None;
                    }
                    let rows = kd
                        .checked_mul(wd.dilation)?
                        .checked_mul(wh.input)?
                        .checked_add(kh.checked_mul(wh.dilation)?)?;
                    let at = rows
                        .checked_mul(ww.input)?
                        .checked_add(kw.checked_mul(ww.dilation)?)?
                        .checked_mul(cin)?
                        .checked_mul(4)?;
                    runs.push(at);
                }
            }
        }
        Gemm {
            pixels,
            n: p.cout,
            starts,
            runs,
            run,
            bias,
            act: p.act,
        }
        .checked()
    }

    /// Only products whose offsets fit 32-bit displacements, and that do anything.
    fn checked(self) -> Option<Gemm> {
        let far = |b: Option<usize>| b.is_none_or(|b| i32::try_from(b).is_err());
        let row = self.n.checked_mul(4);
        let last_run = self.runs.iter().max().copied().unwrap_or(0);
        let reach = self
            .run
            .checked_mul(4)
            .and_then(|r| r.checked_add(last_run));
        let wrows = row.and_then(|r| r.checked_mul(self.run.checked_add(PREFETCH_ROWS + 8)?));
        let tile = row.and_then(|r| r.checked_mul(TILE));
        if self.pixels == 0 || self.n == 0 || self.run == 0 || far(reach) || far(wrows) || far(tile)
        {
            return None;
        }
        Some(self)
    }

    /// The kernel `(x, w, bias, y, table, counters)`. Products with 16 outputs or fewer
    /// run at 256 bits on AVX-512 too: one 512-bit vector would leave a tile six
    /// accumulators, a broadcast load per FMA, where two 256-bit ones keep twelve.
    /// With `panels`, w is in the layout [`Gemm::panels`] gives.
    pub fn assemble(&self, wide: Wide, counting: bool, panels: bool) -> R<Listing> {
        let wide = self.width(wide);
        if panels && self.panels(wide).is_none() {
            return Err(Refused::Far);
        }
        let tape = (self.act != Act::Linear).then(|| Tape::trace(|x| self.act.eval_lanes(x)));
        let consts = super::act_constants(tape.as_ref());
        let mut asm = Asm::new(wide, counting, consts.clone())?;
        let tail = self.n % wide.lanes();
        if tail != 0 {
            asm.set_mask(tail)?;
        }
        // Where an activation does not fit beside a block's accumulators, the block
        // stores them and applies it to the stored vectors one at a time; where it does
        // not fit even so, the step keeps its Cranelift code.
        if let Some(t) = &tape {
            if !fits(wide, &consts, t, &spare(wide, &[0]))? {
                return Err(Refused::NoRoom);
            }
        }
        let act = tape.as_ref();
        asm.repeat(self.pixels / TILE, Ctl::Stack(0), |asm| {
            self.tile(asm, TILE, act, panels)?;
            asm.x().add(r8, (TILE * 4) as i32)?;
            asm.x().add(rcx, disp(TILE * self.n * 4)?)?;
            Ok(())
        })?;
        let rest = self.pixels % TILE;
        if rest > 0 {
            self.tile(&mut asm, rest, act, panels)?;
        }
        asm.finish()
    }

    /// The width the product runs at on a `wide` machine.
    fn width(&self, wide: Wide) -> Wide {
        if wide == Wide::Avx512 && self.n <= 16 {
            Wide::Avx2
        } else {
            wide
        }
    }

    /// Rows of w.
    fn rows(&self) -> usize {
        self.runs.len() * self.run
    }

    /// The panel layout of w on a `wide` machine, where its rows are whole vectors:
    /// `(rows, n, lanes)`, w stored one vector of columns after another, each with its
    /// rows together (`w'[(j / lanes) * rows * lanes + r * lanes + j % lanes] =
    /// w[r * n + j]`). Each block then reads its weights as a few sequential streams,
    /// which the hardware prefetches well, rather than a slice of every row: the
    /// difference shows once a model's weights outgrow the caches.
    pub fn panels(&self, wide: Wide) -> Option<(usize, usize, usize)> {
        let l = self.width(wide).lanes();
        let rows = self.rows();
        let whole = rows.checked_mul(self.n)?.checked_mul(4)?;
        (self.n.is_multiple_of(l) && i32::try_from(whole).is_ok()).then_some((rows, self.n, l))
    }

    /// One tile of `tt` pixels: every block of output channels.
    fn tile(&self, asm: &mut Asm, tt: usize, act: Option<&Tape>, panels: bool) -> R<()> {
        for t in 0..tt {
            asm.x().mov(PIXEL32[t], dword_ptr(r8 + (4 * t) as i32))?;
            asm.x().add(PIXEL[t], rdi)?;
        }
        let nv = vectors(asm.wide, tt);
        asm.channel_blocks(self.n, nv, |asm, nv, masked| {
            self.block(asm, tt, nv, masked, act, panels)
        })
    }

    /// `nv` vectors of output channels from r15 for the tile's `tt` pixels; the last
    /// vector only partly (the lane mask) when `masked`.
    fn block(
        &self,
        asm: &mut Asm,
        tt: usize,
        nv: usize,
        masked: bool,
        act: Option<&Tape>,
        panels: bool,
    ) -> R<()> {
        let (l, n) = (asm.wide.lanes(), self.n);
        let unroll = self.run.min(4);
        let sets = sets(asm.wide, tt * nv, nv + 1, unroll);
        let acc = |t: usize, j: usize| t * nv + j;
        let wreg = |j: usize| sets * tt * nv + j;
        let xreg = sets * tt * nv + nv;
        let part = |j: usize| masked && j + 1 == nv;
        // r13 walks the rows of the block's weights: a row is `step` bytes on.
        let (rows, step) = (self.rows(), if panels { l * 4 } else { n * 4 });
        if panels {
            asm.x().imul_3(r13, r15, disp(rows)?)?;
            asm.x().add(r13, rsi)?;
        } else {
            asm.x().lea(r13, qword_ptr(rsi + r15))?;
        }
        let weight = |u: usize, j: usize| -> R<M> {
            let col = if panels { j * rows * l * 4 } else { j * l * 4 };
            Ok(M::at(r13, disp(u * step + col)?))
        };
        // Bias first, then the taps in order: the runtime's order of the sums.
        for j in 0..nv {
            if self.bias {
                asm.load(acc(0, j), M::ix(rdx, r15, disp(j * l * 4)?), part(j))?;
            } else {
                asm.zero(acc(0, j))?;
            }
            for t in 1..tt {
                asm.copy(acc(t, j), acc(0, j))?;
            }
        }
        for r in tt * nv..sets * tt * nv {
            asm.zero(r)?;
        }
        let lines = (nv * l * 4).div_ceil(64);
        let trips = self.run / unroll;
        let rest = self.run % unroll;
        // One row of weights against every pixel's input: `u` rows into the run,
        // x at `x_off` bytes from r14, into the accumulators of set `u % sets`.
        let row = |asm: &mut Asm, u: usize, x_off: usize| -> R<()> {
            if panels {
                // A line of each stream as the rows reach a new one.
                if (u * step).is_multiple_of(64) {
                    for j in 0..nv {
                        let ahead = weight(PREFETCH_ROWS + u, j)?;
                        asm.prefetch(ahead)?;
                    }
                }
            } else {
                for line in 0..lines {
                    asm.prefetch(M::at(r13, disp((PREFETCH_ROWS + u) * n * 4 + line * 64)?))?;
                }
            }
            for j in 0..nv {
                asm.load(wreg(j), weight(u, j)?, part(j))?;
            }
            let set = (u % sets) * tt * nv;
            for (t, &p) in PIXEL.iter().enumerate().take(tt) {
                asm.bcast(xreg, M::ix(p, r14, disp(x_off + u * 4)?))?;
                for j in 0..nv {
                    asm.fma(set + acc(t, j), xreg, wreg(j))?;
                }
            }
            Ok(())
        };
        for &start in &self.runs {
            asm.repeat(trips, Ctl::Reg(r14, unroll * 4), |asm| {
                for u in 0..unroll {
                    row(asm, u, start)?;
                }
                asm.x().add(r13, disp(unroll * step)?)?;
                Ok(())
            })?;
            // r14 ends at the loop's end, or stays 0 where the body ran unlooped.
            let at = if trips >= 2 { trips * unroll * 4 } else { 0 };
            for u in 0..rest {
                row(asm, u, start + trips * unroll * 4 - at)?;
            }
            if rest > 0 {
                asm.x().add(r13, disp(rest * step)?)?;
            }
        }
        asm.fold_sets(sets, tt * nv)?;
        let mut outs = Vec::new();
        for t in 0..tt {
            for j in 0..nv {
                let at = M::ix(rcx, r15, disp(t * n * 4 + j * l * 4)?);
                outs.push((acc(t, j), at, part(j)));
            }
        }
        asm.store_all(act, &outs)?;
        Ok(())
    }
}
