//! Every fixture compiled to an object file, to C99 source (`--emit c`) or to CUDA C++
//! (`--emit cuda`), linked into a C program (`compiler/src/emit/harness.c`, driven only
//! by the generated header) and run, against the outputs Keras recorded: natively on
//! x86-64, under qemu for aarch64 and riscv64, and on a GPU where there is one. The
//! CUDA C++ is also compiled by nvcc for the GPUs users have, which needs no GPU.
//!
//! The cross compilers and qemu come from Debian (`gcc-aarch64-linux-gnu`,
//! `gcc-riscv64-linux-gnu`, `qemu-user`); `.ci/run` installs them. Without them the
//! cross tests say so and pass, except under CI, where they fail.

use kerac_compiler::emit::clif::Target;
use kerac_compiler::io::{self, IoFile, IoTensor};
use kerac_compiler::plan::Plan;
use kerac_conformance::program::{self, Code, Toolchain, STRICT};
use kerac_conformance::{describe, fixtures, load};
use std::path::{Path, PathBuf};

fn work_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("objects")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the work folder");
    dir
}

/// Which of the extra (`KERAC_EXTRA_FIXTURES`) models a run takes.
#[derive(Clone, Copy, PartialEq)]
enum Extras {
    None,
    /// The `.keras` file of each: the dialects differ only in the reader, which another
    /// run covers.
    OneDialect,
}

