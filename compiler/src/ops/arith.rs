//! Arithmetic operations: the binary ones on tensors and constants (either side),
//! the elementwise functions, and the activation functions called as operations.

use super::{Arg, BuildFn, OpCtx};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::layers::activation::{self, Activation};
use crate::layers::core::affine;
use crate::layers::merge::{broadcast, elementwise};
use crate::layers::{Lowered, Op};
use crate::plan::{Kernel, Lower};
use kerac::merge::Fold;
use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};

/// Supported operations.
pub const OPERATIONS: &[(&str, BuildFn)] = &[
    ("Add", |ctx| binary(ctx, Fold::Add)),
    ("Subtract", |ctx| binary(ctx, Fold::Subtract)),
    ("Multiply", |ctx| binary(ctx, Fold::Multiply)),
    ("Divide", |ctx| binary(ctx, Fold::Divide)),
    ("TrueDivide", |ctx| binary(ctx, Fold::Divide)),
    ("Maximum", |ctx| binary(ctx, Fold::Maximum)),
    ("Minimum", |ctx| binary(ctx, Fold::Minimum)),
    ("Negative", negative),
    ("Square", square),
    ("Power", power),
    ("Absolute", |ctx| unary(ctx, Activation::Abs)),
    ("Abs", |ctx| unary(ctx, Activation::Abs)),
    ("Clip", clip),
    ("Sqrt", |ctx| unary(ctx, Activation::Sqrt)),
    ("Rsqrt", |ctx| unary(ctx, Activation::Rsqrt)),
    ("Log", |ctx| unary(ctx, Activation::Log)),
    ("Reciprocal", |ctx| unary(ctx, Activation::DivInto(1.0))),
    ("ZerosLike", |ctx| unary(ctx, Activation::Fill(0.0))),
    ("OnesLike", |ctx| unary(ctx, Activation::Fill(1.0))),
    ("FullLike", full_like),
    ("Where", where_),
    ("Matmul", matmul),
    ("Einsum", einsum),
    ("Exp", |ctx| named(ctx, "exponential")),
    ("Relu", |ctx| named(ctx, "relu")),
    ("Relu6", |ctx| named(ctx, "relu6")),
    ("Sigmoid", |ctx| named(ctx, "sigmoid")),
    ("HardSigmoid", |ctx| named(ctx, "hard_sigmoid")),
    ("Silu", |ctx| named(ctx, "silu")),
    ("Swish", |ctx| named(ctx, "silu")),
    ("HardSilu", |ctx| named(ctx, "hard_silu")),
    ("HardSwish", |ctx| named(ctx, "hard_silu")),
    ("Tanh", |ctx| named(ctx, "tanh")),
    ("Softplus", |ctx| named(ctx, "softplus")),
    ("Softsign", |ctx| named(ctx, "softsign")),
    ("Selu", |ctx| named(ctx, "selu")),
    ("Mish", |ctx| named(ctx, "mish")),
    ("Gelu", gelu),
    ("Elu", elu),
    ("LeakyRelu", leaky_relu),
    ("Softmax", softmax::<false>),
    ("LogSoftmax", softmax::<true>),
];

/// `x ∘ y` with either side a tensor or a constant.
fn binary(ctx: &OpCtx, fold: Fold) -> Result<Lowered> {
    let x = ctx.arg(0, &["x", "x1"])?;
    let y = ctx.arg(1, &["y", "x2"])?;
    match (x, y) {
        // Tensors become inputs in argument order, so `a` is input 0 and `b` input 1
        // (the same tensor twice for `x * x`).
        (Arg::Tensor(a), Arg::Tensor(b)) => {
            elementwise(fold, &[ctx.shape(a)?.clone(), ctx.shape(b)?.clone()])
        }
        (Arg::Tensor(t), Arg::Const(c)) => with_constant(ctx.shape(t)?, fold, c, false),
        (Arg::Const(c), Arg::Tensor(t)) => with_constant(ctx.shape(t)?, fold, c, true),
        (Arg::Const(_), Arg::Const(_)) => Err(Error::new(
            "both arguments are constants; expected at least one tensor",
        )),
    }
}

