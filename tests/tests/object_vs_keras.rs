//! Every fixture compiled to an object file, or to C99 source (`--emit c`), linked by a
//! C compiler into a C program (`tests/c/harness.c`, driven only by the generated
//! header) and run, against the outputs Keras recorded: natively on x86-64, under qemu
//! for aarch64 and riscv64.
//!
//! The cross compilers and qemu come from Debian (`gcc-aarch64-linux-gnu`,
//! `gcc-riscv64-linux-gnu`, `qemu-user`); `.ci/run` installs them. Without them the
//! cross tests say so and pass, except under CI, where they fail.

use kerac_compiler::emit::c;
use kerac_compiler::emit::clif::{self, Target};
use kerac_compiler::emit::header::{header, HeaderInfo};
use kerac_compiler::io::{self, IoFile, IoTensor};
use kerac_compiler::plan::Plan;
use kerac_conformance::{describe, fixtures, load};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Toolchain {
    cc: &'static str,
    /// How to run a linked program: directly or under an emulator.
    runner: Option<&'static str>,
    flags: &'static [&'static str],
    /// A bare-metal board under `qemu-system-arm`: the program is
    /// `tests/c/cortex_m4_harness.c` with `examples/cortex_m4`'s start-up, and reads
    /// and writes its files through semihosting.
    board: bool,
}

/// Cortex-M4 with its single-precision FPU, as `arm-none-eabi-gcc` takes it.
const CORTEX_M4: &[&str] = &[
    "-mcpu=cortex-m4",
    "-mfpu=fpv4-sp-d16",
    "-mfloat-abi=hard",
    "-mthumb",
];

/// What a fixture needs that the board does not have, from the linker's complaint.
fn does_not_fit(stderr: &str) -> bool {
    stderr.contains("will not fit in region") || stderr.contains("overflowed by")
}

fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn work_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("objects")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the work folder");
    dir
}

/// The most FLOPs an extra (`KERAC_EXTRA_FIXTURES`) model may take to be run under qemu.
const QEMU_EXTRA_FLOPS: u64 = 250_000_000;

/// What the model becomes before the C compiler links it.
#[derive(Clone, Copy)]
enum Code {
    /// An object file for a target.
    Object(Target),
    /// C99 source, compiled with these warnings as errors.
    C { flags: &'static [&'static str] },
}

/// The warnings the C backend's output must compile clean under, by the list.
const STRICT: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"];

