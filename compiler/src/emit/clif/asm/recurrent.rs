//! One time step of a recurrent layer (simple, LSTM, GRU): `h U` over the gates' columns,
//! then the cell elementwise, in the same operations and order as the runtime's
//! `recurrent`. The step's Cranelift code keeps the time loop, the previous state's
//! copy and the mask's blend, and calls this for each step: the work of a step is
//! here.
//!
//! `h U` goes by blocks of unit vectors across every gate at once (the `i f c o`
//! columns of the same units), so a block keeps up to 13 (AVX2) or 28 (AVX-512)
//! accumulators in flight while `h` streams past, one broadcast for all of them; where
//! that is fewer than eight, rows take turns between sets of them.
//!
//! Registers: rdi the previous state (h, then c or `r h`; `h U` lies just before it),
//! rsi the step's input projections, rdx U, rcx the recurrent bias (or null), r8 the
//! state row the step writes, r9 the loop counters; r13 U's row, r14 the index along
//! `h` in bytes, r15 the first unit of a block in bytes.

use super::elementwise::Binary;
use super::{disp, sets, spare, Asm, Ctl, Listing, Refused, Wide, M, R};
use crate::emit::tape::Tape;
use iced_x86::code_asm::*;
use kerac::recurrent::{Cell, Recurrent};
use std::ops::Range;

/// Vectors of units the cell takes at once.
const GROUP: usize = 2;
/// Rows of U each pass of the product's loop takes.
const UNROLL: usize = 4;

/// A recurrent layer's step kernel.
pub(in crate::emit::clif) struct Step {
    p: Recurrent,
    act: Tape,
    rec_act: Tape,
}

/// The cell's work on some vectors of units, each `(bytes past r15, masked)`.
type Vectors = fn(&Step, &mut Asm, &[(i32, bool)]) -> R<()>;

/// Where a product's accumulators start.
#[derive(Clone, Copy)]
enum Init {
    /// The recurrent bias (rcx) where the layer has one, else zero.
    Bias(bool),
    /// The step's input projections (rsi): a GRU's candidate without `reset_after`.
    Input,
}

impl Step {
    /// The step kernel of `p`.
    pub fn new(p: &Recurrent) -> Option<Step> {
        if p.units == 0 {
            return None;
        }
        Some(Step {
            p: *p,
            act: Tape::trace(|x| p.act.eval_lanes(x)),
            rec_act: Tape::trace(|x| p.rec_act.eval_lanes(x)),
        })
    }

    /// The kernel `(prev, x, u, rb, row, counters)`, `bias` whether there is a recurrent
    /// bias: the cell on [`GROUP`] vectors of units at a time where the registers
    /// allow, else on one.
    pub fn assemble(&self, wide: Wide, bias: bool, counting: bool) -> R<Listing> {
        match self.listing(wide, bias, counting, GROUP) {
            Err(Refused::NoRoom) => self.listing(wide, bias, counting, 1),
            done => done,
        }
    }

    fn listing(&self, wide: Wide, bias: bool, counting: bool, group: usize) -> R<Listing> {
        let mut consts = super::act_constants(Some(&self.act));
        for c in super::act_constants(Some(&self.rec_act))
            .into_iter()
            .chain([1f32.to_bits()])
        {
            if !consts.contains(&c) {
                consts.push(c);
            }
        }
        let mut asm = Asm::new(wide, counting, consts)?;
        let units = self.p.units;
        if !units.is_multiple_of(wide.lanes()) {
            asm.set_mask(units % wide.lanes())?;
        }
        match self.p.cell {
            Cell::Gru { reset_after: false } => {
                // The candidate's product waits for the reset gate: r h goes after h.
                self.product(&mut asm, 0..2, 0, Init::Bias(bias))?;
                self.units(&mut asm, group, Self::reset)?;
                self.product(&mut asm, 2..3, disp(4 * units)?, Init::Input)?;
            }
            _ => self.product(&mut asm, 0..self.p.gates(), 0, Init::Bias(bias))?,
        }
        self.units(&mut asm, group, Self::cell)?;
        asm.finish()
    }

