//! The bad-input corpus: files made from the Keras fixtures by truncation, bit flips,
//! corrupted archive members, malformed or absurd configs, wrong or missing weights,
//! a zip bomb and deep nesting. Every case must end in an error that names the file
//! (and the layer, where one is at fault): never a panic, and never an allocation far
//! beyond the file's own size.

use kerac_compiler::{BuildOptions, Error};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Tracks the peak of live heap bytes, so each case's allocation can be bounded.
struct PeakAlloc;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwards to the system allocator with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// The peak is global, so cases run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kerac-bad-input-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a load, returning its result and the peak bytes it allocated; a panic fails.
fn load_measured(path: &Path, weights: Option<&Path>) -> (Result<(), Error>, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = std::panic::catch_unwind(|| {
        kerac_compiler::load(path, weights, &BuildOptions::default()).map(|_| ())
    });
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let result = result.unwrap_or_else(|_| panic!("{}: kerac panicked", path.display()));
    (result, peak)
}

fn allowance(bytes: usize) -> usize {
    8 * bytes + (16 << 20)
}

fn file_len(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| m.len() as usize)
}

/// Loads `path` and checks the error: names the file, no panic, bounded allocation.
fn expect_error(path: &Path, weights: Option<&Path>) -> Error {
    let size = file_len(path) + weights.map_or(0, file_len);
    let (result, peak) = load_measured(path, weights);
    let err = match result {
        Ok(()) => panic!("{}: a broken file loaded without error", path.display()),
        Err(e) => e,
    };
    assert!(
        err.file.is_some(),
        "{}: error does not name the file: {err}",
        path.display()
    );
    assert!(
        peak <= allowance(size),
        "{}: allocated {peak} bytes for a {size}-byte file: {err}",
        path.display()
    );
    err
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn sources() -> Vec<PathBuf> {
    [
        "mlp/k3.keras",
        "mlp/k3.h5",
        "mlp/k2.h5",
        "nested/k3.keras",
        "nested/k2.h5",
        "conv2d/k3.h5",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect()
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn truncated_files_give_errors() {
    let _guard = lock();
    let dir = scratch("truncated");
    for src in sources() {
        let bytes = std::fs::read(&src).unwrap();
        let mut cuts: Vec<usize> = vec![0, 1, 7, 8, 64, 512, 2048];
        cuts.extend((1..16).map(|i| bytes.len() * i / 16));
        cuts.push(bytes.len() - 1);
        for cut in cuts.into_iter().filter(|&c| c < bytes.len()) {
            let name = src.parent().unwrap().file_name().unwrap().to_string_lossy();
            let path = dir.join(format!(
                "{name}-{cut}-{}",
                src.file_name().unwrap().to_string_lossy()
            ));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            expect_error(&path, None);
        }
    }
}

#[test]
fn bit_flips_never_panic() {
    let _guard = lock();
    let dir = scratch("flips");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for src in sources() {
        let bytes = std::fs::read(&src).unwrap();
        for case in 0..120 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len());
                b[at] ^= 1 << rng.below(8);
            }
            let name = src.parent().unwrap().file_name().unwrap().to_string_lossy();
            let path = dir.join(format!(
                "{name}-{case}-{}",
                src.file_name().unwrap().to_string_lossy()
            ));
            std::fs::write(&path, &b).unwrap();
            // A flip inside a weight's value loads fine; what matters is no panic, a
            // bounded allocation, and that any error names the file.
            let (result, peak) = load_measured(&path, None);
            if let Err(e) = result {
                assert!(e.file.is_some(), "{}: {e}", path.display());
            }
            assert!(
                peak <= allowance(b.len()),
                "{}: allocated {peak} bytes",
                path.display()
            );
        }
    }
}

