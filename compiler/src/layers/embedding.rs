//! Embedding: a row of a trained table per integer index, and the mask of padding
//! index 0 (`mask_zero`); NotEqual, the operation Keras 3 writes that mask with.

use super::{BuildFn, LayerCtx, Lowered, Op, Weight};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::plan::{BufferId, Kernel, Lower};
use ndarray::ArrayD;
use serde::Deserialize;

/// The classes this family builds.
pub const LAYERS: &[(&str, BuildFn)] =
    &[("Embedding", build_embedding), ("Masking", build_masking)];

/// 1 where `v` is nonzero, as the runtime's `Act::NonZero` (NaN gives 0).
fn nonzero(v: f32) -> f32 {
    if v.abs() > 0.0 {
        1.0
    } else {
        0.0
    }
}

/// `x != c` as 1 and 0: the masks Keras 3 writes out for `Embedding(mask_zero=True)`
/// (c = 0) and `Masking(mask_value=c)`.
#[derive(Debug)]
struct NotEqualOp {
    c: f32,
    len: usize,
}

impl Op for NotEqualOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        vec![inputs[0].mapv(|v| nonzero(v - self.c))]
    }
    fn flops(&self) -> u64 {
        // The subtraction; none for c = 0.
        if self.c == 0.0 {
            0
        } else {
            self.len as u64
        }
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let x = l.inputs[0];
        let shifted = shift(l, x, -self.c);
        let out = l.output(0);
        l.step(
            Kernel::Activation(kerac::Act::NonZero),
            vec![shifted],
            out,
            0,
        );
        Ok(())
    }
}

/// `x + c` into a new buffer (or `x` itself for c = 0).
fn shift(l: &mut Lower, x: BufferId, c: f32) -> BufferId {
    if c == 0.0 {
        return x;
    }
    let len = l.input_shapes[0].iter().product();
    let scale = l.weight("one", vec![1.0]);
    let offset = l.weight("offset", vec![c]);
    let t = l.temp(len);
    l.step(
        Kernel::ScaleShift {
            p: kerac::norm::Strided {
                outer: len,
                n: 1,
                inner: 1,
            },
            scale,
            offset,
        },
        vec![x],
        t,
        len as u64,
    );
    t
}

/// Keras 3's `NotEqual` operation against a constant, as a mask.
pub(crate) fn build_not_equal(ctx: &mut LayerCtx) -> Result<Lowered> {
    let other = ctx.call.get("__args").and_then(|a| a.get(1));
    let Some(c) = other.and_then(serde_json::Value::as_f64) else {
        bail!(
            "NotEqual is supported against a constant (a mask), found {}",
            other.map_or("a tensor".to_string(), |v| v.to_string())
        );
    };
    let shape = ctx.input()?.clone();
    let len = shape.iter().product();
    Ok(Lowered::one(NotEqualOp { c: c as f32, len }, shape))
}

/// `any(x != 0)` over the last axis: Keras 3's `Masking` mask.
#[derive(Debug)]
struct AnyOp {
    rows: usize,
    n: usize,
}

impl AnyOp {
    fn lower_into(&self, l: &mut Lower, x: BufferId, out: BufferId) {
        let ones = l.temp(self.rows * self.n);
        l.step(Kernel::Activation(kerac::Act::NonZero), vec![x], ones, 0);
        l.step(
            Kernel::GlobalPool(kerac::pool::GlobalPool {
                batch: self.rows,
                positions: self.n,
                channels: 1,
                max: true,
            }),
            vec![ones],
            out,
            (self.rows * self.n) as u64,
        );
    }

    fn eval_flat(&self, x: &[f32]) -> Vec<f32> {
        x.chunks(self.n.max(1))
            .map(|row| row.iter().map(|&v| nonzero(v)).fold(0.0, f32::max))
            .collect()
    }
}

impl Op for AnyOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x: Vec<f32> = inputs[0].iter().copied().collect();
        let shape = &inputs[0].shape()[..inputs[0].ndim().saturating_sub(1)];
        vec![super::tensor(shape, self.eval_flat(&x))]
    }
    fn flops(&self) -> u64 {
        (self.rows * self.n) as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let (x, out) = (l.inputs[0], l.output(0));
        self.lower_into(l, x, out);
        Ok(())
    }
}

fn last_axis(ctx: &LayerCtx) -> Result<(Shape, usize, usize)> {
    let shape = ctx.input()?.clone();
    let n = *shape
        .last()
        .ok_or_else(|| Error::new("expected a tensor of rank 2 or more"))?;
    let rows = shape[..shape.len() - 1].iter().product();
    Ok((shape, rows, n))
}

/// Keras 3's `Any` operation over the last axis, as a mask.
pub(crate) fn build_any(ctx: &mut LayerCtx) -> Result<Lowered> {
    let axis = ctx.config.get("axis").and_then(serde_json::Value::as_i64);
    let keepdims = ctx
        .config
        .get("keepdims")
        .and_then(serde_json::Value::as_bool);
    let (shape, rows, n) = last_axis(ctx)?;
    if !(axis == Some(-1) || axis == Some(shape.len() as i64 - 1)) || keepdims == Some(true) {
        return Err(Error::new(
            "Any is supported over the last axis without keepdims (a mask)",
        ));
    }
    Ok(Lowered::one(
        AnyOp { rows, n },
        shape[..shape.len() - 1].to_vec(),
    ))
}