    /// Bytes from the previous state back to `h U`.
    fn hu(&self) -> R<i32> {
        disp(4 * self.p.gates() * self.p.units).map(|d| -d)
    }

    /// `h U` for the columns of `gates`, `h` at `h` bytes into the previous state:
    /// blocks of unit vectors, each across the gates, each accumulator from `init`
    /// with one FMA per row of U.
    fn product(&self, asm: &mut Asm, gates: Range<usize>, h: i32, init: Init) -> R<()> {
        let (units, width) = (self.p.units, self.p.gates() * self.p.units);
        let l = asm.wide.lanes();
        // AVX2 keeps a register for the broadcast and one for a masked tail's load.
        let most = match asm.wide {
            Wide::Avx2 => 13,
            Wide::Avx512 => 28,
        } / gates.len();
        let vecs = units.div_ceil(l);
        let nv = vecs.div_ceil(vecs.div_ceil(most.max(1)));
        let hu = self.hu()?;
        let row = 4 * width;
        asm.channel_blocks(units, nv, |asm, nv, masked| {
            let part = |v: usize| masked && v + 1 == nv;
            let accs = gates.len() * nv;
            let unroll = UNROLL.min(units);
            let sets = sets(asm.wide, accs, 2, unroll);
            let acc = |g: usize, v: usize| (g - gates.start) * nv + v;
            let (bc, tmp) = (sets * accs, sets * accs + 1);
            let col = |g: usize, v: usize| disp(4 * (g * units + v * l));
            for g in gates.clone() {
                for v in 0..nv {
                    match init {
                        Init::Bias(true) => {
                            asm.load(acc(g, v), M::ix(rcx, r15, col(g, v)?), part(v))?
                        }
                        Init::Bias(false) => asm.zero(acc(g, v))?,
                        Init::Input => asm.load(acc(g, v), M::ix(rsi, r15, col(g, v)?), part(v))?,
                    }
                }
            }
            for r in accs..sets * accs {
                asm.zero(r)?;
            }
            asm.x().lea(r13, qword_ptr(rdx + r15))?;
            let rows = |asm: &mut Asm, n: usize, at: &dyn Fn(usize) -> M| -> R<()> {
                for t in 0..n {
                    asm.bcast(bc, at(t))?;
                    for g in gates.clone() {
                        for v in 0..nv {
                            let w = M::at(r13, disp(t * row)? + col(g, v)?);
                            let a = (t % sets) * accs + acc(g, v);
                            asm.fma_mem(a, bc, w, part(v), tmp)?;
                        }
                    }
                }
                asm.x().add(r13, disp(n * row)?)?;
                Ok(())
            };
            asm.repeat(units / unroll, Ctl::Reg(r14, 4 * unroll), |asm| {
                rows(asm, unroll, &|t| M::ix(rdi, r14, h + 4 * t as i32))
            })?;
            // The rows left: r13 has moved on past the looped ones.
            let done = units - units % unroll;
            rows(asm, units % unroll, &|t| {
                M::at(rdi, h + 4 * (done + t) as i32)
            })?;
            asm.fold_sets(sets, accs)?;
            for g in gates.clone() {
                for v in 0..nv {
                    asm.store(M::ix(rdi, r15, hu + col(g, v)?), acc(g, v), part(v))?;
                }
            }
            Ok(())
        })
    }

    /// Runs `one(asm, vectors)` over the units, `group` vectors of units at a time so
    /// that their chains overlap: whole groups in a loop stepping r15, then the whole
    /// vectors left and the masked tail. Each vector is `(at, masked)`: `at` bytes past
    /// r15.
    fn units(&self, asm: &mut Asm, group: usize, one: Vectors) -> R<()> {
        let (units, l) = (self.p.units, asm.wide.lanes());
        let whole = units / l;
        let trips = whole / group;
        let vs: Vec<(i32, bool)> = (0..group).map(|v| (4 * (v * l) as i32, false)).collect();
        asm.repeat(trips, Ctl::Reg(r15, 4 * l * group), |asm| {
            one(self, asm, &vs)
        })?;
        // r15 is past the loop's vectors where it looped, else at the first.
        let origin = if trips >= 2 { trips * group } else { 0 };
        let mut rest = Vec::new();
        for v in trips * group..units.div_ceil(l) {
            rest.push((disp(4 * (v - origin) * l)?, v == whole));
        }
        if !rest.is_empty() {
            one(self, asm, &rest)?;
        }
        Ok(())
    }

