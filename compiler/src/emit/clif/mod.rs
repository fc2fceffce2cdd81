//! Native code through Cranelift: the same [`Plan`] the Rust emitter reads, lowered to
//! one function per model (calling one local function per step), for an object file (x86-64, aarch64, riscv64) or for the
//! JIT behind `kerac run`, `check` and `bench`.
//!
//! The function is `int <prefix>_predict(const float *const *inputs, float *const
//! *outputs, void *scratch)`. It copies the inputs into the scratch buffer (the plan's
//! arena), runs every step with constant loop bounds and no data-dependent branch, and
//! copies the outputs out. Weights sit in read-only data inside the object, and the
//! object calls nothing outside itself: no libm, no runtime library.
//!
//! Cranelift has 128-bit vectors only; on x86-64 v3 and v4 the steps that do most of
//! the work call kernels assembled here at 256 or 512 bits (`asm`), local functions
//! of the same module.

// Laid out like the runtime's kernels: one file per kernel family, `dispatch` the one
// match on `Kernel`, and leaves (`fx`, `simd`, `window`; `tape` is `emit`'s) that import no family;
// `asm` holds the assembled x86-64 kernels, one file per listing.
mod act;
mod asm;
mod attention;
mod conv;
mod dense;
mod dispatch;
mod fpenv;
mod fx;
mod merge;
mod norm;
mod pool;
mod recurrent;
mod shape;
mod simd;
mod window;

use crate::bail;
use crate::error::{Error, Result};
use crate::plan::Plan;
pub use asm::Wide;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, Signature, UserFuncName};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, Linkage, Module};
pub use fx::Loop;
use fx::{Addr, Fx};
use ndarray::{ArrayD, IxDyn};

/// A machine an object file is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// x86-64 with SSE4.2 (x86-64-v2): 128-bit vectors, no FMA.
    X86_64,
    /// x86-64 with AVX2 and FMA (x86-64-v3): 128-bit vectors with fused multiply-add,
    /// and 256-bit assembled kernels for dense layers and convolutions.
    X86_64V3,
    /// x86-64 with AVX-512F (x86-64-v4): as v3, with 512-bit assembled kernels.
    X86_64V4,
    /// 64-bit ARM (NEON, FMA).
    Aarch64,
    /// 64-bit RISC-V, RV64GC: scalar floats with fused multiply-add.
    Riscv64,
}

impl Target {
    /// Every target, by the name the command line takes.
    pub const ALL: [(&'static str, Target); 5] = [
        ("x86_64", Target::X86_64),
        ("x86_64-v3", Target::X86_64V3),
        ("x86_64-v4", Target::X86_64V4),
        ("aarch64", Target::Aarch64),
        ("riscv64", Target::Riscv64),
    ];

    /// The target named `name` (as in [`Target::ALL`]), or `native`: this machine.
    pub fn from_name(name: &str) -> Option<Target> {
        if name == "native" {
            return Target::native();
        }
        Target::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
    }

    /// The target's name in [`Target::ALL`].
    pub fn name(self) -> &'static str {
        Target::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }

    /// This machine, where it is one of the targets.
    pub fn native() -> Option<Target> {
        if cfg!(target_arch = "aarch64") {
            return Some(Target::Aarch64);
        }
        if cfg!(target_arch = "riscv64") {
            return Some(Target::Riscv64);
        }
        if !cfg!(target_arch = "x86_64") {
            return None;
        }
        Some(match Wide::host() {
            Some(Wide::Avx512) => Target::X86_64V4,
            Some(Wide::Avx2) => Target::X86_64V3,
            None => Target::X86_64,
        })
    }

    /// The assembled kernels' vector extension, on x86-64 v3 and v4.
    pub fn wide(self) -> Option<Wide> {
        match self {
            Target::X86_64V3 => Some(Wide::Avx2),
            Target::X86_64V4 => Some(Wide::Avx512),
            _ => None,
        }
    }