/// A constant against one sample of a tensor of `shape`: broadcasting it must leave
/// the tensor's shape as it is, and it must hold one value for every sample. Leading
/// axes are dropped down to the sample's rank.
fn per_sample(shape: &Shape, c: ArrayD<f32>) -> Result<ArrayD<f32>> {
    let out = broadcast(&[shape.clone(), c.shape().to_vec()])?;
    if &out != shape {
        bail!(
            "a constant of shape {:?} would broadcast the tensor {shape:?} to {out:?}; kerac supports constants that broadcast against the tensor",
            c.shape()
        );
    }
    let mut dims: Vec<usize> = vec![1; shape.len().saturating_sub(c.ndim())];
    dims.extend(c.shape());
    if dims[0] != 1 {
        bail!(
            "a constant of shape {:?} differs along the batch axis; expected one value for every sample",
            c.shape()
        );
    }
    c.into_shape_with_order(IxDyn(&dims[1..]))
        .map_err(|e| Error::new(e.to_string()))
}

/// `where(condition, x, y)` with a constant condition: `x` where it holds, `y` where
/// not. With one side constant this is `x * m + (1 - m) * y` for the 0/1 mask `m`,
/// one scale-and-shift; with both sides tensors, two and a sum. Both are exact for
/// finite values (a product with 0 or 1 and a sum with 0 round nothing).
fn where_(ctx: &OpCtx) -> Result<Lowered> {
    let Arg::Const(condition) = ctx.arg(0, &["condition"])? else {
        bail!("where with a condition computed from tensors is not supported; kerac supports a constant condition");
    };
    let mask = condition.mapv(|v| if v != 0.0 { 1.0f32 } else { 0.0 });
    let x = ctx.arg(1, &["x1", "x"])?;
    let y = ctx.arg(2, &["x2", "y"])?;
    let ones = |m: &ArrayD<f32>| m.mapv(|v| 1.0 - v);
    match (x, y) {
        (Arg::Tensor(a), Arg::Const(c)) => {
            let shape = ctx.shape(a)?;
            let m = per_sample(shape, mask)?;
            let c = per_sample(shape, c)?;
            let offset = &ones(&m) * &c;
            check_finite(&c)?;
            Ok(affine(m, offset, shape.clone()))
        }
        (Arg::Const(c), Arg::Tensor(b)) => {
            let shape = ctx.shape(b)?;
            let m = per_sample(shape, mask)?;
            let c = per_sample(shape, c)?;
            check_finite(&c)?;
            let offset = &m * &c;
            Ok(affine(ones(&m), offset, shape.clone()))
        }
        (Arg::Tensor(a), Arg::Tensor(b)) => {
            let (sa, sb) = (ctx.shape(a)?, ctx.shape(b)?);
            if sa != sb {
                bail!("where over tensors of shapes {sa:?} and {sb:?}: kerac supports tensors of one shape");
            }
            let mask = per_sample(sa, mask)?;
            let elements = crate::layers::elements(sa)?;
            Ok(Lowered::one(WhereOp { mask, elements }, sa.clone()))
        }
        (Arg::Const(_), Arg::Const(_)) => Err(Error::new(
            "both sides of where are constants; expected at least one tensor",
        )),
    }
}

fn check_finite(c: &ArrayD<f32>) -> Result<()> {
    match c.iter().find(|v| !v.is_finite()) {
        Some(v) => Err(Error::new(format!("the constant {v} is not finite"))),
        None => Ok(()),
    }
}

/// `where(m, a, b)` over two tensors of one shape, `m` a constant 0/1 mask against one
/// sample.
#[derive(Debug)]
struct WhereOp {
    mask: ArrayD<f32>,
    elements: usize,
}

