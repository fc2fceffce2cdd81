//! C99 from a [`Plan`]: for every chip with a C compiler, microcontrollers first
//! (Cortex-M, 32-bit RISC-V), where Cranelift has no backend.
//!
//! The file defines `<prefix>_predict` with the signature of the object file's, so the
//! same header ([`super::header`]) goes with it. One `static` function per step,
//! named and commented after its Keras layers, with every size a literal: every loop
//! bound is a constant, and the only conditions are on loop indices (taps that fall in
//! padding), never on values. Weights are `static const float` arrays (flash on a
//! microcontroller); activations live in the caller's scratch memory at the arena
//! plan's offsets. There is no allocation, recursion, function pointer or libm:
//! activations are the runtime's own polynomials, traced ([`super::clif`]'s tapes) and
//! written out operation by operation, in the same order.

use super::tape::{Tape, TapeOp};
use crate::bail;
use crate::error::Result;
use crate::plan::{Kernel, Plan, Step};
use kerac::merge::{Fold, RANK};
use kerac::recurrent::Cell;
use kerac::{Act, Window};
use std::fmt::Write;

/// What the header names as the target of C output.
pub const TARGET: &str = "C99";

/// Largest size, offset or index the generated code computes, so that `int` (32 bits
/// on every target C runs on here) never overflows.
const INDEX_LIMIT: usize = 1 << 30;

/// C99 source for `plan`, with symbols `<prefix>_...`; `source` names the model file in
/// the opening comment.
pub fn source(plan: &Plan, prefix: &str, source: &str) -> Result<String> {
    if plan.has_runtime_panels() {
        bail!("{source}: this plan holds weights in the runtime kernels' panels, which the C does not read");
    }
    check_sizes(plan, source)?;
    let mut c = C::new(prefix, false);
    let mut steps = String::new();
    for (k, step) in plan.steps.iter().enumerate() {
        steps.push_str(&c.step(plan, k, step)?);
        steps.push('\n');
    }
    let mut out = String::new();
    let p = &c.p;
    let _ = writeln!(
        out,
        "/* {p}.c: the Keras model `{}` compiled by kerac {} to C99.\n *\n * Source: {source}\n *\n * Compile it with any C99 compiler; it needs no libm and no runtime library. The\n * code allocates nothing, has no data-dependent branch, and every loop in it runs a\n * constant number of times. The header kerac wrote beside it declares the entry\n * point and the sizes. */\n",
        plan.name,
        env!("CARGO_PKG_VERSION"),
    );
    let body = format!("{}{steps}", c.helpers);
    out.push_str(&prelude(&body));
    out.push_str(FP_ENV);
    out.push('\n');
    let _ = writeln!(
        out,
        "int {p}_predict(const float *const *inputs, float *const *outputs, void *scratch);\n"
    );
    out.push_str(&c.helpers);
    out.push_str(&weights(plan, p));
    out.push_str(&steps);
    out.push_str(&predict(plan, p));
    Ok(out)
}

/// The C program that runs a compiled model on samples from a file and writes its
/// outputs, driven only by the header (`harness INPUTS OUTPUTS SAMPLES [RESET_EVERY]`).
pub const HARNESS: &str = include_str!("harness.c");

/// Where [`HARNESS`] is, for programs built outside the compiler.
pub const HARNESS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/emit/harness.c");

/// A plan's C compiled by the host's C compiler (`$CC`, or `cc`) into [`HARNESS`]:
/// what `kerac run` and `check` run with `--backend c`, so the C a user ships can be
/// checked against Keras before it goes to the board. With `cuda`, the plan's CUDA
/// C++ compiled for the CPU by `$CXX` (or `c++`) instead (`--backend cuda`). The
/// folder goes when it is dropped.
pub struct HostProgram {
    dir: std::path::PathBuf,
    inputs: Vec<usize>,
    outputs: Vec<(usize, Vec<usize>)>,
}

