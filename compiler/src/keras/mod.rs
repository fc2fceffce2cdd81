//! Readers for Keras model files: `.keras` archives, legacy `.h5` (Keras 2 and Keras 3),
//! and a config JSON beside a weights file. They all produce a [`ModelFile`]: the model
//! config, which dialect wrote it, and the weights.

pub mod archive;
pub mod config;
pub mod hdf5;
pub mod weights;

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
pub use weights::WeightStore;

/// Which Keras wrote a file; the config dialects and some semantics differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Keras 2 / tf.keras (`tf-keras`).
    Keras2,
    /// Keras 3.
    Keras3,
}

/// A model file, read and checked for form but not yet turned into a graph.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// The path it was read from.
    pub path: PathBuf,
    /// The Keras version recorded in the file, when there is one.
    pub keras_version: Option<String>,
    /// The config dialect.
    pub dialect: Dialect,
    /// The model's config: `{"class_name": ..., "config": {...}}`.
    pub config: Value,
    /// The weights; `None` for a config JSON read without weights.
    pub weights: Option<WeightStore>,
}

const HDF5_MAGIC: &[u8] = b"\x89HDF\r\n\x1a\n";

/// Largest model file kerac reads; a bound on what a path can make it allocate.
pub const MAX_FILE_BYTES: u64 = 4 << 30;

/// Reads a model file. `weights` names a separate weights file for a config JSON; when
/// absent, `<stem>.weights.h5` and `<stem>.h5` beside the JSON are tried.
pub fn open(path: &Path, weights: Option<&Path>) -> Result<ModelFile> {
    open_inner(path, weights).map_err(|e| e.in_file(path))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::new(format!("cannot read the file: {e}")).in_file(path))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(Error::new(format!(
            "the file is {} bytes, more than the {MAX_FILE_BYTES} kerac reads",
            meta.len()
        ))
        .in_file(path));
    }
    std::fs::read(path).map_err(|e| Error::new(format!("cannot read the file: {e}")).in_file(path))
}

fn open_inner(path: &Path, weights_path: Option<&Path>) -> Result<ModelFile> {
    let bytes = read_file(path)?;
    if bytes.starts_with(b"PK") {
        let archive = archive::read(&bytes)?;
        let config = parse_json("config.json", &archive.config)?;
        let keras_version = match &archive.metadata {
            Some(m) => parse_json("metadata.json", m)?
                .get("keras_version")
                .and_then(Value::as_str)
                .map(str::to_string),
            None => None,
        };
        let weights = read_weights_bytes(archive.weights)
            .map_err(|e| Error::new(format!("model.weights.h5: {}", e.message)))?;
        return Ok(ModelFile {
            path: path.to_path_buf(),
            dialect: Dialect::Keras3,
            keras_version,
            config: unwrap_config(config)?,
            weights: Some(weights),
        });
    }
    if bytes.starts_with(HDF5_MAGIC) {
        return open_h5(path, bytes);
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::new("the JSON is not UTF-8"))?;
        let json = parse_json("model config", text)?;
        let keras_version = json
            .get("keras_version")
            .and_then(Value::as_str)
            .map(str::to_string);
        let config = unwrap_config(json)?;
        let dialect = dialect_of(keras_version.as_deref(), &config);
        let weights = match weights_path
            .map(Path::to_path_buf)
            .or_else(|| sibling_weights(path))
        {
            Some(w) => Some(read_weights_bytes(read_file(&w)?).map_err(|e| e.in_file(&w))?),
            None => None,
        };
        return Ok(ModelFile {
            path: path.to_path_buf(),
            keras_version,
            dialect,
            config,
            weights,
        });
    }
    Err(Error::new(
        "not a Keras model: expected a .keras archive (zip), an .h5 file (HDF5) or a config JSON",
    ))
}

fn open_h5(path: &Path, bytes: Vec<u8>) -> Result<ModelFile> {
    let mut budget = hdf5::Budget::for_file(bytes.len());
    let file = hdf5::open(bytes)?;
    let root = hdf5::root(&file)?;
    let Some(config_text) = hdf5::attr_string(&root, "model_config")? else {
        return Err(Error::new(
            "this HDF5 file has no `model_config`: it holds weights only; pass the model's config JSON and give this file with --weights",
        ));
    };
    let keras_version = hdf5::attr_string(&root, "keras_version")?;
    let config = unwrap_config(parse_json("model_config", &config_text)?)?;
    let dialect = dialect_of(keras_version.as_deref(), &config);
    let group = hdf5::child_group(&root, "model_weights").unwrap_or(root);
    let weights = weights::read_legacy(&group, &mut budget)?;
    let _ = path;
    Ok(ModelFile {
        path: path.to_path_buf(),
        keras_version,
        dialect,
        config,
        weights: Some(WeightStore::Legacy(weights)),
    })
}

/// Reads a standalone weights file in either layout.
fn read_weights_bytes(bytes: Vec<u8>) -> Result<WeightStore> {
    let mut budget = hdf5::Budget::for_file(bytes.len());
    let file = hdf5::open(bytes)?;
    let root = hdf5::root(&file)?;
    if hdf5::attr_strings(&root, "layer_names")?.is_some() {
        return Ok(WeightStore::Legacy(weights::read_legacy(
            &root,
            &mut budget,
        )?));
    }
    if let Some(group) = hdf5::child_group(&root, "model_weights") {
        return Ok(WeightStore::Legacy(weights::read_legacy(
            &group,
            &mut budget,
        )?));
    }
    Ok(WeightStore::Tree(weights::read_tree(&root, &mut budget)?))
}

fn sibling_weights(json: &Path) -> Option<PathBuf> {
    let stem = json.file_stem()?.to_str()?;
    let dir = json.parent()?;
    [format!("{stem}.weights.h5"), format!("{stem}.h5")]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

fn parse_json(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::new(format!("{what} is not valid JSON: {e}")))
}

/// Accepts both `{"class_name", "config"}` and a file that wraps it further.
fn unwrap_config(json: Value) -> Result<Value> {
    if json.get("class_name").is_some() && json.get("config").is_some() {
        return Ok(json);
    }
    Err(Error::new(
        "the model config has no `class_name` and `config`; expected what Keras's `model.to_json()` writes",
    ))
}

fn dialect_of(version: Option<&str>, config: &Value) -> Dialect {
    match version.and_then(|v| v.split('.').next()) {
        Some("1") | Some("2") => Dialect::Keras2,
        Some(_) => Dialect::Keras3,
        // No version: Keras 2 configs give input shapes as `batch_input_shape`.
        None if config.to_string().contains("\"batch_input_shape\"") => Dialect::Keras2,
        None => Dialect::Keras3,
    }
}
