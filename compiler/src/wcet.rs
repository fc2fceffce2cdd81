//! `kerac inspect --wcet`: what a worst-case execution time analysis needs, per step of
//! the plan: the loop nest of the generated code with constant trip counts, FLOPs, bytes
//! moved, and the instructions the step executes (measured once: every input takes the
//! same path), then an upper bound in cycles for a stated simple machine model.
//!
//! Instructions are counted by running the JIT-compiled code (the code `compile --emit
//! obj` writes for this machine) under Valgrind's callgrind, which counts every
//! instruction executed; client requests switch counting on around one step at a time.

use crate::emit::clif::{Jit, Loop};
use crate::error::{Error, Result};
use crate::plan::Plan;
use serde::Serialize;

/// The machine the cycle bound assumes: it runs one instruction at a time, each taking
/// at most `cycles_per_instruction`, and every 64-byte line a step reads or writes
/// misses every cache once, costing `miss_cycles`. Pessimistic on purpose: a bound, not
/// an estimate.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MachineModel {
    /// Cycles any one instruction may take. The default, 14, is the longest latency of
    /// what kerac emits on x86-64 (a packed square root) on recent cores.
    pub cycles_per_instruction: u64,
    /// Cache line bytes.
    pub line_bytes: u64,
    /// Cycles to fetch one line from memory.
    pub miss_cycles: u64,
}

impl Default for MachineModel {
    fn default() -> Self {
        MachineModel {
            cycles_per_instruction: 14,
            line_bytes: 64,
            miss_cycles: 300,
        }
    }
}

/// One loop of the generated code.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LoopRow {
    /// Loops around it in its step's function (0 outermost).
    pub depth: usize,
    /// Constant trip count each time it is entered.
    pub trips: usize,
    /// Times its body runs per call: its trip count times its enclosing loops'.
    pub body_runs: u64,
}

/// One step of the plan as the analysis sees it.
#[derive(Debug, Clone, Serialize)]
pub struct WcetStep {
    /// The function the step compiles to (`<prefix>_step<k>` in objects).
    pub function: String,
    /// Runtime kernel.
    pub kernel: String,
    /// Keras layers it implements.
    pub layers: String,
    /// The loops of its code in emission order (pre-order: a loop's inner loops follow
    /// it with larger depth).
    pub loops: Vec<LoopRow>,
    /// FLOPs per call.
    pub flops: u64,
    /// Bytes read: inputs and weights.
    pub bytes_read: usize,
    /// Bytes written.
    pub bytes_written: usize,
    /// Instructions executed, measured (the call into the step included).
    pub instructions: Option<u64>,
    /// The machine model's bound for the step.
    pub cycle_bound: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct WcetReport {
    /// Model name.
    pub model: String,
    /// The code measured: this machine's JIT, the same as `--emit obj` for it.
    pub code: String,
    /// How the instructions were counted, or why they were not.
    pub instructions_from: String,
    /// The machine the cycle bounds assume.
    pub machine_model: MachineModel,
    /// Steps in order.
    pub steps: Vec<WcetStep>,
    /// Loops of `predict` itself: copying the inputs in and the outputs out.
    pub io_loops: Vec<LoopRow>,
    /// Instructions of one whole `predict` call, measured.
    pub instructions: Option<u64>,
    /// Upper bound on the cycles of one `predict` call under the machine model.
    pub cycle_bound: Option<u64>,
}

/// Loop rows with body runs, from loops in emission order.
pub fn loop_rows(loops: &[Loop]) -> Vec<LoopRow> {
    let mut runs_at_depth: Vec<u64> = Vec::new();
    loops
        .iter()
        .map(|l| {
            runs_at_depth.truncate(l.depth);
            let enclosing = runs_at_depth.last().copied().unwrap_or(1);
            let body_runs = enclosing * l.trips as u64;
            runs_at_depth.push(body_runs);
            LoopRow {
                depth: l.depth,
                trips: l.trips,
                body_runs,
            }
        })
        .collect()
}

/// Instructions measured under callgrind: per step, and for a whole call.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct Counts {
    /// Per step, the call included.
    pub steps: Vec<u64>,
    /// One whole `predict` call, through the JIT's Rust wrapper.
    pub predict: u64,
}

