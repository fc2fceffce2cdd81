//! Convolutions: Conv1D/2D/3D (valid, same, causal; strides, dilation, groups),
//! DepthwiseConv1D/2D, SeparableConv1D/2D and Conv1D/2D/3DTranspose.
//!
//! Every rank runs as 3-D (see `geometry`). Depthwise convolution is a grouped
//! convolution with one group per input channel, and separable convolution is a
//! depthwise convolution followed by a 1x1 one, so one loop nest serves them all.

use super::activation::Activation;
use super::geometry::{
    check_channels_last, check_work, checked_window, lift3, per_axis, spatial_input, window, Window,
};
use super::{elements, int_or_list, BuildFn, LayerCtx, Lowered, Op};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::plan::{Kernel, Lower};
use ndarray::ArrayD;
use serde::Deserialize;
use serde_json::Value;

/// Supported layer classes.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("Conv1D", build_conv::<1>),
    ("Conv2D", build_conv::<2>),
    ("Conv3D", build_conv::<3>),
    ("DepthwiseConv1D", build_depthwise::<1>),
    ("DepthwiseConv2D", build_depthwise::<2>),
    ("SeparableConv1D", build_separable::<1>),
    ("SeparableConv2D", build_separable::<2>),
    ("Conv1DTranspose", build_transpose::<1>),
    ("Conv2DTranspose", build_transpose::<2>),
    ("Conv3DTranspose", build_transpose::<3>),
];

#[derive(Deserialize)]
struct Config {
    filters: Option<usize>,
    #[serde(deserialize_with = "int_or_list")]
    kernel_size: Vec<usize>,
    #[serde(default = "one", deserialize_with = "int_or_list")]
    strides: Vec<usize>,
    #[serde(default = "valid")]
    padding: String,
    data_format: Option<String>,
    #[serde(default = "one", deserialize_with = "int_or_list")]
    dilation_rate: Vec<usize>,
    #[serde(default = "one_group")]
    groups: usize,
    #[serde(default = "yes")]
    use_bias: bool,
    depth_multiplier: Option<usize>,
    output_padding: Option<Value>,
}

fn one() -> Vec<usize> {
    vec![1]
}
fn one_group() -> usize {
    1
}
fn valid() -> String {
    "valid".into()
}
fn yes() -> bool {
    true
}

/// Parsed and checked geometry of one convolution layer.
struct Geometry {
    batch: usize,
    spatial: Vec<usize>,
    channels: usize,
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilation: Vec<usize>,
}

fn geometry<const R: usize>(ctx: &LayerCtx, c: &Config) -> Result<Geometry> {
    check_channels_last(c.data_format.as_deref())?;
    let (batch, spatial, channels) = spatial_input(ctx.input()?, R)?;
    let kernel = per_axis("kernel_size", &c.kernel_size, R)?;
    let strides = per_axis("strides", &c.strides, R)?;
    let dilation = per_axis("dilation_rate", &c.dilation_rate, R)?;
    Ok(Geometry {
        batch,
        spatial,
        channels,
        kernel,
        strides,
        dilation,
    })
}

fn windows(g: &Geometry, padding: &str, rank: usize) -> Result<[Window; 3]> {
    if padding == "causal" && rank != 1 {
        return Err(Error::new(
            "padding `causal` is only valid for 1-D convolutions",
        ));
    }
    let mut w = Vec::with_capacity(rank);
    for i in 0..rank {
        w.push(window(
            g.spatial[i],
            g.kernel[i],
            g.strides[i],
            g.dilation[i],
            padding,
        )?);
    }
    let factors: Vec<usize> = std::iter::once(g.batch)
        .chain(w.iter().map(|w| w.kernel))
        .chain(w.iter().map(|w| w.output))
        .collect();
    check_work(&factors, "`kernel_size` and the output shape")?;
    Ok(lift3(&w, Window::UNIT))
}

fn out_shape(g: &Geometry, w: &[Window; 3], rank: usize, channels: usize) -> Shape {
    let mut s = vec![g.batch];
    s.extend(w[3 - rank..].iter().map(|w| w.output));
    s.push(channels);
    s
}

