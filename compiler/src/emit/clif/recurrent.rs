//! `kerac::recurrent`: the cell over every step, gates in register-blocked passes; on
//! x86-64 v3 and v4 each step's product and cell are an assembled kernel (`asm`).

use super::fx::{Addr, Fx};
use super::simd::{axpy, copy, init, passes, store};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use kerac::recurrent::{Cell, Recurrent};
use kerac::Act;

#[allow(clippy::too_many_arguments)]
pub(super) fn recurrent(
    fx: &mut Fx,
    p: &Recurrent,
    xp: Addr,
    u: Addr,
    rb: Option<Addr>,
    initial: [Option<Addr>; 2],
    mask: Option<Addr>,
    y: Addr,
) {
    let (units, state) = (p.units, p.state());
    let width = p.gates() * units;
    let rows = p.batch * p.steps * state;
    // Scratch after the state rows, as in the runtime: h U, then the previous state.
    let hu = y.add(rows);
    let prev = y.add(rows + width);
    let recurrent_cols = match p.cell {
        Cell::Gru { reset_after: false } => 2 * units,
        _ => width,
    };
    let gate_passes = passes(recurrent_cols, fx.lanes);
    // Row of processing step `s` and the input step it reads, as `a + s * b` with
    // signed `b`.
    let (row0, row_step) = match (p.backwards && p.input_order, p.steps) {
        (true, n) => ((n - 1) as i64, -1i64),
        _ => (0, 1),
    };
    let (in0, in_step) = if p.backwards {
        ((p.steps - 1) as i64, -1i64)
    } else {
        (0, 1)
    };
    fx.for_n(p.batch, |fx, b| {
        let yb = fx.at(y, &[(b, p.steps * state)]);
        let xb = fx.at(xp, &[(b, p.steps * width)]);
        let body = |fx: &mut Fx, s: Option<Value>| {
            // The previous state, copied aside (zeros before the first step).
            match s {
                None => {
                    for (k, init) in initial.iter().enumerate() {
                        let to = prev.add(k * units);
                        match init {
                            Some(from) => {
                                let from = fx.at(*from, &[(b, units)]);
                                copy(fx, from, to, units);
                            }
                            None => fx.chunks(units, |fx, ty, ix| {
                                let v = fx.splat(ty, 0.0);
                                let a = fx.ix(to, ix);
                                fx.store(v, a);
                            }),
                        }
                    }
                }
                Some(s) => {
                    let last = signed(fx, s, row_step, row0 - row_step, state, yb);
                    copy(fx, last, prev, state);
                }
            }
            let row = match s {
                Some(s) => signed(fx, s, row_step, row0, state, yb),
                None => yb.add(row0 as usize * state),
            };
            let x = match s {
                Some(s) => signed(fx, s, in_step, in0, width, xb),
                None => xb.add(in0 as usize * width),
            };
            // The step's work: the assembled kernel where there is one (called at
            // each of the two places, its loops joining the step's at each).
            if let Some(k) = fx.assembled.clone() {
                fx.call_assembled(k, [Some(prev), Some(x), Some(u), rb, Some(row)]);
                return;
            }
            // hu = rb + h U over the recurrent columns.
            for pass in &gate_passes {
                let acc = init(fx, pass, rb, 0.0);
                axpy(fx, pass, &acc, (prev, 1), (u, width), units);
                store(fx, pass, &acc, None, Act::Linear, hu);
            }
            let elementwise = |fx: &mut Fx, n: usize, f: &mut dyn FnMut(&mut Fx, Type, usize)| {
                for pass in &passes(n, fx.lanes) {
                    for (col, w) in pass.cols() {
                        let ty = fx.ty(w);
                        f(fx, ty, col);
                    }
                }
            };
            match p.cell {
                Cell::Simple => elementwise(fx, units, &mut |fx, ty, j| {
                    let a = fx.load(ty, x.add(j));
                    let h = fx.load(ty, hu.add(j));
                    let v = fx.b.ins().fadd(a, h);
                    let v = fx.act(p.act, v);
                    fx.store(v, row.add(j));
                }),
                Cell::Lstm => elementwise(fx, units, &mut |fx, ty, j| {
                    let gate = |fx: &mut Fx, g: usize| {
                        let a = fx.load(ty, hu.add(g * units + j));
                        let xv = fx.load(ty, x.add(g * units + j));
                        fx.b.ins().fadd(a, xv)
                    };
                    let (i, f, c, o) = (gate(fx, 0), gate(fx, 1), gate(fx, 2), gate(fx, 3));
                    let i = fx.act(p.rec_act, i);
                    let f = fx.act(p.rec_act, f);
                    let c = fx.act(p.act, c);
                    let o = fx.act(p.rec_act, o);
                    let c_prev = fx.load(ty, prev.add(units + j));
                    let fc = fx.b.ins().fmul(f, c_prev);
                    let ic = fx.b.ins().fmul(i, c);
                    let c_new = fx.b.ins().fadd(fc, ic);
                    fx.store(c_new, row.add(units + j));
                    let h = fx.act(p.act, c_new);
                    let h = fx.b.ins().fmul(h, o);
                    fx.store(h, row.add(j));
                }),
                Cell::Gru { reset_after } => {
                    if !reset_after {
                        // r * h into the space after h in `prev`, then (r h) U_h.
                        elementwise(fx, units, &mut |fx, ty, j| {
                            let a = fx.load(ty, hu.add(units + j));
                            let xv = fx.load(ty, x.add(units + j));
                            let r = fx.b.ins().fadd(a, xv);
                            let r = fx.act(p.rec_act, r);
                            let h = fx.load(ty, prev.add(j));
                            let rh = fx.b.ins().fmul(r, h);
                            fx.store(rh, prev.add(units + j));
                        });
                        for pass in &passes(units, fx.lanes) {
                            let acc = init(fx, pass, Some(x.add(2 * units)), 0.0);
                            axpy(
                                fx,
                                pass,
                                &acc,
                                (prev.add(units), 1),
                                (u.add(2 * units), width),
                                units,
                            );
                            store(fx, pass, &acc, None, Act::Linear, hu.add(2 * units));
                        }
                    }
                    elementwise(fx, units, &mut |fx, ty, j| {
                        let gate = |fx: &mut Fx, g: usize| {
                            let a = fx.load(ty, hu.add(g * units + j));
                            let xv = fx.load(ty, x.add(g * units + j));
                            fx.b.ins().fadd(a, xv)
                        };
                        let z = gate(fx, 0);
                        let z = fx.act(p.rec_act, z);
                        let hh = if reset_after {
                            let r = gate(fx, 1);
                            let r = fx.act(p.rec_act, r);
                            let hv = fx.load(ty, hu.add(2 * units + j));
                            let xv = fx.load(ty, x.add(2 * units + j));
                            let rh = fx.b.ins().fmul(r, hv);
                            fx.b.ins().fadd(xv, rh)
                        } else {
                            fx.load(ty, hu.add(2 * units + j))
                        };
                        let hh = fx.act(p.act, hh);
                        let h_prev = fx.load(ty, prev.add(j));
                        let one = fx.splat(ty, 1.0);
                        let zh = fx.b.ins().fmul(z, h_prev);
                        let omz = fx.b.ins().fsub(one, z);
                        let rest = fx.b.ins().fmul(omz, hh);
                        let h = fx.b.ins().fadd(zh, rest);
                        fx.store(h, row.add(j));
                    });
                }
            }
        };
        let body = |fx: &mut Fx, s: Option<Value>| {
            body(fx, s);
            // A masked step keeps the previous state, by a blend of bits.
            if let Some(mask) = mask {
                let mb = fx.at(mask, &[(b, p.steps)]);
                let m = match s {
                    Some(s) => signed(fx, s, in_step, in0, 1, mb),
                    None => mb.add(in0 as usize),
                };
                let m = fx.load(types::F32, m);
                let zero = fx.splat(types::F32, 0.0);
                let counts = fx.b.ins().fcmp(FloatCC::NotEqual, m, zero);
                let wide = fx.b.ins().bmask(types::I32, counts);
                let bits = fx.b.ins().bitcast(types::F32, MemFlagsData::new(), wide);
                let row = match s {
                    Some(s) => signed(fx, s, row_step, row0, state, yb),
                    None => yb.add(row0 as usize * state),
                };
                fx.chunks(state, |fx, ty, ix| {
                    let keep = fx.splat_value(ty, bits);
                    let a = fx.ix(row, ix);
                    let new = fx.load(ty, a);
                    let pa = fx.ix(prev, ix);
                    let old = fx.load(ty, pa);
                    let v = fx.select(keep, new, old);
                    fx.store(v, a);
                });
            }
        };
        body(fx, None);
        fx.for_n(p.steps - 1, |fx, i| {
            let s = fx.b.ins().iadd_imm_s(i, 1);
            body(fx, Some(s));
        });
    });
}

/// `base + (a + s * step) * floats`: rows that move backwards have a negative step.
fn signed(fx: &mut Fx, s: Value, step: i64, a: i64, floats: usize, base: Addr) -> Addr {
    let scaled = fx.b.ins().imul_imm_s(s, step * floats as i64 * 4);
    let p = fx.b.ins().iadd(base.base, scaled);
    Addr {
        base: p,
        off: base.off + a * floats as i64,
    }
}
