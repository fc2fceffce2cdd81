//! Spatial reshaping: ZeroPadding, Cropping and UpSampling in 1D/2D/3D (UpSampling2D
//! also bilinear). Each maps output positions to input positions along every axis.

use super::geometry::{check_channels_last, lift3, spatial_input};
use super::{elements, int_or_list, BuildFn, LayerCtx, Lowered, Op};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::plan::{Kernel, Lower};
use kerac::shape::AxisMap;
use ndarray::ArrayD;
use serde::Deserialize;
use serde_json::Value;

/// Supported layer classes.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("ZeroPadding1D", build_padding::<1, true>),
    ("ZeroPadding2D", build_padding::<2, true>),
    ("ZeroPadding3D", build_padding::<3, true>),
    ("Cropping1D", build_padding::<1, false>),
    ("Cropping2D", build_padding::<2, false>),
    ("Cropping3D", build_padding::<3, false>),
    ("UpSampling1D", build_upsampling::<1>),
    ("UpSampling2D", build_upsampling::<2>),
    ("UpSampling3D", build_upsampling::<3>),
];

/// Where one output position along an axis reads from: nothing (zero padding), one
/// input position, or a blend of two (bilinear).
#[derive(Debug, Clone, Copy)]
enum Source {
    Zero,
    At(usize),
    Blend(usize, usize, f64),
}

/// The reference reading of one axis of the runtime's [`AxisMap`] (which keeps
/// the per-axis geometry for both): the input taps of output `o`, in f64.
trait Reference {
    fn source(&self, o: usize) -> Source;
    fn reference_taps(&self, o: usize) -> [(Option<usize>, f64); 2];
}

impl Reference for AxisMap {
    fn source(&self, o: usize) -> Source {
        match *self {
            AxisMap::Pad { before, input, .. } => o
                .checked_sub(before)
                .filter(|&i| i < input)
                .map_or(Source::Zero, Source::At),
            AxisMap::Crop { before, .. } => Source::At(before + o),
            AxisMap::Nearest { scale, .. } => Source::At(o / scale),
            AxisMap::Reverse { len } => Source::At(len - 1 - o),
            AxisMap::Bilinear { scale, input, .. } => {
                let pos = ((o as f64 + 0.5) / scale as f64 - 0.5).max(0.0);
                let lo = (pos.floor() as usize).min(input - 1);
                let hi = (lo + 1).min(input - 1);
                Source::Blend(lo, hi, pos - lo as f64)
            }
        }
    }

    fn reference_taps(&self, o: usize) -> [(Option<usize>, f64); 2] {
        match self.source(o) {
            Source::Zero => [(None, 0.0), (None, 0.0)],
            Source::At(i) => [(Some(i), 1.0), (None, 0.0)],
            Source::Blend(a, b, t) => [(Some(a), 1.0 - t), (Some(b), t)],
        }
    }
}

/// Builds each output value from sources along each of three lifted axes.
#[derive(Debug)]
struct ResampleOp {
    axes: [AxisMap; 3],
    input: [usize; 3],
    channels: usize,
    batch: usize,
    out_shape: Shape,
}

impl Op for ResampleOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x = inputs[0].as_slice().unwrap_or_default();
        let [id, ih, iw] = self.input;
        let c = self.channels;
        let mut out = Vec::with_capacity(self.out_shape.iter().product());
        let mut acc = vec![0f64; c];
        for b in 0..self.batch {
            for od in 0..self.axes[0].len() {
                for oh in 0..self.axes[1].len() {
                    for ow in 0..self.axes[2].len() {
                        acc.fill(0.0);
                        for (d, wd) in self.axes[0].reference_taps(od) {
                            let Some(d) = d else { continue };
                            for (h, wh) in self.axes[1].reference_taps(oh) {
                                let Some(h) = h else { continue };
                                for (w, ww) in self.axes[2].reference_taps(ow) {
                                    let Some(w) = w else { continue };
                                    let xi = (((b * id + d) * ih + h) * iw + w) * c;
                                    let weight = wd * wh * ww;
                                    for (a, &v) in acc.iter_mut().zip(&x[xi..xi + c]) {
                                        *a += weight * v as f64;
                                    }
                                }
                            }
                        }
                        out.extend(acc.iter().map(|&a| a as f32));
                    }
                }
            }
        }
        vec![super::tensor(&self.out_shape, out)]
    }
    fn flops(&self) -> u64 {
        0
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let p = kerac::shape::Resample {
            batch: self.batch,
            input: self.input,
            axes: self.axes,
            channels: self.channels,
        };
        l.unary(Kernel::Resample(p), 0);
        Ok(())
    }
}

