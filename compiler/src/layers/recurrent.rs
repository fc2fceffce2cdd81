//! Recurrent layers: SimpleRNN, LSTM, GRU (both `reset_after` forms), and
//! Bidirectional over any of them in every merge mode.
//!
//! Each direction lowers to a dense call that projects every step's input at once
//! (`x W + b`, the bulk of the arithmetic), then the runtime's recurrence, which adds
//! `h U` step by step and applies the gates, writing every step's state; strided copies
//! take the sequence, the last output and the states from there.

use super::activation::Activation;
use super::{tensor, BuildFn, LayerCtx, Lowered, Op, Weight};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Shape;
use crate::plan::{BufferId, Kernel, Lower};
use kerac::merge::RANK;
use kerac::recurrent::{Cell, Recurrent};
use ndarray::ArrayD;
use serde::Deserialize;
use serde_json::Value;

/// The classes this family builds.
pub const LAYERS: &[(&str, BuildFn)] = &[
    ("SimpleRNN", |ctx| build_single(ctx, "SimpleRNN")),
    ("LSTM", |ctx| build_single(ctx, "LSTM")),
    ("GRU", |ctx| build_single(ctx, "GRU")),
    ("RNN", build_rnn),
];

/// One direction of a recurrent layer with fixed sizes.
#[derive(Debug, Clone)]
pub(super) struct Direction {
    pub(super) p: Recurrent,
    act: Activation,
    rec_act: Activation,
    /// `[input, gates * units]`.
    kernel: Weight,
    /// `[units, gates * units]`.
    recurrent: Weight,
    /// `[gates * units]`: the input bias.
    bias: Option<Weight>,
    /// `[gates * units]`: a `reset_after` GRU's recurrent bias.
    recurrent_bias: Option<Weight>,
    input: usize,
    pub(super) return_sequences: bool,
    return_state: bool,
    /// Keeps its state from one call to the next (`stateful=True`).
    pub(super) stateful: bool,
}

#[derive(Deserialize)]
struct Config {
    units: usize,
    #[serde(default = "yes")]
    use_bias: bool,
    #[serde(default)]
    return_sequences: bool,
    #[serde(default)]
    return_state: bool,
    #[serde(default)]
    go_backwards: bool,
    #[serde(default)]
    stateful: bool,
    #[serde(default = "yes")]
    reset_after: bool,
    #[serde(default)]
    time_major: bool,
}

fn yes() -> bool {
    true
}

