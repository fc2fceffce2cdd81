//! Operations that move values (reshape, transpose, expand_dims, squeeze,
//! concatenate, stack, slicing, and the identities cast and stop_gradient) and the
//! reductions (mean, sum, max, min over adjacent axes).

use super::{resolve_axes, Arg, BuildFn, OpCtx};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::layers::core::ReshapeOp;
use crate::layers::{self, merge, Lowered, Op};
use crate::plan::lower::padded;
use crate::plan::{Kernel, Lower};
use kerac::merge::RANK;
use kerac::shape::AxisMap;
use ndarray::ArrayD;
use serde_json::{json, Value};

/// Supported operations.
pub const OPERATIONS: &[(&str, BuildFn)] = &[
    ("Reshape", reshape),
    ("Transpose", transpose),
    ("ExpandDims", expand_dims),
    ("Squeeze", squeeze),
    ("Concatenate", concatenate),
    ("Stack", stack),
    ("GetItem", get_item),
    ("Cast", identity),
    ("StopGradient", identity),
    ("Identity", identity),
    ("Mean", reduce::<MEAN>),
    ("Sum", reduce::<SUM>),
    ("Max", reduce::<MAX>),
    ("Min", reduce::<MIN>),
];

fn only_input<'a>(ctx: &OpCtx<'a>) -> Result<&'a Shape> {
    let t = ctx.tensor(0, &["x", "input", "tensor", "a"])?;
    ctx.shape(t)
}

fn same_layout(shape: Shape) -> Lowered {
    Lowered::one(
        ReshapeOp {
            shape: shape.clone(),
        },
        shape,
    )
}

fn identity(ctx: &OpCtx) -> Result<Lowered> {
    if let Some(dtype) = ctx.raw(Some(1), &["dtype"]).and_then(Value::as_str) {
        if !dtype.starts_with("float") {
            bail!("cast to `{dtype}` is not supported; kerac computes in float32");
        }
    }
    Ok(same_layout(only_input(ctx)?.clone()))
}

fn reshape(ctx: &OpCtx) -> Result<Lowered> {
    let input = only_input(ctx)?;
    let target = ctx
        .axes(Some(1), &["newshape", "shape"])?
        .ok_or_else(|| Error::new("argument `newshape` is missing"))?;
    let total = layers::elements(input)?;
    let bad = || Error::new(format!("cannot reshape {input:?} to {target:?}"));
    if target.iter().filter(|&&d| d == -1).count() > 1 || target.iter().any(|&d| d < -1) {
        return Err(bad());
    }
    let known = target
        .iter()
        .filter(|&&d| d != -1)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .filter(|&k| k > 0 && total.is_multiple_of(k))
        .ok_or_else(bad)?;
    let out: Shape = target
        .iter()
        .map(|&d| if d == -1 { total / known } else { d as usize })
        .collect();
    if layers::elements(&out).ok() != Some(total) || out.first() != input.first() {
        bail!("reshaping {input:?} to {target:?} changes the batch axis; kerac keeps it");
    }
    Ok(same_layout(out))
}

fn transpose(ctx: &OpCtx) -> Result<Lowered> {
    let input = only_input(ctx)?;
    let order = match ctx.axes(Some(1), &["axes", "perm"])? {
        Some(axes) => axes
            .iter()
            .map(|&a| layers::resolve_axis(a, input.len()))
            .collect::<Result<Vec<_>>>()?,
        None => (0..input.len()).rev().collect(),
    };
    if order.first() != Some(&0) {
        bail!("transposing with axes {order:?} moves the batch axis; kerac keeps it first");
    }
    ctx.via_layer("Permute", json!({ "dims": &order[1..] }))
}