impl HostProgram {
    /// Writes the plan's C, its header and the harness into a fresh temporary folder
    /// and compiles them with warnings as errors.
    pub fn build(plan: &Plan, params: usize, source_name: &str, cuda: bool) -> Result<HostProgram> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let io = |e: std::io::Error| crate::error::Error::new(format!("C backend: {e}"));
        let dir = std::env::temp_dir().join(format!(
            "kerac-c-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let program = HostProgram {
            dir: dir.clone(),
            inputs: plan
                .inputs
                .iter()
                .map(|p| plan.buffers[p.buffer].len)
                .collect(),
            outputs: plan
                .outputs
                .iter()
                .map(|p| (plan.buffers[p.buffer].len, p.shape.clone()))
                .collect(),
        };
        let info = super::header::HeaderInfo {
            prefix: "net",
            source: source_name,
            target: if cuda { super::cuda::TARGET } else { TARGET },
            params,
        };
        std::fs::write(dir.join("model.h"), super::header::header(plan, &info)).map_err(io)?;
        if cuda {
            let text = super::cuda::source(plan, "net", source_name)?;
            std::fs::write(dir.join("model.cu"), text).map_err(io)?;
        } else {
            std::fs::write(dir.join("model.c"), source(plan, "net", source_name)?).map_err(io)?;
        }
        std::fs::write(dir.join("harness.c"), HARNESS).map_err(io)?;
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let compile = |cc: &str, args: &[&str]| -> Result<()> {
            let out = std::process::Command::new(cc)
                .args(args)
                .current_dir(&dir)
                .output()
                .map_err(|e| {
                    crate::error::Error::new(format!("C backend: cannot run `{cc}`: {e}"))
                })?;
            if !out.status.success() {
                bail!(
                    "C backend: `{cc}` failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        if cuda {
            let mut args = super::cuda::HOST_CXX_FLAGS.to_vec();
            args.extend(["-O2", "-c", "model.cu", "-o", "model.o"]);
            compile(&cxx, &args)?;
        } else {
            let mut args = vec!["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"];
            args.extend(["-O2", "-c", "model.c", "-o", "model.o"]);
            compile(&cc, &args)?;
        }
        compile(&cc, &["-O2", "harness.c", "model.o", "-o", "harness"])?;
        Ok(program)
    }

    /// Runs one call on `inputs` (in Keras's order, each of its port's shape).
    pub fn run_arrays(&self, inputs: &[ndarray::ArrayD<f32>]) -> Result<Vec<ndarray::ArrayD<f32>>> {
        let io = |e: std::io::Error| crate::error::Error::new(format!("C backend: {e}"));
        if inputs.len() != self.inputs.len()
            || inputs.iter().zip(&self.inputs).any(|(x, &n)| x.len() != n)
        {
            bail!("the C program takes inputs of {:?} floats", self.inputs);
        }
        let bytes: Vec<u8> = inputs
            .iter()
            .flat_map(|x| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())
            .collect();
        std::fs::write(self.dir.join("inputs.bin"), bytes).map_err(io)?;
        let out = std::process::Command::new(self.dir.join("harness"))
            .args(["inputs.bin", "outputs.bin", "1"])
            .current_dir(&self.dir)
            .output()
            .map_err(io)?;
        if !out.status.success() {
            bail!(
                "C backend: the program failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let raw = std::fs::read(self.dir.join("outputs.bin")).map_err(io)?;
        let floats: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut at = 0;
        self.outputs
            .iter()
            .map(|(n, shape)| {
                let v = floats.get(at..at + n).unwrap_or_default().to_vec();
                at += n;
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), v)
                    .map_err(|e| crate::error::Error::new(format!("C backend: {e}")))
            })
            .collect()
    }
}

impl Drop for HostProgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Refuses plans whose sizes the generated `int` arithmetic cannot hold, naming the
/// step (its Keras layers) that needs the largest index.
pub(super) fn check_sizes(plan: &Plan, source: &str) -> Result<()> {
    let reach = |w: &Window| {
        w.output
            .saturating_mul(w.stride)
            .saturating_add(w.kernel.saturating_mul(w.dilation))
            .saturating_add(w.input)
            .saturating_add(w.pad_before)
    };
    let step_reach = |s: &Step| {
        let windows: &[Window] = match &s.kernel {
            Kernel::Conv { p, .. } => &p.windows,
            Kernel::ConvTranspose { p, .. } => &p.windows,
            Kernel::Pool(p) => &p.windows,
            _ => &[],
        };
        let weights = s
            .kernel
            .weights()
            .into_iter()
            .map(|id| plan.weights[id].data.len());
        let buffers = s
            .inputs
            .iter()
            .chain([&s.output])
            .map(|&b| plan.buffers[b].len);
        windows
            .iter()
            .map(reach)
            .chain(weights)
            .chain(buffers)
            .max()
            .unwrap_or(0)
    };
    let worst = plan
        .steps
        .iter()
        .map(|s| (step_reach(s), s))
        .max_by_key(|(r, _)| *r);
    if let Some((largest, step)) = worst.filter(|(r, _)| *r >= INDEX_LIMIT) {
        return Err(crate::error::Error::new(format!(
            "step `{}` ({}) needs indices up to {largest}; the C backend computes them in 32-bit `int` and takes sizes below {INDEX_LIMIT}",
            step.layers,
            step.kernel.name()
        ))
        .in_file(std::path::Path::new(source)));
    }
    Ok(())
}

/// The prelude's definitions `body` needs, directly or through another: an unused
/// `static` function would warn.
pub(super) fn prelude(body: &str) -> String {
    let chunks: Vec<&str> = PRELUDE.split("\n\n").collect();
    let name = |chunk: &str| {
        let line = chunk.lines().find(|l| l.starts_with("static inline"))?;
        let head = line.split('(').next()?;
        head.split_whitespace().last().map(str::to_string)
    };
    let mut keep: Vec<bool> = chunks.iter().map(|c| name(c).is_none()).collect();
    loop {
        let text: String = chunks
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(c, _)| *c)
            .chain([body])
            .collect();
        let mut changed = false;
        for (i, chunk) in chunks.iter().enumerate() {
            if !keep[i] && name(chunk).is_some_and(|n| mentions(&text, &n)) {
                keep[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut out: String = chunks
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(c, _)| c.trim_end().to_string() + "\n\n")
        .collect();
    out.truncate(out.trim_end().len());
    out.push_str("\n\n");
    out
}

/// Bit-level helpers the traced activations use: the scalar lane operations of the
/// runtime (`kerac::lanes::S`), with masks as all-ones floats and selects as bit blends.
const PRELUDE: &str = r#"#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define KERAC_ALIGN __attribute__((aligned(16)))
#define KERAC_NAN __builtin_nanf("")
#define KERAC_INF __builtin_inff()
#else
#define KERAC_ALIGN
#define KERAC_NAN (0.0f / 0.0f)
#define KERAC_INF (1.0f / 0.0f)
#endif

typedef union {
    float f;
    uint32_t u;
} kerac_bits;

static inline uint32_t kerac_to_bits(float f) {
    kerac_bits b;
    b.f = f;
    return b.u;
}

static inline float kerac_from_bits(uint32_t u) {
    kerac_bits b;
    b.u = u;
    return b.f;
}

/* All ones where c holds: the lane masks of the runtime. */
static inline float kerac_mask(int c) {
    return kerac_from_bits(0u - (uint32_t)(c != 0));
}

/* m ? a : b per bit, with no branch. */
static inline float kerac_select(float m, float a, float b) {
    uint32_t k = kerac_to_bits(m);
    return kerac_from_bits((kerac_to_bits(a) & k) | (kerac_to_bits(b) & ~k));
}

/* a > b ? a : b, the semantics of x86 maxps, as the runtime's fmax. */
static inline float kerac_max(float a, float b) {
    return kerac_select(kerac_mask(a > b), a, b);
}

/* a < b ? a : b, as the runtime's fmin. */
static inline float kerac_min(float a, float b) {
    return kerac_select(kerac_mask(a < b), a, b);
}

/* Truncation toward zero as an integer; out of range (NaN too) gives INT32_MIN, as
 * x86's cvttss2si, instead of C's undefined behaviour. */
static inline int32_t kerac_trunc_i32(float x) {
    uint32_t inside = 0u - (uint32_t)(x > -2147483648.0f && x < 2147483648.0f);
    int32_t t = (int32_t)kerac_select(kerac_from_bits(inside), x, 0.0f);
    return (int32_t)(((uint32_t)t & inside) | (0x80000000u & ~inside));
}

static inline float kerac_trunc(float x) {
    return (float)kerac_trunc_i32(x);
}

/* 2^(n-1) for integral n in the normal exponent range. */
static inline float kerac_pow2_minus_1(float n) {
    return kerac_from_bits(((uint32_t)kerac_trunc_i32(n) + 126u) << 23);
}

/* The exponent field minus 126, as a float. */
static inline float kerac_exponent(float x) {
    return (float)((int32_t)((kerac_to_bits(x) >> 23) & 0xffu) - 126);
}

/* The mantissa scaled into [0.5, 1). */
static inline float kerac_mantissa(float x) {
    return kerac_from_bits((kerac_to_bits(x) & 0x007fffffu) | 0x3f000000u);
}

/* The square root: the FPU's instruction where there is one, else four Newton steps
 * from a bit-level guess (as the runtime on targets without one). On a GPU, the
 * correctly rounded one. */
static inline float kerac_sqrt(float x) {
#if defined(__CUDA_ARCH__)
    return __fsqrt_rn(x);
#elif defined(__GNUC__) && defined(__ARM_FP) && !defined(__aarch64__)
    float r;
    __asm__("vsqrt.f32 %0, %1" : "=t"(r) : "t"(x));
    return r;
#elif defined(__GNUC__) && defined(__aarch64__)
    float r;
    __asm__("fsqrt %s0, %s1" : "=w"(r) : "w"(x));
    return r;
#elif defined(__GNUC__) && defined(__SSE_MATH__)
    float r;
    __asm__("sqrtss %1, %0" : "=x"(r) : "x"(x));
    return r;
#else
    float r = kerac_from_bits((kerac_to_bits(x) >> 1) + 0x1fc00000u);
    int i;
    for (i = 0; i < 4; i++) r = 0.5f * (r + x / r);
    return r;
#endif
}

"#;

/// The entry point's floating-point environment: subnormals flushed while the model
/// runs, as TensorFlow computes Keras models (the `kerac::fp` of the Rust backend).
pub(super) const FP_ENV: &str = r#"/* Subnormals flushed to zero while the model runs, as TensorFlow computes Keras
 * models: MXCSR's FTZ and DAZ on x86, FZ in the FPCR or FPSCR on Arm (both inputs
 * and results). Elsewhere the FPU's own setting holds: IEEE 754 subnormals. */
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__SSE__))
typedef uint32_t kerac_fpenv;
static inline kerac_fpenv kerac_fp_enter(void) {
    uint32_t old, flush;
    __asm__ volatile("stmxcsr %0" : "=m"(old) : : "memory");
    flush = old | 0x8040u;
    __asm__ volatile("ldmxcsr %0" : : "m"(flush) : "memory");
    return old;
}
static inline void kerac_fp_leave(kerac_fpenv old) {
    __asm__ volatile("ldmxcsr %0" : : "m"(old) : "memory");
}
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
typedef uint64_t kerac_fpenv;
static inline kerac_fpenv kerac_fp_enter(void) {
    uint64_t old;
    __asm__ volatile("mrs %0, fpcr" : "=r"(old) : : "memory");
    __asm__ volatile("msr fpcr, %0" : : "r"(old | ((uint64_t)1 << 24)) : "memory");
    return old;
}
static inline void kerac_fp_leave(kerac_fpenv old) {
    __asm__ volatile("msr fpcr, %0" : : "r"(old) : "memory");
}
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__arm__) && defined(__ARM_FP)
typedef uint32_t kerac_fpenv;
static inline kerac_fpenv kerac_fp_enter(void) {
    uint32_t old;
    __asm__ volatile("vmrs %0, fpscr" : "=r"(old) : : "memory");
    __asm__ volatile("vmsr fpscr, %0" : : "r"(old | ((uint32_t)1 << 24)) : "memory");
    return old;
}
static inline void kerac_fp_leave(kerac_fpenv old) {
    __asm__ volatile("vmsr fpscr, %0" : : "r"(old) : "memory");
}
#else
typedef int kerac_fpenv;
static inline kerac_fpenv kerac_fp_enter(void) { return 0; }
static inline void kerac_fp_leave(kerac_fpenv old) { (void)old; }
#endif

"#;

/// A float as a C literal that reads back to the same bits.
pub(super) fn flt(v: f32) -> String {
    if v.is_nan() {
        return "KERAC_NAN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "KERAC_INF" } else { "(-KERAC_INF)" }.into();
    }
    if v != 0.0 && v.abs() < f32::MIN_POSITIVE {
        // Subnormal: exact in hexadecimal, where a short decimal may warn.
        let bits = v.to_bits();
        let sign = if bits >> 31 == 1 { "-" } else { "" };
        return format!("{sign}0x{:x}p-149f", bits & 0x7fff_ffff);
    }
    let s = format!("{v:?}");
    if s.contains(['.', 'e', 'E']) {
        format!("{s}f")
    } else {
        format!("{s}.0f")
    }
}

