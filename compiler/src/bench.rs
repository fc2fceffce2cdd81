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
