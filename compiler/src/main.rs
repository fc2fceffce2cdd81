//! The `kerac` command. Argument parsing and printing only; the work is in the library.

use clap::{Args, Parser, Subcommand, ValueEnum};
use kerac_compiler::emit::clif::{self, Jit, Target, Wide};

use kerac_compiler::emit::header::{header, HeaderInfo};
use kerac_compiler::io::{self, IoFile};
use kerac_compiler::plan::{self, Plan};
use kerac_compiler::report::Report;
use kerac_compiler::{bench, diagnose, interp, BuildOptions, Dispatch, Error, Graph, Level};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kerac",
    version,
    about = "Ahead-of-time compiler for Keras models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the layers, shapes, parameters and FLOPs of a model.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Report what a worst-case execution time analysis needs: per step, the loop
        /// nest of the generated code with its trip counts, FLOPs, bytes, and the
        /// instructions executed (counted under Valgrind when it is installed), and a
        /// cycle bound for the whole call. Writes the report as JSON too.
        #[arg(long)]
        wcet: bool,
        /// Where `--wcet` writes its JSON (default: <model stem>.wcet.json).
        #[arg(long, short, requires = "wcet")]
        output: Option<PathBuf>,
        /// Machine model of `--wcet`: the most cycles any one instruction takes.
        #[arg(long, default_value_t = 14, requires = "wcet")]
        cycles_per_instruction: u64,
        /// Machine model of `--wcet`: cycles to fetch a 64-byte line from memory.
        #[arg(long, default_value_t = 300, requires = "wcet")]
        miss_cycles: u64,
        /// Report the launches of `compile --emit cuda`: per step, its kernel, grid and
        /// block.
        #[arg(long, conflicts_with = "wcet")]
        cuda: bool,
    },
    /// Counts the instructions of each step under Valgrind (run by `inspect --wcet`).
    #[command(hide = true)]
    CountInstructions {
        #[command(flatten)]
        model: ModelArgs,
        /// Callgrind's output file base.
        #[arg(long)]
        dumps: PathBuf,
    },
    /// Run a model on inputs from a kerac-io/1 file and write its outputs.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Inputs (kerac-io/1 JSON).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the outputs; standard output when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Backend::Jit)]
        backend: Backend,
    },
    /// Compile a model to Rust source (the code the `model!` macro expands to), or to a
    /// native object file with a C header.
    Compile {
        #[command(flatten)]
        model: ModelArgs,
        /// What to produce.
        #[arg(long, value_enum, default_value_t = Emit::Rust)]
        emit: Emit,
        /// Output file; standard output when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Name of the generated type (Rust).
        #[arg(long, default_value = "Model")]
        name: String,
        /// Machine the object is for (obj): x86_64 (x86-64-v2: SSE4.2), x86_64-v3
        /// (AVX2, FMA), x86_64-v4 (AVX-512F), aarch64, riscv64, or native (this one).
        #[arg(long, default_value = "x86_64")]
        target: String,
        /// Where to write the C header (obj, c, cuda); `<output>.h` when absent.
        #[arg(long)]
        header: Option<PathBuf>,
        /// Symbol prefix (obj, c, cuda): `<prefix>_predict`, `<PREFIX>_INPUT0_SIZE`, ...
        #[arg(long, default_value = "net")]
        prefix: String,
        /// Streaming: each call consumes one time step of every sequence input, and
        /// recurrent layers keep their state (in the type, or in the scratch memory)
        /// until it is reset.
        #[arg(long)]
        stream: bool,
    },
    /// Compare a model's outputs with recorded Keras outputs; exits 0 only if all match.
    /// Where the reference holds every layer's output (`kerac_record --layers`), also
    /// compares layer by layer and names the first layer that disagrees.
    Check {
        #[command(flatten)]
        model: ModelArgs,
        /// Recorded inputs and outputs (kerac-io/1 JSON).
        #[arg(long, required_unless_present = "against")]
        reference: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Backend::Jit)]
        backend: Backend,
        /// Compare the backend with the interpreter layer by layer instead, on the
        /// reference's inputs or seeded random ones (no Keras needed); exits 0 only if
        /// every layer matches.
        #[arg(long, value_enum)]
        against: Option<Against>,
        /// Random samples for `--against` without a reference.
        #[arg(long, default_value_t = 2)]
        samples: usize,
        /// Seed of the random samples.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Absolute tolerance of the layer-by-layer comparison (default: the file's, or
        /// 1e-5). Deep models drift by float32 rounding from layer to layer: the table's
        /// `abs err/max|k|` column tells rounding (1e-6) from a real difference (1e-2).
        #[arg(long)]
        atol: Option<f64>,
        /// Relative tolerance of the layer-by-layer comparison (default: the file's, or
        /// 1e-4).
        #[arg(long)]
        rtol: Option<f64>,
    },
    /// Time a model at its batch size on random inputs: latency percentiles and FLOP/s.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Timed runs (after as many warm-up runs, at most 1000).
        #[arg(long, default_value_t = 10_000)]
        runs: usize,
        #[arg(long, value_enum, default_value_t = Backend::Jit)]
        backend: Backend,
        /// Also time every step of the plan on its own (runtime kernels), with its
        /// share of one core's measured peak.
        #[arg(long)]
        steps: bool,
        /// The widest instruction set kerac may use: the runtime kernels (plan backend)
        /// or the JIT's assembled kernels (baseline: none, Cranelift's 128-bit code
        /// alone): baseline, avx2 or avx512; the CPU's widest by default.
        #[arg(long, value_parser = parse_isa, default_value = "avx512")]
        isa: Level,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// The model: .keras, .h5, or a config JSON.
    model: PathBuf,
    /// Weights file for a config JSON (default: <stem>.weights.h5 or <stem>.h5 beside it).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Batch size to fix shapes with.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Shape of one sample of an input whose file shape leaves dimensions open:
    /// NAME=D1,D2,...
    #[arg(long = "input-shape", value_name = "NAME=D1,D2,...")]
    input_shapes: Vec<String>,
}

