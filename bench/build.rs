//! Compiles every benchmark model twice, as a user would: one `kerac::model!` call (the
//! Rust backend) and one Cranelift object for this machine, linked into the runner.

use kerac_compiler::emit::clif::{self, Target};
use kerac_compiler::plan::Plan;
use std::fmt::Write;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=models.txt");
    let list = std::fs::read_to_string(root.join("models.txt")).unwrap();
    let target = if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        ("x86_64-v3", Target::X86_64V3)
    } else {
        ("x86_64", Target::X86_64)
    };
    let mut code = String::new();
    let mut table = String::from("/// Every benchmark model, in the order of models.txt.\npub fn models() -> Vec<Bench> {\n    vec![\n");
    for line in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, label) = line.split_once(char::is_whitespace).unwrap();
        let label = label.trim();
        // Committed fixtures, else the keras.applications models made under
        // target/applications (bench/run.sh makes them).
        let file = ["../tests/fixtures", "../target/applications"]
            .iter()
            .map(|dir| format!("{dir}/{name}/k3.keras"))
            .find(|f| root.join(f).exists())
            .unwrap_or_else(|| {
                panic!("{name}: no k3.keras under tests/fixtures or target/applications; bash tests/make_applications.sh makes the large models")
            });
        println!("cargo:rerun-if-changed={file}");
        let graph = kerac_compiler::load(&root.join(&file), None, &Default::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let plan = Plan::new(&graph).unwrap_or_else(|e| panic!("{file}: {e}"));
        let prefix = format!("kb_{name}");
        let object =
            clif::object(&plan, target.1, &prefix).unwrap_or_else(|e| panic!("{file}: {e}"));
        let object_path = out.join(format!("{prefix}.o"));
        std::fs::write(&object_path, object).unwrap();
        println!("cargo:rustc-link-arg={}", object_path.display());
        let shapes: Vec<String> = plan
            .inputs
            .iter()
            .map(|p| format!("&{:?}", p.shape))
            .collect();
        let outputs: Vec<String> = plan
            .outputs
            .iter()
            .map(|p| plan.buffers[p.buffer].len.to_string())
            .collect();
        writeln!(
            code,
            "mod m_{name} {{ kerac::model!(pub Model = \"{file}\"); }}"
        )
        .unwrap();
        writeln!(code, "unsafe extern \"C\" {{ fn {prefix}_predict(inputs: *const *const f32, outputs: *const *mut f32, scratch: *mut u8) -> i32; }}").unwrap();
        writeln!(
            table,
            "        Bench {{ name: \"{name}\", label: \"{label}\", file: \"{file}\", flops: {}, input_shapes: &[{}], output_lens: &[{}], rust: || Box::new(m_{name}::Model::new()), object: {prefix}_predict, scratch_bytes: {}, target: \"{}\" }},",
            plan.flops(),
            shapes.join(", "),
            outputs.join(", "),
            clif::scratch_bytes(&plan),
            target.0,
        )
        .unwrap();
    }
    table.push_str("    ]\n}\n");
    std::fs::write(out.join("models.rs"), code + &table).unwrap();
}
