//! A compiled model inside a C program: the plan as an object file, as C99 source or as
//! CUDA C++ built for the CPU,
//! its header, and a harness (`tests/c/`) that knows the model only through the header;
//! linked by a C compiler and run natively, under qemu-user, or on a Cortex-M4 board
//! under qemu-system-arm.

use kerac_compiler::emit::c;
use kerac_compiler::emit::clif::{self, Target};
use kerac_compiler::emit::header::{header, HeaderInfo};
use kerac_compiler::plan::Plan;
use std::path::Path;
use std::process::Command;

/// A C compiler and how its programs run.
pub struct Toolchain {
    pub cc: &'static str,
    /// How to run a linked program: directly or under an emulator.
    pub runner: Option<&'static str>,
    pub flags: &'static [&'static str],
    /// A bare-metal board under `qemu-system-arm`: the program is
    /// `tests/c/cortex_m4_harness.c` with `examples/cortex_m4`'s start-up, and reads
    /// and writes its files through semihosting.
    pub board: bool,
}

impl Toolchain {
    /// The host's `cc`.
    pub const HOST: Toolchain = Toolchain {
        cc: "cc",
        runner: None,
        flags: &[],
        board: false,
    };

    /// `arm-none-eabi-gcc` for a Cortex-M4 with its FPU, run on QEMU's mps2-an386
    /// (4 MiB for code and weights, 4 MiB for data).
    pub const CORTEX_M4: Toolchain = Toolchain {
        cc: "arm-none-eabi-gcc",
        runner: None,
        flags: &[
            "-mcpu=cortex-m4",
            "-mfpu=fpv4-sp-d16",
            "-mfloat-abi=hard",
            "-mthumb",
        ],
        board: true,
    };

    /// The programs this toolchain needs that are not installed.
    pub fn missing(&self) -> Vec<&'static str> {
        let runner = if self.board {
            Some("qemu-system-arm")
        } else {
            self.runner
        };
        [Some(self.cc), runner]
            .into_iter()
            .flatten()
            .filter(|p| !available(p))
            .collect()
    }
}

/// True when `program --version` runs.
pub fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What the model becomes before the C compiler links it.
#[derive(Clone, Copy)]
pub enum Code {
    /// An object file for a target.
    Object(Target),
    /// C99 source, compiled with these flags.
    C { flags: &'static [&'static str] },
    /// CUDA C++ (`--emit cuda`) compiled as C++17 for the CPU by this compiler, with
    /// warnings as errors: the kernels run through the file's mapping onto loops.
    CudaOnHost { cxx: &'static str },
    /// CUDA C++ compiled by [`nvcc`] for the GPU `arch` (`native`: this machine's) and
    /// run on it (`tests/c/cuda_gpu_harness.cu` gives the harness its `net_predict`).
    CudaOnGpu { arch: &'static str },
}

/// nvcc: `KERAC_NVCC`, or `nvcc` on the path; `None` where neither runs.
pub fn nvcc() -> Option<String> {
    let nvcc = std::env::var("KERAC_NVCC").unwrap_or_else(|_| "nvcc".into());
    available(&nvcc).then_some(nvcc)
}

/// True where an NVIDIA GPU answers (`nvidia-smi -L` lists one).
pub fn gpu_present() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU"))
}