impl Op for WhereOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mut out = inputs[0].clone();
        for (mut sample, other) in out.outer_iter_mut().zip(inputs[1].outer_iter()) {
            ndarray::Zip::from(&mut sample)
                .and(&other)
                .and_broadcast(&self.mask)
                .for_each(|v, &b, &m| {
                    if m == 0.0 {
                        *v = b;
                    }
                });
        }
        vec![out]
    }
    fn flops(&self) -> u64 {
        // Two scale-and-shifts and a sum.
        5 * self.elements as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let shape = l.output_shapes[0].clone();
        let n: usize = shape.iter().product();
        let zeros = ArrayD::<f32>::zeros(self.mask.raw_dim());
        let keep = self.mask.clone();
        let other = self.mask.mapv(|v| 1.0 - v);
        let (a, b) = (l.inputs[0], l.inputs[1]);
        let kept = l.temp(n);
        let k = crate::layers::core::scale_shift(l, &keep, &zeros)?;
        l.step(k, vec![a], kept, 2 * n as u64);
        let others = l.temp(n);
        let k = crate::layers::core::scale_shift(l, &other, &zeros)?;
        l.step(k, vec![b], others, 2 * n as u64);
        merge_into_output(l, Fold::Add, &shape, vec![kept, others])
    }
}

/// A tensor of `shape` folded with a constant; `constant_first` for `c - x` and the
/// like.
fn with_constant(
    shape: &Shape,
    fold: Fold,
    c: ArrayD<f32>,
    constant_first: bool,
) -> Result<Lowered> {
    let rank = shape.len() - 1;
    let sample = per_sample(shape, c)?;
    let ones = || ArrayD::<f32>::ones(IxDyn(&vec![1; rank]));
    let zeros = || ArrayD::<f32>::zeros(IxDyn(&vec![1; rank]));
    let scalar = sample.len() == 1;
    let (scale, offset) = match (fold, constant_first) {
        (Fold::Add, _) => (ones(), sample),
        (Fold::Subtract, false) => (ones(), sample.mapv(|v| -v)),
        (Fold::Subtract, true) => (ones().mapv(|v| -v), sample),
        (Fold::Multiply, _) => (sample, zeros()),
        (Fold::Divide, false) => (sample.mapv(|v| 1.0 / v), zeros()),
        (Fold::Maximum | Fold::Minimum, _) if scalar => {
            let v = sample.iter().next().copied().unwrap_or(0.0) as f64;
            let activation = if fold == Fold::Maximum {
                Activation::Max(v)
            } else {
                Activation::Min(v)
            };
            return finite(v).and_then(|_| activation::over(shape, activation));
        }
        (Fold::Maximum | Fold::Minimum, _) => {
            return with_constant_tensor(shape, fold, sample, constant_first)
        }
        (Fold::Divide, true) if scalar => {
            let v = sample.iter().next().copied().unwrap_or(0.0) as f64;
            return finite(v).and_then(|_| activation::over(shape, Activation::DivInto(v)));
        }
        (Fold::Divide, true) => return with_constant_tensor(shape, fold, sample, true),
        (Fold::Average, _) => return Err(Error::new("internal: average is not an operation")),
    };
    Ok(affine(scale, offset, shape.clone()))
}

/// `x ∘ c` (or `c ∘ x`) for a constant `c` that varies across the sample, where no
/// scale-and-shift or activation computes it (maximum, minimum, a constant divided by a
/// tensor): `c` is first written out in full, then merged with `x` like two tensors.
fn with_constant_tensor(
    shape: &Shape,
    fold: Fold,
    sample: ArrayD<f32>,
    constant_first: bool,
) -> Result<Lowered> {
    check_finite(&sample)?;
    Ok(Lowered::one(
        ConstantMergeOp {
            fold,
            constant: sample,
            constant_first,
            elements: crate::layers::elements(shape)?,
        },
        shape.clone(),
    ))
}

/// A tensor merged with a constant spread over it.
#[derive(Debug)]
struct ConstantMergeOp {
    fold: Fold,
    /// Against one sample.
    constant: ArrayD<f32>,
    constant_first: bool,
    elements: usize,
}

