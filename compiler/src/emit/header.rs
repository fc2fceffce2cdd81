//! The C header that goes with an object file: the entry point, the sizes and shapes
//! generic C code needs to drive it, and the model's facts, each documented.

use crate::plan::{Plan, Port};
use std::fmt::Write;

/// What the header says about where the model came from.
pub struct HeaderInfo<'a> {
    /// Symbol prefix: lower case for functions, upper case for macros.
    pub prefix: &'a str,
    /// The model file it was compiled from.
    pub source: &'a str,
    /// The target the object was compiled for.
    pub target: &'a str,
    /// Trainable and non-trainable parameters, as Keras counts them.
    pub params: usize,
}

/// Bytes of scratch memory the plan's entry point needs (at least 4, so that a pointer
/// to it is never to nothing).
pub fn scratch_bytes(plan: &Plan) -> usize {
    plan.arena_floats.max(1) * 4
}

/// Alignment the scratch buffer should have (the code itself tolerates any): a cache
/// line, as the plan aligns its large buffers (`plan::WIDE_ALIGN_FLOATS`).
pub const SCRATCH_ALIGN: usize = 64;

/// A C identifier from a Keras name: other characters become `_`.
pub(crate) fn c_ident(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn shape_list(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("{{{}}}", dims.join(", "))
}

/// The header for `plan` compiled with `info.prefix`.
pub fn header(plan: &Plan, info: &HeaderInfo) -> String {
    let p = info.prefix.to_ascii_lowercase();
    let m = info.prefix.to_ascii_uppercase();
    let size = |port: &Port| plan.buffers[port.buffer].len;
    let mut h = String::new();
    let w = &mut h;
    let cuda = info.target == super::cuda::TARGET;
    let with = if info.target == super::c::TARGET {
        "Compile the C file that came with this header (C99); it needs nothing else\n * (no libm, no runtime library)."
    } else if cuda {
        "Compile the .cu file that came with this header with nvcc; it needs the CUDA\n * runtime only. Compiled as C++ without nvcc, it runs the same kernels on the CPU."
    } else {
        "Link the object file that came with this header; it needs nothing else (no\n * libm, no runtime library)."
    };
    let _ = writeln!(
        w,
        "/* {p}.h: the Keras model `{}` compiled by kerac {} for {}.\n *\n * Source: {}\n *\n * {with} The code allocates nothing, has no data-dependent\n * branch, and every loop in it runs a constant number of times.\n */",
        plan.name,
        env!("CARGO_PKG_VERSION"),
        info.target,
        info.source
    );
    let _ = writeln!(w, "#ifndef {m}_KERAC_H\n#define {m}_KERAC_H\n");
    let _ = writeln!(w, "#ifdef __cplusplus\nextern \"C\" {{\n#endif\n");
    let _ = writeln!(
        w,
        "/* Samples per call: the batch size the model was compiled for. */"
    );
    let _ = writeln!(w, "#define {m}_BATCH {}\n", plan.batch);
    let _ = writeln!(w, "/* Inputs and outputs, in Keras's order. */");
    let _ = writeln!(w, "#define {m}_NUM_INPUTS {}", plan.inputs.len());
    let _ = writeln!(w, "#define {m}_NUM_OUTPUTS {}\n", plan.outputs.len());
    for (kind, ports) in [("INPUT", &plan.inputs), ("OUTPUT", &plan.outputs)] {
        for (i, port) in ports.iter().enumerate() {
            let _ = writeln!(
                w,
                "/* {} {i}: `{}`, shape {:?} (batch first), row-major floats. */",
                kind.to_ascii_lowercase(),
                port.name,
                port.shape
            );
            let _ = writeln!(w, "#define {m}_{kind}{i}_SIZE {}", size(port));
            let _ = writeln!(w, "#define {m}_{kind}{i}_RANK {}", port.shape.len());
            let _ = writeln!(
                w,
                "#define {m}_{kind}{i}_SHAPE {}\n",
                shape_list(&port.shape)
            );
        }
    }
    let sizes = |ports: &[Port]| shape_list(&ports.iter().map(size).collect::<Vec<_>>());
    let _ = writeln!(
        w,
        "/* The sizes above as array initialisers, for code that loops over the buffers:\n *   static const unsigned long sizes[] = {m}_INPUT_SIZES; */"
    );
    let _ = writeln!(w, "#define {m}_INPUT_SIZES {}", sizes(&plan.inputs));
    let _ = writeln!(w, "#define {m}_OUTPUT_SIZES {}\n", sizes(&plan.outputs));
    let _ = writeln!(
        w,
        "/* Bytes of scratch memory {p}_predict works in (activations live there), and the\n * alignment it should have for speed (any alignment is correct). */"
    );
    let _ = writeln!(w, "#define {m}_SCRATCH_BYTES {}", scratch_bytes(plan));
    let _ = writeln!(w, "#define {m}_SCRATCH_ALIGN {}\n", SCRATCH_ALIGN);
    if !plan.state.is_empty() {
        let _ = writeln!(
            w,
            "/* A streaming model: each call consumes one time step, and the recurrent state\n * lives in the scratch memory between calls. Zeroed scratch is the initial state:\n * call {p}_reset_state before the first step of every sequence. */\n#define {m}_STREAMING 1\nstatic inline void {p}_reset_state(void *scratch) {{\n    unsigned char *s = (unsigned char *)scratch;\n    for (unsigned long i = 0; i < {m}_SCRATCH_BYTES; i++) s[i] = 0;\n}}\n\n/* One time step: {p}_predict on one step of every sequence input. */\n#define {p}_step {p}_predict\n"
        );
    }
    let _ = writeln!(w, "/* Model facts. */");
    let _ = writeln!(w, "#define {m}_PARAMS {}", info.params);
    let _ = writeln!(w, "#define {m}_WEIGHT_BYTES {}", plan.weight_bytes());
    let _ = writeln!(w, "#define {m}_FLOPS {}\n", plan.flops());
    let scratch_doc = if plan.state.is_empty() {
        "reused across calls, not shared between\n *            threads running at the same time; its contents need no setup."
    } else {
        "holds the recurrent state between calls (one\n *            scratch per stream); zero it to start a sequence."
    };
    let _ = writeln!(
        w,
        "/* Runs the model once.\n *   inputs:  {m}_NUM_INPUTS pointers, input i to {m}_INPUT<i>_SIZE floats;\n *   outputs: {m}_NUM_OUTPUTS pointers, output i to {m}_OUTPUT<i>_SIZE floats;\n *   scratch: {m}_SCRATCH_BYTES bytes, {scratch_doc}\n * Returns 0 on success (the only value it returns today; others are reserved).\n * Input and output buffers may not overlap the scratch memory. Subnormals are\n * flushed to zero during the call, as TensorFlow computes Keras models (x86 MXCSR\n * FTZ and DAZ, Arm FZ; not on RISC-V, which has no such mode); the caller's\n * floating-point control register is restored before it returns. */"
    );
    let _ = writeln!(
        w,
        "int {p}_predict(const float *const *inputs, float *const *outputs, void *scratch);\n"
    );
    if cuda {
        let _ = writeln!(
            w,
            "/* The CUDA entry points. {p}_predict above exists only where the .cu was compiled\n * without nvcc, for checking the kernels on the CPU.\n *\n * Loads the kernels and the weights onto the current device, so that the first call\n * pays no loading. Returns 0, or the CUDA error (cudaError_t). */\nint {p}_init_cuda(void);\n\n/* Runs the model once on the current device, in order on `stream` (a cudaStream_t;\n * 0 for the default stream); returns as soon as the work is queued.\n *   inputs:  {m}_NUM_INPUTS device pointers (the array itself in host memory);\n *   outputs: {m}_NUM_OUTPUTS device pointers (likewise);\n *   device_scratch: {m}_SCRATCH_BYTES bytes of device memory, as scratch above\n *            (cudaMemsetAsync it to zero to start a sequence of a streaming model).\n * Returns 0, or the CUDA error of the launches (cudaError_t). */\nstruct CUstream_st;\nint {p}_predict_cuda(const float *const *inputs, float *const *outputs, void *device_scratch,\n                    struct CUstream_st *stream);\n"
        );
    }
    let mut names: Vec<String> = Vec::new();
    for port in plan.inputs.iter().chain(&plan.outputs) {
        let mut n = c_ident(&port.name);
        while names.contains(&n) || n == "scratch" {
            n.push('_');
        }
        names.push(n);
    }
    let (ins, outs) = names.split_at(plan.inputs.len());
    let params: Vec<String> = ins
        .iter()
        .map(|n| format!("const float *{n}"))
        .chain(outs.iter().map(|n| format!("float *{n}")))
        .chain(["void *scratch".to_string()])
        .collect();
    let _ = writeln!(
        w,
        "/* {p}_predict with one named argument per input and output. */\nstatic inline int {p}_predict_named({}) {{\n    const float *const inputs[] = {{{}}};\n    float *const outputs[] = {{{}}};\n    return {p}_predict(inputs, outputs, scratch);\n}}\n",
        params.join(", "),
        ins.join(", "),
        outs.join(", ")
    );
    let _ = writeln!(
        w,
        "#ifdef __cplusplus\n}}\n#endif\n\n#endif /* {m}_KERAC_H */"
    );
    h
}
