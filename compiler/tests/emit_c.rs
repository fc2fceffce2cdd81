//! The C backend from the command line: `compile --emit c` writes the source and its
//! header, and `check --backend c` compiles them with the host's C compiler and
//! compares the program's outputs with Keras's (and fails where they differ).

use std::path::Path;
use std::process::Command;

fn fixture(name: &str, file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
        .join(file)
}

fn kerac(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kerac"))
        .args(args)
        .output()
        .expect("kerac runs")
}

#[test]
fn compile_writes_c_and_its_header() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emit_c");
    std::fs::create_dir_all(&dir).unwrap();
    let (c, h) = (dir.join("kws.c"), dir.join("kws.h"));
    let model = fixture("kws_cnn", "k3.keras");
    let out = kerac(&[
        "compile".as_ref(),
        model.as_os_str(),
        "--emit".as_ref(),
        "c".as_ref(),
        "--prefix".as_ref(),
        "kws".as_ref(),
        "-o".as_ref(),
        c.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let source = std::fs::read_to_string(&c).unwrap();
    let header = std::fs::read_to_string(&h).expect("the header beside the source");
    assert!(source.contains("int kws_predict(const float *const *inputs"));
    assert!(header.contains("#define KWS_SCRATCH_BYTES") && header.contains("C99"));
    for banned in ["malloc", "#include <math.h>", "goto"] {
        assert!(!source.contains(banned), "the C mentions {banned}");
    }
}

#[test]
fn check_through_the_c_backend_passes_and_fails_as_it_should() {
    let model = fixture("mnist_cnn", "k3.keras");
    let reference = fixture("mnist_cnn", "k3.io.json");
    let run = |r: &Path| {
        kerac(&[
            "check".as_ref(),
            model.as_os_str(),
            "--reference".as_ref(),
            r.as_os_str(),
            "--backend".as_ref(),
            "c".as_ref(),
        ])
    };
    let out = run(&reference);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same reference with one output value moved: the check must fail.
    let mut io: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let v = &mut io["outputs"][0]["data"][3];
    *v = serde_json::json!(v.as_f64().unwrap() + 0.25);
    let moved = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mnist_moved.io.json");
    std::fs::write(&moved, io.to_string()).unwrap();
    let out = run(&moved);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
