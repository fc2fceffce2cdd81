//! Layer-by-layer comparison: when a model disagrees with Keras, find the first layer
//! that does, either against layer outputs Keras recorded (`kerac_record --layers`) or
//! between a compiled backend and the interpreter.
//!
//! The interpreter exposes every layer's output. The plan and the JIT expose the
//! outputs the plan keeps ([`crate::plan::Tap`]): a layer fused into the next one
//! (BatchNormalization into its convolution, an activation into its producer) is
//! compared at the output of the last layer of the fusion.

use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::interp;
use crate::io::{self, Comparison, IoFile, IoTensor};
use crate::plan::{self, Plan};
use kerac::{Dispatch, Level};
use std::collections::HashMap;
use std::fmt;

/// Where layer outputs come from.
pub enum Source<'a> {
    /// The reference interpreter: every layer.
    Interp,
    /// The plan on the runtime's kernels (what `model!` runs), with this CPU's widest
    /// ISA.
    Plan(&'a Plan),
    /// The Cranelift code compiled from `plan`, one step function at a time.
    #[cfg(feature = "clif")]
    Jit(&'a Plan, &'a mut crate::emit::clif::Jit),
}

/// One layer output for every sample, samples first.
#[derive(Debug, Clone)]
pub struct LayerValue {
    /// The layer's name (`outer/inner/layer` in nested models).
    pub layer: String,
    /// Which call of a shared layer.
    pub call: usize,
    /// Which of its outputs.
    pub output: usize,
    /// Samples, then one sample's shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

type Key = (String, usize, usize);

/// Runs every recorded sample through `source` and returns each layer output it
/// exposes, in graph order.
pub fn layer_values(
    graph: &Graph,
    source: Source<'_>,
    inputs: &[IoTensor],
) -> Result<Vec<LayerValue>> {
    let (samples, batches) = io::batches(graph, inputs)?;
    let mut values: Vec<LayerValue> = Vec::new();
    match source {
        Source::Interp => {
            for node in &graph.nodes {
                for (o, &t) in node.outputs.iter().enumerate() {
                    values.push(empty(&node.name, node.call, o, graph.shape(t), samples));
                }
            }
            // Node `i`'s outputs start at `first[i]` in `values`.
            let first: Vec<usize> = graph
                .nodes
                .iter()
                .scan(0, |at, n| {
                    let here = *at;
                    *at += n.outputs.len();
                    Some(here)
                })
                .collect();
            for batch in &batches {
                interp::run_observed(graph, batch, |i, outputs| {
                    for (o, y) in outputs.iter().enumerate() {
                        if let Some(v) = values.get_mut(first[i] + o) {
                            v.data.extend(y.iter());
                        }
                    }
                })?;
            }
        }
        Source::Plan(plan) => {
            let slot = tap_slots(plan, samples, &mut values);
            let isa = Dispatch::detect(Level::Avx512);
            for batch in &batches {
                plan::exec::run_observed(plan, isa, batch, |k, arena| {
                    collect(plan, k, arena, &slot, &mut values)
                })?;
            }
        }
        #[cfg(feature = "clif")]
        Source::Jit(plan, jit) => {
            let slot = tap_slots(plan, samples, &mut values);
            for batch in &batches {
                jit.run_observed(plan, batch, |k, arena| {
                    collect(plan, k, arena, &slot, &mut values)
                })?;
            }
        }
    }
    Ok(values)
}

fn empty(layer: &str, call: usize, output: usize, shape: &[usize], samples: usize) -> LayerValue {
    let mut shape = shape.to_vec();
    if let Some(b) = shape.first_mut() {
        *b = samples;
    }
    LayerValue {
        layer: layer.to_string(),
        call,
        output,
        shape,
        data: Vec::new(),
    }
}

/// One [`LayerValue`] per readable tap of `plan`; returns each tap's slot in `values`.
fn tap_slots(plan: &Plan, samples: usize, values: &mut Vec<LayerValue>) -> Vec<Option<usize>> {
    plan.taps
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let floats: usize = t.shape.iter().product();
            let attached = plan.steps.iter().any(|s| s.taps.contains(&id));
            // A tap whose buffer is not laid out as Keras's tensor is not compared.
            (floats == plan.buffers[t.buffer].len && attached).then(|| {
                values.push(empty(&t.layer, t.call, t.output, &t.shape, samples));
                values.len() - 1
            })
        })
        .collect()
}

