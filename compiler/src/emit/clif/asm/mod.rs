//! Machine code for x86-64's wide vectors. Cranelift lowers only 128-bit vectors, so the
//! hot inner kernels of a step are assembled here, with iced-x86's code assembler, as
//! functions specialised to the step's constants: 256-bit AVX2+FMA or 512-bit AVX-512F.
//! The step's Cranelift function calls them directly; they call nothing, need no
//! relocation, and keep every promise of the rest of the code: constant trip counts
//! (recorded as [`Loop`]s, and counted in a counting build), no data-dependent branch,
//! no memory outside the buffers they are given and their own stack frame.
//!
//! The kernels take up to six pointers in the System V order (rdi, rsi, rdx, rcx, r8,
//! r9) and save the callee-saved registers they use.

mod act;
mod depthwise;
mod elementwise;
mod gemm;
mod pad;
mod recurrent;

use super::fx::Loop;
use crate::emit::tape::Tape;
use iced_x86::code_asm::*;

/// The vector extension the assembled kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wide {
    /// 256-bit AVX2 with FMA (x86-64-v3): 16 registers of 8 floats.
    Avx2,
    /// 512-bit AVX-512F (x86-64-v4): 32 registers of 16 floats, 8 mask registers.
    Avx512,
}

impl Wide {
    /// Floats per register.
    pub fn lanes(self) -> usize {
        match self {
            Wide::Avx2 => 8,
            Wide::Avx512 => 16,
        }
    }

    /// Vector registers kernels may use: AVX2 keeps its last for the lane mask.
    fn usable(self) -> usize {
        match self {
            Wide::Avx2 => YMASK,
            Wide::Avx512 => 32,
        }
    }

    /// The widest this machine runs, if any: what the JIT uses.
    pub fn host() -> Option<Wide> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Some(Wide::Avx512);
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Some(Wide::Avx2);
            }
        }
        None
    }
}

/// An assembled kernel: its code and its loops in emission order.
pub(super) struct Listing {
    pub bytes: Vec<u8>,
    pub loops: Vec<Loop>,
}

/// Why a kernel was not assembled; the step then runs its Cranelift code.
#[derive(Debug)]
pub(super) enum Refused {
    /// An activation needs more registers than the kernel leaves free.
    NoRoom,
    /// A constant offset does not fit an instruction's 32-bit displacement.
    Far,
    /// The assembler refused an instruction (a bug here, reported as an error).
    Iced(IcedError),
    /// A listing used a constant it did not put in its frame (a bug here, reported as
    /// an error).
    Unregistered(u32),
}

impl From<IcedError> for Refused {
    fn from(e: IcedError) -> Self {
        Refused::Iced(e)
    }
}

type R<T> = Result<T, Refused>;

/// A byte offset as an instruction's displacement.
fn disp(bytes: usize) -> R<i32> {
    i32::try_from(bytes).map_err(|_| Refused::Far)
}

const YMM: [AsmRegisterYmm; 16] = [
    ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14,
    ymm15,
];
const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14,
    zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27,
    zmm28, zmm29, zmm30, zmm31,
];
const KREG: [AsmRegisterK; 8] = [k0, k1, k2, k3, k4, k5, k6, k7];

/// A memory operand: `base + index + disp` bytes.
#[derive(Clone, Copy)]
pub(super) struct M {
    pub base: AsmRegister64,
    pub index: Option<AsmRegister64>,
    pub disp: i32,
}

impl M {
    pub fn at(base: AsmRegister64, disp: i32) -> M {
        M {
            base,
            index: None,
            disp,
        }
    }
    pub fn ix(base: AsmRegister64, index: AsmRegister64, disp: i32) -> M {
        M {
            base,
            index: Some(index),
            disp,
        }
    }
    fn op(self) -> AsmMemoryOperand {
        match self.index {
            Some(i) => self.base + i + self.disp,
            None => self.base + self.disp,
        }
    }
}