/// Rewrites a `.keras` archive, replacing or dropping members through `edit`.
fn rewrite_archive(src: &Path, dst: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    for i in 0..zin.len() {
        let mut entry = zin.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if let Some(data) = edit(&name, data) {
            zout.start_file(&name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zout.write_all(&data).unwrap();
        }
    }
    zout.finish().unwrap();
}

fn edit_config(src: &Path, dst: &Path, f: impl Fn(&mut Value)) {
    rewrite_archive(src, dst, |name, data| {
        if name != "config.json" {
            return Some(data);
        }
        let mut v: Value = serde_json::from_slice(&data).unwrap();
        f(&mut v);
        Some(serde_json::to_vec(&v).unwrap())
    });
}

fn layer_mut(v: &mut Value, index: usize) -> &mut Value {
    &mut v["config"]["layers"][index]
}

#[test]
fn broken_archives_and_configs_name_file_and_layer() {
    let _guard = lock();
    let dir = scratch("archives");
    let mlp = fixture("mlp/k3.keras");
    let case = |name: &str| dir.join(name);

    // A corrupted member: the stored bytes of model.weights.h5 no longer match its CRC.
    let mut bytes = std::fs::read(&mlp).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"\x89HDF\r\n\x1a\n")
        .unwrap()
        + 600;
    bytes[at] ^= 0xff;
    std::fs::write(case("crc.keras"), &bytes).unwrap();
    let e = expect_error(&case("crc.keras"), None);
    assert!(e.message.contains("model.weights.h5"), "{e}");

    rewrite_archive(&mlp, &case("bad-json.keras"), |n, d| {
        Some(if n == "config.json" {
            b"{\"class_name\": \"Sequential\", \"config\": {".to_vec()
        } else {
            d
        })
    });
    let e = expect_error(&case("bad-json.keras"), None);
    assert!(e.message.contains("JSON"), "{e}");

    rewrite_archive(&mlp, &case("no-weights.keras"), |n, d| {
        (n != "model.weights.h5").then_some(d)
    });
    let e = expect_error(&case("no-weights.keras"), None);
    assert!(e.message.contains("model.weights.h5"), "{e}");

    // Unknown classes are listed all at once, with the supported ones.
    edit_config(&mlp, &case("unknown.keras"), |v| {
        layer_mut(v, 1)["class_name"] = "FancyDense".into();
        layer_mut(v, 2)["class_name"] = "MysteryLayer".into();
    });
    let e = expect_error(&case("unknown.keras"), None);
    assert!(
        e.message.contains("FancyDense")
            && e.message.contains("MysteryLayer")
            && e.message.contains("Conv2D"),
        "{e}"
    );

    // Wrong weight shapes: the config says 17 units, the file holds 16.
    edit_config(&mlp, &case("units.keras"), |v| {
        layer_mut(v, 1)["config"]["units"] = 17.into()
    });
    let e = expect_error(&case("units.keras"), None);
    assert!(
        e.layer.is_some() && e.message.contains("[12, 17]") && e.message.contains("[12, 16]"),
        "{e}"
    );

    // Missing weights: the config asks for a bias the file does not hold.
    edit_config(&mlp, &case("bias.keras"), |v| {
        layer_mut(v, 2)["config"]["use_bias"] = true.into()
    });
    let e = expect_error(&case("bias.keras"), None);
    assert!(e.layer.is_some() && e.message.contains("bias"), "{e}");

    // Absurd shapes: element counts that overflow, and negative sizes.
    edit_config(&mlp, &case("huge.keras"), |v| {
        layer_mut(v, 0)["config"]["batch_shape"] =
            serde_json::json!([null, 4_000_000_000u64, 4_000_000_000u64, 12]);
    });
    let e = expect_error(&case("huge.keras"), None);
    assert!(e.layer.is_some(), "{e}");
    edit_config(&mlp, &case("units-huge.keras"), |v| {
        layer_mut(v, 1)["config"]["units"] = serde_json::json!(1u64 << 62)
    });
    expect_error(&case("units-huge.keras"), None);
    edit_config(&mlp, &case("negative.keras"), |v| {
        layer_mut(v, 1)["config"]["units"] = serde_json::json!(-3)
    });
    let e = expect_error(&case("negative.keras"), None);
    assert!(e.layer.is_some(), "{e}");

    // A reference to a layer that is not there.
    let graph = fixture("functional_graph/k3.keras");
    edit_config(&graph, &case("dangling.keras"), |v| {
        let layers = v["config"]["layers"].as_array_mut().unwrap();
        layers.retain(|l| l["name"] != "concatenate");
    });
    let e = expect_error(&case("dangling.keras"), None);
    assert!(e.layer.is_some(), "{e}");

    // Deep nesting: JSON beyond the parser's depth, and models nested beyond ours.
    let mut deep = String::from("{\"class_name\": \"Sequential\", \"config\": {\"layers\": ");
    deep.push_str(&"[".repeat(100_000));
    std::fs::write(case("deep.json"), &deep).unwrap();
    expect_error(&case("deep.json"), None);
    let input = |name: String| serde_json::json!({"class_name": "InputLayer", "config": {"batch_shape": [null, 2], "name": name}});
    let mut model = serde_json::json!({"class_name": "Sequential", "config": {"name": "m", "layers": [input("i".into())]}});
    for i in 0..40 {
        model = serde_json::json!({"class_name": "Sequential", "config": {"name": format!("m{i}"), "layers": [input(format!("i{i}")), model]}});
    }
    std::fs::write(case("nested.json"), model.to_string()).unwrap();
    expect_error(&case("nested.json"), None);

    // Not a model at all, an empty file, and no file.
    std::fs::write(case("text.keras"), "hello").unwrap();
    expect_error(&case("text.keras"), None);
    std::fs::write(case("empty.h5"), "").unwrap();
    expect_error(&case("empty.h5"), None);
    let e = expect_error(&case("does-not-exist.keras"), None);
    assert!(e.message.contains("cannot read"), "{e}");

    // A weights-only file given as the model, and a config with another model's weights.
    let e = expect_error(&fixture("mlp/k3.weights.h5"), None);
    assert!(e.message.contains("weights only"), "{e}");
    let e = expect_error(
        &fixture("mlp/k3.json"),
        Some(&fixture("nested/k3.weights.h5")),
    );
    assert!(e.layer.is_some(), "{e}");
}