    fn triple(self) -> &'static str {
        match self {
            Target::X86_64 | Target::X86_64V3 | Target::X86_64V4 => "x86_64-unknown-linux-gnu",
            Target::Aarch64 => "aarch64-unknown-linux-gnu",
            Target::Riscv64 => "riscv64gc-unknown-linux-gnu",
        }
    }

    fn features(self) -> &'static [&'static str] {
        const V2: [&str; 5] = [
            "has_sse3",
            "has_ssse3",
            "has_sse41",
            "has_sse42",
            "has_popcnt",
        ];
        const V3: [&str; 11] = [
            "has_sse3",
            "has_ssse3",
            "has_sse41",
            "has_sse42",
            "has_popcnt",
            "has_avx",
            "has_avx2",
            "has_fma",
            "has_bmi1",
            "has_bmi2",
            "has_lzcnt",
        ];
        match self {
            Target::X86_64 => &V2,
            // Cranelift's own code stays at 128 bits on v4 too: only the assembled
            // kernels use AVX-512.
            Target::X86_64V3 | Target::X86_64V4 => &V3,
            Target::Aarch64 | Target::Riscv64 => &[],
        }
    }

    /// Floats per vector and whether fused multiply-add is native.
    fn shape(self) -> (usize, bool) {
        match self {
            Target::X86_64 => (4, false),
            Target::X86_64V3 | Target::X86_64V4 | Target::Aarch64 => (4, true),
            Target::Riscv64 => (1, true),
        }
    }
}

fn flags(pic: bool) -> Result<settings::Flags> {
    let mut b = settings::builder();
    let set = |b: &mut settings::Builder, k: &str, v: &str| {
        b.set(k, v)
            .map_err(|e| Error::new(format!("Cranelift setting {k}={v}: {e}")))
    };
    set(&mut b, "opt_level", "speed")?;
    set(&mut b, "is_pic", if pic { "true" } else { "false" })?;
    // The code calls no function, so it needs no libcall at any distance.
    set(&mut b, "use_colocated_libcalls", "false")?;
    Ok(settings::Flags::new(b))
}

fn isa_for(target: Target) -> Result<OwnedTargetIsa> {
    let mut b = cranelift_codegen::isa::lookup_by_name(target.triple())
        .map_err(|e| Error::new(format!("target {}: {e}", target.triple())))?;
    for f in target.features() {
        b.enable(f)
            .map_err(|e| Error::new(format!("target feature {f}: {e}")))?;
    }
    b.finish(flags(true)?)
        .map_err(|e| Error::new(format!("target {}: {e}", target.triple())))
}

/// The machine code of each step's assembled kernel for `wide`, with how many loops it
/// has: `(step, code, loops)`, for the steps that have one. What the objects and the
/// JIT call, for checks that read the code itself (every branch closes a loop).
pub fn assembled_kernels(plan: &Plan, wide: Wide) -> Result<Vec<(usize, Vec<u8>, usize)>> {
    let (listings, _) = listings(plan, Some(wide), false)?;
    Ok(listings
        .into_iter()
        .enumerate()
        .filter_map(|(k, l)| l.map(|(listing, _)| (k, listing.bytes, listing.loops.len())))
        .collect())
}

/// An assembled kernel and its table of window starts, where it has one.
type Assembly = (asm::Listing, Option<Vec<u32>>);

/// Each step's assembled kernel for `wide` (none without), and the weights as the
/// object holds them: in panels for the products whose kernels read them so, where
/// no other step reads them.
fn listings(
    plan: &Plan,
    wide: Option<Wide>,
    counting: bool,
) -> Result<(Vec<Option<Assembly>>, Vec<u8>)> {
    if plan.has_runtime_panels() {
        bail!("this plan holds weights in the runtime kernels' panels, which the native code does not read");
    }
    let mut uses = vec![0usize; plan.weights.len()];
    for step in &plan.steps {
        for w in step.kernel.weights() {
            uses[w] += 1;
        }
    }
    let mut listings = Vec::with_capacity(plan.steps.len());
    let mut blob = plan.weight_blob();
    for (k, step) in plan.steps.iter().enumerate() {
        let len = plan.buffers[step.output].len;
        let Some(w) = wide else {
            listings.push(None);
            continue;
        };
        let panels = asm::panels(&step.kernel, w)
            .filter(|&(id, rows, n, _)| uses[id] == 1 && plan.weights[id].data.len() == rows * n);
        match asm::assemble(&step.kernel, len, w, counting, panels.is_some()) {
            Err(e) => bail!("assembling step {k} ({}): {e}", step.layers),
            Ok(None) => listings.push(None),
            Ok(Some(listing)) => {
                if let Some((id, rows, n, l)) = panels {
                    let weight = &plan.weights[id];
                    let at = weight.offset * 4;
                    for (i, f) in crate::plan::pack::to_panels(&weight.data, rows, n, l)
                        .iter()
                        .enumerate()
                    {
                        blob[at + 4 * i..at + 4 * i + 4].copy_from_slice(&f.to_le_bytes());
                    }
                }
                listings.push(Some(listing));
            }
        }
    }
    Ok((listings, blob))
}

