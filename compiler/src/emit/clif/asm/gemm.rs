//! Dense layers and single-group convolutions whose taps all lie inside their input
//! (every padded convolution, once the plan has padded its input): an implicit matrix
//! product. Output pixels go in tiles of six, in order across rows, images and the
//! batch, so small maps share each weight load as wide ones do; each tile keeps
//! `6 x NV` vectors of output channels in registers while the taps stream past, as the
//! runtime's `conv::valid` does. A table in the object holds where each pixel's window
//! starts in the input, so the listing needs no division and no branch on position.
//!
//! Products of one vector of output channels or less go in row tiles instead, as the
//! runtime's `ROWS` route does: up to 12 (AVX2) or 16 (AVX-512) pixels of one output
//! row, a constant step apart in x, so one base register reaches them all and the
//! tile keeps enough accumulators to hide the FMA latency; on AVX-512 each FMA takes
//! its input as a broadcast memory operand. A row's last tile steps back to end at the
//! row's end, and stores the pixels it shares with the tile before it again, with the
//! same bits. The table then holds each tile's start in x and in y.
//!
//! Registers: rdi x, rsi w, rdx bias, rcx y (the tile's first pixel; y in row tiles),
//! r8 the table (the tile's first entry), r9 the loop counters; rax rbx rbp r10 r11 r12
//! the tile's pixels in x (row tiles: rax the first pixel, rbx the tile in y), r13 the
//! weight row, r14 the index along a run of taps, r15 the first output channel of a
//! block, in bytes.

use super::{disp, fits, sets, spare, vectors, Asm, Ctl, Listing, Refused, Wide, M, R};
use crate::emit::tape::Tape;
use iced_x86::code_asm::*;
use kerac::Act;

/// Output pixels per tile.
const TILE: usize = 6;
/// Output pixels of the widest row tile at each width: with one vector of channels, the
/// accumulators, a weight vector and a broadcast input (AVX2) within the registers.
const ROW_TILE_AVX2: usize = 12;
const ROW_TILE_AVX512: usize = 16;
/// Narrower row tiles are for rows they divide better, down to this.
const ROW_TILE_MIN: usize = 8;
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
    /// The output pixels as rows of consecutive pixels a constant step apart in x.
    pub row: Option<Row>,
}

/// Output pixels in rows of `len`, each `step` bytes on in x from the one before.
#[derive(Clone, Copy)]
pub(in crate::emit::clif) struct Row {
    pub len: usize,
    pub step: usize,
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
            row: None,
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
        // A 1x1 convolution of stride 1 reads its input as one row of every pixel.
        let pointwise = windows.iter().all(|w| w.kernel == 1 && w.stride == 1);
        let row = Row {
            len: if pointwise { pixels } else { ww.output },
            step: ww.stride.checked_mul(cin)?.checked_mul(4)?,
        };
        Gemm {
            pixels,
            n: p.cout,
            starts,
            runs,
            run,
            bias,
            act: p.act,
            row: Some(row),
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
        let tile = row.and_then(|r| r.checked_mul(TILE.max(ROW_TILE_AVX512)));
        let y = row.and_then(|r| r.checked_mul(self.pixels));
        if self.pixels == 0 || self.n == 0 || self.run == 0 || far(reach) || far(wrows) || far(tile)
        {
            return None;
        }
        // Row tiles reach their last pixel by displacement, and find themselves in y
        // through the table.
        let row_reach = |r: &Row| {
            r.step
                .checked_mul(ROW_TILE_AVX512)
                .and_then(|b| b.checked_add(reach?))
        };
        if self
            .row
            .as_ref()
            .is_some_and(|r| far(row_reach(r)) || far(y))
        {
            return Some(Gemm { row: None, ..self });
        }
        Some(self)
    }

    /// The width the product runs at on a `wide` machine, and its row tile's pixels
    /// where it runs in row tiles. Products with 16 outputs or fewer that cannot take
    /// row tiles run at 256 bits on AVX-512 too: one 512-bit vector would leave a tile
    /// of six pixels six accumulators, where two 256-bit ones keep twelve.
    fn plan(&self, wide: Wide) -> (Wide, Option<usize>) {
        match wide {
            Wide::Avx512 if self.n > 16 => (Wide::Avx512, None),
            Wide::Avx512 if self.n > 8 => match self.row_tile(ROW_TILE_AVX512) {
                Some(t) => (Wide::Avx512, Some(t)),
                None => (Wide::Avx2, None),
            },
            _ if self.n > 8 => (Wide::Avx2, None),
            _ => (Wide::Avx2, self.row_tile(ROW_TILE_AVX2)),
        }
    }