/// A direct (grouped) convolution over a 3-D lifted input.
#[derive(Debug)]
pub struct ConvOp {
    /// Per-axis geometry, depth, height, width.
    pub windows: [Window; 3],
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Channel groups.
    pub groups: usize,
    /// Kernel, `[kd, kh, kw, cin / groups, cout]` row-major.
    pub kernel: Vec<f32>,
    /// Bias per output channel.
    pub bias: Option<Vec<f32>>,
    /// Fused activation.
    pub activation: Activation,
    /// Batch size.
    pub batch: usize,
    /// Output shape, batch first, at the layer's own rank.
    pub out_shape: Shape,
}

impl ConvOp {
    fn run(&self, x: &[f32]) -> Vec<f32> {
        let [wd, wh, ww] = self.windows;
        let (cin_g, cout_g) = (self.cin / self.groups, self.cout / self.groups);
        let mut out = vec![0f32; self.batch * wd.output * wh.output * ww.output * self.cout];
        let mut acc = vec![0f64; self.cout];
        let mut o = 0;
        for b in 0..self.batch {
            for od in 0..wd.output {
                for oh in 0..wh.output {
                    for ow in 0..ww.output {
                        match &self.bias {
                            Some(bias) => {
                                acc.iter_mut().zip(bias).for_each(|(a, &b)| *a = b as f64)
                            }
                            None => acc.fill(0.0),
                        }
                        for kd in wd.taps(od) {
                            let id = wd.at(od, kd);
                            for kh in wh.taps(oh) {
                                let ih = wh.at(oh, kh);
                                for kw in ww.taps(ow) {
                                    let iw = ww.at(ow, kw);
                                    let xi = (((b * wd.input + id) * wh.input + ih) * ww.input
                                        + iw)
                                        * self.cin;
                                    let ki = ((kd * wh.kernel + kh) * ww.kernel + kw)
                                        * cin_g
                                        * self.cout;
                                    for (co, a) in acc.iter_mut().enumerate() {
                                        let g = co / cout_g;
                                        let xs = &x[xi + g * cin_g..xi + (g + 1) * cin_g];
                                        for (ci, &xv) in xs.iter().enumerate() {
                                            *a += xv as f64
                                                * self.kernel[ki + ci * self.cout + co] as f64;
                                        }
                                    }
                                }
                            }
                        }
                        for (dst, &a) in out[o..o + self.cout].iter_mut().zip(&acc) {
                            *dst = a as f32;
                        }
                        o += self.cout;
                    }
                }
            }
        }
        out
    }

    fn finish(&self, data: Vec<f32>) -> ArrayD<f32> {
        let mut y = super::tensor(&self.out_shape, data);
        self.activation.apply(&mut y);
        y
    }
}

impl ConvOp {
    /// The runtime kernel's parameters.
    fn params(&self, act: kerac::Act) -> kerac::conv::Conv {
        kerac::conv::Conv {
            batch: self.batch,
            windows: self.windows,
            cin: self.cin,
            cout: self.cout,
            groups: self.groups,
            act,
            panels: false,
        }
    }
}

impl Op for ConvOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x = inputs[0].as_slice().unwrap_or_default();
        vec![self.finish(self.run(x))]
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let w = l.weight("kernel", self.kernel.clone());
        let b = self.bias.as_ref().map(|b| l.weight("bias", b.clone()));
        super::lower_with_activation(l, &self.activation, self.flops(), |act| Kernel::Conv {
            p: self.params(act),
            w,
            b,
        })
    }
    fn flops(&self) -> u64 {
        let taps: usize = self.windows.iter().map(|w| w.kernel).product();
        let outputs: usize = self.out_shape.iter().product();
        (2 * taps * (self.cin / self.groups)) as u64 * outputs as u64
            + self.activation.flops_per_element() * outputs as u64
    }
}