pub use super::header::{scratch_bytes, SCRATCH_ALIGN};

/// What [`define`] made: the functions and the loops of each.
struct Defined {
    predict: cranelift_module::FuncId,
    steps: Vec<cranelift_module::FuncId>,
    /// The loops of each step's function, in emission order.
    loops: Vec<Vec<Loop>>,
    /// The loops of `predict` itself: copying inputs in and outputs out.
    io_loops: Vec<Loop>,
}

/// Declares and defines `<prefix>_predict`, one local function `<prefix>_step<k>` per
/// plan step (so that profilers and WCET tools see each step under its own symbol),
/// and the weights, in `module`. With `counting`, every loop body also counts its
/// runs in 64-bit counters after the arena ([`counting_scratch_bytes`]).
fn define<M: Module>(
    module: &mut M,
    plan: &Plan,
    prefix: &str,
    lanes: usize,
    fma: bool,
    wide: Option<Wide>,
    counting: bool,
) -> Result<Defined> {
    let backend = |e: cranelift_module::ModuleError| Error::new(format!("Cranelift: {e}"));
    // A model without weights gets no data object (a zero-length one would not be
    // emitted); its steps never read the base they are given.
    let (mut listings, blob) = listings(plan, wide, counting)?;
    let data = if blob.is_empty() {
        None
    } else {
        let data = module
            .declare_data(&format!("{prefix}_weights"), Linkage::Local, false, false)
            .map_err(backend)?;
        let mut desc = DataDescription::new();
        desc.define(blob.into_boxed_slice());
        desc.set_align((crate::plan::WEIGHT_ALIGN_FLOATS * 4) as u64);
        module.define_data(data, &desc).map_err(backend)?;
        Some(data)
    };

    let ptr = module.target_config().pointer_type();
    let call_conv = CallConv::triple_default(module.isa().triple());
    let counter_base = scratch_bytes(plan).div_ceil(8) * 8 / 4;
    let mut tapes = Vec::new();
    let mut loops = Vec::new();
    let mut steps = Vec::new();
    let mut counted = 0;
    let mut fctx = FunctionBuilderContext::new();
    for (k, step) in plan.steps.iter().enumerate() {
        let mut sig = Signature::new(call_conv);
        sig.params.push(AbiParam::new(ptr));
        let func = module
            .declare_function(&format!("{prefix}_step{k}"), Linkage::Local, &sig)
            .map_err(backend)?;
        let mut ctx = Context::new();
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, func.as_u32());
        let gv = data.map(|data| module.declare_data_in_func(data, &mut ctx.func));
        let assembled = match listings[k].take() {
            None => None,
            Some((listing, table)) => {
                let mut ksig = Signature::new(call_conv);
                ksig.params.extend([AbiParam::new(ptr); 6]);
                let kf = module
                    .declare_function(&format!("{prefix}_step{k}_kernel"), Linkage::Local, &ksig)
                    .map_err(backend)?;
                module
                    .define_function_bytes(kf, 64, &listing.bytes, &[])
                    .map_err(backend)?;
                let table = match table {
                    Some(starts) => {
                        let data = module
                            .declare_data(
                                &format!("{prefix}_step{k}_pixels"),
                                Linkage::Local,
                                false,
                                false,
                            )
                            .map_err(backend)?;
                        let mut desc = DataDescription::new();
                        let bytes: Vec<u8> = starts.iter().flat_map(|s| s.to_le_bytes()).collect();
                        desc.define(bytes.into_boxed_slice());
                        desc.set_align(64);
                        module.define_data(data, &desc).map_err(backend)?;
                        Some(module.declare_data_in_func(data, &mut ctx.func))
                    }
                    None => None,
                };
                Some(fx::Assembled {
                    func: module.declare_func_in_func(kf, &mut ctx.func),
                    table,
                    loops: listing.loops,
                })
            }
        };
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let scratch = b.block_params(entry)[0];
        let wbase = match gv {
            Some(gv) => b.ins().symbol_value(ptr, gv),
            None => b.ins().iconst(ptr, 0),
        };
        let mut fx = Fx {
            b,
            lanes,
            fma,
            arena: scratch,
            weights: wbase,
            tapes: std::mem::take(&mut tapes),
            loops: Vec::new(),
            depth: 0,
            counters: counting.then_some((
                Addr {
                    base: scratch,
                    off: counter_base as i64,
                },
                counted,
            )),
            assembled,
        };
        dispatch::step(&mut fx, plan, step);
        fx.b.ins().return_(&[]);
        fx.b.finalize(module.target_config());
        tapes = fx.tapes;
        counted += fx.loops.len();
        loops.push(fx.loops);
        module
            .define_function(func, &mut ctx)
            .map_err(|e| Error::new(format!("Cranelift: {e:?}")))?;
        steps.push(func);
    }

    let mut sig = Signature::new(call_conv);
    sig.params.extend([AbiParam::new(ptr); 3]);
    sig.returns.push(AbiParam::new(types::I32));
    let func = module
        .declare_function(&format!("{prefix}_predict"), Linkage::Export, &sig)
        .map_err(backend)?;
    let mut ctx = Context::new();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, func.as_u32());
    let calls: Vec<_> = steps
        .iter()
        .map(|&f| module.declare_func_in_func(f, &mut ctx.func))
        .collect();
    // Subnormals flushed while the model runs, where the target can ([`fpenv`]).
    let fp = match fpenv::functions(&module.isa().triple().architecture.to_string())? {
        None => None,
        Some((enter_code, leave_code)) => {
            let mut enter_sig = Signature::new(call_conv);
            enter_sig.returns.push(AbiParam::new(types::I64));
            let mut leave_sig = Signature::new(call_conv);
            leave_sig.params.push(AbiParam::new(types::I64));
            let mut declare = |name: &str, sig: &Signature, code: &[u8]| {
                let f = module
                    .declare_function(&format!("{prefix}_{name}"), Linkage::Local, sig)
                    .map_err(backend)?;
                module
                    .define_function_bytes(f, 16, code, &[])
                    .map_err(backend)?;
                Ok::<_, Error>(module.declare_func_in_func(f, &mut ctx.func))
            };
            let enter = declare("fp_enter", &enter_sig, &enter_code)?;
            let leave = declare("fp_leave", &leave_sig, &leave_code)?;
            Some((enter, leave))
        }
    };
    let io_loops = {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let [inputs, outputs, scratch] = [0, 1, 2].map(|i| b.block_params(entry)[i]);
        let old_fp = fp.map(|(enter, _)| {
            let call = b.ins().call(enter, &[]);
            b.inst_results(call)[0]
        });
        let mut fx = Fx {
            b,
            lanes,
            fma,
            arena: scratch,
            weights: scratch,
            tapes: Vec::new(),
            loops: Vec::new(),
            depth: 0,
            counters: None,
            assembled: None,
        };
        let arena = |off: usize| Addr {
            base: scratch,
            off: off as i64,
        };
        for (i, port) in plan.inputs.iter().enumerate() {
            let v = &plan.buffers[port.buffer];
            let p = fx.b.ins().load(ptr, fx::trusted(), inputs, (i * 8) as i32);
            simd::copy(&mut fx, Addr { base: p, off: 0 }, arena(v.offset), v.len);
        }
        for &call in &calls {
            fx.b.ins().call(call, &[scratch]);
        }
        for (i, port) in plan.outputs.iter().enumerate() {
            let v = &plan.buffers[port.buffer];
            let p = fx.b.ins().load(ptr, fx::trusted(), outputs, (i * 8) as i32);
            simd::copy(&mut fx, arena(v.offset), Addr { base: p, off: 0 }, v.len);
        }
        if let (Some((_, leave)), Some(old)) = (fp, old_fp) {
            fx.b.ins().call(leave, &[old]);
        }
        let ok = fx.b.ins().iconst(types::I32, 0);
        fx.b.ins().return_(&[ok]);
        fx.b.finalize(module.target_config());
        fx.loops
    };
    module
        .define_function(func, &mut ctx)
        .map_err(|e| Error::new(format!("Cranelift: {e:?}")))?;
    Ok(Defined {
        predict: func,
        steps,
        loops,
        io_loops,
    })
}

