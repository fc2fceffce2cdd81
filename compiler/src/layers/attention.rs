//! Attention: Keras's dot-product `Attention` and `MultiHeadAttention` (query, value
//! and key of different lengths, `use_bias`, `output_shape`, causal masks). Projections
//! lower to dense calls; the scores, softmax and weighted sum to the runtime's
//! attention kernel, one pass per query with an online softmax.

use super::core::DenseOp;
use super::{tensor, BuildFn, LayerCtx, Lowered, Op, Weight};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::plan::{BufferId, Kernel, Lower};
use kerac::attention::{Attention, MASKED};
use ndarray::ArrayD;
use serde::Deserialize;
use serde_json::Value;

/// The classes this family builds.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("Attention", build_attention),
    ("AdditiveAttention", build_additive),
    ("EinsumDense", build_einsum_dense),
    ("MultiHeadAttention", build_multi_head),
];

/// Reference attention in f64 with a plain softmax: `q`, `k`, `v` as
/// `[batch, t, heads, d]` flat slices.
fn reference(p: &Attention, q: &[f32], k: &[f32], v: &[f32], w: &[f32]) -> Vec<f32> {
    let (h, dk, dv) = (p.heads, p.dk, p.dv);
    let mut y = vec![0f32; p.batch * p.tq * h * dv];
    for b in 0..p.batch {
        for i in 0..p.tq {
            for head in 0..h {
                let qi = &q[((b * p.tq + i) * h + head) * dk..][..dk];
                let scores: Vec<f64> = (0..p.tk)
                    .map(|j| {
                        let kj = &k[((b * p.tk + j) * h + head) * dk..][..dk];
                        let s: f64 = qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let s = if p.additive {
                            qi.iter()
                                .zip(kj)
                                .zip(w)
                                .map(|((&a, &b), &wd)| {
                                    wd as f64 * (p.scale as f64 * (a as f64 + b as f64)).tanh()
                                })
                                .sum()
                        } else {
                            s * p.scale as f64
                        };
                        if p.causal && j > i {
                            s + MASKED as f64
                        } else {
                            s
                        }
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = e.iter().sum();
                let out = &mut y[((b * p.tq + i) * h + head) * dv..][..dv];
                for (j, w) in e.iter().enumerate() {
                    let vj = &v[((b * p.tk + j) * h + head) * dv..][..dv];
                    for (o, &x) in out.iter_mut().zip(vj) {
                        *o += (w / total * x as f64) as f32;
                    }
                }
            }
        }
    }
    y
}

fn causal(ctx: &LayerCtx) -> bool {
    ctx.call
        .get("use_causal_mask")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn seq(shape: &[usize]) -> Result<[usize; 3]> {
    match *shape {
        [b, t, d] => Ok([b, t, d]),
        _ => Err(Error::new(format!(
            "expected inputs of shape [batch, steps, features], found {shape:?}"
        ))),
    }
}

/// `Attention([query, value(, key)])` (dot or concat scores) and `AdditiveAttention`.
#[derive(Debug)]
struct DotAttentionOp {
    p: Attention,
    /// Per-feature weights of additive scores.
    w: Vec<f32>,
}

impl Op for DotAttentionOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let flat = |i: usize| inputs[i].iter().copied().collect::<Vec<f32>>();
        let (q, v) = (flat(0), flat(1));
        let k = if inputs.len() > 2 { flat(2) } else { v.clone() };
        let p = &self.p;
        vec![tensor(
            &[p.batch, p.tq, p.dv],
            reference(p, &q, &k, &v, &self.w),
        )]
    }
    fn flops(&self) -> u64 {
        let p = &self.p;
        (2 * p.batch * p.tq * p.tk * (p.dk + p.dv)) as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let (q, v) = (l.inputs[0], l.inputs[1]);
        let k = l.inputs.get(2).copied().unwrap_or(v);
        let w = self
            .p
            .additive
            .then(|| l.weight("score_weights", self.w.clone()));
        let out = l.output(0);
        l.step(
            Kernel::Attention { p: self.p, w },
            vec![q, k, v],
            out,
            self.flops(),
        );
        Ok(())
    }
}

fn build_attention(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        use_scale: bool,
        #[serde(default = "dot")]
        score_mode: String,
    }
    fn dot() -> String {
        "dot".into()
    }
    let c: Config = ctx.parse()?;
    let additive = match c.score_mode.as_str() {
        "dot" => false,
        "concat" => true,
        other => {
            bail!("score_mode `{other}` is not supported; expected dot or concat")
        }
    };
    attention_layer(ctx, c.use_scale, additive, false)
}

/// `AdditiveAttention`: `sum_d scale[d] * tanh(q_d + k_d)` scores.
fn build_additive(ctx: &mut LayerCtx) -> Result<Lowered> {
    let use_scale = ctx
        .config
        .get("use_scale")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    attention_layer(ctx, use_scale, true, true)
}