fn expand_dims(ctx: &OpCtx) -> Result<Lowered> {
    let input = only_input(ctx)?;
    let axes = ctx
        .axes(Some(1), &["axis"])?
        .ok_or_else(|| Error::new("argument `axis` is missing"))?;
    let rank = input.len() + axes.len();
    let axes = resolve_axes(&axes, rank)?;
    if axes.first() == Some(&0) {
        return Err(Error::new(
            "expand_dims before the batch axis is not supported",
        ));
    }
    let mut out = input.clone();
    for &a in &axes {
        out.insert(a, 1);
    }
    Ok(same_layout(out))
}

fn squeeze(ctx: &OpCtx) -> Result<Lowered> {
    let input = only_input(ctx)?;
    let axes = match ctx.axes(Some(1), &["axis"])? {
        Some(axes) => resolve_axes(&axes, input.len())?,
        None => (1..input.len()).filter(|&a| input[a] == 1).collect(),
    };
    if axes.first() == Some(&0) {
        return Err(Error::new("squeezing the batch axis is not supported"));
    }
    if let Some(&a) = axes.iter().find(|&&a| input[a] != 1) {
        bail!("cannot squeeze axis {a} of {input:?}: its length is not 1");
    }
    let out = input
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect();
    Ok(same_layout(out))
}

/// The tensors of a list argument (`concatenate([a, b])`), which must be the call's
/// inputs in order.
fn tensor_list(ctx: &OpCtx) -> Result<()> {
    let list = ctx
        .raw(Some(0), &["xs", "values", "tensors"])
        .and_then(Value::as_array)
        .ok_or_else(|| Error::new("expected a list of tensors as the first argument"))?;
    for (i, item) in list.iter().enumerate() {
        match super::to_arg(item, "xs")? {
            Arg::Tensor(t) if t == i => {}
            _ => {
                return Err(Error::new(
                    "every item of the list must be a tensor; constants are not supported here",
                ))
            }
        }
    }
    Ok(())
}

fn concatenate(ctx: &OpCtx) -> Result<Lowered> {
    tensor_list(ctx)?;
    let axis = ctx.axes(Some(1), &["axis"])?.unwrap_or(vec![0]);
    ctx.via_layer(
        "Concatenate",
        json!({ "axis": axis.first().copied().unwrap_or(0) }),
    )
}

fn stack(ctx: &OpCtx) -> Result<Lowered> {
    tensor_list(ctx)?;
    let first = ctx.shape(0)?;
    if ctx.inputs.iter().any(|s| s != first) {
        bail!("stack needs tensors of one shape, found {:?}", ctx.inputs);
    }
    let axis = ctx.axes(Some(1), &["axis"])?.unwrap_or(vec![0]);
    let axis = layers::resolve_axis(axis.first().copied().unwrap_or(0), first.len() + 1)?;
    if axis == 0 {
        return Err(Error::new("stacking along the batch axis is not supported"));
    }
    let mut out = first.clone();
    out.insert(axis, ctx.inputs.len());
    Ok(merge::stack(axis, out))
}