/// Scratch bytes of a counting build ([`Jit::counting`]): the arena, then one 64-bit
/// counter per loop.
fn counting_scratch_bytes(plan: &Plan, loops: usize) -> usize {
    scratch_bytes(plan).div_ceil(8) * 8 + 8 * loops
}

/// An object file with `<prefix>_predict` for `target`.
pub fn object(plan: &Plan, target: Target, prefix: &str) -> Result<Vec<u8>> {
    check_prefix(prefix)?;
    let isa = isa_for(target)?;
    let builder = cranelift_object::ObjectBuilder::new(
        isa,
        prefix.as_bytes().to_vec(),
        cranelift_module::default_libcall_names(),
    )
    .map_err(|e| Error::new(format!("Cranelift: {e}")))?;
    let mut module = cranelift_object::ObjectModule::new(builder);
    let (lanes, fma) = target.shape();
    define(&mut module, plan, prefix, lanes, fma, target.wide(), false)?;
    let product = module.finish();
    let bytes = product
        .emit()
        .map_err(|e| Error::new(format!("writing the object: {e}")))?;
    let undefined = undefined_symbols(&bytes)?;
    if !undefined.is_empty() {
        bail!(
            "the object for {target:?} would need symbols from elsewhere: {}",
            undefined.join(", ")
        );
    }
    Ok(bytes)
}

