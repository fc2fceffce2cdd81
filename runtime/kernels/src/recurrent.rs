//! Recurrent layers: the recurrence of a SimpleRNN, LSTM or GRU cell over a sequence.
//! The input projections `x W + b` of every step are one dense call before this one;
//! this kernel adds `h U` step by step and applies the cell's gates.
//!
//! Gate order is Keras's: LSTM `i, f, c, o`; GRU `z, r, h`.

use crate::act::Act;
use crate::dense::{dense_in, Dense};
use crate::isa::Isa;
use crate::lanes::{Lanes, S};
use crate::simd::{axpy, part, part_mut};

/// Which cell runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// `h = act(x W + h U + b)`.
    Simple,
    /// Long short-term memory: state `h` and `c`.
    Lstm,
    /// Gated recurrent unit; `reset_after` applies the reset gate after `U` (Keras's
    /// default, with a recurrent bias) or before it.
    Gru {
        /// Reset after the recurrent matrix product.
        reset_after: bool,
    },
}

/// A recurrent layer's recurrence with fixed sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recurrent {
    /// The cell.
    pub cell: Cell,
    /// Sequences per call.
    pub batch: usize,
    /// Time steps.
    pub steps: usize,
    /// Units (the state size).
    pub units: usize,
    /// `activation`.
    pub act: Act,
    /// `recurrent_activation` (the gates).
    pub rec_act: Act,
    /// Consume the sequence from its last step to its first (`go_backwards`).
    pub backwards: bool,
    /// Store each step's state at the row of the input step it consumed, rather than
    /// in processing order (Bidirectional's backward half).
    pub input_order: bool,
}

impl Recurrent {
    /// Gates: blocks of `units` columns in `W` and `U`.
    pub const fn gates(&self) -> usize {
        match self.cell {
            Cell::Simple => 1,
            Cell::Lstm => 4,
            Cell::Gru { .. } => 3,
        }
    }

    /// Floats of state per step: `h`, then `c` for an LSTM.
    pub const fn state(&self) -> usize {
        match self.cell {
            Cell::Lstm => 2 * self.units,
            _ => self.units,
        }
    }

    /// Floats of scratch after the states: `h U`, and a copy of the previous state.
    pub const fn scratch(&self) -> usize {
        self.gates() * self.units + 2 * self.units
    }

    /// Floats of the output buffer: every step's state, row by row, then the scratch.
    pub const fn out_len(&self) -> usize {
        self.batch * self.steps * self.state() + self.scratch()
    }

    /// The row step `s` (in processing order) writes, and the input step it reads.
    #[inline(always)]
    pub const fn rows(&self, s: usize) -> (usize, usize) {
        let input = if self.backwards {
            self.steps - 1 - s
        } else {
            s
        };
        (if self.input_order { input } else { s }, input)
    }
}

/// Runs the recurrence. `xp` is `[batch, steps, gates * units]` (the input projections,
/// bias included), `u` is `[units, gates * units]`, `rb` the recurrent bias of a
/// `reset_after` GRU (`[gates * units]`), `h0` and `c0` the initial states
/// (`[batch, units]`, zeros when absent), `mask` which steps count (`[batch, steps]`,
/// nonzero for a step that counts; at the others the state carries over, as Keras
/// does with a mask), and `y` receives [`Recurrent::out_len`] floats:
/// `[batch, steps, state]`, then scratch.
#[allow(clippy::too_many_arguments)]
pub fn recurrent<I: Isa>(
    isa: I,
    p: &Recurrent,
    xp: &[f32],
    u: &[f32],
    rb: Option<&[f32]>,
    h0: Option<&[f32]>,
    c0: Option<&[f32]>,
    mask: Option<&[f32]>,
    y: &mut [f32],
) {
    isa.vectorize(
        #[inline(always)]
        || recurrent_in::<I>(isa, p, xp, u, rb, h0, c0, mask, y),
    );
}

