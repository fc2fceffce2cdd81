//! An activation's [`Tape`] as AVX2 or AVX-512 instructions on registers: the same
//! operations in the same order as the runtime's `Act::eval_lanes`, so the bits match
//! the other backends. Constants are operands in the stack frame, comparisons give lane
//! masks (vector masks on AVX2, `k` registers on AVX-512) and selections are blends:
//! no branch.

use super::{Asm, Refused, Wide, KREG, M, R, YMM, ZMM};
use crate::emit::tape::{Tape, TapeOp};
use iced_x86::code_asm::*;

const SIGN: u32 = 0x8000_0000;
const BIAS: u32 = 126;
const BYTE: u32 = 0xff;
const MANTISSA: u32 = 0x007f_ffff;
const HALF: u32 = 0x3f00_0000;

/// The constants `tape` reads, as bits, each once.
pub(super) fn constants(tape: &Tape) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for op in &tape.ops {
        let add: &[u32] = match op {
            TapeOp::Const(c) => &[c.to_bits()],
            TapeOp::Neg(_) => &[SIGN],
            TapeOp::Pow2Minus1(_) => &[BIAS],
            TapeOp::Exponent(_) => &[BYTE, BIAS],
            TapeOp::Mantissa(_) => &[MANTISSA, HALF],
            _ => &[],
        };
        for &c in add {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// Where a value of the tape is.
#[derive(Clone, Copy, PartialEq)]
enum Loc {
    V(usize),
    K(usize),
    C(u32),
}

/// A source operand: a register or a constant in the frame.
#[derive(Clone, Copy)]
enum Src {
    V(usize),
    Mem(M),
}

macro_rules! vop3 {
    ($s:expr, $ins:ident, $d:expr, $a:expr, $b:expr) => {
        match ($s.wide, $b) {
            (Wide::Avx2, Src::V(b)) => $s.a.$ins(YMM[$d], YMM[$a], YMM[b])?,
            (Wide::Avx2, Src::Mem(m)) => $s.a.$ins(YMM[$d], YMM[$a], ptr(m.op()))?,
            (Wide::Avx512, Src::V(b)) => $s.a.$ins(ZMM[$d], ZMM[$a], ZMM[b])?,
            (Wide::Avx512, Src::Mem(m)) => $s.a.$ins(ZMM[$d], ZMM[$a], ptr(m.op()))?,
        }
    };
}

macro_rules! vop2 {
    ($s:expr, $ins:ident, $d:expr, $a:expr) => {
        match $s.wide {
            Wide::Avx2 => $s.a.$ins(YMM[$d], YMM[$a])?,
            Wide::Avx512 => $s.a.$ins(ZMM[$d], ZMM[$a])?,
        }
    };
}

impl Asm {
    /// Applies `tape` to the vector in register `input`, with the registers in `free`
    /// as its temporaries (`input` too, once read for the last time). Returns the
    /// register that holds the result; [`Refused::NoRoom`] where `free` is too few.
    pub fn act(&mut self, tape: &Tape, input: usize, free: &[usize]) -> R<usize> {
        Ok(self.interleaved(&[(tape, input)], free)?[0])
    }

    /// Applies each `(tape, input)`, returning the registers of the results: op by op in
    /// turn where the registers allow, so that their chains of dependent operations
    /// overlap (an activation is a chain of some forty: alone, it leaves the vector
    /// units mostly idle); else by halves, each kept from the next. Inputs are
    /// distinct registers, outside `free`.
    pub fn acts(&mut self, work: &[(&Tape, usize)], free: &[usize]) -> R<Vec<usize>> {
        let mut trial = Asm::new(self.wide, false, self.consts.clone())?;
        match trial.interleaved(work, free) {
            Ok(_) => return self.interleaved(work, free),
            Err(Refused::NoRoom) if work.len() > 1 => {}
            Err(e) => return Err(e),
        }
        // Too many at once: each half at once, the first's results kept from the second.
        let (a, b) = work.split_at(work.len() / 2);
        let mut out = self.acts(a, free)?;
        let avail: Vec<usize> = free.iter().filter(|r| !out.contains(*r)).copied().collect();
        out.extend(self.acts(b, &avail)?);
        Ok(out)
    }

    /// The tapes of `work`, one operation of each in turn.
    pub(super) fn interleaved(&mut self, work: &[(&Tape, usize)], free: &[usize]) -> R<Vec<usize>> {
        // The order of emission, and where each operation's value is read last in it.
        let mut order = Vec::new();
        let longest = work.iter().map(|w| w.0.ops.len()).max().unwrap_or(0);
        for i in 0..longest {
            for (t, w) in work.iter().enumerate() {
                if i < w.0.ops.len() {
                    order.push((t, i));
                }
            }
        }
        let mut last: Vec<Vec<usize>> = work.iter().map(|w| vec![0; w.0.ops.len()]).collect();
        for (at, &(t, i)) in order.iter().enumerate() {
            for o in work[t].0.ops[i].operands() {
                last[t][o as usize] = at;
            }
        }
        for (t, w) in work.iter().enumerate() {
            last[t][w.0.result as usize] = usize::MAX;
        }
        let mut vfree: Vec<usize> = free.iter().rev().copied().collect();
        let mut kfree: Vec<usize> = (2..8).rev().collect();
        let mut locs: Vec<Vec<Loc>> = work
            .iter()
            .map(|w| Vec::with_capacity(w.0.ops.len()))
            .collect();
        for (at, &(t, i)) in order.iter().enumerate() {
            let op = &work[t].0.ops[i];
            let loc = match *op {
                TapeOp::Input(_) => Loc::V(work[t].1),
                TapeOp::Const(c) => Loc::C(c.to_bits()),
                _ => {
                    let locs = &locs[t];
                    // Operands that must sit in registers but are constants get a
                    // temporary first, so that nothing they are loaded into aliases a
                    // live operand.
                    let ops = op.operands();
                    let mut temps = Vec::new();
                    let mut regs = [0usize; 3];
                    for (j, &o) in ops.iter().enumerate() {
                        regs[j] = match locs[o as usize] {
                            Loc::V(r) | Loc::K(r) => r,
                            Loc::C(bits) if needs_reg(op, j) => {
                                let t = vfree.pop().ok_or(Refused::NoRoom)?;
                                let m = self.constant(bits)?;
                                self.load(t, m, false)?;
                                temps.push(t);
                                t
                            }
                            Loc::C(_) => usize::MAX,
                        };
                    }
                    let src = |j: usize| match locs[ops[j] as usize] {
                        Loc::C(bits) if regs[j] == usize::MAX => self.constant(bits).map(Src::Mem),
                        _ => Ok(Src::V(regs[j])),
                    };
                    let srcs: Vec<Src> = (0..ops.len()).map(src).collect::<R<_>>()?;
                    // Operands read for the last time free their registers: the
                    // three-operand forms read every source before writing.
                    let mut seen = Vec::new();
                    for &o in &ops {
                        if last[t][o as usize] == at && !seen.contains(&o) {
                            seen.push(o);
                            match locs[o as usize] {
                                Loc::V(r) => vfree.push(r),
                                Loc::K(r) => kfree.push(r),
                                Loc::C(_) => {}
                            }
                        }
                    }
                    vfree.extend(temps);
                    let mask = matches!(op, TapeOp::Gt(..) | TapeOp::Lt(..) | TapeOp::Ge(..));
                    let dst = if mask && self.wide == Wide::Avx512 {
                        Loc::K(kfree.pop().ok_or(Refused::NoRoom)?)
                    } else {
                        Loc::V(vfree.pop().ok_or(Refused::NoRoom)?)
                    };
                    self.tape_op(op, dst, &regs, &srcs)?;
                    dst
                }
            };
            locs[t].push(loc);
        }
        work.iter()
            .zip(&locs)
            .map(|(w, locs)| match locs[w.0.result as usize] {
                Loc::V(r) => Ok(r),
                // A tape whose result is a constant or a mask is no activation.
                _ => Err(Refused::NoRoom),
            })
            .collect()
    }

    fn tape_op(&mut self, op: &TapeOp, dst: Loc, regs: &[usize; 3], srcs: &[Src]) -> R<()> {
        let d = match dst {
            Loc::V(r) | Loc::K(r) => r,
            Loc::C(_) => return Err(Refused::NoRoom),
        };
        let a = regs[0];
        match *op {
            TapeOp::Add(..) => vop3!(self, vaddps, d, a, srcs[1]),
            TapeOp::Sub(..) => vop3!(self, vsubps, d, a, srcs[1]),
            TapeOp::Mul(..) => vop3!(self, vmulps, d, a, srcs[1]),
            TapeOp::Div(..) => vop3!(self, vdivps, d, a, srcs[1]),
            TapeOp::Neg(_) => {
                let sign = Src::Mem(self.constant(SIGN)?);
                match self.wide {
                    Wide::Avx2 => vop3!(self, vxorps, d, a, sign),
                    Wide::Avx512 => vop3!(self, vpxord, d, a, sign),
                }
            }
            TapeOp::Gt(..) | TapeOp::Lt(..) | TapeOp::Ge(..) => {
                // Ordered, quiet: false where either side is NaN, as Cranelift's
                // `fcmp` and the runtime's comparisons.
                let pred = match op {
                    TapeOp::Gt(..) => 0x1e,
                    TapeOp::Lt(..) => 0x11,
                    _ => 0x1d,
                };
                match (self.wide, srcs[1]) {
                    (Wide::Avx2, Src::V(b)) => self.a.vcmpps(YMM[d], YMM[a], YMM[b], pred)?,
                    (Wide::Avx2, Src::Mem(m)) => {
                        self.a.vcmpps(YMM[d], YMM[a], ptr(m.op()), pred)?
                    }
                    (Wide::Avx512, Src::V(b)) => self.a.vcmpps(KREG[d], ZMM[a], ZMM[b], pred)?,
                    (Wide::Avx512, Src::Mem(m)) => {
                        self.a.vcmpps(KREG[d], ZMM[a], ptr(m.op()), pred)?
                    }
                }
            }
            TapeOp::Select(..) => {
                // mask ? a : b
                let (m, b) = (regs[0], regs[2]);
                match (self.wide, srcs[1]) {
                    (Wide::Avx2, Src::V(x)) => self.a.vblendvps(YMM[d], YMM[b], YMM[x], YMM[m])?,
                    (Wide::Avx2, Src::Mem(mm)) => {
                        self.a.vblendvps(YMM[d], YMM[b], ptr(mm.op()), YMM[m])?
                    }
                    (Wide::Avx512, Src::V(x)) => {
                        self.a.vblendmps(masked(ZMM[d], m), ZMM[b], ZMM[x])?
                    }
                    (Wide::Avx512, Src::Mem(mm)) => {
                        self.a.vblendmps(masked(ZMM[d], m), ZMM[b], ptr(mm.op()))?
                    }
                }
            }
            TapeOp::Sqrt(_) => vop2!(self, vsqrtps, d, a),
            TapeOp::Trunc(_) => {
                vop2!(self, vcvttps2dq, d, a);
                vop2!(self, vcvtdq2ps, d, d);
            }
            TapeOp::Pow2Minus1(_) => {
                vop2!(self, vcvttps2dq, d, a);
                let bias = Src::Mem(self.constant(BIAS)?);
                vop3!(self, vpaddd, d, d, bias);
                self.shift(true, d, d)?;
            }
            TapeOp::Exponent(_) => {
                self.shift(false, d, a)?;
                let byte = Src::Mem(self.constant(BYTE)?);
                self.and_or(true, d, d, byte)?;
                let bias = Src::Mem(self.constant(BIAS)?);
                vop3!(self, vpsubd, d, d, bias);
                vop2!(self, vcvtdq2ps, d, d);
            }
            TapeOp::Mantissa(_) => {
                let keep = Src::Mem(self.constant(MANTISSA)?);
                self.and_or(true, d, a, keep)?;
                let half = Src::Mem(self.constant(HALF)?);
                self.and_or(false, d, d, half)?;
            }
            TapeOp::Input(_) | TapeOp::Const(_) => {}
        }
        Ok(())
    }

    /// `d = a << 23` (`left`) or `a >> 23`, lanes as 32-bit integers.
    fn shift(&mut self, left: bool, d: usize, a: usize) -> R<()> {
        match (self.wide, left) {
            (Wide::Avx2, true) => self.a.vpslld(YMM[d], YMM[a], 23)?,
            (Wide::Avx2, false) => self.a.vpsrld(YMM[d], YMM[a], 23)?,
            (Wide::Avx512, true) => self.a.vpslld(ZMM[d], ZMM[a], 23)?,
            (Wide::Avx512, false) => self.a.vpsrld(ZMM[d], ZMM[a], 23)?,
        }
        Ok(())
    }

    /// `d = a & b` (`and`) or `a | b`, bitwise.
    fn and_or(&mut self, and: bool, d: usize, a: usize, b: Src) -> R<()> {
        let m = match b {
            Src::Mem(m) => m,
            // Bit masks are always frame constants.
            Src::V(_) => return Err(Refused::NoRoom),
        };
        let mem = ptr(m.op());
        match (self.wide, and) {
            (Wide::Avx2, true) => self.a.vpand(YMM[d], YMM[a], mem)?,
            (Wide::Avx2, false) => self.a.vpor(YMM[d], YMM[a], mem)?,
            (Wide::Avx512, true) => self.a.vpandd(ZMM[d], ZMM[a], mem)?,
            (Wide::Avx512, false) => self.a.vpord(ZMM[d], ZMM[a], mem)?,
        }
        Ok(())
    }
}

/// `r` written only where mask register `k` (2 to 7) is set.
fn masked(r: AsmRegisterZmm, k: usize) -> AsmRegisterZmm {
    match k {
        2 => r.k2(),
        3 => r.k3(),
        4 => r.k4(),
        5 => r.k5(),
        6 => r.k6(),
        _ => r.k7(),
    }
}

/// Whether operand `j` of `op` must be in a register: all but the second of a binary
/// operation (a memory operand there) and the "true" side of a selection.
fn needs_reg(op: &TapeOp, j: usize) -> bool {
    match op {
        TapeOp::Add(..)
        | TapeOp::Sub(..)
        | TapeOp::Mul(..)
        | TapeOp::Div(..)
        | TapeOp::Gt(..)
        | TapeOp::Lt(..)
        | TapeOp::Ge(..)
        | TapeOp::Select(..) => j != 1,
        _ => true,
    }
}
