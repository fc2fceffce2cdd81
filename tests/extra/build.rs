//! One `kerac::model!` call per `.keras` file under `KERAC_EXTRA_FIXTURES` (the
//! keras.applications models `tests/make_applications.sh` makes); none without it.

#[path = "../build_common.rs"]
mod common;

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=KERAC_EXTRA_FIXTURES");
    let mut modules = String::new();
    let mut table = String::from("/// The extra fixtures (`KERAC_EXTRA_FIXTURES`) compiled by `model!`.\npub fn compiled_extra() -> Vec<kerac_conformance::Compiled> {\n    vec![\n");
    if let Some(extra) = std::env::var_os("KERAC_EXTRA_FIXTURES").filter(|v| !v.is_empty()) {
        let extra = Path::new(&extra);
        println!("cargo:rerun-if-changed={}", extra.display());
        // The native archive only: the three dialects differ in what the reader does,
        // which the interpreter, plan, JIT and object tests cover for each, while the
        // weights of all three would pass the 2 GiB a binary's data can span. Kernels
        // out of line: inlined, these models of 100-650 steps took CI's build of this
        // crate from some 7 to 19 minutes, and the committed fixtures test the inlined
        // steps.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        common::expand(
            root,
            "",
            &common::fixture_dirs(extra),
            &["k3.keras"],
            false,
            &mut modules,
            &mut table,
            &mut String::new(),
        );
    }
    table.push_str("    ]\n}\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("compiled_extra.rs");
    std::fs::write(out, modules + &table).unwrap();
}