/// The attention layers without projections. `vector_scale`: AdditiveAttention's
/// per-feature scale (Attention's concat mode has a scalar scale inside the tanh and a
/// scalar weight outside it).
fn attention_layer(
    ctx: &mut LayerCtx,
    use_scale: bool,
    additive: bool,
    vector_scale: bool,
) -> Result<Lowered> {
    if !(2..=3).contains(&ctx.inputs.len()) {
        return Err(Error::new("expected [query, value] or [query, value, key]"));
    }
    let [b, tq, d] = seq(&ctx.inputs[0])?;
    let [bv, tk, dv] = seq(&ctx.inputs[1])?;
    let key = ctx
        .inputs
        .get(2)
        .map(|s| seq(s))
        .transpose()?
        .unwrap_or([bv, tk, dv]);
    if bv != b || key[0] != b || key[1] != tk || key[2] != d {
        bail!(
            "query {:?}, value {:?} and key {key:?} do not fit together",
            ctx.inputs[0],
            ctx.inputs[1]
        );
    }
    let scalar = |ctx: &mut LayerCtx, name: &str| -> Result<f32> {
        Ok(ctx.weight(name, &[])?.iter().copied().next().unwrap_or(1.0))
    };
    let (scale, w) = if !additive {
        let s = if use_scale {
            scalar(ctx, "scale")?
        } else {
            1.0
        };
        (s, Vec::new())
    } else if vector_scale {
        let w = if use_scale {
            ctx.weight("scale", &[d])?.iter().copied().collect()
        } else {
            vec![1.0; d]
        };
        (1.0, w)
    } else {
        let s = if use_scale {
            scalar(ctx, "scale")?
        } else {
            1.0
        };
        (s, vec![scalar(ctx, "concat_score_weight")?; d])
    };
    let p = Attention {
        batch: b,
        heads: 1,
        tq,
        tk,
        dk: d,
        dv,
        scale,
        causal: causal(ctx),
        additive,
    };
    Ok(Lowered::one(DotAttentionOp { p, w }, vec![b, tq, dv]))
}

/// One projection: `x W + b` with `W` flattened to `[in, out]`.
#[derive(Debug)]
struct Projection {
    kernel: Weight,
    bias: Option<Weight>,
}

impl Projection {
    /// Reads a kernel whose first `inputs` axes are the input side.
    fn read(
        ctx: &mut LayerCtx,
        name: &str,
        kernel: &[usize],
        inputs: usize,
        bias: &[usize],
        use_bias: bool,
    ) -> Result<Projection> {
        let k = ctx.weight(&format!("kernel|{name}/kernel"), kernel)?;
        let rows: usize = kernel[..inputs].iter().product();
        let cols: usize = kernel[inputs..].iter().product();
        let kernel = tensor(&[rows, cols], k.iter().copied().collect());
        let bias = if use_bias {
            let b = ctx.weight(&format!("bias|{name}/bias"), bias)?;
            Some(tensor(&[b.len()], b.iter().copied().collect()))
        } else {
            None
        };
        Ok(Projection { kernel, bias })
    }

    fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (k, n) = (self.kernel.shape()[0], self.kernel.shape()[1]);
        let w = self.kernel.as_slice().unwrap_or_default();
        let mut y = vec![0f32; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let mut s = self.bias.as_ref().map_or(0.0, |b| b[c] as f64);
                for i in 0..k {
                    s += x[r * k + i] as f64 * w[i * n + c] as f64;
                }
                y[r * n + c] = s as f32;
            }
        }
        y
    }

    fn lower(&self, l: &mut Lower, name: &str, x: BufferId, rows: usize, to: BufferId) {
        let (k, n) = (self.kernel.shape()[0], self.kernel.shape()[1]);
        let w = l.weight(
            &format!("{name}/kernel"),
            self.kernel.iter().copied().collect(),
        );
        let b = self
            .bias
            .as_ref()
            .map(|b| l.weight(&format!("{name}/bias"), b.iter().copied().collect()));
        l.step(
            Kernel::Dense {
                p: kerac::dense::Dense {
                    rows,
                    k,
                    n,
                    act: kerac::Act::Linear,
                },
                w,
                b,
            },
            vec![x],
            to,
            2 * (rows * k * n) as u64,
        );
    }
}

#[derive(Debug)]
struct MultiHeadOp {
    p: Attention,
    query: Projection,
    key: Projection,
    value: Projection,
    output: Projection,
    out_dim: usize,
}

