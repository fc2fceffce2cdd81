//! The numbers `kerac inspect --wcet` reports hold for the code that runs:
//! - every loop's trip count, multiplied through its enclosing loops, is how many times
//!   its body runs: a counting build of the same code (a counter in every loop body)
//!   runs each fixture and the counters must equal the report;
//! - the assembled x86-64 kernels, read back as machine code, branch only to close
//!   their loops: one backward `jne` per loop and one `ret`, at both widths, whether
//!   or not this CPU runs them (Valgrind does not decode AVX-512);
//! - every benchmark model gets a full report, and under Valgrind the instructions of
//!   every step are the same for every kind of input.

use kerac_compiler::emit::clif::{Jit, Wide};
use kerac_compiler::plan::Plan;
use kerac_compiler::wcet::{count_under_valgrind, loop_rows, Counts, WcetReport};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// With the assembled kernels of the host's widest vectors, and of AVX2 as well on an
/// AVX-512 host: the loops inside the assembled kernels count too.
#[test]
fn trip_counts_equal_loop_body_runs() {
    let mut widths = vec![Wide::host()];
    if Wide::host() == Some(Wide::Avx512) {
        widths.push(Some(Wide::Avx2));
    }
    for wide in widths {
        let checked = trip_counts_hold(wide);
        assert!(checked > 1000, "{wide:?}: only {checked} loops checked");
        eprintln!("{wide:?}: {checked} loops counted as reported");
    }
}

fn trip_counts_hold(wide: Option<Wide>) -> usize {
    let mut checked = 0;
    for f in kerac_conformance::fixtures() {
        let reference = kerac_compiler::io::IoFile::read(&f.reference).unwrap();
        let graph = kerac_conformance::load(&f, &reference).unwrap();
        let plan = Plan::new(&graph).unwrap();
        let mut jit = Jit::with(&plan, wide, true).unwrap();
        let mut plain = Jit::with(&plan, wide, false).unwrap();
        let (inputs, mut outputs) = kerac_conformance::one_sample(&reference);
        let mut expected = outputs.clone();
        let ins: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut outs: Vec<&mut [f32]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
        jit.run(&ins, &mut outs).unwrap();
        let mut exp: Vec<&mut [f32]> = expected.iter_mut().map(Vec::as_mut_slice).collect();
        plain.run(&ins, &mut exp).unwrap();
        assert_eq!(
            outputs,
            expected,
            "{} ({wide:?}): counting changed the results",
            f.label()
        );
        let claimed: Vec<u64> = jit
            .loops()
            .iter()
            .flat_map(|l| loop_rows(l))
            .map(|r| r.body_runs)
            .collect();
        let ran = jit.loop_runs().unwrap();
        assert_eq!(
            ran,
            claimed,
            "{} ({wide:?}): loop bodies ran other than reported",
            f.label()
        );
        checked += claimed.len();
    }
    checked
}

/// Every branch in an assembled kernel is the back-edge of one of its loops, so its
/// path depends on its constants alone; checked on the code itself, for both widths.
#[test]
fn assembled_kernels_branch_only_to_close_their_loops() {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut kernels = 0;
    for f in kerac_conformance::committed_fixtures() {
        let reference = kerac_compiler::io::IoFile::read(&f.reference).unwrap();
        let graph = kerac_conformance::load(&f, &reference).unwrap();
        let plan = Plan::new(&graph).unwrap();
        for wide in [Wide::Avx2, Wide::Avx512] {
            let listings = kerac_compiler::emit::clif::assembled_kernels(&plan, wide).unwrap();
            for (step, code, loops) in listings {
                let at = format!("{} step {step} ({wide:?})", f.label());
                let mut decoder = Decoder::with_ip(64, &code, 0, DecoderOptions::NONE);
                let mut back_edges = 0;
                let mut rets = 0;
                for ins in &mut decoder {
                    assert!(
                        !ins.is_invalid(),
                        "{at}: undecodable bytes at {:#x}",
                        ins.ip()
                    );
                    let name = format!("{:?}", ins.mnemonic());
                    match ins.mnemonic() {
                        Mnemonic::Jne => {
                            assert!(
                                ins.near_branch_target() < ins.ip(),
                                "{at}: a forward branch at {:#x}",
                                ins.ip()
                            );
                            back_edges += 1;
                        }
                        Mnemonic::Ret => {
                            assert_eq!(
                                ins.next_ip(),
                                code.len() as u64,
                                "{at}: ret before the end"
                            );
                            rets += 1;
                        }
                        _ => assert!(
                            !(name.starts_with('J')
                                || name.starts_with("Call")
                                || name.starts_with("Loop")
                                || name.starts_with("Cmov")),
                            "{at}: {name} at {:#x}",
                            ins.ip()
                        ),
                    }
                }
                assert_eq!(
                    back_edges, loops,
                    "{at}: branches other than its loops' back-edges"
                );
                assert_eq!(rets, 1, "{at}");
                kernels += 1;
            }
        }
    }
    assert!(kernels > 200, "only {kernels} assembled kernels read");
    eprintln!("{kernels} assembled kernels: every branch closes a loop");
}