/// What `compile` produces.
#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// Rust source using the `kerac` runtime crate.
    Rust,
    /// A native object file (ELF) through Cranelift, and a C header.
    Obj,
    /// C99 source and its C header (the object's), for any chip with a C compiler.
    C,
    /// CUDA C++ (`.cu`, one kernel per step) and its C header, for NVIDIA GPUs; it
    /// also compiles as plain C++ for a CPU run of the same kernels.
    Cuda,
}

/// What `check --against` compares the backend with.
#[derive(Clone, Copy, ValueEnum)]
enum Against {
    /// The reference interpreter.
    Interp,
}

/// Which code runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// Native code compiled in memory by Cranelift: what `compile --emit obj` writes.
    Jit,
    /// The reference interpreter.
    Interp,
    /// The compiled plan on the runtime's kernels: what generated code runs.
    Plan,
    /// The C99 of `compile --emit c`, compiled by the host's C compiler (`$CC`, or
    /// `cc`) and run: outputs only, not layer by layer, and not timed.
    C,
    /// The kernels of `compile --emit cuda`, compiled as C++ for this CPU by `$CXX` (or
    /// `c++`) and run one thread after another: outputs only, as for `c`.
    Cuda,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Jit => "jit",
            Backend::Interp => "interp",
            Backend::Plan => "plan",
            Backend::C => "c",
            Backend::Cuda => "cuda",
        }
    }
}

impl ModelArgs {
    /// Loads the model; `recorded` fills open dimensions from recorded inputs, where
    /// `--input-shape` does not give them.
    fn load(&self, recorded: Option<&IoFile>) -> Result<Graph, Error> {
        self.load_as(recorded, false)
    }

    /// As [`ModelArgs::load`]; `stream` compiles one step per call with recurrent state
    /// kept between calls.
    fn load_as(&self, recorded: Option<&IoFile>, stream: bool) -> Result<Graph, Error> {
        let mut input_shapes = recorded
            .map(|f| io::input_shapes(&f.inputs))
            .unwrap_or_default();
        for spec in &self.input_shapes {
            let (name, dims) = spec.split_once('=').ok_or_else(|| {
                Error::new(format!("--input-shape `{spec}`: expected NAME=D1,D2,..."))
            })?;
            let dims = dims
                .split(',')
                .map(|d| d.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    Error::new(format!(
                        "--input-shape `{spec}`: dimensions must be whole numbers"
                    ))
                })?;
            input_shapes.insert(name.to_string(), dims);
        }
        let options = BuildOptions {
            batch: self.batch,
            input_shapes,
            stream,
        };
        kerac_compiler::load(&self.model, self.weights.as_deref(), &options)
    }
}

