//! Merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum (with broadcasting),
//! Concatenate (any axis) and Dot (axes, normalize).

use super::geometry::for_each_group;
use super::{axes, resolve_axis, BuildFn, LayerCtx, Lowered, Op};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::plan::lower::{broadcast_strides, padded};
use crate::plan::{Kernel, Lower};
use kerac::merge::Fold;
use ndarray::{ArrayD, Axis, IxDyn};
use serde::Deserialize;

/// Supported layer classes.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("Add", build_elementwise::<ADD>),
    ("Subtract", build_elementwise::<SUBTRACT>),
    ("Multiply", build_elementwise::<MULTIPLY>),
    ("Average", build_elementwise::<AVERAGE>),
    ("Maximum", build_elementwise::<MAXIMUM>),
    ("Minimum", build_elementwise::<MINIMUM>),
    ("Concatenate", build_concatenate),
    ("Dot", build_dot),
];

const ADD: u8 = 0;
const SUBTRACT: u8 = 1;
const MULTIPLY: u8 = 2;
const AVERAGE: u8 = 3;
const MAXIMUM: u8 = 4;
const MINIMUM: u8 = 5;
const DIVIDE: u8 = 6;

/// The elementwise fold of tensors of `shapes` (broadcast together), as the merge
/// layers compute it: for the arithmetic operations on two tensors.
pub(crate) fn elementwise(fold: Fold, shapes: &[Shape]) -> Result<Lowered> {
    let kind = match fold {
        Fold::Add => ADD,
        Fold::Subtract => SUBTRACT,
        Fold::Multiply => MULTIPLY,
        Fold::Average => AVERAGE,
        Fold::Maximum => MAXIMUM,
        Fold::Minimum => MINIMUM,
        Fold::Divide => DIVIDE,
    };
    let out = broadcast(shapes)?;
    Ok(Lowered::one(
        ElementwiseOp {
            kind,
            out_shape: out.clone(),
            inputs: shapes.len(),
        },
        out,
    ))
}

/// Folds its inputs elementwise, broadcasting them to a common shape.
#[derive(Debug)]
struct ElementwiseOp {
    kind: u8,
    out_shape: Shape,
    inputs: usize,
}

impl Op for ElementwiseOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let shape = IxDyn(&self.out_shape);
        let mut acc: ArrayD<f64> = match inputs[0].broadcast(shape.clone()) {
            Some(v) => v.mapv(|x| x as f64),
            None => ArrayD::zeros(shape.clone()),
        };
        for x in &inputs[1..] {
            let Some(x) = x.broadcast(shape.clone()) else {
                continue;
            };
            acc.zip_mut_with(&x, |a, &b| {
                let b = b as f64;
                *a = match self.kind {
                    SUBTRACT => *a - b,
                    MULTIPLY => *a * b,
                    MAXIMUM => a.max(b),
                    MINIMUM => a.min(b),
                    DIVIDE => *a / b,
                    _ => *a + b,
                }
            });
        }
        if self.kind == AVERAGE {
            acc.mapv_inplace(|a| a / self.inputs as f64);
        }
        vec![acc.mapv(|a| a as f32)]
    }
    fn flops(&self) -> u64 {
        (self.inputs.saturating_sub(1) * self.out_shape.iter().product::<usize>()) as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let fold = match self.kind {
            SUBTRACT => Fold::Subtract,
            MULTIPLY => Fold::Multiply,
            AVERAGE => Fold::Average,
            MAXIMUM => Fold::Maximum,
            MINIMUM => Fold::Minimum,
            DIVIDE => Fold::Divide,
            _ => Fold::Add,
        };
        let shape = padded(&self.out_shape)?;
        let strides = l
            .input_shapes
            .iter()
            .map(|s| broadcast_strides(s, &shape))
            .collect::<Result<Vec<_>>>()?;
        let out = l.output(0);
        let inputs = l.inputs.clone();
        l.step(
            Kernel::Merge {
                fold,
                shape,
                strides,
            },
            inputs,
            out,
            self.flops(),
        );
        Ok(())
    }
}