fn collect(
    plan: &Plan,
    k: usize,
    arena: &[f32],
    slot: &[Option<usize>],
    values: &mut [LayerValue],
) {
    for &id in &plan.steps[k].taps {
        let (Some(Some(s)), Some(tap)) = (slot.get(id), plan.taps.get(id)) else {
            continue;
        };
        let b = &plan.buffers[tap.buffer];
        if let (Some(v), Some(data)) = (values.get_mut(*s), arena.get(b.offset..b.offset + b.len)) {
            v.data.extend_from_slice(data);
        }
    }
}

/// One compared layer output.
#[derive(Debug, Clone)]
pub struct Row {
    /// The layer's name.
    pub layer: String,
    /// Its Keras class (or operation).
    pub class: String,
    /// Which call of a shared layer.
    pub call: usize,
    /// Which of its outputs.
    pub output: usize,
    /// The options that decide what it computes.
    pub settings: String,
    /// Errors against the reference.
    pub comparison: Comparison,
    /// The largest magnitude in the reference: float32 rounding grows with the terms
    /// summed, so `max_abs / scale` near 1e-6 is rounding, near 1e-2 a real difference.
    pub scale: f64,
}

/// The outcome of a layer-by-layer comparison.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was compared with what, for the heading.
    pub title: String,
    /// Compared layer outputs in graph order.
    pub rows: Vec<Row>,
    /// Layers of the model with no value of their own in the backend (fused into the
    /// next) or none in the reference.
    pub not_compared: Vec<String>,
    /// Absolute and relative tolerance.
    pub tolerance: (f64, f64),
}

impl Report {
    /// The first layer output, in graph order, with values beyond tolerance.
    pub fn first_divergence(&self) -> Option<&Row> {
        self.rows.iter().find(|r| r.comparison.mismatches > 0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.title)?;
        writeln!(
            f,
            "{:<32} {:<22} {:>11} {:>11} {:>13} {:>16}",
            "layer", "class", "max abs err", "max rel err", "abs err/max|k|", "outside tol"
        )?;
        let first = self
            .first_divergence()
            .map(|r| (&r.layer, r.call, r.output));
        for r in &self.rows {
            let mut name = r.layer.clone();
            if r.call > 0 {
                name.push_str(&format!(" (call {})", r.call));
            }
            if r.output > 0 {
                name.push_str(&format!(" [{}]", r.output));
            }
            let c = &r.comparison;
            let mark = if first == Some((&r.layer, r.call, r.output)) {
                "  <- first beyond tolerance"
            } else {
                ""
            };
            let relative = if r.scale > 0.0 {
                c.max_abs / r.scale
            } else {
                c.max_abs
            };
            writeln!(
                f,
                "{name:<32} {:<22} {:>11.3e} {:>11.3e} {:>14.3e} {:>16}{mark}",
                r.class,
                c.max_abs,
                c.max_rel,
                relative,
                format!("{}/{}", c.mismatches, c.total)
            )?;
        }
        if !self.not_compared.is_empty() {
            const SHOWN: usize = 8;
            let more = self.not_compared.len().saturating_sub(SHOWN);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            writeln!(
                f,
                "not compared on their own ({}; fused into the next step, or absent from the reference): {}{tail}",
                self.not_compared.len(),
                self.not_compared[..self.not_compared.len().min(SHOWN)].join(", ")
            )?;
        }
        let (atol, rtol) = self.tolerance;
        match self.first_divergence() {
            None => writeln!(
                f,
                "every compared layer is within tolerance (atol {atol:e}, rtol {rtol:e})"
            ),
            Some(r) => {
                writeln!(
                    f,
                    "first layer beyond tolerance (atol {atol:e}, rtol {rtol:e}): `{}` ({})",
                    r.layer, r.class
                )?;
                if r.settings.is_empty() {
                    Ok(())
                } else {
                    writeln!(f, "  its settings: {}", r.settings)
                }
            }
        }
    }
}

/// Compares the layer outputs of `source` with those recorded in `reference`, which
/// must hold layer outputs (`kerac_record --layers`), under `tolerance` (absolute,
/// relative): the file's own, or the defaults, where `None`.
pub fn against_reference(
    graph: &Graph,
    source: Source<'_>,
    reference: &IoFile,
    tolerance: Option<(f64, f64)>,
    backend: &str,
) -> Result<Report> {
    if reference.layers.is_empty() {
        bail!("the reference holds no layer outputs; record it with `kerac_record --layers`");
    }
    let actual = layer_values(graph, source, &reference.inputs)?;
    let expected: HashMap<Key, (&[usize], &[f32])> = reference
        .layers
        .iter()
        .map(|t| {
            (
                (t.name.clone(), t.call, t.output),
                (t.shape.as_slice(), t.data.as_slice()),
            )
        })
        .collect();
    let tolerance = tolerance.unwrap_or((
        reference.atol.unwrap_or(io::ATOL),
        reference.rtol.unwrap_or(io::RTOL),
    ));
    report(
        graph,
        format!("{backend} against the layer outputs Keras recorded"),
        &actual,
        &expected,
        tolerance,
    )
}

