//! TimeDistributed: the wrapped layer applied to every time step. A `[batch, steps,
//! ...]` tensor is, in memory, `[batch * steps, ...]`: the wrapped layer is built for
//! that batch and runs once, as it would on its own.

use super::{lookup, BuildFn, LayerCtx, Lowered, Op};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::plan::Lower;
use ndarray::{ArrayD, IxDyn};

/// The classes this family builds.
pub const LAYERS: &[(&str, BuildFn)] = &[("TimeDistributed", build_time_distributed)];

#[derive(Debug)]
struct TimeDistributedOp {
    inner: Box<dyn Op>,
    /// `[batch, steps]`.
    outer: [usize; 2],
    /// Shapes the inner layer was built with (batch folded), inputs then outputs.
    folded_inputs: Vec<Shape>,
    folded_outputs: Vec<Shape>,
}

fn unfold(outer: [usize; 2], folded: &Shape) -> Shape {
    let mut s = outer.to_vec();
    s.extend(&folded[1..]);
    s
}

impl Op for TimeDistributedOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let folded: Vec<ArrayD<f32>> = inputs
            .iter()
            .zip(&self.folded_inputs)
            .map(|(x, s)| super::tensor(s, x.iter().copied().collect()))
            .collect();
        let refs: Vec<&ArrayD<f32>> = folded.iter().collect();
        self.inner
            .eval(&refs)
            .into_iter()
            .map(|y| {
                let shape = unfold(self.outer, &y.shape().to_vec());
                y.into_shape_with_order(IxDyn(&shape))
                    .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&shape)))
            })
            .collect()
    }
    fn flops(&self) -> u64 {
        self.inner.flops()
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        // Same buffers; the inner op sees the folded shapes it was built for.
        let inputs = std::mem::replace(&mut l.input_shapes, self.folded_inputs.clone());
        let outputs = std::mem::replace(&mut l.output_shapes, self.folded_outputs.clone());
        let result = self.inner.lower(l);
        l.input_shapes = inputs;
        l.output_shapes = outputs;
        result
    }
}

fn build_time_distributed(ctx: &mut LayerCtx) -> Result<Lowered> {
    let shape = ctx.input()?.clone();
    let (class, config) = ctx.wrapped()?;
    let build = lookup(class).ok_or_else(|| {
        Error::new(format!(
            "TimeDistributed wraps `{class}`, which kerac does not support"
        ))
    })?;
    if shape.len() < 3 {
        bail!("expected an input of shape [batch, steps, ...], found {shape:?}");
    }
    let outer = [shape[0], shape[1]];
    let mut folded = vec![shape[0] * shape[1]];
    folded.extend(&shape[2..]);
    let folded_inputs = vec![folded];
    let lowered = ctx.nested(&config, &folded_inputs, build)?;
    let outputs = lowered.outputs.iter().map(|s| unfold(outer, s)).collect();
    Ok(Lowered {
        op: Box::new(TimeDistributedOp {
            inner: lowered.op,
            outer,
            folded_inputs,
            folded_outputs: lowered.outputs,
        }),
        outputs,
        mask: None,
    })
}