    /// Gate `g`'s pre-activation, `h U + x`, for each vector, into registers not in
    /// `live`; adds them to `live`.
    fn gates(
        &self,
        asm: &mut Asm,
        g: usize,
        vs: &[(i32, bool)],
        live: &mut Vec<usize>,
    ) -> R<Vec<usize>> {
        let mut out = Vec::new();
        for &(at, masked) in vs {
            let col = disp(4 * g * self.p.units)? + at;
            let r = free(asm.wide, live, &[])?;
            let t = free(asm.wide, live, &[r])?;
            asm.load(r, M::ix(rdi, r15, self.hu()? + col), masked)?;
            asm.load(t, M::ix(rsi, r15, col), masked)?;
            asm.binary(Binary::Add, r, r, t)?;
            live.push(r);
            out.push(r);
        }
        Ok(out)
    }

    /// A vector register not in `live`, loaded from `m`; added to `live`.
    fn load(asm: &mut Asm, m: M, masked: bool, live: &mut Vec<usize>) -> R<usize> {
        let r = free(asm.wide, live, &[])?;
        asm.load(r, m, masked)?;
        live.push(r);
        Ok(r)
    }

    /// Each `(tape, register)` of `work` at once, keeping `live`: the registers of the
    /// results, which replace their inputs in `live`.
    fn acts(asm: &mut Asm, work: &[(&Tape, usize)], live: &mut Vec<usize>) -> R<Vec<usize>> {
        let out = asm.acts(work, &spare(asm.wide, live))?;
        live.retain(|r| !work.iter().any(|w| w.1 == *r));
        live.extend(&out);
        Ok(out)
    }

    /// A GRU without `reset_after`: `r h` after `h` in the previous state.
    fn reset(&self, asm: &mut Asm, vs: &[(i32, bool)]) -> R<()> {
        let units = disp(4 * self.p.units)?;
        let mut live = Vec::new();
        let r = self.gates(asm, 1, vs, &mut live)?;
        let work: Vec<_> = r.iter().map(|&r| (&self.rec_act, r)).collect();
        let r = Self::acts(asm, &work, &mut live)?;
        for (&(at, masked), &r) in vs.iter().zip(&r) {
            let h = Self::load(asm, M::ix(rdi, r15, at), masked, &mut live)?;
            asm.binary(Binary::Mul, r, r, h)?;
            asm.store(M::ix(rdi, r15, units + at), r, masked)?;
        }
        Ok(())
    }

