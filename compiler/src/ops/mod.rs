//! What each Keras *operation* means: the nodes a functional model records for
//! `x + 3.0`, `ops.mean(x, axis=1)` or `x[:, 2:6]` (Keras 3 `keras.src.ops.*` nodes,
//! Keras 2 `TFOpLambda` and `SlicingOpLambda` layers). An operation is never looked up
//! as a layer of the same class name: Keras 3's `Add` operation takes constants, the
//! `Add` layer does not.
//!
//! Both dialects' spellings map to one canonical name (Keras 3's class name), and each
//! canonical name to a build function that returns the same [`Lowered`] a layer does,
//! usually by reusing the layer that computes the same thing.

mod arith;
mod shape;

use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::keras::Dialect;
use crate::layers::{self, LayerCtx, Lowered};
use ndarray::{ArrayD, IxDyn};
use serde_json::{Map, Value};

/// Builds one call of an operation.
pub type BuildFn = fn(&OpCtx) -> Result<Lowered>;

/// Every supported operation, by canonical name.
const OPERATIONS: &[&[(&str, BuildFn)]] = &[arith::OPERATIONS, shape::OPERATIONS, MASKS];

/// The operations Keras 3 writes masks with (`mask_zero`, Masking), built where masks
/// are.
const MASKS: &[(&str, BuildFn)] = &[
    ("NotEqual", |ctx| {
        ctx.layer_build(layers::embedding::build_not_equal)
    }),
    ("Any", |ctx| ctx.layer_build(layers::embedding::build_any)),
];

/// Keras 2 (`tf.*`) spellings and the canonical names they mean.
const KERAS2_NAMES: &[(&str, &str)] = &[
    ("__operators__.add", "Add"),
    ("math.add", "Add"),
    ("math.subtract", "Subtract"),
    ("__operators__.subtract", "Subtract"),
    ("math.multiply", "Multiply"),
    ("math.truediv", "Divide"),
    ("math.divide", "Divide"),
    ("__operators__.truediv", "Divide"),
    ("math.negative", "Negative"),
    ("__operators__.neg", "Negative"),
    ("math.square", "Square"),
    ("math.abs", "Absolute"),
    ("math.exp", "Exp"),
    ("math.pow", "Power"),
    ("__operators__.pow", "Power"),
    ("math.sqrt", "Sqrt"),
    ("linalg.matmul", "Matmul"),
    ("__operators__.matmul", "Matmul"),
    ("math.rsqrt", "Rsqrt"),
    ("math.log", "Log"),
    ("math.reciprocal", "Reciprocal"),
    ("zeros_like", "ZerosLike"),
    ("where", "Where"),
    ("compat.v1.where_v2", "Where"),
    ("ones_like", "OnesLike"),
    ("math.maximum", "Maximum"),
    ("math.minimum", "Minimum"),
    ("clip_by_value", "Clip"),
    ("nn.relu", "Relu"),
    ("nn.relu6", "Relu6"),
    ("math.sigmoid", "Sigmoid"),
    ("nn.sigmoid", "Sigmoid"),
    ("nn.silu", "Silu"),
    ("nn.swish", "Silu"),
    ("nn.gelu", "Gelu"),
    ("math.tanh", "Tanh"),
    ("nn.tanh", "Tanh"),
    ("nn.softmax", "Softmax"),
    ("math.softmax", "Softmax"),
    ("nn.log_softmax", "LogSoftmax"),
    ("math.log_softmax", "LogSoftmax"),
    ("math.softplus", "Softplus"),
    ("nn.softplus", "Softplus"),
    ("nn.softsign", "Softsign"),
    ("math.softsign", "Softsign"),
    ("nn.elu", "Elu"),
    ("nn.selu", "Selu"),
    ("nn.leaky_relu", "LeakyRelu"),
    ("math.reduce_mean", "Mean"),
    ("math.reduce_sum", "Sum"),
    ("math.reduce_max", "Max"),
    ("math.reduce_min", "Min"),
    ("reshape", "Reshape"),
    ("transpose", "Transpose"),
    ("compat.v1.transpose", "Transpose"),
    ("expand_dims", "ExpandDims"),
    ("squeeze", "Squeeze"),
    ("compat.v1.squeeze", "Squeeze"),
    ("concat", "Concatenate"),
    ("stack", "Stack"),
    ("__operators__.getitem", "GetItem"),
    ("cast", "Cast"),
    ("stop_gradient", "StopGradient"),
    ("identity", "Identity"),
];

