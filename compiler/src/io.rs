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

/// One Keras layer's output for every sample (the `--layers` extension of kerac-io/1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerTensor {
    /// The layer's name; inside nested models, `outer/inner/layer`.
    pub name: String,
    /// The layer's class, for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Which call of a shared layer (0, the first, when absent).
    #[serde(default)]
    pub call: usize,
    /// Which of the layer's outputs (0 when absent).
    #[serde(default)]
    pub output: usize,
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
    /// Every layer's output, in graph order, when recorded with `--layers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerTensor>,
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
        let tensors = file.inputs.iter().chain(&file.outputs);
        let tensors = tensors.map(|t| (&t.name, &t.shape, t.data.len())).chain(
            file.layers
                .iter()
                .map(|t| (&t.name, &t.shape, t.data.len())),
        );
        for (name, shape, len) in tensors {
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n != Some(len) {
                return Err(
                    Error::new(format!("`{name}` has shape {shape:?} but {len} values"))
                        .in_file(path),
                );
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

/// Recorded inputs cut into the model's batches (`graph.batch` samples each), after
/// checking their count and shapes; also returns the number of samples.
pub fn batches(graph: &Graph, inputs: &[IoTensor]) -> Result<(usize, Vec<Vec<ArrayD<f32>>>)> {
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
    (0..samples)
        .step_by(graph.batch.max(1))
        .map(|start| {
            inputs
                .iter()
                .zip(&graph.inputs)
                .map(|(t, port)| {
                    let shape = graph.shape(port.tensor);
                    let per: usize = shape[1..].iter().product();
                    let data = t.data[start * per..(start + graph.batch) * per].to_vec();
                    ArrayD::from_shape_vec(IxDyn(shape), data)
                        .map_err(|e| Error::new(e.to_string()))
                })
                .collect()
        })
        .collect::<Result<_>>()
        .map(|b| (samples, b))
}

/// Runs every sample of `inputs` through `run`, `graph.batch` samples at a time, and
/// returns the outputs with the samples' axis first.
pub fn run_samples(
    graph: &Graph,
    inputs: &[IoTensor],
    mut run: impl FnMut(&[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>>,
) -> Result<Vec<IoTensor>> {
    let (samples, batches) = batches(graph, inputs)?;
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
    for batch in &batches {
        for (out, y) in outputs.iter_mut().zip(run(batch)?) {
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
            Ok(compare_values(&k.name, &a.data, &k.data, atol, rtol))
        })
        .collect()
}

/// Compares `actual` values with `reference` ones (of the same length) under
/// `|y - k| <= atol + rtol * |k|`; a NaN matches only a NaN.
pub fn compare_values(
    name: &str,
    actual: &[f32],
    reference: &[f32],
    atol: f64,
    rtol: f64,
) -> Comparison {
    let mut c = Comparison {
        name: name.to_string(),
        max_abs: 0.0,
        max_rel: 0.0,
        mismatches: 0,
        total: actual.len(),
    };
    for (&y, &r) in actual.iter().zip(reference) {
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
    c
}