/// `static const float` arrays, one per weight, in flash on a microcontroller.
pub(super) fn weights(plan: &Plan, p: &str) -> String {
    let mut out = String::new();
    for (id, w) in plan.weights.iter().enumerate() {
        let _ = writeln!(out, "/* {} */", w.name.replace("*/", "* /"));
        let _ = write!(
            out,
            "static const float {p}_w{id}[{}] KERAC_ALIGN = {{",
            w.data.len().max(1)
        );
        if w.data.is_empty() {
            out.push_str("0.0f");
        }
        for (i, v) in w.data.iter().enumerate() {
            if i % 8 == 0 {
                out.push_str("\n   ");
            }
            out.push(' ');
            out.push_str(&flt(*v));
            out.push(',');
        }
        out.push_str("\n};\n\n");
    }
    out
}

/// The entry point: inputs into the arena, every step, outputs out.
fn predict(plan: &Plan, p: &str) -> String {
    let mut w = W::default();
    w.line("/* Runs the model once; see the header. */");
    w.open(
        "int {p}_predict(const float *const *inputs, float *const *outputs, void *scratch)"
            .replace("{p}", p),
    );
    w.line("float *a = (float *)scratch;");
    w.line("kerac_fpenv fp = kerac_fp_enter();");
    if plan.inputs.is_empty() && plan.outputs.is_empty() {
        w.line("(void)inputs;");
    }
    if plan.outputs.is_empty() {
        w.line("(void)outputs;");
    }
    for (i, port) in plan.inputs.iter().enumerate() {
        let b = &plan.buffers[port.buffer];
        w.line(format!("/* input {i}: `{}` */", port.name));
        w.open(format!("for (int i = 0; i < {}; i++)", b.len));
        w.line(format!("a[{} + i] = inputs[{i}][i];", b.offset));
        w.close();
    }
    if plan.inputs.is_empty() {
        w.line("(void)inputs;");
    }
    for (k, step) in plan.steps.iter().enumerate() {
        let args: Vec<String> = step
            .inputs
            .iter()
            .chain([&step.output])
            .map(|&b| format!("a + {}", plan.buffers[b].offset))
            .collect();
        w.line(format!("{}({});", step_name(p, k, step), args.join(", ")));
    }
    for (i, port) in plan.outputs.iter().enumerate() {
        let b = &plan.buffers[port.buffer];
        w.line(format!("/* output {i}: `{}` */", port.name));
        w.open(format!("for (int i = 0; i < {}; i++)", b.len));
        w.line(format!("outputs[{i}][i] = a[{} + i];", b.offset));
        w.close();
    }
    w.line("kerac_fp_leave(fp);");
    w.line("return 0;");
    w.close();
    w.s
}

/// A step's function: `<prefix>_step<k>_<first Keras layer>`.
pub(super) fn step_name(p: &str, k: usize, step: &Step) -> String {
    let first = step.layers.split([' ', '+', '(']).find(|s| !s.is_empty());
    let layer = first.map(super::header::c_ident).unwrap_or_default();
    if layer.is_empty() {
        format!("{p}_step{k}")
    } else {
        format!("{p}_step{k}_{layer}")
    }
}

/// Indented C text.
///
/// For CUDA ([`super::cuda`]), loops opened while [`W::par`] is on are not written: they
/// are the kernel's thread grid, and [`W::take_grid`] gives their variables and extents
/// for the index arithmetic that replaces them. `depth` counts every open block, those
/// loops included, so that `close_to` pairs with it in both dialects.
#[derive(Default)]
pub(super) struct W {
    pub(super) s: String,
    pub(super) depth: usize,
    /// Per open block: whether it was written (a brace) or is a thread-grid loop.
    written: Vec<bool>,
    /// CUDA output: [`W::par`] takes effect.
    pub(super) cuda: bool,
    par: bool,
    grid: Vec<(String, usize)>,
}

impl W {
    pub(super) fn line(&mut self, t: impl AsRef<str>) {
        let indent = self.written.iter().filter(|w| **w).count();
        for _ in 0..indent {
            self.s.push_str("    ");
        }
        self.s.push_str(t.as_ref());
        self.s.push('\n');
    }

    pub(super) fn open(&mut self, t: impl AsRef<str>) {
        let t = t.as_ref();
        self.line(if t.is_empty() {
            "{".to_string()
        } else {
            format!("{t} {{")
        });
        self.depth += 1;
        self.written.push(true);
    }

    /// `} else {`: closes a block and opens the next of the same statement.
    fn reopen(&mut self, t: &str) {
        self.written.pop();
        self.line(format!("}} {t} {{"));
        self.written.push(true);
    }

    pub(super) fn close(&mut self) {
        self.depth -= 1;
        if self.written.pop().unwrap_or(true) {
            self.line("}");
        }
    }

    /// `for (int v = 0; v < n; v++) {`, or with [`W::par`] on, one axis of the thread
    /// grid.
    pub(super) fn for_n(&mut self, v: &str, n: usize) {
        if self.cuda && self.par {
            self.grid.push((v.to_string(), n));
            self.depth += 1;
            self.written.push(false);
        } else {
            self.open(format!("for (int {v} = 0; {v} < {n}; {v}++)"));
        }
    }

    /// From here, loops are axes of the thread grid (CUDA only). A grid loop holds
    /// nothing after its inner grid loop, so that each thread's share is exactly the
    /// body; what comes before it is recomputed by every thread.
    pub(super) fn par(&mut self, on: bool) {
        self.par = on;
    }

    /// The grid's loops, outermost first, and forgets them.
    pub(super) fn take_grid(&mut self) -> Vec<(String, usize)> {
        std::mem::take(&mut self.grid)
    }

    pub(super) fn close_to(&mut self, depth: usize) {
        while self.depth > depth {
            self.close();
        }
    }
}

/// `(a) * n + v` in Horner form over `(index, extent)` pairs, outermost first, with
/// zero indices and unit extents left out.
pub(super) fn horner(parts: &[(&str, usize)]) -> String {
    let mut acc = String::from("0");
    for &(v, n) in parts {
        let scaled = if acc == "0" || n == 1 {
            acc
        } else {
            format!("{} * {n}", paren(&acc))
        };
        acc = match (scaled.as_str(), v) {
            ("0", _) => v.to_string(),
            (_, "0") => scaled,
            _ => format!("{scaled} + {v}"),
        };
    }
    acc
}

/// `s` in parentheses unless it is one name or number.
fn paren(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        s.to_string()
    } else {
        format!("({s})")
    }
}

/// True when `body` reads the variable `name` (not merely a longer name).
pub(super) fn mentions(body: &str, name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    body.match_indices(name).any(|(i, _)| {
        let before = body[..i].chars().next_back().is_none_or(|c| !word(c));
        let after = body[i + name.len()..]
            .chars()
            .next()
            .is_none_or(|c| !word(c));
        before && after
    })
}

/// `a * k` with the trivial cases folded.
pub(super) fn times(a: &str, k: usize) -> String {
    match (a, k) {
        ("0", _) | (_, 0) => "0".into(),
        (_, 1) => a.into(),
        _ => format!("{} * {k}", paren(a)),
    }
}

/// `base + off`, folding a zero offset.
pub(super) fn plus(base: &str, off: &str) -> String {
    if off == "0" {
        base.to_string()
    } else {
        format!("{base} + {off}")
    }
}

/// Generator state: the activation functions written so far.
pub(super) struct C {
    pub(super) p: String,
    acts: Vec<(Act, String)>,
    pub(super) helpers: String,
    /// CUDA kernels instead of C functions ([`super::cuda`]).
    pub(super) cuda: bool,
    /// Each step's kernel and its threads (CUDA).
    pub(super) grids: Vec<usize>,
}

impl C {
    pub(super) fn new(prefix: &str, cuda: bool) -> C {
        C {
            p: prefix.to_ascii_lowercase(),
            acts: Vec::new(),
            helpers: String::new(),
            cuda,
            grids: Vec::new(),
        }
    }