impl Direction {
    /// Reads one recurrent layer's config and weights for an input of `shape`.
    pub(super) fn build(
        ctx: &mut LayerCtx,
        class: &str,
        config: &Value,
        shape: &Shape,
    ) -> Result<Direction> {
        let c: Config =
            Config::deserialize(config).map_err(|e| Error::new(format!("config: {e}")))?;
        if c.time_major {
            return Err(Error::new(
                "time_major=True is not supported; save the model batch-major",
            ));
        }
        let [batch, steps, input] = shape[..] else {
            bail!("expected an input of shape [batch, steps, features], found {shape:?}");
        };
        if steps == 0 || c.units == 0 {
            return Err(Error::new(
                "a recurrent layer needs at least one step and one unit",
            ));
        }
        let cell = match class {
            "SimpleRNN" => Cell::Simple,
            "LSTM" => Cell::Lstm,
            "GRU" => Cell::Gru {
                reset_after: c.reset_after,
            },
            other => {
                bail!("`{other}` is not a recurrent layer kerac knows")
            }
        };
        let act = Activation::from_config(
            config.get("activation").or(Some(&Value::from("tanh"))),
            ctx.dialect,
        )?;
        let rec_act = match cell {
            Cell::Simple => Activation::Linear,
            _ => Activation::from_config(
                config
                    .get("recurrent_activation")
                    .or(Some(&Value::from("sigmoid"))),
                ctx.dialect,
            )?,
        };
        let (Some(act_k), Some(rec_k)) = (act.to_act(), rec_act.to_act()) else {
            return Err(Error::new(
                "softmax cannot be a recurrent layer's activation",
            ));
        };
        let units = c.units;
        let p = Recurrent {
            cell,
            batch,
            steps,
            units,
            act: act_k,
            rec_act: rec_k,
            backwards: c.go_backwards,
            input_order: false,
        };
        let width = p
            .gates()
            .checked_mul(units)
            .ok_or_else(|| Error::new(format!("{units} units are more than kerac supports")))?;
        // Every buffer the lowering makes must have a size kerac supports.
        super::elements(&[units, width])?;
        super::elements(&[batch, steps, width])?;
        super::elements(&[batch, steps, 2 * units])?;
        let kernel = ctx.weight("kernel", &[input, width])?;
        let recurrent = ctx.weight("recurrent_kernel", &[units, width])?;
        let (bias, recurrent_bias) = match (c.use_bias, cell) {
            (false, _) => (None, None),
            (true, Cell::Gru { reset_after: true }) => {
                let b = ctx.weight("bias", &[2, width])?;
                let flat: Vec<f32> = b.iter().copied().collect();
                (
                    Some(tensor(&[width], flat[..width].to_vec())),
                    Some(tensor(&[width], flat[width..].to_vec())),
                )
            }
            (true, _) => (Some(ctx.weight("bias", &[width])?), None),
        };
        Ok(Direction {
            p,
            act,
            rec_act,
            kernel,
            recurrent,
            bias,
            recurrent_bias,
            input,
            return_sequences: c.return_sequences,
            return_state: c.return_state,
            stateful: c.stateful,
        })
    }

    /// The main output's shape.
    pub(super) fn output_shape(&self) -> Shape {
        let p = &self.p;
        if self.return_sequences {
            vec![p.batch, p.steps, p.units]
        } else {
            vec![p.batch, p.units]
        }
    }

    /// Shapes of the states `return_state` adds.
    pub(super) fn state_shapes(&self) -> Vec<Shape> {
        let n = if self.p.cell == Cell::Lstm { 2 } else { 1 };
        vec![vec![self.p.batch, self.p.units]; if self.return_state { n } else { 0 }]
    }

