//! The model config, in either dialect, parsed into one functional form: layers with
//! the tensors each call receives. Sequential models become a chain here, so nothing
//! downstream distinguishes the two.

use crate::bail;
use crate::error::{Error, Result};
use serde_json::Value;

/// A reference to a tensor: output `index` of the `node`-th call of `layer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The producing layer's name.
    pub layer: String,
    /// Which call of that layer (shared layers are called more than once).
    pub node: usize,
    /// Which output of that call.
    pub index: usize,
}

/// One layer of a model and the calls made to it.
#[derive(Debug, Clone)]
pub struct LayerEntry {
    /// The layer's name, unique within its model.
    pub name: String,
    /// The Keras class name, e.g. `Dense`.
    pub class: String,
    /// The layer's own config object.
    pub config: Value,
    /// For each call, the tensors passed in, in order.
    pub calls: Vec<Vec<TensorRef>>,
    /// For each call, its keyword options (`use_causal_mask`, ...), or null.
    pub call_options: Vec<Value>,
    /// For a nested model, its parsed config.
    pub model: Option<Box<ModelConfig>>,
    /// For an operation node (a Keras 3 `keras.src.ops.*` node, a Keras 2
    /// `TFOpLambda`), the operation's full name, e.g. `keras.src.ops.numpy.Add` or
    /// `tf.math.multiply`: never looked up as a layer. Each call's options then hold
    /// its arguments as `__args` and `__kwargs`, tensors written `{"__input__": i}`.
    pub operation: Option<String>,
}

impl LayerEntry {
    /// What the entry is, for messages: the operation's full name, or the class.
    pub fn kind(&self) -> &str {
        self.operation.as_deref().unwrap_or(&self.class)
    }
}

/// A Sequential or Functional model in functional form.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The model's name.
    pub name: String,
    /// Its layers in the file's order (InputLayers included).
    pub layers: Vec<LayerEntry>,
    /// The model's inputs, in Keras's order.
    pub inputs: Vec<TensorRef>,
    /// The model's outputs, in Keras's order.
    pub outputs: Vec<TensorRef>,
    /// Whether the config itself starts with an InputLayer. Keras 2 then numbers the
    /// calls of this model, nested in another, from 1 rather than 0.
    pub declares_input: bool,
    /// Whether this is a Sequential model, whose calls kerac chains itself rather
    /// than reading them from the file.
    pub sequential: bool,
}

const MAX_NESTING: usize = 16;
const MODEL_CLASSES: &[&str] = &["Sequential", "Functional", "Model"];

/// Parses `{"class_name": "Sequential"|"Functional"|"Model", "config": {...}}`.
pub fn parse_model(json: &Value) -> Result<ModelConfig> {
    parse_model_at(json, 0)
}

fn parse_model_at(json: &Value, depth: usize) -> Result<ModelConfig> {
    if depth > MAX_NESTING {
        bail!("models nest deeper than {MAX_NESTING} levels");
    }
    let class = json.get("class_name").and_then(Value::as_str).unwrap_or("");
    let config = json
        .get("config")
        .filter(|c| c.is_object())
        .ok_or_else(|| Error::new("the model has no `config` object"))?;
    let name = config
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("model")
        .to_string();
    let layers = config
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::new(format!("model `{name}` ({class}) has no `layers` list")))?;
    let model = match class {
        "Sequential" => parse_sequential(&name, config, layers, depth),
        "Functional" | "Model" => parse_functional(&name, config, layers, depth),
        other => Err(Error::new(format!(
            "the top-level object is a `{other}`; expected a Sequential or Functional model"
        ))),
    }?;
    check_names(&model)?;
    Ok(model)
}

fn parse_entry(raw: &Value, depth: usize, fallback_name: String) -> Result<LayerEntry> {
    let class = raw
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::new("a layer has no `class_name`"))?
        .to_string();
    let config = raw.get("config").cloned().unwrap_or(Value::Null);
    let name = raw
        .get("name")
        .or_else(|| config.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or(fallback_name);
    let operation = operation_name(raw, &class, &config);
    let model = if operation.is_none() && MODEL_CLASSES.contains(&class.as_str()) {
        Some(Box::new(
            parse_model_at(raw, depth + 1).map_err(|e| e.in_layer(&name, &class))?,
        ))
    } else {
        None
    };
    Ok(LayerEntry {
        name,
        class,
        config,
        calls: Vec::new(),
        call_options: Vec::new(),
        model,
        operation,
    })
}

