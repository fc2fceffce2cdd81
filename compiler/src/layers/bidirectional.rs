//! Bidirectional: a recurrent layer run forwards and backwards over the same
//! sequence, the backward half's sequence turned back into input order, and the two
//! merged (concat, sum, mul, ave) or returned apart.

use super::recurrent::Direction;
use super::{tensor, BuildFn, LayerCtx, Lowered, Op};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::plan::{Kernel, Lower};
use kerac::merge::{Fold, RANK};
use ndarray::ArrayD;
use serde_json::Value;

/// The classes this family builds.
pub const LAYERS: &[(&str, BuildFn)] = &[("Bidirectional", build_bidirectional)];

/// How Bidirectional combines its two halves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MergeMode {
    Concat,
    Fold(Fold),
    /// Both halves as separate outputs.
    None,
}

#[derive(Debug)]
struct BidirectionalOp {
    forward: Direction,
    backward: Direction,
    mode: MergeMode,
    /// Whether the last input is the sequence's mask: both halves keep their state at
    /// masked steps, and their sequences are zero there (Keras's zero_output_for_mask).
    masked: bool,
}

impl BidirectionalOp {
    fn merged_shape(&self) -> Shape {
        let mut s = self.forward.output_shape();
        if self.mode == MergeMode::Concat {
            *s.last_mut().unwrap_or(&mut 0) *= 2;
        }
        s
    }
}

impl Op for BidirectionalOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mask = self.masked.then(|| inputs[inputs.len() - 1]);
        let half = |d: &Direction| {
            let mut out = d.outputs(&d.run_from(inputs[0], &[], mask));
            if let (Some(m), true) = (mask, d.return_sequences) {
                let units = d.p.units;
                for (row, &keep) in out[0]
                    .as_slice_mut()
                    .unwrap_or_default()
                    .chunks_mut(units)
                    .zip(m.iter())
                {
                    if keep == 0.0 {
                        row.fill(0.0);
                    }
                }
            }
            out
        };
        let (f, b) = (half(&self.forward), half(&self.backward));
        let (fy, by) = (&f[0], &b[0]);
        let mut out = match self.mode {
            MergeMode::None => vec![fy.clone(), by.clone()],
            MergeMode::Concat => {
                let n = self.forward.p.units;
                let rows = fy.len() / n.max(1);
                let (fs, bs) = (
                    fy.as_slice().unwrap_or_default(),
                    by.as_slice().unwrap_or_default(),
                );
                let data = (0..rows)
                    .flat_map(|r| {
                        fs[r * n..(r + 1) * n]
                            .iter()
                            .chain(&bs[r * n..(r + 1) * n])
                            .copied()
                    })
                    .collect();
                vec![tensor(&self.merged_shape(), data)]
            }
            MergeMode::Fold(fold) => {
                let data = fy
                    .iter()
                    .zip(by.iter())
                    .map(|(&a, &b)| match fold {
                        Fold::Multiply => a * b,
                        Fold::Average => (a + b) * 0.5,
                        _ => a + b,
                    })
                    .collect();
                vec![tensor(&self.merged_shape(), data)]
            }
        };
        out.extend(f.into_iter().skip(1));
        out.extend(b.into_iter().skip(1));
        out
    }
    fn flops(&self) -> u64 {
        let merge = match self.mode {
            MergeMode::Fold(_) => self.forward.output_shape().iter().product::<usize>() as u64,
            _ => 0,
        };
        self.forward.flops() + self.backward.flops() + merge
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let x = l.inputs[0];
        let (f, b) = (&self.forward, &self.backward);
        if l.stream || f.stateful {
            return Err(Error::new(
                "Bidirectional needs the whole sequence: it cannot run one step per call",
            ));
        }
        let mask = self.masked.then(|| l.inputs[l.inputs.len() - 1]);
        let fw = f.lower_rows(l, x, mask)?;
        let bw = b.lower_rows(l, x, mask)?;
        let halves = match self.mode {
            MergeMode::None => [l.output(0), l.output(1)],
            _ => {
                let len: usize = f.output_shape().iter().product();
                [l.temp(len), l.temp(len)]
            }
        };
        f.extract(l, fw, halves[0], f.return_sequences, 0);
        b.extract(l, bw, halves[1], b.return_sequences, 0);
        if let (Some(mask), true) = (mask, f.return_sequences) {
            // Zero the masked steps of both sequences, in place.
            let p = &f.p;
            let shape = crate::plan::lower::padded(&[p.batch, p.steps, p.units])?;
            let mut seq = [0; RANK];
            seq[RANK - 3..].copy_from_slice(&[p.steps * p.units, p.units, 1]);
            let mut per_step = [0; RANK];
            per_step[RANK - 3..].copy_from_slice(&[p.steps, 1, 0]);
            for half in halves {
                let zeroed = l.temp(p.batch * p.steps * p.units);
                l.step(
                    Kernel::Merge {
                        fold: Fold::Multiply,
                        shape,
                        strides: vec![seq, per_step],
                    },
                    vec![half, mask],
                    zeroed,
                    0,
                );
                l.step(
                    Kernel::StridedCopy(kerac::shape::Strided {
                        shape,
                        strides: seq,
                        offset: 0,
                    }),
                    vec![zeroed],
                    half,
                    0,
                );
            }
        }
        let shape = f.output_shape();
        let len: usize = shape.iter().product();
        match self.mode {
            MergeMode::None => {}
            MergeMode::Concat => {
                let n = f.p.units;
                let out = l.output(0);
                l.step(
                    Kernel::Concat {
                        outer: len / n,
                        parts: vec![n, n],
                    },
                    halves.to_vec(),
                    out,
                    0,
                );
            }
            MergeMode::Fold(fold) => {
                let out = l.output(0);
                let flat = crate::plan::lower::padded(&[len])?;
                let mut strides = [0; RANK];
                strides[RANK - 1] = 1;
                l.step(
                    Kernel::Merge {
                        fold,
                        shape: flat,
                        strides: vec![strides, strides],
                    },
                    halves.to_vec(),
                    out,
                    len as u64,
                );
            }
        }
        let first_state = if self.mode == MergeMode::None { 2 } else { 1 };
        let mut next = first_state;
        for d in [f, b] {
            let works = if std::ptr::eq(d, f) { fw } else { bw };
            for i in 0..d.state_shapes().len() {
                let to = l.output(next);
                d.extract(l, works, to, false, i * d.p.units);
                next += 1;
            }
        }
        Ok(())
    }
}