impl Op for MultiHeadOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let p = &self.p;
        let flat = |i: usize| inputs[i].iter().copied().collect::<Vec<f32>>();
        let (q, v) = (flat(0), flat(1));
        let k = if inputs.len() > 2 { flat(2) } else { v.clone() };
        let q = self.query.apply(&q, p.batch * p.tq);
        let k = self.key.apply(&k, p.batch * p.tk);
        let v = self.value.apply(&v, p.batch * p.tk);
        let o = reference(p, &q, &k, &v, &[]);
        let y = self.output.apply(&o, p.batch * p.tq);
        vec![tensor(&[p.batch, p.tq, self.out_dim], y)]
    }
    fn flops(&self) -> u64 {
        let p = &self.p;
        let proj = |w: &Projection, rows: usize| (2 * rows * w.kernel.len()) as u64;
        proj(&self.query, p.batch * p.tq)
            + proj(&self.key, p.batch * p.tk)
            + proj(&self.value, p.batch * p.tk)
            + proj(&self.output, p.batch * p.tq)
            + (2 * p.batch * p.heads * p.tq * p.tk * (p.dk + p.dv)) as u64
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let p = self.p;
        let (qx, vx) = (l.inputs[0], l.inputs[1]);
        let kx = l.inputs.get(2).copied().unwrap_or(vx);
        let (rq, rk) = (p.batch * p.tq, p.batch * p.tk);
        let q = l.temp(rq * p.heads * p.dk);
        let k = l.temp(rk * p.heads * p.dk);
        let v = l.temp(rk * p.heads * p.dv);
        self.query.lower(l, "query", qx, rq, q);
        self.key.lower(l, "key", kx, rk, k);
        self.value.lower(l, "value", vx, rk, v);
        let o = l.temp(rq * p.heads * p.dv);
        let flops = (2 * p.batch * p.heads * p.tq * p.tk * (p.dk + p.dv)) as u64;
        l.step(Kernel::Attention { p, w: None }, vec![q, k, v], o, flops);
        let out = l.output(0);
        self.output.lower(l, "attention_output", o, rq, out);
        Ok(())
    }
}

fn build_multi_head(ctx: &mut LayerCtx) -> Result<Lowered> {
    #[derive(Deserialize)]
    struct Config {
        num_heads: usize,
        key_dim: usize,
        value_dim: Option<usize>,
        #[serde(default = "yes")]
        use_bias: bool,
        #[serde(default)]
        output_shape: Value,
        #[serde(default)]
        attention_axes: Value,
        #[serde(default)]
        use_gate: bool,
    }
    fn yes() -> bool {
        true
    }
    let c: Config = ctx.parse()?;
    if c.use_gate {
        return Err(Error::new("use_gate=True is not supported"));
    }
    let axes_ok = match &c.attention_axes {
        Value::Null => true,
        Value::Array(a) => a.len() == 1 && matches!(a[0].as_i64(), Some(1) | Some(-2)),
        v => v.as_i64().is_some_and(|a| a == 1 || a == -2),
    };
    if !axes_ok {
        bail!(
            "attention_axes {} is not supported; expected the time axis (1)",
            c.attention_axes
        );
    }
    if !(2..=3).contains(&ctx.inputs.len()) {
        return Err(Error::new("expected query, value and optionally key"));
    }
    let [b, tq, dq] = seq(&ctx.inputs[0])?;
    let [bv, tk, dvin] = seq(&ctx.inputs[1])?;
    let [bk, tkk, dkin] = match ctx.inputs.get(2) {
        Some(s) => seq(s)?,
        None => [bv, tk, dvin],
    };
    if bv != b || bk != b || tkk != tk {
        bail!(
            "query {:?}, value {:?} and key {:?} do not fit together",
            ctx.inputs[0],
            ctx.inputs[1],
            ctx.inputs.get(2)
        );
    }
    let (h, dk) = (c.num_heads, c.key_dim);
    let dv = c.value_dim.unwrap_or(dk);
    let out_dim = match &c.output_shape {
        Value::Null => dq,
        Value::Array(a) if a.len() == 1 => a[0].as_u64().unwrap_or(0) as usize,
        v => v.as_u64().map_or(0, |n| n as usize),
    };
    if h == 0 || dk == 0 || dv == 0 || out_dim == 0 {
        bail!(
            "num_heads, key_dim, value_dim and output_shape must be positive single sizes (output_shape {})",
            c.output_shape
        );
    }
    for shape in [[b * tq, h, dk], [b * tk, h, dv], [b * tq, h, dv]] {
        super::elements(&shape)?;
    }
    // Keras 3 files keep the four projections under keys in sorted order.
    let per = 1 + c.use_bias as usize;
    if ctx.positional_weights() {
        // Stored: key, output, query, value; wanted: query, key, value, output.
        ctx.reorder_weights(&[per; 4], &[2, 0, 3, 1])?;
    }
    let ub = c.use_bias;
    let query = Projection::read(ctx, "query", &[dq, h, dk], 1, &[h, dk], ub)?;
    let key = Projection::read(ctx, "key", &[dkin, h, dk], 1, &[h, dk], ub)?;
    let value = Projection::read(ctx, "value", &[dvin, h, dv], 1, &[h, dv], ub)?;
    let output = Projection::read(
        ctx,
        "attention_output",
        &[h, dv, out_dim],
        2,
        &[out_dim],
        ub,
    )?;
    let p = Attention {
        batch: b,
        heads: h,
        tq,
        tk,
        dk,
        dv,
        scale: 1.0 / (dk as f32).sqrt(),
        causal: causal(ctx),
        additive: false,
    };
    Ok(Lowered::one(
        MultiHeadOp {
            p,
            query,
            key,
            value,
            output,
            out_dim,
        },
        vec![b, tq, out_dim],
    ))
}

