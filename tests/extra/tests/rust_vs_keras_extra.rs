//! The extra fixtures (`KERAC_EXTRA_FIXTURES`) compiled by `model!`, run as
//! `rust_vs_keras` runs the committed ones; nothing to run without them.

use std::path::Path;

#[test]
fn model_macro_matches_keras_on_the_extra_fixtures() {
    let all = kerac_conformance_extra::compiled_extra();
    if all.is_empty() {
        eprintln!("no extra fixtures compiled (KERAC_EXTRA_FIXTURES was not set at build time)");
        return;
    }
    let failures = kerac_conformance::check_compiled(Path::new(env!("CARGO_MANIFEST_DIR")), &all);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{} extra fixtures match Keras through model!", all.len());
}