const KINDS: &[&str] = &["zeros", "huge", "nan", "denormal", "random"];
/// Beyond the benchmark's models: the kernels whose data could steer a path (index
/// gathers, masks, attention's online softmax, norms' square roots).
const ALSO: &[&str] = &[
    "embedding_tagger",
    "masked_tagger",
    "transformer_block",
    "normalization",
];

fn counts(model: &Path, kind: &str) -> Result<Counts, String> {
    count_under_valgrind(
        Path::new(env!("CARGO_BIN_EXE_count_steps")),
        &[model.into(), kind.into()],
    )
}

#[test]
fn every_benchmark_model_has_a_report_with_input_independent_instructions() {
    let list = std::fs::read_to_string(root().join("../bench/models.txt")).unwrap();
    let names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.len() >= 7);
    let names = names.into_iter().chain(ALSO.iter().copied());
    let mut counted = 0;
    let valgrind = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok();
    if !valgrind && std::env::var_os("CI").is_some() {
        panic!("valgrind is missing on CI");
    }
    for name in names {
        let model = root().join("fixtures").join(name).join("k3.keras");
        if !model.exists() {
            // The keras.applications models too large to commit (bench/run.sh makes them).
            eprintln!("{name}: not committed, skipped");
            continue;
        }
        let plan =
            Plan::new(&kerac_compiler::load(&model, None, &Default::default()).unwrap()).unwrap();
        if plan.flops() > MAX_COUNTED_FLOPS {
            // Five runs under valgrind of a real architecture take minutes; the small
            // benchmark models run the same kernels.
            eprintln!("{name}: {} FLOPs, instructions not counted", plan.flops());
            continue;
        }
        counted += 1;
        if !valgrind {
            let report =
                WcetReport::new(&plan, Err("no valgrind".into()), Default::default()).unwrap();
            assert_eq!(report.steps.len(), plan.steps.len());
            eprintln!("{name}: valgrind missing, instructions not counted");
            continue;
        }
        let first = counts(&model, KINDS[0]).unwrap();
        for kind in &KINDS[1..] {
            assert_eq!(
                counts(&model, kind).unwrap().steps,
                first.steps,
                "{name}: instructions differ between zeros and {kind} inputs"
            );
        }
        let report = WcetReport::new(&plan, Ok(first.clone()), Default::default()).unwrap();
        assert!(
            report.steps.iter().all(|s| s.instructions.unwrap() > 0),
            "{name}"
        );
        let sum: u64 = first.steps.iter().sum();
        assert!(
            sum <= first.predict,
            "{name}: steps {sum} > call {}",
            first.predict
        );
        let bound = report.cycle_bound.unwrap();
        assert!(bound >= first.predict * 14, "{name}");
    }
    assert!(counted >= 7);
}

/// The largest model whose instructions this test counts under valgrind.
const MAX_COUNTED_FLOPS: u64 = 20_000_000;