impl Op for ConstantMergeOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mut out = inputs[0].clone();
        for mut sample in out.outer_iter_mut() {
            ndarray::Zip::from(&mut sample)
                .and_broadcast(&self.constant)
                .for_each(|v, &c| {
                    let (a, b) = if self.constant_first {
                        (c, *v)
                    } else {
                        (*v, c)
                    };
                    *v = self.fold.apply(a, b);
                });
        }
        vec![out]
    }
    fn flops(&self) -> u64 {
        // The shift that writes the constant out, and the merge.
        3 * self.elements as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let shape = l.output_shapes[0].clone();
        let n: usize = shape.iter().product();
        let x = l.inputs[0];
        // Zeros, then the constant added: exactly the constant, whatever `x` holds.
        let zeros = l.temp(n);
        l.step(Kernel::Activation(kerac::Act::Fill(0.0)), vec![x], zeros, 0);
        let constant = l.temp(n);
        let ones = ArrayD::<f32>::ones(self.constant.raw_dim());
        let k = crate::layers::core::scale_shift(l, &ones, &self.constant)?;
        l.step(k, vec![zeros], constant, 2 * n as u64);
        let inputs = if self.constant_first {
            vec![constant, x]
        } else {
            vec![x, constant]
        };
        merge_into_output(l, self.fold, &shape, inputs)
    }
}

/// Output 0 as `a ∘ b` for two buffers of the output's `shape`.
fn merge_into_output(l: &mut Lower, fold: Fold, shape: &Shape, inputs: Vec<usize>) -> Result<()> {
    let padded = crate::plan::lower::padded(shape)?;
    let strides = crate::plan::lower::broadcast_strides(shape, &padded)?;
    let out = l.output(0);
    l.step(
        Kernel::Merge {
            fold,
            shape: padded,
            strides: vec![strides; inputs.len()],
        },
        inputs,
        out,
        shape.iter().product::<usize>() as u64,
    );
    Ok(())
}

fn finite(v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::new(format!("the constant {v} is not finite")))
    }
}

/// An input folded with itself (`x * x`, `x + x`): one merge over the same buffer twice.
#[derive(Debug)]
struct SelfFoldOp {
    fold: Fold,
    elements: usize,
}

impl Op for SelfFoldOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        vec![inputs[0].mapv(|v| self.fold.apply(v, v))]
    }
    fn flops(&self) -> u64 {
        self.elements as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let shape = crate::plan::lower::padded(&l.input_shapes[0])?;
        let strides = crate::plan::lower::broadcast_strides(&l.input_shapes[0], &shape)?;
        let out = l.output(0);
        let input = l.inputs[0];
        l.step(
            Kernel::Merge {
                fold: self.fold,
                shape,
                strides: vec![strides, strides],
            },
            vec![input, input],
            out,
            self.flops(),
        );
        Ok(())
    }
}

fn unary_input<'a>(ctx: &OpCtx<'a>) -> Result<&'a Shape> {
    let t = ctx.tensor(0, &["x"])?;
    ctx.shape(t)
}

fn negative(ctx: &OpCtx) -> Result<Lowered> {
    let shape = unary_input(ctx)?;
    let rank = shape.len() - 1;
    Ok(affine(
        ArrayD::from_elem(IxDyn(&vec![1; rank]), -1.0),
        ArrayD::zeros(IxDyn(&vec![1; rank])),
        shape.clone(),
    ))
}

fn square(ctx: &OpCtx) -> Result<Lowered> {
    let shape = unary_input(ctx)?;
    Ok(Lowered::one(
        SelfFoldOp {
            fold: Fold::Multiply,
            elements: shape.iter().product(),
        },
        shape.clone(),
    ))
}

fn power(ctx: &OpCtx) -> Result<Lowered> {
    let exponent = match ctx.arg(1, &["y", "x2"])? {
        Arg::Const(c) if c.len() == 1 => c.iter().next().copied().unwrap_or(f32::NAN),
        _ => {
            return Err(Error::new(
                "power is supported with a constant scalar exponent only",
            ))
        }
    };
    let shape = unary_input(ctx)?;
    // The exponents with an exact form of their own take it.
    let activation = match exponent {
        1.0 => return ctx.via_layer("Identity", json!({})),
        2.0 => return square(ctx),
        0.0 => Activation::Fill(1.0),
        0.5 => Activation::Sqrt,
        -0.5 => Activation::Rsqrt,
        -1.0 => Activation::DivInto(1.0),
        p if p.is_finite() => Activation::Pow(p as f64),
        p => bail!("the exponent {p} is not finite"),
    };
    activation::over(shape, activation)
}

