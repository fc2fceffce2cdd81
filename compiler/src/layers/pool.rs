//! Pooling: MaxPooling and AveragePooling 1D/2D/3D (valid and same; averages count
//! only the values inside the input, like Keras), and the global poolings (keepdims).

use super::geometry::{
    check_channels_last, check_work, lift3, per_axis, spatial_input, window, Window,
};
use super::{int_or_list, BuildFn, LayerCtx, Lowered, Op};
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::plan::{Kernel, Lower};
use ndarray::ArrayD;
use serde::Deserialize;

/// Supported layer classes.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("MaxPooling1D", build_pool::<1, true>),
    ("MaxPooling2D", build_pool::<2, true>),
    ("MaxPooling3D", build_pool::<3, true>),
    ("AveragePooling1D", build_pool::<1, false>),
    ("AveragePooling2D", build_pool::<2, false>),
    ("AveragePooling3D", build_pool::<3, false>),
    ("GlobalMaxPooling1D", build_global::<1, true>),
    ("GlobalMaxPooling2D", build_global::<2, true>),
    ("GlobalMaxPooling3D", build_global::<3, true>),
    ("GlobalAveragePooling1D", build_global::<1, false>),
    ("GlobalAveragePooling2D", build_global::<2, false>),
    ("GlobalAveragePooling3D", build_global::<3, false>),
];

/// A pooling window over a 3-D lifted input.
#[derive(Debug)]
struct PoolOp {
    windows: [Window; 3],
    channels: usize,
    batch: usize,
    max: bool,
    out_shape: Shape,
}

impl Op for PoolOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x = inputs[0].as_slice().unwrap_or_default();
        let [wd, wh, ww] = self.windows;
        let c = self.channels;
        let mut out = Vec::with_capacity(self.out_shape.iter().product());
        let mut acc = vec![0f64; c];
        for b in 0..self.batch {
            for od in 0..wd.output {
                for oh in 0..wh.output {
                    for ow in 0..ww.output {
                        acc.fill(if self.max { f64::NEG_INFINITY } else { 0.0 });
                        let mut count = 0usize;
                        for kd in wd.taps(od) {
                            let id = wd.at(od, kd);
                            for kh in wh.taps(oh) {
                                let ih = wh.at(oh, kh);
                                for kw in ww.taps(ow) {
                                    let iw = ww.at(ow, kw);
                                    let xi =
                                        (((b * wd.input + id) * wh.input + ih) * ww.input + iw) * c;
                                    count += 1;
                                    for (a, &v) in acc.iter_mut().zip(&x[xi..xi + c]) {
                                        *a = if self.max {
                                            a.max(v as f64)
                                        } else {
                                            *a + v as f64
                                        };
                                    }
                                }
                            }
                        }
                        let scale = if self.max {
                            1.0
                        } else {
                            1.0 / count.max(1) as f64
                        };
                        out.extend(acc.iter().map(|&a| (a * scale) as f32));
                    }
                }
            }
        }
        vec![super::tensor(&self.out_shape, out)]
    }
    fn flops(&self) -> u64 {
        let taps: usize = self.windows.iter().map(|w| w.kernel).product();
        (taps * self.out_shape.iter().product::<usize>()) as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let p = kerac::pool::Pool {
            batch: self.batch,
            windows: self.windows,
            channels: self.channels,
            max: self.max,
        };
        l.unary(Kernel::Pool(p), self.flops());
        Ok(())
    }
}

fn build_pool<const R: usize, const MAX: bool>(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default, deserialize_with = "opt_ints")]
        pool_size: Option<Vec<usize>>,
        #[serde(default, deserialize_with = "opt_ints")]
        strides: Option<Vec<usize>>,
        #[serde(default = "valid")]
        padding: String,
        data_format: Option<String>,
    }
    fn valid() -> String {
        "valid".into()
    }
    fn opt_ints<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<Vec<usize>>, D::Error> {
        let v = Option::<serde_json::Value>::deserialize(d)?;
        match v {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => int_or_list(v).map(Some).map_err(serde::de::Error::custom),
        }
    }
    let c: Config = ctx.parse()?;
    check_channels_last(c.data_format.as_deref())?;
    let (batch, spatial, channels) = spatial_input(ctx.input()?, R)?;
    let pool = per_axis("pool_size", c.pool_size.as_deref().unwrap_or(&[2]), R)?;
    let strides = match &c.strides {
        Some(s) => per_axis("strides", s, R)?,
        None => pool.clone(),
    };
    let mut w = Vec::with_capacity(R);
    for i in 0..R {
        w.push(
            window(spatial[i], pool[i], strides[i], 1, &c.padding).map_err(|e| {
                Error::new(format!(
                    "`pool_size` {} and `strides` {}: {}",
                    pool[i], strides[i], e.message
                ))
            })?,
        );
    }
    let mut out = vec![batch];
    out.extend(w.iter().map(|w| w.output));
    out.push(channels);
    // A `same` window may be far larger than its input; its taps still run.
    let factors: Vec<usize> = w
        .iter()
        .map(|w| w.kernel)
        .chain(out.iter().copied())
        .collect();
    check_work(&factors, "`pool_size` and the output shape")?;
    let op = PoolOp {
        windows: lift3(&w, Window::UNIT),
        channels,
        batch,
        max: MAX,
        out_shape: out.clone(),
    };
    Ok(Lowered::one(op, out))
}

/// Max or mean over all spatial positions.
#[derive(Debug)]
struct GlobalPoolOp {
    batch: usize,
    positions: usize,
    channels: usize,
    max: bool,
    out_shape: Shape,
}

impl Op for GlobalPoolOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x = inputs[0].as_slice().unwrap_or_default();
        let c = self.channels;
        let mut out = Vec::with_capacity(self.batch * c);
        for b in 0..self.batch {
            let sample = &x[b * self.positions * c..(b + 1) * self.positions * c];
            for ch in 0..c {
                let values = sample.iter().skip(ch).step_by(c).map(|&v| v as f64);
                let v = if self.max {
                    values.fold(f64::NEG_INFINITY, f64::max)
                } else {
                    values.sum::<f64>() / self.positions as f64
                };
                out.push(v as f32);
            }
        }
        vec![super::tensor(&self.out_shape, out)]
    }
    fn flops(&self) -> u64 {
        (self.batch * self.positions * self.channels) as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let p = kerac::pool::GlobalPool {
            batch: self.batch,
            positions: self.positions,
            channels: self.channels,
            max: self.max,
        };
        l.unary(Kernel::GlobalPool(p), self.flops());
        Ok(())
    }
}

fn build_global<const R: usize, const MAX: bool>(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        data_format: Option<String>,
        #[serde(default)]
        keepdims: bool,
    }
    let c: Config = ctx.parse()?;
    check_channels_last(c.data_format.as_deref())?;
    let (batch, spatial, channels) = spatial_input(ctx.input()?, R)?;
    let mut out = vec![batch];
    if c.keepdims {
        out.extend(std::iter::repeat_n(1, R));
    }
    out.push(channels);
    let op = GlobalPoolOp {
        batch,
        positions: spatial.iter().product(),
        channels,
        max: MAX,
        out_shape: out.clone(),
    };
    Ok(Lowered::one(op, out))
}