/// `x[...]`: basic indexing (slices with any step, integers, `None`, `...`).
fn get_item(ctx: &OpCtx) -> Result<Lowered> {
    let input = only_input(ctx)?;
    let key = ctx
        .raw(Some(1), &["key", "slice_spec"])
        .ok_or_else(|| Error::new("the index is missing"))?;
    let items = match key {
        Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    };
    let mut in_strides = vec![1usize; input.len()];
    for i in (0..input.len().saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * input[i + 1];
    }
    let explicit = items
        .iter()
        .filter(|i| !i.is_null() && !is_ellipsis(i))
        .count();
    if explicit > input.len() {
        bail!(
            "index {} has more entries than {input:?} has axes",
            crate::keras::config::short(key)
        );
    }
    let mut slice = Slice {
        shape: Vec::new(),
        strides: Vec::new(),
        offset: 0,
    };
    let mut axis = 0;
    let mut ellipsis_seen = false;
    // Output axes a negative step reverses.
    let mut reversed = Vec::new();
    for item in &items {
        if is_ellipsis(item) {
            if ellipsis_seen {
                return Err(Error::new("an index can hold one `...` only"));
            }
            ellipsis_seen = true;
            for _ in 0..input.len() - explicit {
                slice.keep(input[axis], in_strides[axis]);
                axis += 1;
            }
            continue;
        }
        if item.is_null() {
            slice.shape.push(1);
            slice.strides.push(0);
            continue;
        }
        let (len, stride) = (input[axis], in_strides[axis]);
        if let Some(i) = item.as_i64() {
            let at = if i < 0 {
                i.saturating_add(len as i64)
            } else {
                i
            };
            if !(0..len as i64).contains(&at) || axis == 0 {
                bail!(
                    "index {i} is out of range for axis {axis} of {input:?}, or indexes the batch axis"
                );
            }
            slice.offset += at as usize * stride;
        } else {
            let bounds = item.get("config").unwrap_or(item);
            let (start, count, step, backwards) = slice_bounds(bounds, len)?;
            if axis == 0 && (count != len || backwards) {
                return Err(Error::new("slicing the batch axis is not supported"));
            }
            if backwards {
                reversed.push(slice.shape.len());
            }
            slice.offset += start * stride;
            slice.shape.push(count);
            slice.strides.push(step * stride);
        }
        axis += 1;
    }
    while axis < input.len() {
        slice.keep(input[axis], in_strides[axis]);
        axis += 1;
    }
    if slice.shape.contains(&0) {
        bail!(
            "index {} selects no values",
            crate::keras::config::short(key)
        );
    }
    padded(&slice.shape)?;
    let out = slice.shape.clone();
    if reversed.is_empty() {
        Ok(Lowered::one(slice, out))
    } else {
        Ok(Lowered::one(Reversed { slice, reversed }, out))
    }
}

/// A slice with negative steps: the positions taken in increasing order by a strided
/// copy, then each such axis reversed (a resampling that reads it backwards).
#[derive(Debug)]
struct Reversed {
    slice: Slice,
    /// Output axes read backwards.
    reversed: Vec<usize>,
}

impl Op for Reversed {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mut y = self.slice.eval(inputs).remove(0);
        for &a in &self.reversed {
            y.invert_axis(ndarray::Axis(a));
        }
        vec![y.as_standard_layout().into_owned()]
    }
    fn flops(&self) -> u64 {
        0
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let shape = &self.slice.shape;
        let n: usize = shape.iter().product();
        let mut value = l.temp(n);
        l.step(self.slice.kernel()?, vec![l.inputs[0]], value, 0);
        for (i, &a) in self.reversed.iter().enumerate() {
            let next = if i + 1 == self.reversed.len() {
                l.output(0)
            } else {
                l.temp(n)
            };
            let resample = kerac::shape::Resample {
                batch: shape[..a].iter().product(),
                input: [1, 1, shape[a]],
                axes: [
                    AxisMap::UNIT,
                    AxisMap::UNIT,
                    AxisMap::Reverse { len: shape[a] },
                ],
                channels: shape[a + 1..].iter().product(),
            };
            l.step(Kernel::Resample(resample), vec![value], next, 0);
            value = next;
        }
        Ok(())
    }
}

fn is_ellipsis(v: &Value) -> bool {
    v.as_str() == Some("...")
        || v.as_str() == Some("Ellipsis")
        || v.get("class_name").and_then(Value::as_str) == Some("__ellipsis__")
}