/// The symbols an object file uses but does not define: none, for kerac's objects.
pub fn undefined_symbols(object: &[u8]) -> Result<Vec<String>> {
    use cranelift_object::object::{Object, ObjectSymbol};
    let file = cranelift_object::object::File::parse(object)
        .map_err(|e| Error::new(format!("reading the object: {e}")))?;
    Ok(file
        .symbols()
        .filter(|s| s.is_undefined() && !s.name().unwrap_or("").is_empty())
        .map(|s| s.name().unwrap_or("?").to_string())
        .collect())
}

/// The size in bytes of each data symbol `object` defines, by name: for `<prefix>_weights`
/// this is the weight blob, [`Plan::weight_bytes`].
pub fn data_sizes(object: &[u8]) -> Result<Vec<(String, u64)>> {
    use cranelift_object::object::{Object, ObjectSymbol, SymbolKind};
    let file = cranelift_object::object::File::parse(object)
        .map_err(|e| Error::new(format!("reading the object: {e}")))?;
    Ok(file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Data && s.is_definition())
        .map(|s| (s.name().unwrap_or("?").to_string(), s.size()))
        .collect())
}

fn check_prefix(prefix: &str) -> Result<()> {
    let ok = prefix
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::new(format!(
            "prefix `{prefix}` is not a C identifier (letters, digits and `_`, not starting with a digit)"
        )))
    }
}

/// A cache line of scratch memory: the scratch buffer is [`SCRATCH_ALIGN`]-aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; SCRATCH_ALIGN]);

/// A model compiled in memory for this machine.
pub struct Jit {
    // Owns the executable memory `predict` points into.
    module: Option<cranelift_jit::JITModule>,
    predict: extern "C" fn(*const *const f32, *const *mut f32, *mut u8) -> i32,
    steps: Vec<extern "C" fn(*mut u8)>,
    loops: Vec<Vec<Loop>>,
    io_loops: Vec<Loop>,
    /// Bytes of scratch before the loop counters of a counting build.
    counters_at: Option<usize>,
    scratch: Vec<Line>,
    input_lens: Vec<usize>,
    output_lens: Vec<usize>,
    output_shapes: Vec<Vec<usize>>,
    // Pointer tables filled on each call, kept so that a call allocates nothing.
    in_ptrs: Vec<*const f32>,
    out_ptrs: Vec<*mut f32>,
}

impl Jit {
    /// Compiles `plan` for the host, with assembled kernels of its widest vectors
    /// ([`Wide::host`]).
    pub fn new(plan: &Plan) -> Result<Jit> {
        Jit::with(plan, Wide::host(), false)
    }

    /// Compiles `plan` for the host with a counter in every loop body, to check the
    /// loop bounds [`Jit::loops`] reports against what runs ([`Jit::loop_runs`]).
    pub fn counting(plan: &Plan) -> Result<Jit> {
        Jit::with(plan, Wide::host(), true)
    }