fn finish<const R: usize>(
    batch: usize,
    spatial: &[usize],
    channels: usize,
    maps: Vec<AxisMap>,
) -> Result<Lowered> {
    let mut out = vec![batch];
    out.extend(maps.iter().map(AxisMap::len));
    out.push(channels);
    elements(&out)?;
    let op = ResampleOp {
        axes: lift3(&maps, AxisMap::UNIT),
        input: lift3(spatial, 1),
        channels,
        batch,
        out_shape: out.clone(),
    };
    Ok(Lowered::one(op, out))
}

/// Keras's padding/cropping amounts: an int, one int per axis, or (before, after) pairs.
fn amounts(v: Option<&Value>, rank: usize, default: usize) -> Result<Vec<(usize, usize)>> {
    let bad = || Error::new(format!("unreadable padding/cropping amounts {v:?}"));
    let Some(v) = v else {
        return Ok(vec![(default, default); rank]);
    };
    if let Some(n) = v.as_u64() {
        return Ok(vec![(n as usize, n as usize); rank]);
    }
    let items = v.as_array().ok_or_else(bad)?;
    // 1-D layers take a bare (before, after) pair.
    if rank == 1 && items.len() == 2 && items.iter().all(Value::is_u64) {
        let n = |i: usize| items[i].as_u64().unwrap_or(0) as usize;
        return Ok(vec![(n(0), n(1))]);
    }
    if items.len() != rank {
        return Err(bad());
    }
    items
        .iter()
        .map(
            |item| match int_or_list(item).map_err(|_| bad())?.as_slice() {
                [n] => Ok((*n, *n)),
                [a, b] => Ok((*a, *b)),
                _ => Err(bad()),
            },
        )
        .collect()
}

fn build_padding<const R: usize, const PAD: bool>(ctx: &mut LayerCtx) -> Result<Lowered> {
    let format = ctx.config.get("data_format").and_then(Value::as_str);
    check_channels_last(format)?;
    let (batch, spatial, channels) = spatial_input(ctx.input()?, R)?;
    let key = if PAD { "padding" } else { "cropping" };
    let amounts = amounts(ctx.config.get(key), R, if PAD { 1 } else { 0 })?;
    let mut maps = Vec::with_capacity(R);
    for (i, &(before, after)) in amounts.iter().enumerate() {
        let input = spatial[i];
        let map = if PAD {
            let len = before
                .checked_add(input)
                .and_then(|n| n.checked_add(after))
                .ok_or_else(|| Error::new("padding overflows"))?;
            AxisMap::Pad { before, input, len }
        } else {
            if before.saturating_add(after) >= input {
                bail!("cropping ({before}, {after}) removes all of an axis of length {input}");
            }
            AxisMap::Crop {
                before,
                len: input - before - after,
            }
        };
        maps.push(map);
    }
    finish::<R>(batch, &spatial, channels, maps)
}

fn build_upsampling<const R: usize>(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        size: Option<Value>,
        #[serde(default)]
        length: Option<usize>,
        data_format: Option<String>,
        #[serde(default = "nearest")]
        interpolation: String,
    }
    fn nearest() -> String {
        "nearest".into()
    }
    let c: Config = ctx.parse()?;
    check_channels_last(c.data_format.as_deref())?;
    let (batch, spatial, channels) = spatial_input(ctx.input()?, R)?;
    let size: Vec<usize> = match (&c.size, c.length) {
        (Some(v), _) if !v.is_null() => {
            int_or_list(v).map_err(|e| Error::new(format!("size: {e}")))?
        }
        (_, Some(n)) => vec![n],
        _ => vec![2],
    };
    let size = super::geometry::per_axis("size", &size, R)?;
    if size.contains(&0) {
        return Err(Error::new("upsampling size must be positive"));
    }
    let bilinear = match c.interpolation.as_str() {
        "nearest" => false,
        "bilinear" if R == 2 => true,
        other => {
            bail!("interpolation `{other}` is not supported; expected nearest (or bilinear in 2D)")
        }
    };
    let mut maps = Vec::with_capacity(R);
    for i in 0..R {
        let (input, scale) = (spatial[i], size[i]);
        let len = input
            .checked_mul(scale)
            .ok_or_else(|| Error::new("upsampling overflows"))?;
        maps.push(if bilinear {
            AxisMap::Bilinear { scale, input, len }
        } else {
            AxisMap::Nearest { scale, len }
        });
    }
    finish::<R>(batch, &spatial, channels, maps)
}