/// How a counted loop keeps its count.
#[derive(Clone, Copy)]
pub(super) enum Ctl {
    /// A register stepped by `step` bytes from 0, the index its body addresses with;
    /// after the loop it holds `trips * step` (0 where the body ran once, unlooped).
    Reg(AsmRegister64, usize),
    /// A down-counter in the stack frame at this byte offset.
    Stack(i32),
}

/// Bytes of the stack frame before the constants: the tile counter at 0, AVX2's lane
/// mask at 64.
const FRAME_FIXED: usize = 128;
/// Where AVX2's lane mask for a partial vector sits in the frame.
const MASK_SLOT: i32 = 64;
/// AVX2's register for the lane mask; AVX-512 uses `k1`.
const YMASK: usize = 15;

/// One kernel being assembled.
pub(super) struct Asm {
    a: CodeAssembler,
    pub wide: Wide,
    loops: Vec<Loop>,
    depth: usize,
    /// In a counting build, each loop body adds one to its 64-bit counter at
    /// `[r9 + 8 * loop]`.
    counting: bool,
    /// Constants (as bits) held in the frame as whole vectors, for activations.
    consts: Vec<u32>,
    frame: usize,
}

/// The callee-saved registers every kernel saves.
const SAVED: [AsmRegister64; 6] = [rbx, rbp, r12, r13, r14, r15];

impl Asm {
    /// A kernel whose frame holds `consts` as vectors.
    pub fn new(wide: Wide, counting: bool, consts: Vec<u32>) -> R<Asm> {
        let frame = FRAME_FIXED + 64 * consts.len();
        let mut asm = Asm {
            a: CodeAssembler::new(64)?,
            wide,
            loops: Vec::new(),
            depth: 0,
            counting,
            consts,
            frame,
        };
        for r in SAVED {
            asm.a.push(r)?;
        }
        asm.a.sub(rsp, disp(frame)?)?;
        // Each constant once per call, as a whole vector: operations then take it as
        // a memory operand and no register stays tied up holding it.
        for i in 0..asm.consts.len() {
            asm.a.mov(eax, asm.consts[i])?;
            asm.a.vmovd(xmm0, eax)?;
            let slot = M::at(rsp, asm.const_slot(i));
            match wide {
                Wide::Avx2 => {
                    asm.a.vbroadcastss(ymm0, xmm0)?;
                    asm.a.vmovups(ptr(slot.op()), ymm0)?;
                }
                Wide::Avx512 => {
                    asm.a.vbroadcastss(zmm0, xmm0)?;
                    asm.a.vmovups(ptr(slot.op()), zmm0)?;
                }
            }
        }
        Ok(asm)
    }

    fn const_slot(&self, i: usize) -> i32 {
        (FRAME_FIXED + 64 * i) as i32
    }

    /// The frame slot of constant `bits`, which [`Asm::new`] must have been given: a
    /// listing that forgot one is refused, never given another constant.
    fn constant(&self, bits: u32) -> R<M> {
        let i = self
            .consts
            .iter()
            .position(|&c| c == bits)
            .ok_or(Refused::Unregistered(bits))?;
        Ok(M::at(rsp, self.const_slot(i)))
    }

    /// Restores the registers and returns; the code and its loops.
    pub fn finish(mut self) -> R<Listing> {
        self.a.vzeroupper()?;
        self.a.add(rsp, disp(self.frame)?)?;
        for r in SAVED.iter().rev() {
            self.a.pop(*r)?;
        }
        self.a.ret()?;
        Ok(Listing {
            bytes: self.a.assemble(0)?,
            loops: self.loops,
        })
    }

