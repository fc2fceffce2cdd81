//! Thin helpers over the pure-Rust `hdf5-reader`: string attributes the way Keras writes
//! them, and float32 datasets read under a byte budget so a hostile file cannot make us
//! allocate without bound.

use crate::bail;
use crate::error::{Error, Result};
use hdf5_reader::group::Group;
use hdf5_reader::Hdf5File;

/// Opens HDF5 bytes with limits suited to untrusted model files.
pub fn open(bytes: Vec<u8>) -> Result<Hdf5File> {
    let len = bytes.len() as u64;
    let limit = read_budget(bytes.len());
    let options = hdf5_reader::OpenOptions::default()
        .with_max_read_bytes(limit)
        .with_max_chunk_bytes(limit)
        .with_chunk_cache_bytes(0)
        .with_max_object_header_bytes(limit.min(64 << 20));
    let file = guard(|| Hdf5File::from_vec_with_options(bytes, options))
        .map_err(|e| Error::new(format!("not a readable HDF5 file: {e}")))?;
    // HDF5 records its own length: a shorter file was cut off in transfer or on disk.
    let sb = file.superblock();
    let expected = sb.base_address.saturating_add(sb.eof_address);
    if expected > len {
        bail!("the HDF5 data is truncated: it records {expected} bytes, {len} are present");
    }
    Ok(file)
}

/// The most bytes of decoded data a file of `file_len` bytes may make us hold: Keras
/// stores weights uncompressed, so anything beyond a few times the file is a lie.
pub fn read_budget(file_len: usize) -> usize {
    file_len.saturating_mul(4).saturating_add(1 << 20)
}

/// Runs a call into the HDF5 parser, turning any panic inside it into an error, so that
/// a malformed file can never abort the compiler or the proc macro.
fn guard<T>(f: impl FnOnce() -> hdf5_reader::error::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the HDF5 structure is malformed".to_string()),
    }
}

/// The root group.
pub fn root(file: &Hdf5File) -> Result<Group> {
    guard(|| file.root_group()).map_err(|e| Error::new(format!("HDF5 root group: {e}")))
}

/// A child group, `None` when absent.
pub fn child_group(group: &Group, name: &str) -> Option<Group> {
    guard(|| group.group(name)).ok()
}

/// Follows a `/`-separated path of groups.
pub fn group_at(group: &Group, path: &str) -> Result<Group> {
    let mut g = group.clone();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        g = child_group(&g, part)
            .ok_or_else(|| Error::new(format!("HDF5 group `{path}` is missing (at `{part}`)")))?;
    }
    Ok(g)
}

/// Names of the sub-groups and datasets of a group.
pub fn members(group: &Group) -> Result<(Vec<String>, Vec<String>)> {
    guard(|| group.member_names())
        .map_err(|e| Error::new(format!("HDF5 group `{}`: {e}", group.name())))
}

/// A string attribute, `None` when absent.
pub fn attr_string(group: &Group, name: &str) -> Result<Option<String>> {
    let Ok(attr) = guard(|| group.attribute(name)) else {
        return Ok(None);
    };
    guard(|| attr.read_string())
        .map(Some)
        .map_err(|e| Error::new(format!("attribute `{name}` is not a string: {e}")))
}

/// A string-array attribute as Keras writes it: an empty array is stored as float64,
/// and an array too large for one object header is split into `name0`, `name1`, ...
pub fn attr_strings(group: &Group, name: &str) -> Result<Option<Vec<String>>> {
    let attrs = guard(|| group.attributes())
        .map_err(|e| Error::new(format!("attributes of `{}`: {e}", group.name())))?;
    let read = |attr: &hdf5_reader::Attribute| -> Result<Vec<String>> {
        if attr.shape.iter().product::<u64>() == 0 {
            return Ok(Vec::new());
        }
        guard(|| attr.read_strings()).map_err(|e| {
            Error::new(format!(
                "attribute `{}` is not a string array: {e}",
                attr.name
            ))
        })
    };
    if let Some(attr) = attrs.iter().find(|a| a.name == name) {
        return read(attr).map(Some);
    }
    let mut chunks = Vec::new();
    for i in 0.. {
        let chunk_name = format!("{name}{i}");
        match attrs.iter().find(|a| a.name == chunk_name) {
            Some(attr) => chunks.extend(read(attr)?),
            None if i == 0 => return Ok(None),
            None => break,
        }
    }
    Ok(Some(chunks))
}

/// Tracks the decoded bytes a file has cost so far, against its budget.
pub struct Budget {
    left: usize,
}

impl Budget {
    /// A budget for a file of `file_len` bytes.
    pub fn for_file(file_len: usize) -> Self {
        Budget {
            left: read_budget(file_len),
        }
    }
}

/// A float32 weight as stored: its HDF5 name, shape and values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The dataset's name, e.g. `dense/kernel:0` or `0`.
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<f32>,
}

/// Reads a dataset as float32, refusing it before allocation if it would pass `budget`.
pub fn read_f32(group: &Group, name: &str, budget: &mut Budget) -> Result<Tensor> {
    // Messages name the dataset's full path, which holds the layer's name or key.
    let path = format!("{}/{name}", group.name().trim_end_matches('/'));
    let ds =
        guard(|| group.dataset(name)).map_err(|e| Error::new(format!("weight `{path}`: {e}")))?;
    let shape: Vec<usize> = ds.shape().iter().map(|&d| d as usize).collect();
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n.checked_mul(4).is_some_and(|b| b <= budget.left))
        .ok_or_else(|| {
            Error::new(format!(
                "weight `{path}` claims shape {shape:?}, more data than the file holds"
            ))
        })?;
    budget.left -= count * 4;
    // Weights are float32; counters such as Normalization's `count` are integers.
    let data: Vec<f32> = match ds.dtype() {
        hdf5_reader::Datatype::FixedPoint { .. } => {
            guard(|| ds.read_array::<i64>()).map(|a| a.into_iter().map(|v| v as f32).collect())
        }
        hdf5_reader::Datatype::FloatingPoint { size: 8, .. } => {
            guard(|| ds.read_array::<f64>()).map(|a| a.into_iter().map(|v| v as f32).collect())
        }
        _ => guard(|| ds.read_array::<f32>()).map(|a| a.into_iter().collect()),
    }
    .map_err(|e| {
        Error::new(format!(
            "weight `{path}` is not readable as a number array: {e}"
        ))
    })?;
    if data.len() != count {
        bail!(
            "weight `{path}` holds {} values, its shape {shape:?} says {count}",
            data.len()
        );
    }
    Ok(Tensor {
        name: name.to_string(),
        shape,
        data,
    })
}