fn build_conv<const R: usize>(ctx: &mut LayerCtx) -> Result<Lowered> {
    let c: Config = ctx.parse()?;
    let g = geometry::<R>(ctx, &c)?;
    let filters = c
        .filters
        .ok_or_else(|| Error::new("config has no `filters`"))?;
    if c.groups == 0 || g.channels % c.groups != 0 || filters % c.groups != 0 {
        bail!(
            "groups {} must divide the input channels {} and filters {filters}",
            c.groups,
            g.channels
        );
    }
    let w = windows(&g, &c.padding, R)?;
    let mut kshape = g.kernel.clone();
    kshape.extend([g.channels / c.groups, filters]);
    let kernel = ctx.weight("kernel", &kshape)?.into_iter().collect();
    let bias = if c.use_bias {
        Some(ctx.weight("bias", &[filters])?.into_iter().collect())
    } else {
        None
    };
    let out = out_shape(&g, &w, R, filters);
    let activation = Activation::from_config(ctx.config.get("activation"), ctx.dialect)?;
    activation.check_rank(out.len())?;
    let op = ConvOp {
        windows: w,
        cin: g.channels,
        cout: filters,
        groups: c.groups,
        kernel,
        bias,
        activation,
        batch: g.batch,
        out_shape: out.clone(),
    };
    Ok(Lowered::one(op, out))
}

/// The depthwise half of Depthwise and Separable convolutions: `[k.., cin, dm]` is
/// already the `[k.., 1, cin * dm]` kernel of a grouped convolution.
fn depthwise_op<const R: usize>(
    ctx: &mut LayerCtx,
    c: &Config,
    g: &Geometry,
    weight_name: &str,
    with_bias: bool,
    activation: Activation,
) -> Result<ConvOp> {
    let dm = c.depth_multiplier.unwrap_or(1);
    if dm == 0 {
        return Err(Error::new("depth_multiplier must be positive"));
    }
    let w = windows(g, &c.padding, R)?;
    let mut kshape = g.kernel.clone();
    kshape.extend([g.channels, dm]);
    let kernel = ctx.weight(weight_name, &kshape)?.into_iter().collect();
    let cout = g.channels * dm;
    let bias = if with_bias {
        Some(ctx.weight("bias", &[cout])?.into_iter().collect())
    } else {
        None
    };
    let out = out_shape(g, &w, R, cout);
    Ok(ConvOp {
        windows: w,
        cin: g.channels,
        cout,
        groups: g.channels,
        kernel,
        bias,
        activation,
        batch: g.batch,
        out_shape: out,
    })
}

fn build_depthwise<const R: usize>(ctx: &mut LayerCtx) -> Result<Lowered> {
    let c: Config = ctx.parse()?;
    let g = geometry::<R>(ctx, &c)?;
    let activation = Activation::from_config(ctx.config.get("activation"), ctx.dialect)?;
    // Keras 2 names the depthwise kernel `depthwise_kernel`, Keras 3 `kernel`.
    let op = depthwise_op::<R>(
        ctx,
        &c,
        &g,
        "kernel|depthwise_kernel",
        c.use_bias,
        activation,
    )?;
    let out = op.out_shape.clone();
    Ok(Lowered::one(op, out))
}

/// Depthwise then pointwise.
#[derive(Debug)]
struct SeparableOp {
    depthwise: ConvOp,
    pointwise: ConvOp,
}

impl Op for SeparableOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mid = self.depthwise.run(inputs[0].as_slice().unwrap_or_default());
        vec![self.pointwise.finish(self.pointwise.run(&mid))]
    }
    fn flops(&self) -> u64 {
        self.depthwise.flops() + self.pointwise.flops()
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let dw = &self.depthwise;
        let dw_w = l.weight("depthwise_kernel", dw.kernel.clone());
        let mid = l.temp(dw.out_shape.iter().product());
        let input = l.inputs[0];
        l.step(
            Kernel::Conv {
                p: dw.params(kerac::Act::Linear),
                w: dw_w,
                b: None,
            },
            vec![input],
            mid,
            dw.flops(),
        );
        // The 1x1 convolution is a dense layer over every position.
        let pw = &self.pointwise;
        let w = l.weight("pointwise_kernel", pw.kernel.clone());
        let b = pw.bias.as_ref().map(|b| l.weight("bias", b.clone()));
        let rows = pw.out_shape.iter().product::<usize>() / pw.cout;
        let (k, n) = (pw.cin, pw.cout);
        let act = pw.activation.to_act().ok_or_else(|| {
            Error::new(
                "softmax after a separable convolution is not supported by the compiled backends",
            )
        })?;
        let out = l.output(0);
        l.step(
            Kernel::Dense {
                p: kerac::dense::Dense { rows, k, n, act },
                w,
                b,
            },
            vec![mid],
            out,
            pw.flops(),
        );
        Ok(())
    }
}

