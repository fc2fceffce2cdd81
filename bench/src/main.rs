//! The Rust half of `bench/run.sh`: times kerac's Rust backend (`model!`), kerac's
//! Cranelift object and tract on the benchmark models, every call on its own, and writes
//! the latencies for `bench.py report`. ONNX Runtime, TensorFlow Lite and TensorFlow are
//! timed by `bench.py time` on the same inputs, which this program writes.
//!
//! `kerac-bench [--results DIR] [--runs N] [--seconds S] [MODEL ...]`

use kerac_compiler::bench::{derived_peak_flops, measured_peak};
use kerac_compiler::plan::{exec, Kernel, Plan};
use serde_json::{json, Value};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One benchmark model, compiled by the build script.
pub struct Bench {
    name: &'static str,
    label: &'static str,
    file: &'static str,
    flops: u64,
    input_shapes: &'static [&'static [usize]],
    output_lens: &'static [usize],
    rust: fn() -> Box<dyn kerac::Model>,
    /// The Cranelift objects, by target, narrowest first.
    objects: &'static [(&'static str, ObjectFn)],
    scratch_bytes: usize,
}

/// An object's `<prefix>_predict`.
type ObjectFn = unsafe extern "C" fn(*const *const f32, *const *mut f32, *mut u8) -> i32;

include!(concat!(env!("OUT_DIR"), "/models.rs"));

/// Inputs cycled through by every tool: `NORMAL` uniform draws in [-1, 1), then
/// `SUBNORMAL` whose every value (or every other value) is a float32 subnormal.
const NORMAL: usize = 48;
const SUBNORMAL: usize = 16;
const POOL: usize = NORMAL + SUBNORMAL;

/// A cache line of an object's scratch memory, which its header asks to be 64-aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

struct Options {
    results: PathBuf,
    runs: usize,
    seconds: f64,
    only: Vec<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        results: Path::new(env!("CARGO_MANIFEST_DIR")).join("results"),
        runs: 100_000,
        seconds: 5.0,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().ok_or(format!("{a} needs {what}"));
        match a.as_str() {
            "--results" => o.results = value("a folder")?.into(),
            "--runs" => {
                o.runs = value("a count")?
                    .parse()
                    .map_err(|e| format!("--runs: {e}"))?
            }
            "--seconds" => {
                o.seconds = value("seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => o.only.push(s.to_string()),
        }
    }
    Ok(o)
}

/// Deterministic pool of `POOL` inputs of `len` floats each.
fn pool(len: usize) -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(POOL * len);
    for i in 0..POOL {
        for j in 0..len {
            let r = next();
            let uniform = (r >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            let subnormal = i >= NORMAL && (i < NORMAL + SUBNORMAL / 2 || j % 2 == 0);
            out.push(if subnormal {
                // A random subnormal: exponent bits zero, mantissa nonzero, either sign.
                f32::from_bits(((r >> 9) as u32 & 0x007f_ffff).max(1) | ((r as u32 & 1) << 31))
            } else {
                uniform
            });
        }
    }
    out
}

/// Times `f(i)` for i = 0, 1, ... (the pool index is `i % POOL`), each call on its own,
/// after a warm-up of about a quarter second. Stops after `runs` calls or, with a
/// budget, once the budget is spent (but not before 200 calls).
fn time_calls(runs: usize, budget: Option<f64>, mut f: impl FnMut(usize)) -> Vec<u32> {
    let warm = Instant::now();
    let mut i = 0;
    while warm.elapsed() < Duration::from_millis(250) || i < 100 {
        f(i % POOL);
        i += 1;
    }
    let mut times = Vec::with_capacity(runs);
    let start = Instant::now();
    for i in 0..runs {
        let t = Instant::now();
        f(i % POOL);
        times.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        if budget.is_some_and(|b| i >= 200 && i % 64 == 0 && start.elapsed().as_secs_f64() > b) {
            break;
        }
    }
    times
}

fn write_samples(
    results: &Path,
    model: &str,
    tool: &str,
    times: &[u32],
) -> std::io::Result<String> {
    let file = format!("raw/{model}.{tool}.u32");
    let bytes: Vec<u8> = times.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(results.join(&file), bytes)?;
    Ok(file)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max)
}

/// Loads the ONNX file into tract's optimised plan at batch 1 and returns a closure
/// that runs one input.
type TractRun = Box<dyn FnMut(&[f32]) -> Result<Vec<f32>, String>>;
fn tract(file: &Path, shape: &[usize]) -> Result<TractRun, String> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_path(file)
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| format!("{e:#}"))?;
    let shape = shape.to_vec();
    Ok(Box::new(move |x: &[f32]| {
        let input = Tensor::from_shape(&shape, x).map_err(|e| format!("{e:#}"))?;
        let out = plan
            .run(tvec!(input.into()))
            .map_err(|e| format!("{e:#}"))?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| format!("{e:#}"))?;
        Ok(view.iter().copied().collect())
    }))
}