    /// Reference semantics: every step's state (`[batch, steps, state]`, rows as the
    /// kernel stores them), in f64, from initial states (`h`, then `c`; zeros where
    /// absent).
    /// With a `mask` (`[batch, steps]`), a step whose mask is zero keeps the state.
    pub(super) fn run_from(
        &self,
        x: &ArrayD<f32>,
        initial: &[&ArrayD<f32>],
        mask: Option<&ArrayD<f32>>,
    ) -> Vec<f64> {
        let mask = mask.map(|m| m.iter().copied().collect::<Vec<f32>>());
        let p = &self.p;
        let (units, width, state) = (p.units, p.gates() * p.units, p.state());
        let xs = x.as_slice().unwrap_or_default();
        let w = self.kernel.as_slice().unwrap_or_default();
        let u = self.recurrent.as_slice().unwrap_or_default();
        let f = |a: &Activation, v: f64| a.scalar(v);
        let mut rows = vec![0f64; p.batch * p.steps * state];
        let init = |k: usize, b: usize| -> Vec<f64> {
            match initial.get(k) {
                Some(s) => s
                    .iter()
                    .skip(b * units)
                    .take(units)
                    .map(|&v| v as f64)
                    .collect(),
                None => vec![0f64; units],
            }
        };
        for b in 0..p.batch {
            let (mut h, mut c) = (init(0, b), init(1, b));
            for s in 0..p.steps {
                let (row, t) = p.rows(s);
                let (h_before, c_before) = (h.clone(), c.clone());
                let xt = &xs[(b * p.steps + t) * self.input..][..self.input];
                let mut zx: Vec<f64> = match &self.bias {
                    Some(bias) => bias.iter().map(|&v| v as f64).collect(),
                    None => vec![0.0; width],
                };
                for (i, &xv) in xt.iter().enumerate() {
                    for (z, &wv) in zx.iter_mut().zip(&w[i * width..(i + 1) * width]) {
                        *z += xv as f64 * wv as f64;
                    }
                }
                let matvec = |v: &[f64], cols: std::ops::Range<usize>| -> Vec<f64> {
                    let mut out = vec![0f64; cols.len()];
                    for (k, &vk) in v.iter().enumerate() {
                        for (o, &uv) in out
                            .iter_mut()
                            .zip(&u[k * width + cols.start..k * width + cols.end])
                        {
                            *o += vk * uv as f64;
                        }
                    }
                    out
                };
                let mut zh = matvec(&h, 0..width);
                if let Some(rb) = &self.recurrent_bias {
                    for (z, &v) in zh.iter_mut().zip(rb.iter()) {
                        *z += v as f64;
                    }
                }
                match p.cell {
                    Cell::Simple => {
                        h = (0..units).map(|j| f(&self.act, zx[j] + zh[j])).collect();
                    }
                    Cell::Lstm => {
                        let g = |k: usize, j: usize| zx[k * units + j] + zh[k * units + j];
                        for j in 0..units {
                            let i = f(&self.rec_act, g(0, j));
                            let fg = f(&self.rec_act, g(1, j));
                            let cand = f(&self.act, g(2, j));
                            let o = f(&self.rec_act, g(3, j));
                            c[j] = fg * c[j] + i * cand;
                            h[j] = o * f(&self.act, c[j]);
                        }
                    }
                    Cell::Gru { reset_after } => {
                        let z: Vec<f64> = (0..units)
                            .map(|j| f(&self.rec_act, zx[j] + zh[j]))
                            .collect();
                        let r: Vec<f64> = (0..units)
                            .map(|j| f(&self.rec_act, zx[units + j] + zh[units + j]))
                            .collect();
                        let hh: Vec<f64> = if reset_after {
                            (0..units)
                                .map(|j| f(&self.act, zx[2 * units + j] + r[j] * zh[2 * units + j]))
                                .collect()
                        } else {
                            let rh: Vec<f64> = (0..units).map(|j| r[j] * h[j]).collect();
                            let m = matvec(&rh, 2 * units..3 * units);
                            (0..units)
                                .map(|j| f(&self.act, zx[2 * units + j] + m[j]))
                                .collect()
                        };
                        h = (0..units)
                            .map(|j| z[j] * h[j] + (1.0 - z[j]) * hh[j])
                            .collect();
                    }
                }
                if let Some(m) = &mask {
                    if m[b * p.steps + t] == 0.0 {
                        h.copy_from_slice(&h_before);
                        c.copy_from_slice(&c_before);
                    }
                }
                let at = (b * p.steps + row) * state;
                rows[at..at + units].copy_from_slice(&h);
                if p.cell == Cell::Lstm {
                    rows[at + units..at + 2 * units].copy_from_slice(&c);
                }
            }
        }
        rows
    }

    /// Where the last processed step's state row is.
    pub(super) fn last_row(&self) -> usize {
        self.p.rows(self.p.steps - 1).0
    }

