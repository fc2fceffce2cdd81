//! `predict` latency at batch 1 for compiled fixtures, and the FLOP rate as a fraction of
//! one core's peak, measured on this machine with a loop of independent FMAs (not derived
//! from the nominal clock, which the core boosts past).
//!
//! Run with the target's SIMD enabled, as a deployment would build:
//! `RUSTFLAGS="-C target-cpu=native" cargo bench -p kerac-conformance --bench latency`

use std::hint::black_box;
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod compiled {
    include!(concat!(env!("OUT_DIR"), "/compiled_fixtures.rs"));
}

const MODELS: &[&str] = &[
    "controller/k3.keras",
    "mlp/k3.keras",
    "mnist_cnn/k3.keras",
    "resnet_cnn/k3.keras",
    "conv2d/k3.keras",
    "depthwise_separable/k3.keras",
];

/// FLOP/s of one core running independent 8-wide FMAs.
fn peak_flops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fma_loop(iters: u64) -> f32 {
            use std::arch::x86_64::*;
            let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            let mut acc = [_mm256_setzero_ps(); 12];
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = _mm256_fmadd_ps(*v, a, b);
                }
            }
            let mut total = 0.0;
            for v in acc {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                total += lanes.iter().sum::<f32>();
            }
            total
        }
        let iters = 20_000_000u64;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            // SAFETY: avx2 and fma were detected above.
            black_box(unsafe { fma_loop(black_box(iters)) });
            best = best.min(start.elapsed().as_secs_f64());
        }
        return Some((iters * 12 * 8 * 2) as f64 / best);
    }
    None
}

fn main() {
    let peak = peak_flops();
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
    println!("| model | FLOPs | median | p99 | max | max/median | GFLOP/s | % of peak |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (label, reference, make) in compiled::compiled()
        .into_iter()
        .filter(|(l, _, _)| MODELS.contains(l))
    {
        let reference = kerac_compiler::io::IoFile::read(&root.join(reference)).unwrap();
        let (inputs, mut outputs) = kerac_conformance::one_sample(&reference);
        let model_path = root.join("fixtures").join(label);
        let graph = kerac_compiler::load(&model_path, None, &Default::default()).unwrap();
        let flops = kerac_compiler::plan::Plan::new(&graph).unwrap().flops();
        let mut model = make();
        let ins: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        // Enough calls for about half a second, at least 1000.
        let start = Instant::now();
        let mut warm = 0;
        while start.elapsed() < Duration::from_millis(100) {
            let mut outs: Vec<&mut [f32]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
            model.run(black_box(&ins), &mut outs).unwrap();
            warm += 1;
        }
        let runs = (warm * 5).max(1000);
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut outs: Vec<&mut [f32]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
            let t = Instant::now();
            model.run(black_box(&ins), &mut outs).unwrap();
            times.push(t.elapsed());
            black_box(&outputs);
        }
        times.sort();
        let q = |f: f64| times[((times.len() - 1) as f64 * f) as usize];
        let median = q(0.5).as_secs_f64();
        let rate = flops as f64 / median;
        let share = peak.map_or("-".to_string(), |p| format!("{:.1}%", 100.0 * rate / p));
        println!(
            "| {label} | {flops} | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} | {:.2} | {share} |",
            median * 1e6,
            q(0.99).as_secs_f64() * 1e6,
            q(1.0).as_secs_f64() * 1e6,
            q(1.0).as_secs_f64() / median,
            rate / 1e9
        );
    }
}