#[test]
fn zip_bomb_is_refused_before_inflating() {
    let _guard = lock();
    let path = scratch("bomb").join("bomb.keras");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    z.start_file("config.json", options).unwrap();
    let block = vec![b' '; 1 << 20];
    for _ in 0..256 {
        z.write_all(&block).unwrap();
    }
    z.finish().unwrap();
    let e = expect_error(&path, None);
    assert!(e.message.contains("zip bomb"), "{e}");
}

#[test]
fn cli_reports_errors_with_exit_code_1_never_101() {
    let _guard = lock();
    let dir = scratch("cli");
    let bytes = std::fs::read(fixture("nested/k2.h5")).unwrap();
    let mut rng = Rng(42);
    for case in 0..30 {
        let mut b = bytes.clone();
        if case % 2 == 0 {
            b.truncate(rng.below(b.len()));
        } else {
            for _ in 0..8 {
                let at = rng.below(b.len());
                b[at] = rng.next() as u8;
            }
        }
        let path = dir.join(format!("case-{case}.h5"));
        std::fs::write(&path, &b).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kerac"))
            .arg("inspect")
            .arg(&path)
            .output()
            .unwrap();
        let code = out.status.code();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            code,
            Some(101),
            "{}: kerac panicked: {stderr}",
            path.display()
        );
        if !out.status.success() {
            assert_eq!(code, Some(1), "{stderr}");
            assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        }
    }
}

/// Zeros for every input of a graph, in the shapes it inferred.
fn zeros(graph: &kerac_compiler::Graph) -> Vec<ndarray::ArrayD<f32>> {
    graph
        .inputs
        .iter()
        .map(|p| ndarray::ArrayD::<f32>::zeros(graph.shape(p.tensor).clone()))
        .collect()
}

/// Replaces random numeric and string leaves of a config with hostile values.
fn mutate(v: &mut Value, rng: &mut Rng, rate: usize) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| mutate(i, rng, rate)),
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                // Keep the structure that names layers, so mutations reach layer configs.
                if key == "class_name" || key == "keras_history" || key == "name" {
                    continue;
                }
                mutate(item, rng, rate);
            }
        }
        Value::Number(_) if rng.below(rate) == 0 => {
            let choices = [
                serde_json::json!(0),
                serde_json::json!(-1),
                serde_json::json!(1),
                serde_json::json!(2),
                serde_json::json!(7),
                serde_json::json!(1u64 << 31),
                serde_json::json!(1u64 << 62),
                serde_json::json!(u64::MAX),
                serde_json::json!(-1e300),
                serde_json::json!(0.5),
            ];
            *v = choices[rng.below(choices.len())].clone();
        }
        Value::String(_) if rng.below(rate * 2) == 0 => {
            let choices = [
                "same",
                "valid",
                "causal",
                "full",
                "channels_first",
                "bilinear",
                "softmax",
                "",
            ];
            *v = Value::String(choices[rng.below(choices.len())].into());
        }
        Value::Bool(b) if rng.below(rate) == 0 => *b = !*b,
        Value::Null if rng.below(rate * 2) == 0 => *v = serde_json::json!(3),
        _ => {}
    }
}