    /// The name of a C function computing `act` (traced from the runtime), written to
    /// the helpers the first time it is asked for.
    pub(super) fn act_fn(&mut self, act: Act) -> String {
        if let Some((_, name)) = self.acts.iter().find(|(a, _)| *a == act) {
            return name.clone();
        }
        let name = format!("{}_act{}", self.p, self.acts.len());
        let tape = Tape::trace(|x| act.eval_lanes(x));
        self.helpers
            .push_str(&tape_fn(&name, &format!("{act:?}"), &tape, 1));
        self.acts.push((act, name.clone()));
        name
    }

    /// `exp` and `log` as softmax uses them (the runtime's `exp_l`, `log_l`).
    fn exp_fn(&mut self) -> String {
        self.traced("exp", kerac::act::exp_l)
    }

    fn log_fn(&mut self) -> String {
        self.traced("log", kerac::act::log_l)
    }

    fn traced(
        &mut self,
        what: &str,
        f: impl FnOnce(super::tape::Traced) -> super::tape::Traced,
    ) -> String {
        let name = format!("{}_{what}", self.p);
        if !self.helpers.contains(&format!("float {name}(")) {
            let tape = Tape::trace(f);
            self.helpers.push_str(&tape_fn(&name, what, &tape, 1));
        }
        name
    }

    /// The function applying `act` to a value, or nothing (a parenthesised value) for
    /// linear.
    pub(super) fn act_call(&mut self, act: Act) -> String {
        if act == Act::Linear {
            String::new()
        } else {
            self.act_fn(act)
        }
    }

    /// `y[i] = act(y[i])` over `n` values from `y + at`; nothing for linear.
    fn apply(&mut self, w: &mut W, act: Act, y: &str, n: usize) {
        if act == Act::Linear || n == 0 {
            return;
        }
        let f = self.act_fn(act);
        w.for_n("e", n);
        w.line(format!("{y}[e] = {f}({y}[e]);"));
        w.close();
    }

    /// One step's function, or with `cuda` its kernel.
    pub(super) fn step(&mut self, plan: &Plan, k: usize, step: &Step) -> Result<String> {
        let mut w = W {
            cuda: self.cuda,
            ..W::default()
        };
        let prefix = self.p.clone();
        let weight = move |id: usize| format!("{prefix}_w{id}");
        let restrict = if self.cuda {
            "__restrict__"
        } else {
            "restrict"
        };
        let mut params: Vec<String> = (0..step.inputs.len())
            .map(|i| format!("const float *{restrict} x{i}"))
            .collect();
        params.push(format!("float *{restrict} y"));
        let loops: Vec<String> = step
            .kernel
            .loops()
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        w.line(format!(
            "/* {}: {} ({}; {} FLOPs) */",
            step.layers.replace("*/", "* /"),
            step.kernel.name(),
            loops.join(", "),
            step.flops
        ));
        w.open(format!(
            "{} void {}({})",
            if self.cuda { "KERAC_KERNEL" } else { "static" },
            step_name(&self.p, k, step),
            params.join(", ")
        ));
        let head = w.s.len();
        if self.cuda && super::cuda::kernel(self, &mut w, step, &weight) {
            // A kernel of its own, one thread per output.
        } else {
            self.body(&mut w, plan, step, &weight)?;
        }
        // A parameter the kernel does not read would warn.
        let body = w.s[head..].to_string();
        for i in 0..step.inputs.len() {
            if !mentions(&body, &format!("x{i}")) {
                w.line(format!("(void)x{i};"));
            }
        }
        w.close();
        if self.cuda {
            let grid = w.take_grid();
            let (index, threads) = super::cuda::thread_index(&grid, &body);
            w.s.insert_str(head, &index);
            self.grids.push(threads);
        }
        Ok(w.s)
    }

