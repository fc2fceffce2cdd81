//! Zero padding and cropping (a resampling whose axes only pad or crop): the padding
//! layers, and the plan's own padding before a padded convolution. Each output row is
//! zeros, a run of the input row, zeros; rows outside the input are zeros whole, and
//! consecutive ones are one run. Memory-bound, so the gain is the width of each load
//! and store: runs go as whole vectors and one masked tail.
//!
//! Registers: x in rdi (then r10, at the input row), y in rcx (then r11, moving on as
//! it is written), r9 the loop counters, r14 the index along a run in bytes; register
//! 0 holds zeros.

use super::{disp, Asm, Ctl, Listing, Wide, M, R};
use iced_x86::code_asm::*;
use kerac::shape::{AxisMap, Resample};

/// Where an axis's output reads its input: `zeros` positions of zeros, `take` from
/// input position `from`, then zeros to `len`.
#[derive(Clone, Copy)]
struct Span {
    zeros: usize,
    take: usize,
    from: usize,
    len: usize,
}

impl Span {
    fn of(a: &AxisMap) -> Option<Span> {
        match *a {
            AxisMap::Pad { before, input, len } => Some(Span {
                zeros: before.min(len),
                take: input.min(len.saturating_sub(before)),
                from: 0,
                len,
            }),
            AxisMap::Crop { before, len } => Some(Span {
                zeros: 0,
                take: len,
                from: before,
                len,
            }),
            _ => None,
        }
    }

    fn after(&self) -> usize {
        self.len - self.zeros - self.take
    }
}

/// A pad or crop of `batch` inputs of `input` (depth, height, width) x `channels`.
pub(in crate::emit::clif) struct Pad {
    p: Resample,
    spans: [Span; 3],
}

impl Pad {
    /// Only resamplings that pad or crop on every axis, and whose sizes fit a
    /// displacement.
    pub fn new(p: &Resample) -> Option<Pad> {
        let spans = [
            Span::of(&p.axes[0])?,
            Span::of(&p.axes[1])?,
            Span::of(&p.axes[2])?,
        ];
        let input: usize = p
            .input
            .iter()
            .try_fold(p.channels, |n, &d| n.checked_mul(d))?;
        let output = spans
            .iter()
            .try_fold(p.channels, |n, s| n.checked_mul(s.len))?;
        // A crop's run lies inside the input (the plan checked it): kept as a fact here.
        let inside = spans
            .iter()
            .zip(p.input)
            .all(|(s, i)| s.from.checked_add(s.take).is_some_and(|e| e <= i));
        let near = |n: usize| n.checked_mul(4).is_some_and(|b| b < 1 << 30);
        (inside && near(input) && near(output)).then_some(Pad { p: *p, spans })
    }

    /// The kernel `(x, -, -, y, -, counters)`.
    pub fn assemble(&self, wide: Wide, counting: bool) -> R<Listing> {
        let mut asm = Asm::new(wide, counting, Vec::new())?;
        let [sd, sh, sw] = self.spans;
        let [_, ih, iw] = self.p.input;
        let c = self.p.channels;
        let row = sw.len * c;
        let in_row = iw * c;
        let sample = self.p.input.iter().product::<usize>() * c;
        asm.zero(0)?;
        asm.x().mov(r10, rdi)?;
        asm.x().mov(r11, rcx)?;
        asm.repeat(self.p.batch, Ctl::Stack(8), |asm| {
            // The first input row the sample reads.
            let first = ((sd.from * ih) + sh.from) * in_row + sw.from * c;
            asm.x().lea(r10, qword_ptr(rdi + disp(first * 4)?))?;
            run(asm, sd.zeros * sh.len * row, false)?;
            asm.repeat(sd.take, Ctl::Stack(16), |asm| {
                run(asm, sh.zeros * row, false)?;
                asm.repeat(sh.take, Ctl::Stack(24), |asm| {
                    run(asm, sw.zeros * c, false)?;
                    run(asm, sw.take * c, true)?;
                    run(asm, sw.after() * c, false)?;
                    asm.x().add(r10, disp(in_row * 4)?)?;
                    Ok(())
                })?;
                run(asm, sh.after() * row, false)?;
                // On to the next input depth's first row.
                asm.x().add(r10, disp((ih - sh.take) * in_row * 4)?)?;
                Ok(())
            })?;
            run(asm, sd.after() * sh.len * row, false)?;
            asm.x().add(rdi, disp(sample * 4)?)?;
            Ok(())
        })?;
        asm.finish()
    }
}

/// `n` floats at r11, zeros or (`copy`) the floats at r10; r11 moves past them.
fn run(asm: &mut Asm, n: usize, copy: bool) -> R<()> {
    let l = asm.wide.lanes();
    let one = |asm: &mut Asm, at: i32, masked: bool| -> R<()> {
        let r = if copy {
            asm.load(1, M::ix(r10, r14, at), masked)?;
            1
        } else {
            0
        };
        asm.store(M::ix(r11, r14, at), r, masked)
    };
    let trips = n / l;
    asm.repeat(trips, Ctl::Reg(r14, l * 4), |asm| one(asm, 0, false))?;
    if !n.is_multiple_of(l) {
        asm.set_mask(n % l)?;
        let at = if trips >= 2 { 0 } else { trips * l * 4 };
        one(asm, disp(at)?, true)?;
    }
    if n > 0 {
        asm.x().add(r11, disp(n * 4)?)?;
    }
    Ok(())
}