/// Compares the layer outputs of `source` with the interpreter's on `inputs`.
pub fn against_interp(
    graph: &Graph,
    source: Source<'_>,
    inputs: &[IoTensor],
    tolerance: (f64, f64),
    backend: &str,
) -> Result<Report> {
    let reference = layer_values(graph, Source::Interp, inputs)?;
    let actual = layer_values(graph, source, inputs)?;
    let expected: HashMap<Key, (&[usize], &[f32])> = reference
        .iter()
        .map(|v| {
            (
                (v.layer.clone(), v.call, v.output),
                (v.shape.as_slice(), v.data.as_slice()),
            )
        })
        .collect();
    report(
        graph,
        format!("{backend} against the interpreter, layer by layer"),
        &actual,
        &expected,
        tolerance,
    )
}

fn report(
    graph: &Graph,
    title: String,
    actual: &[LayerValue],
    expected: &HashMap<Key, (&[usize], &[f32])>,
    tolerance: (f64, f64),
) -> Result<Report> {
    let nodes: HashMap<(&str, usize), &crate::graph::Node> = graph
        .nodes
        .iter()
        .map(|n| ((n.name.as_str(), n.call), n))
        .collect();
    let mut rows = Vec::new();
    let mut compared = std::collections::HashSet::new();
    for v in actual {
        let key = (v.layer.clone(), v.call, v.output);
        let Some(&(shape, data)) = expected.get(&key) else {
            continue;
        };
        if shape != v.shape.as_slice() {
            bail!(
                "layer `{}` has shape {:?} here, {:?} in the reference",
                v.layer,
                v.shape,
                shape
            );
        }
        let node = nodes.get(&(v.layer.as_str(), v.call));
        rows.push(Row {
            layer: v.layer.clone(),
            class: node.map_or_else(String::new, |n| short_class(&n.class)),
            call: v.call,
            output: v.output,
            settings: node.map_or_else(String::new, |n| n.settings.clone()),
            comparison: io::compare_values(&v.layer, &v.data, data, tolerance.0, tolerance.1),
            scale: data.iter().fold(0.0f64, |m, &k| m.max((k as f64).abs())),
        });
        compared.insert((v.layer.clone(), v.call));
    }
    let mut not_compared: Vec<String> = Vec::new();
    for n in &graph.nodes {
        if !compared.contains(&(n.name.clone(), n.call)) && !not_compared.contains(&n.name) {
            not_compared.push(n.name.clone());
        }
    }
    if rows.is_empty() {
        return Err(Error::new(
            "no layer of the model has a value in the reference (are the layer names the model's?)",
        ));
    }
    Ok(Report {
        title,
        rows,
        not_compared,
        tolerance,
    })
}

/// A Keras 3 operation's class without its module (`keras.src.ops.numpy.Add` is
/// `Add`); layers and Keras 2 `tf.*` functions as they are.
fn short_class(class: &str) -> String {
    match class.strip_prefix("keras.src.ops.") {
        Some(rest) => rest.rsplit('.').next().unwrap_or(rest).to_string(),
        None => class.to_string(),
    }
}

/// `samples` seeded inputs in `[-1, 1)` for every model input, as recorded tensors:
/// for comparing backends where no recorded inputs exist.
pub fn seeded_inputs(graph: &Graph, samples: usize, seed: u64) -> Result<Vec<IoTensor>> {
    // splitmix64: any seed, zero included, gives a well-mixed stream.
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let samples = samples.div_ceil(graph.batch.max(1)) * graph.batch.max(1);
    graph
        .inputs
        .iter()
        .map(|port| {
            let mut shape = graph.shape(port.tensor).clone();
            if let Some(b) = shape.first_mut() {
                *b = samples;
            }
            let n = crate::layers::elements(&shape)?;
            Ok(IoTensor {
                name: port.name.clone(),
                shape,
                data: (0..n).map(|_| next()).collect(),
            })
        })
        .collect()
}