    /// The computation of one step, in the function [`C::step`] opened.
    fn body(
        &mut self,
        w: &mut W,
        plan: &Plan,
        step: &Step,
        weight: &dyn Fn(usize) -> String,
    ) -> Result<()> {
        let len = |b: usize| plan.buffers[b].len;
        match &step.kernel {
            Kernel::Dense { p, w: kw, b } => {
                let wn = weight(*kw);
                let bias = b.map(&weight);
                let act = self.act_call(p.act);
                w.for_n("r", p.rows);
                w.line(format!("float *yr = y + {};", times("r", p.n)));
                w.line(format!("const float *xr = x0 + {};", times("r", p.k)));
                blocks(w, p.n, |w, at, width| {
                    accumulators(w, width, bias.as_deref(), &at);
                    w.for_n("i", p.k);
                    w.line("const float xv = xr[i];");
                    let wr = plus(&format!("{wn} + {}", times("i", p.n)), &at);
                    w.line(format!("const float *wr = {wr};"));
                    multiply_add(w, width, "xv", "wr", None);
                    w.close();
                    store(w, width, "yr", &at, &act);
                });
                w.close();
            }
            Kernel::Conv { p, w: kw, b } => {
                let (cin, cout, groups) = (p.cin, p.cout, p.groups.max(1));
                let (cin_g, cout_g) = (cin / groups, cout / groups);
                let [wd, wh, ww] = p.windows;
                let bias = b.map(&weight);
                let act = self.act_call(p.act);
                let top = w.depth;
                w.for_n("b", p.batch);
                let o = out_loops(w, &p.windows);
                w.line(format!(
                    "float *yp = y + {};",
                    pixel(&o, [wd.output, wh.output, ww.output], cout)
                ));
                let depthwise = cin_g == 1 && cout_g == 1;
                // Output channels by blocks of accumulators in registers; the taps and
                // the input channels inside each block.
                let (per_group, group) = if depthwise || groups == 1 {
                    (cout, None)
                } else {
                    w.for_n("g", groups);
                    (cout_g, Some(times("g", cout_g)))
                };
                blocks(w, per_group, |w, at, width| {
                    let at = match &group {
                        Some(g) => plus(g, &at),
                        None => at,
                    };
                    accumulators(w, width, bias.as_deref(), &at);
                    let inner = w.depth;
                    let (i, t) = tap_loops(w, &p.windows, &o, None);
                    w.line(format!(
                        "const float *xp = x0 + {};",
                        pixel(&i, [wd.input, wh.input, ww.input], cin)
                    ));
                    let tap = times(
                        &horner(&[(&t[0], 1), (&t[1], wh.kernel), (&t[2], ww.kernel)]),
                        cin_g * cout,
                    );
                    w.line(format!(
                        "const float *wp = {};",
                        plus(&plus(&weight(*kw), &tap), &at)
                    ));
                    if depthwise {
                        let xs = plus("xp", &at);
                        w.line(format!("const float *xs = {xs};"));
                        multiply_add(w, width, "xs", "wp", Some(()));
                    } else {
                        w.for_n("ci", cin_g);
                        let xi = match &group {
                            Some(_) => format!("{} + ci", times("g", cin_g)),
                            None => "ci".into(),
                        };
                        w.line(format!("const float xv = xp[{xi}];"));
                        w.line(format!("const float *wr = wp + {};", times("ci", cout)));
                        multiply_add(w, width, "xv", "wr", None);
                        w.close();
                    }
                    w.close_to(inner);
                    store(w, width, "yp", &at, &act);
                });
                w.close_to(top);
            }
            Kernel::ConvTranspose { p, w: kw, b } => {
                let (cin, cout) = (p.cin, p.cout);
                let [wd, wh, ww] = p.windows;
                let pixels = p.batch * wd.input * wh.input * ww.input;
                let top = w.depth;
                w.for_n("q", pixels);
                w.line(format!("float *yq = y + {};", times("q", cout)));
                init_row(w, "yq", cout, b.map(&weight).as_deref(), 0.0);
                w.close();
                w.for_n("b", p.batch);
                let o = out_loops(w, &p.windows);
                w.line(format!(
                    "const float *xp = x0 + {};",
                    pixel(&o, [wd.output, wh.output, ww.output], cin)
                ));
                let (i, t) = tap_loops(w, &p.windows, &o, None);
                w.line(format!(
                    "float *yp = y + {};",
                    pixel(&i, [wd.input, wh.input, ww.input], cout)
                ));
                w.line(format!(
                    "const float *wp = {} + {};",
                    weight(*kw),
                    times(
                        &horner(&[(&t[0], 1), (&t[1], wh.kernel), (&t[2], ww.kernel)]),
                        cin * cout
                    )
                ));
                w.for_n("ci", cin);
                w.line("const float xv = xp[ci];");
                w.line(format!("const float *wr = wp + {};", times("ci", cout)));
                w.for_n("co", cout);
                w.line("yp[co] += xv * wr[co];");
                w.close_to(top);
                self.apply(w, p.act, "y", pixels * cout);
            }
            Kernel::Pool(p) => {
                let c = p.channels;
                let [wd, wh, ww] = p.windows;
                let top = w.depth;
                w.for_n("b", p.batch);
                let o = out_loops(w, &p.windows);
                w.line(format!(
                    "float *yp = y + {};",
                    pixel(&o, [wd.output, wh.output, ww.output], c)
                ));
                let init = if p.max { f32::NEG_INFINITY } else { 0.0 };
                init_row(w, "yp", c, None, init);
                if !p.max {
                    w.line("int count = 0;");
                }
                let inner = w.depth;
                let (i, _) = tap_loops(w, &p.windows, &o, (!p.max).then_some("count++;"));
                w.line(format!(
                    "const float *xp = x0 + {};",
                    pixel(&i, [wd.input, wh.input, ww.input], c)
                ));
                w.for_n("ch", c);
                if p.max {
                    w.line("yp[ch] = kerac_max(xp[ch], yp[ch]);");
                } else {
                    w.line("yp[ch] += xp[ch];");
                }
                w.close();
                w.close_to(inner);
                if !p.max {
                    w.open("");
                    w.line("const float scale = 1.0f / (float)(count > 1 ? count : 1);");
                    w.for_n("ch", c);
                    w.line("yp[ch] *= scale;");
                    w.close();
                    w.close();
                }
                w.close_to(top);
            }
            Kernel::GlobalPool(p) => {
                let c = p.channels;
                w.for_n("b", p.batch);
                w.line(format!("float *yb = y + {};", times("b", c)));
                w.line(format!(
                    "const float *xb = x0 + {};",
                    times("b", p.positions * c)
                ));
                let init = if p.max { f32::NEG_INFINITY } else { 0.0 };
                init_row(w, "yb", c, None, init);
                w.for_n("pos", p.positions);
                w.for_n("ch", c);
                let x = format!("xb[{}]", horner(&[("pos", 1), ("ch", c)]));
                if p.max {
                    w.line(format!("yb[ch] = kerac_max({x}, yb[ch]);"));
                } else {
                    w.line(format!("yb[ch] += {x};"));
                }
                w.close();
                w.close();
                if !p.max && p.positions > 0 {
                    w.for_n("ch", c);
                    w.line(format!("yb[ch] *= {};", flt(1.0 / p.positions as f32)));
                    w.close();
                }
                w.close();
            }
            Kernel::ScaleShift { p, scale, offset } => {
                let (s, o) = (weight(*scale), weight(*offset));
                strided(w, p, |w, at, j| {
                    w.line(format!("y[{at}] = x0[{at}] * {s}[{j}] + {o}[{j}];"));
                });
            }
            Kernel::Prelu { p, alpha } => {
                let a = weight(*alpha);
                strided(w, p, |w, at, j| {
                    w.line(format!("const float v = x0[{at}];"));
                    w.line(format!(
                        "y[{at}] = kerac_max(v, 0.0f) + {a}[{j}] * -kerac_max(-v, 0.0f);"
                    ));
                });
            }
            Kernel::Activation(act) => {
                let n = len(step.inputs[0]).min(len(step.output));
                w.par(true);
                if *act == Act::Linear {
                    w.for_n("e", n);
                    w.line("y[e] = x0[e];");
                    w.close();
                } else {
                    let f = self.act_fn(*act);
                    w.for_n("e", n);
                    w.line(format!("y[e] = {f}(x0[e]);"));
                    w.close();
                }
                w.par(false);
            }
            Kernel::Softmax { p, log } => {
                let exp = self.exp_fn();
                w.par(true);
                w.for_n("o", p.outer);
                w.for_n("i", p.inner);
                w.par(false);
                let at = horner(&[("o", 1), ("j", p.n), ("i", p.inner)]);
                w.line("float max = -KERAC_INF, sum = 0.0f;");
                w.for_n("j", p.n);
                w.line(format!("max = kerac_max(x0[{at}], max);"));
                w.close();
                w.for_n("j", p.n);
                w.line(format!("sum += {exp}(x0[{at}] - max);"));
                w.close();
                if *log {
                    let ln = self.log_fn();
                    w.line(format!("const float log_sum = {ln}(sum);"));
                    w.for_n("j", p.n);
                    w.line(format!("y[{at}] = (x0[{at}] - max) - log_sum;"));
                } else {
                    w.line("const float inv = 1.0f / sum;");
                    w.for_n("j", p.n);
                    w.line(format!("y[{at}] = {exp}(x0[{at}] - max) * inv;"));
                }
                w.close();
                w.close();
                w.close();
            }
            Kernel::LayerNorm { p, gamma, beta } => {
                let s = p.shape;
                w.par(true);
                w.for_n("o", s.outer);
                w.for_n("i", s.inner);
                w.par(false);
                let at = horner(&[("o", 1), ("j", s.n), ("i", s.inner)]);
                let n = flt(s.n as f32);
                w.line("float mean = 0.0f, var = 0.0f;");
                w.for_n("j", s.n);
                w.line(format!("mean += x0[{at}];"));
                w.close();
                w.line(format!("mean /= {n};"));
                w.for_n("j", s.n);
                w.line(format!("const float d = x0[{at}] - mean;"));
                w.line("var += d * d;");
                w.close();
                w.line(format!(
                    "const float inv = 1.0f / kerac_sqrt(var / {n} + {});",
                    flt(p.epsilon)
                ));
                let centre = if p.rms { "0.0f" } else { "mean" };
                w.for_n("j", s.n);
                w.line(format!("float v = (x0[{at}] - {centre}) * inv;"));
                if let Some(g) = gamma {
                    w.line(format!("v *= {}[j];", weight(*g)));
                }
                if let Some(b) = beta {
                    w.line(format!("v += {}[j];", weight(*b)));
                }
                w.line(format!("y[{at}] = v;"));
                w.close();
                w.close();
                w.close();
            }
            Kernel::GroupNorm { p, gamma, beta } => {
                let (c, g) = (p.channels, p.groups.max(1));
                let cg = c / g;
                let n = flt((p.positions * cg) as f32);
                let at = format!(
                    "{} + {}",
                    times("b", p.positions * c),
                    horner(&[("pos", 1), ("k", c)])
                );
                let at = format!("{at} + {}", times("grp", cg));
                w.par(true);
                w.for_n("b", p.batch);
                w.for_n("grp", g);
                w.par(false);
                w.line("float mean = 0.0f, var = 0.0f;");
                w.for_n("pos", p.positions);
                w.for_n("k", cg);
                w.line(format!("mean += x0[{at}];"));
                w.close();
                w.close();
                w.line(format!("mean /= {n};"));
                w.for_n("pos", p.positions);
                w.for_n("k", cg);
                w.line(format!("const float d = x0[{at}] - mean;"));
                w.line("var += d * d;");
                w.close();
                w.close();
                w.line(format!(
                    "const float inv = 1.0f / kerac_sqrt(var / {n} + {});",
                    flt(p.epsilon)
                ));
                w.for_n("pos", p.positions);
                w.for_n("k", cg);
                w.line(format!("float v = (x0[{at}] - mean) * inv;"));
                let ch = format!("{} + k", times("grp", cg));
                if let Some(gm) = gamma {
                    w.line(format!("v *= {}[{ch}];", weight(*gm)));
                }
                if let Some(bt) = beta {
                    w.line(format!("v += {}[{ch}];", weight(*bt)));
                }
                w.line(format!("y[{at}] = v;"));
                w.close_to(1);
            }
            Kernel::UnitNorm(p) => {
                w.par(true);
                w.for_n("o", p.outer);
                w.for_n("i", p.inner);
                w.par(false);
                let at = horner(&[("o", 1), ("j", p.n), ("i", p.inner)]);
                w.line("float sum = 0.0f;");
                w.for_n("j", p.n);
                w.line(format!("sum += x0[{at}] * x0[{at}];"));
                w.close();
                w.line("const float inv = 1.0f / kerac_max(kerac_sqrt(sum), 1e-12f);");
                w.for_n("j", p.n);
                w.line(format!("y[{at}] = x0[{at}] * inv;"));
                w.close_to(1);
            }
            Kernel::Merge {
                fold,
                shape,
                strides,
            } => {
                let names: Vec<String> = (0..step.inputs.len()).map(|i| format!("x{i}")).collect();
                merge(w, *fold, shape, strides, &names);
            }
            Kernel::StridedCopy(p) => {
                let x = format!("(x0 + {})", p.offset);
                merge(w, Fold::Add, &p.shape, &[p.strides], &[x]);
            }
            Kernel::Concat { outer, parts } => {
                let row: usize = parts.iter().sum();
                w.par(true);
                w.for_n("o", *outer);
                w.par(false);
                let mut at = 0;
                for (i, &n) in parts.iter().enumerate() {
                    w.for_n("e", n);
                    w.line(format!(
                        "y[{} + {at} + e] = x{i}[{} + e];",
                        times("o", row),
                        times("o", n)
                    ));
                    w.close();
                    at += n;
                }
                w.close();
            }
            Kernel::BatchDot(p) => {
                let (sa, sb) = (p.a, p.b);
                w.par(true);
                w.for_n("bi", p.batch);
                w.for_n("i", p.m);
                w.par(false);
                w.line(format!(
                    "const float *ar = x0 + {} + {};",
                    times("bi", sa[0]),
                    times("i", sa[1])
                ));
                if p.normalize {
                    norm_of(w, "na", "ar", p.k, sa[2]);
                }
                w.par(true);
                w.for_n("j", p.n);
                w.par(false);
                w.line(format!(
                    "const float *bc = x1 + {} + {};",
                    times("bi", sb[0]),
                    times("j", sb[2])
                ));
                if p.normalize {
                    norm_of(w, "nb", "bc", p.k, sb[1]);
                }
                w.line("float s = 0.0f;");
                w.for_n("t", p.k);
                w.line(format!(
                    "s += ar[{}] * bc[{}];",
                    times("t", sa[2]),
                    times("t", sb[1])
                ));
                w.close();
                let scale = if p.normalize { " * na * nb" } else { "" };
                w.line(format!(
                    "y[{}] = s{scale};",
                    horner(&[("bi", 1), ("i", p.m), ("j", p.n)])
                ));
                w.close_to(1);
            }
            Kernel::Resample(p) => resample(w, p),
            Kernel::Gather { p, table } => {
                if p.vocab > 0 {
                    w.par(true);
                    w.for_n("i", p.indices);
                    w.par(false);
                    w.line(format!(
                        "const int row = (int)kerac_min(kerac_max(x0[i], 0.0f), {});",
                        flt((p.vocab - 1) as f32)
                    ));
                    w.par(true);
                    w.for_n("d", p.dim);
                    w.par(false);
                    w.line(format!(
                        "y[{}] = {}[{}];",
                        horner(&[("i", 1), ("d", p.dim)]),
                        weight(*table),
                        horner(&[("row", 1), ("d", p.dim)])
                    ));
                    w.close_to(1);
                }
            }
            Kernel::Attention { p, w: aw } => {
                self.attention(w, p, aw.map(&weight));
            }
            Kernel::Recurrent { p, u, rb, .. } => {
                let r = step.recurrent_inputs();
                let name = |i: Option<usize>| i.map(|i| format!("x{i}"));
                self.recurrent(
                    w,
                    p,
                    &weight(*u),
                    rb.map(&weight).as_deref(),
                    [name(r.h0), name(r.c0), name(r.mask)],
                );
            }
        }
        Ok(())
    }

