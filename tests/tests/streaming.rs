//! Streaming: a recurrent model compiled with `stream` consumes one time step per call
//! and keeps its state between calls. Fed the recorded sequences step by step, it gives
//! Keras's whole-sequence outputs: at every step for outputs that are sequences, at the
//! last step for the others. Checked through the plan on the runtime's kernels, the
//! Cranelift JIT and `model!`.

use kerac_compiler::emit::clif::Jit;
use kerac_compiler::io::IoFile;
use kerac_compiler::plan::{exec, Plan};
use kerac_compiler::BuildOptions;
use ndarray::{ArrayD, IxDyn};

use kerac_conformance_compiled as compiled;

const FILES: [&str; 3] = ["k3.keras", "k3.h5", "k2.h5"];

/// Feeds every recorded sample step by step through `step` (which gets one step of
/// every input, flat, and returns every output, flat), after `reset`; returns what
/// differs from Keras.
fn check(
    label: &str,
    reference: &IoFile,
    mut reset: impl FnMut(),
    mut step: impl FnMut(&[Vec<f32>]) -> Vec<Vec<f32>>,
) -> Vec<String> {
    let samples = reference.inputs[0].shape[0];
    let steps = reference.inputs[0].shape[1];
    let mut failures = Vec::new();
    for n in 0..samples {
        reset();
        for t in 0..steps {
            let xs: Vec<Vec<f32>> = reference
                .inputs
                .iter()
                .map(|x| {
                    let f = x.shape[2];
                    let at = (n * steps + t) * f;
                    x.data[at..at + f].to_vec()
                })
                .collect();
            let ys = step(&xs);
            for (y, k) in ys.iter().zip(&reference.outputs) {
                let per_sample = k.data.len() / samples;
                let sequence = k.shape.len() == 3 && k.shape[1] == steps;
                let expected: &[f32] = if sequence {
                    let f = k.shape[2];
                    &k.data[(n * steps + t) * f..(n * steps + t + 1) * f]
                } else if t + 1 == steps {
                    &k.data[n * per_sample..(n + 1) * per_sample]
                } else {
                    continue;
                };
                let off = y
                    .iter()
                    .zip(expected)
                    .filter(|(a, b)| (**a - **b).abs() > 1e-5 + 1e-4 * b.abs())
                    .count();
                if off > 0 || y.len() != expected.len() {
                    failures.push(format!(
                        "{label}: sample {n} step {t}, output `{}`: {off} of {} values off",
                        k.name,
                        expected.len()
                    ));
                }
            }
        }
    }
    failures
}

fn reference(name: &str, file: &str) -> IoFile {
    let dir = kerac_conformance::fixtures_dir().join(name);
    IoFile::read(&dir.join(format!("{}.io.json", &file[..2]))).expect("reference")
}

fn stream_plan(name: &str, file: &str) -> Plan {
    let path = kerac_conformance::fixtures_dir().join(name).join(file);
    let options = BuildOptions {
        stream: true,
        ..Default::default()
    };
    let graph = kerac_compiler::load(&path, None, &options).expect("loads");
    Plan::new(&graph).expect("lowers")
}

fn arrays(plan: &Plan, xs: &[Vec<f32>]) -> Vec<ArrayD<f32>> {
    plan.inputs
        .iter()
        .zip(xs)
        .map(|(p, x)| ArrayD::from_shape_vec(IxDyn(&p.shape), x.clone()).expect("one step"))
        .collect()
}

fn flat(ys: Vec<ArrayD<f32>>) -> Vec<Vec<f32>> {
    ys.into_iter()
        .map(|y| y.iter().copied().collect())
        .collect()
}