/// Keras 2 classes that wrap a TensorFlow function named in their config.
const KERAS2_OPERATIONS: [&str; 2] = ["TFOpLambda", "SlicingOpLambda"];

/// The full name of an operation node, `None` for a layer.
fn operation_name(raw: &Value, class: &str, config: &Value) -> Option<String> {
    if KERAS2_OPERATIONS.contains(&class) {
        let function = config
            .get("function")
            .and_then(Value::as_str)
            .unwrap_or("?");
        return Some(format!("tf.{function}"));
    }
    match raw.get("module").and_then(Value::as_str) {
        Some(module) => {
            let is_op = module.starts_with("keras.src.ops.") || module.starts_with("keras.ops.");
            is_op.then(|| format!("{module}.{class}"))
        }
        // Keras 3's legacy `.h5` drops the module. An operation's config holds its
        // name and options only; a layer's records `trainable` (but for InputLayer and
        // the dropouts). So a class that names an operation, or no layer kerac knows,
        // is an operation there when `trainable` is missing.
        None => {
            let full = format!("keras.ops.{class}");
            let op_name =
                crate::ops::canonical(&full).is_some() || crate::layers::lookup(class).is_none();
            let layer_like = config.get("trainable").is_some()
                || class == "InputLayer"
                || MODEL_CLASSES.contains(&class);
            (op_name && !layer_like && config.is_object()).then_some(full)
        }
    }
}

fn parse_sequential(
    name: &str,
    config: &Value,
    layers: &[Value],
    depth: usize,
) -> Result<ModelConfig> {
    let mut entries = Vec::with_capacity(layers.len() + 1);
    for (i, raw) in layers.iter().enumerate() {
        entries.push(parse_entry(raw, depth, format!("{name}_layer_{i}"))?);
    }
    let declares_input = entries.first().is_some_and(|e| e.class == "InputLayer");
    if !declares_input {
        let shape = entries
            .first()
            .and_then(|e| e.config.get("batch_input_shape").or_else(|| e.config.get("batch_shape")))
            .or_else(|| config.get("build_input_shape"))
            .cloned()
            .ok_or_else(|| {
                Error::new(format!(
                    "Sequential model `{name}` records no input shape; build it with an Input before saving"
                ))
            })?;
        let input_name = format!("{name}_input");
        entries.insert(
            0,
            LayerEntry {
                name: input_name.clone(),
                class: "InputLayer".into(),
                config: serde_json::json!({ "batch_shape": shape, "name": input_name }),
                calls: Vec::new(),
                call_options: Vec::new(),
                model: None,
                operation: None,
            },
        );
    }
    for i in 1..entries.len() {
        let prev = entries[i - 1].name.clone();
        entries[i].calls.push(vec![TensorRef {
            layer: prev,
            node: 0,
            index: 0,
        }]);
    }
    let first = &entries[0].name;
    let last = &entries[entries.len() - 1].name;
    Ok(ModelConfig {
        name: name.to_string(),
        inputs: vec![TensorRef {
            layer: first.clone(),
            node: 0,
            index: 0,
        }],
        outputs: vec![TensorRef {
            layer: last.clone(),
            node: 0,
            index: 0,
        }],
        layers: entries,
        declares_input,
        sequential: true,
    })
}