fn build_separable<const R: usize>(ctx: &mut LayerCtx) -> Result<Lowered> {
    let c: Config = ctx.parse()?;
    let g = geometry::<R>(ctx, &c)?;
    let filters = c
        .filters
        .ok_or_else(|| Error::new("config has no `filters`"))?;
    let depthwise = depthwise_op::<R>(ctx, &c, &g, "depthwise_kernel", false, Activation::Linear)?;
    let mid = depthwise.cout;
    let mut kshape = vec![1; R];
    kshape.extend([mid, filters]);
    let kernel = ctx
        .weight("pointwise_kernel", &kshape)?
        .into_iter()
        .collect();
    let bias = if c.use_bias {
        Some(ctx.weight("bias", &[filters])?.into_iter().collect())
    } else {
        None
    };
    let mut out = depthwise.out_shape.clone();
    *out.last_mut().unwrap_or(&mut 0) = filters;
    let activation = Activation::from_config(ctx.config.get("activation"), ctx.dialect)?;
    activation.check_rank(out.len())?;
    let pw = |w: &Window| window(w.output, 1, 1, 1, "valid");
    let d = depthwise.windows;
    let pointwise = ConvOp {
        windows: [pw(&d[0])?, pw(&d[1])?, pw(&d[2])?],
        cin: mid,
        cout: filters,
        groups: 1,
        kernel,
        bias,
        activation,
        batch: g.batch,
        out_shape: out.clone(),
    };
    Ok(Lowered::one(
        SeparableOp {
            depthwise,
            pointwise,
        },
        out,
    ))
}

/// A transposed convolution: each input value scatters `kernel` into the output.
#[derive(Debug)]
struct TransposeOp {
    /// Per-axis geometry seen from the output: `input` is the output length here, and
    /// `output` the input length (the forward convolution this transposes).
    windows: [Window; 3],
    cin: usize,
    cout: usize,
    /// `[kd, kh, kw, cout, cin]`.
    kernel: Vec<f32>,
    bias: Option<Vec<f32>>,
    activation: Activation,
    batch: usize,
    out_shape: Shape,
}