/// [`recurrent`] for code already inside `I::vectorize`: generated code runs all its steps
/// inside one, so that each step's constants reach the inlined loops.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn recurrent_in<I: Isa>(
    isa: I,
    p: &Recurrent,
    xp: &[f32],
    u: &[f32],
    rb: Option<&[f32]>,
    h0: Option<&[f32]>,
    c0: Option<&[f32]>,
    mask: Option<&[f32]>,
    y: &mut [f32],
) {
    let (units, gates, state) = (p.units, p.gates(), p.state());
    let width = gates * units;
    let states = p.batch * p.steps * state;
    if xp.len() < p.batch * p.steps * width
        || u.len() < units * width
        || y.len() < p.out_len()
        || rb.is_some_and(|b| b.len() < width)
        || h0.is_some_and(|h| h.len() < p.batch * units)
        || c0.is_some_and(|c| c.len() < p.batch * units)
        || mask.is_some_and(|m| m.len() < p.batch * p.steps)
        || p.steps == 0
    {
        return;
    }
    let Some((rows, scratch)) = y.split_at_mut_checked(states) else {
        return;
    };
    let Some((hu, prev)) = scratch.split_at_mut_checked(width) else {
        return;
    };
    // SAFETY (every `part` and `part_mut` below): the lengths of xp, u, rb, h0, c0 and
    // y were checked above against batch, steps, units and gates; every range below
    // lies inside them.
    for b in 0..p.batch {
        for s in 0..p.steps {
            let (row, input) = p.rows(s);
            // The previous state: the last row written, or the initial state.
            let prev_state = unsafe { part_mut(prev, 0, 2 * units) };
            let Some((h_prev, c_prev)) = prev_state.split_at_mut_checked(units) else {
                return;
            };
            if s == 0 {
                for (init, v) in [(h0, &mut *h_prev), (c0, &mut *c_prev)] {
                    match init {
                        Some(h) => {
                            for (d, &x) in v.iter_mut().zip(unsafe { part(h, b * units, units) }) {
                                *d = x;
                            }
                        }
                        None => v.fill(0.0),
                    }
                }
            } else {
                let (last, _) = p.rows(s - 1);
                let from = unsafe { part(rows, (b * p.steps + last) * state, state) };
                for (v, &f) in h_prev.iter_mut().chain(c_prev.iter_mut()).zip(from) {
                    *v = f;
                }
            }
            // h U (+ the recurrent bias): the dense kernel's register-blocked row where
            // every column takes part.
            let recurrent_cols = match p.cell {
                // The candidate's product waits for the reset gate.
                Cell::Gru { reset_after: false } => 2 * units,
                _ => width,
            };
            if recurrent_cols == width {
                let d = Dense {
                    rows: 1,
                    k: units,
                    n: width,
                    act: Act::Linear,
                };
                dense_in::<I>(isa, &d, h_prev, u, rb, hu);
            } else {
                match rb {
                    Some(rb) => {
                        for (d, &x) in hu.iter_mut().zip(unsafe { part(rb, 0, width) }) {
                            *d = x;
                        }
                    }
                    None => hu.fill(0.0),
                }
                for (k, &hk) in h_prev.iter().enumerate() {
                    let ur = unsafe { part(u, k * width, recurrent_cols) };
                    axpy::<I>(unsafe { part_mut(hu, 0, recurrent_cols) }, hk, ur);
                }
            }
            let x = unsafe { part(xp, (b * p.steps + input) * width, width) };
            let out = unsafe { part_mut(rows, (b * p.steps + row) * state, state) };
            let gate = |g: usize| unsafe { part(x, g * units, units) };
            match p.cell {
                Cell::Simple => {
                    for ((o, &xv), &hv) in out.iter_mut().zip(x).zip(hu.iter()) {
                        *o = xv + hv;
                    }
                    p.act.apply(isa, out);
                }
                Cell::Lstm => {
                    for (hv, &xv) in hu.iter_mut().zip(x) {
                        *hv += xv;
                    }
                    let ifg = unsafe { part_mut(hu, 0, 2 * units) };
                    p.rec_act.apply(isa, ifg);
                    p.act.apply(isa, unsafe { part_mut(hu, 2 * units, units) });
                    p.rec_act
                        .apply(isa, unsafe { part_mut(hu, 3 * units, units) });
                    let (i, f, g, o) = unsafe {
                        (
                            part(hu, 0, units),
                            part(hu, units, units),
                            part(hu, 2 * units, units),
                            part(hu, 3 * units, units),
                        )
                    };
                    let Some((h, c)) = out.split_at_mut_checked(units) else {
                        return;
                    };
                    for (((((cv, hv), &cp), &iv), &fv), &gv) in c
                        .iter_mut()
                        .zip(h.iter_mut())
                        .zip(c_prev.iter())
                        .zip(i)
                        .zip(f)
                        .zip(g)
                    {
                        *cv = fv * cp + iv * gv;
                        *hv = *cv;
                    }
                    p.act.apply(isa, h);
                    for (hv, &ov) in h.iter_mut().zip(o) {
                        *hv *= ov;
                    }
                }
                Cell::Gru { reset_after } => {
                    for (v, &xv) in unsafe { part_mut(hu, 0, 2 * units) }.iter_mut().zip(x) {
                        *v += xv;
                    }
                    p.rec_act.apply(isa, unsafe { part_mut(hu, 0, 2 * units) });
                    let Some((zr, hh)) = hu.split_at_mut_checked(2 * units) else {
                        return;
                    };
                    let Some((z, r)) = zr.split_at_checked(units) else {
                        return;
                    };
                    if reset_after {
                        for ((v, &xv), &rv) in hh.iter_mut().zip(gate(2)).zip(r) {
                            *v = xv + rv * *v;
                        }
                    } else {
                        // (r * h) U_h, with `r * h` in `c_prev`'s space (a GRU has no c).
                        for ((v, &rv), &hv) in c_prev.iter_mut().zip(r).zip(h_prev.iter()) {
                            *v = rv * hv;
                        }
                        for (v, &xv) in hh.iter_mut().zip(gate(2)) {
                            *v = xv;
                        }
                        for (k, &rk) in c_prev.iter().enumerate() {
                            let ur = unsafe { part(u, k * width + 2 * units, units) };
                            axpy::<I>(hh, rk, ur);
                        }
                    }
                    p.act.apply(isa, hh);
                    for (((o, &zv), &hp), &hv) in
                        out.iter_mut().zip(z).zip(h_prev.iter()).zip(hh.iter())
                    {
                        *o = zv * hp + (1.0 - zv) * hv;
                    }
                }
            }
            // A masked step keeps the previous state, bit for bit, by a blend.
            if let Some(mask) = mask {
                let counts = unsafe { *mask.get_unchecked(b * p.steps + input) } != 0.0;
                let keep = S(f32::from_bits((counts as u32).wrapping_neg()));
                for (o, &prev) in out.iter_mut().zip(h_prev.iter().chain(c_prev.iter())) {
                    *o = S::select(keep, S(*o), S(prev)).0;
                }
            }
        }
    }
}
