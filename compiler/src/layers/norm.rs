//! Normalization: BatchNormalization (any axes, center/scale optional),
//! LayerNormalization (axis list, center/scale, rms_scaling), GroupNormalization and
//! UnitNormalization. Epsilons come from the config.

use super::geometry::for_each_group;
use super::{axes, resolve_axis, BuildFn, LayerCtx, Lowered, Op};
use crate::bail;
use crate::error::{Error, Result};
use crate::plan::{Kernel, Lower, StridedAxes};
use ndarray::ArrayD;
use serde::Deserialize;

/// Supported layer classes.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("BatchNormalization", build_batch_norm),
    ("LayerNormalization", build_layer_norm),
    ("GroupNormalization", build_group_norm),
    ("UnitNormalization", build_unit_norm),
];

fn last_axis() -> Vec<i64> {
    vec![-1]
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct Config {
    #[serde(default = "last_axis", deserialize_with = "axes")]
    axis: Vec<i64>,
    epsilon: Option<f64>,
    #[serde(default = "yes")]
    center: bool,
    #[serde(default = "yes")]
    scale: bool,
    #[serde(default)]
    rms_scaling: bool,
    groups: Option<usize>,
}

fn resolve_axes(list: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = list
        .iter()
        .map(|&a| resolve_axis(a, rank))
        .collect::<Result<_>>()?;
    out.sort_unstable();
    out.dedup();
    if out.contains(&0) {
        return Err(Error::new(
            "normalizing along the batch axis is not supported",
        ));
    }
    Ok(out)
}

/// Per-element `x * scale + offset` over the values along `axes` (BatchNormalization
/// at inference).
#[derive(Debug)]
struct ScaleShiftOp {
    axes: Vec<usize>,
    scale: Vec<f64>,
    offset: Vec<f64>,
    elements: usize,
}

impl Op for ScaleShiftOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mut out = inputs[0].clone();
        for_each_group(&mut out, &self.axes, |g| {
            for ((v, s), o) in g.iter_mut().zip(&self.scale).zip(&self.offset) {
                *v = (*v as f64 * s + o) as f32;
            }
        });
        vec![out]
    }
    fn flops(&self) -> u64 {
        2 * self.elements as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let p = l.input_shapes[0].strided(&self.axes)?;
        let scale = l.weight("scale", self.scale.iter().map(|&v| v as f32).collect());
        let offset = l.weight("offset", self.offset.iter().map(|&v| v as f32).collect());
        l.unary(Kernel::ScaleShift { p, scale, offset }, self.flops());
        Ok(())
    }
}

fn build_batch_norm(ctx: &mut LayerCtx) -> Result<Lowered> {
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?.clone();
    let axes = resolve_axes(&c.axis, shape.len())?;
    let params: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    let eps = c.epsilon.unwrap_or(1e-3);
    // Read every stored weight before making defaults: the stored statistics bound
    // the sizes, so a hostile shape cannot make us allocate before the check.
    let gamma = if c.scale {
        Some(ctx.weight("gamma", &params)?)
    } else {
        None
    };
    let beta = if c.center {
        Some(ctx.weight("beta", &params)?)
    } else {
        None
    };
    let mean: Vec<f32> = ctx.weight("moving_mean", &params)?.into_iter().collect();
    let var: Vec<f32> = ctx
        .weight("moving_variance", &params)?
        .into_iter()
        .collect();
    let gamma: Vec<f32> = gamma.map_or_else(|| vec![1.0; var.len()], |g| g.into_iter().collect());
    let beta: Vec<f32> = beta.map_or_else(|| vec![0.0; var.len()], |b| b.into_iter().collect());
    let scale: Vec<f64> = gamma
        .iter()
        .zip(&var)
        .map(|(&g, &v)| g as f64 / (v as f64 + eps).sqrt())
        .collect();
    let offset = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((&b, &m), &s)| b as f64 - m as f64 * s)
        .collect();
    let elements = shape.iter().product();
    Ok(Lowered::one(
        ScaleShiftOp {
            axes,
            scale,
            offset,
            elements,
        },
        shape,
    ))
}

/// Normalizes each group of values along `axes` by its own mean and variance.
#[derive(Debug)]
struct LayerNormOp {
    axes: Vec<usize>,
    epsilon: f64,
    rms: bool,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    elements: usize,
}

impl Op for LayerNormOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mut out = inputs[0].clone();
        for_each_group(&mut out, &self.axes, |g| {
            let n = g.len() as f64;
            let mean = g.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let denom = (var + self.epsilon).sqrt();
            // Keras's rms_scaling divides by the same deviation but does not centre.
            let mean = if self.rms { 0.0 } else { mean };
            for (i, v) in g.iter_mut().enumerate() {
                let mut y = (*v as f64 - mean) / denom;
                if let Some(gamma) = &self.gamma {
                    y *= gamma[i] as f64;
                }
                if let Some(beta) = &self.beta {
                    y += beta[i] as f64;
                }
                *v = y as f32;
            }
        });
        vec![out]
    }
    fn flops(&self) -> u64 {
        5 * self.elements as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let shape = l.input_shapes[0].strided(&self.axes)?;
        let p = kerac::norm::LayerNorm {
            shape,
            epsilon: self.epsilon as f32,
            rms: self.rms,
        };
        let gamma = self.gamma.as_ref().map(|g| l.weight("gamma", g.clone()));
        let beta = self.beta.as_ref().map(|b| l.weight("beta", b.clone()));
        l.unary(Kernel::LayerNorm { p, gamma, beta }, self.flops());
        Ok(())
    }
}

