//! A control loop at a fixed rate: each cycle reads a (simulated) plant state, asks a
//! compiled MLP controller for a command, applies it, and records how long `predict`
//! took. At the end it prints the latency distribution.
//!
//! `cargo run --release -p kerac-example-control-loop -- [cycles] [rate_hz]`

use std::time::{Duration, Instant};

// The controller: 32 state values in, 8 commands out, tanh layers (32-64-64-32-8).
kerac::model!(Controller = "../../tests/fixtures/controller/k3.keras");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cycles: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let rate_hz: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let period = Duration::from_nanos(1_000_000_000 / rate_hz);

    let mut controller = Controller::new();
    let mut state = [0.1f32; 32];
    let mut latencies = Vec::with_capacity(cycles);
    let mut next = Instant::now();
    for cycle in 0..cycles {
        let start = Instant::now();
        let command = controller.predict(&state);
        latencies.push(start.elapsed());
        // A toy plant: each state variable drifts and is pushed by one of the commands.
        for (i, s) in state.iter_mut().enumerate() {
            let drift = ((cycle + i) as f32 * 0.01).sin() * 0.05;
            *s = (*s * 0.95 + 0.1 * command[i % 8] + drift).clamp(-3.0, 3.0);
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }

    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let median = at(0.5);
    println!(
        "{cycles} cycles at {rate_hz} Hz, {} FLOPs per predict",
        Controller::FLOPS
    );
    println!(
        "predict latency: min {:?}  median {median:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        at(0.0),
        at(0.99),
        at(0.999),
        at(1.0)
    );
    println!(
        "max / median: {:.2}",
        at(1.0).as_secs_f64() / median.as_secs_f64()
    );
    println!(
        "final command sample: {:?}",
        &controller.predict(&state)[..4]
    );
}
