//! The generated code runs the same instructions for every input: callgrind counts the
//! instructions of the generated `run` (and everything it calls) on zeros, huge values,
//! NaN, infinities, subnormals and random values, and every count must be equal, for
//! each instruction set this CPU has. Valgrind's virtual CPU has no AVX-512, so that
//! level is reported as skipped under it.
//! Needs valgrind (`.ci/run` installs it); elsewhere the test says it was skipped.

use std::process::Command;

const FIXTURES: &[&str] = &[
    "mlp/k3.keras",
    "activations/k3.keras",
    "activation_layers/k3.keras",
    "activations/k2.h5",
    "conv1d/k3.keras",
    "conv2d/k3.keras",
    "conv_transpose/k3.keras",
    "depthwise_separable/k3.keras",
    "pooling/k3.keras",
    "normalization/k3.keras",
    "reshaping/k3.keras",
    "merge/k3.keras",
    "resnet_cnn/k3.keras",
    "lstm_predictor/k3.keras",
    "gru_classifier/k3.keras",
    "recurrent_options/k3.keras",
    "bidirectional/k2.h5",
    "embedding_tagger/k3.keras",
    "recurrent_wrappers/k3.keras",
    "transformer_block/k3.keras",
    "attention_layers/k2.h5",
    "masked_tagger/k3.keras",
    "masking_functional/k3.keras",
];
const INPUTS: &[&str] = &["zeros", "huge", "nan", "inf", "denormal", "random"];

/// Instructions of one call, and the instruction set that ran.
fn instructions(label: &str, kind: &str, isa: kerac::Level) -> (u64, String) {
    let out = std::env::temp_dir().join(format!(
        "kerac-callgrind-{}-{}-{kind}-{}.out",
        std::process::id(),
        label.replace(['/', '.'], "_"),
        isa.name()
    ));
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--toggle-collect=*__kerac_model::run",
            "-q",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(env!("CARGO_BIN_EXE_predict_once"))
        .args([label, kind, isa.name()])
        .output()
        .expect("valgrind runs");
    assert!(
        status.status.success(),
        "{label} {kind}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let ran = String::from_utf8_lossy(&status.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let text = std::fs::read_to_string(&out).expect("callgrind output");
    let _ = std::fs::remove_file(&out);
    let count = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("an instruction total");
    (count, ran)
}

#[test]
fn every_input_runs_the_same_number_of_instructions() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "valgrind is required in CI"
        );
        eprintln!("skipped: valgrind is not installed");
        return;
    }
    let mut report = Vec::new();
    for isa in kerac_conformance::isas() {
        let (_, ran) = instructions(FIXTURES[0], "zeros", isa);
        if ran != isa.name() {
            eprintln!(
                "{}: Valgrind's CPU lacks it (ran {ran}), skipped",
                isa.name()
            );
            continue;
        }
        for label in FIXTURES {
            let counts: Vec<u64> = INPUTS
                .iter()
                .map(|kind| instructions(label, kind, isa).0)
                .collect();
            assert!(
                counts[0] > 1000,
                "{label}: counted {} instructions; is the toggle pattern right?",
                counts[0]
            );
            if counts.iter().any(|&c| c != counts[0]) {
                report.push(format!(
                    "{label} ({}): {:?}",
                    isa.name(),
                    INPUTS.iter().zip(&counts).collect::<Vec<_>>()
                ));
            }
        }
        eprintln!("{}: {} fixtures counted", isa.name(), FIXTURES.len());
    }
    assert!(
        report.is_empty(),
        "instruction counts differ by input:\n{}",
        report.join("\n")
    );
}
