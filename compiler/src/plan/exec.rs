//! Runs a plan on the runtime's kernels, in one arena, exactly as generated code does:
//! the check that lowering, the passes, the arena plan and the kernels agree with the
//! interpreter and with Keras, without compiling anything.

use super::{Kernel, Plan, Step};
use crate::bail;
use crate::error::{Error, Result};
use kerac::arena::{views, Region};
use kerac::{attention, conv, dense, merge, norm, pool, recurrent, shape};
use kerac::{Dispatch, Isa, Level, WithIsa};
use ndarray::{ArrayD, IxDyn};

/// Runs the plan once at its batch size. `inputs` are in Keras's order.
pub fn run(plan: &Plan, inputs: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
    run_in(plan, &mut Vec::new(), inputs)
}

/// As [`run`], in `arena`, which keeps a streaming plan's recurrent state from one call
/// to the next (an empty or zeroed arena is the initial state). The kernels are the
/// widest this CPU has, as in a model made with `new()`.
pub fn run_in(
    plan: &Plan,
    arena: &mut Vec<f32>,
    inputs: &[ArrayD<f32>],
) -> Result<Vec<ArrayD<f32>>> {
    run_with(plan, Dispatch::detect(Level::Avx512), arena, inputs)
}

/// As [`run_in`], with the kernels of `isa`.
pub fn run_with(
    plan: &Plan,
    isa: Dispatch,
    arena: &mut Vec<f32>,
    inputs: &[ArrayD<f32>],
) -> Result<Vec<ArrayD<f32>>> {
    if inputs.len() != plan.inputs.len() {
        bail!(
            "the model has {} inputs, {} were given",
            plan.inputs.len(),
            inputs.len()
        );
    }
    if arena.len() != plan.arena_floats {
        *arena = vec![0f32; plan.arena_floats];
    }
    let arena = arena.as_mut_slice();
    write_inputs(plan, arena, inputs)?;
    isa.run(Steps { plan, arena })?;
    plan.outputs
        .iter()
        .map(|port| {
            let v = &plan.buffers[port.buffer];
            ArrayD::from_shape_vec(
                IxDyn(&port.shape),
                arena[v.offset..v.offset + v.len].to_vec(),
            )
            .map_err(|e| Error::new(e.to_string()))
        })
        .collect()
}

/// As [`run_with`] on a fresh arena, calling `after_step(k, arena)` once step `k` has
/// run: the arena then holds the values of the step's [`Step::taps`].
pub fn run_observed(
    plan: &Plan,
    isa: Dispatch,
    inputs: &[ArrayD<f32>],
    after_step: impl FnMut(usize, &[f32]),
) -> Result<()> {
    if inputs.len() != plan.inputs.len() {
        bail!(
            "the model has {} inputs, {} were given",
            plan.inputs.len(),
            inputs.len()
        );
    }
    let mut arena = vec![0f32; plan.arena_floats];
    write_inputs(plan, &mut arena, inputs)?;
    isa.run(Observed {
        plan,
        arena: &mut arena,
        after_step,
    })
}

/// [`run_observed`] with one ISA's kernels.
struct Observed<'a, F> {
    plan: &'a Plan,
    arena: &'a mut [f32],
    after_step: F,
}

impl<F: FnMut(usize, &[f32])> WithIsa for Observed<'_, F> {
    type Output = Result<()>;
    fn with<I: Isa>(mut self, isa: I) -> Result<()> {
        for (k, step) in self.plan.steps.iter().enumerate() {
            call(isa, self.plan, step, self.arena)?;
            (self.after_step)(k, self.arena);
        }
        Ok(())
    }
}

/// Copies the inputs into their arena regions, checking their shapes.
pub fn write_inputs(plan: &Plan, arena: &mut [f32], inputs: &[ArrayD<f32>]) -> Result<()> {
    for (port, x) in plan.inputs.iter().zip(inputs) {
        if x.shape() != port.shape.as_slice() {
            bail!(
                "input `{}` has shape {:?}, the model expects {:?}",
                port.name,
                x.shape(),
                port.shape
            );
        }
        let v = &plan.buffers[port.buffer];
        for (dst, &src) in arena[v.offset..v.offset + v.len].iter_mut().zip(x.iter()) {
            *dst = src;
        }
    }
    Ok(())
}