fn run_file(
    graph: &Graph,
    file: IoFile,
    input: &Path,
    backend: Backend,
) -> Result<(IoFile, Vec<io::IoTensor>), Error> {
    let outputs = match backend {
        Backend::Jit => {
            let plan = Plan::new(graph)?;
            let mut jit = Jit::new(&plan)?;
            io::run_samples(graph, &file.inputs, |x| jit.run_arrays(x))
        }
        Backend::Interp => io::run_samples(graph, &file.inputs, |x| interp::run(graph, x)),
        Backend::Plan => {
            let plan = Plan::new(graph)?.with_runtime_panels();
            io::run_samples(graph, &file.inputs, |x| plan::exec::run(&plan, x))
        }
        Backend::C | Backend::Cuda => {
            let plan = Plan::new(graph)?;
            let source = graph.source.display().to_string();
            let program = kerac_compiler::emit::c::HostProgram::build(
                &plan,
                graph.params(),
                &source,
                backend == Backend::Cuda,
            )?;
            io::run_samples(graph, &file.inputs, |x| program.run_arrays(x))
        }
    }
    .map_err(|e| e.in_file(input))?;
    Ok((file, outputs))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| Error::new(format!("cannot write: {e}")).in_file(path))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Inspect {
            model,
            wcet: true,
            json,
            output,
            cycles_per_instruction,
            miss_cycles,
            ..
        } => inspect_wcet(model, json, output, cycles_per_instruction, miss_cycles),
        Command::Inspect {
            model, cuda: true, ..
        } => inspect_cuda(model),
        Command::Inspect { model, json, .. } => inspect(model, json),
        Command::CountInstructions { model, dumps } => count_in_valgrind(model, dumps),
        Command::Compile {
            model,
            emit: Emit::Obj,
            output,
            target,
            header,
            prefix,
            stream,
            ..
        } => compile_object(model, output, target, header, prefix, stream),
        Command::Compile {
            model,
            emit: emit @ (Emit::C | Emit::Cuda),
            output,
            header,
            prefix,
            stream,
            ..
        } => compile_c(model, output, header, prefix, stream, emit),
        Command::Compile {
            model,
            emit: Emit::Rust,
            output,
            name,
            stream,
            ..
        } => compile_rust(model, output, name, stream),
        Command::Bench {
            model,
            runs,
            backend,
            steps,
            isa,
        } => bench_model(model, runs, backend, steps, Dispatch::detect(isa)),
        Command::Run {
            model,
            input,
            output,
            backend,
        } => run(model, input, output, backend),
        Command::Check {
            model,
            reference,
            backend,
            against: Some(Against::Interp),
            samples,
            seed,
            atol,
            rtol,
        } => check_against_interp(model, reference, backend, samples, seed, (atol, rtol)),
        Command::Check {
            model,
            reference: Some(reference),
            backend,
            against: None,
            atol,
            rtol,
            ..
        } => check(model, reference, backend, (atol, rtol)),
        Command::Check { .. } => Err(Error::new("give --reference or --against")),
    }
}