/// `EinsumDense` for the equations that contract the input's last axis with the
/// kernel's first, keeping the input's other axes in front and the kernel's others
/// after (`abc,cd->abd`, `abc,cde->abde`, `...b,bc->...c`): in memory, a Dense layer
/// whose output is then seen with the kernel's axes.
#[derive(Debug)]
struct EinsumDenseOp {
    dense: DenseOp,
    out: Shape,
}

impl Op for EinsumDenseOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        self.dense
            .eval(inputs)
            .into_iter()
            .map(|y| tensor(&self.out, y.iter().copied().collect()))
            .collect()
    }
    fn flops(&self) -> u64 {
        self.dense.flops()
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        self.dense.lower(l)
    }
}

fn build_einsum_dense(ctx: &mut LayerCtx) -> Result<Lowered> {
    let equation = ctx
        .config
        .get("equation")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .replace(' ', "");
    let unsupported = || {
        Error::new(format!(
            "equation `{equation}` is not supported; expected the input's last axis contracted with the kernel's first, e.g. abc,cd->abd"
        ))
    };
    let (lhs, out) = equation.split_once("->").ok_or_else(unsupported)?;
    let (input, kernel) = lhs.split_once(',').ok_or_else(unsupported)?;
    let input = input.replace("...", "*");
    let out = out.replace("...", "*");
    let (lead, c) = input.split_at(input.len().saturating_sub(1));
    let kept = kernel.strip_prefix(c).ok_or_else(unsupported)?;
    if c.is_empty() || c == "*" || out != format!("{lead}{kept}") || kept.contains(c) {
        return Err(unsupported());
    }
    let shape = ctx.input()?.clone();
    if shape.len() < 2 || (!lead.contains('*') && lead.len() + 1 != shape.len()) {
        return Err(unsupported());
    }
    // The kernel's kept axes take their sizes from output_shape's last entries.
    let dims: Vec<Option<usize>> = match ctx.config.get("output_shape") {
        Some(Value::Array(a)) => a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect(),
        Some(v) => vec![v.as_u64().map(|d| d as usize)],
        None => Vec::new(),
    };
    if dims.len() < kept.len() {
        return Err(unsupported());
    }
    let kept_dims: Vec<usize> = dims[dims.len() - kept.len()..]
        .iter()
        .map(|d| d.ok_or_else(unsupported))
        .collect::<Result<_>>()?;
    let k = *shape.last().unwrap_or(&0);
    let mut kernel_shape = vec![k];
    kernel_shape.extend(&kept_dims);
    let bias_axes = ctx
        .config
        .get("bias_axes")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !bias_axes.is_empty() && !kept.ends_with(&bias_axes) {
        bail!(
            "bias_axes `{bias_axes}` is not supported; expected trailing output axes of the kernel"
        );
    }
    let activation =
        super::activation::Activation::from_config(ctx.config.get("activation"), ctx.dialect)?;
    let bias_dims = &kept_dims[kept_dims.len() - bias_axes.len()..];
    let proj = Projection::read(
        ctx,
        "einsum",
        &kernel_shape,
        1,
        bias_dims,
        !bias_axes.is_empty(),
    )?;
    // A bias over the last kernel axes repeats along the others.
    let n: usize = kept_dims.iter().product();
    let bias = proj
        .bias
        .map(|b| tensor(&[n], b.iter().copied().cycle().take(n).collect()));
    let rows = shape[..shape.len() - 1].iter().product();
    let mut out_shape = shape[..shape.len() - 1].to_vec();
    out_shape.extend(&kept_dims);
    activation.check_rank(out_shape.len())?;
    if activation.to_act().is_none() && kept_dims.len() > 1 {
        // The dense form would take the softmax over all kernel axes, not the last.
        return Err(Error::new(
            "a softmax activation over an EinsumDense with several output axes is not supported",
        ));
    }
    let dense = DenseOp {
        kernel: proj.kernel,
        bias,
        activation,
        rows,
    };
    Ok(Lowered::one(
        EinsumDenseOp {
            dense,
            out: out_shape.clone(),
        },
        out_shape,
    ))
}
