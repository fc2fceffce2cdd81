//! Latency measurement for `kerac bench`: every call timed on its own, so the report
//! shows the tail (p99, max) as well as the median.

use std::time::Instant;

/// Latencies of repeated calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Timed calls.
    pub runs: usize,
    /// Fastest call, nanoseconds.
    pub min_ns: f64,
    /// Median call, nanoseconds.
    pub median_ns: f64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: f64,
    /// Slowest call, nanoseconds.
    pub max_ns: f64,
}

/// Calls `f` `warmup` times untimed, then `runs` times, timing each call.
pub fn measure(runs: usize, warmup: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Stats {
        runs: times.len(),
        min_ns: times[0],
        median_ns: at(0.5),
        p99_ns: at(0.99),
        max_ns: times[times.len() - 1],
    }
}

/// Deterministic inputs in `[-1, 1)`: the same numbers on every run and machine.
pub fn inputs(lens: &[usize]) -> Vec<Vec<f32>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    lens.iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect()
        })
        .collect()
}

fn time(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

impl Stats {
    /// A short report; `flops` per call gives the achieved rate.
    pub fn to_text(&self, flops: u64) -> String {
        format!(
            "runs {}\nmin {}\nmedian {}\np99 {}\nmax {}\nmax/median {:.2}\nFLOPs per call {}\nGFLOP/s at the median {:.2}\n",
            self.runs,
            time(self.min_ns),
            time(self.median_ns),
            time(self.p99_ns),
            time(self.max_ns),
            self.max_ns / self.median_ns.max(1.0),
            flops,
            flops as f64 / self.median_ns.max(1.0),
        )
    }
}

/// FLOP/s of one core running independent FMAs of the widest vectors it has (16-wide
/// with AVX-512F, else 8-wide with AVX2+FMA; 12 accumulators hide the latency), or `None`
/// without either. Measured, because the core boosts past the clock the kernel
/// reports, so a peak derived from that clock overstates every fraction.
pub fn measured_peak_flops() -> Option<f64> {
    measured_peak().map(|(flops, _)| flops)
}

/// [`measured_peak_flops`] with the instruction set it measured (`"avx512"`, `"avx2"`).
pub fn measured_peak() -> Option<(f64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        let iters = 20_000_000u64;
        let best = |f: &dyn Fn(u64) -> f32| {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = Instant::now();
                std::hint::black_box(f(std::hint::black_box(iters)));
                best = best.min(start.elapsed().as_secs_f64());
            }
            best
        };
        if std::is_x86_feature_detected!("avx512f") {
            #[target_feature(enable = "avx512f")]
            unsafe fn fma_loop(iters: u64) -> f32 {
                use std::arch::x86_64::*;
                let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
                let mut acc = [_mm512_setzero_ps(); 12];
                for _ in 0..iters {
                    for v in acc.iter_mut() {
                        *v = _mm512_fmadd_ps(*v, a, b);
                    }
                }
                acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
            }
            // SAFETY: AVX-512F was detected above.
            let seconds = best(&|n| unsafe { fma_loop(n) });
            return Some(((iters * 12 * 16 * 2) as f64 / seconds, "avx512"));
        }
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
            // SAFETY: AVX2 and FMA were detected above.
            let seconds = best(&|n| unsafe { fma_loop(n) });
            return Some(((iters * 12 * 8 * 2) as f64 / seconds, "avx2"));
        }
    }
    None
}

/// The peak FLOP/s of one core derived from its data sheet: FMA units x vector lanes x
/// 2 FLOPs x the clock `/proc/cpuinfo` reports, with the inputs it used. Assumes two
/// 8-wide FMA pipes where AVX2+FMA exist (every AVX2 core since Haswell and Zen 1 has
/// two 256-bit FMA pipes, Zen 1 by pairing 128-bit halves).
pub fn derived_peak_flops() -> Option<(f64, String)> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let mhz: f64 = info
            .lines()
            .find(|l| l.starts_with("cpu MHz"))?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()?;
        let flops = 2.0 * 8.0 * 2.0 * mhz * 1e6;
        return Some((
            flops,
            format!("2 FMA pipes x 8 lanes x 2 FLOPs x {mhz:.0} MHz"),
        ));
    }
    None
}