    fn attention(&mut self, w: &mut W, p: &kerac::attention::Attention, aw: Option<String>) {
        let exp = self.exp_fn();
        let (h, dk, dv) = (p.heads, p.dk, p.dv);
        w.par(true);
        w.for_n("b", p.batch);
        w.for_n("i", p.tq);
        w.for_n("hd", h);
        w.par(false);
        w.line(format!(
            "const float *qi = x0 + {};",
            times(&horner(&[("b", 1), ("i", p.tq), ("hd", h)]), dk)
        ));
        w.line(format!(
            "float *out = y + {};",
            times(&horner(&[("b", 1), ("i", p.tq), ("hd", h)]), dv)
        ));
        init_row(w, "out", dv, None, 0.0);
        w.line(format!(
            "float max = {}, sum = 0.0f;",
            flt(kerac::attention::MASKED)
        ));
        w.for_n("j", p.tk);
        w.line(format!(
            "const float *kj = x1 + {};",
            times(&horner(&[("b", 1), ("j", p.tk), ("hd", h)]), dk)
        ));
        w.line(format!(
            "const float *vj = x2 + {};",
            times(&horner(&[("b", 1), ("j", p.tk), ("hd", h)]), dv)
        ));
        w.line("float raw = 0.0f;");
        match (&aw, p.additive) {
            (Some(aw), true) => {
                let tanh = self.act_fn(Act::Tanh);
                w.for_n("d", dk);
                w.line(format!(
                    "raw += {aw}[d] * {tanh}({} * (qi[d] + kj[d]));",
                    flt(p.scale)
                ));
                w.close();
            }
            _ => {
                w.for_n("d", dk);
                w.line("raw += qi[d] * kj[d];");
                w.close();
                w.line(format!("raw *= {};", flt(p.scale)));
            }
        }
        if p.causal {
            w.line(format!(
                "const float score = kerac_select(kerac_mask((float)j > (float)i), raw + {}, raw);",
                flt(kerac::attention::MASKED)
            ));
        } else {
            w.line("const float score = raw;");
        }
        w.line("const float next = kerac_max(score, max);");
        w.line(format!("const float keep = {exp}(max - next);"));
        w.line(format!("const float weight = {exp}(score - next);"));
        w.line("sum = sum * keep + weight;");
        w.for_n("e", dv);
        w.line("out[e] = out[e] * keep + weight * vj[e];");
        w.close();
        w.line("max = next;");
        w.close();
        w.line("const float inv = 1.0f / sum;");
        w.for_n("e", dv);
        w.line("out[e] *= inv;");
        w.close_to(1);
    }

    /// The runtime's recurrent kernel: per sample and time step, `hu = h U + rb` into
    /// the output's scratch tail, the cell, and the mask's blend.
    fn recurrent(
        &mut self,
        w: &mut W,
        p: &kerac::recurrent::Recurrent,
        u: &str,
        rb: Option<&str>,
        [h0, c0, mask]: [Option<String>; 3],
    ) {
        let (units, gates, state) = (p.units, p.gates(), p.state());
        let width = gates * units;
        let states = p.batch * p.steps * state;
        if p.steps == 0 {
            return;
        }
        w.line(format!("float *hu = y + {states};"));
        w.line(format!("float *hp = y + {};", states + width));
        w.line(format!("float *cp = y + {};", states + width + units));
        // Which output row and input row step `s` uses.
        let rev = |s: &str| {
            if p.backwards {
                format!("({} - {s})", p.steps - 1)
            } else {
                s.to_string()
            }
        };
        let input = rev("s");
        let row = if p.input_order {
            input.clone()
        } else {
            "s".into()
        };
        let last_row = if p.input_order {
            rev("(s - 1)")
        } else {
            "(s - 1)".into()
        };
        w.for_n("b", p.batch);
        w.for_n("s", p.steps);
        // The previous state: the initial one, or the last step's output row.
        w.open("if (s == 0)");
        for (init, v) in [(&h0, "hp"), (&c0, "cp")] {
            w.for_n("e", units);
            match init {
                Some(x) => w.line(format!("{v}[e] = {x}[{} + e];", times("b", units))),
                None => w.line(format!("{v}[e] = 0.0f;")),
            }
            w.close();
        }
        w.reopen("else");
        w.line(format!(
            "const float *from = y + ({} + {last_row}) * {state};",
            times("b", p.steps)
        ));
        w.for_n("e", state);
        w.line("hp[e] = from[e];");
        w.close();
        w.close();
        // hu = h U + rb, over the columns the cell takes from it.
        let cols = match p.cell {
            Cell::Gru { reset_after: false } => 2 * units,
            _ => width,
        };
        w.for_n("j", width);
        match rb {
            Some(rb) => w.line(format!("hu[j] = {rb}[j];")),
            None => w.line("hu[j] = 0.0f;"),
        }
        w.close();
        w.for_n("k", units);
        w.line("const float hk = hp[k];");
        w.for_n("j", cols);
        w.line(format!("hu[j] += hk * {u}[{} + j];", times("k", width)));
        w.close();
        w.close();
        w.line(format!(
            "const float *x = x0 + ({} + {input}) * {width};",
            times("b", p.steps)
        ));
        w.line(format!(
            "float *out = y + ({} + {row}) * {state};",
            times("b", p.steps)
        ));
        match p.cell {
            Cell::Simple => {
                w.for_n("e", units);
                w.line("out[e] = x[e] + hu[e];");
                w.close();
                self.apply(w, p.act, "out", units);
            }
            Cell::Lstm => {
                w.for_n("e", width);
                w.line("hu[e] += x[e];");
                w.close();
                self.apply(w, p.rec_act, "hu", 2 * units);
                w.line(format!("float *g = hu + {};", 2 * units));
                self.apply(w, p.act, "g", units);
                w.line(format!("float *og = hu + {};", 3 * units));
                self.apply(w, p.rec_act, "og", units);
                w.for_n("e", units);
                w.line(format!(
                    "out[{units} + e] = hu[{units} + e] * cp[e] + hu[e] * g[e];"
                ));
                w.line(format!("out[e] = out[{units} + e];"));
                w.close();
                self.apply(w, p.act, "out", units);
                w.for_n("e", units);
                w.line("out[e] *= og[e];");
                w.close();
            }
            Cell::Gru { reset_after } => {
                w.for_n("e", 2 * units);
                w.line("hu[e] += x[e];");
                w.close();
                self.apply(w, p.rec_act, "hu", 2 * units);
                w.line(format!("float *hh = hu + {};", 2 * units));
                w.line(format!("const float *xh = x + {};", 2 * units));
                if reset_after {
                    w.for_n("e", units);
                    w.line(format!("hh[e] = xh[e] + hu[{units} + e] * hh[e];"));
                    w.close();
                } else {
                    w.for_n("e", units);
                    w.line(format!("cp[e] = hu[{units} + e] * hp[e];"));
                    w.close();
                    w.for_n("e", units);
                    w.line("hh[e] = xh[e];");
                    w.close();
                    w.for_n("k", units);
                    w.line("const float rk = cp[k];");
                    w.for_n("e", units);
                    w.line(format!(
                        "hh[e] += rk * {u}[{} + {} + e];",
                        times("k", width),
                        2 * units
                    ));
                    w.close();
                    w.close();
                }
                self.apply(w, p.act, "hh", units);
                w.for_n("e", units);
                w.line("out[e] = hu[e] * hp[e] + (1.0f - hu[e]) * hh[e];");
                w.close();
            }
        }
        if let Some(m) = mask {
            w.line(format!(
                "const float keep = kerac_mask({m}[{} + {input}] != 0.0f);",
                times("b", p.steps)
            ));
            w.for_n("e", state);
            w.line("out[e] = kerac_select(keep, out[e], hp[e]);");
            w.close();
        }
        w.close();
        w.close();
    }
}

