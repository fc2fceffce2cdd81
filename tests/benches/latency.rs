//! `predict` latency at batch 1 for compiled fixtures, and the FLOP rate as a fraction of
//! one core's peak, measured on this machine with a loop of independent FMAs (not derived
//! from the nominal clock, which the core boosts past).
//!
//! Run with the target's SIMD enabled, as a deployment would build:
//! `RUSTFLAGS="-C target-cpu=native" cargo bench -p kerac-conformance --bench latency`

use kerac_compiler::bench::measure;
use std::hint::black_box;
use std::time::{Duration, Instant};

use kerac_conformance_compiled as compiled;

const MODELS: &[&str] = &[
    "controller/k3.keras",
    "mlp/k3.keras",
    "mnist_cnn/k3.keras",
    "resnet_cnn/k3.keras",
    "conv2d/k3.keras",
    "depthwise_separable/k3.keras",
    "lstm_predictor/k3.keras",
    "gru_classifier/k3.keras",
];

fn main() {
    let peak = kerac_compiler::bench::measured_peak_flops();
    match peak {
        Some(p) => println!(
            "measured peak of one core: {:.1} GFLOP/s (8-wide FMA loop, 12 accumulators)",
            p / 1e9
        ),
        None => println!("no AVX2+FMA on this machine: no peak to compare with"),
    }
    println!(
        "SIMD kernels: {}",
        if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
            "AVX2+FMA"
        } else {
            "portable (build with -C target-cpu=native for AVX2)"
        }
    );
    println!();
    println!("Rust backend (`model!`), and the Cranelift JIT (the code `--emit obj` writes):");
    println!();
    println!("| model | FLOPs | median | p99 | max | max/median | GFLOP/s | % of peak | JIT median | JIT GFLOP/s | JIT / Rust |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (label, reference, make) in compiled::compiled()
        .into_iter()
        .filter(|(l, _, _)| MODELS.contains(l))
    {
        let reference = kerac_compiler::io::IoFile::read(&root.join(reference)).unwrap();
        let (inputs, mut outputs) = kerac_conformance::one_sample(&reference);
        let model_path = root.join("fixtures").join(label);
        let graph = kerac_compiler::load(&model_path, None, &Default::default()).unwrap();
        let plan = kerac_compiler::plan::Plan::new(&graph).unwrap();
        let flops = plan.flops();
        let mut model = make(kerac::Level::Avx512);
        let mut jit = kerac_compiler::emit::clif::Jit::new(&plan).unwrap();
        let ins: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut outs: Vec<&mut [f32]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
        // Enough calls for about half a second, at least 1000.
        let start = Instant::now();
        let mut warm = 0;
        while start.elapsed() < Duration::from_millis(100) {
            model.run(black_box(&ins), &mut outs).unwrap();
            warm += 1;
        }
        let runs = (warm * 5).max(1000);
        let rust = measure(runs, runs / 10, || {
            model.run(black_box(&ins), &mut outs).unwrap();
        });
        let native = measure(runs, runs / 10, || {
            jit.run(black_box(&ins), &mut outs).unwrap();
        });
        black_box(&outs);
        let rate = flops as f64 / rust.median_ns * 1e9;
        let share = peak.map_or("-".to_string(), |p| format!("{:.1}%", 100.0 * rate / p));
        println!(
            "| {label} | {flops} | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} | {:.2} | {share} | {:.2} µs | {:.2} | {:.2} |",
            rust.median_ns / 1e3,
            rust.p99_ns / 1e3,
            rust.max_ns / 1e3,
            rust.max_ns / rust.median_ns,
            rate / 1e9,
            native.median_ns / 1e3,
            flops as f64 / native.median_ns,
            native.median_ns / rust.median_ns,
        );
    }
}
