//! Activation functions (as `activation=` options and as layers): ReLU, LeakyReLU,
//! PReLU, ELU, Softmax, ThresholdedReLU and the Activation layer.
//!
//! Reference semantics compute in f64 and round once, so they sit within float32
//! rounding of Keras.

use super::geometry::for_each_group;
use super::{axes, resolve_axis, BuildFn, LayerCtx, Lowered, Op, Weight};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::keras::Dialect;
use crate::plan::{Kernel, Lower, StridedAxes};
use kerac::Act;
use ndarray::{ArrayD, Zip};
use serde::Deserialize;
use serde_json::Value;

/// Supported layer classes.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("Activation", build_activation),
    ("ReLU", build_relu),
    ("LeakyReLU", build_leaky_relu),
    ("PReLU", build_prelu),
    ("ELU", build_elu),
    ("Softmax", build_softmax),
    ("ThresholdedReLU", build_thresholded_relu),
];

/// An activation function, with the dialect's definition resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Activation {
    /// Identity.
    Linear,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x` if positive, else `slope * x`.
    LeakyRelu(f64),
    /// `x` if positive, else `alpha * (exp(x) - 1)`.
    Elu(f64),
    /// Scaled ELU with Keras's constants.
    Selu,
    /// Gaussian error linear unit; `true` for the tanh approximation.
    Gelu(bool),
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// Keras 2: `clip(0.2 x + 0.5, 0, 1)`.
    HardSigmoidKeras2,
    /// Keras 3: `relu6(x + 3) / 6`.
    HardSigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// Softmax over the given axes (negative counts from the end).
    Softmax(Vec<i64>),
    /// `log(1 + exp(x))`.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `x * sigmoid(x)`.
    Swish,
    /// `exp(x)`.
    Exponential,
    /// `x * tanh(softplus(x))`.
    Mish,
    /// Log of softmax over the given axes.
    LogSoftmax(Vec<i64>),
    /// `x * relu6(x + 3) / 6`.
    HardSwish,
    /// `max(x, c)` (the `maximum` operation with a constant).
    Max(f64),
    /// `min(x, c)`.
    Min(f64),
    /// `min(max(x, lo), hi)` (the `clip` operation).
    Clip(f64, f64),
    /// `|x|`.
    Abs,
    /// `sqrt(x)`.
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// `log(x)`.
    Log,
    /// `c / x`.
    DivInto(f64),
    /// `x^p` for a constant `p`.
    Pow(f64),
    /// The constant `c` everywhere (`zeros_like` and the like).
    Fill(f64),
}

const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

impl Activation {
    /// Parses an `activation` config value: a name, or a serialized function object.
    pub fn from_config(value: Option<&Value>, dialect: Dialect) -> Result<Activation> {
        let name = match value {
            None | Some(Value::Null) => return Ok(Activation::Linear),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => match (o.get("config"), o.get("class_name")) {
                (Some(Value::String(s)), _) => s.clone(),
                (_, Some(Value::String(s))) => s.clone(),
                _ => {
                    bail!("unreadable activation {}", Value::Object(o.clone()))
                }
            },
            Some(other) => bail!("unreadable activation {other}"),
        };
        Activation::from_name(&name, dialect)
    }

    /// The activation Keras means by `name` in `dialect`.
    pub fn from_name(name: &str, dialect: Dialect) -> Result<Activation> {
        Ok(match name {
            "linear" | "None" => Activation::Linear,
            "relu" => Activation::Relu,
            "relu6" => Activation::Relu6,
            "leaky_relu" => Activation::LeakyRelu(0.2),
            "elu" => Activation::Elu(1.0),
            "selu" => Activation::Selu,
            "gelu" => Activation::Gelu(false),
            "sigmoid" => Activation::Sigmoid,
            "hard_sigmoid" if dialect == Dialect::Keras2 => Activation::HardSigmoidKeras2,
            "hard_sigmoid" => Activation::HardSigmoid,
            "tanh" => Activation::Tanh,
            "softmax" => Activation::Softmax(vec![-1]),
            "softplus" => Activation::Softplus,
            "softsign" => Activation::Softsign,
            "swish" | "silu" => Activation::Swish,
            "exponential" => Activation::Exponential,
            "mish" => Activation::Mish,
            "log_softmax" => Activation::LogSoftmax(vec![-1]),
            "hard_swish" | "hard_silu" => Activation::HardSwish,
            other => {
                bail!(
                    "activation `{other}` is not supported; supported: linear, relu, relu6, leaky_relu, elu, selu, gelu, sigmoid, hard_sigmoid, tanh, softmax, softplus, softsign, swish, silu, exponential, mish, log_softmax, hard_swish, hard_silu"
                )
            }
        })
    }

    /// The scalar function, for elementwise activations.
    pub fn scalar(&self, x: f64) -> f64 {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let softplus = |x: f64| if x > 30.0 { x } else { x.exp().ln_1p() };
        let relu6 = |x: f64| x.clamp(0.0, 6.0);
        match self {
            Activation::Linear | Activation::Softmax(_) | Activation::LogSoftmax(_) => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => relu6(x),
            Activation::LeakyRelu(slope) => {
                if x >= 0.0 {
                    x
                } else {
                    slope * x
                }
            }
            Activation::Elu(alpha) => {
                if x > 0.0 {
                    x
                } else {
                    alpha * x.exp_m1()
                }
            }
            Activation::Selu => SELU_SCALE * if x > 0.0 { x } else { SELU_ALPHA * x.exp_m1() },
            Activation::Gelu(false) => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Activation::Gelu(true) => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::Sigmoid => sigmoid(x),
            Activation::HardSigmoidKeras2 => (0.2 * x + 0.5).clamp(0.0, 1.0),
            Activation::HardSigmoid => relu6(x + 3.0) / 6.0,
            Activation::Tanh => x.tanh(),
            Activation::Softplus => softplus(x),
            Activation::Softsign => x / (1.0 + x.abs()),
            Activation::Swish => x * sigmoid(x),
            Activation::Exponential => x.exp(),
            Activation::Mish => x * softplus(x).tanh(),
            Activation::HardSwish => x * relu6(x + 3.0) / 6.0,
            Activation::Max(c) if x.is_nan() => x,
            Activation::Max(c) => x.max(*c),
            Activation::Min(c) if x.is_nan() => x,
            Activation::Min(c) => x.min(*c),
            Activation::Clip(_, _) if x.is_nan() => x,
            Activation::Clip(lo, hi) => x.max(*lo).min(*hi),
            Activation::Abs => x.abs(),
            Activation::Sqrt => x.sqrt(),
            Activation::Rsqrt => 1.0 / x.sqrt(),
            Activation::Log => x.ln(),
            Activation::DivInto(c) => c / x,
            Activation::Pow(p) => x.powf(*p),
            Activation::Fill(c) => *c,
        }
    }

    /// Applies the activation in place.
    pub fn apply(&self, a: &mut ArrayD<f32>) {
        match self {
            Activation::Linear => {}
            Activation::Softmax(axes) | Activation::LogSoftmax(axes) => {
                // A build checks the axes (`check_rank`); a bad list here means no
                // grouping rather than a panic.
                let axes = softmax_axes(axes, a.ndim()).unwrap_or_default();
                let log = matches!(self, Activation::LogSoftmax(_));
                for_each_group(a, &axes, |g| softmax(g, log));
            }
            f => a.mapv_inplace(|x| f.scalar(x as f64) as f32),
        }
    }

    /// FLOPs per element, a rough count for reports.
    pub fn flops_per_element(&self) -> u64 {
        match self {
            Activation::Linear => 0,
            Activation::Relu
            | Activation::Relu6
            | Activation::LeakyRelu(_)
            | Activation::Max(_)
            | Activation::Min(_)
            | Activation::Abs
            | Activation::Sqrt
            | Activation::DivInto(_) => 1,
            Activation::Fill(_) => 0,
            Activation::Clip(_, _) => 2,
            _ => 4,
        }
    }

    /// The runtime's activation, for elementwise ones (softmax is a kernel of its own).
    pub fn to_act(&self) -> Option<Act> {
        Some(match *self {
            Activation::Linear => Act::Linear,
            Activation::Relu => Act::Relu,
            Activation::Relu6 => Act::Relu6,
            Activation::LeakyRelu(s) => Act::LeakyRelu(s as f32),
            Activation::Elu(a) => Act::Elu(a as f32),
            Activation::Selu => Act::Selu,
            Activation::Gelu(false) => Act::Gelu,
            Activation::Gelu(true) => Act::GeluTanh,
            Activation::Sigmoid => Act::Sigmoid,
            Activation::HardSigmoidKeras2 => Act::HardSigmoidKeras2,
            Activation::HardSigmoid => Act::HardSigmoid,
            Activation::Tanh => Act::Tanh,
            Activation::Softplus => Act::Softplus,
            Activation::Softsign => Act::Softsign,
            Activation::Swish => Act::Swish,
            Activation::Exponential => Act::Exponential,
            Activation::Mish => Act::Mish,
            Activation::HardSwish => Act::HardSwish,
            Activation::Max(c) => Act::Max(c as f32),
            Activation::Min(c) => Act::Min(c as f32),
            Activation::Clip(lo, hi) => Act::Clip {
                lo: lo as f32,
                hi: hi as f32,
            },
            Activation::Abs => Act::Abs,
            Activation::Sqrt => Act::Sqrt,
            Activation::Rsqrt => Act::Rsqrt,
            Activation::Log => Act::Log,
            Activation::DivInto(c) => Act::DivInto(c as f32),
            Activation::Pow(p) => Act::Pow(p as f32),
            Activation::Fill(c) => Act::Fill(c as f32),
            Activation::Softmax(_) | Activation::LogSoftmax(_) => return None,
        })
    }

    /// The softmax kernel for a tensor of `shape`; an error for elementwise activations.
    pub fn softmax_kernel(&self, shape: &[usize]) -> Result<Kernel> {
        let (axes, log) = match self {
            Activation::Softmax(axes) => (axes, false),
            Activation::LogSoftmax(axes) => (axes, true),
            _ => return Err(Error::new("not a softmax")),
        };
        let axes = softmax_axes(axes, shape.len())?;
        Ok(Kernel::Softmax {
            p: shape.strided(&axes)?,
            log,
        })
    }

    /// Checks the axes of a softmax fit a tensor of `rank`.
    pub fn check_rank(&self, rank: usize) -> Result<()> {
        if let Activation::Softmax(axes) | Activation::LogSoftmax(axes) = self {
            softmax_axes(axes, rank)?;
        }
        Ok(())
    }
}

/// The axes of a softmax over a rank-`rank` tensor, each in range and named once.
fn softmax_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &ax in axes {
        let a = resolve_axis(ax, rank)?;
        if out.contains(&a) {
            return Err(Error::new(format!(
                "softmax axis {ax} names axis {a} twice in {axes:?}"
            )));
        }
        out.push(a);
    }
    Ok(out)
}

fn softmax(g: &mut [f32], log: bool) {
    let max = g.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let sum: f64 = g.iter().map(|&v| (v as f64 - max).exp()).sum();
    for v in g.iter_mut() {
        let shifted = *v as f64 - max;
        *v = if log {
            shifted - sum.ln()
        } else {
            shifted.exp() / sum
        } as f32;
    }
}

/// An activation applied on its own.
#[derive(Debug)]
pub struct ActivationOp {
    /// The function.
    pub activation: Activation,
    /// Elements per call, for FLOPs.
    pub elements: usize,
}

impl Op for ActivationOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mut out = inputs[0].clone();
        self.activation.apply(&mut out);
        vec![out]
    }
    fn flops(&self) -> u64 {
        self.activation.flops_per_element() * self.elements as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let kernel = match self.activation.to_act() {
            Some(act) => Kernel::Activation(act),
            None => self.activation.softmax_kernel(&l.input_shapes[0])?,
        };
        l.unary(kernel, self.flops());
        Ok(())
    }
}

fn elementwise(ctx: &LayerCtx, activation: Activation) -> Result<Lowered> {
    over(ctx.input()?, activation)
}

/// `activation` applied to a tensor of `shape` (an Activation layer, or an operation).
pub(crate) fn over(shape: &Shape, activation: Activation) -> Result<Lowered> {
    activation.check_rank(shape.len())?;
    let elements = shape.iter().product();
    Ok(Lowered::one(
        ActivationOp {
            activation,
            elements,
        },
        shape.clone(),
    ))
}

fn build_activation(ctx: &mut LayerCtx) -> Result<Lowered> {
    let activation = Activation::from_config(ctx.config.get("activation"), ctx.dialect)?;
    elementwise(ctx, activation)
}

/// `ReLU(max_value, negative_slope, threshold)`.
#[derive(Debug)]
struct ReluOp {
    max_value: Option<f64>,
    negative_slope: f64,
    threshold: f64,
    elements: usize,
}

impl Op for ReluOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let f = |x: f32| {
            let x = x as f64;
            let y = if x >= self.threshold {
                x
            } else {
                self.negative_slope * (x - self.threshold)
            };
            match self.max_value {
                Some(m) => y.min(m),
                None => y,
            }
        };
        vec![inputs[0].mapv(|x| f(x) as f32)]
    }
    fn flops(&self) -> u64 {
        2 * self.elements as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let max = self.max_value.map_or(f32::INFINITY, |m| m as f32);
        // Keras runs this case as `relu` or `relu6`: a clamp, two instructions where
        // the threshold and slope take five.
        let act = if self.negative_slope == 0.0 && self.threshold == 0.0 {
            Act::Clip { lo: 0.0, hi: max }
        } else {
            Act::ReluFull {
                max,
                slope: self.negative_slope as f32,
                threshold: self.threshold as f32,
            }
        };
        l.unary(Kernel::Activation(act), self.flops());
        Ok(())
    }
}

fn build_relu(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        max_value: Option<f64>,
        #[serde(default)]
        negative_slope: f64,
        #[serde(default)]
        threshold: f64,
    }
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?.clone();
    let op = ReluOp {
        max_value: c.max_value,
        negative_slope: c.negative_slope,
        threshold: c.threshold,
        elements: shape.iter().product(),
    };
    Ok(Lowered::one(op, shape))
}

fn build_leaky_relu(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        negative_slope: Option<f64>,
        alpha: Option<f64>,
    }
    let c: Config = ctx.parse()?;
    // Keras 2 calls the slope `alpha`; both default to 0.3.
    elementwise(
        ctx,
        Activation::LeakyRelu(c.negative_slope.or(c.alpha).unwrap_or(0.3)),
    )
}

fn build_elu(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        alpha: Option<f64>,
    }
    let c: Config = ctx.parse()?;
    elementwise(ctx, Activation::Elu(c.alpha.unwrap_or(1.0)))
}

fn build_softmax(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default = "last_axis", deserialize_with = "axes")]
        axis: Vec<i64>,
    }
    fn last_axis() -> Vec<i64> {
        vec![-1]
    }
    let c: Config = ctx.parse()?;
    elementwise(ctx, Activation::Softmax(c.axis))
}

/// `ThresholdedReLU(theta)`: `x` where `x > theta`, else 0.
#[derive(Debug)]
struct ThresholdOp {
    theta: f32,
    elements: usize,
}

impl Op for ThresholdOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        vec![inputs[0].mapv(|x| if x > self.theta { x } else { 0.0 })]
    }
    fn flops(&self) -> u64 {
        self.elements as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        l.unary(
            Kernel::Activation(Act::Thresholded(self.theta)),
            self.flops(),
        );
        Ok(())
    }
}

fn build_thresholded_relu(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        theta: Option<f32>,
    }
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?.clone();
    let op = ThresholdOp {
        theta: c.theta.unwrap_or(1.0),
        elements: shape.iter().product(),
    };
    Ok(Lowered::one(op, shape))
}

/// `PReLU`: a learned slope per element, shared along `shared_axes`.
#[derive(Debug)]
struct PreluOp {
    alpha: Weight,
}

impl Op for PreluOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x = inputs[0];
        let mut out = x.clone();
        // alpha has the per-sample shape; broadcast over the batch.
        for mut sample in out.outer_iter_mut() {
            Zip::from(&mut sample)
                .and_broadcast(&self.alpha)
                .for_each(|v, &a| {
                    if *v < 0.0 {
                        *v *= a;
                    }
                });
        }
        vec![out]
    }
    fn flops(&self) -> u64 {
        self.alpha.len() as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        // alpha broadcasts over the batch and the shared axes (its length-1 axes).
        let axes: Vec<usize> = self
            .alpha
            .shape()
            .iter()
            .enumerate()
            .filter(|(_, &d)| d != 1)
            .map(|(i, _)| i + 1)
            .collect();
        let p = l.input_shapes[0].strided(&axes)?;
        let alpha = l.weight("alpha", self.alpha.iter().copied().collect());
        l.unary(Kernel::Prelu { p, alpha }, self.flops());
        Ok(())
    }
}

fn build_prelu(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        shared_axes: Option<Vec<usize>>,
    }
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?.clone();
    let mut alpha_shape: Vec<usize> = shape[1..].to_vec();
    for &ax in c.shared_axes.iter().flatten() {
        if ax == 0 || ax > alpha_shape.len() {
            bail!("shared axis {ax} is out of range for input {shape:?}");
        }
        alpha_shape[ax - 1] = 1;
    }
    let alpha = ctx.weight("alpha", &alpha_shape)?;
    Ok(Lowered::one(PreluOp { alpha }, shape))
}