/// The steps that decide speed: the Dense and the Conv with the most FLOPs, each timed
/// on its own (median of 2000 calls) twice: on the runtime's kernels through the plan
/// (`Model::run`'s code, with generic shapes), and as the x86-64 object's step function
/// at the host's widest vectors (shapes as constants, as in `model!`'s steps).
fn largest_layers(bench: &Bench, x: &[f32], peak: Option<f64>) -> Result<Value, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = kerac_compiler::load(&root.join(bench.file), None, &Default::default())
        .map_err(|e| e.to_string())?;
    let plan = Plan::new(&graph).map_err(|e| e.to_string())?;
    let len: usize = bench.input_shapes[0].iter().product();
    let input =
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(bench.input_shapes[0]), x[..len].to_vec())
            .map_err(|e| e.to_string())?;
    let isa = kerac::Dispatch::detect(kerac::Level::Avx512);
    let times = exec::profile(&plan.with_runtime_panels(), isa, &[input], 2000)
        .map_err(|e| e.to_string())?;
    let object = object_steps(&plan, &x[..len]);
    let mut out = serde_json::Map::new();
    for (kind, pick) in [
        (
            "dense",
            (|k: &Kernel| matches!(k, Kernel::Dense { .. })) as fn(&Kernel) -> bool,
        ),
        ("conv", |k: &Kernel| matches!(k, Kernel::Conv { .. })),
    ] {
        let best = plan
            .steps
            .iter()
            .zip(&times)
            .filter(|(s, _)| pick(&s.kernel))
            .max_by_key(|(s, _)| s.flops);
        if let Some((step, ns)) = best {
            let rate = step.flops as f64 / ns * 1e9;
            let k = plan.steps.iter().position(|s| std::ptr::eq(s, step));
            let object_ns = object
                .as_ref()
                .ok()
                .and_then(|o| o.get(k?).copied());
            let object_rate = object_ns.map(|o| step.flops as f64 / o * 1e9);
            out.insert(
                kind.into(),
                json!({
                    "layers": step.layers,
                    "loops": step.kernel.loops(),
                    "flops": step.flops,
                    "median_ns": ns,
                    "gflops": rate / 1e9,
                    "share_of_peak": peak.map(|p| rate / p),
                    "object_median_ns": object_ns,
                    "object_share_of_peak": object_rate.zip(peak).map(|(r, p)| r / p),
                    "object_error": object.as_ref().err(),
                }),
            );
        }
    }
    Ok(Value::Object(out))
}

/// Each step function of the x86-64 object for the host (the JIT: the same code),
/// timed alone on what one call on `x` left in its scratch: median of 2000 calls.
fn object_steps(plan: &Plan, x: &[f32]) -> Result<Vec<f64>, String> {
    use kerac_compiler::emit::clif::Jit;
    let mut jit = Jit::new(plan).map_err(|e| e.to_string())?;
    let mut outs: Vec<Vec<f32>> = plan
        .outputs
        .iter()
        .map(|p| vec![0.0; plan.buffers[p.buffer].len])
        .collect();
    let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    jit.run(&[x], &mut views).map_err(|e| e.to_string())?;
    Ok((0..plan.steps.len())
        .map(|k| kerac_compiler::bench::measure(2000, 200, || jit.run_step(k)).median_ns)
        .collect())
}

