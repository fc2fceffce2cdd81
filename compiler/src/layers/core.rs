//! Core layers: Dense, the inference no-ops (Dropout and friends), Flatten, Reshape,
//! Permute, RepeatVector, Rescaling and Normalization.

use super::activation::Activation;
use super::{axes, elements, resolve_axis, BuildFn, LayerCtx, Lowered, Op, Weight};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::plan::{lower::padded, Kernel, Lower, StridedAxes};
use ndarray::{ArrayD, IxDyn, Zip};
use serde::Deserialize;
use serde_json::Value;

/// Supported layer classes.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("Dense", build_dense),
    ("Dropout", build_identity),
    ("SpatialDropout1D", build_identity),
    ("SpatialDropout2D", build_identity),
    ("SpatialDropout3D", build_identity),
    ("GaussianNoise", build_identity),
    ("GaussianDropout", build_identity),
    ("AlphaDropout", build_identity),
    ("ActivityRegularization", build_identity),
    ("Identity", build_identity),
    ("Flatten", build_flatten),
    ("Reshape", build_reshape),
    ("Permute", build_permute),
    ("RepeatVector", build_repeat_vector),
    ("Rescaling", build_rescaling),
    ("Normalization", build_normalization),
];

/// `y = act(x W + b)` along the last axis.
#[derive(Debug)]
pub struct DenseOp {
    /// `[in, units]`.
    pub kernel: Weight,
    /// `[units]`, when the layer has one.
    pub bias: Option<Weight>,
    /// Fused activation.
    pub activation: Activation,
    /// Rows per call (all axes but the last).
    pub rows: usize,
}

impl Op for DenseOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x = inputs[0];
        let (k, n) = (self.kernel.shape()[0], self.kernel.shape()[1]);
        let w = self.kernel.as_slice().unwrap_or_default();
        let xs = x.as_slice().unwrap_or_default();
        let mut out = vec![0f32; self.rows * n];
        let mut acc = vec![0f64; n];
        for r in 0..self.rows {
            match &self.bias {
                Some(b) => acc
                    .iter_mut()
                    .zip(b.iter())
                    .for_each(|(a, &b)| *a = b as f64),
                None => acc.fill(0.0),
            }
            for (i, &xv) in xs[r * k..(r + 1) * k].iter().enumerate() {
                let xv = xv as f64;
                for (a, &wv) in acc.iter_mut().zip(&w[i * n..(i + 1) * n]) {
                    *a += xv * wv as f64;
                }
            }
            for (o, &a) in out[r * n..(r + 1) * n].iter_mut().zip(&acc) {
                *o = a as f32;
            }
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = n;
        let mut y = super::tensor(&shape, out);
        self.activation.apply(&mut y);
        vec![y]
    }
    fn flops(&self) -> u64 {
        let n = self.kernel.shape()[1];
        (2 * self.kernel.len() as u64 + self.activation.flops_per_element() * n as u64)
            * self.rows as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let (k, n) = (self.kernel.shape()[0], self.kernel.shape()[1]);
        let w = l.weight("kernel", self.kernel.iter().copied().collect());
        let b = self
            .bias
            .as_ref()
            .map(|b| l.weight("bias", b.iter().copied().collect()));
        let rows = self.rows;
        super::lower_with_activation(l, &self.activation, self.flops(), |act| Kernel::Dense {
            p: kerac::dense::Dense { rows, k, n, act },
            w,
            b,
        })
    }
}

fn build_dense(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        units: usize,
        #[serde(default = "yes")]
        use_bias: bool,
    }
    let c: Config = ctx.parse()?;
    let activation = Activation::from_config(ctx.config.get("activation"), ctx.dialect)?;
    let shape = ctx.input()?.clone();
    if shape.len() < 2 {
        bail!("expected an input of rank 2 or more, found {shape:?}");
    }
    let k = shape[shape.len() - 1];
    let kernel = ctx.weight("kernel", &[k, c.units])?;
    let bias = if c.use_bias {
        Some(ctx.weight("bias", &[c.units])?)
    } else {
        None
    };
    let mut out = shape.clone();
    *out.last_mut().unwrap_or(&mut 0) = c.units;
    activation.check_rank(out.len())?;
    let rows = shape[..shape.len() - 1].iter().product();
    Ok(Lowered::one(
        DenseOp {
            kernel,
            bias,
            activation,
            rows,
        },
        out,
    ))
}