fn build_layer_norm(ctx: &mut LayerCtx) -> Result<Lowered> {
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?.clone();
    let axes = resolve_axes(&c.axis, shape.len())?;
    let params: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    let gamma = if c.scale {
        Some(ctx.weight("gamma", &params)?.into_iter().collect())
    } else {
        None
    };
    let beta = if c.center && !c.rms_scaling {
        Some(ctx.weight("beta", &params)?.into_iter().collect())
    } else {
        None
    };
    let op = LayerNormOp {
        axes,
        epsilon: c.epsilon.unwrap_or(1e-3),
        rms: c.rms_scaling,
        gamma,
        beta,
        elements: shape.iter().product(),
    };
    Ok(Lowered::one(op, shape))
}

/// Normalizes each sample's channel groups over all positions.
#[derive(Debug)]
struct GroupNormOp {
    groups: usize,
    channels: usize,
    positions: usize,
    epsilon: f64,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
}

impl Op for GroupNormOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mut out = inputs[0].as_standard_layout().into_owned();
        let (c, cg) = (self.channels, self.channels / self.groups);
        if let Some(x) = out.as_slice_mut() {
            for sample in x.chunks_mut(self.positions * c) {
                for g in 0..self.groups {
                    let idx = |p: usize, k: usize| p * c + g * cg + k;
                    let n = (self.positions * cg) as f64;
                    let mut sum = 0.0;
                    for p in 0..self.positions {
                        for k in 0..cg {
                            sum += sample[idx(p, k)] as f64;
                        }
                    }
                    let mean = sum / n;
                    let mut var = 0.0;
                    for p in 0..self.positions {
                        for k in 0..cg {
                            var += (sample[idx(p, k)] as f64 - mean).powi(2);
                        }
                    }
                    let denom = (var / n + self.epsilon).sqrt();
                    for p in 0..self.positions {
                        for k in 0..cg {
                            let ch = g * cg + k;
                            let mut y = (sample[idx(p, k)] as f64 - mean) / denom;
                            if let Some(gamma) = &self.gamma {
                                y *= gamma[ch] as f64;
                            }
                            if let Some(beta) = &self.beta {
                                y += beta[ch] as f64;
                            }
                            sample[idx(p, k)] = y as f32;
                        }
                    }
                }
            }
        }
        vec![out]
    }
    fn flops(&self) -> u64 {
        5 * (self.positions * self.channels) as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let p = kerac::norm::GroupNorm {
            batch: l.input_shapes[0][0],
            positions: self.positions,
            channels: self.channels,
            groups: self.groups,
            epsilon: self.epsilon as f32,
        };
        let gamma = self.gamma.as_ref().map(|g| l.weight("gamma", g.clone()));
        let beta = self.beta.as_ref().map(|b| l.weight("beta", b.clone()));
        l.unary(Kernel::GroupNorm { p, gamma, beta }, self.flops());
        Ok(())
    }
}

fn build_group_norm(ctx: &mut LayerCtx) -> Result<Lowered> {
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?.clone();
    let rank = shape.len();
    if rank < 2 {
        bail!("input {shape:?} has no axis after the batch to normalize");
    }
    if c.axis.len() != 1 || resolve_axis(c.axis[0], rank)? != rank - 1 {
        bail!(
            "axis {:?} is not supported; expected the last axis (channels_last)",
            c.axis
        );
    }
    let channels = shape[rank - 1];
    let groups = c.groups.unwrap_or(32);
    if groups == 0 || channels % groups != 0 {
        bail!("groups {groups} must divide the {channels} channels");
    }
    let gamma = if c.scale {
        Some(ctx.weight("gamma", &[channels])?.into_iter().collect())
    } else {
        None
    };
    let beta = if c.center {
        Some(ctx.weight("beta", &[channels])?.into_iter().collect())
    } else {
        None
    };
    let op = GroupNormOp {
        groups,
        channels,
        positions: shape[1..rank - 1].iter().product(),
        epsilon: c.epsilon.unwrap_or(1e-3),
        gamma,
        beta,
    };
    Ok(Lowered::one(op, shape))
}

/// Scales each group of values along `axes` to unit L2 norm.
#[derive(Debug)]
struct UnitNormOp {
    axes: Vec<usize>,
    elements: usize,
}

impl Op for UnitNormOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mut out = inputs[0].clone();
        for_each_group(&mut out, &self.axes, |g| {
            let norm = g
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            for v in g.iter_mut() {
                *v = (*v as f64 / norm) as f32;
            }
        });
        vec![out]
    }
    fn flops(&self) -> u64 {
        3 * self.elements as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let p = l.input_shapes[0].strided(&self.axes)?;
        l.unary(Kernel::UnitNorm(p), self.flops());
        Ok(())
    }
}

fn build_unit_norm(ctx: &mut LayerCtx) -> Result<Lowered> {
    let c: Config = ctx.parse()?;
    let shape = ctx.input()?.clone();
    let axes = resolve_axes(&c.axis, shape.len())?;
    let elements = shape.iter().product();
    Ok(Lowered::one(UnitNormOp { axes, elements }, shape))
}