/// `(first, count, step, backwards)` of a Python slice over `len` positions: the
/// positions it selects are `first + i * step` for `i < count`, taken in reverse order
/// when `backwards` (a negative step).
fn slice_bounds(bounds: &Value, len: usize) -> Result<(usize, usize, usize, bool)> {
    let get = |k: &str| -> Result<Option<i64>> {
        match bounds.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                Error::new(format!(
                    "slice `{k}` must be an integer, found {}",
                    crate::keras::config::short(v)
                ))
            }),
        }
    };
    let step = get("step")?.unwrap_or(1);
    if step == 0 {
        bail!("a slice step of 0 selects nothing; Python refuses it too");
    }
    let n = len as i64;
    let backwards = step < 0;
    // A step past the axis selects one value at most; capping it keeps the strides
    // derived from it small.
    let size = step.unsigned_abs().min(n.max(1) as u64) as i64;
    // Python's clamping: into [0, n] going forwards, into [-1, n - 1] going backwards.
    let (lo, hi) = if backwards { (-1, n - 1) } else { (0, n) };
    let clamp = |v: i64| {
        let v = if v < 0 { v.saturating_add(n) } else { v };
        v.clamp(lo, hi)
    };
    let (start, stop) = if backwards {
        (
            get("start")?.map_or(n - 1, clamp),
            get("stop")?.map_or(-1, clamp),
        )
    } else {
        (
            get("start")?.map_or(0, clamp),
            get("stop")?.map_or(n, clamp),
        )
    };
    let (from, to) = if backwards {
        (stop, start)
    } else {
        (start, stop)
    };
    let count = if to > from {
        (to - from - 1) / size + 1
    } else {
        0
    };
    // The lowest position selected.
    let first = if backwards {
        start - (count - 1).max(0) * size
    } else {
        start
    };
    Ok((
        first.max(0) as usize,
        count as usize,
        size as usize,
        backwards,
    ))
}

/// A strided view of the input copied out: slicing and integer indexing.
#[derive(Debug)]
struct Slice {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Slice {
    fn keep(&mut self, len: usize, stride: usize) {
        self.shape.push(len);
        self.strides.push(stride);
    }

