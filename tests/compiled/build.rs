//! Writes one `kerac::model!` call per fixture file, so the tests compile every fixture
//! through the macro exactly as a user crate would.

#[path = "../build_common.rs"]
mod common;

use common::{expand, fixture_dirs};
use std::fmt::Write;
use std::path::Path;

/// Every model file a fixture may have.
const ALL_FILES: [&str; 5] = ["k3.keras", "k3.h5", "k3.json", "k2.h5", "k2.json"];

/// Fixtures whose recurrent layers all run forwards, so they can stream.
pub const STREAMED: [&str; 6] = [
    "lstm_predictor",
    "gru_classifier",
    "sequence_tagger",
    "masking_sequence",
    "masking_functional",
    "stateful_lstm",
];

fn main() {
    // `tests/`: the reference paths in the table are relative to it, as the tests read
    // them; the model paths are written relative to this crate.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let fixtures = root.join("fixtures");
    println!("cargo:rerun-if-changed=../fixtures");
    let dirs = fixture_dirs(&fixtures);
    let mut modules = String::new();
    let mut table = String::from("/// Every fixture file compiled by `model!`.\npub fn compiled() -> Vec<Compiled> {\n    vec![\n");
    let mut sizes = String::from("/// Label and `WEIGHT_BYTES` of every fixture file compiled by `model!`.\npub fn weight_bytes() -> Vec<(&'static str, usize)> {\n    vec![\n");
    expand(
        root,
        "../",
        &dirs,
        &ALL_FILES,
        true,
        &mut modules,
        &mut table,
        &mut sizes,
    );
    table.push_str("    ]\n}\n");
    sizes.push_str("    ]\n}\n");
    table.push_str(&sizes);
    // The fixtures whose recurrent layers can run one step per call, compiled so.
    writeln!(
        table,
        "/// The fixtures whose recurrent layers can stream.\npub const STREAMED: &[&str] = &{STREAMED:?};"
    )
    .unwrap();
    table.push_str("/// Streaming builds (`stream = true`) of the fixtures that can stream.\npub fn streamed() -> Vec<Compiled> {\n    vec![\n");
    for name in STREAMED {
        for file in ["k3.keras", "k3.h5", "k2.h5"] {
            let module = format!("s_{}_{}", name, file.replace('.', "_"));
            let reference = format!("fixtures/{name}/{}.io.json", &file[..2]);
            // As in `common::expand`: the native archive inlined, the others not.
            let inline = if file == "k3.keras" {
                ""
            } else {
                ", inline = false"
            };
            writeln!(modules, "pub mod {module} {{ kerac::model!(pub Model = \"../fixtures/{name}/{file}\", stream = true{inline}); }}").unwrap();
            writeln!(table, "        (\"{name}/{file}\", \"{reference}\", |isa| Box::new({module}::Model::with_isa(isa))),").unwrap();
        }
    }
    table.push_str("    ]\n}\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("compiled_fixtures.rs");
    std::fs::write(out, modules + &table).unwrap();
}