/// Compiles, links and runs every fixture as `code` (the extra ones only with
/// `extras`); returns what differs.
fn run_all(name: &str, code: Code, tc: &Toolchain, extras: bool) -> Vec<String> {
    let dir = work_dir(name);
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/harness.c");
    let mut failures = Vec::new();
    let extra = kerac_conformance::extra_fixtures_dir();
    for f in fixtures() {
        // Under qemu the large extra models take minutes each: one dialect of them (the
        // dialects differ only in the reader, which the native runs cover).
        let emulated = tc.runner.is_some();
        let is_extra = extra.as_ref().is_some_and(|d| f.model.starts_with(d));
        if is_extra && !extras {
            continue;
        }
        if emulated && f.file != "k3.keras" && is_extra {
            continue;
        }
        let label = f.label();
        let case = dir.join(label.replace('/', "_"));
        let result = (|| -> Result<Vec<String>, String> {
            let reference = IoFile::read(&f.reference).map_err(|e| e.to_string())?;
            let graph = load(&f, &reference).map_err(|e| e.to_string())?;
            let plan = Plan::new(&graph).map_err(|e| e.to_string())?;
            // The six largest extra models (0.4-1.1 GFLOPs) take most of CI's time under
            // qemu; the others (ConvNeXt, EfficientNets, MobileNetV3, NASNet) cover the
            // same kernels there, and all of them run natively.
            if emulated && is_extra && plan.flops() > QEMU_EXTRA_FLOPS {
                return Ok(Vec::new());
            }
            std::fs::create_dir_all(&case).map_err(|e| e.to_string())?;
            let source = f.model.display().to_string();
            let info = HeaderInfo {
                prefix: "net",
                source: &source,
                target: if matches!(code, Code::C { .. }) {
                    c::TARGET
                } else {
                    name
                },
                params: graph.params(),
            };
            std::fs::write(case.join("model.h"), header(&plan, &info))
                .map_err(|e| e.to_string())?;
            match code {
                Code::Object(target) => {
                    let object = clif::object(&plan, target, "net").map_err(|e| e.to_string())?;
                    let undefined = clif::undefined_symbols(&object).map_err(|e| e.to_string())?;
                    if !undefined.is_empty() {
                        return Err(format!("the object needs symbols {undefined:?}"));
                    }
                    std::fs::write(case.join("model.o"), &object).map_err(|e| e.to_string())?;
                }
                Code::C { flags } => {
                    let text = c::source(&plan, "net", &source).map_err(|e| e.to_string())?;
                    std::fs::write(case.join("model.c"), text).map_err(|e| e.to_string())?;
                    let cc = Command::new(tc.cc)
                        .args(flags)
                        .args(tc.flags)
                        .arg("-O2")
                        .arg("-c")
                        .arg(case.join("model.c"))
                        .arg("-o")
                        .arg(case.join("model.o"))
                        .output()
                        .map_err(|e| format!("{}: {e}", tc.cc))?;
                    if !cc.status.success() {
                        return Err(format!(
                            "{} failed on model.c: {}",
                            tc.cc,
                            String::from_utf8_lossy(&cc.stderr)
                        ));
                    }
                }
            }
            let exe = case.join("harness");
            let mut link = Command::new(tc.cc);
            link.args(tc.flags).arg("-O1").arg("-I").arg(&case);
            if tc.board {
                let board = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cortex_m4");
                let pool: usize = plan
                    .inputs
                    .iter()
                    .chain(&plan.outputs)
                    .map(|p| plan.buffers[p.buffer].len)
                    .sum();
                link.arg("-I")
                    .arg(&board)
                    .arg(format!("-DPOOL_FLOATS={}", pool.max(1)))
                    .args(["-ffreestanding", "-nostartfiles", "-T"])
                    .arg(board.join("mps2_an386.ld"))
                    .arg(board.join("startup.c"))
                    .arg(board.join("semihost.c"))
                    .arg(harness.with_file_name("cortex_m4_harness.c"))
                    .arg(case.join("model.o"))
                    .args(["-lc", "-lgcc"]);
            } else {
                link.arg(&harness).arg(case.join("model.o"));
            }
            let cc = link
                .arg("-o")
                .arg(&exe)
                .output()
                .map_err(|e| format!("{}: {e}", tc.cc))?;
            if !cc.status.success() {
                let stderr = String::from_utf8_lossy(&cc.stderr);
                if tc.board && does_not_fit(&stderr) {
                    eprintln!("{label}: larger than the board's memory, not run there");
                    return Ok(Vec::new());
                }
                return Err(format!("{} failed: {stderr}", tc.cc));
            }
            let samples = reference.inputs[0].shape[0].max(1);
            let mut bytes = Vec::new();
            for s in 0..samples {
                for t in &reference.inputs {
                    let n = t.data.len() / samples;
                    bytes.extend(
                        t.data[s * n..(s + 1) * n]
                            .iter()
                            .flat_map(|v| v.to_le_bytes()),
                    );
                }
            }
            std::fs::write(case.join("inputs.bin"), bytes).map_err(|e| e.to_string())?;
            let out = if tc.board {
                // The program finds inputs.bin and writes outputs.bin in QEMU's folder.
                Command::new("timeout")
                    .arg("600")
                    .arg("qemu-system-arm")
                    .args(["-M", "mps2-an386", "-nographic", "-monitor", "none"])
                    .args(["-semihosting-config", "enable=on,target=native"])
                    .arg("-kernel")
                    .arg(&exe)
                    .current_dir(&case)
                    .output()
            } else {
                let mut run = match tc.runner {
                    Some(emulator) => {
                        let mut c = Command::new(emulator);
                        c.arg(&exe);
                        c
                    }
                    None => Command::new(&exe),
                };
                run.arg(case.join("inputs.bin"))
                    .arg(case.join("outputs.bin"))
                    .arg(samples.to_string())
                    .output()
            }
            .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "the program failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let raw = std::fs::read(case.join("outputs.bin")).map_err(|e| e.to_string())?;
            let floats: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let sizes: Vec<usize> = reference
                .outputs
                .iter()
                .map(|t| t.data.len() / samples)
                .collect();
            let per_sample: usize = sizes.iter().sum();
            if floats.len() != per_sample * samples {
                return Err(format!(
                    "{} floats written, {} expected",
                    floats.len(),
                    per_sample * samples
                ));
            }
            let outputs: Vec<IoTensor> = reference
                .outputs
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let before: usize = sizes[..i].iter().sum();
                    let data = (0..samples)
                        .flat_map(|s| {
                            let at = s * per_sample + before;
                            floats[at..at + sizes[i]].to_vec()
                        })
                        .collect();
                    IoTensor {
                        name: t.name.clone(),
                        shape: t.shape.clone(),
                        data,
                    }
                })
                .collect();
            let cmp = io::compare(&outputs, &reference).map_err(|e| e.to_string())?;
            Ok(describe(&format!("{label} ({name})"), &cmp))
        })();
        match result {
            // A passing case's object and program go: with the large models they come to
            // gigabytes a target. A failing one stays for a look.
            Ok(lines) if lines.is_empty() => {
                let _ = std::fs::remove_dir_all(&case);
            }
            Ok(lines) => failures.extend(lines),
            Err(e) => failures.push(format!("{label} ({name}): {e}")),
        }
    }
    failures
}

