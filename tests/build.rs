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

fn fixture_dirs(root: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("fixtures");
    println!("cargo:rerun-if-changed=fixtures");
    let dirs = fixture_dirs(&fixtures);
    let mut modules = String::new();
    let mut table = String::from("/// Label, reference file and constructor of a compiled fixture.\npub type Compiled = (&'static str, &'static str, fn(kerac::Level) -> Box<dyn kerac::Model>);\n/// Every fixture file compiled by `model!`.\npub fn compiled() -> Vec<Compiled> {\n    vec![\n");
    let mut sizes = String::from("/// Label and `WEIGHT_BYTES` of every fixture file compiled by `model!`.\npub fn weight_bytes() -> Vec<(&'static str, usize)> {\n    vec![\n");
    expand(
        root,
        &dirs,
        &ALL_FILES,
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
            writeln!(modules, "pub mod {module} {{ kerac::model!(pub Model = \"fixtures/{name}/{file}\", stream = true); }}").unwrap();
            writeln!(table, "        (\"{name}/{file}\", \"{reference}\", |isa| Box::new({module}::Model::with_isa(isa))),").unwrap();
        }
    }
    table.push_str("    ]\n}\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("compiled_fixtures.rs");
    std::fs::write(out, modules + &table).unwrap();

    // The large keras.applications fixtures CI makes (kerac_conformance::extra_fixtures_dir),
    // in a file of their own that only rust_vs_keras includes.
    println!("cargo:rerun-if-env-changed=KERAC_EXTRA_FIXTURES");
    let mut modules = String::new();
    let mut table = String::from("/// The extra fixtures (`KERAC_EXTRA_FIXTURES`) compiled by `model!`.\npub fn compiled_extra() -> Vec<Compiled> {\n    vec![\n");
    if let Some(extra) = std::env::var_os("KERAC_EXTRA_FIXTURES").filter(|v| !v.is_empty()) {
        let extra = Path::new(&extra);
        println!("cargo:rerun-if-changed={}", extra.display());
        // The native archive only: the three dialects differ in what the reader does,
        // which the interpreter, plan, JIT and object tests cover for each, while the
        // weights of all three would pass the 2 GiB a test binary's data can span.
        expand(
            root,
            &fixture_dirs(extra),
            &["k3.keras"],
            &mut modules,
            &mut table,
            &mut String::new(),
        );
    }
    table.push_str("    ]\n}\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("compiled_extra.rs");
    std::fs::write(out, modules + &table).unwrap();
}

/// Every model file a fixture may have.
const ALL_FILES: [&str; 5] = ["k3.keras", "k3.h5", "k3.json", "k2.h5", "k2.json"];

/// One `model!` module per model file (of `files`) in `dirs`, its row in the table and
/// its weight size.
fn expand(
    root: &Path,
    dirs: &[std::path::PathBuf],
    files: &[&str],
    modules: &mut String,
    table: &mut String,
    sizes: &mut String,
) {
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // Committed fixtures by a path relative to the crate (as a user would write
        // it); extra ones by their absolute path.
        let folder = match dir.strip_prefix(root) {
            Ok(relative) => relative.display().to_string(),
            Err(_) => dir.display().to_string(),
        };
        for &file in files {
            if !dir.join(file).exists() {
                continue;
            }
            let tag = &file[..2];
            let reference = format!("{folder}/{tag}.io.json");
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
            writeln!(
                modules,
                "pub mod {module} {{ kerac::model!(pub Model = {:?}{options}); }}",
                format!("{folder}/{file}")
            )
            .unwrap();
            writeln!(
                table,
                "        (\"{name}/{file}\", {reference:?}, |isa| Box::new({module}::Model::with_isa(isa))),"
            )
            .unwrap();
            writeln!(
                sizes,
                "        (\"{name}/{file}\", {module}::Model::WEIGHT_BYTES),"
            )
            .unwrap();
        }
    }
}