/// The median time of each step over `runs` calls with `isa`'s kernels, in
/// nanoseconds: where a call's time goes. Inputs are written again before every call, because the arena plan may reuse
/// their regions once they are dead.
pub fn profile(
    plan: &Plan,
    isa: Dispatch,
    inputs: &[ArrayD<f32>],
    runs: usize,
) -> Result<Vec<f64>> {
    let mut arena = Vec::new();
    run_with(plan, isa, &mut arena, inputs)?;
    isa.run(Profile {
        plan,
        inputs,
        runs,
        arena: &mut arena,
    })
}

/// [`profile`] with one ISA's kernels.
struct Profile<'a> {
    plan: &'a Plan,
    inputs: &'a [ArrayD<f32>],
    runs: usize,
    arena: &'a mut [f32],
}

impl WithIsa for Profile<'_> {
    type Output = Result<Vec<f64>>;
    fn with<I: Isa>(self, isa: I) -> Result<Vec<f64>> {
        let Profile {
            plan,
            inputs,
            runs,
            arena,
        } = self;
        let mut times = vec![Vec::with_capacity(runs.max(1)); plan.steps.len()];
        for _ in 0..runs.max(1) {
            write_inputs(plan, arena, inputs)?;
            for (step, times) in plan.steps.iter().zip(times.iter_mut()) {
                let start = std::time::Instant::now();
                call(isa, plan, step, arena)?;
                times.push(start.elapsed().as_nanos() as f64);
            }
        }
        Ok(times
            .into_iter()
            .map(|mut t| {
                t.sort_by(f64::total_cmp);
                t[t.len() / 2]
            })
            .collect())
    }
}

fn region(plan: &Plan, value: usize) -> Region {
    (plan.buffers[value].offset, plan.buffers[value].len)
}

/// Calls `$f` with the step's inputs as an array of `N` slices, for the const-generic
/// merge kernels.
macro_rules! with_inputs {
    ($plan:expr, $step:expr, $arena:expr, |$ins:ident, $out:ident| $body:expr) => {{
        let n = $step.inputs.len();
        macro_rules! arm {
            ($n:literal) => {{
                let reads: [Region; $n] = std::array::from_fn(|i| region($plan, $step.inputs[i]));
                let ($ins, $out) =
                    views($arena, reads, region($plan, $step.output)).ok_or_else(bad_regions)?;
                $body
            }};
        }
        match n {
            1 => arm!(1),
            2 => arm!(2),
            3 => arm!(3),
            4 => arm!(4),
            5 => arm!(5),
            6 => arm!(6),
            7 => arm!(7),
            8 => arm!(8),
            _ => {
                bail!("{n} inputs; the compiled backends merge at most 8")
            }
        }
    }};
}

/// Every step of a plan, with one ISA's kernels.
struct Steps<'a> {
    plan: &'a Plan,
    arena: &'a mut [f32],
}

impl WithIsa for Steps<'_> {
    type Output = Result<()>;
    fn with<I: Isa>(self, isa: I) -> Result<()> {
        for step in &self.plan.steps {
            call(isa, self.plan, step, self.arena).map_err(|e| {
                Error::new(format!(
                    "step `{}` ({}): {}",
                    step.layers,
                    step.kernel.name(),
                    e.message
                ))
            })?;
        }
        Ok(())
    }
}

fn bad_regions() -> Error {
    Error::new("the arena plan gave overlapping or out-of-bounds regions")
}