/// Accumulators per block: as many as a Cortex-M4's or an x86-64's vector registers
/// hold beside the operands.
const BLOCK: usize = 8;

/// `n` outputs by blocks of [`BLOCK`]: a loop over the whole blocks (their first
/// output at `cb * BLOCK`), then one block for the rest; `body` gets each block's
/// first output and width.
fn blocks(w: &mut W, n: usize, mut body: impl FnMut(&mut W, String, usize)) {
    let whole = n / BLOCK;
    if whole == 1 {
        body(w, "0".into(), BLOCK);
    } else if whole > 1 {
        w.for_n("cb", whole);
        body(w, times("cb", BLOCK), BLOCK);
        w.close();
    }
    if !n.is_multiple_of(BLOCK) {
        w.open("");
        body(w, (whole * BLOCK).to_string(), n % BLOCK);
        w.close();
    }
}

/// `float a0 = bias[at + 0], ...` (or zeros) for `width` accumulators.
fn accumulators(w: &mut W, width: usize, bias: Option<&str>, at: &str) {
    let init: Vec<String> = (0..width)
        .map(|u| match bias {
            Some(b) => format!("a{u} = {b}[{}]", plus(at, &u.to_string())),
            None => format!("a{u} = 0.0f"),
        })
        .collect();
    w.line(format!("float {};", init.join(", ")));
}

/// `a_u += x * w[u]` for each accumulator: with `each`, `x[u] * w[u]` (depthwise).
fn multiply_add(w: &mut W, width: usize, x: &str, wr: &str, each: Option<()>) {
    for u in 0..width {
        match each {
            Some(()) => w.line(format!("a{u} += {x}[{u}] * {wr}[{u}];")),
            None => w.line(format!("a{u} += {x} * {wr}[{u}];")),
        }
    }
}

/// `y[at + u] = act(a_u)` for each accumulator; `act` is empty for linear.
fn store(w: &mut W, width: usize, y: &str, at: &str, act: &str) {
    for u in 0..width {
        let at = plus(at, &u.to_string());
        if act.is_empty() {
            w.line(format!("{y}[{at}] = a{u};"));
        } else {
            w.line(format!("{y}[{at}] = {act}(a{u});"));
        }
    }
}

/// The offset of pixel `idx` (one index per spatial axis) of sample `b`, in a tensor
/// of `dims` positions per axis and `c` channels.
pub(super) fn pixel(idx: &[String; 3], dims: [usize; 3], c: usize) -> String {
    let parts = [
        ("b", 1),
        (&idx[0][..], dims[0]),
        (&idx[1][..], dims[1]),
        (&idx[2][..], dims[2]),
    ];
    times(&horner(&parts), c)
}

/// `y[e] = bias[e]` (or `value`) for `n` values of row `y`.
fn init_row(w: &mut W, y: &str, n: usize, bias: Option<&str>, value: f32) {
    w.for_n("e", n);
    match bias {
        Some(b) => w.line(format!("{y}[e] = {b}[e];")),
        None => w.line(format!("{y}[e] = {};", flt(value))),
    }
    w.close();
}

/// `1 / max(|v|, 1e-12)` of `k` values of `v` spaced `step` apart, as `name`.
fn norm_of(w: &mut W, name: &str, v: &str, k: usize, step: usize) {
    w.line(format!("float {name} = 0.0f;"));
    w.for_n("t", k);
    let at = times("t", step);
    w.line(format!("{name} += {v}[{at}] * {v}[{at}];"));
    w.close();
    w.line(format!(
        "{name} = 1.0f / kerac_max(kerac_sqrt({name}), 1e-12f);"
    ));
}

/// Loops over the output positions of three windows (axes of one output are fixed at
/// `0`); the index of each.
pub(super) fn out_loops(w: &mut W, windows: &[Window; 3]) -> [String; 3] {
    let names = ["od", "oh", "ow"];
    std::array::from_fn(|a| {
        if windows[a].output > 1 {
            w.for_n(names[a], windows[a].output);
            names[a].to_string()
        } else {
            "0".to_string()
        }
    })
}

/// Loops over the kernel taps of output position `o`, skipping those in padding;
/// `each` runs once per tap that lands inside. The input position and the tap of each
/// axis.
pub(super) fn tap_loops(
    w: &mut W,
    windows: &[Window; 3],
    o: &[String; 3],
    each: Option<&str>,
) -> ([String; 3], [String; 3]) {
    let names = ["d", "h", "w"];
    let mut input: [String; 3] = Default::default();
    let mut tap: [String; 3] = Default::default();
    for a in 0..3 {
        let win = &windows[a];
        let valid = win.is_valid();
        if win.kernel == 1 && valid {
            input[a] = times(&o[a], win.stride);
            tap[a] = "0".into();
            continue;
        }
        let (k, i) = (format!("k{}", names[a]), format!("i{}", names[a]));
        w.for_n(&k, win.kernel);
        let mut pos = plus(&times(&o[a], win.stride), &times(&k, win.dilation));
        if win.pad_before > 0 {
            pos = format!("{pos} - {}", win.pad_before);
        }
        w.line(format!("const int {i} = {pos};"));
        if !valid {
            w.open(format!("if ({i} < 0 || {i} >= {})", win.input));
            w.line("continue;");
            w.close();
        }
        input[a] = i;
        tap[a] = k;
    }
    if let Some(each) = each {
        w.line(each);
    }
    (input, tap)
}

/// `y[at] = f(x[at], j)` over a strided shape: `n` values `inner` apart, `outer` times.
fn strided(w: &mut W, p: &kerac::norm::Strided, mut f: impl FnMut(&mut W, &str, &str)) {
    let top = w.depth;
    w.par(true);
    w.for_n("o", p.outer);
    w.for_n("j", p.n);
    w.for_n("i", p.inner);
    w.par(false);
    let at = horner(&[("o", 1), ("j", p.n), ("i", p.inner)]);
    f(w, &at, "j");
    w.close_to(top);
}

