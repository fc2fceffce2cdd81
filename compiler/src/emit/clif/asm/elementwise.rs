//! Steps that touch each value once: an activation on its own, and merges (sums,
//! products, maxima... of up to four inputs with broadcasting, such as a
//! squeeze-excite block's channel scaling). Memory-bound, so the gain is the width of
//! each load and store; the inner axis runs as whole vectors and one masked tail.
//!
//! Registers: inputs in rdi, rsi, rdx, r8 (moved to rax, rbx, rbp, r10 and stepped
//! through the outer axes), y in rcx (then r11), r9 the loop counters, r14 the index
//! along the inner axis in bytes.

use super::{disp, spare, Asm, Ctl, Listing, Refused, Wide, M, R};
use crate::emit::tape::Tape;
use iced_x86::code_asm::*;
use kerac::merge::{Fold, RANK};
use kerac::Act;

/// `y = act(x)` over `len` floats.
pub(in crate::emit::clif) struct Activation {
    pub len: usize,
    pub act: Act,
}

impl Activation {
    /// The kernel `(x, -, -, y, -, counters)`.
    pub fn assemble(&self, wide: Wide, counting: bool) -> R<Listing> {
        let tape = Tape::trace(|x| self.act.eval_lanes(x));
        let mut asm = Asm::new(wide, counting, super::act_constants(Some(&tape)))?;
        let l = wide.lanes();
        if !self.len.is_multiple_of(l) {
            asm.set_mask(self.len % l)?;
        }
        let trips = self.len / l;
        let one = |asm: &mut Asm, at: i32, masked: bool| -> R<()> {
            asm.load(0, M::ix(rdi, r14, at), masked)?;
            let y = asm.act(&tape, 0, &spare(asm.wide, &[0]))?;
            asm.store(M::ix(rcx, r14, at), y, masked)
        };
        asm.repeat(trips, Ctl::Reg(r14, l * 4), |asm| one(asm, 0, false))?;
        if !self.len.is_multiple_of(l) {
            let at = if trips >= 2 { 0 } else { trips * l * 4 };
            one(&mut asm, disp(at)?, true)?;
        }
        asm.finish()
    }
}

/// Where an input sits in the pointer arguments, and the registers it is stepped in.
const ARGS: [AsmRegister64; 4] = [rdi, rsi, rdx, r8];
const PTRS: [AsmRegister64; 4] = [rax, rbx, rbp, r10];

/// `y = fold(x0, x1, ...)` elementwise over `shape`, each input with its own strides
/// (0 where it is broadcast).
pub(in crate::emit::clif) struct Merge {
    fold: Fold,
    shape: [usize; RANK],
    strides: Vec<[usize; RANK]>,
    /// The axes longer than one, the last being the inner one.
    dims: Vec<usize>,
}

impl Merge {
    /// A merge of one to four inputs that each either run along the inner axis or are
    /// broadcast across it.
    pub fn new(fold: Fold, shape: &[usize; RANK], strides: &[[usize; RANK]]) -> Option<Merge> {
        let dims: Vec<usize> = (0..RANK).filter(|&d| shape[d] > 1).collect();
        if strides.is_empty() || strides.len() > ARGS.len() {
            return None;
        }
        if let Some(&inner) = dims.last() {
            if strides.iter().any(|s| s[inner] > 1) {
                return None;
            }
        }
        // Every stride and extent within a displacement's reach.
        let total = shape
            .iter()
            .try_fold(4usize, |n, &d| n.checked_mul(d.max(1)))?;
        let near = |s: &[usize; RANK]| {
            dims.iter().all(|&d| {
                s[d].checked_mul(shape[d])
                    .and_then(|b| b.checked_mul(4))
                    .is_some_and(|b| b < 1 << 30)
            })
        };
        if total >= 1 << 30 || !strides.iter().all(near) {
            return None;
        }
        Some(Merge {
            fold,
            shape: *shape,
            strides: strides.to_vec(),
            dims,
        })
    }

