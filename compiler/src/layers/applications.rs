//! Keras's own custom layers from `keras.applications`, which stock architectures
//! save under their own class names: ConvNeXt's LayerScale and StochasticDepth.

use super::core::affine;
use super::{BuildFn, LayerCtx, Lowered};
use crate::bail;
use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn};
use serde::Deserialize;

/// Supported layer classes.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("LayerScale", build_layer_scale),
    ("StochasticDepth", super::core::build_identity),
];

/// `x * gamma`, one learned factor per channel (the last axis).
fn build_layer_scale(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        projection_dim: usize,
    }
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?.clone();
    if shape.last() != Some(&c.projection_dim) {
        bail!(
            "projection_dim {} does not match the input's last axis in {shape:?}",
            c.projection_dim
        );
    }
    // Keras 2 names the weight `gamma`; Keras 3 leaves it unnamed (`variable`).
    let gamma = ctx.weight("gamma|variable", &[c.projection_dim])?;
    let mut dims = vec![1; shape.len() - 1];
    if let Some(last) = dims.last_mut() {
        *last = c.projection_dim;
    }
    let scale = gamma
        .into_shape_with_order(IxDyn(&dims))
        .map_err(|e| Error::new(e.to_string()))?;
    let offset = ArrayD::zeros(IxDyn(&vec![1; dims.len()]));
    Ok(affine(scale, offset, shape))
}
