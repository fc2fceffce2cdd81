//! Recorded inputs and outputs in the kerac-io/1 JSON format (see IO_FORMAT.md), running
//! every recorded sample through a model, and comparing with Keras's values.

use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Graph;
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The format tag this module reads and writes.
pub const FORMAT: &str = "kerac-io/1";
/// Default absolute tolerance.
pub const ATOL: f64 = 1e-5;
/// Default relative tolerance.
pub const RTOL: f64 = 1e-4;

/// One named tensor: samples first, values flat in row-major order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IoTensor {
    /// Keras's name for the input or output.
    pub name: String,
    /// Number of samples, then one sample's shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// A kerac-io/1 file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IoFile {
    /// Always `kerac-io/1`.
    pub format: String,
    /// The model's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The Keras version that wrote the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keras_version: Option<String>,
    /// Inputs in the model's order.
    pub inputs: Vec<IoTensor>,
    /// Outputs in the model's order (empty in a file given to `kerac run`).
    #[serde(default)]
    pub outputs: Vec<IoTensor>,
    /// Absolute tolerance, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atol: Option<f64>,
    /// Relative tolerance, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtol: Option<f64>,
}

impl IoFile {
    /// Reads and checks a kerac-io/1 file.
    pub fn read(path: &Path) -> Result<IoFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::new(format!("cannot read: {e}")).in_file(path))?;
        let file: IoFile = serde_json::from_str(&text)
            .map_err(|e| Error::new(format!("not a kerac-io/1 file: {e}")).in_file(path))?;
        if file.format != FORMAT {
            return Err(
                Error::new(format!("format is `{}`, expected `{FORMAT}`", file.format))
                    .in_file(path),
            );
        }
        for t in file.inputs.iter().chain(&file.outputs) {
            let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n != Some(t.data.len()) {
                return Err(Error::new(format!(
                    "`{}` has shape {:?} but {} values",
                    t.name,
                    t.shape,
                    t.data.len()
                ))
                .in_file(path));
            }
        }
        Ok(file)
    }
}

/// Per-sample input shapes from recorded inputs, by name: fills dimensions a model file
/// leaves open when the user gives none.
pub fn input_shapes(inputs: &[IoTensor]) -> std::collections::HashMap<String, Vec<usize>> {
    inputs
        .iter()
        .filter(|t| !t.shape.is_empty())
        .map(|t| (t.name.clone(), t.shape[1..].to_vec()))
        .collect()
}

/// Runs every sample of `inputs` through `run`, `graph.batch` samples at a time, and
/// returns the outputs with the samples' axis first.
pub fn run_samples(
    graph: &Graph,
    inputs: &[IoTensor],
    mut run: impl FnMut(&[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>>,
) -> Result<Vec<IoTensor>> {
    if inputs.len() != graph.inputs.len() {
        bail!(
            "the model has {} inputs, the file gives {}",
            graph.inputs.len(),
            inputs.len()
        );
    }
    let samples = inputs
        .first()
        .and_then(|t| t.shape.first())
        .copied()
        .unwrap_or(0);
    for (t, port) in inputs.iter().zip(&graph.inputs) {
        let expected = &graph.shape(port.tensor)[1..];
        if t.shape.first() != Some(&samples) || &t.shape[1..] != expected {
            bail!(
                "input `{}` has shape {:?}; the model takes (samples, {})",
                t.name,
                t.shape,
                expected
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if samples % graph.batch != 0 {
        bail!(
            "{samples} samples do not divide into batches of {}",
            graph.batch
        );
    }
    let mut outputs: Vec<IoTensor> = graph
        .outputs
        .iter()
        .map(|p| {
            let mut shape = graph.shape(p.tensor).clone();
            shape[0] = samples;
            IoTensor {
                name: p.name.clone(),
                shape,
                data: Vec::new(),
            }
        })
        .collect();
    for start in (0..samples).step_by(graph.batch.max(1)) {
        let batch: Vec<ArrayD<f32>> = inputs
            .iter()
            .zip(&graph.inputs)
            .map(|(t, port)| {
                let shape = graph.shape(port.tensor);
                let per: usize = shape[1..].iter().product();
                let data = t.data[start * per..(start + graph.batch) * per].to_vec();
                ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| Error::new(e.to_string()))
            })
            .collect::<Result<_>>()?;
        for (out, y) in outputs.iter_mut().zip(run(&batch)?) {
            out.data.extend(y.iter());
        }
    }
    Ok(outputs)
}

/// How one output compares with the reference.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The output's name.
    pub name: String,
    /// Largest `|y - k|`.
    pub max_abs: f64,
    /// Largest `|y - k| / |k|` over values with `k != 0`.
    pub max_rel: f64,
    /// Values outside `atol + rtol * |k|`.
    pub mismatches: usize,
    /// Values compared.
    pub total: usize,
}

/// Compares outputs with the reference values under the file's tolerance.
pub fn compare(actual: &[IoTensor], reference: &IoFile) -> Result<Vec<Comparison>> {
    if actual.len() != reference.outputs.len() {
        bail!(
            "the model has {} outputs, the reference {}",
            actual.len(),
            reference.outputs.len()
        );
    }
    let (atol, rtol) = (
        reference.atol.unwrap_or(ATOL),
        reference.rtol.unwrap_or(RTOL),
    );
    actual
        .iter()
        .zip(&reference.outputs)
        .map(|(a, k)| {
            if a.shape != k.shape {
                bail!(
                    "output `{}` has shape {:?}, the reference {:?}",
                    k.name,
                    a.shape,
                    k.shape
                );
            }
            let mut c = Comparison {
                name: k.name.clone(),
                max_abs: 0.0,
                max_rel: 0.0,
                mismatches: 0,
                total: a.data.len(),
            };
            for (&y, &r) in a.data.iter().zip(&k.data) {
                let (y, r) = (y as f64, r as f64);
                let err = (y - r).abs();
                let err = if err.is_nan() && !(y.is_nan() && r.is_nan()) {
                    f64::INFINITY
                } else if err.is_nan() {
                    0.0
                } else {
                    err
                };
                c.max_abs = c.max_abs.max(err);
                if r != 0.0 {
                    c.max_rel = c.max_rel.max(err / r.abs());
                }
                if err > atol + rtol * r.abs() {
                    c.mismatches += 1;
                }
            }
            Ok(c)
        })
        .collect()
}