impl WcetReport {
    /// The report for `plan`; `counts` from [`count_in_valgrind`] where Valgrind ran.
    pub fn new(
        plan: &Plan,
        counts: std::result::Result<Counts, String>,
        machine: MachineModel,
    ) -> Result<WcetReport> {
        let jit = Jit::new(plan)?;
        let rows = crate::report::PlanReport::new(plan).steps;
        let lines = |bytes: usize| (bytes as u64).div_ceil(machine.line_bytes);
        let bound = |instructions: u64, bytes: usize| {
            instructions * machine.cycles_per_instruction + lines(bytes) * machine.miss_cycles
        };
        let (counts, from) = match counts {
            Ok(c) if c.steps.len() == plan.steps.len() => (
                Some(c),
                "callgrind (Valgrind): every instruction executed, one call".to_string(),
            ),
            Ok(_) => (
                None,
                "callgrind returned a different number of steps".into(),
            ),
            Err(why) => (None, why),
        };
        let steps: Vec<WcetStep> = plan
            .steps
            .iter()
            .zip(rows)
            .zip(jit.loops())
            .enumerate()
            .map(|(k, ((step, row), loops))| {
                let instructions = counts.as_ref().map(|c| c.steps[k]);
                WcetStep {
                    function: format!("step{k}"),
                    kernel: row.kernel,
                    layers: step.layers.clone(),
                    loops: loop_rows(loops),
                    flops: step.flops,
                    bytes_read: row.bytes_read,
                    bytes_written: row.bytes_written,
                    instructions,
                    cycle_bound: instructions.map(|n| bound(n, row.bytes_read + row.bytes_written)),
                }
            })
            .collect();
        let io_bytes: usize = plan
            .inputs
            .iter()
            .chain(&plan.outputs)
            .map(|p| 8 * plan.buffers[p.buffer].len)
            .sum();
        let instructions = counts.as_ref().map(|c| c.predict);
        let cycle_bound = instructions.map(|n| {
            let moved: usize = steps.iter().map(|s| s.bytes_read + s.bytes_written).sum();
            bound(n, moved + io_bytes)
        });
        Ok(WcetReport {
            model: plan.name.clone(),
            code: format!(
                "Cranelift, {} (this machine; `kerac compile --emit obj` for it)",
                std::env::consts::ARCH
            ),
            instructions_from: from,
            machine_model: machine,
            steps,
            io_loops: loop_rows(jit.io_loops()),
            instructions,
            cycle_bound,
        })
    }

    /// The report as text: one block per step.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(s, "model {}; code: {}", self.model, self.code);
        let _ = writeln!(s, "instructions: {}", self.instructions_from);
        let m = &self.machine_model;
        let _ = writeln!(
            s,
            "machine model: one instruction at a time, each <= {} cycles; every {}-byte line read or written misses once, {} cycles",
            m.cycles_per_instruction, m.line_bytes, m.miss_cycles
        );
        for (k, st) in self.steps.iter().enumerate() {
            let _ = writeln!(
                s,
                "\nstep {k} ({}): {} [{}]\n  FLOPs {}  bytes read {}  written {}  instructions {}  cycle bound {}",
                st.function,
                st.kernel,
                st.layers,
                st.flops,
                st.bytes_read,
                st.bytes_written,
                opt(st.instructions),
                opt(st.cycle_bound)
            );
            if st.loops.is_empty() {
                let _ = writeln!(s, "  straight-line code, no loop");
            }
            for l in &st.loops {
                let _ = writeln!(
                    s,
                    "  {}loop x{}  (body runs {} per call)",
                    "  ".repeat(l.depth),
                    l.trips,
                    l.body_runs
                );
            }
        }
        let _ = writeln!(
            s,
            "\npredict: {} loops copying inputs and outputs; instructions per call {}; cycle bound {}",
            self.io_loops.len(),
            opt(self.instructions),
            opt(self.cycle_bound)
        );
        s
    }
}