    /// Runs `body` `trips` times: a loop with a constant trip count, no loop for one
    /// run, nothing for none.
    pub fn repeat(
        &mut self,
        trips: usize,
        ctl: Ctl,
        mut body: impl FnMut(&mut Asm) -> R<()>,
    ) -> R<()> {
        if let Ctl::Reg(r, _) = ctl {
            self.a.xor(r, r)?;
        }
        match trips {
            0 => return Ok(()),
            1 => return body(self),
            _ => {}
        }
        if let Ctl::Stack(slot) = ctl {
            self.a.mov(qword_ptr(rsp + slot), disp(trips)?)?;
        }
        let id = self.loops.len();
        self.loops.push(Loop {
            depth: self.depth,
            trips,
        });
        let mut head = self.a.create_label();
        self.a.set_label(&mut head)?;
        if self.counting {
            self.a.inc(qword_ptr(r9 + disp(8 * id)?))?;
        }
        self.depth += 1;
        body(self)?;
        self.depth -= 1;
        match ctl {
            Ctl::Reg(r, step) => {
                self.a.add(r, disp(step)?)?;
                self.a.cmp(r, disp(trips * step)?)?;
                self.a.jne(head)?;
            }
            Ctl::Stack(slot) => {
                self.a.dec(qword_ptr(rsp + slot))?;
                self.a.jnz(head)?;
            }
        }
        Ok(())
    }

    /// The assembler, for the few integer instructions a listing writes itself.
    pub fn x(&mut self) -> &mut CodeAssembler {
        &mut self.a
    }

    /// Sets the lane mask for vectors of `n < lanes` floats; takes eax, so listings set
    /// it before they load pointers.
    pub fn set_mask(&mut self, n: usize) -> R<()> {
        match self.wide {
            Wide::Avx2 => {
                for i in 0..8 {
                    let v: i32 = if i < n { -1 } else { 0 };
                    self.a.mov(dword_ptr(rsp + MASK_SLOT + 4 * i as i32), v)?;
                }
                self.a.vmovups(YMM[YMASK], ptr(rsp + MASK_SLOT))?;
            }
            Wide::Avx512 => {
                self.a.mov(eax, ((1u32 << n) - 1) as i32)?;
                self.a.kmovw(k1, eax)?;
            }
        }
        Ok(())
    }

    /// Loads a vector into `r`; only the mask's lanes (the rest zero) when `masked`.
    pub fn load(&mut self, r: usize, m: M, masked: bool) -> R<()> {
        let mem = ptr(m.op());
        match (self.wide, masked) {
            (Wide::Avx2, false) => self.a.vmovups(YMM[r], mem)?,
            (Wide::Avx2, true) => self.a.vmaskmovps(YMM[r], YMM[YMASK], mem)?,
            (Wide::Avx512, false) => self.a.vmovups(ZMM[r], mem)?,
            (Wide::Avx512, true) => self.a.vmovups(ZMM[r].k1().z(), mem)?,
        }
        Ok(())
    }

    /// Stores `r`; only the mask's lanes when `masked`.
    pub fn store(&mut self, m: M, r: usize, masked: bool) -> R<()> {
        match (self.wide, masked) {
            (Wide::Avx2, false) => self.a.vmovups(ptr(m.op()), YMM[r])?,
            (Wide::Avx2, true) => self.a.vmaskmovps(ptr(m.op()), YMM[YMASK], YMM[r])?,
            (Wide::Avx512, false) => self.a.vmovups(ptr(m.op()), ZMM[r])?,
            (Wide::Avx512, true) => self.a.vmovups(ptr(m.op()).k1(), ZMM[r])?,
        }
        Ok(())
    }

    /// One float at `m` into every lane of `r`.
    pub fn bcast(&mut self, r: usize, m: M) -> R<()> {
        match self.wide {
            Wide::Avx2 => self.a.vbroadcastss(YMM[r], dword_ptr(m.op()))?,
            Wide::Avx512 => self.a.vbroadcastss(ZMM[r], dword_ptr(m.op()))?,
        }
        Ok(())
    }

