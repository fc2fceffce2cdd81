//! Embedding: a row of a trained table per integer index, and the mask of padding
//! index 0 (`mask_zero`); NotEqual, the operation Keras 3 writes that mask with.

use super::{BuildFn, LayerCtx, Lowered, Op, Weight};
use crate::error::{Error, Result};
use crate::plan::{Kernel, Lower};
use ndarray::ArrayD;
use serde::Deserialize;

/// The classes this family builds.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("Embedding", build_embedding),
    ("NotEqual", build_not_equal),
];

/// 1 where `v` is nonzero, as the runtime's `Act::NonZero` (NaN gives 0).
fn nonzero(v: f32) -> f32 {
    if v.abs() > 0.0 {
        1.0
    } else {
        0.0
    }
}

/// `x != 0` as 1 and 0: the mask Keras 3 computes for `Embedding(mask_zero=True)`.
#[derive(Debug)]
struct NonZeroOp;

impl Op for NonZeroOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        vec![inputs[0].mapv(nonzero)]
    }
    fn flops(&self) -> u64 {
        0
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        l.unary(Kernel::Activation(kerac::Act::NonZero), 0);
        Ok(())
    }
}

fn build_not_equal(ctx: &mut LayerCtx) -> Result<Lowered> {
    let other = ctx.call.get("__args").and_then(|a| a.get(1));
    if other.and_then(serde_json::Value::as_f64) != Some(0.0) {
        return Err(Error::new(format!(
            "NotEqual is supported against the constant 0 (a padding mask), found {}",
            other.map_or("a tensor".to_string(), |v| v.to_string())
        )));
    }
    let shape = ctx.input()?.clone();
    Ok(Lowered::one(NonZeroOp, shape))
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