#[test]
fn mutated_configs_never_panic_and_loaded_models_run() {
    let _guard = lock();
    let dir = scratch("mutated");
    let mut rng = Rng(std::env::var("KERAC_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("k3.keras").exists())
        .collect();
    dirs.sort();
    let (mut loaded, mut refused) = (0, 0);
    // KERAC_FUZZ_CASES raises the count for a longer hunt than CI's.
    let cases: usize = std::env::var("KERAC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    for fixture_dir in dirs {
        let name = fixture_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for case in 0..cases {
            let path = dir.join(format!("{name}-{case}.keras"));
            let seed = rng.next();
            edit_config(&fixture_dir.join("k3.keras"), &path, |v| {
                let mut local = Rng(seed | 1);
                mutate(v, &mut local, 12);
            });
            let result = std::panic::catch_unwind(|| {
                let graph = kerac_compiler::load(&path, None, &BuildOptions::default())?;
                // A mutation that still loads must also run: the shapes it inferred
                // must be the shapes the ops produce.
                let elements: usize = graph
                    .tensors
                    .iter()
                    .map(|t| t.shape.iter().product::<usize>())
                    .sum();
                if elements < 1 << 22 {
                    let inputs = zeros(&graph);
                    kerac_compiler::interp::run(&graph, &inputs)?;
                    // And the compiled plan on the runtime's kernels: lowering may refuse
                    // a layout, but must not panic, and the kernels must run.
                    // Cranelift compiles it too and the native code runs.
                    if let Ok(plan) = kerac_compiler::plan::Plan::new(&graph) {
                        kerac_compiler::plan::exec::run(&plan, &inputs)?;
                        if elements < 1 << 16 {
                            kerac_compiler::emit::clif::Jit::new(&plan)?.run_arrays(&inputs)?;
                        }
                    }
                }
                Ok::<_, Error>(())
            });
            match result {
                Err(_) => panic!("{}: kerac panicked", path.display()),
                Ok(Ok(())) => loaded += 1,
                Ok(Err(e)) => {
                    assert!(e.file.is_some(), "{}: {e}", path.display());
                    refused += 1;
                }
            }
        }
    }
    assert!(
        loaded > 0 && refused > 0,
        "mutations should both load and fail: {loaded} loaded, {refused} refused"
    );
}

/// Every case the fuzzer found (and the earlier campaign's), one folder each: the model
/// file, its weights beside a config JSON, and the recorded inputs where the model has
/// open dimensions. Each must load and run, or be refused naming the file; never panic.
#[test]
fn fuzzer_findings_stay_fixed() {
    let _guard = lock();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "the corpus is empty");
    for case in cases {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&case)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let model = files
            .iter()
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                !name.contains("weights") && !name.ends_with(".io.json") && !name.ends_with(".txt")
            })
            .unwrap_or_else(|| panic!("{}: no model file", case.display()));
        let options = BuildOptions {
            input_shapes: kerac_compiler::io::IoFile::read(&case.join("reference.io.json"))
                .map(|f| kerac_compiler::io::input_shapes(&f.inputs))
                .unwrap_or_default(),
            ..Default::default()
        };
        let size: usize = files.iter().map(|p| file_len(p)).sum();
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let result = std::panic::catch_unwind(|| {
            let graph = kerac_compiler::load(model, None, &options)?;
            let plan = kerac_compiler::plan::Plan::new(&graph)?;
            let inputs = zeros(&graph);
            kerac_compiler::interp::run(&graph, &inputs)?;
            kerac_compiler::plan::exec::run(&plan, &inputs)?;
            Ok::<_, Error>(())
        });
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        match result {
            Err(_) => panic!("{}: kerac panicked", model.display()),
            Ok(Err(e)) => assert!(e.file.is_some(), "{}: {e}", model.display()),
            Ok(Ok(())) => {}
        }
        assert!(
            peak <= allowance(size) + (64 << 20),
            "{}: {peak} bytes allocated",
            model.display()
        );
    }
}
