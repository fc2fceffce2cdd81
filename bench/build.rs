//! Compiles every benchmark model as a user would: one `kerac::model!` call (the Rust
//! backend), and one Cranelift object for each x86-64 level this machine runs (v3 with
//! AVX2, v4 with AVX-512), linked into the runner.

use kerac_compiler::emit::clif::{self, Target};
use kerac_compiler::plan::Plan;
use std::fmt::Write;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=models.txt");
    let list = std::fs::read_to_string(root.join("models.txt")).unwrap();
    let mut targets = Vec::new();
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        targets.push(("x86_64-v3", Target::X86_64V3, "v3"));
    } else {
        targets.push(("x86_64", Target::X86_64, "v2"));
    }
    if std::is_x86_feature_detected!("avx512f") {
        targets.push(("x86_64-v4", Target::X86_64V4, "v4"));
    }
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
        let mut objects = Vec::new();
        for (target, machine, short) in &targets {
            let prefix = format!("kb_{name}_{short}");
            let object =
                clif::object(&plan, *machine, &prefix).unwrap_or_else(|e| panic!("{file}: {e}"));
            let object_path = out.join(format!("{prefix}.o"));
            std::fs::write(&object_path, object).unwrap();
            println!("cargo:rustc-link-arg={}", object_path.display());
            writeln!(code, "unsafe extern \"C\" {{ fn {prefix}_predict(inputs: *const *const f32, outputs: *const *mut f32, scratch: *mut u8) -> i32; }}").unwrap();
            objects.push(format!("(\"{target}\", {prefix}_predict as ObjectFn)"));
        }
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
        writeln!(
            table,
            "        Bench {{ name: \"{name}\", label: \"{label}\", file: \"{file}\", flops: {}, input_shapes: &[{}], output_lens: &[{}], rust: || Box::new(m_{name}::Model::new()), objects: &[{}], scratch_bytes: {} }},",
            plan.flops(),
            shapes.join(", "),
            outputs.join(", "),
            objects.join(", "),
            clif::scratch_bytes(&plan),
        )
        .unwrap();
    }
    table.push_str("    ]\n}\n");
    std::fs::write(out.join("models.rs"), code + &table).unwrap();
}