/// `Masking`: steps whose features all equal `mask_value` become zeros and are masked
/// for the layers after it.
#[derive(Debug)]
struct MaskingOp {
    value: f32,
    any: AnyOp,
}

impl Op for MaskingOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x: Vec<f32> = inputs[0].iter().copied().collect();
        let shifted: Vec<f32> = x.iter().map(|&v| v - self.value).collect();
        let mask = self.any.eval_flat(&shifted);
        let n = self.any.n.max(1);
        let y = x
            .iter()
            .enumerate()
            .map(|(i, &v)| v * mask[i / n])
            .collect();
        let shape = inputs[0].shape();
        vec![
            super::tensor(shape, y),
            super::tensor(&shape[..shape.len() - 1], mask),
        ]
    }
    fn flops(&self) -> u64 {
        let len = (self.any.rows * self.any.n) as u64;
        // The subtraction (none for a zero mask value), the maximum and the product.
        (self.value != 0.0) as u64 * len + 2 * len
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let x = l.inputs[0];
        let shifted = shift(l, x, -self.value);
        let mask = l.output(1);
        self.any.lower_into(l, shifted, mask);
        let (rows, n) = (self.any.rows, self.any.n);
        let shape = crate::plan::lower::padded(&[rows, n])?;
        let mut xs = [0; kerac::merge::RANK];
        xs[kerac::merge::RANK - 2..].copy_from_slice(&[n, 1]);
        let mut ms = [0; kerac::merge::RANK];
        ms[kerac::merge::RANK - 2] = 1;
        let out = l.output(0);
        l.step(
            Kernel::Merge {
                fold: kerac::merge::Fold::Multiply,
                shape,
                strides: vec![xs, ms],
            },
            vec![x, mask],
            out,
            (rows * n) as u64,
        );
        Ok(())
    }
}

fn build_masking(ctx: &mut LayerCtx) -> Result<Lowered> {
    let value = ctx
        .config
        .get("mask_value")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0) as f32;
    let (shape, rows, n) = last_axis(ctx)?;
    Ok(Lowered {
        op: Box::new(MaskingOp {
            value,
            any: AnyOp { rows, n },
        }),
        outputs: vec![shape.clone(), shape[..shape.len() - 1].to_vec()],
        mask: Some(1),
    })
}

#[derive(Debug)]
struct EmbeddingOp {
    /// `[input_dim, output_dim]`.
    table: Weight,
    indices: usize,
    /// `mask_zero`: a second output, 1 where the index is nonzero.
    mask_zero: bool,
}

impl Op for EmbeddingOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let (vocab, dim) = (self.table.shape()[0], self.table.shape()[1]);
        let t = self.table.as_slice().unwrap_or_default();
        let x = inputs[0];
        let data = x
            .iter()
            .flat_map(|&v| {
                // Out-of-range indices are clamped, as the compiled kernels do.
                let row = if v.is_nan() {
                    0
                } else {
                    (v.max(0.0) as usize).min(vocab - 1)
                };
                t[row * dim..(row + 1) * dim].iter().copied()
            })
            .collect();
        let mut shape = x.shape().to_vec();
        shape.push(dim);
        let mut out = vec![super::tensor(&shape, data)];
        if self.mask_zero {
            out.push(x.mapv(nonzero));
        }
        out
    }
    fn flops(&self) -> u64 {
        0
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let (vocab, dim) = (self.table.shape()[0], self.table.shape()[1]);
        let table = l.weight("embeddings", self.table.iter().copied().collect());
        l.unary(
            Kernel::Gather {
                p: kerac::shape::Gather {
                    indices: self.indices,
                    vocab,
                    dim,
                },
                table,
            },
            0,
        );
        if self.mask_zero {
            let mask = l.output(1);
            let x = l.inputs[0];
            l.step(Kernel::Activation(kerac::Act::NonZero), vec![x], mask, 0);
        }
        Ok(())
    }
}

fn build_embedding(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        input_dim: usize,
        output_dim: usize,
        #[serde(default)]
        mask_zero: bool,
    }
    let c: Config = ctx.parse()?;
    if c.input_dim == 0 || c.output_dim == 0 {
        return Err(Error::new("input_dim and output_dim must be positive"));
    }
    let shape = ctx.input()?.clone();
    let table = ctx.weight("embeddings", &[c.input_dim, c.output_dim])?;
    let mut out = shape.clone();
    out.push(c.output_dim);
    super::elements(&out)?;
    let op = EmbeddingOp {
        table,
        indices: shape.iter().product(),
        mask_zero: c.mask_zero,
    };
    if !c.mask_zero {
        return Ok(Lowered::one(op, out));
    }
    Ok(Lowered {
        op: Box::new(op),
        outputs: vec![out, shape],
        mask: Some(1),
    })
}