fn build_bidirectional(ctx: &mut LayerCtx) -> Result<Lowered> {
    let shape = ctx
        .inputs
        .first()
        .cloned()
        .ok_or_else(|| Error::new("expected a sequence input"))?;
    let (class, inner) = ctx.wrapped()?;
    let (back_class, back_config) = match ctx.config.get("backward_layer") {
        Some(b) if !b.is_null() => (
            b.get("class_name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            b.get("config").cloned().unwrap_or(Value::Null),
        ),
        _ => {
            let mut c = inner.clone();
            let back = !c
                .get("go_backwards")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if let Some(o) = c.as_object_mut() {
                o.insert("go_backwards".into(), Value::from(back));
            }
            (class.to_string(), c)
        }
    };
    let mode = match ctx.config.get("merge_mode") {
        None => MergeMode::Concat,
        Some(Value::Null) => MergeMode::None,
        Some(v) => match v.as_str() {
            Some("concat") => MergeMode::Concat,
            Some("sum") => MergeMode::Fold(Fold::Add),
            Some("mul") => MergeMode::Fold(Fold::Multiply),
            Some("ave") => MergeMode::Fold(Fold::Average),
            _ => {
                bail!("merge_mode {v} is not one of concat, sum, mul, ave, None")
            }
        },
    };
    let forward = Direction::build(ctx, class, &inner, &shape)?;
    let mut backward = Direction::build(ctx, &back_class, &back_config, &shape)?;
    if !backward.p.backwards || forward.p.backwards {
        return Err(Error::new(
            "Bidirectional over a layer with go_backwards=True is not supported",
        ));
    }
    if forward.p.units != backward.p.units || forward.return_sequences != backward.return_sequences
    {
        return Err(Error::new(
            "Bidirectional halves with different units or return_sequences are not supported",
        ));
    }
    // Keras turns the backward half's sequence back into input order.
    backward.p.input_order = true;
    let op = BidirectionalOp {
        forward,
        backward,
        mode,
        masked: ctx.masked,
    };
    let mut outputs = match mode {
        MergeMode::None => vec![op.forward.output_shape(), op.backward.output_shape()],
        _ => vec![op.merged_shape()],
    };
    outputs.extend(op.forward.state_shapes());
    outputs.extend(op.backward.state_shapes());
    Ok(Lowered {
        op: Box::new(op),
        outputs,
        mask: None,
    })
}