/// The merge kernel: `y` in row-major order over `shape`, each input read at its own
/// strides (0 where broadcast), folded left to right.
fn merge(w: &mut W, fold: Fold, shape: &[usize; RANK], strides: &[[usize; RANK]], xs: &[String]) {
    let top = w.depth;
    let names = ["i0", "i1", "i2", "i3", "i4", "i5"];
    let mut idx: Vec<(&str, usize)> = Vec::new();
    w.par(true);
    for a in 0..RANK {
        if shape[a] > 1 {
            w.for_n(names[a], shape[a]);
            idx.push((names[a], shape[a]));
        }
    }
    w.par(false);
    let at = |s: &[usize; RANK]| {
        let terms: Vec<String> = (0..RANK)
            .filter(|&a| shape[a] > 1 && s[a] != 0)
            .map(|a| times(names[a], s[a]))
            .collect();
        if terms.is_empty() {
            "0".to_string()
        } else {
            terms.join(" + ")
        }
    };
    w.line(format!("float acc = {}[{}];", xs[0], at(&strides[0])));
    for (x, s) in xs.iter().zip(strides).skip(1) {
        let v = format!("{x}[{}]", at(s));
        w.line(match fold {
            Fold::Add | Fold::Average => format!("acc = acc + {v};"),
            Fold::Subtract => format!("acc = acc - {v};"),
            Fold::Multiply => format!("acc = acc * {v};"),
            Fold::Maximum => format!("acc = kerac_max({v}, acc);"),
            Fold::Minimum => format!("acc = kerac_min({v}, acc);"),
            Fold::Divide => format!("acc = acc / {v};"),
        });
    }
    if fold == Fold::Average {
        w.line(format!("acc *= {};", flt(1.0 / xs.len() as f32)));
    }
    let flat = idx.iter().fold(String::from("0"), |acc, &(v, n)| {
        if acc == "0" {
            v.to_string()
        } else {
            format!("({acc}) * {n} + {v}")
        }
    });
    w.line(format!("y[{flat}] = acc;"));
    w.close_to(top);
}

/// Two source positions on one axis and their weights.
type AxisTaps = [(usize, f32); 2];

/// Resampling (padding, cropping, nearest and bilinear upsampling, reversal): each
/// output position reads at most two positions per axis (the runtime's
/// `AxisMap::taps`), with weights fixed at compile time, in tables.
fn resample(w: &mut W, p: &kerac::shape::Resample) {
    let [id, ih, iw] = p.input;
    let c = p.channels;
    if id * ih * iw == 0 {
        return;
    }
    for (nm, map) in ["d", "h", "w"].into_iter().zip(p.axes) {
        let taps: Vec<AxisTaps> = (0..map.len()).map(|o| map.taps(o)).collect();
        let n = taps.len().max(1);
        let list = |f: &dyn Fn(&AxisTaps) -> String| {
            let v: Vec<String> = taps.iter().map(f).collect();
            if v.is_empty() {
                "0".to_string()
            } else {
                v.join(", ")
            }
        };
        w.line(format!(
            "static const int s{nm}[{n}][2] = {{{}}};",
            list(&|t| format!("{{{}, {}}}", t[0].0, t[1].0))
        ));
        w.line(format!(
            "static const float f{nm}[{n}][2] = {{{}}};",
            list(&|t| format!("{{{}, {}}}", flt(t[0].1), flt(t[1].1)))
        ));
    }
    let top = w.depth;
    let (od, oh, ow) = (p.axes[0].len(), p.axes[1].len(), p.axes[2].len());
    w.par(true);
    w.for_n("b", p.batch);
    w.for_n("od", od);
    w.for_n("oh", oh);
    w.for_n("ow", ow);
    w.par(false);
    w.line(format!(
        "float *out = y + {};",
        times(&horner(&[("b", 1), ("od", od), ("oh", oh), ("ow", ow)]), c)
    ));
    init_row(w, "out", c, None, 0.0);
    w.for_n("td", 2);
    w.for_n("th", 2);
    w.for_n("tw", 2);
    w.line("const float weight = fd[od][td] * fh[oh][th] * fw[ow][tw];");
    w.open("if (weight == 0.0f)");
    w.line("continue;");
    w.close();
    w.line(format!(
        "const float *xs = x0 + {};",
        times(
            &horner(&[
                ("b", 1),
                ("sd[od][td]", id),
                ("sh[oh][th]", ih),
                ("sw[ow][tw]", iw)
            ]),
            c
        )
    ));
    w.for_n("e", c);
    w.line("out[e] += weight * xs[e];");
    w.close_to(top);
}

/// A traced activation as a C function, operation by operation.
fn tape_fn(name: &str, what: &str, tape: &Tape, inputs: usize) -> String {
    // Only the operations the result depends on: an unused local would warn.
    let mut used = vec![false; tape.ops.len()];
    used[tape.result as usize] = true;
    for i in (0..tape.ops.len()).rev() {
        if !used[i] {
            continue;
        }
        for j in tape.ops[i].operands() {
            used[j as usize] = true;
        }
    }
    let v = |i: u32| match tape.ops[i as usize] {
        TapeOp::Const(c) => flt(c),
        TapeOp::Input(n) => format!("x{n}"),
        _ => format!("t{i}"),
    };
    let params: Vec<String> = (0..inputs).map(|i| format!("float x{i}")).collect();
    let mut out = format!(
        "/* {what}, as the runtime computes it. */\nstatic inline float {name}({}) {{\n",
        params.join(", ")
    );
    for i in 0..inputs {
        let read = tape
            .ops
            .iter()
            .enumerate()
            .any(|(k, op)| used[k] && *op == TapeOp::Input(i));
        if !read {
            let _ = writeln!(out, "    (void)x{i};");
        }
    }
    for (i, op) in tape.ops.iter().enumerate() {
        if !used[i] {
            continue;
        }
        let e = match *op {
            TapeOp::Input(_) | TapeOp::Const(_) => continue,
            TapeOp::Add(a, b) => format!("{} + {}", v(a), v(b)),
            TapeOp::Sub(a, b) => format!("{} - {}", v(a), v(b)),
            TapeOp::Mul(a, b) => format!("{} * {}", v(a), v(b)),
            TapeOp::Div(a, b) => format!("{} / {}", v(a), v(b)),
            TapeOp::Neg(a) => format!("-{}", v(a)),
            TapeOp::Gt(a, b) => format!("kerac_mask({} > {})", v(a), v(b)),
            TapeOp::Lt(a, b) => format!("kerac_mask({} < {})", v(a), v(b)),
            TapeOp::Ge(a, b) => format!("kerac_mask({} >= {})", v(a), v(b)),
            TapeOp::Select(m, a, b) => format!("kerac_select({}, {}, {})", v(m), v(a), v(b)),
            TapeOp::Trunc(a) => format!("kerac_trunc({})", v(a)),
            TapeOp::Pow2Minus1(a) => format!("kerac_pow2_minus_1({})", v(a)),
            TapeOp::Exponent(a) => format!("kerac_exponent({})", v(a)),
            TapeOp::Mantissa(a) => format!("kerac_mantissa({})", v(a)),
            TapeOp::Sqrt(a) => format!("kerac_sqrt({})", v(a)),
        };
        let _ = writeln!(out, "    const float t{i} = {e};");
    }
    let _ = writeln!(out, "    return {};\n}}\n", v(tape.result));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_read_back_exactly() {
        for v in [0.1f32, 1.0, -2.5e-7, 3.4e38, 1e20, 7.0, -0.0] {
            let s = flt(v);
            let parsed: f32 = s.trim_end_matches('f').parse().unwrap();
            assert_eq!(parsed.to_bits(), v.to_bits(), "{s}");
        }
        assert_eq!(flt(f32::from_bits(1)), "0x1p-149f");
    }

    #[test]
    fn indices_leave_out_zeros_and_unit_extents() {
        assert_eq!(
            horner(&[("b", 1), ("0", 1), ("oh", 28), ("ow", 28)]),
            "(b * 28 + oh) * 28 + ow"
        );
        assert_eq!(horner(&[("0", 1), ("0", 1), ("ow", 5)]), "ow");
        assert_eq!(horner(&[("i", 1), ("0", 4)]), "i * 4");
        assert_eq!(times("b * 9 + ih", 4), "(b * 9 + ih) * 4");
        assert!(mentions("y[e] = x1[e];", "x1") && !mentions("y[e] = x10[e];", "x1"));
    }
}