/// The canonical name of an operation's full name (`keras.src.ops.numpy.Add`,
/// `tf.math.add`), where kerac knows the spelling.
pub fn canonical(full: &str) -> Option<&'static str> {
    if let Some(function) = full.strip_prefix("tf.") {
        return KERAS2_NAMES
            .iter()
            .find(|(k2, _)| *k2 == function)
            .map(|(_, name)| *name);
    }
    let class = full.rsplit('.').next()?;
    entries().map(|(name, _)| *name).find(|name| *name == class)
}

/// Every `(canonical name, build function)`.
fn entries() -> impl Iterator<Item = &'static (&'static str, BuildFn)> {
    OPERATIONS.iter().flat_map(|t| t.iter())
}

/// The build function of an operation, by its full name.
pub fn lookup(full: &str) -> Option<BuildFn> {
    let name = canonical(full)?;
    entries().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Canonical names of all supported operations, sorted.
pub fn supported() -> Vec<&'static str> {
    let mut names: Vec<&str> = entries().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names
}

/// One argument of an operation call.
#[derive(Debug, Clone)]
pub enum Arg {
    /// Input `i` of the call.
    Tensor(usize),
    /// A constant (a Python scalar or nested list), rounded to float32 as Keras does.
    Const(ArrayD<f32>),
}

/// Everything a build function may look at for one call of one operation.
pub struct OpCtx<'a> {
    /// The operation's config (Keras 3 keeps its constructor arguments there).
    pub config: &'a Value,
    /// Which Keras wrote the file.
    pub dialect: Dialect,
    /// Input shapes, batch first.
    pub inputs: &'a [Shape],
    args: Vec<Value>,
    kwargs: Map<String, Value>,
}

impl<'a> OpCtx<'a> {
    /// A context over an operation's config, input shapes and call options (holding
    /// `__args` and `__kwargs`, tensors as `{"__input__": i}`).
    pub fn new(config: &'a Value, dialect: Dialect, inputs: &'a [Shape], call: &Value) -> Self {
        let args = call
            .get("__args")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut kwargs = call
            .get("__kwargs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        // Keras 2 passes every call's `name` keyword; it is not an argument.
        kwargs.remove("name");
        OpCtx {
            config,
            dialect,
            inputs,
            args,
            kwargs,
        }
    }

    /// The raw value of an argument: positional `position`, or keyword (or config
    /// key) under any of `names`.
    pub fn raw(&self, position: Option<usize>, names: &[&str]) -> Option<&Value> {
        let by_name = names
            .iter()
            .find_map(|n| self.kwargs.get(*n).or_else(|| self.config.get(*n)));
        position
            .and_then(|p| self.args.get(p))
            .or(by_name)
            .filter(|v| !v.is_null())
    }

    /// An argument as a tensor or a constant; an error naming it when missing.
    pub fn arg(&self, position: usize, names: &[&str]) -> Result<Arg> {
        let v = self.raw(Some(position), names).ok_or_else(|| {
            Error::new(format!(
                "argument `{}` (position {position}) is missing",
                names.first().unwrap_or(&"?")
            ))
        })?;
        to_arg(v, names.first().unwrap_or(&"?"))
    }

    /// The shape of input `i`.
    pub fn shape(&self, i: usize) -> Result<&'a Shape> {
        self.inputs
            .get(i)
            .ok_or_else(|| Error::new(format!("input {i} is missing")))
    }

    /// The tensor argument at `position` (or keyword `names`), which must be a tensor.
    pub fn tensor(&self, position: usize, names: &[&str]) -> Result<usize> {
        match self.arg(position, names)? {
            Arg::Tensor(i) => Ok(i),
            Arg::Const(_) => Err(Error::new(format!(
                "argument `{}` is a constant; kerac computes operations on tensors",
                names.first().unwrap_or(&"?")
            ))),
        }
    }

