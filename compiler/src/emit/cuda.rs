//! CUDA C++ from a [`Plan`]: one kernel per step, one thread per output value (per row
//! for the normalisations, per sample for the recurrent layers), specialised to the
//! step's constants like the C backend ([`super::c`]), whose generator it shares.
//!
//! The file is checked without a GPU in two ways. nvcc compiles it for the GPUs users
//! have, and any C++ compiler compiles it for the CPU through a small mapping of
//! `__global__`, `blockIdx`, `threadIdx` and the launch onto loops, which every fixture
//! runs against Keras. The mapping is exact because no kernel shares anything between
//! its threads: no shared memory, no barriers, no warp-level operations. Each thread
//! reads its step's inputs and writes only its own outputs.
//!
//! Weights are `__device__` arrays with static initialisers: the CUDA runtime uploads
//! them with the module, which `<prefix>_init_cuda` loads. Activations live in the
//! caller's device scratch at the arena plan's offsets, so a call allocates nothing;
//! every grid size and loop bound is a constant, and the only conditions are on thread
//! and loop indices, never on values.

use super::c::{self, out_loops, pixel, plus, tap_loops, times, C, W};
use crate::bail;
use crate::error::Result;
use crate::plan::{Kernel, Plan, Step};
use std::fmt::Write;

/// What the header names as the target of CUDA output.
pub const TARGET: &str = "CUDA";

/// Threads per block: a multiple of the warp that every GPU since sm_35 runs at full
/// occupancy with the registers these kernels take.
pub const THREADS: usize = 256;

/// How a C++ compiler builds the `.cu` for the CPU: as C++17, with warnings as errors
/// (then `-c` and an optimisation level).
pub const HOST_CXX_FLAGS: &[&str] = &[
    "-x",
    "c++",
    "-std=c++17",
    "-fno-exceptions",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
    "-Werror",
];

/// One kernel launch of a call: what `kerac inspect --cuda` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The kernel's name in the `.cu` file.
    pub kernel: String,
    /// The Keras layers it computes.
    pub layers: String,
    /// Blocks in the grid (one dimension).
    pub blocks: usize,
    /// Threads per block.
    pub threads: usize,
    /// The scratch offsets (floats) of its arguments, inputs then output; empty for
    /// the copies of the inputs and outputs, whose pointers are the caller's.
    pub buffers: Vec<usize>,
}

/// The launch configuration for `n` threads: (blocks, threads per block).
fn config(n: usize) -> (usize, usize) {
    let threads = n.clamp(1, THREADS);
    (n.div_ceil(threads), threads)
}

