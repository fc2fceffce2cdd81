//! What each Keras layer means. One file per layer family; each exports a table of
//! `(class name, build function)`.
//!
//! A build function reads the layer's config into a typed struct, checks its input
//! shapes and weights, and returns an [`Op`]: the layer with every shape fixed, which
//! knows its reference semantics, its output shapes and its cost.

pub mod activation;
pub mod applications;
pub mod attention;
pub mod bidirectional;
pub mod conv;
pub mod core;
pub mod embedding;
pub mod geometry;
pub mod merge;
pub mod norm;
pub mod pool;
pub mod recurrent;
pub mod spatial;
pub mod wrappers;

use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::keras::hdf5::Tensor;
use crate::keras::Dialect;
use ndarray::{ArrayD, IxDyn};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// A layer lowered for fixed shapes.
pub trait Op: std::fmt::Debug + Send + Sync {
    /// Reference semantics: computes the outputs from the inputs (standard layout).
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>>;
    /// Floating-point operations per call (a multiply-add counts two).
    fn flops(&self) -> u64;
    /// Lowers the op to runtime kernel calls, for the compiled backends.
    fn lower(&self, l: &mut crate::plan::Lower) -> Result<()>;
}

/// Lowers a producer (Dense, Conv, ...) whose activation may be a softmax, which no
/// kernel fuses: the producer then writes a temporary and a softmax step follows.
pub fn lower_with_activation(
    l: &mut crate::plan::Lower,
    activation: &activation::Activation,
    flops: u64,
    kernel: impl FnOnce(kerac::Act) -> crate::plan::Kernel,
) -> Result<()> {
    match activation.to_act() {
        Some(act) => {
            l.unary(kernel(act), flops);
            Ok(())
        }
        None => {
            let shape = l.output_shapes[0].clone();
            let elements: usize = shape.iter().product();
            // `flops` counts the activation too; the softmax step carries that share.
            let softmax_flops = activation.flops_per_element() * elements as u64;
            let tmp = l.temp(elements);
            let input = l.inputs[0];
            l.step(
                kernel(kerac::Act::Linear),
                vec![input],
                tmp,
                flops.saturating_sub(softmax_flops),
            );
            let softmax = activation.softmax_kernel(&shape)?;
            let out = l.output(0);
            l.step(softmax, vec![tmp], out, softmax_flops);
            Ok(())
        }
    }
}

/// What a build function returns: the op and the shape of each output.
pub struct Lowered {
    /// The op.
    pub op: Box<dyn Op>,
    /// Output shapes, batch first.
    pub outputs: Vec<Shape>,
    /// The output that is the mask of output 0 (Embedding with `mask_zero`), past the
    /// outputs Keras names.
    pub mask: Option<usize>,
}

impl Lowered {
    /// A single-output op.
    pub fn one(op: impl Op + 'static, shape: Shape) -> Self {
        Lowered {
            op: Box::new(op),
            outputs: vec![shape],
            mask: None,
        }
    }
}

/// Builds one call of a layer.
pub type BuildFn = fn(&mut LayerCtx) -> Result<Lowered>;

/// Every supported class, from each family's table.
const FAMILIES: &[&[(&str, BuildFn)]] = &[
    core::LAYERS,
    activation::LAYERS,
    conv::LAYERS,
    pool::LAYERS,
    norm::LAYERS,
    spatial::LAYERS,
    merge::LAYERS,
    recurrent::LAYERS,
    bidirectional::LAYERS,
    wrappers::LAYERS,
    embedding::LAYERS,
    attention::LAYERS,
    applications::LAYERS,
];

/// The build function for a Keras class, if kerac supports it.
pub fn lookup(class: &str) -> Option<BuildFn> {
    FAMILIES
        .iter()
        .flat_map(|f| f.iter())
        .find(|(name, _)| *name == class)
        .map(|(_, f)| *f)
}

/// Names of all supported layer classes, sorted.
pub fn supported() -> Vec<&'static str> {
    let mut names: Vec<&str> = FAMILIES
        .iter()
        .flat_map(|f| f.iter())
        .map(|(n, _)| *n)
        .collect();
    names.sort_unstable();
    names
}

/// A weight bound to a layer: its values with the shape the layer expects.
pub type Weight = ArrayD<f32>;

