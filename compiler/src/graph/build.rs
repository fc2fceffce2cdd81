//! From a parsed model file to a [`Graph`]: resolves calls (shared layers, nested
//! models), fixes shapes, binds weights and lowers each layer through its build function.

use super::{Graph, NamedTensor, Node, Shape, TensorInfo};
use crate::bail;
use crate::error::{Error, Result};
use crate::keras::config::{self, LayerEntry, ModelConfig, TensorRef};
use crate::keras::weights::{snake_case, Scope};
use crate::keras::{Dialect, ModelFile, WeightStore};
use crate::layers::{self, LayerCtx, Lowered};
use crate::ops::{self, OpCtx};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Choices the file leaves to the user.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The batch size every shape is fixed with.
    pub batch: usize,
    /// Per-sample shapes (batch excluded) for inputs whose file shape has open
    /// dimensions, by input name.
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Streaming: every sequence input (`[batch, steps, features]`) takes one step
    /// per call, and recurrent layers keep their state between calls.
    pub stream: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            batch: 1,
            input_shapes: HashMap::new(),
            stream: false,
        }
    }
}

/// Builds the graph of a model file.
pub fn build(file: &ModelFile, options: &BuildOptions) -> Result<Graph> {
    build_inner(file, options).map_err(|e| e.in_file(&file.path))
}

fn build_inner(file: &ModelFile, options: &BuildOptions) -> Result<Graph> {
    if options.batch == 0 {
        return Err(Error::new("the batch size must be at least 1"));
    }
    let model = config::parse_model(&file.config)?;
    let mut unsupported = BTreeMap::new();
    find_unsupported(&model, &mut unsupported);
    if !unsupported.is_empty() {
        let list: Vec<String> = unsupported
            .iter()
            .map(|(class, names)| {
                let what = if class.starts_with("operation") {
                    "node"
                } else {
                    "layer"
                };
                format!(
                    "{class} ({what}{} {})",
                    if names.len() > 1 { "s" } else { "" },
                    names.join(", ")
                )
            })
            .collect();
        bail!(
            "unsupported layers and operations: {}.\nkerac supports the layers {}; and the operations {}",
            list.join("; "),
            layers::supported().join(", "),
            ops::supported().join(", ")
        );
    }
    let scope = match &file.weights {
        Some(WeightStore::Tree(root)) => Scope::Tree(root),
        Some(WeightStore::Legacy(map)) => Scope::Legacy(map),
        None => Scope::Empty,
    };
    let mut b = Builder {
        dialect: file.dialect,
        options,
        tensors: Vec::new(),
        nodes: Vec::new(),
        graph_inputs: Vec::new(),
        masks: HashMap::new(),
    };
    let outputs = b.instantiate(&model, scope, "", None)?;
    let output_ports = model
        .outputs
        .iter()
        .zip(outputs)
        .map(|(r, tensor)| NamedTensor {
            name: r.layer.clone(),
            tensor,
        })
        .collect();
    Ok(Graph {
        name: model.name.clone(),
        source: file.path.clone(),
        keras_version: file.keras_version.clone(),
        batch: options.batch,
        stream: options.stream,
        tensors: b.tensors,
        nodes: b.nodes,
        inputs: b.graph_inputs,
        outputs: output_ports,
    })
}

/// The tensor a reference names, once its layer call has been built.
fn resolve(produced: &HashMap<(&str, usize), Vec<usize>>, r: &TensorRef) -> Option<usize> {
    produced
        .get(&(r.layer.as_str(), r.node))
        .and_then(|outs| outs.get(r.index))
        .copied()
}

fn find_unsupported(model: &ModelConfig, out: &mut BTreeMap<String, Vec<String>>) {
    for layer in &model.layers {
        match (&layer.model, &layer.operation) {
            (_, Some(op)) if ops::lookup(op).is_some() => {}
            (_, Some(op)) => out
                .entry(format!("operation `{op}`"))
                .or_default()
                .push(layer.name.clone()),
            (Some(inner), None) => find_unsupported(inner, out),
            (None, None)
                if layer.class == "InputLayer" || layers::lookup(&layer.class).is_some() => {}
            (None, None) => out
                .entry(layer.class.clone())
                .or_default()
                .push(layer.name.clone()),
        }
    }
}

struct Builder<'o> {
    dialect: Dialect,
    options: &'o BuildOptions,
    tensors: Vec<TensorInfo>,
    nodes: Vec<Node>,
    graph_inputs: Vec<NamedTensor>,
    /// The mask tensor (`[batch, steps]`) that travels with a tensor, as Keras's
    /// `_keras_mask` does.
    masks: HashMap<usize, usize>,
}