    /// The row tile, at most `max` pixels, that computes the fewest pixels twice (the
    /// widest of equals), where that is at most an eighth more than the row.
    fn row_tile(&self, max: usize) -> Option<usize> {
        let len = self.row?.len;
        let cost = |t: usize| len.div_ceil(t) * t;
        let t = (ROW_TILE_MIN..=max.min(len))
            .rev()
            .min_by_key(|&t| cost(t))?;
        (cost(t) * 8 <= len * 9).then_some(t)
    }

    /// The table the kernel reads on a `wide` machine: each pixel's window start in x,
    /// or with row tiles each tile's first pixel's, then its first output, in bytes.
    pub fn table(&self, wide: Wide) -> Vec<u32> {
        let (Some(t), Some(row)) = (self.plan(wide).1, self.row) else {
            return self.starts.clone();
        };
        let mut table = Vec::new();
        for r in (0..self.pixels).step_by(row.len) {
            for first in (0..row.len).step_by(t) {
                let p = r + first.min(row.len - t);
                // `checked` kept row tiles only where every output offset fits.
                table.extend([self.starts[p], (p * self.n * 4) as u32]);
            }
        }
        table
    }

    /// The kernel `(x, w, bias, y, table, counters)`, its table [`Gemm::table`]; with
    /// `panels`, w is in the layout [`Gemm::panels`] gives.
    pub fn assemble(&self, wide: Wide, counting: bool, panels: bool) -> R<Listing> {
        let rows = self.plan(wide).1;
        let wide = self.plan(wide).0;
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
        if let Some(t) = rows {
            let tiles = self.table(wide).len() / 2;
            asm.repeat(tiles, Ctl::Stack(0), |asm| {
                self.tile(asm, t, act, panels, true)?;
                asm.x().add(r8, 8)?;
                Ok(())
            })?;
            return asm.finish();
        }
        asm.repeat(self.pixels / TILE, Ctl::Stack(0), |asm| {
            self.tile(asm, TILE, act, panels, false)?;
            asm.x().add(r8, (TILE * 4) as i32)?;
            asm.x().add(rcx, disp(TILE * self.n * 4)?)?;
            Ok(())
        })?;
        let rest = self.pixels % TILE;
        if rest > 0 {
            self.tile(&mut asm, rest, act, panels, false)?;
        }
        asm.finish()
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
        let l = self.plan(wide).0.lanes();
        let rows = self.rows();
        let whole = rows.checked_mul(self.n)?.checked_mul(4)?;
        (self.n.is_multiple_of(l) && i32::try_from(whole).is_ok()).then_some((rows, self.n, l))
    }

    /// One tile of `tt` pixels, a row tile where `rows`: every block of output channels.
    fn tile(
        &self,
        asm: &mut Asm,
        tt: usize,
        act: Option<&Tape>,
        panels: bool,
        rows: bool,
    ) -> R<()> {
        if rows {
            asm.x().mov(eax, dword_ptr(r8))?;
            asm.x().add(rax, rdi)?;
            asm.x().mov(ebx, dword_ptr(r8 + 4))?;
            asm.x().add(rbx, rcx)?;
        } else {
            for t in 0..tt {
                asm.x().mov(PIXEL32[t], dword_ptr(r8 + (4 * t) as i32))?;
                asm.x().add(PIXEL[t], rdi)?;
            }
        }
        let nv = if rows { 1 } else { vectors(asm.wide, tt) };
        asm.channel_blocks(self.n, nv, |asm, nv, masked| {
            self.block(asm, tt, nv, masked, act, panels, rows)
        })
    }

    /// `nv` vectors of output channels from r15 for the tile's `tt` pixels; the last
    /// vector only partly (the lane mask) when `masked`.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        asm: &mut Asm,
        tt: usize,
        nv: usize,
        masked: bool,
        act: Option<&Tape>,
        panels: bool,
        row_tile: bool,
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
            for t in 0..tt {
                let x = match (row_tile, self.row) {
                    (true, Some(row)) => M::ix(rax, r14, disp(t * row.step + x_off + u * 4)?),
                    // Tiles from the table have a register per pixel.
                    _ => M::ix(
                        *PIXEL.get(t).ok_or(Refused::NoRoom)?,
                        r14,
                        disp(x_off + u * 4)?,
                    ),
                };
                if asm.wide == Wide::Avx512 && nv == 1 {
                    asm.fma_bcast(set + acc(t, 0), wreg(0), x, xreg)?;
                    continue;
                }
                asm.bcast(xreg, x)?;
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
        let y = if row_tile { rbx } else { rcx };
        for t in 0..tt {
            for j in 0..nv {
                let at = M::ix(y, r15, disp(t * n * 4 + j * l * 4)?);
                outs.push((acc(t, j), at, part(j)));
            }
        }
        asm.store_all(act, &outs)?;
        Ok(())
    }
}