fn cross(name: &str, target: Target, tc: Toolchain) {
    let missing: Vec<&str> = [tc.cc, tc.runner.unwrap_or(tc.cc)]
        .into_iter()
        .filter(|p| !available(p))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {missing:?} (installed by .ci/run)"
        );
        eprintln!("skipping {name} objects: {missing:?} not installed");
        return;
    }
    let failures = run_all(name, Code::Object(target), &tc, true);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The x86-64 targets this machine runs: baseline always, v3 with AVX2 and FMA, v4 with
/// AVX-512F; the others are skipped with a message. The extra (keras.applications)
/// models run through the baseline and the widest.
#[test]
fn x86_64_objects_linked_into_c_match_keras() {
    let runs = [
        ("x86_64", Target::X86_64, true),
        (
            "x86_64-v3",
            Target::X86_64V3,
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"),
        ),
        (
            "x86_64-v4",
            Target::X86_64V4,
            std::arch::is_x86_feature_detected!("avx512f"),
        ),
    ];
    let widest = runs.iter().rposition(|r| r.2).unwrap_or(0);
    for (i, (name, target, runs_here)) in runs.into_iter().enumerate() {
        if !runs_here {
            eprintln!("skipping {name} objects: this CPU does not run them");
            continue;
        }
        let failures = run_all(
            name,
            Code::Object(target),
            &Toolchain {
                cc: "cc",
                runner: None,
                flags: &[],
                board: false,
            },
            i == 0 || i == widest,
        );
        assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
        eprintln!("{name} objects: every fixture matches Keras");
    }
}

#[test]
fn aarch64_objects_match_keras_under_qemu() {
    cross(
        "aarch64",
        Target::Aarch64,
        Toolchain {
            cc: "aarch64-linux-gnu-gcc",
            runner: Some("qemu-aarch64"),
            flags: &["-static"],
            board: false,
        },
    );
}

#[test]
fn riscv64_objects_match_keras_under_qemu() {
    cross(
        "riscv64",
        Target::Riscv64,
        Toolchain {
            cc: "riscv64-linux-gnu-gcc",
            runner: Some("qemu-riscv64"),
            flags: &["-static"],
            board: false,
        },
    );
}

/// The C backend's source, compiled with warnings as errors by gcc and by clang, on
/// x86-64. The keras.applications models stay out: their weights are hundreds of
/// megabytes of C text, and the same kernels run in the committed fixtures.
#[test]
fn c99_source_compiles_clean_and_matches_keras() {
    for cc in ["gcc", "clang"] {
        if !available(cc) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have {cc} (installed by .ci/run)"
            );
            eprintln!("skipping C99 through {cc}: not installed");
            continue;
        }
        let failures = run_all(
            &format!("c99-{cc}"),
            Code::C { flags: STRICT },
            &Toolchain {
                cc,
                runner: None,
                flags: &[],
                board: false,
            },
            false,
        );
        assert!(
            failures.is_empty(),
            "C99 through {cc}:\n{}",
            failures.join("\n")
        );
        eprintln!("C99 through {cc}: every fixture matches Keras");
    }
}

/// Every fixture that fits the board's memory, as C99 compiled by `arm-none-eabi-gcc`
/// for a Cortex-M4 with its FPU and run on QEMU's mps2-an386 (4 MiB for code and
/// weights, 4 MiB for data).
#[test]
fn c99_on_cortex_m4_under_qemu_matches_keras() {
    let missing: Vec<&str> = ["arm-none-eabi-gcc", "qemu-system-arm"]
        .into_iter()
        .filter(|p| !available(p))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {missing:?} (installed by .ci/run)"
        );
        eprintln!("skipping the Cortex-M4: {missing:?} not installed");
        return;
    }
    let failures = run_all(
        "cortex-m4",
        Code::C { flags: STRICT },
        &Toolchain {
            cc: "arm-none-eabi-gcc",
            runner: None,
            flags: CORTEX_M4,
            board: true,
        },
        false,
    );
    assert!(failures.is_empty(), "Cortex-M4:\n{}", failures.join("\n"));
}