    /// The strided copy that computes it.
    fn kernel(&self) -> Result<Kernel> {
        let shape = padded(&self.shape)?;
        let mut strides = [0; RANK];
        strides[RANK - self.strides.len()..].copy_from_slice(&self.strides);
        Ok(Kernel::StridedCopy(kerac::shape::Strided {
            shape,
            strides,
            offset: self.offset,
        }))
    }
}

impl Op for Slice {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let x = inputs[0].as_standard_layout();
        let x = x.as_slice().unwrap_or_default();
        let total: usize = self.shape.iter().product();
        let mut out = Vec::with_capacity(total);
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..total {
            let at = self.offset
                + index
                    .iter()
                    .zip(&self.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.push(x.get(at).copied().unwrap_or(0.0));
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < self.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        vec![layers::tensor(&self.shape, out)]
    }
    fn flops(&self) -> u64 {
        0
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        l.unary(self.kernel()?, 0);
        Ok(())
    }
}

const MEAN: u8 = 0;
const SUM: u8 = 1;
const MAX: u8 = 2;
const MIN: u8 = 3;

/// Mean, sum, max or min over any axes but the batch. Axes that are not adjacent are
/// first gathered to the end (a strided copy), so one pooling kernel reduces them.
fn reduce<const KIND: u8>(ctx: &OpCtx) -> Result<Lowered> {
    let input = only_input(ctx)?;
    let axes = match ctx.axes(Some(1), &["axis"])? {
        Some(axes) => resolve_axes(&axes, input.len())?,
        None => (0..input.len()).collect(),
    };
    if axes.first() == Some(&0) {
        return Err(Error::new(
            "reducing over the batch axis is not supported; give the axes after it",
        ));
    }
    let (Some(&first), Some(&last)) = (axes.first(), axes.last()) else {
        return Ok(same_layout(input.clone()));
    };
    let adjacent = last - first + 1 == axes.len();
    let keepdims = ctx.flag(Some(2), &["keepdims"], false);
    let out: Shape = input
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keepdims) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    let n: usize = axes.iter().map(|&a| input[a]).product();
    let op = if adjacent {
        ReduceOp {
            kind: KIND,
            gather: None,
            outer: input[..first].iter().product(),
            n,
            inner: input[last + 1..].iter().product(),
            out_shape: out.clone(),
        }
    } else {
        let mut in_strides = vec![1usize; input.len()];
        for i in (0..input.len() - 1).rev() {
            in_strides[i] = in_strides[i + 1] * input[i + 1];
        }
        let order: Vec<usize> = (0..input.len())
            .filter(|a| !axes.contains(a))
            .chain(axes.iter().copied())
            .collect();
        let gather = Slice {
            shape: order.iter().map(|&a| input[a]).collect(),
            strides: order.iter().map(|&a| in_strides[a]).collect(),
            offset: 0,
        };
        padded(&gather.shape)?;
        ReduceOp {
            kind: KIND,
            gather: Some(gather),
            outer: layers::elements(input)? / n.max(1),
            n,
            inner: 1,
            out_shape: out.clone(),
        }
    };
    Ok(Lowered::one(op, out))
}

/// A reduction of `[outer, n, inner]` over `n`.
#[derive(Debug)]
struct ReduceOp {
    kind: u8,
    /// The reduced axes moved last, where they are not adjacent.
    gather: Option<Slice>,
    outer: usize,
    n: usize,
    inner: usize,
    out_shape: Shape,
}

impl Op for ReduceOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let gathered = self.gather.as_ref().map(|g| g.eval(inputs));
        let x = match &gathered {
            Some(g) => g[0].as_standard_layout(),
            None => inputs[0].as_standard_layout(),
        };
        let x = x.as_slice().unwrap_or_default();
        let mut out = Vec::with_capacity(self.outer * self.inner);
        for o in 0..self.outer {
            for i in 0..self.inner {
                let values = (0..self.n).map(|j| x[(o * self.n + j) * self.inner + i] as f64);
                let v = match self.kind {
                    MAX => values.fold(f64::NEG_INFINITY, f64::max),
                    MIN => values.fold(f64::INFINITY, f64::min),
                    SUM => values.sum(),
                    _ => values.sum::<f64>() / self.n as f64,
                };
                out.push(v as f32);
            }
        }
        vec![layers::tensor(&self.out_shape, out)]
    }
    fn flops(&self) -> u64 {
        let (len_in, len_out) = (self.outer * self.n * self.inner, self.outer * self.inner);
        // A sum scales the mean; a minimum negates before and after the maximum.
        match self.kind {
            SUM => (len_in + len_out) as u64,
            MIN => (2 * len_in + len_out) as u64,
            _ => len_in as u64,
        }
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let pool = |max| {
            Kernel::GlobalPool(kerac::pool::GlobalPool {
                batch: self.outer,
                positions: self.n,
                channels: self.inner,
                max,
            })
        };
        let scaled = |l: &mut Lower, factor: f32, len: usize| {
            let p = kerac::norm::Strided {
                outer: 1,
                n: 1,
                inner: len,
            };
            let scale = l.weight("scale", vec![factor]);
            let offset = l.weight("offset", vec![0.0]);
            Kernel::ScaleShift { p, scale, offset }
        };
        let (mut input, out) = (l.inputs[0], l.output(0));
        let (len_in, len_out) = (self.outer * self.n * self.inner, self.outer * self.inner);
        if let Some(g) = &self.gather {
            let gathered = l.temp(len_in);
            l.step(g.kernel()?, vec![input], gathered, 0);
            input = gathered;
        }
        match self.kind {
            MAX => l.step(pool(true), vec![input], out, len_in as u64),
            SUM => {
                let mean = l.temp(len_out);
                l.step(pool(false), vec![input], mean, len_in as u64);
                let k = scaled(l, self.n as f32, len_out);
                l.step(k, vec![mean], out, len_out as u64);
            }
            MIN => {
                // min(x) = -max(-x).
                let negated = l.temp(len_in);
                let k = scaled(l, -1.0, len_in);
                l.step(k, vec![input], negated, len_in as u64);
                let max = l.temp(len_out);
                l.step(pool(true), vec![negated], max, len_in as u64);
                let k = scaled(l, -1.0, len_out);
                l.step(k, vec![max], out, len_out as u64);
            }
            _ => l.step(pool(false), vec![input], out, len_in as u64),
        }
        Ok(())
    }
}