/// The numpy broadcast of several shapes.
pub(crate) fn broadcast(shapes: &[Shape]) -> Result<Shape> {
    let rank = shapes.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = vec![1; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                bail!("input shapes {shapes:?} do not broadcast together");
            }
        }
    }
    Ok(out)
}

fn build_elementwise<const KIND: u8>(ctx: &mut LayerCtx) -> Result<Lowered> {
    let n = ctx.inputs.len();
    let expected_ok = if KIND == SUBTRACT { n == 2 } else { n >= 1 };
    if !expected_ok {
        bail!(
            "expected {} inputs, found {n}",
            if KIND == SUBTRACT { "2" } else { "1 or more" }
        );
    }
    let out = broadcast(ctx.inputs)?;
    Ok(Lowered::one(
        ElementwiseOp {
            kind: KIND,
            out_shape: out.clone(),
            inputs: n,
        },
        out,
    ))
}

/// Joins its inputs along one axis.
#[derive(Debug)]
struct ConcatOp {
    axis: usize,
    /// Joined along a new axis (`stack`): each input is still one part of every
    /// output row, so the kernel call is the same.
    new_axis: bool,
}

/// Tensors of one shape stacked along a new `axis`; `out` is the stacked shape.
pub(crate) fn stack(axis: usize, out: Shape) -> Lowered {
    Lowered::one(
        ConcatOp {
            axis,
            new_axis: true,
        },
        out,
    )
}

impl Op for ConcatOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let views: Vec<_> = inputs.iter().map(|a| a.view()).collect();
        let joined = if self.new_axis {
            ndarray::stack(Axis(self.axis), &views)
        } else {
            ndarray::concatenate(Axis(self.axis), &views)
        }
        .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])));
        vec![joined.as_standard_layout().into_owned()]
    }
    fn flops(&self) -> u64 {
        0
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let outer = l.output_shapes[0][..self.axis].iter().product();
        let parts = l
            .input_shapes
            .iter()
            .map(|s| s[self.axis..].iter().product())
            .collect();
        let out = l.output(0);
        let inputs = l.inputs.clone();
        l.step(Kernel::Concat { outer, parts }, inputs, out, 0);
        Ok(())
    }
}

fn build_concatenate(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default = "last")]
        axis: i64,
    }
    fn last() -> i64 {
        -1
    }
    let c: Config = ctx.parse()?;
    let first = ctx
        .inputs
        .first()
        .ok_or_else(|| Error::new("expected at least one input"))?;
    let axis = resolve_axis(c.axis, first.len())?;
    if axis == 0 {
        return Err(Error::new(
            "concatenating along the batch axis is not supported",
        ));
    }
    let mut out = first.clone();
    out[axis] = 0;
    for s in ctx.inputs {
        let same_elsewhere = s.len() == first.len()
            && s.iter()
                .zip(first)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !same_elsewhere {
            bail!(
                "input shapes {:?} differ outside axis {}",
                ctx.inputs,
                c.axis
            );
        }
        out[axis] += s[axis];
    }
    Ok(Lowered::one(
        ConcatOp {
            axis,
            new_axis: false,
        },
        out,
    ))
}

/// `batch_dot` along one axis of each input, optionally of L2-normalized inputs.
#[derive(Debug)]
struct DotOp {
    axes: [usize; 2],
    normalize: bool,
    out_shape: Shape,
    contracted: usize,
}

impl DotOp {
    /// One sample as a matrix with the contracted axis last (`first == false`) or first.
    fn matrix(x: &ArrayD<f32>, axis: usize, contracted_first: bool) -> (Vec<f64>, usize) {
        let rank = x.ndim();
        let mut order: Vec<usize> = (0..rank).filter(|&d| d != axis).collect();
        if contracted_first {
            order.insert(0, axis);
        } else {
            order.push(axis);
        }
        let v = x.view().permuted_axes(IxDyn(&order));
        let data: Vec<f64> = v.iter().map(|&a| a as f64).collect();
        let others = x.len() / x.shape()[axis].max(1);
        (data, others)
    }
}