/// Compiles, links and runs every fixture as `code` (the extra ones as `extras` says;
/// one file of each fixture only with `one_dialect`); returns what differs.
fn run_all(
    name: &str,
    code: Code,
    tc: &Toolchain,
    extras: Extras,
    one_dialect: bool,
) -> Vec<String> {
    let dir = work_dir(name);
    let mut failures = Vec::new();
    let extra = kerac_conformance::extra_fixtures_dir();
    let mut seen = std::collections::HashSet::new();
    for f in fixtures() {
        if !seen.insert(f.name.clone()) && one_dialect {
            continue;
        }
        let is_extra = extra.as_ref().is_some_and(|d| f.model.starts_with(d));
        if is_extra && (extras == Extras::None || f.file != "k3.keras") {
            continue;
        }
        let label = f.label();
        let case = dir.join(label.replace('/', "_"));
        let result = (|| -> Result<Vec<String>, String> {
            let reference = IoFile::read(&f.reference).map_err(|e| e.to_string())?;
            let graph = load(&f, &reference).map_err(|e| e.to_string())?;
            let plan = Plan::new(&graph).map_err(|e| e.to_string())?;
            let source = f.model.display().to_string();
            if !program::build(&plan, graph.params(), &source, code, tc, &case)? {
                eprintln!("{label}: larger than the board's memory, not run there");
                return Ok(Vec::new());
            }
            let samples = reference.inputs[0].shape[0].max(1);
            let mut inputs = Vec::new();
            for s in 0..samples {
                for t in &reference.inputs {
                    let n = t.data.len() / samples;
                    inputs.extend_from_slice(&t.data[s * n..(s + 1) * n]);
                }
            }
            let floats = program::run(tc, &case, &inputs, samples, 0)?;
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

/// False, with a message, where `tc` lacks a program; CI must have them all.
fn installed(tc: &Toolchain, what: &str) -> bool {
    let missing = tc.missing();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have {missing:?} (installed by .ci/run)"
    );
    eprintln!("skipping {what}: {missing:?} not installed");
    false
}

/// Every fixture through `target`'s objects. Without `flushes` (riscv64, which has no
/// flush-to-zero mode) the objects compute IEEE 754 subnormals, which Keras flushes:
/// the `subnormals` fixture must then differ, and only it.
fn cross(name: &str, target: Target, tc: Toolchain, flushes: bool) {
    if !installed(&tc, &format!("{name} objects")) {
        return;
    }
    // Under qemu the extra models took most of CI's time for them: the committed
    // keras.applications fixtures (MobileNet, MobileNetV2, MobileNetV3Small) run here,
    // the extra ones natively.
    let failures = run_all(name, Code::Object(target), &tc, Extras::None, false);
    let (subnormal, others): (Vec<_>, Vec<_>) = failures
        .into_iter()
        .partition(|f| f.starts_with("subnormals/"));
    assert!(others.is_empty(), "{}", others.join("\n"));
    if flushes {
        assert!(subnormal.is_empty(), "{}", subnormal.join("\n"));
    } else {
        assert!(
            !subnormal.is_empty(),
            "{name} has no flush to zero, yet matched Keras's flushed subnormals"
        );
        eprintln!("{name}: subnormals computed as IEEE 754 says, where Keras flushes them");
    }
}

/// The x86-64 targets this machine runs: baseline always, v3 with AVX2 and FMA, v4 with
/// AVX-512F; the others are skipped with a message. The extra (keras.applications)
/// models run through the baseline and the widest, their `.keras` files only: the
/// interpreter, plan and JIT tests cover the readers of every dialect, and the other
/// two took a third of CI's time for these models.
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
            &Toolchain::HOST,
            if i == 0 || i == widest {
                Extras::OneDialect
            } else {
                Extras::None
            },
            false,
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
        true,
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
        false,
    );
}

/// The C backend's source, compiled with warnings as errors by gcc and by clang, on
/// x86-64: every file of every fixture through gcc, one file of each through clang
/// (the files differ only in the reader). The keras.applications models stay out: their weights are hundreds of
/// megabytes of C text, and the same kernels run in the committed fixtures.
#[test]
fn c99_source_compiles_clean_and_matches_keras() {
    for cc in ["gcc", "clang"] {
        let tc = Toolchain {
            cc,
            ..Toolchain::HOST
        };
        if !installed(&tc, &format!("C99 through {cc}")) {
            continue;
        }
        let failures = run_all(
            &format!("c99-{cc}"),
            Code::C { flags: STRICT },
            &tc,
            Extras::None,
            cc == "clang",
        );
        assert!(
            failures.is_empty(),
            "C99 through {cc}:\n{}",
            failures.join("\n")
        );
        eprintln!("C99 through {cc}: every fixture matches Keras");
    }
}

/// The CUDA backend's source (`--emit cuda`) compiled as C++ for the CPU, with warnings
/// as errors, and run through its mapping of the launches onto loops: the same kernels
/// a GPU runs, one file of each fixture. The keras.applications models stay out, as for
/// the C.
#[test]
fn cuda_source_on_the_host_matches_keras() {
    let tc = Toolchain {
        cc: "g++",
        ..Toolchain::HOST
    };
    if !installed(&tc, "CUDA C++ on the host") {
        return;
    }
    let failures = run_all(
        "cuda-host",
        Code::CudaOnHost { cxx: "g++" },
        &Toolchain::HOST,
        Extras::None,
        true,
    );
    assert!(
        failures.is_empty(),
        "CUDA on the host:\n{}",
        failures.join("\n")
    );
    eprintln!("CUDA C++ on the host: every fixture matches Keras");
}

/// One file of each fixture on an NVIDIA GPU through the CUDA backend, compiled by nvcc
/// for that GPU: skipped, with a message, where none answers (`tests/cuda_gpu.sh` runs
/// it on a machine with one).
#[test]
fn cuda_on_the_gpu_matches_keras() {
    if !program::gpu_present() {
        eprintln!("skipping the CUDA run on a GPU: nvidia-smi lists none");
        return;
    }
    assert!(
        program::nvcc().is_some(),
        "a GPU, but no nvcc: set KERAC_NVCC"
    );
    let failures = run_all(
        "cuda-gpu",
        Code::CudaOnGpu { arch: "native" },
        &Toolchain::HOST,
        Extras::None,
        true,
    );
    assert!(
        failures.is_empty(),
        "CUDA on the GPU:\n{}",
        failures.join("\n")
    );
    eprintln!("CUDA on the GPU: every fixture matches Keras");
}

/// Every fixture that fits the board's memory, as C99 compiled by `arm-none-eabi-gcc`
/// for a Cortex-M4 with its FPU and run on QEMU's mps2-an386 (4 MiB for code and
/// weights, 4 MiB for data).
#[test]
fn c99_on_cortex_m4_under_qemu_matches_keras() {
    if !installed(&Toolchain::CORTEX_M4, "the Cortex-M4") {
        return;
    }
    let failures = run_all(
        "cortex-m4",
        Code::C { flags: STRICT },
        &Toolchain::CORTEX_M4,
        Extras::None,
        false,
    );
    assert!(failures.is_empty(), "Cortex-M4:\n{}", failures.join("\n"));
}

/// The GPUs the CUDA backend's source is compiled for: T4-class, Jetson Orin, H100/H200.
const CUDA_ARCHS: [&str; 3] = ["75", "87", "90"];

/// Most registers a thread of a generated kernel may take: 128 leaves room for two
/// blocks of 256 threads on every SM of these GPUs.
const CUDA_MAX_REGISTERS: usize = 128;

/// The CUDA backend's source of one file of each fixture, compiled by nvcc for every
/// GPU in [`CUDA_ARCHS`] with warnings as errors; no kernel may spill or take more than
/// [`CUDA_MAX_REGISTERS`] registers (`--resource-usage`). No GPU is needed.
#[test]
fn cuda_source_compiles_under_nvcc() {
    let Some(nvcc) = program::nvcc() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have nvcc (KERAC_NVCC, installed by .ci/run)"
        );
        eprintln!("skipping the nvcc check: no nvcc (set KERAC_NVCC)");
        return;
    };
    let dir = work_dir("cuda-nvcc");
    let extra = kerac_conformance::extra_fixtures_dir();
    let mut seen = std::collections::HashSet::new();
    let mut failures = Vec::new();
    let (mut kernels, mut most) = (0, 0);
    for f in fixtures() {
        if !seen.insert(f.name.clone()) || extra.as_ref().is_some_and(|d| f.model.starts_with(d)) {
            continue;
        }
        let label = f.label();
        let result = (|| -> Result<(usize, usize), String> {
            let reference = IoFile::read(&f.reference).map_err(|e| e.to_string())?;
            let graph = load(&f, &reference).map_err(|e| e.to_string())?;
            let plan = Plan::new(&graph).map_err(|e| e.to_string())?;
            let source = f.model.display().to_string();
            let text = kerac_compiler::emit::cuda::source(&plan, "net", &source)
                .map_err(|e| e.to_string())?;
            let cu = dir.join(format!("{}.cu", label.replace('/', "_")));
            std::fs::write(&cu, text).map_err(|e| e.to_string())?;
            let mut cmd = std::process::Command::new(&nvcc);
            cmd.args([
                "-std=c++17",
                "-c",
                "-ftz=true",
                "-Werror",
                "all-warnings",
                "--resource-usage",
            ]);
            for a in CUDA_ARCHS {
                cmd.arg("-gencode")
                    .arg(format!("arch=compute_{a},code=sm_{a}"));
            }
            let out = cmd
                .arg(&cu)
                .arg("-o")
                .arg(cu.with_extension("o"))
                .output()
                .map_err(|e| e.to_string())?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !out.status.success() {
                return Err(format!("nvcc failed:\n{text}"));
            }
            let usage = kerac_compiler::emit::cuda::resource_usage(&text);
            if let Some(u) = usage.iter().find(|u| u.spill_bytes > 0) {
                return Err(format!("{} spills {} bytes", u.kernel, u.spill_bytes));
            }
            let (count, registers) = (
                usage.len(),
                usage.iter().map(|u| u.registers).max().unwrap_or(0),
            );
            if registers > CUDA_MAX_REGISTERS {
                return Err(format!(
                    "a kernel takes {registers} registers (at most {CUDA_MAX_REGISTERS})"
                ));
            }
            let _ = std::fs::remove_file(&cu);
            let _ = std::fs::remove_file(cu.with_extension("o"));
            Ok((count, registers))
        })();
        match result {
            Ok((n, r)) => {
                kernels += n;
                most = most.max(r);
            }
            Err(e) => failures.push(format!("{label}: {e}")),
        }
    }
    assert!(failures.is_empty(), "nvcc:\n{}", failures.join("\n"));
    eprintln!(
        "nvcc: every fixture compiles for sm_{}; {kernels} kernels, at most {most} registers, no spills",
        CUDA_ARCHS.join(", sm_")
    );
}
