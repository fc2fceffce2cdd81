//! Embedding: a row of a trained table per integer index.

use super::{BuildFn, LayerCtx, Lowered, Op, Weight};
use crate::error::{Error, Result};
use crate::plan::{Kernel, Lower};
use ndarray::ArrayD;
use serde::Deserialize;

/// The classes this family builds.
pub const LAYERS: &[(&str, BuildFn)] = &[("Embedding", build_embedding)];

#[derive(Debug)]
struct EmbeddingOp {
    /// `[input_dim, output_dim]`.
    table: Weight,
    indices: usize,
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
        vec![super::tensor(&shape, data)]
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
    if c.mask_zero {
        return Err(Error::new(
            "mask_zero=True is not supported yet: the mask would have to reach the layers after it",
        ));
    }
    if c.input_dim == 0 || c.output_dim == 0 {
        return Err(Error::new("input_dim and output_dim must be positive"));
    }
    let shape = ctx.input()?.clone();
    let table = ctx.weight("embeddings", &[c.input_dim, c.output_dim])?;
    let mut out = shape.clone();
    out.push(c.output_dim);
    super::elements(&out)?;
    Ok(Lowered::one(
        EmbeddingOp {
            table,
            indices: shape.iter().product(),
        },
        out,
    ))
}