/// Everything a build function may look at for one call of one layer.
pub struct LayerCtx<'a> {
    /// The layer's config object.
    pub config: &'a Value,
    /// Which Keras wrote the file.
    pub dialect: Dialect,
    /// Input shapes, batch first.
    pub inputs: &'a [Shape],
    weights: Vec<&'a Tensor>,
    taken: usize,
    params: usize,
    /// The call's keyword options (`use_causal_mask`, ...), or null.
    pub call: Value,
    /// Whether the last input is the mask of the first (`[batch, steps]`, nonzero
    /// where a step counts), for layers that consume masks.
    pub masked: bool,
}

impl<'a> LayerCtx<'a> {
    /// A context over a layer's config, input shapes and stored weights.
    pub fn new(
        config: &'a Value,
        dialect: Dialect,
        inputs: &'a [Shape],
        weights: &'a [&'a Tensor],
    ) -> Self {
        LayerCtx {
            config,
            dialect,
            inputs,
            weights: weights.to_vec(),
            taken: 0,
            params: 0,
            call: Value::Null,
            masked: false,
        }
    }

    /// The config as a typed struct; unknown keys are ignored, missing ones use defaults.
    /// Errors name the key at fault, in Keras's terms.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(self.config).map_err(|e| {
            let message = e.to_string();
            let said = keras_terms(&message);
            match culprit::<T>(self.config, &message) {
                Some(key) => Error::new(format!("config `{key}`: {said}")),
                None => Error::new(format!("config: {said}")),
            }
        })
    }

    /// The only input's shape; an error if the layer got several.
    pub fn input(&self) -> Result<&'a Shape> {
        match self.inputs {
            [one] => Ok(one),
            other => Err(Error::new(format!(
                "expected one input, found {}",
                other.len()
            ))),
        }
    }

    /// The next stored weight, which must be called `name` (where the file names its
    /// weights; `a|b` accepts either, for names that differ between Keras versions)
    /// and have `shape`.
    pub fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Weight> {
        let Some(t) = self.weights.get(self.taken) else {
            bail!(
                "weight `{name}` (shape {shape:?}) is missing: the file holds {} weights for this layer",
                self.weights.len()
            );
        };
        let stored = t.name.rsplit('/').next().unwrap_or(&t.name);
        let stored = stored.strip_suffix(":0").unwrap_or(stored);
        let positional = stored.bytes().all(|b| b.is_ascii_digit());
        // Keras 3 makes names unique with a counter (`variable`, `variable_1`, ...), as
        // ConvNeXt's LayerScale shows in a legacy `.h5`.
        let uncounted = match stored.rsplit_once('_') {
            Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
            _ => stored,
        };
        if !positional && !name.split('|').any(|n| n == stored || n == uncounted) {
            bail!(
                "weight {} should be `{name}`, the file has `{}`",
                self.taken,
                t.name
            );
        }
        if t.shape != shape {
            bail!(
                "weight `{name}` should have shape {shape:?}, the file has {:?}",
                t.shape
            );
        }
        self.taken += 1;
        self.params += t.data.len();
        ArrayD::from_shape_vec(IxDyn(shape), t.data.clone())
            .map_err(|e| Error::new(format!("weight `{name}`: {e}")))
    }

    /// Builds a wrapped layer (TimeDistributed's, an RNN's cell) from its own config
    /// and input shapes, on the weights not taken yet; what it takes counts as taken.
    pub fn nested<R>(
        &mut self,
        config: &Value,
        inputs: &[Shape],
        f: impl FnOnce(&mut LayerCtx) -> Result<R>,
    ) -> Result<R> {
        let rest = self.weights.get(self.taken..).unwrap_or_default();
        let mut inner = LayerCtx::new(config, self.dialect, inputs, rest);
        let result = f(&mut inner)?;
        self.taken += inner.taken;
        self.params += inner.params;
        Ok(result)
    }

    /// Whether the file names this layer's weights only by position (the Keras 3
    /// layout, where wrapped sublayers come in the order of their keys).
    pub fn positional_weights(&self) -> bool {
        self.weights.iter().all(|t| {
            let last = t.name.rsplit('/').next().unwrap_or(&t.name);
            last.bytes().all(|b| b.is_ascii_digit())
        })
    }

    /// Reorders the weights not taken yet: `blocks` are their lengths in file order,
    /// `order[i]` the file block the builder wants `i`-th.
    pub fn reorder_weights(&mut self, blocks: &[usize], order: &[usize]) -> Result<()> {
        let rest = self.weights.split_off(self.taken.min(self.weights.len()));
        if blocks.iter().sum::<usize>() != rest.len() || order.len() != blocks.len() {
            bail!(
                "the file holds {} weights for the wrapped layers, their configs use {}",
                rest.len(),
                blocks.iter().sum::<usize>()
            );
        }
        let starts: Vec<usize> = blocks
            .iter()
            .scan(0, |at, &n| {
                let s = *at;
                *at += n;
                Some(s)
            })
            .collect();
        for &b in order {
            let (start, n) = (starts[b], blocks[b]);
            self.weights.extend_from_slice(&rest[start..start + n]);
        }
        Ok(())
    }

    /// The class name and config of the layer a wrapper (TimeDistributed,
    /// Bidirectional) holds under `layer`.
    pub fn wrapped(&self) -> Result<(&'a str, Value)> {
        let layer = self
            .config
            .get("layer")
            .ok_or_else(|| Error::new("config: missing `layer`"))?;
        let class = layer
            .get("class_name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok((class, layer.get("config").cloned().unwrap_or(Value::Null)))
    }

    /// Parameters taken so far; the builder checks nothing is left over.
    pub fn finish(&self) -> Result<usize> {
        if self.taken != self.weights.len() {
            bail!(
                "the file holds {} weights for this layer, its config uses {}",
                self.weights.len(),
                self.taken
            );
        }
        Ok(self.params)
    }
}