/// Time kerac gets per backend and model: `--runs` calls, cut at four times a peer's
/// time and at least 20 s, so that a real architecture (milliseconds a call) takes
/// seconds rather than an hour, while the small models still make every call.
fn kerac_seconds(o: &Options) -> f64 {
    (4.0 * o.seconds).max(20.0)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kerac-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let o = options()?;
    let io = |e: std::io::Error| e.to_string();
    std::fs::create_dir_all(o.results.join("raw")).map_err(io)?;
    std::fs::create_dir_all(o.results.join("inputs")).map_err(io)?;
    let widest = measured_peak();
    let measured = widest.map(|(flops, _)| flops);
    let derived = derived_peak_flops();
    if let Some((p, isa)) = widest {
        println!(
            "measured peak of one core: {:.1} GFLOP/s (independent {isa} FMAs, the widest this CPU has)",
            p / 1e9
        );
    }
    if let Some((p, how)) = &derived {
        println!("data-sheet peak: {:.1} GFLOP/s ({how})", p / 1e9);
    }
    let machine = json!({
        "measured_peak_flops": measured,
        "derived_peak_flops": derived.as_ref().map(|d| d.0),
        "derived_peak_from": derived.as_ref().map(|d| d.1.clone()),
        "peak_isa": widest.map(|(_, isa)| isa),
        "rust_simd": kerac::Dispatch::detect(kerac::Level::Avx512).level().name(),
    });
    std::fs::write(
        o.results.join("raw/machine.json"),
        serde_json::to_string_pretty(&machine).unwrap(),
    )
    .map_err(io)?;
    for bench in models() {
        if !o.only.is_empty() && !o.only.iter().any(|m| m == bench.name) {
            continue;
        }
        if bench.input_shapes.len() != 1 {
            return Err(format!(
                "{}: the benchmark takes one-input models",
                bench.name
            ));
        }
        let in_len: usize = bench.input_shapes[0].iter().product();
        let out_len: usize = bench.output_lens.iter().sum();
        let xs = pool(in_len);
        let x = |i: usize| &xs[i * in_len..(i + 1) * in_len];
        let bytes: Vec<u8> = xs.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(o.results.join(format!("inputs/{}.f32", bench.name)), bytes).map_err(io)?;
        println!("{} ({}): {} FLOPs", bench.name, bench.label, bench.flops);
        let mut tools = serde_json::Map::new();

        // kerac, Rust backend.
        let mut model = (bench.rust)();
        let mut outs: Vec<Vec<f32>> = bench.output_lens.iter().map(|&n| vec![0.0; n]).collect();
        let mut reference = vec![Vec::new(); POOL];
        for (i, r) in reference.iter_mut().enumerate() {
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            model
                .run(&[x(i)], &mut views)
                .map_err(|e| format!("{}: {e:?}", bench.name))?;
            *r = outs.concat();
        }
        let kerac_outs: Vec<u8> = reference
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(
            o.results
                .join(format!("inputs/{}.kerac_out.f32", bench.name)),
            kerac_outs,
        )
        .map_err(io)?;
        let times = {
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            time_calls(o.runs, Some(kerac_seconds(&o)), |i| {
                let _ = model.run(black_box(&[x(i)]), &mut views);
            })
        };
        tools.insert("kerac (model!)".into(), json!({"samples": write_samples(&o.results, bench.name, "kerac_rust", &times).map_err(io)?, "max_abs_diff": 0.0}));

        // kerac, Cranelift objects.
        for &(target, predict) in bench.objects {
            let mut scratch = vec![Line([0; 64]); bench.scratch_bytes.div_ceil(64).max(1)];
            let mut out = vec![0f32; out_len];
            let object = |i: usize, out: &mut Vec<f32>, scratch: &mut Vec<Line>| {
                let mut ptrs = Vec::with_capacity(bench.output_lens.len());
                let mut at = 0;
                for &n in bench.output_lens {
                    ptrs.push(out[at..].as_mut_ptr());
                    at += n;
                }
                let ins = [x(i).as_ptr()];
                // SAFETY: the object's predict reads one input of `in_len` floats, writes
                // the outputs' lengths into `out`, and uses `scratch_bytes` of scratch
                // (aligned as the header asks, a cache line).
                unsafe { predict(ins.as_ptr(), ptrs.as_ptr(), scratch.as_mut_ptr().cast()) }
            };
            let mut diff = 0f64;
            for (i, r) in reference.iter().enumerate() {
                if object(i, &mut out, &mut scratch) != 0 {
                    return Err(format!("{}: the object's predict failed", bench.name));
                }
                diff = diff.max(max_abs_diff(&out, r));
            }
            let times = time_calls(o.runs, Some(kerac_seconds(&o)), |i| {
                black_box(object(i, &mut out, &mut scratch));
            });
            let file = format!("kerac_object_{}", target.replace('-', "_"));
            tools.insert(format!("kerac (object, {target})"), json!({"samples": write_samples(&o.results, bench.name, &file, &times).map_err(io)?, "max_abs_diff": diff}));
        }

        // tract, on the ONNX file bench.py exported.
        let onnx = o.results.join(format!("models/{}.onnx", bench.name));
        let entry = match tract(&onnx, bench.input_shapes[0]) {
            Err(e) => json!({"error": format!("loading {}: {e}", onnx.display())}),
            Ok(mut run) => {
                let mut diff = 0f64;
                let mut error = None;
                for (i, r) in reference.iter().enumerate() {
                    match run(x(i)) {
                        Ok(y) => diff = diff.max(max_abs_diff(&y, r)),
                        Err(e) => error = Some(e),
                    }
                }
                match error {
                    Some(e) => json!({"error": e}),
                    None => {
                        let times = time_calls(o.runs, Some(o.seconds), |i| {
                            black_box(run(x(i)).ok());
                        });
                        json!({"samples": write_samples(&o.results, bench.name, "tract", &times).map_err(io)?, "max_abs_diff": diff})
                    }
                }
            }
        };
        tools.insert("tract".into(), entry);

        let layers = largest_layers(&bench, x(0), measured).unwrap_or_else(|e| json!({"error": e}));
        let meta = json!({
            "name": bench.name,
            "label": bench.label,
            "flops": bench.flops,
            "input_shape": bench.input_shapes[0],
            "pool": {"size": POOL, "normal": NORMAL, "subnormal": SUBNORMAL},
            "tools": tools,
            "largest_layers": layers,
        });
        std::fs::write(
            o.results.join(format!("raw/{}.json", bench.name)),
            serde_json::to_string_pretty(&meta).unwrap(),
        )
        .map_err(io)?;
    }
    Ok(())
}