    /// An optional number argument.
    pub fn number(&self, position: Option<usize>, names: &[&str]) -> Result<Option<f64>> {
        match self.raw(position, names) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                Error::new(format!(
                    "`{}` must be a number, found {}",
                    names.first().unwrap_or(&"?"),
                    crate::keras::config::short(v)
                ))
            }),
        }
    }

    /// An optional axis argument: an integer or a list of integers (`None` when absent
    /// or null).
    pub fn axes(&self, position: Option<usize>, names: &[&str]) -> Result<Option<Vec<i64>>> {
        let name = names.first().unwrap_or(&"axis");
        match self.raw(position, names) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(|a| Some(vec![a])).ok_or_else(|| {
                Error::new(format!(
                    "`{name}` must be an integer or a list of integers, found {n}"
                ))
            }),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_i64().ok_or_else(|| {
                        Error::new(format!(
                            "`{name}` must be an integer or a list of integers, found {v}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(other) => Err(Error::new(format!(
                "`{name}` must be an integer or a list of integers, found {}",
                crate::keras::config::short(other)
            ))),
        }
    }

    /// A boolean argument, `default` when absent.
    pub fn flag(&self, position: Option<usize>, names: &[&str], default: bool) -> bool {
        self.raw(position, names)
            .and_then(Value::as_bool)
            .unwrap_or(default)
    }

    /// Builds the layer `class` with `config` on this call's inputs: for operations
    /// that compute exactly what a layer does.
    pub fn via_layer(&self, class: &str, config: Value) -> Result<Lowered> {
        let build = layers::lookup(class)
            .ok_or_else(|| Error::new(format!("internal: no layer `{class}`")))?;
        let mut ctx = LayerCtx::new(&config, self.dialect, self.inputs, &[]);
        build(&mut ctx)
    }

    /// Runs a layer-style build function on this call: the config as it is, the
    /// arguments as the call's `__args`.
    fn layer_build(&self, build: layers::BuildFn) -> Result<Lowered> {
        let mut ctx = LayerCtx::new(self.config, self.dialect, self.inputs, &[]);
        ctx.call = serde_json::json!({ "__args": self.args });
        build(&mut ctx)
    }
}

/// Reads an argument: a tensor placeholder, a number, a boolean or a nested list.
fn to_arg(v: &Value, name: &str) -> Result<Arg> {
    if let Some(i) = v.get("__input__").and_then(Value::as_u64) {
        return Ok(Arg::Tensor(i as usize));
    }
    // A NumPy array, as Keras 3 writes it.
    if v.get("class_name").and_then(Value::as_str) == Some("__numpy__") {
        let value = v
            .get("config")
            .and_then(|c| c.get("value"))
            .unwrap_or(&Value::Null);
        return to_arg(value, name);
    }
    let mut shape = Vec::new();
    let mut data = Vec::new();
    flatten(v, 0, &mut shape, &mut data).map_err(|why| {
        Error::new(format!(
            "argument `{name}` is {}: {why}",
            crate::keras::config::short(v)
        ))
    })?;
    layers::elements(&shape)?;
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .map(Arg::Const)
        .map_err(|_| Error::new(format!("argument `{name}` is a ragged list")))
}

fn flatten(
    v: &Value,
    depth: usize,
    shape: &mut Vec<usize>,
    data: &mut Vec<f32>,
) -> Result<(), String> {
    const MAX_RANK: usize = 8;
    match v {
        Value::Number(n) => {
            data.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            if depth < shape.len() {
                return Err("a ragged list".into());
            }
            Ok(())
        }
        Value::Bool(b) => flatten(&Value::from(u8::from(*b)), depth, shape, data),
        Value::Array(items) if depth < MAX_RANK => {
            match shape.get(depth) {
                None => shape.push(items.len()),
                Some(&n) if n != items.len() => return Err("a ragged list".into()),
                Some(_) => {}
            }
            if items.is_empty() {
                return Err("an empty list".into());
            }
            for item in items {
                flatten(item, depth + 1, shape, data)?;
            }
            Ok(())
        }
        Value::Array(_) => Err(format!("nested deeper than {MAX_RANK} levels")),
        _ => Err("not a tensor or a number".into()),
    }
}

/// Resolves a list of axes against a rank: sorted, unique, in range.
fn resolve_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = axes
        .iter()
        .map(|&a| layers::resolve_axis(a, rank))
        .collect::<Result<Vec<_>>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}