/// `kerac inspect --wcet`: the timing report, written beside the model and printed.
fn inspect_wcet(
    model: ModelArgs,
    json: bool,
    output: Option<PathBuf>,
    cycles_per_instruction: u64,
    miss_cycles: u64,
) -> Result<ExitCode, Error> {
    let graph = model.load(None)?;
    let plan = Plan::new(&graph)?;
    let machine = kerac_compiler::wcet::MachineModel {
        cycles_per_instruction,
        miss_cycles,
        ..Default::default()
    };
    let report = kerac_compiler::wcet::WcetReport::new(&plan, count_instructions(&model), machine)?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::new(e.to_string()))?;
    let output = output.unwrap_or_else(|| {
        let stem = model
            .model
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        PathBuf::from(format!("{stem}.wcet.json"))
    });
    write(&output, text.as_bytes())?;
    if json {
        println!("{text}");
    } else {
        print!("{}", report.to_text());
        println!("wrote {}", output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `kerac inspect --cuda`: the launches of one call of the CUDA backend's code, with
/// each kernel's registers and spills on sm_90 where nvcc (`KERAC_NVCC`, or `nvcc` on
/// the path) is installed.
fn inspect_cuda(model: ModelArgs) -> Result<ExitCode, Error> {
    let graph = model.load(None)?;
    let plan = Plan::new(&graph)?;
    let source = model.model.display().to_string();
    let (text, launches) = kerac_compiler::emit::cuda::source_and_launches(&plan, "net", &source)
        .map_err(|e| e.in_file(&model.model))?;
    let usage = cuda_resource_usage(&text);
    println!(
        "{:<4} {:<40} {:>7} {:>7} {:>9} {:>9}  layers",
        "#", "kernel", "blocks", "threads", "registers", "spills"
    );
    for (i, l) in launches.iter().enumerate() {
        let (registers, spills) = match usage.as_ref().ok().and_then(|u| u.get(&l.kernel)) {
            Some((r, s)) => (r.to_string(), format!("{s} B")),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{i:<4} {:<40} {:>7} {:>7} {registers:>9} {spills:>9}  {}",
            l.kernel, l.blocks, l.threads, l.layers
        );
    }
    match usage {
        Ok(_) => println!(
            "{} launches; registers and spills from nvcc for sm_90",
            launches.len()
        ),
        Err(why) => println!("{} launches; no registers: {why}", launches.len()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Each kernel's registers and spill-store bytes on sm_90, from nvcc's
/// `--resource-usage`; why not where nvcc cannot run.
fn cuda_resource_usage(
    source: &str,
) -> Result<std::collections::HashMap<String, (usize, usize)>, String> {
    let nvcc = std::env::var("KERAC_NVCC").unwrap_or_else(|_| "nvcc".into());
    let dir = std::env::temp_dir().join(format!("kerac-inspect-cuda-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cu = dir.join("model.cu");
    let ran = std::fs::write(&cu, source)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            std::process::Command::new(&nvcc)
                .args(["-std=c++17", "-c", "--resource-usage", "-arch=sm_90"])
                .arg(&cu)
                .arg("-o")
                .arg(dir.join("model.o"))
                .output()
                .map_err(|e| format!("cannot run `{nvcc}` ({e}); set KERAC_NVCC"))
        });
    let _ = std::fs::remove_dir_all(&dir);
    let out = ran?;
    if !out.status.success() {
        return Err(format!(
            "{nvcc} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let usage = kerac_compiler::emit::cuda::resource_usage(&text);
    Ok(usage
        .into_iter()
        .map(|u| (u.kernel, (u.registers, u.spill_bytes)))
        .collect())
}

/// `kerac inspect`: the model report.
fn inspect(model: ModelArgs, json: bool) -> Result<ExitCode, Error> {
    let graph = model.load(None)?;
    let report = Report::new(&graph);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::new(e.to_string()))?
        );
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

/// The hidden subcommand the WCET report runs under valgrind.
fn count_in_valgrind(model: ModelArgs, dumps: PathBuf) -> Result<ExitCode, Error> {
    let plan = Plan::new(&model.load(None)?)?;
    let counts = kerac_compiler::wcet::count_in_valgrind(&plan, &dumps, &|_| 0.0)?;
    println!(
        "{}",
        serde_json::to_string(&counts).map_err(|e| Error::new(e.to_string()))?
    );
    Ok(ExitCode::SUCCESS)
}

/// `kerac compile --emit obj`: an object file and its C header.
fn compile_object(
    model: ModelArgs,
    output: Option<PathBuf>,
    target: String,
    header_path: Option<PathBuf>,
    prefix: String,
    stream: bool,
) -> Result<ExitCode, Error> {
    let machine = Target::from_name(&target).ok_or_else(|| {
        let names: Vec<&str> = Target::ALL.iter().map(|(n, _)| *n).collect();
        Error::new(format!(
            "unknown target `{target}`; expected one of {} or native",
            names.join(", ")
        ))
    })?;
    // The header names the target `native` stood for.
    let target = machine.name();
    let output =
        output.ok_or_else(|| Error::new("--emit obj writes a file: give it with -o model.o"))?;
    let graph = model.load_as(None, stream)?;
    let plan = Plan::new(&graph)?;
    let object = clif::object(&plan, machine, &prefix).map_err(|e| e.in_file(&model.model))?;
    let text = header(
        &plan,
        &HeaderInfo {
            prefix: &prefix,
            source: &model.model.display().to_string(),
            target,
            params: graph.params(),
        },
    );
    let header_path = header_path.unwrap_or_else(|| output.with_extension("h"));
    write(&output, &object)?;
    write(&header_path, text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `kerac compile --emit c`: C99 source and its C header.
fn compile_c(
    model: ModelArgs,
    output: Option<PathBuf>,
    header_path: Option<PathBuf>,
    prefix: String,
    stream: bool,
    emit: Emit,
) -> Result<ExitCode, Error> {
    use kerac_compiler::emit::{c, cuda};
    let output = output.ok_or_else(|| match emit {
        Emit::Cuda => Error::new("--emit cuda writes a file: give it with -o model.cu"),
        _ => Error::new("--emit c writes a file: give it with -o model.c"),
    })?;
    let graph = model.load_as(None, stream)?;
    let plan = Plan::new(&graph)?;
    let source_name = model.model.display().to_string();
    let (code, target) = match emit {
        Emit::Cuda => (cuda::source(&plan, &prefix, &source_name), cuda::TARGET),
        _ => (c::source(&plan, &prefix, &source_name), c::TARGET),
    };
    let code = code.map_err(|e| e.in_file(&model.model))?;
    let text = header(
        &plan,
        &HeaderInfo {
            prefix: &prefix,
            source: &source_name,
            target,
            params: graph.params(),
        },
    );
    let header_path = header_path.unwrap_or_else(|| output.with_extension("h"));
    write(&output, code.as_bytes())?;
    write(&header_path, text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `kerac compile --emit rust`: Rust source, with its weights beside it.
fn compile_rust(
    model: ModelArgs,
    output: Option<PathBuf>,
    name: String,
    stream: bool,
) -> Result<ExitCode, Error> {
    let graph = model.load_as(None, stream)?;
    let plan = Plan::new(&graph)?.with_runtime_panels();
    use kerac_compiler::emit::rust::{emit_source, RustOptions, WeightsAt};
    // Beside a file, the weights go to `<file>.weights.bin`; on standard output
    // they stay inline.
    let weights_file = output.as_ref().map(|p| p.with_extension("weights.bin"));
    let options = RustOptions {
        cuda: None,
        type_name: name,
        visibility: "pub".into(),
        track_files: Vec::new(),
        source: model.model.display().to_string(),
        weights: match &weights_file {
            Some(w) => WeightsAt::File(
                w.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            None => WeightsAt::Inline,
        },
        isa: kerac_compiler::emit::rust::Level::Avx512,
        inline: None,
    };
    let source = emit_source(&plan, &options)?;
    match (output, weights_file) {
        (Some(path), Some(weights)) => {
            write(&path, source.as_bytes())?;
            write(&weights, &plan.weight_blob())?;
        }
        _ => print!("{source}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// An instruction set level by the name `model!`'s `isa` option takes.
fn parse_isa(name: &str) -> Result<Level, String> {
    Level::parse(name).ok_or_else(|| {
        let names: Vec<&str> = Level::ALL.iter().map(|l| l.name()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

/// `kerac bench`: the model's latency on one backend.
fn bench_model(
    model: ModelArgs,
    runs: usize,
    backend: Backend,
    steps: bool,
    isa: Dispatch,
) -> Result<ExitCode, Error> {
    let graph = model.load(None)?;
    let plan = Plan::new(&graph)?;
    let lens: Vec<usize> = plan
        .inputs
        .iter()
        .map(|p| plan.buffers[p.buffer].len)
        .collect();
    let flat = bench::inputs(&lens);
    let arrays = plan
        .inputs
        .iter()
        .zip(&flat)
        .map(|(p, x)| {
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&p.shape), x.clone())
                .map_err(|e| Error::new(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let warmup = runs.min(1000);
    let mut jit_steps = None;
    let stats = match backend {
        Backend::Jit => {
            let wide = match isa.level() {
                Level::Avx512 => Wide::host(),
                Level::Avx2 => Wide::host().map(|_| Wide::Avx2),
                Level::Baseline => None,
            };
            let mut jit = Jit::with(&plan, wide, false)?;
            let ins: Vec<&[f32]> = flat.iter().map(Vec::as_slice).collect();
            let mut outs: Vec<Vec<f32>> = plan
                .outputs
                .iter()
                .map(|p| vec![0.0; plan.buffers[p.buffer].len])
                .collect();
            jit.run(
                &ins,
                &mut outs.iter_mut().map(Vec::as_mut_slice).collect::<Vec<_>>(),
            )?;
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            let stats = bench::measure(runs, warmup, || {
                let _ = jit.run(&ins, &mut views);
            });
            if steps {
                // Each step function alone, on what the last call left in the scratch:
                // the instructions it runs do not depend on the data.
                jit_steps = Some((
                    (0..plan.steps.len())
                        .map(|k| bench::measure(runs, warmup, || jit.run_step(k)).median_ns)
                        .collect::<Vec<f64>>(),
                    wide,
                ));
            }
            stats
        }
        Backend::Plan => {
            let plan = plan.with_runtime_panels();
            let mut arena = Vec::new();
            bench::measure(runs, warmup, || {
                let _ = plan::exec::run_with(&plan, isa, &mut arena, &arrays);
            })
        }
        Backend::Interp => bench::measure(runs, warmup, || {
            let _ = interp::run(&graph, &arrays);
        }),
        Backend::C | Backend::Cuda => return Err(Error::new(
            "bench times the jit, plan or interp backends; time the C or CUDA in the build it goes into",
        )),
    };
    println!(
        "model {} ({}), batch {}",
        graph.name,
        model.model.display(),
        plan.batch
    );
    print!("{}", stats.to_text(plan.flops()));
    if steps {
        let (times, kind) = match jit_steps {
            Some((times, wide)) => (
                times,
                format!(
                    "JIT step functions, {}",
                    wide.map_or("128-bit vectors only".into(), |w| format!("{w:?} kernels"))
                ),
            ),
            None => (
                plan::exec::profile(&plan.with_runtime_panels(), isa, &arrays, runs)?,
                format!("runtime kernels, {}", isa.level().name()),
            ),
        };
        print_step_profile(&plan, &times, &kind);
    }
    Ok(ExitCode::SUCCESS)
}

/// `kerac run`: outputs for the inputs of a kerac-io file.
fn run(
    model: ModelArgs,
    input: PathBuf,
    output: Option<PathBuf>,
    backend: Backend,
) -> Result<ExitCode, Error> {
    let file = IoFile::read(&input)?;
    let graph = model.load(Some(&file))?;
    let (file, outputs) = run_file(&graph, file, &input, backend)?;
    let result = IoFile {
        format: io::FORMAT.into(),
        model: Some(graph.name.clone()),
        keras_version: graph.keras_version.clone(),
        inputs: file.inputs,
        outputs,
        atol: None,
        rtol: None,
        layers: Vec::new(),
    };
    let text = serde_json::to_string(&result).map_err(|e| Error::new(e.to_string()))?;
    match output {
        Some(path) => std::fs::write(&path, text)
            .map_err(|e| Error::new(format!("cannot write: {e}")).in_file(&path))?,
        None => println!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `kerac check`: outputs against a reference file, per output.
fn check(
    model: ModelArgs,
    reference: PathBuf,
    backend: Backend,
    layer_tolerance: (Option<f64>, Option<f64>),
) -> Result<ExitCode, Error> {
    let file = IoFile::read(&reference)?;
    let graph = model.load(Some(&file))?;
    let (file, outputs) = run_file(&graph, file, &reference, backend)?;
    let results = io::compare(&outputs, &file).map_err(|e| e.in_file(&reference))?;
    let mut ok = true;
    for c in &results {
        let verdict = if c.mismatches == 0 { "ok" } else { "MISMATCH" };
        println!(
            "{:<24} max abs err {:.3e}  max rel err {:.3e}  {}/{} outside tolerance  {verdict}",
            c.name, c.max_abs, c.max_rel, c.mismatches, c.total
        );
        ok &= c.mismatches == 0;
    }
    if !file.layers.is_empty() {
        let tolerance = (
            layer_tolerance.0.or(file.atol).unwrap_or(io::ATOL),
            layer_tolerance.1.or(file.rtol).unwrap_or(io::RTOL),
        );
        let report = with_source(&graph, backend, |source| {
            diagnose::against_reference(&graph, source, &file, Some(tolerance), backend.name())
        })
        .map_err(|e| e.in_file(&reference))?;
        println!("\n{report}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `kerac check --against interp`: a backend against the interpreter, layer by layer.
fn check_against_interp(
    model: ModelArgs,
    reference: Option<PathBuf>,
    backend: Backend,
    samples: usize,
    seed: u64,
    layer_tolerance: (Option<f64>, Option<f64>),
) -> Result<ExitCode, Error> {
    let file = reference.as_deref().map(IoFile::read).transpose()?;
    let graph = model.load(file.as_ref())?;
    let inputs = match &file {
        Some(f) => f.inputs.clone(),
        None => diagnose::seeded_inputs(&graph, samples.max(1), seed)?,
    };
    let tolerance = (
        layer_tolerance
            .0
            .or(file.as_ref().and_then(|f| f.atol))
            .unwrap_or(io::ATOL),
        layer_tolerance
            .1
            .or(file.as_ref().and_then(|f| f.rtol))
            .unwrap_or(io::RTOL),
    );
    let report = with_source(&graph, backend, |source| {
        diagnose::against_interp(&graph, source, &inputs, tolerance, backend.name())
    })
    .map_err(|e| match &reference {
        Some(r) => e.in_file(r),
        None => e,
    })?;
    print!("{report}");
    Ok(if report.first_divergence().is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Calls `f` with the layer-output source of `backend`.
fn with_source<T>(
    graph: &Graph,
    backend: Backend,
    f: impl FnOnce(diagnose::Source<'_>) -> Result<T, Error>,
) -> Result<T, Error> {
    match backend {
        Backend::Interp => f(diagnose::Source::Interp),
        Backend::Plan => {
            let plan = Plan::new(graph)?.with_runtime_panels();
            f(diagnose::Source::Plan(&plan))
        }
        Backend::Jit => {
            let plan = Plan::new(graph)?;
            let mut jit = Jit::new(&plan)?;
            f(diagnose::Source::Jit(&plan, &mut jit))
        }
        Backend::C | Backend::Cuda => Err(Error::new(
            "--backend c and cuda compare the model's outputs only: give --reference without --against, or take jit or plan layer by layer",
        )),
    }
}

/// Prints each plan step's time (`times`, from `kind` of code) and its rate against
/// one core's peak.
fn print_step_profile(plan: &Plan, times: &[f64], kind: &str) {
    let measured = bench::measured_peak();
    let peak = measured.map(|(flops, _)| flops);
    match measured {
        Some((p, widest)) => println!(
            "\nsteps ({kind}), measured peak of one core ({widest} FMAs) {:.1} GFLOP/s:",
            p / 1e9
        ),
        None => println!("\nsteps ({kind}):"),
    }
    println!(
        "{:>4}  {:<14} {:>12} {:>10} {:>8} {:>7}  layers",
        "step", "kernel", "FLOPs", "median", "GFLOP/s", "% peak"
    );
    for (i, (step, ns)) in plan.steps.iter().zip(times).enumerate() {
        let rate = step.flops as f64 / ns.max(1.0);
        let share = peak.map_or("-".into(), |p| format!("{:.1}", 100.0 * rate * 1e9 / p));
        println!(
            "{i:>4}  {:<14} {:>12} {:>8.2}µs {:>8.2} {:>7}  {}",
            step.kernel.name(),
            step.flops,
            ns / 1e3,
            rate,
            share,
            step.layers
        );
    }
}

/// Runs this program's hidden `count-instructions` under Valgrind's callgrind and reads
/// its counts; the error says why not (no Valgrind, another machine, a failure).
fn count_instructions(model: &ModelArgs) -> Result<kerac_compiler::wcet::Counts, String> {
    let exe = std::env::current_exe().map_err(|e| format!("not measured: {e}"))?;
    let mut args: Vec<std::ffi::OsString> =
        vec!["count-instructions".into(), model.model.clone().into()];
    args.extend(["--batch".into(), model.batch.to_string().into()]);
    if let Some(w) = &model.weights {
        args.extend(["--weights".into(), w.clone().into()]);
    }
    for s in &model.input_shapes {
        args.extend(["--input-shape".into(), s.into()]);
    }
    kerac_compiler::wcet::count_under_valgrind(&exe, &args)
}
