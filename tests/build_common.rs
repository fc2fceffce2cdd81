//! What the conformance crates' build scripts share: one `kerac::model!` module per
//! fixture file. Included by `tests/compiled/build.rs` and `tests/extra/build.rs`.

use std::fmt::Write;
use std::path::Path;

/// The fixture folders under `root`, sorted.
pub fn fixture_dirs(root: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// One `model!` module per model file (of `files`) in `dirs`, its row in the table and
/// its weight size. Paths under `root` are written relative to it, with `to_root` (the
/// way from the calling crate to `root`) before the model's. With `inline_first`, each
/// folder's first file takes `model!`'s default (steps inlined up to its limit); every
/// other file has `inline = false`.
#[allow(clippy::too_many_arguments)]
pub fn expand(
    root: &Path,
    to_root: &str,
    dirs: &[std::path::PathBuf],
    files: &[&str],
    inline_first: bool,
    modules: &mut String,
    table: &mut String,
    sizes: &mut String,
) {
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // Committed fixtures by a path relative to the crate (as a user would write
        // it); extra ones by their absolute path.
        let (folder, to_folder) = match dir.strip_prefix(root) {
            Ok(relative) => (relative.display().to_string(), to_root),
            Err(_) => (dir.display().to_string(), ""),
        };
        let mut first = true;
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
            // The fixture's first file (the native archive where it has one) as a
            // user's crate compiles it, each step inlined; the other dialects differ
            // only in what the reader does, so their kernels go out of line: the same
            // kernels, in a build a fraction of the size.
            if !std::mem::take(&mut first) || !inline_first {
                options.push_str(", inline = false");
            }
            let module = format!("m_{}_{}", name, file.replace('.', "_"));
            writeln!(
                modules,
                "pub mod {module} {{ kerac::model!(pub Model = {:?}{options}); }}",
                format!("{to_folder}{folder}/{file}")
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