    /// `acc += a * b`, fused.
    pub fn fma(&mut self, acc: usize, a: usize, b: usize) -> R<()> {
        match self.wide {
            Wide::Avx2 => self.a.vfmadd231ps(YMM[acc], YMM[a], YMM[b])?,
            Wide::Avx512 => self.a.vfmadd231ps(ZMM[acc], ZMM[a], ZMM[b])?,
        }
        Ok(())
    }

    /// `acc += a * [m]`: the vector at `m` as the FMA's memory operand; only the mask's
    /// lanes read when `masked` (AVX2 loads them into `tmp` first).
    pub fn fma_mem(&mut self, acc: usize, a: usize, m: M, masked: bool, tmp: usize) -> R<()> {
        match (self.wide, masked) {
            (Wide::Avx2, false) => self.a.vfmadd231ps(YMM[acc], YMM[a], ptr(m.op()))?,
            (Wide::Avx2, true) => {
                self.load(tmp, m, true)?;
                self.fma(acc, a, tmp)?;
            }
            (Wide::Avx512, false) => self.a.vfmadd231ps(ZMM[acc], ZMM[a], ptr(m.op()))?,
            // Masked-off lanes are neither read (no fault past the buffer) nor written.
            (Wide::Avx512, true) => self.a.vfmadd231ps(ZMM[acc].k1(), ZMM[a], ptr(m.op()))?,
        }
        Ok(())
    }

    /// `acc += a * [m]` with the one float at `m` broadcast: AVX-512's broadcast
    /// memory operand, AVX2's broadcast into `tmp` first.
    pub fn fma_bcast(&mut self, acc: usize, a: usize, m: M, tmp: usize) -> R<()> {
        match self.wide {
            Wide::Avx2 => {
                self.bcast(tmp, m)?;
                self.fma(acc, tmp, a)?;
            }
            Wide::Avx512 => self.a.vfmadd231ps(ZMM[acc], ZMM[a], dword_bcst(m.op()))?,
        }
        Ok(())
    }

    /// `r = 0`.
    pub fn zero(&mut self, r: usize) -> R<()> {
        match self.wide {
            Wide::Avx2 => self.a.vxorps(YMM[r], YMM[r], YMM[r])?,
            Wide::Avx512 => self.a.vpxord(ZMM[r], ZMM[r], ZMM[r])?,
        }
        Ok(())
    }

    /// `dst = src`.
    pub fn copy(&mut self, dst: usize, src: usize) -> R<()> {
        match self.wide {
            Wide::Avx2 => self.a.vmovaps(YMM[dst], YMM[src])?,
            Wide::Avx512 => self.a.vmovaps(ZMM[dst], ZMM[src])?,
        }
        Ok(())
    }

    /// Runs `block(asm, nv, masked)` over `n` channels from r15 (in bytes): blocks of
    /// `nv` whole vectors in a loop, then the channels left in one block whose last
    /// vector may be partial, so each input is read once more, not once per leftover
    /// vector.
    pub fn channel_blocks(
        &mut self,
        n: usize,
        nv: usize,
        mut block: impl FnMut(&mut Asm, usize, bool) -> R<()>,
    ) -> R<()> {
        let l = self.wide.lanes();
        let blocks = n / (nv * l);
        self.repeat(blocks, Ctl::Reg(r15, nv * l * 4), |asm| {
            block(asm, nv, false)
        })?;
        let co = blocks * nv * l;
        if co < n {
            self.a.mov(r15, disp(co * 4)? as i64)?;
            block(self, (n - co).div_ceil(l), !(n - co).is_multiple_of(l))?;
        }
        Ok(())
    }

    /// Asks for the cache line at `m`.
    pub fn prefetch(&mut self, m: M) -> R<()> {
        self.a.prefetcht0(byte_ptr(m.op()))?;
        Ok(())
    }
}