/// An elementwise function with no options.
fn unary(ctx: &OpCtx, activation: Activation) -> Result<Lowered> {
    activation::over(unary_input(ctx)?, activation)
}

fn full_like(ctx: &OpCtx) -> Result<Lowered> {
    let value = ctx
        .number(Some(1), &["fill_value"])?
        .ok_or_else(|| Error::new("full_like needs a constant `fill_value`"))?;
    finite(value)?;
    unary(ctx, Activation::Fill(value))
}

fn clip(ctx: &OpCtx) -> Result<Lowered> {
    let shape = unary_input(ctx)?;
    let lo = ctx
        .number(Some(1), &["x_min", "clip_value_min"])?
        .filter(|v| v.is_finite());
    let hi = ctx
        .number(Some(2), &["x_max", "clip_value_max"])?
        .filter(|v| v.is_finite());
    let activation = match (lo, hi) {
        (Some(lo), Some(hi)) => Activation::Clip(lo, hi),
        (Some(lo), None) => Activation::Max(lo),
        (None, Some(hi)) => Activation::Min(hi),
        (None, None) => return ctx.via_layer("Identity", json!({})),
    };
    activation::over(shape, activation)
}

/// An activation function with no options, as the activation of the same name.
fn named(ctx: &OpCtx, name: &str) -> Result<Lowered> {
    unary(ctx, Activation::from_name(name, ctx.dialect)?)
}

fn gelu(ctx: &OpCtx) -> Result<Lowered> {
    // `ops.gelu` defaults to the tanh approximation; `tf.nn.gelu` to the exact form.
    let default = ctx.dialect == crate::keras::Dialect::Keras3;
    let approximate = ctx.flag(Some(1), &["approximate"], default);
    unary(ctx, Activation::Gelu(approximate))
}

fn elu(ctx: &OpCtx) -> Result<Lowered> {
    let alpha = ctx.number(Some(1), &["alpha"])?.unwrap_or(1.0);
    unary(ctx, Activation::Elu(alpha))
}

fn leaky_relu(ctx: &OpCtx) -> Result<Lowered> {
    let slope = ctx
        .number(Some(1), &["negative_slope", "alpha"])?
        .unwrap_or(0.2);
    unary(ctx, Activation::LeakyRelu(slope))
}

fn softmax<const LOG: bool>(ctx: &OpCtx) -> Result<Lowered> {
    let axes = ctx.axes(Some(1), &["axis"])?.unwrap_or(vec![-1]);
    let activation = if LOG {
        Activation::LogSoftmax(axes)
    } else {
        Activation::Softmax(axes)
    };
    unary(ctx, activation)
}

/// `x @ c` with a constant matrix is a Dense layer without bias (and folds like one);
/// `a @ b` between two rank-3 tensors is the Dot layer's batched product.
fn matmul(ctx: &OpCtx) -> Result<Lowered> {
    let x = ctx.arg(0, &["x1", "a"])?;
    let y = ctx.arg(1, &["x2", "b"])?;
    product(ctx, x, y, [2, 1])
}