/// CUDA C++ for `plan`, with symbols `<prefix>_...`; `source` names the model file in
/// the opening comment. Also the launches of one call, in order.
pub fn source_and_launches(
    plan: &Plan,
    prefix: &str,
    source: &str,
) -> Result<(String, Vec<Launch>)> {
    if plan.has_runtime_panels() {
        bail!("{source}: this plan holds weights in the runtime kernels' panels, which the CUDA does not read");
    }
    c::check_sizes(plan, source)?;
    let mut g = C::new(prefix, true);
    let mut steps = String::new();
    for (k, step) in plan.steps.iter().enumerate() {
        steps.push_str(&g.step(plan, k, step)?);
        steps.push('\n');
    }
    let p = g.p.clone();
    let device = |text: &str| {
        text.replace("static inline ", "static __device__ inline ")
            .replace(
                "#include <stdint.h>\n",
                "#ifndef __CUDACC_RTC__\n#include <stdint.h>\n#endif\n",
            )
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "/* {p}.cu: the Keras model `{}` compiled by kerac {} to CUDA C++.\n *\n * Source: {source}\n *\n * Compile it with nvcc (C++17); it needs the CUDA runtime and nothing else. Without\n * nvcc, any C++17 compiler builds the same kernels for the CPU, with {p}_predict\n * as the C backend's entry point: a check of the kernels on machines without a GPU.\n * A call allocates nothing, no kernel has a data-dependent branch, and every loop\n * and grid size is a constant. The header kerac wrote beside it declares the entry\n * points and the sizes. Compile it with -ftz=true (NVRTC: --ftz=true): Keras's CPU\n * kernels flush subnormals to zero, and kerac's CPU backends do the same. */\n",
        plan.name,
        env!("CARGO_PKG_VERSION"),
    );
    out.push_str(HOST_MAP);
    let body = format!("{}{steps}", g.helpers);
    out.push_str(&device(&c::prelude(&body)));
    out.push_str(&device(&g.helpers));
    out.push_str(
        &c::weights(plan, &p).replace("static const float ", "static __device__ const float "),
    );
    let _ = writeln!(
        out,
        "/* Copies n floats: the inputs into the scratch, the outputs out of it. */\nKERAC_KERNEL void {p}_copy(const float *__restrict__ x, float *__restrict__ y, int n) {{\n    const int t = (int)(blockIdx.x * blockDim.x + threadIdx.x);\n    if (t >= n) return;\n    y[t] = x[t];\n}}\n"
    );
    out.push_str(&steps);

    let mut launches = Vec::new();
    let mut call = String::new();
    let mut kernels = vec![format!("{p}_copy")];
    let mut launch = |call: &mut String,
                      kernel: String,
                      layers: &str,
                      n: usize,
                      args: String,
                      buffers: Vec<usize>| {
        if n == 0 {
            return;
        }
        let (blocks, threads) = config(n);
        let _ = writeln!(
            call,
            "    KERAC_LAUNCH({kernel}, {blocks}, {threads}, stream, {args});"
        );
        launches.push(Launch {
            kernel,
            layers: layers.to_string(),
            blocks,
            threads,
            buffers,
        });
    };
    for (i, port) in plan.inputs.iter().enumerate() {
        let b = &plan.buffers[port.buffer];
        let args = format!("inputs[{i}], a + {}, {}", b.offset, b.len);
        launch(
            &mut call,
            format!("{p}_copy"),
            "input",
            b.len,
            args,
            Vec::new(),
        );
    }
    for ((k, step), &n) in plan.steps.iter().enumerate().zip(&g.grids) {
        let buffers: Vec<usize> = step
            .inputs
            .iter()
            .chain([&step.output])
            .map(|&b| plan.buffers[b].offset)
            .collect();
        let args: Vec<String> = buffers.iter().map(|o| format!("a + {o}")).collect();
        let name = c::step_name(&p, k, step);
        kernels.push(name.clone());
        launch(&mut call, name, &step.layers, n, args.join(", "), buffers);
    }
    for (i, port) in plan.outputs.iter().enumerate() {
        let b = &plan.buffers[port.buffer];
        let args = format!("a + {}, outputs[{i}], {}", b.offset, b.len);
        launch(
            &mut call,
            format!("{p}_copy"),
            "output",
            b.len,
            args,
            Vec::new(),
        );
    }

    let _ = writeln!(
        out,
        "#ifndef __CUDACC_RTC__\n/* Loads the module (kernels and weights) on the current device; see the header. */\nextern \"C\" int {p}_init_cuda(void) {{\n    cudaFuncAttributes attributes;\n    cudaError_t e = cudaSuccess;"
    );
    for k in &kernels {
        let _ = writeln!(
            out,
            "    if ((e = cudaFuncGetAttributes(&attributes, {k})) != cudaSuccess) return (int)e;"
        );
    }
    let _ = writeln!(out, "    return (int)e;\n}}\n");
    let _ = writeln!(
        out,
        "/* Runs the model once on the current device, in order on `stream`; see the header. */\nextern \"C\" int {p}_predict_cuda(const float *const *inputs, float *const *outputs, void *device_scratch, cudaStream_t stream) {{\n    float *a = (float *)device_scratch;\n    (void)inputs;\n    (void)outputs;\n    (void)a;\n{call}    return (int)cudaGetLastError();\n}}\n"
    );
    let _ = writeln!(
        out,
        "#ifndef __CUDACC__\n{}\n/* The same kernels on the CPU: the C backend's entry point, for checking, with\n * subnormals flushed as -ftz=true flushes them on the GPU. */\nextern \"C\" int {p}_predict(const float *const *inputs, float *const *outputs, void *scratch) {{\n    kerac_fpenv fp = kerac_fp_enter();\n    int e = {p}_predict_cuda(inputs, outputs, scratch, 0);\n    kerac_fp_leave(fp);\n    return e;\n}}\n#endif\n#endif /* __CUDACC_RTC__ */",
        c::FP_ENV.trim_end()
    );
    Ok((out, launches))
}

/// CUDA C++ for `plan`, with symbols `<prefix>_...`; `source` names the model file.
pub fn source(plan: &Plan, prefix: &str, source: &str) -> Result<String> {
    Ok(source_and_launches(plan, prefix, source)?.0)
}

/// One kernel's resources on one GPU, as ptxas reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// The kernel's name in the `.cu` file.
    pub kernel: String,
    /// Registers per thread.
    pub registers: usize,
    /// Bytes of spill stores per thread.
    pub spill_bytes: usize,
}