/// Vectors of output channels a tile of `tt` pixels keeps: `tt x nv` accumulators, `nv`
/// weight vectors and one input register within the registers (AVX2 keeps one for
/// the lane mask); more for short tiles, up to a block of 4 (AVX2) or 8 (AVX-512).
fn vectors(wide: Wide, tt: usize) -> usize {
    let cap = match wide {
        Wide::Avx2 => 4,
        Wide::Avx512 => 8,
    };
    ((wide.usable() - 1) / (tt + 1)).clamp(1, cap)
}

/// Sets of accumulators a product keeps where `accs` of them alone would leave the FMA
/// units waiting on each other: a set per row of an unrolled group of `unroll` rows, so
/// that at least eight chains are in flight, within the registers beside `others`.
fn sets(wide: Wide, accs: usize, others: usize, unroll: usize) -> usize {
    [4, 2]
        .into_iter()
        .find(|&s| accs < 8 && s <= unroll && s * accs + others <= wide.usable())
        .unwrap_or(1)
}

impl Asm {
    /// Adds accumulator sets `1..sets` (each `n` registers after the last) into set 0,
    /// pairwise.
    pub fn fold_sets(&mut self, sets: usize, n: usize) -> R<()> {
        let mut step = 1;
        while step < sets {
            for s in (0..sets).step_by(2 * step) {
                for r in 0..n {
                    self.binary(
                        elementwise::Binary::Add,
                        s * n + r,
                        s * n + r,
                        (s + step) * n + r,
                    )?;
                }
            }
            step *= 2;
        }
        Ok(())
    }
}

/// The vector registers an activation may use beside `live` ones: all others but
/// AVX2's lane mask.
fn spare(wide: Wide, live: &[usize]) -> Vec<usize> {
    (0..wide.usable()).filter(|r| !live.contains(r)).collect()
}

