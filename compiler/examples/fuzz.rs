//! A mutation fuzzer for kerac's front end, on stable Rust.
//!
//! It mutates the Keras fixtures at four levels (bytes, the `.keras` zip, the config
//! JSON wherever it lives, and HDF5 headers), then runs each case in a child process
//! through what `kerac inspect` and `kerac compile` run: load, report, plan, Rust
//! source and weight blob, and for models small enough the interpreter and the plan
//! on the runtime's kernels (and now and then the JIT). Each child runs under a time
//! limit and an allocation limit, and every way it can fail is counted:
//!
//! - `panic`: the child panicked (exit 101);
//! - `abort`: it died of a signal (abort, segfault, stack overflow);
//! - `hang`: it ran past the time limit and was killed;
//! - `alloc`: it asked for more live heap than the limit (a small multiple of the
//!   files' size, plus what the interpreter's tensors need);
//! - `unnamed`: an error that names no file: a refusal that does not say which file
//!   is at fault, or a model that loaded and planned but failed to run.
//!
//! Every finding is saved with its files and the child's stderr under `--out`, to be
//! added to `compiler/tests/corpus/` once fixed. The exit status is 1 when anything
//! was found.
//!
//! ```text
//! cargo run --release -p kerac-compiler --example fuzz -- --seconds 60
//! ```

use kerac_compiler::emit::rust::{emit_source, RustOptions, WeightsAt};
use kerac_compiler::io::{self, IoFile};
use kerac_compiler::plan::Plan;
use kerac_compiler::report::Report;
use kerac_compiler::BuildOptions;
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts live heap bytes and aborts the child, with a message the parent reads, when
/// they pass `LIMIT` (0: no limit, as in the parent).
struct Limited;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(0);
const OVER_LIMIT: &str = "kerac-fuzz: live heap over the limit";