/// Layers that apply a mask on their input.
const MASK_CONSUMERS: [&str; 5] = ["SimpleRNN", "LSTM", "GRU", "RNN", "Bidirectional"];
/// Layers that pass their input's mask on unchanged.
const MASK_PASSING: [&str; 16] = [
    "Dropout",
    "SpatialDropout1D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
    "Activation",
    "Dense",
    "TimeDistributed",
    "LayerNormalization",
    "BatchNormalization",
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "ELU",
];

impl Builder<'_> {
    /// Adds the layers of `model` to the graph. `bound` holds the tensors a nested
    /// model is called with; `None` makes the model's inputs graph inputs.
    fn instantiate(
        &mut self,
        model: &ModelConfig,
        scope: Scope<'_>,
        prefix: &str,
        bound: Option<&[usize]>,
    ) -> Result<Vec<usize>> {
        let mut produced: HashMap<(&str, usize), Vec<usize>> = HashMap::new();
        // Keras 3 keys layers by class name with a per-class counter, in list order.
        let mut counters: HashMap<String, usize> = HashMap::new();
        // Operations are not layers and take no key.
        let keys: Vec<String> = model
            .layers
            .iter()
            .map(|l| {
                if l.operation.is_some() {
                    return String::new();
                }
                let base = snake_case(&l.class);
                let n = counters.entry(base.clone()).or_insert(0);
                let key = if *n == 0 {
                    base.clone()
                } else {
                    format!("{base}_{n}")
                };
                *n += 1;
                key
            })
            .collect();
        let by_name: HashMap<&str, usize> = model
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.as_str(), i))
            .collect();
        let lookup_input = |r: &TensorRef| by_name.get(r.layer.as_str()).copied();

        for (position, input) in model.inputs.iter().enumerate() {
            let Some(i) = lookup_input(input) else {
                bail!(
                    "model `{}` names input `{}`, which is not one of its layers",
                    model.name,
                    input.layer
                );
            };
            let layer = &model.layers[i];
            let tensor = match bound {
                Some(tensors) => *tensors.get(position).ok_or_else(|| {
                    Error::new(format!(
                        "model `{}` is called with {} tensors, it has {} inputs",
                        model.name,
                        tensors.len(),
                        model.inputs.len()
                    ))
                })?,
                None => self.new_input(layer)?,
            };
            produced.insert((layer.name.as_str(), 0), vec![tensor]);
        }

        // Calls of shared layers can interleave with other layers, so resolve calls as
        // their inputs become available rather than strictly in list order.
        let mut pending: Vec<(usize, usize)> = model
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.class != "InputLayer")
            .flat_map(|(i, l)| (0..l.calls.len()).map(move |c| (i, c)))
            .collect();
        while !pending.is_empty() {
            let before = pending.len();
            let mut waiting = Vec::new();
            for (i, call) in pending {
                let layer = &model.layers[i];
                let args = &layer.calls[call];
                let ready: Option<Vec<usize>> =
                    args.iter().map(|r| resolve(&produced, r)).collect();
                let Some(inputs) = ready else {
                    waiting.push((i, call));
                    continue;
                };
                let outputs = self
                    .call_layer(layer, call, &inputs, scope, prefix, &keys[i])
                    .map_err(|e| e.in_layer(&format!("{prefix}{}", layer.name), layer.kind()))?;
                // tf-keras skips a nested model's own first node when it numbers the
                // calls written in a Functional config.
                let skipped = match &layer.model {
                    Some(inner)
                        if self.dialect == Dialect::Keras2
                            && inner.declares_input
                            && !model.sequential =>
                    {
                        1
                    }
                    _ => 0,
                };
                produced.insert((layer.name.as_str(), call + skipped), outputs);
            }
            if waiting.len() == before {
                let (i, call) = waiting[0];
                let layer = &model.layers[i];
                let missing: Vec<String> = layer.calls[call]
                    .iter()
                    .filter(|r| !produced.contains_key(&(r.layer.as_str(), r.node)))
                    .map(|r| format!("{}[{}][{}]", r.layer, r.node, r.index))
                    .collect();
                return Err(Error::new(format!(
                    "its input {} is never produced (unknown layer, missing call, or a cycle)",
                    missing.join(", ")
                ))
                .in_layer(&format!("{prefix}{}", layer.name), layer.kind()));
            }
            pending = waiting;
        }

        model
            .outputs
            .iter()
            .map(|r| {
                resolve(&produced, r).ok_or_else(|| {
                    Error::new(format!(
                        "model `{}` names output {}[{}][{}], which is never produced",
                        model.name, r.layer, r.node, r.index
                    ))
                })
            })
            .collect()
    }

    fn new_input(&mut self, layer: &LayerEntry) -> Result<usize> {
        let err = |msg: String| Error::new(msg).in_layer(&layer.name, &layer.class);
        if layer.class != "InputLayer" {
            return Err(err("a model input must be an InputLayer".into()));
        }
        let c = &layer.config;
        let declared: Vec<Option<usize>> =
            match c.get("batch_shape").or_else(|| c.get("batch_input_shape")) {
                Some(Value::Array(dims)) => dims
                    .iter()
                    .skip(1)
                    .map(|d| d.as_u64().map(|n| n as usize))
                    .collect(),
                _ => match c.get("shape").or_else(|| c.get("input_shape")) {
                    Some(Value::Array(dims)) => dims
                        .iter()
                        .map(|d| d.as_u64().map(|n| n as usize))
                        .collect(),
                    _ => return Err(err("the input layer records no shape".into())),
                },
            };
        if let Some(dtype) = c.get("dtype").and_then(Value::as_str) {
            if !matches!(dtype, "float32" | "float16" | "float64" | "int32" | "int64") {
                return Err(err(format!(
                    "input dtype `{dtype}` is not supported; expected a numeric dtype"
                )));
            }
        }
        let per_sample: Vec<usize> = match self.options.input_shapes.get(&layer.name) {
            // A shape given for a fully known input only has to agree with it.
            Some(given) if declared.iter().all(Option::is_some) && given.len() == declared.len() && given.iter().zip(&declared).all(|(g, d)| *d == Some(*g)) => given.clone(),
            Some(given) => {
                let fits = given.len() == declared.len() && given.iter().zip(&declared).all(|(g, d)| d.is_none_or(|d| d == *g));
                if !fits {
                    return Err(err(format!(
                        "the given shape {given:?} does not fit the model's input shape {}",
                        show_dims(&declared)
                    )));
                }
                given.clone()
            }
            None => declared.iter().copied().collect::<Option<Vec<_>>>().ok_or_else(|| {
                err(format!(
                    "input shape {} leaves dimensions open; give them, e.g. --input-shape {}={}",
                    show_dims(&declared),
                    layer.name,
                    declared.iter().map(|d| d.map_or("N".to_string(), |n| n.to_string())).collect::<Vec<_>>().join(",")
                ))
            })?,
        };
        let mut per_sample = per_sample;
        if self.options.stream && per_sample.len() == 2 {
            per_sample[0] = 1;
        }
        if per_sample.contains(&0) {
            return Err(err(format!(
                "input shape {per_sample:?} has a zero dimension"
            )));
        }
        let mut shape = vec![self.options.batch];
        shape.extend(&per_sample);
        layers::elements(&shape).map_err(|e| err(e.message))?;
        let id = self.push_tensor(shape, None);
        self.graph_inputs.push(NamedTensor {
            name: layer.name.clone(),
            tensor: id,
        });
        Ok(id)
    }

    fn push_tensor(&mut self, shape: Shape, producer: Option<usize>) -> usize {
        self.tensors.push(TensorInfo { shape, producer });
        self.tensors.len() - 1
    }

    fn call_layer(
        &mut self,
        layer: &LayerEntry,
        call: usize,
        inputs: &[usize],
        scope: Scope<'_>,
        prefix: &str,
        key: &str,
    ) -> Result<Vec<usize>> {
        let found = scope.find(&layer.name, key);
        if let Some(inner) = &layer.model {
            let inner_prefix = format!("{prefix}{}/", layer.name);
            return self.instantiate(inner, scope.nested(&found), &inner_prefix, Some(inputs));
        }
        check_dtype(&layer.config)?;
        let options = layer.call_options.get(call).cloned().unwrap_or(Value::Null);
        if let Some(op) = &layer.operation {
            let build = ops::lookup(op).ok_or_else(|| Error::new("unsupported operation"))?;
            if inputs.first().is_some_and(|t| self.masks.contains_key(t)) {
                return Err(Error::new(
                    "a mask (from Embedding's mask_zero) reaches this operation, and kerac cannot apply masks there",
                ));
            }
            let shapes: Vec<Shape> = inputs
                .iter()
                .map(|&t| self.tensors[t].shape.clone())
                .collect();
            let lowered = build(&OpCtx::new(&layer.config, self.dialect, &shapes, &options))?;
            let name = format!("{prefix}{}", layer.name);
            let outputs = self.add_node(name, op.clone(), call, inputs, lowered, 0)?;
            self.set_settings(settings(&options));
            return Ok(outputs);
        }
        let build = layers::lookup(&layer.class).ok_or_else(|| Error::new("unsupported layer"))?;
        // A mask travelling with the first input goes to the layers that apply it, as
        // one more input; layers that would need it otherwise are refused. Keras 3
        // writes the mask into the call (its last input here); Keras 2 leaves it
        // implicit, and it is followed from Embedding.
        let explicit = options
            .get("__mask")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut inputs = inputs.to_vec();
        let mask = if explicit {
            inputs.pop()
        } else {
            inputs.first().and_then(|t| self.masks.get(t)).copied()
        };
        let class = layer.class.as_str();
        let consumes = MASK_CONSUMERS.contains(&class);
        let passes = MASK_PASSING.contains(&class);
        if mask.is_some() && !consumes && !passes {
            bail!(
                "a mask (from Embedding's mask_zero) reaches this layer, and kerac cannot apply masks in {class}"
            );
        }
        if let (Some(m), true) = (mask, consumes) {
            inputs.push(m);
        }
        let inputs = inputs.as_slice();
        let shapes: Vec<Shape> = inputs
            .iter()
            .map(|&t| self.tensors[t].shape.clone())
            .collect();
        let mut ctx = LayerCtx::new(&layer.config, self.dialect, &shapes, &found.vars);
        ctx.call = options;
        ctx.masked = mask.is_some() && consumes;
        let lowered = build(&mut ctx)?;
        let params = ctx.finish()?;
        let produced_mask = lowered.mask;
        let name = format!("{prefix}{}", layer.name);
        let outputs = self.add_node(name, layer.class.clone(), call, inputs, lowered, params)?;
        self.set_settings(settings(&layer.config));
        match (produced_mask, mask) {
            (Some(i), _) => {
                if let (Some(&out), Some(&m)) = (outputs.first(), outputs.get(i)) {
                    self.masks.insert(out, m);
                }
            }
            (None, Some(m)) => {
                // The mask follows a sequence that keeps its steps.
                let steps = |t: usize| self.tensors[t].shape.get(1).copied();
                if let Some(&out) = outputs.first() {
                    let keeps =
                        self.tensors[out].shape.len() >= 3 && steps(out) == steps(inputs[0]);
                    if passes || (consumes && keeps) {
                        self.masks.insert(out, m);
                    }
                }
            }
            (None, None) => {}
        }
        Ok(outputs)
    }

    /// Sets the [`Node::settings`] of the node just added.
    fn set_settings(&mut self, settings: String) {
        if let Some(node) = self.nodes.last_mut() {
            node.settings = settings;
        }
    }

    /// Adds a built layer or operation call as a node; returns its output tensors.
    fn add_node(
        &mut self,
        name: String,
        class: String,
        call: usize,
        inputs: &[usize],
        lowered: Lowered,
        params: usize,
    ) -> Result<Vec<usize>> {
        for shape in &lowered.outputs {
            layers::elements(shape)?;
        }
        let node = self.nodes.len();
        let outputs: Vec<usize> = lowered
            .outputs
            .into_iter()
            .map(|s| self.push_tensor(s, Some(node)))
            .collect();
        self.nodes.push(Node {
            name,
            class,
            call,
            op: lowered.op,
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
            params: if call == 0 { params } else { 0 },
            settings: String::new(),
        });
        Ok(outputs)
    }
}