/// Whether `tape` fits in `free` (plus its input register): assembled once aside.
fn fits(wide: Wide, consts: &[u32], tape: &Tape, free: &[usize]) -> R<bool> {
    let mut trial = Asm::new(wide, false, consts.to_vec())?;
    let input = (0..32).find(|r| !free.contains(r)).unwrap_or(0);
    match trial.act(tape, input, free) {
        Ok(_) => Ok(true),
        Err(Refused::NoRoom) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Asm {
    /// Stores each `(register, address, partial)` of a block after applying the
    /// activation: in registers where it fits beside the block's accumulators, else
    /// on the stored vectors, reloaded one at a time (still in cache).
    pub fn store_all(&mut self, act: Option<&Tape>, outs: &[(usize, M, bool)]) -> R<()> {
        let live: Vec<usize> = outs.iter().map(|o| o.0).collect();
        let Some(tape) = act else {
            for &(r, at, part) in outs {
                self.store(at, r, part)?;
            }
            return Ok(());
        };
        if fits(self.wide, &self.consts, tape, &spare(self.wide, &live))? {
            // As many at once as the registers allow, so that their chains overlap.
            let mut k = 0;
            while k < outs.len() {
                let busy: Vec<usize> = outs[k..].iter().map(|o| o.0).collect();
                let free = spare(self.wide, &busy);
                let mut n = outs.len() - k;
                let work = loop {
                    let work: Vec<(&Tape, usize)> =
                        outs[k..k + n].iter().map(|o| (tape, o.0)).collect();
                    let mut trial = Asm::new(self.wide, false, self.consts.clone())?;
                    match trial.interleaved(&work, &free) {
                        Err(Refused::NoRoom) if n > 1 => n = n.div_ceil(2),
                        Err(e) => return Err(e),
                        Ok(_) => break work,
                    }
                };
                let ys = self.interleaved(&work, &free)?;
                for (&(_, at, part), y) in outs[k..k + n].iter().zip(ys) {
                    self.store(at, y, part)?;
                }
                k += n;
            }
            return Ok(());
        }
        for &(r, at, part) in outs {
            self.store(at, r, part)?;
        }
        for &(_, at, part) in outs {
            self.load(0, at, part)?;
            let y = self.act(tape, 0, &spare(self.wide, &[0]))?;
            self.store(at, y, part)?;
        }
        Ok(())
    }
}

/// The assembled kernel of a plan step whose output is `len` floats, and its table of
/// window starts where it has one, for the steps that have one: dense layers,
/// single-group convolutions valid on every axis, depthwise convolutions, pooling,
/// activations, merges, padding and cropping, and the steps of recurrent layers. `None`
/// also where an offset is too far for a displacement or an activation too large for
/// the registers: the step keeps its Cranelift code. With `panels`, the step's weights
/// are in the layout [`panels`] gives.
pub(super) fn assemble(
    kernel: &crate::plan::Kernel,
    len: usize,
    wide: Wide,
    counting: bool,
    panels: bool,
) -> crate::error::Result<Option<(Listing, Option<Vec<u32>>)>> {
    use crate::plan::Kernel;
    let listing = match kernel {
        Kernel::Dense { p, b, .. } => gemm::Gemm::dense(p, b.is_some())
            .map(|g| (g.assemble(wide, counting, panels), Some(g.table(wide)))),
        Kernel::Conv { p, b, .. } => match gemm::Gemm::conv(p, b.is_some()) {
            Some(g) => Some((g.assemble(wide, counting, panels), Some(g.table(wide)))),
            None => depthwise::Depthwise::new(p, b.is_some())
                .map(|d| (d.assemble(wide, counting), None)),
        },
        Kernel::Pool(p) => {
            depthwise::Depthwise::pool(p).map(|d| (d.assemble(wide, counting), None))
        }
        Kernel::GlobalPool(p) => Some((elementwise::GlobalPool(*p).assemble(wide, counting), None)),
        Kernel::Resample(p) => pad::Pad::new(p).map(|k| (k.assemble(wide, counting), None)),
        Kernel::Activation(act) => Some((
            elementwise::Activation { len, act: *act }.assemble(wide, counting),
            None,
        )),
        Kernel::Merge {
            fold,
            shape,
            strides,
        } => elementwise::Merge::new(*fold, shape, strides)
            .map(|m| (m.assemble(wide, counting), None)),
        Kernel::Recurrent { p, rb, .. } => {
            recurrent::Step::new(p).map(|s| (s.assemble(wide, rb.is_some(), counting), None))
        }
        _ => None,
    };
    let Some((listing, table)) = listing else {
        return Ok(None);
    };
    match listing {
        Ok(listing) => Ok(Some((listing, table))),
        Err(Refused::NoRoom | Refused::Far) => Ok(None),
        Err(e @ (Refused::Iced(_) | Refused::Unregistered(_))) => {
            Err(crate::error::Error::new(format!("the assembler: {e}")))
        }
    }
}

/// The weights of a step whose assembled kernel can read them in panels (dense layers
/// and convolutions whose outputs are whole vectors): `(weight, rows, n, lanes)`.
pub(super) fn panels(
    kernel: &crate::plan::Kernel,
    wide: Wide,
) -> Option<(crate::plan::WeightId, usize, usize, usize)> {
    use crate::plan::Kernel;
    let (g, w) = match kernel {
        Kernel::Dense { p, w, b } => (gemm::Gemm::dense(p, b.is_some())?, *w),
        Kernel::Conv { p, w, b } => (gemm::Gemm::conv(p, b.is_some())?, *w),
        _ => return None,
    };
    let (rows, n, l) = g.panels(wide)?;
    Some((w, rows, n, l))
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NoRoom => write!(f, "too few registers"),
            Refused::Far => write!(f, "an offset beyond 2 GiB"),
            Refused::Iced(e) => write!(f, "{e}"),
            Refused::Unregistered(bits) => {
                write!(f, "constant {:e} not in the frame", f32::from_bits(*bits))
            }
        }
    }
}

/// The constants an activation's assembled form keeps in the frame.
pub(super) fn act_constants(tape: Option<&Tape>) -> Vec<u32> {
    tape.map(act::constants).unwrap_or_default()
}
