//! Helpers for the conformance tests: the fixtures saved by real Keras
//! (`tests/fixtures/<model>/`, made by `make_fixtures.py`).

pub mod program;
pub mod random;

use std::path::{Path, PathBuf};

/// One model file of one fixture, with the recorded Keras inputs and outputs.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The fixture's name (its folder).
    pub name: String,
    /// Which file: `k3.keras`, `k3.h5`, `k3.json`, `k2.h5` or `k2.json`.
    pub file: String,
    /// The model file.
    pub model: PathBuf,
    /// The kerac-io/1 file with Keras's inputs and outputs for it.
    pub reference: PathBuf,
}

impl Fixture {
    /// `name/file`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{}", self.name, self.file)
    }
}

pub use kerac_conformance_compiled::Compiled;

/// Runs every compiled model in `all` through the generic `kerac::Model` entry point at
/// each instruction set this CPU has, on its recorded inputs (the reference path is
/// relative to `root`, or absolute); what differs from Keras's outputs.
pub fn check_compiled(root: &Path, all: &[Compiled]) -> Vec<String> {
    let mut failures = Vec::new();
    let isas = isas();
    for ((label, reference, make), isa) in all
        .iter()
        .flat_map(|c| isas.iter().map(move |&isa| (c, isa)))
    {
        let reference = match IoFile::read(&root.join(reference)) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{label}: {e}"));
                continue;
            }
        };
        let mut model = make(isa);
        if model.isa() != isa {
            failures.push(format!(
                "{label}: made for {}, runs {}",
                isa.name(),
                model.isa().name()
            ));
        }
        let samples = reference.inputs[0].shape[0];
        let mut outputs: Vec<io::IoTensor> = reference
            .outputs
            .iter()
            .map(|o| io::IoTensor {
                name: o.name.clone(),
                shape: o.shape.clone(),
                data: vec![0.0; o.data.len()],
            })
            .collect();
        for s in 0..samples {
            let inputs: Vec<&[f32]> = reference
                .inputs
                .iter()
                .map(|t| {
                    let per = t.data.len() / samples;
                    &t.data[s * per..(s + 1) * per]
                })
                .collect();
            let mut outs: Vec<&mut [f32]> = outputs
                .iter_mut()
                .map(|t| {
                    let per = t.data.len() / samples;
                    &mut t.data[s * per..(s + 1) * per]
                })
                .collect();
            if let Err(e) = model.run(&inputs, &mut outs) {
                failures.push(format!("{label} ({}): {e:?}", isa.name()));
            }
        }
        let compared = match io::compare(&outputs, &reference) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{label}: {e}"));
                continue;
            }
        };
        for c in compared {
            if c.mismatches > 0 {
                failures.push(format!(
                    "{label} ({}): output `{}`: {}/{} off (max abs {:.3e}, max rel {:.3e})",
                    isa.name(),
                    c.name,
                    c.mismatches,
                    c.total,
                    c.max_abs,
                    c.max_rel
                ));
            }
        }
    }
    failures
}

/// The fixtures folder.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A second folder of fixtures in the same layout, from `KERAC_EXTRA_FIXTURES`: the
/// keras.applications models too large to commit, which CI makes with
/// `make_fixtures.py --out DIR` (`tests/extra`'s build script compiles them with
/// `model!` too).
pub fn extra_fixtures_dir() -> Option<PathBuf> {
    std::env::var_os("KERAC_EXTRA_FIXTURES")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The fixture folders under `root`, sorted.
pub fn fixture_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Every model file of every fixture, in every dialect present.
pub fn fixtures() -> Vec<Fixture> {
    let mut dirs = fixture_dirs(&fixtures_dir());
    if let Some(extra) = extra_fixtures_dir() {
        dirs.extend(fixture_dirs(&extra));
    }
    fixtures_in(dirs)
}

/// The committed fixtures only, without `KERAC_EXTRA_FIXTURES`: for the checks that
/// repeat a backend in another configuration.
pub fn committed_fixtures() -> Vec<Fixture> {
    fixtures_in(fixture_dirs(&fixtures_dir()))
}

fn fixtures_in(dirs: Vec<PathBuf>) -> Vec<Fixture> {
    let mut out = Vec::new();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in ["k3.keras", "k3.h5", "k3.json", "k2.h5", "k2.json"] {
            let model = dir.join(file);
            if !model.exists() {
                continue;
            }
            let tag = &file[..2];
            out.push(Fixture {
                name: name.clone(),
                file: file.to_string(),
                model,
                reference: dir.join(format!("{tag}.io.json")),
            });
        }
    }
    out
}

use kerac_compiler::io::{self, IoFile};
use kerac_compiler::{BuildOptions, Graph};
use ndarray::ArrayD;

/// Loads a fixture's model with the open dimensions its recorded inputs give.
pub fn load(f: &Fixture, reference: &IoFile) -> kerac_compiler::Result<Graph> {
    let options = BuildOptions {
        input_shapes: io::input_shapes(&reference.inputs),
        ..Default::default()
    };
    kerac_compiler::load(&f.model, None, &options)
}

/// Runs every fixture through `run` and returns one line per output that differs from
/// Keras, or per fixture that fails.
pub fn mismatches(
    run: impl Fn(&Graph, &[ArrayD<f32>]) -> kerac_compiler::Result<Vec<ArrayD<f32>>>,
) -> Vec<String> {
    mismatches_in(fixtures(), run)
}

/// [`mismatches`] over `fixtures`.
pub fn mismatches_in(
    fixtures: Vec<Fixture>,
    run: impl Fn(&Graph, &[ArrayD<f32>]) -> kerac_compiler::Result<Vec<ArrayD<f32>>>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for f in fixtures {
        let result = (|| {
            let reference = IoFile::read(&f.reference)?;
            let graph = load(&f, &reference)?;
            let outputs = io::run_samples(&graph, &reference.inputs, |x| run(&graph, x))?;
            io::compare(&outputs, &reference)
        })();
        match result {
            Ok(comparisons) => failures.extend(describe(&f.label(), &comparisons)),
            Err(e) => failures.push(format!("{}: {e}", f.label())),
        }
    }
    failures
}

/// One line per output with values outside the tolerance.
pub fn describe(label: &str, comparisons: &[io::Comparison]) -> Vec<String> {
    comparisons
        .iter()
        .filter(|c| c.mismatches > 0)
        .map(|c| {
            format!(
                "{label}: output `{}`: {}/{} values off (max abs {:.3e}, max rel {:.3e})",
                c.name, c.mismatches, c.total, c.max_abs, c.max_rel
            )
        })
        .collect()
}

/// The first recorded sample's inputs, and zeroed outputs of one sample's size.
pub fn one_sample(reference: &IoFile) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let samples = reference.inputs[0].shape[0].max(1);
    let inputs = reference
        .inputs
        .iter()
        .map(|t| t.data[..t.data.len() / samples].to_vec())
        .collect();
    let outputs = reference
        .outputs
        .iter()
        .map(|t| vec![0.0; t.data.len() / samples])
        .collect();
    (inputs, outputs)
}

/// The instruction set levels this CPU has, narrowest first; each one it lacks is named
/// on standard error as skipped, so a log says which ran.
pub fn isas() -> Vec<kerac::Level> {
    kerac::Level::ALL
        .into_iter()
        .filter(|&level| {
            let have = kerac::Dispatch::detect(level).level() == level;
            if !have {
                eprintln!("{}: this CPU lacks it, skipped", level.name());
            }
            have
        })
        .collect()
}
