//! Helpers for the conformance tests: the fixtures saved by real Keras
//! (`tests/fixtures/<model>/`, made by `make_fixtures.py`).

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

/// The fixtures folder.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every model file of every fixture, in every dialect present.
pub fn fixtures() -> Vec<Fixture> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
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
