//! Writes one `kerac::model!` call per fixture file, so the tests compile every fixture
//! through the macro exactly as a user crate would.

use std::fmt::Write;
use std::path::Path;

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
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("fixtures");
    println!("cargo:rerun-if-changed=fixtures");
    let mut dirs: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut modules = String::new();
    let mut table = String::from("/// Label, reference file and constructor of a compiled fixture.\npub type Compiled = (&'static str, &'static str, fn() -> Box<dyn kerac::Model>);\n/// Every fixture file compiled by `model!`.\npub fn compiled() -> Vec<Compiled> {\n    vec![\n");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in ["k3.keras", "k3.h5", "k3.json", "k2.h5", "k2.json"] {
            if !dir.join(file).exists() {
                continue;
            }
            let tag = &file[..2];
            let reference = format!("fixtures/{name}/{tag}.io.json");
            let io: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(root.join(&reference)).unwrap())
                    .unwrap();
            let mut options = String::new();
            for input in io["inputs"].as_array().unwrap() {
                let dims: Vec<String> = input["shape"].as_array().unwrap()[1..]
                    .iter()
                    .map(|d| d.to_string())
                    .collect();
                write!(
                    options,
                    ", input_shape({}) = [{}]",
                    input["name"],
                    dims.join(", ")
                )
                .unwrap();
            }
            let module = format!("m_{}_{}", name, file.replace('.', "_"));
            writeln!(modules, "pub mod {module} {{ kerac::model!(pub Model = \"fixtures/{name}/{file}\"{options}); }}").unwrap();
            writeln!(table, "        (\"{name}/{file}\", \"{reference}\", || Box::new({module}::Model::new())),").unwrap();
        }
    }
    table.push_str("    ]\n}\n");
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
            writeln!(modules, "pub mod {module} {{ kerac::model!(pub Model = \"fixtures/{name}/{file}\", stream = true); }}").unwrap();
            writeln!(table, "        (\"{name}/{file}\", \"{reference}\", || Box::new({module}::Model::new())),").unwrap();
        }
    }
    table.push_str("    ]\n}\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("compiled_fixtures.rs");
    std::fs::write(out, modules + &table).unwrap();
}