    /// The main output and the states, from the rows [`Direction::run`] gives.
    pub(super) fn outputs(&self, rows: &[f64]) -> Vec<ArrayD<f32>> {
        let p = &self.p;
        let (units, state) = (p.units, p.state());
        let pick = |row: usize, from: usize| -> Vec<f32> {
            (0..p.batch)
                .flat_map(|b| {
                    let at = (b * p.steps + row) * state + from;
                    rows[at..at + units]
                        .iter()
                        .map(|&v| v as f32)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let main = if self.return_sequences {
            let data = (0..p.batch * p.steps)
                .flat_map(|r| rows[r * state..r * state + units].iter().map(|&v| v as f32))
                .collect();
            tensor(&[p.batch, p.steps, units], data)
        } else {
            tensor(&[p.batch, units], pick(self.last_row(), 0))
        };
        let mut out = vec![main];
        for (i, shape) in self.state_shapes().iter().enumerate() {
            out.push(tensor(shape, pick(self.last_row(), i * units)));
        }
        out
    }

    pub(super) fn flops(&self) -> u64 {
        let p = &self.p;
        let width = (p.gates() * p.units) as u64;
        let per_step = 2 * (self.input as u64 + p.units as u64) * width + 8 * p.units as u64;
        per_step * (p.batch * p.steps) as u64
    }

    /// Emits the projection and the recurrence; returns the value holding every
    /// step's state.
    pub(super) fn lower_rows(
        &self,
        l: &mut Lower,
        x: BufferId,
        mask: Option<BufferId>,
    ) -> Result<BufferId> {
        self.lower_rows_from(l, x, &[], mask)
    }

    /// [`Direction::lower_rows`] with initial states from `given` values.
    pub(super) fn lower_rows_from(
        &self,
        l: &mut Lower,
        x: BufferId,
        given: &[BufferId],
        mask: Option<BufferId>,
    ) -> Result<BufferId> {
        let p = self.p;
        let width = p.gates() * p.units;
        let projected = l.temp(p.batch * p.steps * width);
        let w = l.weight("kernel", self.kernel.iter().copied().collect());
        let b = self
            .bias
            .as_ref()
            .map(|b| l.weight("bias", b.iter().copied().collect()));
        let rows = p.batch * p.steps;
        l.step(
            Kernel::Dense {
                p: kerac::dense::Dense {
                    rows,
                    k: self.input,
                    n: width,
                    act: kerac::Act::Linear,
                },
                w,
                b,
            },
            vec![x],
            projected,
            2 * (rows * self.input * width) as u64,
        );
        let u = l.weight("recurrent_kernel", self.recurrent.iter().copied().collect());
        let rb = self
            .recurrent_bias
            .as_ref()
            .map(|b| l.weight("recurrent_bias", b.iter().copied().collect()));
        let work = l.temp(p.out_len());
        let flops = self.flops() - 2 * (rows * self.input * width) as u64;
        // Streaming (or `stateful=True`): the state comes from, and goes back to,
        // buffers that outlive the call.
        let keep = l.stream || self.stateful;
        if keep && !given.is_empty() {
            return Err(Error::new(
                "initial states given as inputs and state kept between calls exclude each other",
            ));
        }
        if keep && p.backwards {
            return Err(Error::new(
                "go_backwards needs the whole sequence: it cannot keep state from one call to the next",
            ));
        }
        let states: Vec<BufferId> = if keep {
            let n = if p.cell == Cell::Lstm { 2 } else { 1 };
            (0..n).map(|_| l.state(p.batch * p.units)).collect()
        } else {
            Vec::new()
        };
        let mut inputs = vec![projected];
        inputs.extend(&states);
        inputs.extend(given);
        inputs.extend(mask);
        l.step(
            Kernel::Recurrent {
                p,
                u,
                rb,
                initial: keep || !given.is_empty(),
                masked: mask.is_some(),
            },
            inputs,
            work,
            flops,
        );
        for (i, &s) in states.iter().enumerate() {
            self.extract(l, work, s, false, i * p.units);
        }
        Ok(work)
    }

    /// Copies `units` floats per step (or of the last step) starting `from` floats
    /// into each state row of `work`, into `to`.
    pub(super) fn extract(
        &self,
        l: &mut Lower,
        work: BufferId,
        to: BufferId,
        sequence: bool,
        from: usize,
    ) {
        let p = &self.p;
        let state = p.state();
        let (shape, strides, offset) = if sequence {
            (
                [p.batch, p.steps, p.units],
                [p.steps * state, state, 1],
                from,
            )
        } else {
            (
                [1, p.batch, p.units],
                [0, p.steps * state, 1],
                self.last_row() * state + from,
            )
        };
        let mut padded = [1; RANK];
        padded[RANK - 3..].copy_from_slice(&shape);
        let mut padded_strides = [0; RANK];
        padded_strides[RANK - 3..].copy_from_slice(&strides);
        l.step(
            Kernel::StridedCopy(kerac::shape::Strided {
                shape: padded,
                strides: padded_strides,
                offset,
            }),
            vec![work],
            to,
            0,
        );
    }
}

/// SimpleRNN, LSTM or GRU, or an `RNN` layer over one cell or a stack of cells: each
/// cell after the first reads the previous one's whole sequence.
#[derive(Debug)]
struct StackOp {
    /// Initial states, when given, are the inputs after the sequence (first cell only).
    cells: Vec<Direction>,
    /// Whether the last input is the sequence's mask (applied to every cell).
    masked: bool,
}

impl StackOp {
    fn outputs(&self) -> Vec<Shape> {
        let last = self
            .cells
            .last()
            .map(Direction::output_shape)
            .unwrap_or_default();
        let mut out = vec![last];
        for c in &self.cells {
            out.extend(c.state_shapes());
        }
        out
    }
}

impl Op for StackOp {
    fn eval(&self, inputs: &[&ArrayD<f32>]) -> Vec<ArrayD<f32>> {
        let mut x = inputs[0].clone();
        let mut states = Vec::new();
        let mut main = Vec::new();
        let (inputs, mask) = match self.masked {
            true => (&inputs[..inputs.len() - 1], inputs.last().copied()),
            false => (inputs, None),
        };
        for (i, cell) in self.cells.iter().enumerate() {
            let initial: Vec<&ArrayD<f32>> = if i == 0 {
                inputs[1..].to_vec()
            } else {
                Vec::new()
            };
            let rows = cell.run_from(&x, &initial, mask);
            let mut out = cell.outputs(&rows);
            states.extend(out.drain(1..));
            main = out;
            if i + 1 < self.cells.len() {
                // The next cell reads this one's whole sequence.
                let mut all = cell.clone();
                all.return_sequences = true;
                x = all.outputs(&rows).swap_remove(0);
            }
        }
        main.extend(states);
        main
    }
    fn flops(&self) -> u64 {
        self.cells.iter().map(Direction::flops).sum()
    }
    fn lower(&self, l: &mut Lower) -> Result<()> {
        let mut x = l.inputs[0];
        let n = l.inputs.len() - self.masked as usize;
        let initial: Vec<BufferId> = l.inputs[1..n].to_vec();
        let mask = self.masked.then(|| l.inputs[n]);
        let mut next_state = 1;
        for (i, cell) in self.cells.iter().enumerate() {
            let given = if i == 0 { initial.as_slice() } else { &[] };
            let work = cell.lower_rows_from(l, x, given, mask)?;
            let last = i + 1 == self.cells.len();
            if last {
                let out = l.output(0);
                cell.extract(l, work, out, cell.return_sequences, 0);
            } else {
                let p = &cell.p;
                let seq = l.temp(p.batch * p.steps * p.units);
                cell.extract(l, work, seq, true, 0);
                x = seq;
            }
            for k in 0..cell.state_shapes().len() {
                let to = l.output(next_state);
                cell.extract(l, work, to, false, k * cell.p.units);
                next_state += 1;
            }
        }
        Ok(())
    }
}

/// Checks initial states given as inputs: `[batch, units]` each, one per state.
fn initial_states(ctx: &LayerCtx, cell: &Direction) -> Result<usize> {
    let given = &ctx.inputs[1..ctx.inputs.len() - ctx.masked as usize];
    let want = if cell.p.cell == Cell::Lstm { 2 } else { 1 };
    if given.is_empty() {
        return Ok(0);
    }
    let shape = vec![cell.p.batch, cell.p.units];
    if given.len() != want || given.iter().any(|s| *s != shape) {
        bail!("initial states {given:?} given; expected {want} of shape {shape:?}");
    }
    Ok(want)
}

fn build_single(ctx: &mut LayerCtx, class: &str) -> Result<Lowered> {
    let shape = ctx
        .inputs
        .first()
        .cloned()
        .ok_or_else(|| Error::new("expected a sequence input"))?;
    let config = ctx.config;
    let dir = Direction::build(ctx, class, config, &shape)?;
    initial_states(ctx, &dir)?;
    Ok(stack(vec![dir], ctx.masked))
}

/// `RNN(cell)` over a SimpleRNNCell, LSTMCell, GRUCell or StackedRNNCells.
fn build_rnn(ctx: &mut LayerCtx) -> Result<Lowered> {
    let shape = ctx
        .inputs
        .first()
        .cloned()
        .ok_or_else(|| Error::new("expected a sequence input"))?;
    let cell = ctx
        .config
        .get("cell")
        .ok_or_else(|| Error::new("config: missing `cell`"))?;
    let class_of = |c: &Value| {
        c.get("class_name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let cells: Vec<Value> = match class_of(cell).as_str() {
        "StackedRNNCells" => cell
            .get("config")
            .and_then(|c| c.get("cells"))
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| Error::new("config: StackedRNNCells without `cells`"))?,
        _ => vec![cell.clone()],
    };
    let outer = ctx.config.clone();
    if cells.len() > 1 && ctx.positional_weights() {
        // Keras 3 stores stacked cells under keys made from their class names, so
        // they come sorted by key, not in the stack's order.
        let mut counts = std::collections::HashMap::new();
        let keys: Vec<String> = cells
            .iter()
            .map(|c| {
                let base = crate::keras::weights::snake_case(&class_of(c));
                let n = counts.entry(base.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    base
                } else {
                    format!("{base}_{}", *n - 1)
                }
            })
            .collect();
        let mut by_key: Vec<usize> = (0..cells.len()).collect();
        by_key.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        let uses_bias = |c: &Value| {
            c.get("config")
                .and_then(|c| c.get("use_bias"))
                .and_then(Value::as_bool)
                .unwrap_or(true)
        };
        let blocks: Vec<usize> = by_key
            .iter()
            .map(|&i| 2 + uses_bias(&cells[i]) as usize)
            .collect();
        let order: Vec<usize> = (0..cells.len())
            .map(|i| by_key.iter().position(|&k| k == i).unwrap_or(i))
            .collect();
        ctx.reorder_weights(&blocks, &order)?;
    }
    let mut dirs: Vec<Direction> = Vec::new();
    let mut input = shape;
    for (i, c) in cells.iter().enumerate() {
        let class = match class_of(c).as_str() {
            "SimpleRNNCell" => "SimpleRNN",
            "LSTMCell" => "LSTM",
            "GRUCell" => "GRU",
            other => {
                bail!(
                    "RNN over a `{other}` cell is not supported; expected SimpleRNNCell, LSTMCell, GRUCell or StackedRNNCells"
                )
            }
        };
        // The cell's own options, with the RNN's sequence options over them.
        let mut config = c.get("config").cloned().unwrap_or(Value::Null);
        if let (Some(o), Some(outer)) = (config.as_object_mut(), outer.as_object()) {
            for key in [
                "return_sequences",
                "return_state",
                "go_backwards",
                "stateful",
            ] {
                if let Some(v) = outer.get(key) {
                    o.insert(key.into(), v.clone());
                }
            }
            let last = i + 1 == cells.len();
            if !last {
                o.insert("return_sequences".into(), Value::from(true));
            }
            if i > 0 {
                o.insert("go_backwards".into(), Value::from(false));
            }
        }
        let dir = ctx.nested(&config, std::slice::from_ref(&input), |inner| {
            Direction::build(inner, class, &config, &input)
        })?;
        input = vec![dir.p.batch, dir.p.steps, dir.p.units];
        dirs.push(dir);
    }
    match dirs.first() {
        Some(first) => initial_states(ctx, first)?,
        None => return Err(Error::new("an RNN needs at least one cell")),
    };
    Ok(stack(dirs, ctx.masked))
}

/// The op and outputs of a chain of cells.
fn stack(cells: Vec<Direction>, masked: bool) -> Lowered {
    let op = StackOp { cells, masked };
    let outputs = op.outputs();
    Lowered {
        op: Box::new(op),
        outputs,
        mask: None,
    }
}