fn yes() -> bool {
    true
}

/// A layer that does nothing at inference (Dropout and friends).
#[derive(Debug)]
pub struct IdentityOp;

impl Op for IdentityOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        vec![inputs[0].clone()]
    }
    fn flops(&self) -> u64 {
        0
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let input = l.inputs[0];
        l.alias(0, input);
        Ok(())
    }
}

pub(crate) fn build_identity(ctx: &mut LayerCtx) -> Result<Lowered> {
    Ok(Lowered::one(IdentityOp, ctx.input()?.clone()))
}

/// A change of shape that keeps the row-major order of the values.
#[derive(Debug)]
pub struct ReshapeOp {
    /// Output shape, batch first.
    pub shape: Shape,
}

impl Op for ReshapeOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let data: Vec<f32> = inputs[0].iter().copied().collect();
        vec![super::tensor(&self.shape, data)]
    }
    fn flops(&self) -> u64 {
        0
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        // Row-major order is unchanged: the output is the input's buffer.
        let input = l.inputs[0];
        l.alias(0, input);
        Ok(())
    }
}

/// Row-major strides of a shape.
fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// A strided copy producing `out` by reading the input through `strides` (one per
/// output axis).
fn strided_copy(l: &mut Lower, out: &[usize], strides: &[usize]) -> Result<()> {
    let shape = padded(out)?;
    let mut padded_strides = [0; kerac::merge::RANK];
    padded_strides[kerac::merge::RANK - strides.len()..].copy_from_slice(strides);
    l.unary(
        Kernel::StridedCopy(kerac::shape::Strided {
            shape,
            strides: padded_strides,
            offset: 0,
        }),
        0,
    );
    Ok(())
}

fn build_flatten(ctx: &mut LayerCtx) -> Result<Lowered> {
    if let Some(format) = ctx.config.get("data_format").and_then(Value::as_str) {
        super::geometry::check_channels_last(Some(format))?;
    }
    let shape = ctx.input()?;
    let out = vec![shape[0], shape[1..].iter().product()];
    Ok(Lowered::one(ReshapeOp { shape: out.clone() }, out))
}

fn build_reshape(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        target_shape: Vec<i64>,
    }
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?;
    let total: usize = shape[1..].iter().product();
    let bad = || {
        Error::new(format!(
            "cannot reshape {:?} (per sample) to {:?}",
            &shape[1..],
            c.target_shape
        ))
    };
    let unknown = c.target_shape.iter().filter(|&&d| d == -1).count();
    if unknown > 1 || c.target_shape.iter().any(|&d| d < -1 || d == 0) {
        return Err(bad());
    }
    let known = c
        .target_shape
        .iter()
        .filter(|&&d| d != -1)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .filter(|&k| k > 0 && total.is_multiple_of(k))
        .ok_or_else(bad)?;
    let mut out = vec![shape[0]];
    out.extend(
        c.target_shape
            .iter()
            .map(|&d| if d == -1 { total / known } else { d as usize }),
    );
    if out[1..]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        != Some(total)
    {
        return Err(bad());
    }
    Ok(Lowered::one(ReshapeOp { shape: out.clone() }, out))
}

/// Reorders the axes after the batch.
#[derive(Debug)]
struct PermuteOp {
    order: Vec<usize>,
}

impl Op for PermuteOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        vec![inputs[0]
            .view()
            .permuted_axes(IxDyn(&self.order))
            .as_standard_layout()
            .into_owned()]
    }
    fn flops(&self) -> u64 {
        0
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let input = strides_of(&l.input_shapes[0]);
        let strides: Vec<usize> = self.order.iter().map(|&d| input[d]).collect();
        let out = l.output_shapes[0].clone();
        strided_copy(l, &out, &strides)
    }
}

fn build_permute(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        dims: Vec<usize>,
    }
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?;
    let mut sorted = c.dims.clone();
    sorted.sort_unstable();
    if sorted != (1..shape.len()).collect::<Vec<_>>() {
        bail!(
            "dims {:?} is not a permutation of 1..={} for input {shape:?}",
            c.dims,
            shape.len() - 1
        );
    }
    let mut order = vec![0];
    order.extend(&c.dims);
    let out = order.iter().map(|&d| shape[d]).collect();
    Ok(Lowered::one(PermuteOp { order }, out))
}