#[test]
fn plan_streamed_step_by_step_matches_keras() {
    let mut failures = Vec::new();
    for &name in compiled::STREAMED {
        for file in FILES {
            let plan = stream_plan(name, file);
            assert!(!plan.state.is_empty(), "{name}/{file} keeps no state");
            let arena = std::cell::RefCell::new(Vec::new());
            failures.extend(check(
                &format!("{name}/{file} (plan)"),
                &reference(name, file),
                || arena.borrow_mut().clear(),
                |xs| {
                    flat(exec::run_in(&plan, &mut arena.borrow_mut(), &arrays(&plan, xs)).unwrap())
                },
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn jit_streamed_step_by_step_matches_keras() {
    let mut failures = Vec::new();
    for &name in compiled::STREAMED {
        for file in FILES {
            let plan = stream_plan(name, file);
            let jit = std::cell::RefCell::new(Jit::new(&plan).unwrap());
            failures.extend(check(
                &format!("{name}/{file} (jit)"),
                &reference(name, file),
                || jit.borrow_mut().reset_state(),
                |xs| flat(jit.borrow_mut().run_arrays(&arrays(&plan, xs)).unwrap()),
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn model_macro_streamed_step_by_step_matches_keras() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let all = compiled::streamed();
    assert_eq!(all.len(), compiled::STREAMED.len() * FILES.len());
    for (label, reference, make) in all {
        let reference = IoFile::read(&root.join(reference)).unwrap();
        let model = std::cell::RefCell::new(make(kerac::Level::Avx512));
        let sizes: Vec<usize> = reference
            .outputs
            .iter()
            .map(|k| {
                let per_sample = k.data.len() / k.shape[0];
                if k.shape.len() == 3 && k.shape[1] == reference.inputs[0].shape[1] {
                    k.shape[2]
                } else {
                    per_sample
                }
            })
            .collect();
        failures.extend(check(
            &format!("{label} (model!)"),
            &reference,
            || model.borrow_mut().reset_state(),
            |xs| {
                let ins: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
                let mut outs: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
                let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                model.borrow_mut().run(&ins, &mut views).unwrap();
                outs
            },
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The C backend streamed through a C program: every recorded sequence's steps in one
/// run, the state reset at each sequence's start. Natively (gcc), on the Cortex-M4
/// under qemu-system-arm when its tools are there (CI has them), and the CUDA
/// backend's kernels built for the CPU (g++).
#[test]
fn c99_streamed_step_by_step_matches_keras() {
    use kerac_conformance::program::{self, Code, Toolchain, STRICT};
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("streamed-c");
    let mut failures = Vec::new();
    let cuda = Code::CudaOnHost { cxx: "g++" };
    for (what, tc, code) in [
        ("gcc", Toolchain::HOST, Code::C { flags: STRICT }),
        ("cortex-m4", Toolchain::CORTEX_M4, Code::C { flags: STRICT }),
        ("cuda on the host", Toolchain::HOST, cuda),
    ] {
        let missing = tc.missing();
        if !missing.is_empty() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have {missing:?} (installed by .ci/run)"
            );
            eprintln!("skipping streamed C through {what}: {missing:?} not installed");
            continue;
        }
        for &name in compiled::STREAMED {
            for file in FILES {
                let label = format!("{name}/{file} ({what})");
                let plan = stream_plan(name, file);
                let reference = reference(name, file);
                let case = dir.join(what).join(format!("{name}_{file}"));
                let (samples, steps) = (reference.inputs[0].shape[0], reference.inputs[0].shape[1]);
                let mut inputs = Vec::new();
                for n in 0..samples {
                    for t in 0..steps {
                        for x in &reference.inputs {
                            let f = x.shape[2];
                            let at = (n * steps + t) * f;
                            inputs.extend_from_slice(&x.data[at..at + f]);
                        }
                    }
                }
                let ran = program::build(&plan, 0, name, code, &tc, &case).and_then(|fits| {
                    assert!(fits, "{label} does not fit the board");
                    program::run(&tc, &case, &inputs, samples * steps, steps)
                });
                let outputs = match ran {
                    Ok(o) => o,
                    Err(e) => {
                        failures.push(format!("{label}: {e}"));
                        continue;
                    }
                };
                let sizes: Vec<usize> = plan
                    .outputs
                    .iter()
                    .map(|p| plan.buffers[p.buffer].len)
                    .collect();
                let per_call: usize = sizes.iter().sum();
                let mut call = 0;
                failures.extend(check(
                    &label,
                    &reference,
                    || {},
                    |_| {
                        let at = call * per_call;
                        call += 1;
                        let mut start = at;
                        sizes
                            .iter()
                            .map(|&n| {
                                let v = outputs.get(start..start + n).unwrap_or_default().to_vec();
                                start += n;
                                v
                            })
                            .collect()
                    },
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
