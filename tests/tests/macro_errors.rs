//! Errors in a `model!` call are compile errors at the call, carrying the message the
//! `kerac` command gives for the same file. Each case is a small crate checked by cargo.

use std::path::Path;
use std::process::Command;

/// Runs `cargo check` on a crate whose main.rs is `source`, returning stderr.
fn check(name: &str, source: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = std::env::temp_dir().join(format!("kerac-macro-error-{}-{name}", std::process::id()));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = format!(
        "[package]\nname = \"macro-error-{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[dependencies]\nkerac = {{ path = {:?} }}\n[workspace]\n",
        root.join("runtime")
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/main.rs"), source).unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["check", "--quiet", "--offline"])
        .env("CARGO_TARGET_DIR", root.join("target/macro-errors"))
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{name}: the crate should not compile"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn model_errors_are_compile_errors_at_the_call() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let at_call = "--> src/main.rs:1:";

    let missing = check(
        "missing",
        "kerac::model!(Net = \"models/none.keras\");\nfn main() {}\n",
    );
    assert!(
        missing.contains("models/none.keras")
            && missing.contains("cannot read the file")
            && missing.contains(at_call),
        "{missing}"
    );

    // The same message as `kerac inspect` on a model with layers kerac does not support.
    let config = std::env::temp_dir().join(format!("kerac-unknown-{}.json", std::process::id()));
    std::fs::write(
        &config,
        r#"{"class_name": "Sequential", "config": {"name": "m", "layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [null, 4], "name": "x"}},
            {"class_name": "FancyDense", "config": {"name": "fancy"}}]}}"#,
    )
    .unwrap();
    let source = format!(
        "kerac::model!(Net = {:?});\nfn main() {{}}\n",
        config.display().to_string()
    );
    let unknown = check("unknown", &source);
    let expected = kerac_compiler::load(&config, None, &Default::default())
        .unwrap_err()
        .to_string();
    let first_line = expected.lines().next().unwrap();
    assert!(
        unknown.contains(first_line) && unknown.contains(at_call),
        "expected `{first_line}` in:\n{unknown}"
    );

    let option = check(
        "option",
        &format!(
            "kerac::model!(Net = {:?}, bach = 2);\nfn main() {{}}\n",
            fixtures.join("mlp/k3.keras").display().to_string()
        ),
    );
    assert!(
        option.contains("unknown option `bach`") && option.contains(at_call),
        "{option}"
    );
}