/// Every kernel's registers and spill stores in what `nvcc --resource-usage` printed,
/// in order: each kernel once per GPU it was compiled for.
pub fn resource_usage(report: &str) -> Vec<Usage> {
    let number_before = |line: &str, what: &str| -> Option<usize> {
        let head = &line[..line.find(what)?];
        head.split_whitespace().last()?.parse().ok()
    };
    let mut usage = Vec::new();
    let (mut current, mut spills) = (None, 0);
    for line in report.lines() {
        if let Some(at) = line.find("Compiling entry function '") {
            current = line[at + 26..].split('\'').next().map(str::to_string);
        }
        if let Some(n) = number_before(line, " bytes spill stores") {
            spills = n;
        }
        if let (Some(n), Some(mangled)) = (number_before(line, " registers"), &current) {
            // The mangled name holds the kernel's after its length.
            let name = mangled.trim_start_matches("_Z").trim_start_matches('L');
            let digits = name.chars().take_while(char::is_ascii_digit).count();
            let len: usize = name[..digits].parse().unwrap_or(0);
            usage.push(Usage {
                kernel: name.get(digits..digits + len).unwrap_or(name).to_string(),
                registers: n,
                spill_bytes: spills,
            });
        }
    }
    usage
}

/// Under NVRTC (`model!`'s `cuda`): kernels only, found by name. With nvcc: the launch
/// syntax. Without either: the mapping onto loops on the CPU.
const HOST_MAP: &str = r#"#if defined(__CUDACC_RTC__)
/* NVRTC: the kernels alone, with C names, for a host that launches them itself. */
typedef unsigned int uint32_t;
typedef int int32_t;
#define KERAC_KERNEL extern "C" __global__
#elif defined(__CUDACC__)
#include <cuda_runtime.h>
#define KERAC_KERNEL static __global__
#define KERAC_LAUNCH(kernel, blocks, threads, stream, ...) \
    kernel<<<(blocks), (threads), 0, (stream)>>>(__VA_ARGS__)
#else
/* Without nvcc: every launch is a loop over its blocks and threads, in order. No
 * kernel shares memory between its threads or waits at a barrier, so the loops
 * compute what the GPU computes. */
#define __global__
#define __device__
#define KERAC_KERNEL static
struct kerac_dim3 {
    unsigned x, y, z;
};
[[maybe_unused]] static kerac_dim3 blockIdx, threadIdx, blockDim, gridDim;
typedef struct CUstream_st *cudaStream_t;
typedef int cudaError_t;
#define cudaSuccess 0
struct cudaFuncAttributes {
    int unused;
};
#define cudaFuncGetAttributes(attributes, kernel) ((void)(attributes), (void)(kernel), cudaSuccess)
static inline cudaError_t cudaGetLastError(void) {
    return cudaSuccess;
}
#define KERAC_LAUNCH(kernel, blocks, threads, stream, ...)                              \
    do {                                                                              \
        (void)(stream);                                                               \
        gridDim.x = (blocks);                                                         \
        blockDim.x = (threads);                                                       \
        for (blockIdx.x = 0; blockIdx.x < gridDim.x; blockIdx.x++)                    \
            for (threadIdx.x = 0; threadIdx.x < blockDim.x; threadIdx.x++)            \
                kernel(__VA_ARGS__);                                                  \
    } while (0)
#endif

"#;

/// The thread's index and the grid loops' variables from it, as the kernel's first
/// lines (only the variables `body` reads), and the number of threads.
pub(super) fn thread_index(grid: &[(String, usize)], body: &str) -> (String, usize) {
    let total: usize = grid.iter().map(|g| g.1).product();
    let mut s = format!(
        "    const int t = (int)(blockIdx.x * blockDim.x + threadIdx.x);\n    if (t >= {}) return;\n",
        total.max(1)
    );
    let mut inner = 1;
    for (i, (v, n)) in grid.iter().enumerate().rev() {
        if c::mentions(body, v) {
            // The outermost axis longer than one needs no remainder.
            let outermost = grid[..i].iter().all(|g| g.1 == 1);
            let e = match (*n, inner, outermost) {
                (1, _, _) => "0".to_string(),
                (_, 1, true) => "t".to_string(),
                (_, 1, false) => format!("t % {n}"),
                (_, _, true) => format!("t / {inner}"),
                _ => format!("t / {inner} % {n}"),
            };
            let _ = writeln!(s, "    const int {v} = {e};");
        }
        inner *= n;
    }
    (s, total)
}