    /// The kernel `(x0, x1, x2, y, x3, counters)`.
    pub fn assemble(&self, wide: Wide, counting: bool) -> R<Listing> {
        let n = self.strides.len();
        let scale = (self.fold == Fold::Average).then(|| (1.0 / n as f32).to_bits());
        let mut asm = Asm::new(wide, counting, scale.into_iter().collect())?;
        // The mask first: setting it takes eax.
        let inner = self.dims.last().map_or(1, |&d| self.shape[d]);
        if !inner.is_multiple_of(wide.lanes()) {
            asm.set_mask(inner % wide.lanes())?;
        }
        for (p, a) in PTRS.iter().zip(ARGS).take(n) {
            asm.x().mov(*p, a)?;
        }
        asm.x().mov(r11, rcx)?;
        self.level(&mut asm, 0, scale)?;
        asm.finish()
    }

    /// The outer axis `k` (of those longer than one) and everything inside it.
    fn level(&self, asm: &mut Asm, k: usize, scale: Option<u32>) -> R<()> {
        let outer = self.dims.len().saturating_sub(1);
        if k >= outer {
            return self.inner(asm, scale);
        }
        let d = self.dims[k];
        let y_stride: usize = self.dims[k + 1..].iter().map(|&e| self.shape[e]).product();
        // Frame slots 8, 16, ... (5 outer axes at most).
        let slot = 8 * (k as i32 + 1);
        asm.repeat(self.shape[d], Ctl::Stack(slot), |asm| {
            self.level(asm, k + 1, scale)?;
            for (p, s) in PTRS.iter().zip(&self.strides) {
                if s[d] != 0 {
                    asm.x().add(*p, disp(s[d] * 4)?)?;
                }
            }
            asm.x().add(r11, disp(y_stride * 4)?)?;
            Ok(())
        })?;
        // Back to where the axis started: the enclosing axis steps on from there.
        for (p, s) in PTRS.iter().zip(&self.strides) {
            if s[d] != 0 {
                asm.x().sub(*p, disp(self.shape[d] * s[d] * 4)?)?;
            }
        }
        asm.x().sub(r11, disp(self.shape[d] * y_stride * 4)?)?;
        Ok(())
    }

    /// The inner axis: whole vectors, then the masked tail.
    fn inner(&self, asm: &mut Asm, scale: Option<u32>) -> R<()> {
        let l = asm.wide.lanes();
        let inner = self.dims.last().copied();
        let len = inner.map_or(1, |d| self.shape[d]);
        let runs = |i: usize| inner.is_some_and(|d| self.strides[i][d] == 1);
        let one = |asm: &mut Asm, at: i32, masked: bool| -> R<()> {
            for (i, &p) in PTRS.iter().enumerate().take(self.strides.len()) {
                let r = usize::from(i > 0);
                if runs(i) {
                    asm.load(r, M::ix(p, r14, at), masked)?;
                } else {
                    asm.bcast(r, M::at(p, 0))?;
                }
                if i > 0 {
                    asm.fold(self.fold, 0, 1)?;
                }
            }
            if let Some(bits) = scale {
                let c = asm.constant(bits)?;
                asm.load(1, c, false)?;
                asm.binary(Binary::Mul, 0, 0, 1)?;
            }
            asm.store(M::ix(r11, r14, at), 0, masked)
        };
        let trips = len / l;
        asm.repeat(trips, Ctl::Reg(r14, l * 4), |asm| one(asm, 0, false))?;
        if len % l != 0 {
            let at = if trips >= 2 { 0 } else { trips * l * 4 };
            one(asm, disp(at)?, true)?;
        }
        Ok(())
    }
}

/// Global max or average pooling: per sample and channel, over every position.
pub(in crate::emit::clif) struct GlobalPool(pub kerac::pool::GlobalPool);