    /// The cell on vectors of units: the new state into the row.
    fn cell(&self, asm: &mut Asm, vs: &[(i32, bool)]) -> R<()> {
        let units = disp(4 * self.p.units)?;
        let (act, rec) = (&self.act, &self.rec_act);
        let row = |at: i32| M::ix(r8, r15, at);
        let mut live = Vec::new();
        let with =
            |tape, rs: &[usize]| -> Vec<(&Tape, usize)> { rs.iter().map(|&r| (tape, r)).collect() };
        match self.p.cell {
            Cell::Simple => {
                let v = self.gates(asm, 0, vs, &mut live)?;
                let v = Self::acts(asm, &with(act, &v), &mut live)?;
                for (&(at, masked), &v) in vs.iter().zip(&v) {
                    asm.store(row(at), v, masked)?;
                }
            }
            Cell::Lstm => {
                // The four gates' activations at once, their chains overlapping.
                let mut work = Vec::new();
                for (g, tape) in [rec, rec, act, rec].into_iter().enumerate() {
                    work.extend(with(tape, &self.gates(asm, g, vs, &mut live)?));
                }
                let gates = Self::acts(asm, &work, &mut live)?;
                let n = vs.len();
                let mut c = Vec::new();
                for (k, &(at, masked)) in vs.iter().enumerate() {
                    let (i, f, g) = (gates[k], gates[n + k], gates[2 * n + k]);
                    // c = f c_prev + i g, unfused as in the runtime.
                    let cp = Self::load(asm, M::ix(rdi, r15, units + at), masked, &mut live)?;
                    asm.binary(Binary::Mul, f, f, cp)?;
                    asm.binary(Binary::Mul, g, i, g)?;
                    asm.binary(Binary::Add, f, f, g)?;
                    asm.store(M::ix(r8, r15, units + at), f, masked)?;
                    live.retain(|r| ![i, g, cp].contains(r));
                    c.push(f);
                }
                // h = act(c) o.
                let h = Self::acts(asm, &with(act, &c), &mut live)?;
                for (k, &(at, masked)) in vs.iter().enumerate() {
                    asm.binary(Binary::Mul, h[k], h[k], gates[3 * n + k])?;
                    asm.store(row(at), h[k], masked)?;
                }
            }
            Cell::Gru { reset_after } => {
                let col = disp(8 * self.p.units)?;
                let z = self.gates(asm, 0, vs, &mut live)?;
                let mut work = with(rec, &z);
                let n = vs.len();
                let (z, hh) = if reset_after {
                    // x_h + r (h U)_h.
                    let r = self.gates(asm, 1, vs, &mut live)?;
                    work.extend(with(rec, &r));
                    let zr = Self::acts(asm, &work, &mut live)?;
                    let mut hh = Vec::new();
                    for (k, &(at, masked)) in vs.iter().enumerate() {
                        let r = zr[n + k];
                        let v = self.hu()? + col + at;
                        let v = Self::load(asm, M::ix(rdi, r15, v), masked, &mut live)?;
                        asm.binary(Binary::Mul, v, r, v)?;
                        let x = Self::load(asm, M::ix(rsi, r15, col + at), masked, &mut live)?;
                        asm.binary(Binary::Add, v, x, v)?;
                        live.retain(|q| ![r, x].contains(q));
                        hh.push(v);
                    }
                    (
                        zr[..n].to_vec(),
                        Self::acts(asm, &with(act, &hh), &mut live)?,
                    )
                } else {
                    // The candidate's product already started from x_h: both
                    // activations at once.
                    let mut hh = Vec::new();
                    for &(at, masked) in vs {
                        let v = M::ix(rdi, r15, self.hu()? + col + at);
                        hh.push(Self::load(asm, v, masked, &mut live)?);
                    }
                    work.extend(with(act, &hh));
                    let mut zh = Self::acts(asm, &work, &mut live)?;
                    let hh = zh.split_off(n);
                    (zh, hh)
                };
                for (k, &(at, masked)) in vs.iter().enumerate() {
                    let (z, hh) = (z[k], hh[k]);
                    // h = z h_prev + (1 - z) hh, unfused as in the runtime.
                    let hp = Self::load(asm, M::ix(rdi, r15, at), masked, &mut live)?;
                    asm.binary(Binary::Mul, hp, z, hp)?;
                    let one = asm.constant(1f32.to_bits())?;
                    let omz = Self::load(asm, one, false, &mut live)?;
                    asm.binary(Binary::Sub, omz, omz, z)?;
                    asm.binary(Binary::Mul, omz, omz, hh)?;
                    asm.binary(Binary::Add, hp, hp, omz)?;
                    asm.store(row(at), hp, masked)?;
                    live.retain(|q| ![hh, z, hp, omz].contains(q));
                }
            }
        }
        Ok(())
    }
}

/// The first vector register in neither `live` nor `also`; [`Refused::NoRoom`] where
/// there is none (the cell then takes fewer vectors at once).
fn free(wide: Wide, live: &[usize], also: &[usize]) -> R<usize> {
    let busy: Vec<usize> = live.iter().chain(also).copied().collect();
    spare(wide, &busy).first().copied().ok_or(Refused::NoRoom)
}