/// The kernels whose C loops nest the wrong way for threads (a row of accumulators per
/// pixel, or the transposed convolution's scatter), written one thread per output;
/// false for the other steps, which take the C's loops with a grid.
pub(super) fn kernel(g: &mut C, w: &mut W, step: &Step, weight: &dyn Fn(usize) -> String) -> bool {
    match &step.kernel {
        Kernel::Dense { p, w: kw, b } => {
            let act = g.act_call(p.act);
            w.par(true);
            w.for_n("r", p.rows);
            w.for_n("j", p.n);
            w.par(false);
            init(w, b.map(weight).as_deref(), "j", 0.0);
            w.for_n("i", p.k);
            w.line(format!(
                "acc += x0[{}] * {}[{}];",
                plus(&times("r", p.k), "i"),
                weight(*kw),
                plus(&times("i", p.n), "j")
            ));
            w.close();
            w.line(format!("y[{}] = {act}(acc);", plus(&times("r", p.n), "j")));
            w.close_to(1);
        }
        Kernel::Conv { p, w: kw, b } => {
            let (cin, cout, groups) = (p.cin, p.cout, p.groups.max(1));
            let (cin_g, cout_g) = (cin / groups, cout / groups);
            let [wd, wh, ww] = p.windows;
            let act = g.act_call(p.act);
            w.par(true);
            w.for_n("b", p.batch);
            let o = out_loops(w, &p.windows);
            w.for_n("co", cout);
            w.par(false);
            init(w, b.map(weight).as_deref(), "co", 0.0);
            let depthwise = cin_g == 1 && cout_g == 1;
            let top = w.depth;
            let (i, t) = tap_loops(w, &p.windows, &o, None);
            w.line(format!(
                "const float *xp = x0 + {};",
                pixel(&i, [wd.input, wh.input, ww.input], cin)
            ));
            let tap = times(
                &c::horner(&[(&t[0], 1), (&t[1], wh.kernel), (&t[2], ww.kernel)]),
                cin_g * cout,
            );
            w.line(format!(
                "const float *wp = {} + co;",
                plus(&weight(*kw), &tap)
            ));
            if depthwise {
                w.line("acc += xp[co] * wp[0];");
            } else {
                let xi = if groups > 1 {
                    format!("co / {cout_g} * {cin_g} + ci")
                } else {
                    "ci".into()
                };
                w.for_n("ci", cin_g);
                w.line(format!("acc += xp[{xi}] * wp[{}];", times("ci", cout)));
                w.close();
            }
            w.close_to(top);
            w.line(format!(
                "y[{} + co] = {act}(acc);",
                pixel(&o, [wd.output, wh.output, ww.output], cout)
            ));
            w.close_to(1);
        }
        Kernel::ConvTranspose { p, w: kw, b } => {
            let (cin, cout) = (p.cin, p.cout);
            let [wd, wh, ww] = p.windows;
            let act = g.act_call(p.act);
            // Each output position gathers the inputs whose windows cover it: those
            // at (position + padding - tap) / stride where that divides.
            let names = ["d", "h", "w"];
            w.par(true);
            w.for_n("b", p.batch);
            let at: [String; 3] = std::array::from_fn(|a| {
                if p.windows[a].input > 1 {
                    let v = format!("y{}", names[a]);
                    w.for_n(&v, p.windows[a].input);
                    v
                } else {
                    "0".into()
                }
            });
            w.for_n("co", cout);
            w.par(false);
            init(w, b.map(weight).as_deref(), "co", 0.0);
            let top = w.depth;
            let mut from: [String; 3] = Default::default();
            let mut tap: [String; 3] = Default::default();
            for a in 0..3 {
                let win = &p.windows[a];
                let (k, o) = (format!("k{}", names[a]), format!("o{}", names[a]));
                w.for_n(&k, win.kernel);
                let mut num = plus(&at[a], &win.pad_before.to_string());
                if win.dilation != 0 {
                    num = format!("{num} - {}", times(&k, win.dilation));
                }
                w.line(format!("const int n{} = {num};", names[a]));
                let n = format!("n{}", names[a]);
                let s = win.stride.max(1);
                let mut skip = format!("{n} < 0");
                if s > 1 {
                    skip.push_str(&format!(" || {n} % {s} != 0"));
                }
                let q = if s > 1 {
                    format!("{n} / {s}")
                } else {
                    n.clone()
                };
                skip.push_str(&format!(" || {q} >= {}", win.output));
                w.open(format!("if ({skip})"));
                w.line("continue;");
                w.close();
                w.line(format!("const int {o} = {q};"));
                from[a] = o;
                tap[a] = k;
            }
            w.line(format!(
                "const float *xp = x0 + {};",
                pixel(&from, [wd.output, wh.output, ww.output], cin)
            ));
            let t = c::horner(&[(&tap[0], 1), (&tap[1], wh.kernel), (&tap[2], ww.kernel)]);
            w.line(format!(
                "const float *wp = {} + co;",
                plus(&weight(*kw), &times(&t, cin * cout))
            ));
            w.for_n("ci", cin);
            w.line(format!("acc += xp[ci] * wp[{}];", times("ci", cout)));
            w.close_to(top);
            w.line(format!(
                "y[{} + co] = {act}(acc);",
                pixel(&at, [wd.input, wh.input, ww.input], cout)
            ));
            w.close_to(1);
        }
        Kernel::Pool(p) => {
            let ch = p.channels;
            let [wd, wh, ww] = p.windows;
            w.par(true);
            w.for_n("b", p.batch);
            let o = out_loops(w, &p.windows);
            w.for_n("ch", ch);
            w.par(false);
            init(w, None, "", if p.max { f32::NEG_INFINITY } else { 0.0 });
            if !p.max {
                w.line("int count = 0;");
            }
            let top = w.depth;
            let (i, _) = tap_loops(w, &p.windows, &o, (!p.max).then_some("count++;"));
            let x = format!("x0[{} + ch]", pixel(&i, [wd.input, wh.input, ww.input], ch));
            if p.max {
                w.line(format!("acc = kerac_max({x}, acc);"));
            } else {
                w.line(format!("acc += {x};"));
            }
            w.close_to(top);
            if !p.max {
                w.line("acc *= 1.0f / (float)(count > 1 ? count : 1);");
            }
            w.line(format!(
                "y[{} + ch] = acc;",
                pixel(&o, [wd.output, wh.output, ww.output], ch)
            ));
            w.close_to(1);
        }
        Kernel::GlobalPool(p) => {
            let ch = p.channels;
            w.par(true);
            w.for_n("b", p.batch);
            w.for_n("ch", ch);
            w.par(false);
            init(w, None, "", if p.max { f32::NEG_INFINITY } else { 0.0 });
            w.for_n("pos", p.positions);
            let x = format!(
                "x0[{} + ch]",
                times(&c::horner(&[("b", 1), ("pos", p.positions)]), ch)
            );
            if p.max {
                w.line(format!("acc = kerac_max({x}, acc);"));
            } else {
                w.line(format!("acc += {x};"));
            }
            w.close();
            if !p.max && p.positions > 0 {
                w.line(format!("acc *= {};", c::flt(1.0 / p.positions as f32)));
            }
            w.line(format!("y[{}] = acc;", plus(&times("b", ch), "ch")));
            w.close_to(1);
        }
        _ => return false,
    }
    true
}