fn parse_functional(
    name: &str,
    config: &Value,
    layers: &[Value],
    depth: usize,
) -> Result<ModelConfig> {
    let mut entries = Vec::with_capacity(layers.len());
    for (i, raw) in layers.iter().enumerate() {
        let mut entry = parse_entry(raw, depth, format!("{name}_layer_{i}"))?;
        let nodes = raw
            .get("inbound_nodes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for node in &nodes {
            if entry.operation.is_some() {
                let (call, options) = parse_operation_node(node)
                    .map_err(|e| e.in_layer(&entry.name, &entry.class))?;
                entry.calls.push(call);
                entry.call_options.push(options);
                continue;
            }
            let call = parse_node(node).map_err(|e| e.in_layer(&entry.name, &entry.class))?;
            entry.calls.push(call);
            // Keras 3 keeps keyword arguments beside the tensors; Keras 2 in each
            // tensor reference's fourth element.
            let mut options = node
                .get("kwargs")
                .or_else(|| node.get(0).and_then(|r| r.get(3)))
                .cloned()
                .unwrap_or(Value::Null);
            // Keras 3 writes masks out: a tensor under `mask` becomes the call's last
            // input; and operations keep their constant arguments.
            if let Some(o) = options.as_object_mut() {
                let mut mask = Vec::new();
                if let Some(m) = o.get("mask") {
                    collect_keras_tensors(m, &mut mask, 0)?;
                }
                o.insert("__mask".into(), Value::from(!mask.is_empty()));
            }
            if let (Some(o), Some(args)) = (options.as_object_mut(), node.get("args")) {
                o.insert("__args".into(), args.clone());
            }
            entry.call_options.push(options);
        }
        entries.push(entry);
    }
    let ends = |key: &str| -> Result<Vec<TensorRef>> {
        let v = config
            .get(key)
            .ok_or_else(|| Error::new(format!("model `{name}` has no `{key}`")))?;
        match v.as_array() {
            // A lone triple when the model has a single input or output.
            Some(items) if items.first().is_some_and(Value::is_string) => Ok(vec![tensor_ref(v)?]),
            Some(items) => items.iter().map(tensor_ref).collect(),
            None => match v.as_object() {
                Some(map) => map.values().map(tensor_ref).collect(),
                None => Err(Error::new(format!("model `{name}`: `{key}` is not a list"))),
            },
        }
    };
    Ok(ModelConfig {
        name: name.to_string(),
        inputs: ends("input_layers")?,
        outputs: ends("output_layers")?,
        layers: entries,
        declares_input: true,
        sequential: false,
    })
}

/// One inbound node: Keras 3 `{"args": [...], "kwargs": {...}}` holding
/// `__keras_tensor__` objects, or Keras 2 `[[name, node, index, kwargs], ...]`.
fn parse_node(node: &Value) -> Result<Vec<TensorRef>> {
    if let Some(args) = node.get("args") {
        let mut out = Vec::new();
        collect_keras_tensors(args, &mut out, 0)?;
        // Tensors passed by keyword follow the positional ones: attention's value and
        // key, recurrent layers' initial states.
        for key in KEYWORD_TENSORS {
            if let Some(t) = node.get("kwargs").and_then(|k| k.get(key)) {
                collect_keras_tensors(t, &mut out, 0)?;
            }
        }
        return Ok(out);
    }
    match node.as_array() {
        Some(items) => {
            let mut out = items.iter().map(tensor_ref).collect::<Result<Vec<_>>>()?;
            // Keras 2 keeps keyword tensors in the first reference's options.
            if let Some(options) = items.first().and_then(|r| r.get(3)) {
                for key in KEYWORD_TENSORS {
                    collect_keras2_refs(options.get(key), &mut out, 0)?;
                }
            }
            Ok(out)
        }
        None => Err(Error::new(format!(
            "unreadable inbound node: {}",
            short(node)
        ))),
    }
}

/// An operation's call: its tensors in the order they become inputs, and its
/// arguments with each tensor replaced by `{"__input__": i}`, as options `__args`
/// (positional) and `__kwargs`. Keras 3 writes `{"args": [...], "kwargs": {...}}`;
/// Keras 2 writes its first argument as a reference (`["_CONSTANT_VALUE", -1, value]`
/// for a constant) or a list of references, carrying the keyword arguments.
fn parse_operation_node(node: &Value) -> Result<(Vec<TensorRef>, Value)> {
    let mut inputs = Vec::new();
    let (args, kwargs) = if node.get("args").is_some() {
        let args = node.get("args").cloned().unwrap_or(Value::Null);
        let kwargs = node.get("kwargs").cloned().unwrap_or(Value::Null);
        let args = replace_keras_tensors(&args, &mut inputs, 0)?;
        let kwargs = replace_keras_tensors(&kwargs, &mut inputs, 0)?;
        (args, kwargs)
    } else {
        let items = node
            .as_array()
            .ok_or_else(|| Error::new(format!("unreadable inbound node: {}", short(node))))?;
        let first_is_ref = items.first().is_some_and(Value::is_string);
        let (first, kwargs) = if first_is_ref {
            let kwargs = items.get(3).cloned().unwrap_or(Value::Null);
            let first = if items.first().and_then(Value::as_str) == Some("_CONSTANT_VALUE") {
                items.get(2).cloned().unwrap_or(Value::Null)
            } else {
                inputs.push(tensor_ref(node)?);
                serde_json::json!({ "__input__": 0 })
            };
            (first, kwargs)
        } else {
            let mut list = Vec::new();
            for item in items {
                list.push(serde_json::json!({ "__input__": inputs.len() }));
                inputs.push(tensor_ref(item)?);
            }
            let kwargs = items
                .first()
                .and_then(|r| r.get(3))
                .cloned()
                .unwrap_or(Value::Null);
            (Value::Array(list), kwargs)
        };
        let kwargs = replace_keras2_refs(&kwargs, &mut inputs, 0)?;
        (Value::Array(vec![first]), kwargs)
    };
    let options = serde_json::json!({ "__args": args, "__kwargs": kwargs });
    Ok((inputs, options))
}