/// `[batch, features]` to `[batch, n, features]`.
#[derive(Debug)]
struct RepeatOp {
    n: usize,
}

impl Op for RepeatOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x = inputs[0];
        let (b, f) = (x.shape()[0], x.shape()[1]);
        let mut out = ArrayD::zeros(IxDyn(&[b, self.n, f]));
        for (mut o, xi) in out.outer_iter_mut().zip(x.outer_iter()) {
            for mut row in o.outer_iter_mut() {
                row.assign(&xi);
            }
        }
        vec![out]
    }
    fn flops(&self) -> u64 {
        0
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let features = l.input_shapes[0][1];
        let out = l.output_shapes[0].clone();
        strided_copy(l, &out, &[features, 0, 1])
    }
}

fn build_repeat_vector(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        n: usize,
    }
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?;
    if shape.len() != 2 {
        bail!("expected a rank-2 input, found {shape:?}");
    }
    let out = vec![shape[0], c.n, shape[1]];
    elements(&out)?;
    Ok(Lowered::one(RepeatOp { n: c.n }, out))
}

/// `y = x * scale + offset`, or a normalisation `(x - mean) / std`, with per-axis
/// values broadcast against one sample.
#[derive(Debug)]
struct AffineOp {
    scale: ArrayD<f32>,
    offset: ArrayD<f32>,
    elements: usize,
}

impl Op for AffineOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mut out = inputs[0].clone();
        for mut sample in out.outer_iter_mut() {
            Zip::from(&mut sample)
                .and_broadcast(&self.scale)
                .and_broadcast(&self.offset)
                .for_each(|v, &s, &o| *v = (*v as f64 * s as f64 + o as f64) as f32);
        }
        vec![out]
    }
    fn flops(&self) -> u64 {
        2 * self.elements as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let kernel = scale_shift(l, &self.scale, &self.offset)?;
        l.unary(kernel, self.flops());
        Ok(())
    }
}

/// The kernel of `x * scale + offset` over input 0 of `l`, `scale` and `offset` shaped to
/// broadcast against one sample.
pub(crate) fn scale_shift(
    l: &mut Lower,
    scale: &ArrayD<f32>,
    offset: &ArrayD<f32>,
) -> Result<Kernel> {
    // Bring scale and offset to one per-sample parameter shape, then view the input
    // along that shape's non-unit axes.
    let param: Vec<usize> = scale
        .shape()
        .iter()
        .zip(offset.shape())
        .map(|(&a, &b)| a.max(b))
        .collect();
    let expand = |a: &ArrayD<f32>| -> Result<Vec<f32>> {
        a.broadcast(IxDyn(&param))
            .map(|v| v.iter().copied().collect())
            .ok_or_else(|| Error::new("scale and offset shapes do not broadcast"))
    };
    let (mut scale, mut offset) = (expand(scale)?, expand(offset)?);
    let mut axes: Vec<usize> = param
        .iter()
        .enumerate()
        .filter(|(_, &d)| d != 1)
        .map(|(i, _)| i + 1)
        .collect();
    let rank = l.input_shapes[0].len();
    if axes.is_empty() && rank > 1 {
        // A scalar spread over the last axis: a per-channel map folds into the Dense
        // or Conv before it.
        let channels = l.input_shapes[0][rank - 1];
        scale = vec![scale[0]; channels];
        offset = vec![offset[0]; channels];
        axes.push(rank - 1);
    }
    let p = l.input_shapes[0].strided(&axes)?;
    let scale = l.weight("scale", scale);
    let offset = l.weight("offset", offset);
    Ok(Kernel::ScaleShift { p, scale, offset })
}

/// `x * scale + offset`, both shaped to broadcast against one sample of `shape`.
pub(crate) fn affine(scale: ArrayD<f32>, offset: ArrayD<f32>, shape: Shape) -> Lowered {
    let elements = shape.iter().product();
    Lowered::one(
        AffineOp {
            scale,
            offset,
            elements,
        },
        shape,
    )
}

fn scalar_or_list(v: Option<&Value>, default: f32) -> Result<Vec<f32>> {
    match v {
        None | Some(Value::Null) => Ok(vec![default]),
        Some(Value::Number(n)) => Ok(vec![n.as_f64().unwrap_or(default as f64) as f32]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| Error::new(format!("expected numbers, found {i}")))
            })
            .collect(),
        Some(other) => Err(Error::new(format!(
            "expected a number or a list, found {other}"
        ))),
    }
}