/// Runs `program args... --dumps FILE` under Valgrind's callgrind, with counting off
/// until the program's client requests switch it on, and reads the [`Counts`] it prints
/// (as JSON, from [`count_in_valgrind`]). The error says why there are none.
pub fn count_under_valgrind(
    program: &std::path::Path,
    args: &[std::ffi::OsString],
) -> std::result::Result<Counts, String> {
    if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        return Err("not measured: instruction counting needs x86-64 Linux".into());
    }
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kerac-wcet-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("not measured: {}: {e}", dir.display()))?;
    let dumps = dir.join("callgrind.out");
    let out = std::process::Command::new("valgrind")
        .args(["--tool=callgrind", "--collect-atstart=no", "--quiet"])
        .arg(format!("--callgrind-out-file={}", dumps.display()))
        .arg(program)
        .args(args)
        .arg("--dumps")
        .arg(&dumps)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.map_err(|e| {
        format!("not measured: Valgrind could not be run ({e}); install it (apt install valgrind) to count instructions")
    })?;
    if !out.status.success() {
        // Valgrind's own report, without its `==pid==` prefixes and empty lines.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why: Vec<&str> = stderr
            .lines()
            .map(|l| {
                l.trim_start_matches(|c: char| c == '=' || c.is_ascii_digit())
                    .trim()
            })
            .filter(|l| !l.is_empty())
            .take(3)
            .collect();
        return Err(format!(
            "not measured: counting under Valgrind failed: {}",
            why.join("; ")
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("not measured: reading the counts: {e}"))
}

/// Valgrind's client requests, x86-64 Linux: a sequence that does nothing on a real
/// CPU and that Valgrind recognises.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod valgrind {
    const CALLGRIND: u64 = ((b'C' as u64) << 24) | ((b'T' as u64) << 16);
    /// Counts the instructions executed from now until the next toggle (or stops).
    pub const TOGGLE_COLLECT: u64 = CALLGRIND + 2;
    /// Writes the counts so far to a new dump file, then zeroes them.
    pub const DUMP_STATS: u64 = CALLGRIND;
    /// Nonzero under Valgrind.
    pub const RUNNING_ON_VALGRIND: u64 = 0x1001;

    #[inline(always)]
    pub fn request(code: u64) -> u64 {
        let args: [u64; 6] = [code, 0, 0, 0, 0, 0];
        let mut result: u64 = 0;
        // SAFETY: Valgrind's documented "special instruction" preamble: the rotations
        // of rdi add up to 128 bits and xchg rbx,rbx swaps a register with itself, so
        // on a CPU nothing changes; Valgrind reads the request from [rax] and writes
        // its answer to rdx.
        unsafe {
            core::arch::asm!(
                "rol rdi, 3",
                "rol rdi, 13",
                "rol rdi, 61",
                "rol rdi, 51",
                "xchg rbx, rbx",
                inout("rdx") result,
                in("rax") args.as_ptr(),
                options(nostack, preserves_flags),
            );
        }
        result
    }
}

/// In the process Valgrind runs: counts each step of the JIT-compiled plan, and a whole
/// call, writing one callgrind dump each; the dumps are read back from `dumps`, the
/// `--callgrind-out-file` base the parent gave. Input value `i` is `fill(i)`: the
/// counts do not depend on it (a test holds them equal across kinds of input).
pub fn count_in_valgrind(
    plan: &Plan,
    dumps: &std::path::Path,
    fill: &dyn Fn(usize) -> f32,
) -> Result<Counts> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use valgrind::*;
        if request(RUNNING_ON_VALGRIND) == 0 {
            return Err(Error::new("not running under Valgrind"));
        }
        let mut jit = Jit::new(plan)?;
        let ins: Vec<Vec<f32>> = plan
            .inputs
            .iter()
            .map(|p| (0..plan.buffers[p.buffer].len).map(fill).collect())
            .collect();
        let mut outs: Vec<Vec<f32>> = plan
            .outputs
            .iter()
            .map(|p| vec![0.0; plan.buffers[p.buffer].len])
            .collect();
        let ins: Vec<&[f32]> = ins.iter().map(Vec::as_slice).collect();
        let mut outs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        jit.run(&ins, &mut outs)?;
        let mut dump = 0usize;
        let read = |dump: usize| -> Result<u64> {
            let path = format!("{}.{dump}", dumps.display());
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::new(format!("reading callgrind's dump {path}: {e}")))?;
            let _ = std::fs::remove_file(&path);
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| Error::new(format!("no totals in callgrind's dump {path}")))
        };
        let mut measure = |f: &mut dyn FnMut()| -> Result<u64> {
            request(TOGGLE_COLLECT);
            f();
            request(TOGGLE_COLLECT);
            request(DUMP_STATS);
            dump += 1;
            read(dump)
        };
        // What the toggles themselves count, taken off every measurement.
        let base = measure(&mut || {})?;
        let empty = measure(&mut || jit.run_step(usize::MAX))?;
        let steps = (0..plan.steps.len())
            .map(|k| Ok(measure(&mut || jit.run_step(k))?.saturating_sub(empty)))
            .collect::<Result<Vec<u64>>>()?;
        let predict = measure(&mut || {
            let _ = jit.run(&ins, &mut outs);
        })?
        .saturating_sub(base);
        Ok(Counts { steps, predict })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = (plan, dumps, fill);
        Err(Error::new("instruction counting needs x86-64 Linux"))
    }
}