/// The einsum forms the existing kernels compute: `...j,jk->...k` with a constant
/// matrix (a Dense layer) and the batched products `bij,bjk->bik` and `bij,bkj->bik`
/// of two rank-3 tensors (the Dot layer).
fn einsum(ctx: &OpCtx) -> Result<Lowered> {
    let subscripts = ctx
        .raw(None, &["subscripts", "equation"])
        .and_then(Value::as_str)
        .ok_or_else(|| Error::new("einsum needs its `subscripts`"))?;
    let compact: String = subscripts.chars().filter(|c| !c.is_whitespace()).collect();
    let unsupported = || {
        Error::new(format!(
            "einsum `{subscripts}` is not supported; kerac computes `...j,jk->...k` with a constant matrix and `bij,bjk->bik` or `bij,bkj->bik` between tensors"
        ))
    };
    let (inputs, output) = compact.split_once("->").ok_or_else(unsupported)?;
    let (a, b) = inputs.split_once(',').ok_or_else(unsupported)?;
    let x = ctx.arg(0, &["x"])?;
    let y = ctx.arg(1, &["y"])?;
    let letters = |s: &str| s.chars().collect::<Vec<char>>();
    let (la, lb, lo) = (letters(a), letters(b), letters(output));
    match (&x, &y) {
        // `<prefix>j,jk-><prefix>k`: the prefix passes through, j contracts.
        (Arg::Tensor(_), Arg::Const(_))
            if lb.len() == 2
                && la.last() == Some(&lb[0])
                && lo.last() == Some(&lb[1])
                && lb[0] != lb[1]
                && la[..la.len() - 1] == lo[..lo.len() - 1]
                && !la[..la.len() - 1].contains(&lb[0])
                && !la[..la.len() - 1].contains(&lb[1]) =>
        {
            product(ctx, x, y, [2, 1])
        }
        (Arg::Tensor(_), Arg::Tensor(_)) if la.len() == 3 && lb.len() == 3 && lo.len() == 3 => {
            let (bt, i, j) = (la[0], la[1], la[2]);
            let distinct = bt != i && bt != j && i != j;
            match (lb.as_slice(), lo.as_slice()) {
                ([b0, b1, k], [o0, o1, o2])
                    if distinct
                        && *b0 == bt
                        && *b1 == j
                        && *k != bt
                        && *k != i
                        && *k != j
                        && [*o0, *o1, *o2] == [bt, i, *k] =>
                {
                    product(ctx, x, y, [2, 1])
                }
                ([b0, k, b2], [o0, o1, o2])
                    if distinct
                        && *b0 == bt
                        && *b2 == j
                        && *k != bt
                        && *k != i
                        && *k != j
                        && [*o0, *o1, *o2] == [bt, i, *k] =>
                {
                    product(ctx, x, y, [2, 2])
                }
                _ => Err(unsupported()),
            }
        }
        _ => Err(unsupported()),
    }
}

/// `x · y` contracting `axes` (the Dot layer's, for two tensors; `[2, 1]` for a
/// tensor times a constant matrix, which is a Dense layer).
fn product(ctx: &OpCtx, x: Arg, y: Arg, axes: [usize; 2]) -> Result<Lowered> {
    match (x, y) {
        (Arg::Tensor(t), Arg::Const(c)) => {
            let shape = ctx.shape(t)?;
            let k = shape.last().copied().unwrap_or(0);
            if c.ndim() != 2 || c.shape()[0] != k || shape.len() < 2 {
                bail!(
                    "matmul of a tensor {shape:?} with a constant {:?}: expected a constant matrix with {k} rows",
                    c.shape()
                );
            }
            let n = c.shape()[1];
            let rows = shape[..shape.len() - 1].iter().product();
            let mut out = shape.clone();
            *out.last_mut().unwrap_or(&mut 0) = n;
            let kernel = c.as_standard_layout().into_owned();
            Ok(Lowered::one(
                crate::layers::core::DenseOp {
                    kernel,
                    bias: None,
                    activation: Activation::Linear,
                    rows,
                },
                out,
            ))
        }
        (Arg::Tensor(a), Arg::Tensor(b)) => {
            let (ra, rb) = (ctx.shape(a)?.len(), ctx.shape(b)?.len());
            if ra != 3 || rb != 3 {
                bail!(
                    "matmul of two tensors is supported for rank 3 (a batch of matrices) only, found ranks {ra} and {rb}"
                );
            }
            ctx.via_layer("Dot", json!({ "axes": axes }))
        }
        _ => Err(Error::new(
            "matmul is supported as tensor @ constant matrix or tensor @ tensor",
        )),
    }
}