impl Op for DotOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let k = self.contracted;
        let mut out = Vec::with_capacity(self.out_shape.iter().product());
        let norm = |x: &ArrayD<f32>, axis: usize| {
            let mut x = x.clone();
            if self.normalize {
                for_each_group(&mut x, &[axis], |g| {
                    let n = g
                        .iter()
                        .map(|&v| (v as f64).powi(2))
                        .sum::<f64>()
                        .sqrt()
                        .max(1e-12);
                    g.iter_mut().for_each(|v| *v = (*v as f64 / n) as f32);
                });
            }
            x
        };
        let (a, b) = (norm(inputs[0], self.axes[0]), norm(inputs[1], self.axes[1]));
        for (sa, sb) in a.outer_iter().zip(b.outer_iter()) {
            let (ma, m) = Self::matrix(&sa.to_owned(), self.axes[0] - 1, false);
            let (mb, n) = Self::matrix(&sb.to_owned(), self.axes[1] - 1, true);
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k).map(|t| ma[i * k + t] * mb[t * n + j]).sum();
                    out.push(s as f32);
                }
            }
        }
        vec![super::tensor(&self.out_shape, out)]
    }
    fn flops(&self) -> u64 {
        2 * self.contracted as u64 * self.out_shape.iter().product::<usize>() as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        // Each operand: batch axis, the contracted axis, and at most one other axis.
        let operand = |shape: &[usize], axis: usize| -> Result<(usize, usize, usize, usize)> {
            let strides: Vec<usize> = (0..shape.len())
                .map(|i| shape[i + 1..].iter().product())
                .collect();
            let others: Vec<usize> = (1..shape.len()).filter(|&i| i != axis).collect();
            match others.as_slice() {
                [] => Ok((strides[0], strides[axis], 0, 1)),
                [o] => Ok((strides[0], strides[axis], strides[*o], shape[*o])),
                _ => Err(Error::new(
                    "Dot of inputs with more than 3 axes is not supported by the compiled backends",
                )),
            }
        };
        let (a_batch, a_k, a_other, m) = operand(&l.input_shapes[0], self.axes[0])?;
        let (b_batch, b_k, b_other, n) = operand(&l.input_shapes[1], self.axes[1])?;
        let p = kerac::merge::BatchDot {
            batch: l.input_shapes[0][0],
            m,
            n,
            k: self.contracted,
            a: [a_batch, a_other, a_k],
            b: [b_batch, b_k, b_other],
            normalize: self.normalize,
        };
        let out = l.output(0);
        let inputs = l.inputs.clone();
        l.step(Kernel::BatchDot(p), inputs, out, self.flops());
        Ok(())
    }
}

fn build_dot(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(deserialize_with = "axes")]
        axes: Vec<i64>,
        #[serde(default)]
        normalize: bool,
    }
    let c: Config = ctx.parse()?;
    let [s1, s2] = ctx.inputs else {
        bail!("expected 2 inputs, found {}", ctx.inputs.len());
    };
    let (a1, a2) = match c.axes.as_slice() {
        [a] => (*a, *a),
        [a, b] => (*a, *b),
        other => {
            bail!("axes {other:?}: expected one or two axes")
        }
    };
    let (a1, a2) = (resolve_axis(a1, s1.len())?, resolve_axis(a2, s2.len())?);
    if a1 == 0 || a2 == 0 || s1[0] != s2[0] {
        bail!(
            "cannot take the dot product of {s1:?} and {s2:?} along axes {:?}",
            c.axes
        );
    }
    if s1[a1] != s2[a2] {
        bail!("axis {a1} of {s1:?} and axis {a2} of {s2:?} differ in length");
    }
    let mut out = vec![s1[0]];
    out.extend(
        s1.iter()
            .enumerate()
            .skip(1)
            .filter(|(i, _)| *i != a1)
            .map(|(_, &d)| d),
    );
    out.extend(
        s2.iter()
            .enumerate()
            .skip(1)
            .filter(|(i, _)| *i != a2)
            .map(|(_, &d)| d),
    );
    if out.len() == 1 {
        out.push(1);
    }
    let op = DotOp {
        axes: [a1, a2],
        normalize: c.normalize,
        out_shape: out.clone(),
        contracted: s1[a1],
    };
    Ok(Lowered::one(op, out))
}