impl Op for TransposeOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x = inputs[0].as_slice().unwrap_or_default();
        let [wd, wh, ww] = self.windows;
        let (od_n, oh_n, ow_n) = (wd.input, wh.input, ww.input);
        let mut acc = vec![0f64; self.batch * od_n * oh_n * ow_n * self.cout];
        for b in 0..self.batch {
            for id in 0..wd.output {
                for ih in 0..wh.output {
                    for iw in 0..ww.output {
                        let xi =
                            (((b * wd.output + id) * wh.output + ih) * ww.output + iw) * self.cin;
                        let xs = &x[xi..xi + self.cin];
                        for kd in wd.taps(id) {
                            let od = wd.at(id, kd);
                            for kh in wh.taps(ih) {
                                let oh = wh.at(ih, kh);
                                for kw in ww.taps(iw) {
                                    let ow = ww.at(iw, kw);
                                    let oi =
                                        (((b * od_n + od) * oh_n + oh) * ow_n + ow) * self.cout;
                                    let ki = ((kd * wh.kernel + kh) * ww.kernel + kw)
                                        * self.cout
                                        * self.cin;
                                    for co in 0..self.cout {
                                        let ws = &self.kernel
                                            [ki + co * self.cin..ki + (co + 1) * self.cin];
                                        let s: f64 = xs
                                            .iter()
                                            .zip(ws)
                                            .map(|(&a, &w)| a as f64 * w as f64)
                                            .sum();
                                        acc[oi + co] += s;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(bias) = &self.bias {
            for (i, a) in acc.iter_mut().enumerate() {
                *a += bias[i % self.cout] as f64;
            }
        }
        let data = acc.into_iter().map(|a| a as f32).collect();
        let mut y = super::tensor(&self.out_shape, data);
        self.activation.apply(&mut y);
        vec![y]
    }
    fn flops(&self) -> u64 {
        let taps: usize = self.windows.iter().map(|w| w.kernel).product();
        let inputs: usize = self.batch * self.windows.iter().map(|w| w.output).product::<usize>();
        (2 * taps * self.cin * self.cout * inputs) as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        // Keras stores each tap `[cout, cin]`; the kernels read `[cin, cout]`, so that an
        // input channel scales one contiguous row of outputs, as in a convolution.
        let (cin, cout) = (self.cin, self.cout);
        let mut kernel = Vec::with_capacity(self.kernel.len());
        if cin * cout > 0 {
            for tap in self.kernel.chunks_exact(cin * cout) {
                for ci in 0..cin {
                    kernel.extend((0..cout).map(|co| tap[co * cin + ci]));
                }
            }
        }
        let w = l.weight("kernel", kernel);
        let b = self.bias.as_ref().map(|b| l.weight("bias", b.clone()));
        let (batch, windows) = (self.batch, self.windows);
        super::lower_with_activation(l, &self.activation, self.flops(), |act| {
            Kernel::ConvTranspose {
                p: kerac::conv::ConvTranspose {
                    batch,
                    windows,
                    cin,
                    cout,
                    act,
                },
                w,
                b,
            }
        })
    }
}

fn build_transpose<const R: usize>(ctx: &mut LayerCtx) -> Result<Lowered> {
    let c: Config = ctx.parse()?;
    let g = geometry::<R>(ctx, &c)?;
    let filters = c
        .filters
        .ok_or_else(|| Error::new("config has no `filters`"))?;
    let output_padding: Option<Vec<usize>> = match &c.output_padding {
        None | Some(Value::Null) => None,
        Some(v) => Some(per_axis(
            "output_padding",
            &int_or_list(v).map_err(|e| Error::new(format!("output_padding: {e}")))?,
            R,
        )?),
    };
    let mut w = Vec::with_capacity(R);
    for i in 0..R {
        let (input, k, s, d) = (g.spatial[i], g.kernel[i], g.strides[i], g.dilation[i]);
        if k == 0 || s == 0 || d == 0 {
            return Err(Error::new(
                "kernel size, strides and dilation must be positive",
            ));
        }
        let overflow = || Error::new("transposed convolution sizes overflow");
        let span = d
            .checked_mul(k - 1)
            .and_then(|v| v.checked_add(1))
            .ok_or_else(overflow)?;
        let full = (input - 1)
            .checked_mul(s)
            .and_then(|v| v.checked_add(span))
            .ok_or_else(overflow)?;
        // Keras's output length for a transposed convolution.
        let out_len = match (c.padding.as_str(), &output_padding) {
            ("valid", None) => (full - span)
                .checked_add(span.max(s))
                .ok_or_else(overflow)?,
            ("valid", Some(op)) => full.checked_add(op[i]).ok_or_else(overflow)?,
            ("same", None) => input.checked_mul(s).ok_or_else(overflow)?,
            ("same", Some(op)) => full
                .checked_add(op[i])
                .ok_or_else(overflow)?
                .saturating_sub(2 * (span / 2)),
            (other, _) => {
                bail!("padding `{other}` is not one of valid, same")
            }
        };
        elements(&[out_len])?;
        if out_len == 0 {
            return Err(Error::new("the output would be empty"));
        }
        let pad_total = full.saturating_sub(out_len);
        let pad_before = if c.padding == "same" {
            pad_total / 2
        } else {
            0
        };
        w.push(checked_window(Window {
            input: out_len,
            output: input,
            kernel: k,
            stride: s,
            dilation: d,
            pad_before,
        })?);
    }
    let windows = lift3(&w, Window::UNIT);
    let mut kshape = g.kernel.clone();
    kshape.extend([filters, g.channels]);
    let kernel = ctx.weight("kernel", &kshape)?.into_iter().collect();
    let bias = if c.use_bias {
        Some(ctx.weight("bias", &[filters])?.into_iter().collect())
    } else {
        None
    };
    let mut out = vec![g.batch];
    out.extend(w.iter().map(|w| w.input));
    out.push(filters);
    elements(&out)?;
    let activation = Activation::from_config(ctx.config.get("activation"), ctx.dialect)?;
    activation.check_rank(out.len())?;
    let op = TransposeOp {
        windows,
        cin: g.channels,
        cout: filters,
        kernel,
        bias,
        activation,
        batch: g.batch,
        out_shape: out.clone(),
    };
    Ok(Lowered::one(op, out))
}