/// The key whose removal changes how the config fails to parse: the one at fault.
/// Only on the error path, over a config's few dozen keys.
fn culprit<T: DeserializeOwned>(config: &Value, message: &str) -> Option<String> {
    let map = config.as_object()?;
    map.keys()
        .find(|key| {
            let mut without = map.clone();
            without.remove(key.as_str());
            T::deserialize(&Value::Object(without))
                .map_or_else(|e| e.to_string() != message, |_| true)
        })
        .cloned()
}

/// serde's `invalid type: floating point `10.5`, expected usize` in Keras's terms:
/// `must be a non-negative integer, found floating point `10.5``.
fn keras_terms(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    else {
        return message.to_string();
    };
    let Some((found, expected)) = rest.rsplit_once(", expected ") else {
        return message.to_string();
    };
    let expected = match expected {
        "usize" | "u64" | "u32" => "a non-negative integer",
        "i64" | "i32" | "isize" => "an integer",
        "f64" | "f32" => "a number",
        "a boolean" => "true or false",
        other => other,
    };
    format!("must be {expected}, found {found}")
}

/// One or several values of an `int or list` field, read by `one`.
fn one_or_many<T>(
    v: Value,
    what: &str,
    one: impl Fn(&Value) -> Option<T>,
) -> std::result::Result<Vec<T>, String> {
    let found = || {
        format!(
            "must be {what} or a list of them, found {}",
            crate::keras::config::short(&v)
        )
    };
    match &v {
        Value::Array(items) => items.iter().map(|i| one(i).ok_or_else(found)).collect(),
        single => one(single).map(|n| vec![n]).ok_or_else(found),
    }
}

/// Deserializes Keras's `int or list of ints` fields (kernel_size, strides, ...).
pub fn int_or_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<usize>, D::Error> {
    one_or_many(Value::deserialize(d)?, "a non-negative integer", |v| {
        v.as_u64().and_then(|n| usize::try_from(n).ok())
    })
    .map_err(serde::de::Error::custom)
}

/// Deserializes Keras's `int or list of ints` axis fields, negative values allowed.
pub fn axes<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<i64>, D::Error> {
    one_or_many(Value::deserialize(d)?, "an integer", Value::as_i64)
        .map_err(serde::de::Error::custom)
}

/// Resolves a Keras axis (negative counts from the end) against a rank.
pub fn resolve_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(Error::new(format!(
            "axis {axis} is out of range for a rank-{rank} tensor"
        )))
    }
}

/// An array of `shape` holding `data`. Ops size their outputs from the shapes fixed at
/// build time, so the two always agree; a mismatch would be a kerac bug, and yields
/// zeros rather than a panic.
pub fn tensor(shape: &[usize], data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), data).unwrap_or_else(|_| ArrayD::zeros(IxDyn(shape)))
}

/// Number of elements of a shape, or an error if it overflows.
pub fn elements(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= crate::graph::MAX_TENSOR_ELEMENTS)
        .ok_or_else(|| {
            Error::new(format!(
                "shape {shape:?} has more elements than kerac supports"
            ))
        })
}