/// A copy of `v` with each Keras 3 tensor replaced by its input index.
fn replace_keras_tensors(v: &Value, out: &mut Vec<TensorRef>, depth: usize) -> Result<Value> {
    if depth > MAX_NESTING {
        return Err(Error::new("call arguments nest too deeply"));
    }
    Ok(match v {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| replace_keras_tensors(i, out, depth + 1))
                .collect::<Result<_>>()?,
        ),
        Value::Object(map)
            if map.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") =>
        {
            let mut one = Vec::new();
            collect_keras_tensors(v, &mut one, depth)?;
            let index = out.len();
            out.extend(one);
            serde_json::json!({ "__input__": index })
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, i)| Ok((k.clone(), replace_keras_tensors(i, out, depth + 1)?)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

/// A copy of Keras 2 keyword arguments with each reference `[layer, node, index]`
/// replaced by its input index.
fn replace_keras2_refs(v: &Value, out: &mut Vec<TensorRef>, depth: usize) -> Result<Value> {
    if depth > MAX_NESTING {
        return Err(Error::new("call arguments nest too deeply"));
    }
    Ok(match v {
        Value::Array(items) if items.first().is_some_and(Value::is_string) && items.len() >= 3 => {
            out.push(tensor_ref(v)?);
            serde_json::json!({ "__input__": out.len() - 1 })
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| replace_keras2_refs(i, out, depth + 1))
                .collect::<Result<_>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, i)| Ok((k.clone(), replace_keras2_refs(i, out, depth + 1)?)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

/// Keyword arguments that carry tensors, in the order they become inputs.
const KEYWORD_TENSORS: [&str; 4] = ["value", "key", "initial_state", "mask"];

/// Keras 2 references (`[name, node, index]`, or lists of them) under a keyword.
fn collect_keras2_refs(v: Option<&Value>, out: &mut Vec<TensorRef>, depth: usize) -> Result<()> {
    if depth > MAX_NESTING {
        return Err(Error::new("call arguments nest too deeply"));
    }
    match v {
        Some(Value::Array(items)) if items.first().is_some_and(Value::is_string) => {
            out.push(tensor_ref(&Value::Array(items.clone()))?);
        }
        Some(Value::Array(items)) => {
            for item in items {
                collect_keras2_refs(Some(item), out, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn collect_keras_tensors(v: &Value, out: &mut Vec<TensorRef>, depth: usize) -> Result<()> {
    if depth > MAX_NESTING {
        return Err(Error::new("call arguments nest too deeply"));
    }
    match v {
        Value::Array(items) => {
            for item in items {
                collect_keras_tensors(item, out, depth + 1)?;
            }
        }
        Value::Object(map)
            if map.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") =>
        {
            let history = map
                .get("config")
                .and_then(|c| c.get("keras_history"))
                .ok_or_else(|| Error::new("a tensor argument has no `keras_history`"))?;
            out.push(tensor_ref(history)?);
        }
        _ => {}
    }
    Ok(())
}

fn tensor_ref(v: &Value) -> Result<TensorRef> {
    let bad = || {
        Error::new(format!(
            "expected a tensor reference [layer, node, index], found {}",
            short(v)
        ))
    };
    let items = v.as_array().ok_or_else(bad)?;
    let layer = items
        .first()
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_string();
    let num = |i: usize| items.get(i).and_then(Value::as_u64).map(|n| n as usize);
    Ok(TensorRef {
        layer,
        node: num(1).ok_or_else(bad)?,
        index: num(2).ok_or_else(bad)?,
    })
}

fn check_names(model: &ModelConfig) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for layer in &model.layers {
        if !seen.insert(layer.name.as_str()) {
            bail!(
                "model `{}` has two layers named `{}`",
                model.name,
                layer.name
            );
        }
    }
    Ok(())
}

/// A value shortened for an error message.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(77).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}