/// `float acc = bias[at];`, or `value`.
fn init(w: &mut W, bias: Option<&str>, at: &str, value: f32) {
    match bias {
        Some(b) => w.line(format!("float acc = {b}[{at}];")),
        None => w.line(format!("float acc = {};", c::flt(value))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_decode_into_the_grid_loops() {
        let grid = [
            ("b".to_string(), 1),
            ("oh".into(), 5),
            ("ow".into(), 7),
            ("co".into(), 3),
        ];
        let (text, n) = thread_index(&grid, "y[b + oh + ow + co]");
        assert_eq!(n, 105);
        assert!(text.contains("if (t >= 105) return;"));
        assert!(text.contains("const int b = 0;"));
        assert!(text.contains("const int oh = t / 21;"));
        assert!(text.contains("const int ow = t / 3 % 7;"));
        assert!(text.contains("const int co = t % 3;"));
        // A variable the body does not read is not declared (it would warn).
        let (text, _) = thread_index(&grid, "y[co]");
        assert!(!text.contains("const int oh"));
        // No grid: one thread.
        assert_eq!(thread_index(&[], "").1, 1);
    }

    #[test]
    fn ptxas_reports_read_per_kernel() {
        let report = "ptxas info    : Compiling entry function '_Z17net_step0_dense_2PKfPf' for 'sm_90'\nptxas info    : Function properties for _Z17net_step0_dense_2PKfPf\n    0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\nptxas info    : Used 40 registers, used 0 barriers\n";
        let usage = resource_usage(report);
        assert_eq!(
            usage,
            [Usage {
                kernel: "net_step0_dense_2".into(),
                registers: 40,
                spill_bytes: 8
            }]
        );
    }

    #[test]
    fn grids_cover_every_thread_with_whole_blocks() {
        assert_eq!(config(1), (1, 1));
        assert_eq!(config(256), (1, 256));
        assert_eq!(config(257), (2, 256));
        assert_eq!(config(16384), (64, 256));
    }
}