/// Runs `cmd`, an error with its output where it fails.
fn run_tool(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The warnings the C backend's output compiles clean under.
pub const STRICT: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"];

/// What the board's linker says when the program does not fit its memory.
fn does_not_fit(stderr: &str) -> bool {
    stderr.contains("will not fit in region") || stderr.contains("overflowed by")
}

/// Writes the model as `code` and its header into `case`, and links the harness
/// (`case/harness`, or `case/harness.elf` for the board). `Ok(false)` when the
/// program does not fit the board.
pub fn build(
    plan: &Plan,
    params: usize,
    source: &str,
    code: Code,
    tc: &Toolchain,
    case: &Path,
) -> Result<bool, String> {
    std::fs::create_dir_all(case).map_err(|e| e.to_string())?;
    let target = match code {
        Code::Object(t) => t.name(),
        Code::C { .. } => c::TARGET,
        Code::CudaOnHost { .. } | Code::CudaOnGpu { .. } => kerac_compiler::emit::cuda::TARGET,
    };
    let info = HeaderInfo {
        prefix: "net",
        source,
        target,
        params,
    };
    std::fs::write(case.join("model.h"), header(plan, &info)).map_err(|e| e.to_string())?;
    match code {
        Code::Object(target) => {
            let object = clif::object(plan, target, "net").map_err(|e| e.to_string())?;
            let undefined = clif::undefined_symbols(&object).map_err(|e| e.to_string())?;
            if !undefined.is_empty() {
                return Err(format!("the object needs symbols {undefined:?}"));
            }
            std::fs::write(case.join("model.o"), &object).map_err(|e| e.to_string())?;
        }
        Code::C { flags } => {
            let text = c::source(plan, "net", source).map_err(|e| e.to_string())?;
            std::fs::write(case.join("model.c"), text).map_err(|e| e.to_string())?;
            // -fstack-usage: the board's size report reads the deepest frame.
            let out = Command::new(tc.cc)
                .args(flags)
                .args(tc.flags)
                .args(["-O2", "-fstack-usage", "-c"])
                .arg(case.join("model.c"))
                .arg("-o")
                .arg(case.join("model.o"))
                .output()
                .map_err(|e| format!("{}: {e}", tc.cc))?;
            if !out.status.success() {
                return Err(format!(
                    "{} failed on model.c: {}",
                    tc.cc,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Code::CudaOnHost { cxx } => {
            let text = kerac_compiler::emit::cuda::source(plan, "net", source)
                .map_err(|e| e.to_string())?;
            std::fs::write(case.join("model.cu"), text).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(cxx);
            cmd.args(kerac_compiler::emit::cuda::HOST_CXX_FLAGS)
                .args(["-O1", "-c"])
                .arg(case.join("model.cu"))
                .arg("-o")
                .arg(case.join("model.o"));
            run_tool(cmd, &format!("{cxx} on model.cu"))?;
        }
        Code::CudaOnGpu { arch } => {
            let nvcc = nvcc().ok_or("no nvcc (set KERAC_NVCC)")?;
            let text = kerac_compiler::emit::cuda::source(plan, "net", source)
                .map_err(|e| e.to_string())?;
            std::fs::write(case.join("model.cu"), text).map_err(|e| e.to_string())?;
            let c_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("c");
            let nv = || {
                let mut cmd = Command::new(&nvcc);
                // -ftz=true: subnormals flushed, as Keras's CPU kernels flush them.
                cmd.args(["-std=c++17", "-O2", "-ftz=true", "-Werror", "all-warnings"])
                    .arg(format!("-arch={arch}"))
                    .arg("-I")
                    .arg(case);
                cmd
            };
            let mut model = nv();
            model
                .arg("-c")
                .arg(case.join("model.cu"))
                .arg("-o")
                .arg(case.join("model.o"));
            run_tool(model, "nvcc on model.cu")?;
            let mut gpu = nv();
            gpu.arg("-c")
                .arg(c_dir.join("cuda_gpu_harness.cu"))
                .arg("-o")
                .arg(case.join("gpu.o"));
            run_tool(gpu, "nvcc on cuda_gpu_harness.cu")?;
            let mut link = nv();
            link.arg(kerac_compiler::emit::c::HARNESS_PATH)
                .arg(case.join("model.o"))
                .arg(case.join("gpu.o"))
                .arg("-o")
                .arg(case.join("harness"));
            run_tool(link, "nvcc linking the harness")?;
            return Ok(true);
        }
    }
    let c_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("c");
    let mut link = Command::new(tc.cc);
    link.args(tc.flags).arg("-O1").arg("-I").arg(case);
    if tc.board {
        let board = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cortex_m4");
        let pool: usize = plan
            .inputs
            .iter()
            .chain(&plan.outputs)
            .map(|p| plan.buffers[p.buffer].len)
            .sum();
        link.arg("-I")
            .arg(&board)
            .arg(format!("-DPOOL_FLOATS={}", pool.max(1)))
            .args(["-ffreestanding", "-nostartfiles", "-T"])
            .arg(board.join("mps2_an386.ld"))
            .arg(board.join("startup.c"))
            .arg(board.join("semihost.c"))
            .arg(c_dir.join("cortex_m4_harness.c"))
            .arg(case.join("model.o"))
            .args(["-lc", "-lgcc", "-o"])
            .arg(case.join("harness.elf"));
    } else {
        link.arg(kerac_compiler::emit::c::HARNESS_PATH)
            .arg(case.join("model.o"))
            .arg("-o")
            .arg(case.join("harness"));
    }
    let out = link.output().map_err(|e| format!("{}: {e}", tc.cc))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if tc.board && does_not_fit(&stderr) {
            return Ok(false);
        }
        return Err(format!("{} failed: {stderr}", tc.cc));
    }
    Ok(true)
}

/// Runs the program [`build`] linked in `case` for `calls` calls on `inputs` (every
/// call's inputs in order, as float32), resetting a streaming model's state every
/// `reset_every` calls (0: only before the first); returns every call's outputs.
pub fn run(
    tc: &Toolchain,
    case: &Path,
    inputs: &[f32],
    calls: usize,
    reset_every: usize,
) -> Result<Vec<f32>, String> {
    let bytes: Vec<u8> = inputs.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(case.join("inputs.bin"), bytes).map_err(|e| e.to_string())?;
    let out = if tc.board {
        // The program finds its files in QEMU's folder; the call count is the input
        // file's length, and the reset period a file of its own.
        std::fs::write(case.join("reset_every.txt"), reset_every.to_string())
            .map_err(|e| e.to_string())?;
        Command::new("timeout")
            .arg("600")
            .arg("qemu-system-arm")
            .args(["-M", "mps2-an386", "-nographic", "-monitor", "none"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .arg("-kernel")
            .arg(case.join("harness.elf"))
            .current_dir(case)
            .output()
    } else {
        let mut run = match tc.runner {
            Some(emulator) => {
                let mut c = Command::new(emulator);
                c.arg(case.join("harness"));
                c
            }
            None => Command::new(case.join("harness")),
        };
        run.arg(case.join("inputs.bin"))
            .arg(case.join("outputs.bin"))
            .arg(calls.to_string())
            .arg(reset_every.to_string())
            .output()
    }
    .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "the program failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let raw = std::fs::read(case.join("outputs.bin")).map_err(|e| e.to_string())?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}