fn call<I: Isa>(isa: I, plan: &Plan, step: &Step, arena: &mut [f32]) -> Result<()> {
    let w = |id: usize| plan.weights[id].data.as_slice();
    let ow = |id: Option<usize>| id.map(|id| plan.weights[id].data.as_slice());
    match &step.kernel {
        Kernel::Merge {
            fold,
            shape,
            strides,
        } => with_inputs!(plan, step, arena, |ins, out| {
            let p = merge::Merge {
                fold: *fold,
                shape: *shape,
                strides: std::array::from_fn(|i| strides[i]),
            };
            merge::merge(&p, ins, out);
        }),
        Kernel::Concat { outer, parts } => with_inputs!(plan, step, arena, |ins, out| {
            let p = merge::Concat {
                outer: *outer,
                parts: std::array::from_fn(|i| parts[i]),
            };
            merge::concat(&p, ins, out);
        }),
        Kernel::Recurrent { p, u, rb, .. } => {
            // Reads: projections, the initial states, the mask; absent ones read the
            // projections again (and are passed as None).
            let mut reads = [region(plan, step.inputs[0]); 4];
            for (r, &v) in reads.iter_mut().zip(&step.inputs) {
                *r = region(plan, v);
            }
            let (ins, y) =
                views(arena, reads, region(plan, step.output)).ok_or_else(bad_regions)?;
            let r = step.recurrent_inputs();
            let at = |i: Option<usize>| i.map(|i| ins[i]);
            recurrent::recurrent(
                isa,
                p,
                ins[0],
                w(*u),
                ow(*rb),
                at(r.h0),
                at(r.c0),
                at(r.mask),
                y,
            );
        }
        Kernel::Attention { p, w: aw } => {
            let reads = [0, 1, 2].map(|i| region(plan, step.inputs[i]));
            // Key and value may be one buffer: reads may overlap.
            let (ins, y) =
                views(arena, reads, region(plan, step.output)).ok_or_else(bad_regions)?;
            let aw = aw.map_or(&[][..], |id| plan.weights[id].data.as_slice());
            attention::attention(isa, p, ins[0], ins[1], ins[2], aw, y);
        }
        Kernel::BatchDot(p) => {
            let ([a, b], out) = views(
                arena,
                [region(plan, step.inputs[0]), region(plan, step.inputs[1])],
                region(plan, step.output),
            )
            .ok_or_else(bad_regions)?;
            merge::batch_dot(p, a, b, out);
        }
        kernel => {
            let ([x], y) = views(
                arena,
                [region(plan, step.inputs[0])],
                region(plan, step.output),
            )
            .ok_or_else(bad_regions)?;
            match kernel {
                Kernel::Dense { p, w: k, b } => dense::dense(isa, p, x, w(*k), ow(*b), y),
                Kernel::Conv { p, w: k, b } => conv::conv(isa, p, x, w(*k), ow(*b), y),
                Kernel::ConvTranspose { p, w: k, b } => {
                    conv::conv_transpose(isa, p, x, w(*k), ow(*b), y)
                }
                Kernel::Pool(p) => pool::pool(isa, p, x, y),
                Kernel::GlobalPool(p) => pool::global_pool(isa, p, x, y),
                Kernel::ScaleShift { p, scale, offset } => {
                    norm::scale_shift(p, w(*scale), w(*offset), x, y)
                }
                Kernel::Prelu { p, alpha } => norm::prelu(p, w(*alpha), x, y),
                Kernel::Activation(act) => norm::activation(isa, *act, x, y),
                Kernel::Softmax { p, log } => norm::softmax(p, *log, x, y),
                Kernel::LayerNorm { p, gamma, beta } => {
                    norm::layer_norm(p, ow(*gamma), ow(*beta), x, y)
                }
                Kernel::GroupNorm { p, gamma, beta } => {
                    norm::group_norm(p, ow(*gamma), ow(*beta), x, y)
                }
                Kernel::UnitNorm(p) => norm::unit_norm(p, x, y),
                Kernel::StridedCopy(p) => shape::strided_copy(p, x, y),
                Kernel::Resample(p) => shape::resample(p, x, y),
                Kernel::Gather { p, table } => shape::gather(p, x, w(*table), y),
                Kernel::Recurrent { .. } => {}
                Kernel::Merge { .. }
                | Kernel::Concat { .. }
                | Kernel::BatchDot(_)
                | Kernel::Attention { .. } => {}
            }
        }
    }
    Ok(())
}