    /// Compiles `plan` for the host with the assembled kernels of `wide` (none: all
    /// Cranelift code), which the host must run; `counting` as for [`Jit::counting`].
    pub fn with(plan: &Plan, wide: Option<Wide>, counting: bool) -> Result<Jit> {
        if let Some(w) = wide {
            if Wide::host().is_none_or(|h| h == Wide::Avx2 && w == Wide::Avx512) {
                bail!("this machine does not run {w:?}");
            }
        }
        Jit::build(plan, wide, counting)
    }

    fn build(plan: &Plan, wide: Option<Wide>, counting: bool) -> Result<Jit> {
        let host = cranelift_native::builder()
            .map_err(|e| Error::new(format!("this machine has no Cranelift backend: {e}")))?;
        let isa = host
            .finish(flags(false)?)
            .map_err(|e| Error::new(format!("Cranelift: {e}")))?;
        let fma = cfg!(target_arch = "aarch64") || cfg!(target_arch = "riscv64") || host_has_fma();
        let lanes = if cfg!(target_arch = "riscv64") { 1 } else { 4 };
        let mut module = cranelift_jit::JITModule::new(cranelift_jit::JITBuilder::with_isa(
            isa,
            cranelift_module::default_libcall_names(),
        ));
        let defined = define(&mut module, plan, "kerac", lanes, fma, wide, counting)?;
        module
            .finalize_definitions()
            .map_err(|e| Error::new(format!("Cranelift: {e}")))?;
        let code = module.get_finalized_function(defined.predict);
        // SAFETY: `code` is the function just defined with the signature
        // (ptr, ptr, ptr) -> i32 in the platform's C calling convention, and the
        // module that owns its memory lives as long as `self`.
        let predict = unsafe {
            std::mem::transmute::<
                *const u8,
                extern "C" fn(*const *const f32, *const *mut f32, *mut u8) -> i32,
            >(code)
        };
        let steps = defined
            .steps
            .iter()
            .map(|&f| {
                let code = module.get_finalized_function(f);
                // SAFETY: each step is a function (ptr) -> () in the platform's C
                // calling convention, owned by the module `self` keeps.
                unsafe { std::mem::transmute::<*const u8, extern "C" fn(*mut u8)>(code) }
            })
            .collect();
        let total_loops = defined.loops.iter().map(Vec::len).sum();
        let bytes = if counting {
            counting_scratch_bytes(plan, total_loops)
        } else {
            scratch_bytes(plan)
        };
        Ok(Jit {
            module: Some(module),
            predict,
            steps,
            loops: defined.loops,
            io_loops: defined.io_loops,
            counters_at: counting.then(|| scratch_bytes(plan).div_ceil(8) * 8),
            scratch: vec![Line([0; SCRATCH_ALIGN]); bytes.div_ceil(SCRATCH_ALIGN)],
            input_lens: plan
                .inputs
                .iter()
                .map(|p| plan.buffers[p.buffer].len)
                .collect(),
            output_lens: plan
                .outputs
                .iter()
                .map(|p| plan.buffers[p.buffer].len)
                .collect(),
            output_shapes: plan.outputs.iter().map(|p| p.shape.clone()).collect(),
            in_ptrs: vec![std::ptr::null(); plan.inputs.len()],
            out_ptrs: vec![std::ptr::null_mut(); plan.outputs.len()],
        })
    }

    /// The loops of each step's code, in emission order, with constant trip counts.
    pub fn loops(&self) -> &[Vec<Loop>] {
        &self.loops
    }

    /// The loops of `predict` around the steps: copying inputs in and outputs out.
    pub fn io_loops(&self) -> &[Loop] {
        &self.io_loops
    }

    /// Runs step `k` alone on whatever the scratch memory holds: the instructions it
    /// executes do not depend on the data, so this is how one step is measured.
    /// Subnormals are flushed, as `predict` flushes them. Steps past the last do
    /// nothing.
    pub fn run_step(&mut self, k: usize) {
        if let Some(step) = self.steps.get(k) {
            // The scratch buffer is at least `scratch_bytes(plan)` long: all a step
            // touches besides its own weights.
            kerac::fp::flushed(|| step(self.scratch.as_mut_ptr().cast()));
        }
    }