fn count(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
    let limit = LIMIT.load(Ordering::Relaxed);
    if limit != 0 && live > limit {
        let message = format!("\n{OVER_LIMIT}: {live} bytes\n");
        // SAFETY: writes a buffer we own to stderr; no allocation after the limit.
        unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
        std::process::abort();
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwards to the system allocator with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`, as the caller promises.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            count(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Limited = Limited;

/// xorshift64: small, seedable, and the same on every machine.
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
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------- the child

/// Exit statuses the child uses besides 0 (ran) and 1 (refused with a named error).
const EXIT_UNNAMED: i32 = 3;

fn child(model: &Path, reference: &Path, jit: bool) -> i32 {
    let files_bytes: usize = std::fs::read_dir(model.parent().unwrap_or(Path::new(".")))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len() as usize)
                .sum()
        })
        .unwrap_or(0);
    // The front end may hold the file, its inflated members and parsed weights a few
    // times over; the interpreter's tensors are bounded below by element count.
    LIMIT.store(16 * files_bytes + (256 << 20), Ordering::Relaxed);
    let shapes = IoFile::read(reference)
        .map(|f| io::input_shapes(&f.inputs))
        .unwrap_or_default();
    let options = BuildOptions {
        input_shapes: shapes,
        ..Default::default()
    };
    match run_case(model, &options, jit) {
        Ok(()) => 0,
        Err(e) if e.file.is_none() => {
            eprintln!("error without a file: {e}");
            EXIT_UNNAMED
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn run_case(model: &Path, options: &BuildOptions, jit: bool) -> kerac_compiler::Result<()> {
    let graph = kerac_compiler::load(model, None, options)?;
    let report = Report::new(&graph);
    std::hint::black_box(report.to_text());
    let plan = Plan::new(&graph)?;
    let source = emit_source(
        &plan,
        &RustOptions {
            cuda: None,
            type_name: "Fuzzed".into(),
            visibility: "pub".into(),
            track_files: Vec::new(),
            source: model.display().to_string(),
            weights: WeightsAt::File("fuzzed.weights.bin".into()),
            isa: kerac_compiler::emit::rust::Level::Avx512,
            inline: None,
        },
    )?;
    std::hint::black_box((source, plan.weight_blob()));
    // The C backend writes every weight as text: only models of modest size.
    if plan.weight_bytes() < 1 << 22 {
        std::hint::black_box(kerac_compiler::emit::c::source(&plan, "net", "fuzzed")?);
    }
    // A model that compiles must also run on the shapes it inferred; only small ones,
    // since a tiny file may rightly declare a huge input.
    let elements = graph
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .fold(0usize, usize::saturating_add);
    if elements < 1 << 22 {
        let inputs: Vec<_> = graph
            .inputs
            .iter()
            .map(|p| ndarray::ArrayD::<f32>::zeros(graph.shape(p.tensor).clone()))
            .collect();
        // Errors here have no file to name: a model that loaded and planned should
        // run, so any of them is a finding.
        kerac_compiler::interp::run(&graph, &inputs)?;
        kerac_compiler::plan::exec::run(&plan, &inputs)?;
        if jit && elements < 1 << 16 {
            kerac_compiler::emit::clif::Jit::new(&plan)?.run_arrays(&inputs)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- mutators

const HDF5_MAGIC: &[u8] = b"\x89HDF\r\n\x1a\n";

/// Integers that break size and offset arithmetic.
fn interesting(rng: &mut Rng, len: usize) -> u64 {
    let len = len as u64;
    *rng.pick(&[
        0,
        1,
        2,
        7,
        0x7f,
        0x80,
        0xff,
        0x7fff,
        0xffff,
        0x7fff_ffff,
        0xffff_ffff,
        1 << 32,
        1 << 40,
        i64::MAX as u64,
        u64::MAX,
        u64::MAX - 1,
        len,
        len + 1,
        len.saturating_sub(1),
        len * 2,
    ])
}

fn put_int(bytes: &mut [u8], at: usize, width: usize, value: u64) {
    let le = value.to_le_bytes();
    let end = (at + width).min(bytes.len());
    bytes[at..end].copy_from_slice(&le[..end - at]);
}

/// Byte-level havoc: flips, interesting integers, deletions, duplications, truncation.
fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            bytes.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(bytes.len());
        match rng.below(7) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.next() as u8,
            2 => {
                let width = *rng.pick(&[2, 4, 8]);
                let value = interesting(rng, bytes.len());
                put_int(bytes, at, width, value);
            }
            3 => {
                let end = (at + 1 + rng.below(64)).min(bytes.len());
                bytes.drain(at..end);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(bytes.len());
                let chunk = bytes[at..end].to_vec();
                let to = rng.below(bytes.len());
                bytes.splice(to..to, chunk);
            }
            5 => bytes.truncate(at),
            _ => {
                let n = 1 + rng.below(16);
                for _ in 0..n {
                    bytes.insert(at, rng.next() as u8);
                }
            }
        }
    }
}

/// Where HDF5's structures are: the superblock and the signatures of its B-trees,
/// heaps, symbol tables and object headers; mutations there reach the readers' size
/// and address arithmetic instead of the raw weight data.
fn hdf5_anchors(bytes: &[u8]) -> Vec<usize> {
    const SIGNATURES: [&[u8]; 10] = [
        b"TREE", b"HEAP", b"SNOD", b"GCOL", b"OHDR", b"OCHK", b"FRHP", b"FSHD", b"BTHD", b"BTLF",
    ];
    let mut anchors = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        if bytes[at..].starts_with(HDF5_MAGIC)
            || SIGNATURES.iter().any(|s| bytes[at..].starts_with(s))
        {
            anchors.push(at);
        }
        at += 1;
    }
    anchors
}

/// HDF5 header edits: integers written over the fields near a structure's signature,
/// at the alignments HDF5 stores sizes and addresses with.
fn mutate_hdf5(bytes: &mut Vec<u8>, rng: &mut Rng) {
    let anchors = hdf5_anchors(bytes);
    if anchors.is_empty() {
        return mutate_bytes(bytes, rng);
    }
    for _ in 0..1 + rng.below(3) {
        let anchor = *rng.pick(&anchors);
        let at = (anchor + rng.below(96)).min(bytes.len().saturating_sub(1));
        match rng.below(3) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.next() as u8,
            _ => {
                let width = *rng.pick(&[1, 2, 4, 8]);
                let value = interesting(rng, bytes.len());
                put_int(bytes, at, width, value);
            }
        }
    }
}

/// Every node of a JSON tree, by its path of keys and indices.
fn paths(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(here.clone());
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                here.push(Step::Index(i));
                paths(item, here, out);
                here.pop();
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                here.push(Step::Key(k.clone()));
                paths(item, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn node_mut<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::Index(i) => v.get_mut(*i),
    })
}

fn node<'a>(v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, step| match step {
        Step::Key(k) => v.get(k.as_str()),
        Step::Index(i) => v.get(*i),
    })
}

/// Structural JSON edits anywhere in a config: hostile numbers, wrong types, deleted
/// keys, grown or shrunk lists, strings and subtrees moved from elsewhere in the file.
fn mutate_json(v: &mut Value, rng: &mut Rng) {
    for _ in 0..1 + rng.below(3) {
        let mut all = Vec::new();
        paths(v, &mut Vec::new(), &mut all);
        let path = all[rng.below(all.len())].clone();
        let donor = node(v, &all[rng.below(all.len())])
            .cloned()
            .unwrap_or(Value::Null);
        let strings: Vec<String> = all
            .iter()
            .filter_map(|p| node(v, p)?.as_str().map(str::to_string))
            .collect();
        let Some(target) = node_mut(v, &path) else {
            continue;
        };
        match rng.below(9) {
            0 | 1 => {
                *target = rng
                    .pick(&[
                        serde_json::json!(0),
                        serde_json::json!(-1),
                        serde_json::json!(1),
                        serde_json::json!(3),
                        serde_json::json!(10.5),
                        serde_json::json!(1u64 << 31),
                        serde_json::json!(1u64 << 32),
                        serde_json::json!(i64::MAX),
                        serde_json::json!(u64::MAX),
                        serde_json::json!(-1e300),
                        serde_json::json!(1e300),
                    ])
                    .clone()
            }
            2 => {
                *target = rng
                    .pick(&[
                        Value::Null,
                        Value::Bool(true),
                        serde_json::json!([]),
                        serde_json::json!({}),
                        serde_json::json!(""),
                        serde_json::json!([null]),
                        serde_json::json!([1, 2, 3]),
                    ])
                    .clone()
            }
            3 => {
                if !strings.is_empty() {
                    *target = Value::String(rng.pick(&strings).clone());
                }
            }
            4 => *target = donor,
            5 => match target {
                Value::Object(map) if !map.is_empty() => {
                    let key = map.keys().nth(rng.below(map.len())).cloned();
                    if let Some(key) = key {
                        map.remove(&key);
                    }
                }
                Value::Array(items) if !items.is_empty() => {
                    items.remove(rng.below(items.len()));
                }
                _ => *target = Value::Null,
            },
            6 => match target {
                Value::Array(items) if !items.is_empty() => {
                    let item = items[rng.below(items.len())].clone();
                    let at = rng.below(items.len() + 1);
                    items.insert(at, item);
                }
                Value::Object(map) => {
                    map.insert("units".into(), donor);
                }
                _ => *target = serde_json::json!([target.clone()]),
            },
            7 => *target = serde_json::json!([target.clone(), target.clone()]),
            _ => {
                if let Value::Number(n) = target {
                    if let Some(i) = n.as_i64() {
                        let delta = *rng.pick(&[-2i64, -1, 1, 2, 1000]);
                        *target = serde_json::json!(i.saturating_add(delta));
                    }
                }
            }
        }
    }
}

fn mutate_json_bytes(bytes: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    mutate_json(&mut v, rng);
    serde_json::to_vec(&v).ok()
}

/// The config JSON stored as an attribute inside an `.h5`: its byte span.
fn h5_config_span(bytes: &[u8]) -> Option<(usize, usize)> {
    let start = bytes
        .windows(14)
        .position(|w| w == b"{\"class_name\":" || w.starts_with(b"{\"module\":"))?;
    let mut stream = serde_json::Deserializer::from_slice(&bytes[start..]).into_iter::<Value>();
    stream.next()?.ok()?;
    Some((start, start + stream.byte_offset()))
}

/// Edits `model_config` in place: the attribute keeps its length, so a mutated config
/// shorter than the original is padded with spaces and a longer one is tried again.
fn mutate_h5_config(bytes: &mut [u8], rng: &mut Rng) -> bool {
    let Some((start, end)) = h5_config_span(bytes) else {
        return false;
    };
    for _ in 0..8 {
        let Some(mut new) = mutate_json_bytes(&bytes[start..end], rng) else {
            return false;
        };
        if new.len() <= end - start {
            new.resize(end - start, b' ');
            bytes[start..end].copy_from_slice(&new);
            return true;
        }
    }
    false
}

/// The members of a `.keras` archive.
fn unzip(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).ok()?;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).ok()?;
        let name = entry.name().ok()?.to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).ok()?;
        out.push((name, data));
    }
    Some(out)
}

fn zip_members(members: &[(String, Vec<u8>)], rng: &mut Rng) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in members {
        let method = if rng.chance(2) {
            zip::CompressionMethod::Stored
        } else {
            zip::CompressionMethod::Deflated
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        let _ = out.start_file(name.as_str(), options);
        let _ = out.write_all(data);
    }
    out.finish().map(|c| c.into_inner()).unwrap_or_default()
}

/// Zip-level edits: a member mutated at its own level, dropped, duplicated or renamed.
fn mutate_zip(bytes: &mut Vec<u8>, rng: &mut Rng) {
    let Some(mut members) = unzip(bytes) else {
        return mutate_bytes(bytes, rng);
    };
    if members.is_empty() {
        return;
    }
    let i = rng.below(members.len());
    match rng.below(8) {
        0 => {
            members.remove(i);
        }
        1 => {
            let copy = members[i].clone();
            members.insert(rng.below(members.len() + 1), copy);
        }
        2 => {
            members[i].0 = rng
                .pick(&["config.json", "model.weights.h5", "x/config.json", ""])
                .to_string()
        }
        _ => {
            let (name, data) = &mut members[i];
            if name.ends_with(".json") {
                if let Some(new) = mutate_json_bytes(data, rng) {
                    *data = new;
                } else {
                    mutate_bytes(data, rng);
                }
            } else if data.starts_with(HDF5_MAGIC) && rng.chance(2) {
                mutate_hdf5(data, rng);
            } else {
                mutate_bytes(data, rng);
            }
        }
    }
    *bytes = zip_members(&members, rng);
}

/// One seed: a fixture's model file, the weights file beside a config JSON, and the
/// recorded inputs that fix its open dimensions.
struct Seed {
    label: String,
    model: PathBuf,
    weights: Option<PathBuf>,
    reference: PathBuf,
}

/// Seed files larger than this are left out.
const MAX_SEED_BYTES: u64 = 1 << 20;

fn seeds(root: &Path) -> Vec<Seed> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.is_dir());
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        for file in ["k3.keras", "k3.h5", "k3.json", "k2.h5", "k2.json"] {
            let model = dir.join(file);
            // The keras.applications fixtures (megabytes each) would spend the time on
            // copying and convolving; the small models reach the same readers.
            if std::fs::metadata(&model).map_or(true, |m| m.len() > MAX_SEED_BYTES) {
                continue;
            }
            let tag = &file[..2];
            let weights = dir.join(format!("{tag}.weights.h5"));
            out.push(Seed {
                label: format!(
                    "{}/{file}",
                    dir.file_name().unwrap_or_default().to_string_lossy()
                ),
                weights: (file.ends_with(".json") && weights.exists()).then_some(weights),
                reference: dir.join(format!("{tag}.io.json")),
                model,
            });
        }
    }
    out
}

/// Writes one mutated case into `dir` and names the mutation.
fn make_case(seed: &Seed, dir: &Path, rng: &mut Rng) -> std::io::Result<(PathBuf, &'static str)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let name = seed.model.file_name().unwrap_or_default();
    let mut model = std::fs::read(&seed.model)?;
    let mut weights = match &seed.weights {
        Some(w) => Some(std::fs::read(w)?),
        None => None,
    };
    let is_zip = model.starts_with(b"PK");
    let is_h5 = model.starts_with(HDF5_MAGIC);
    let kind = match rng.below(4) {
        0 => {
            mutate_bytes(&mut model, rng);
            "bytes"
        }
        1 if is_zip => {
            mutate_zip(&mut model, rng);
            "zip"
        }
        1 | 2 if is_h5 => {
            if mutate_h5_config(&mut model, rng) {
                "json"
            } else {
                mutate_bytes(&mut model, rng);
                "bytes"
            }
        }
        2 if is_zip => {
            // The zip path already mutates members at their own level; aim it at
            // config.json here.
            if let Some(mut members) = unzip(&model) {
                for (n, d) in &mut members {
                    if n == "config.json" {
                        if let Some(new) = mutate_json_bytes(d, rng) {
                            *d = new;
                        }
                    }
                }
                model = zip_members(&members, rng);
            }
            "json"
        }
        _ if is_h5 => {
            mutate_hdf5(&mut model, rng);
            "hdf5"
        }
        _ if is_zip => {
            if let Some(mut members) = unzip(&model) {
                for (n, d) in &mut members {
                    if n == "model.weights.h5" {
                        mutate_hdf5(d, rng);
                    }
                }
                model = zip_members(&members, rng);
            }
            "hdf5"
        }
        _ => match (&mut weights, rng.chance(2)) {
            (Some(w), true) => {
                mutate_hdf5(w, rng);
                "hdf5"
            }
            _ => {
                match mutate_json_bytes(&model, rng) {
                    Some(new) => model = new,
                    None => mutate_bytes(&mut model, rng),
                }
                "json"
            }
        },
    };
    let path = dir.join(name);
    std::fs::write(&path, &model)?;
    if let (Some(w), Some(src)) = (weights, &seed.weights) {
        std::fs::write(dir.join(src.file_name().unwrap_or_default()), w)?;
    }
    Ok((path, kind))
}

// ---------------------------------------------------------------- the parent

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Ran,
    Refused,
    Panic,
    Abort,
    Hang,
    Alloc,
    Unnamed,
}

impl Outcome {
    const ALL: [Outcome; 7] = [
        Outcome::Ran,
        Outcome::Refused,
        Outcome::Panic,
        Outcome::Abort,
        Outcome::Hang,
        Outcome::Alloc,
        Outcome::Unnamed,
    ];
    fn finding(self) -> bool {
        !matches!(self, Outcome::Ran | Outcome::Refused)
    }
    fn name(self) -> &'static str {
        match self {
            Outcome::Ran => "ran",
            Outcome::Refused => "refused",
            Outcome::Panic => "panic",
            Outcome::Abort => "abort",
            Outcome::Hang => "hang",
            Outcome::Alloc => "alloc",
            Outcome::Unnamed => "unnamed",
        }
    }
}

struct Run {
    outcome: Outcome,
    stderr: String,
    max_rss_kib: u64,
}

/// Runs one case in a child under the limits; reaps it with `wait4` for its peak RSS.
fn spawn(
    model: &Path,
    reference: &Path,
    jit: bool,
    timeout: Duration,
    stderr_file: &Path,
) -> std::io::Result<Run> {
    use std::os::unix::process::CommandExt;
    let err = std::fs::File::create(stderr_file)?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg("--child")
        .arg(model)
        .arg(reference)
        .arg(if jit { "jit" } else { "nojit" })
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .env("RUST_BACKTRACE", "1");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // A backstop under the counting allocator: 4 GiB of address space.
            let address = libc::rlimit {
                rlim_cur: 4 << 30,
                rlim_max: 4 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &address);
            let core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &core);
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut hung = false;
    loop {
        // SAFETY: `pid` is our child, not yet reaped; the pointers are to locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if start.elapsed() > timeout && !hung {
            hung = true;
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    let stderr = std::fs::read_to_string(stderr_file).unwrap_or_default();
    let outcome = if hung {
        Outcome::Hang
    } else if stderr.contains(OVER_LIMIT) || stderr.contains("memory allocation of") {
        Outcome::Alloc
    } else if libc::WIFSIGNALED(status) {
        Outcome::Abort
    } else {
        match libc::WEXITSTATUS(status) {
            0 => Outcome::Ran,
            1 => Outcome::Refused,
            101 => Outcome::Panic,
            EXIT_UNNAMED => Outcome::Unnamed,
            _ => Outcome::Abort,
        }
    };
    Ok(Run {
        outcome,
        stderr,
        max_rss_kib: usage.ru_maxrss as u64,
    })
}

#[derive(Default)]
struct Tally {
    cases: u64,
    by_outcome: [u64; 7],
    by_kind: std::collections::BTreeMap<&'static str, [u64; 7]>,
    max_rss_kib: u64,
    findings: Vec<String>,
}

struct Options {
    seconds: u64,
    seed: u64,
    jobs: usize,
    timeout: Duration,
    out: PathBuf,
    fixtures: PathBuf,
}

fn parse_options() -> Result<Options, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Options {
        seconds: 60,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        timeout: Duration::from_secs(20),
        out: root.join("target/fuzz"),
        fixtures: root.join("tests/fixtures"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--seconds" => o.seconds = number()?,
            "--seed" => o.seed = number()? | 1,
            "--jobs" => o.jobs = number()?.max(1) as usize,
            "--timeout" => o.timeout = Duration::from_secs(number()?),
            "--out" => o.out = PathBuf::from(value),
            "--fixtures" => o.fixtures = PathBuf::from(value),
            _ => {
                return Err(format!(
                "unknown flag {flag}; flags: --seconds --seed --jobs --timeout --out --fixtures"
            ))
            }
        }
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") && args.len() == 5 {
        std::process::exit(child(
            Path::new(&args[2]),
            Path::new(&args[3]),
            args[4] == "jit",
        ));
    }
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fuzz: {e}");
            std::process::exit(2);
        }
    };
    let seeds = Arc::new(seeds(&options.fixtures));
    if seeds.is_empty() {
        eprintln!("fuzz: no fixtures under {}", options.fixtures.display());
        std::process::exit(2);
    }
    println!(
        "fuzzing {} seed files for {} s with {} jobs, seed {} (rerun with --seed {})",
        seeds.len(),
        options.seconds,
        options.jobs,
        options.seed,
        options.seed
    );
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next_case = Arc::new(AtomicU64::new(0));
    let findings_dir = options.out.join("findings");
    let workers: Vec<_> = (0..options.jobs)
        .map(|job| {
            let (seeds, tally, next_case) = (seeds.clone(), tally.clone(), next_case.clone());
            let work = options.out.join(format!("work-{job}"));
            let findings_dir = findings_dir.clone();
            let (seed, timeout) = (options.seed, options.timeout);
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    let case = next_case.fetch_add(1, Ordering::Relaxed);
                    // One generator per case: a finding replays from the seed and the
                    // case number alone.
                    let mut rng = Rng(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                    for _ in 0..4 {
                        rng.next();
                    }
                    let s = &seeds[rng.below(seeds.len())];
                    let dir = work.join("case");
                    let Ok((model, kind)) = make_case(s, &dir, &mut rng) else {
                        continue;
                    };
                    let jit = rng.chance(8);
                    let Ok(run) =
                        spawn(&model, &s.reference, jit, timeout, &work.join("stderr.txt"))
                    else {
                        continue;
                    };
                    let index = Outcome::ALL
                        .iter()
                        .position(|o| *o == run.outcome)
                        .unwrap_or(0);
                    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                    t.cases += 1;
                    t.by_outcome[index] += 1;
                    t.by_kind.entry(kind).or_default()[index] += 1;
                    t.max_rss_kib = t.max_rss_kib.max(run.max_rss_kib);
                    if run.outcome.finding() {
                        let keep = findings_dir.join(format!("{}-{case}", run.outcome.name()));
                        let _ = std::fs::create_dir_all(&keep);
                        if let Ok(files) = std::fs::read_dir(&dir) {
                            for f in files.flatten() {
                                let _ = std::fs::copy(f.path(), keep.join(f.file_name()));
                            }
                        }
                        let _ = std::fs::copy(&s.reference, keep.join("reference.io.json"));
                        let about = format!(
                            "{}: {} mutation of {}, seed {seed} case {case}, jit {jit}\n{}",
                            run.outcome.name(),
                            kind,
                            s.label,
                            run.stderr
                        );
                        let _ = std::fs::write(keep.join("finding.txt"), &about);
                        let first = run
                            .stderr
                            .lines()
                            .find(|l| !l.trim().is_empty())
                            .unwrap_or("");
                        t.findings.push(format!(
                            "{} ({kind} on {}): {first}",
                            keep.display(),
                            s.label
                        ));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "{} cases; peak child RSS {} MiB",
        t.cases,
        t.max_rss_kib / 1024
    );
    let header: Vec<&str> = Outcome::ALL.iter().map(|o| o.name()).collect();
    println!(
        "{:<8} {}",
        "mutation",
        header.iter().map(|h| format!("{h:>8}")).collect::<String>()
    );
    for (kind, counts) in &t.by_kind {
        println!(
            "{kind:<8} {}",
            counts.iter().map(|c| format!("{c:>8}")).collect::<String>()
        );
    }
    println!(
        "{:<8} {}",
        "all",
        t.by_outcome
            .iter()
            .map(|c| format!("{c:>8}"))
            .collect::<String>()
    );
    let found: u64 = Outcome::ALL
        .iter()
        .zip(t.by_outcome)
        .filter(|(o, _)| o.finding())
        .map(|(_, n)| n)
        .sum();
    println!("findings: {found}");
    for f in &t.findings {
        println!("  {f}");
    }
    if found > 0 {
        std::process::exit(1);
    }
}