/// The options of a layer config or operation call that decide what it computes, as
/// `key=value` pairs: what a user checks first when that layer disagrees with Keras.
/// Names, dtypes and training-only options (initializers, regularizers, constraints)
/// are left out, and tensors are shown as `<tensor>`.
fn settings(config: &Value) -> String {
    const SKIP: &[&str] = &[
        "name",
        "trainable",
        "dtype",
        "build_config",
        "seed",
        "autocast",
        "activity_regularizer",
    ];
    let skipped = |k: &str| {
        SKIP.contains(&k)
            || k.ends_with("_initializer")
            || k.ends_with("_regularizer")
            || k.ends_with("_constraint")
    };
    let mut parts = Vec::new();
    let mut add = |key: &str, v: &Value| {
        let text = if v.get("__input__").is_some() {
            "<tensor>".to_string()
        } else {
            crate::keras::config::short(v)
        };
        parts.push(format!("{key}={text}"));
    };
    if let Some(args) = config.get("__args").and_then(Value::as_array) {
        for (i, v) in args.iter().enumerate() {
            add(&format!("arg{i}"), v);
        }
        if let Some(kwargs) = config.get("__kwargs").and_then(Value::as_object) {
            for (k, v) in kwargs.iter().filter(|(k, _)| !skipped(k)) {
                add(k, v);
            }
        }
    } else if let Some(map) = config.as_object() {
        for (k, v) in map.iter().filter(|(k, _)| !skipped(k)) {
            add(k, v);
        }
    }
    parts.join(", ")
}

/// Only float32 computation matches Keras to float32 rounding; say so for the rest.
fn check_dtype(config: &Value) -> Result<()> {
    let policy = match config.get("dtype") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("config")
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("float32")
            .to_string(),
        _ => return Ok(()),
    };
    if policy == "float32" {
        Ok(())
    } else {
        Err(Error::new(format!(
            "dtype policy `{policy}` is not supported; kerac computes in float32 (re-save the model with dtype float32)"
        )))
    }
}

fn show_dims(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("None".to_string(), |n| n.to_string()))
        .collect();
    format!("(None, {})", parts.join(", "))
}