impl GlobalPool {
    /// The kernel `(x, -, -, y, -, counters)`, where its offsets fit displacements.
    pub fn assemble(&self, wide: Wide, counting: bool) -> R<Listing> {
        let p = &self.0;
        let px = p.channels.checked_mul(4).ok_or(Refused::Far)?;
        let sample = p.positions.checked_mul(px).ok_or(Refused::Far)?;
        let low = f32::NEG_INFINITY.to_bits();
        let scale = (1.0 / p.positions.max(1) as f32).to_bits();
        let mut asm = Asm::new(wide, counting, vec![low, scale])?;
        let l = wide.lanes();
        if !p.channels.is_multiple_of(l) {
            asm.set_mask(p.channels % l)?;
        }
        let nv = super::vectors(wide, 1);
        let block = |asm: &mut Asm, nv: usize, masked: bool| -> R<()> {
            let part = |j: usize| masked && j + 1 == nv;
            asm.x().lea(r13, qword_ptr(rdi + r15))?;
            for j in 0..nv {
                if p.max {
                    let c = asm.constant(low)?;
                    asm.load(j, c, false)?;
                } else {
                    asm.zero(j)?;
                }
            }
            asm.repeat(p.positions, Ctl::Reg(r14, px), |asm| {
                for j in 0..nv {
                    asm.load(nv, M::ix(r13, r14, disp(j * l * 4)?), part(j))?;
                    if p.max {
                        // max(v, acc), as the runtime's `fmax(v, acc)`.
                        asm.binary(Binary::Max, j, nv, j)?;
                    } else {
                        asm.binary(Binary::Add, j, j, nv)?;
                    }
                }
                Ok(())
            })?;
            if !p.max {
                let c = asm.constant(scale)?;
                asm.load(nv, c, false)?;
                for j in 0..nv {
                    asm.binary(Binary::Mul, j, j, nv)?;
                }
            }
            for j in 0..nv {
                asm.store(M::ix(rcx, r15, disp(j * l * 4)?), j, part(j))?;
            }
            Ok(())
        };
        asm.repeat(p.batch, Ctl::Stack(8), |asm| {
            asm.channel_blocks(p.channels, nv, |asm, nv, masked| block(asm, nv, masked))?;
            asm.x().add(rdi, disp(sample)?)?;
            asm.x().add(rcx, disp(px)?)?;
            Ok(())
        })?;
        asm.finish()
    }
}

/// A two-operand vector operation.
#[derive(Clone, Copy)]
pub(super) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    /// `a > b ? a : b`, x86's `maxps`.
    Max,
    /// `a < b ? a : b`, x86's `minps`.
    Min,
}

impl Asm {
    /// `d = a op b` on registers.
    pub(super) fn binary(&mut self, op: Binary, d: usize, a: usize, b: usize) -> R<()> {
        use super::{YMM, ZMM};
        macro_rules! both {
            ($ins:ident) => {
                match self.wide {
                    Wide::Avx2 => self.a.$ins(YMM[d], YMM[a], YMM[b])?,
                    Wide::Avx512 => self.a.$ins(ZMM[d], ZMM[a], ZMM[b])?,
                }
            };
        }
        match op {
            Binary::Add => both!(vaddps),
            Binary::Sub => both!(vsubps),
            Binary::Mul => both!(vmulps),
            Binary::Div => both!(vdivps),
            Binary::Max => both!(vmaxps),
            Binary::Min => both!(vminps),
        }
        Ok(())
    }

    /// `acc = fold(acc, v)` as the runtime's `Fold::apply`: the maximum and minimum
    /// keep `v` where it wins, as `fmax(v, acc)` does.
    fn fold(&mut self, f: Fold, acc: usize, v: usize) -> R<()> {
        match f {
            Fold::Add | Fold::Average => self.binary(Binary::Add, acc, acc, v),
            Fold::Subtract => self.binary(Binary::Sub, acc, acc, v),
            Fold::Multiply => self.binary(Binary::Mul, acc, acc, v),
            Fold::Divide => self.binary(Binary::Div, acc, acc, v),
            Fold::Maximum => self.binary(Binary::Max, acc, v, acc),
            Fold::Minimum => self.binary(Binary::Min, acc, v, acc),
        }
    }
}