/// A per-channel (last axis) or scalar value, shaped to broadcast against one sample.
fn along_last(values: Vec<f32>, sample: &[usize]) -> Result<ArrayD<f32>> {
    let mut shape = vec![1; sample.len()];
    if values.len() != 1 {
        if sample.last() != Some(&values.len()) {
            bail!(
                "{} values do not fit the last axis of {sample:?}",
                values.len()
            );
        }
        *shape.last_mut().unwrap_or(&mut 0) = values.len();
    }
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| Error::new(e.to_string()))
}

fn build_rescaling(ctx: &mut LayerCtx) -> Result<Lowered> {
    let shape = ctx.input()?.clone();
    let scale = along_last(scalar_or_list(ctx.config.get("scale"), 1.0)?, &shape[1..])?;
    let offset = along_last(scalar_or_list(ctx.config.get("offset"), 0.0)?, &shape[1..])?;
    Ok(affine(scale, offset, shape))
}

fn build_normalization(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default = "last_axis", deserialize_with = "maybe_axes")]
        axis: Vec<i64>,
        #[serde(default)]
        invert: bool,
    }
    fn last_axis() -> Vec<i64> {
        vec![-1]
    }
    fn maybe_axes<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Vec<i64>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => axes(v).map_err(serde::de::Error::custom),
        }
    }
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?.clone();
    let rank = shape.len();
    let mut keep: Vec<usize> = c
        .axis
        .iter()
        .map(|&a| resolve_axis(a, rank))
        .collect::<Result<_>>()?;
    keep.sort_unstable();
    if keep.contains(&0) {
        return Err(Error::new(
            "normalizing along the batch axis is not supported",
        ));
    }
    let stat_shape: Vec<usize> = keep.iter().map(|&d| shape[d]).collect();
    let count = elements(&stat_shape)?;
    // Statistics from the config may be one value for all: keep it one value and let
    // broadcasting spread it, so the config's size bounds what we hold.
    let (mean, variance, held_shape) = match ctx.config.get("mean").filter(|m| !m.is_null()) {
        Some(m) => {
            let mean = scalar_or_list(Some(m), 0.0)?;
            let var = scalar_or_list(ctx.config.get("variance"), 1.0)?;
            let scalar = mean.len() == 1 && var.len() == 1;
            if !scalar && (mean.len() != count || var.len() != count) {
                bail!(
                    "{} mean and {} variance values do not fit shape {stat_shape:?}",
                    mean.len(),
                    var.len()
                );
            }
            let held = if scalar {
                vec![1; keep.len()]
            } else {
                stat_shape.clone()
            };
            (mean, var, held)
        }
        None => {
            let mean = ctx.weight("mean", &stat_shape)?;
            let variance = ctx.weight("variance", &stat_shape)?;
            ctx.weight("count", &[])?;
            (
                mean.into_iter().collect(),
                variance.into_iter().collect(),
                stat_shape.clone(),
            )
        }
    };
    let mut broadcast = vec![1; rank - 1];
    for (&d, &n) in keep.iter().zip(&held_shape) {
        broadcast[d - 1] = n;
    }
    // Keras divides by max(sqrt(variance), epsilon) with its epsilon 1e-7.
    let std: Vec<f32> = variance
        .iter()
        .map(|&v| (v as f64).sqrt().max(1e-7) as f32)
        .collect();
    let to = |v: Vec<f32>| {
        ArrayD::from_shape_vec(IxDyn(&broadcast), v).map_err(|e| Error::new(e.to_string()))
    };
    let (scale, offset): (Vec<f32>, Vec<f32>) = if c.invert {
        (std.clone(), mean.clone())
    } else {
        (
            std.iter().map(|&s| (1.0 / s as f64) as f32).collect(),
            mean.iter()
                .zip(&std)
                .map(|(&m, &s)| (-(m as f64) / s as f64) as f32)
                .collect(),
        )
    };
    let elements = shape.iter().product();
    Ok(Lowered::one(
        AffineOp {
            scale: to(scale)?,
            offset: to(offset)?,
            elements,
        },
        shape,
    ))
}