    /// In a counting build, how many times each loop body has run since the build,
    /// steps in order and loops in emission order (as [`Jit::loops`] lists them).
    pub fn loop_runs(&self) -> Option<Vec<u64>> {
        let at = self.counters_at?;
        let total: usize = self.loops.iter().map(Vec::len).sum();
        // SAFETY: a counting build's scratch holds `total` u64 counters from `at`,
        // which is a multiple of 8 inside a buffer of cache lines.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts(
                self.scratch.as_ptr().cast(),
                self.scratch.len() * SCRATCH_ALIGN,
            )
        };
        Some(
            (0..total)
                .map(|i| {
                    let b = &bytes[at + 8 * i..at + 8 * i + 8];
                    u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
                })
                .collect(),
        )
    }

    /// Runs the model on flat buffers in Keras's order; their counts and lengths are
    /// checked first.
    pub fn run(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<()> {
        let lens_match = inputs.len() == self.input_lens.len()
            && outputs.len() == self.output_lens.len()
            && inputs
                .iter()
                .zip(&self.input_lens)
                .all(|(x, &n)| x.len() == n)
            && outputs
                .iter()
                .zip(&self.output_lens)
                .all(|(y, &n)| y.len() == n);
        if !lens_match {
            bail!(
                "buffers of {:?} -> {:?} floats given, the model takes {:?} -> {:?}",
                inputs.iter().map(|x| x.len()).collect::<Vec<_>>(),
                outputs.iter().map(|y| y.len()).collect::<Vec<_>>(),
                self.input_lens,
                self.output_lens
            );
        }
        for (p, x) in self.in_ptrs.iter_mut().zip(inputs) {
            *p = x.as_ptr();
        }
        for (p, y) in self.out_ptrs.iter_mut().zip(outputs.iter_mut()) {
            *p = y.as_mut_ptr();
        }
        // SAFETY: every buffer has the length the plan gives it (checked above), and
        // the scratch buffer is `scratch_bytes(plan)` long; the code touches nothing
        // else.
        let rc = (self.predict)(
            self.in_ptrs.as_ptr(),
            self.out_ptrs.as_ptr(),
            self.scratch.as_mut_ptr().cast(),
        );
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::new(format!("the compiled model returned {rc}")))
        }
    }
}

impl Jit {
    /// Runs the model on arrays shaped as the plan's inputs (batch first), as
    /// [`crate::plan::exec::run`] does.
    pub fn run_arrays(&mut self, inputs: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
        let flat: Vec<Vec<f32>> = inputs.iter().map(|x| x.iter().copied().collect()).collect();
        let ins: Vec<&[f32]> = flat.iter().map(Vec::as_slice).collect();
        let mut outs: Vec<Vec<f32>> = self.output_lens.iter().map(|&n| vec![0.0; n]).collect();
        let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        self.run(&ins, &mut views)?;
        outs.into_iter()
            .zip(&self.output_shapes)
            .map(|(data, shape)| {
                ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| Error::new(e.to_string()))
            })
            .collect()
    }
}

impl Jit {
    /// Runs `plan` (the plan this was compiled from) one step function at a time,
    /// calling `after_step(k, arena)` once step `k` has run: the arena then holds the
    /// values of the step's [`crate::plan::Step::taps`].
    pub fn run_observed(
        &mut self,
        plan: &Plan,
        inputs: &[ArrayD<f32>],
        mut after_step: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        if plan.steps.len() != self.steps.len()
            || self.scratch.len() * SCRATCH_ALIGN < scratch_bytes(plan)
            || inputs.len() != plan.inputs.len()
        {
            bail!("the inputs or the plan do not fit this compiled model");
        }
        let floats = plan.arena_floats;
        // SAFETY: the scratch holds at least `arena_floats` floats (checked above),
        // cache-line-aligned, and nothing else borrows it while this slice lives.
        let arena =
            unsafe { std::slice::from_raw_parts_mut(self.scratch.as_mut_ptr().cast(), floats) };
        crate::plan::exec::write_inputs(plan, arena, inputs)?;
        for k in 0..self.steps.len() {
            self.run_step(k);
            // SAFETY: as above; the step has returned, so its writes are done.
            let arena =
                unsafe { std::slice::from_raw_parts(self.scratch.as_ptr().cast::<f32>(), floats) };
            after_step(k, arena);
        }
        Ok(())
    }

    /// Forgets a streaming model's recurrent state (zeroes the scratch memory, which
    /// holds it): the next call starts a new sequence.
    pub fn reset_state(&mut self) {
        self.scratch.fill(Line([0; SCRATCH_ALIGN]));
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: `predict` is not called after this: `self` is being dropped.
            unsafe { m.free_memory() };
        }
    }
}

fn host_has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
