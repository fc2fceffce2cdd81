//! Plan rewrites: BatchNormalization folded into the Dense or Conv before it, and
//! elementwise activations fused into their producer. Both apply only where the
//! producer's output feeds nothing else, so no other reader sees a changed buffer.

use super::{BufferId, Kernel, Plan, WeightData, WeightId};
use kerac::Act;

/// How many steps read a buffer, plus one if it is a model output.
fn readers(plan: &Plan, value: BufferId) -> usize {
    plan.steps
        .iter()
        .filter(|s| s.inputs.contains(&value))
        .count()
        + plan.outputs.iter().filter(|p| p.buffer == value).count()
}

/// The step that reads `value`, when exactly one step does and it is not an output.
pub(super) fn sole_reader(plan: &Plan, value: BufferId) -> Option<usize> {
    if readers(plan, value) != 1 {
        return None;
    }
    plan.steps.iter().position(|s| s.inputs.contains(&value))
}

/// Output channels and current activation of a producer that can absorb a per-channel
/// affine map or an activation.
fn producer(kernel: &Kernel) -> Option<(usize, Act)> {
    match kernel {
        Kernel::Dense { p, .. } => Some((p.n, p.act)),
        Kernel::Conv { p, .. } => Some((p.cout, p.act)),
        Kernel::ConvTranspose { p, .. } => Some((p.cout, p.act)),
        _ => None,
    }
}

/// `Dense|Conv -> scale_shift over channels` becomes one Dense|Conv with scaled kernel
/// and shifted bias: exact up to float rounding, and one pass over memory fewer.
pub(super) fn fold_batch_norm(plan: &mut Plan) {
    let mut i = 0;
    while i < plan.steps.len() {
        let Some(fold) = foldable(plan, i) else {
            i += 1;
            continue;
        };
        let scale = plan.weights[fold.scale].data.clone();
        let offset = plan.weights[fold.offset].data.clone();
        let mut kernel = plan.weights[fold.kernel].clone();
        let cout = scale.len();
        for (k, v) in kernel.data.iter_mut().enumerate() {
            *v *= scale[k % cout];
        }
        let bias: Vec<f32> = (0..cout)
            .map(|c| fold.bias.map_or(0.0, |b| plan.weights[b].data[c]) * scale[c] + offset[c])
            .collect();
        kernel.name.push_str(" (batch norm folded)");
        plan.weights.push(kernel);
        let new_w = plan.weights.len() - 1;
        plan.weights.push(WeightData {
            name: format!("{} (folded bias)", plan.steps[fold.step].layers),
            data: bias,
            offset: 0,
        });
        let new_b = Some(plan.weights.len() - 1);
        if let Kernel::Dense { w, b, .. } | Kernel::Conv { w, b, .. } = &mut plan.steps[i].kernel {
            *w = new_w;
            *b = new_b;
        }
        absorb(plan, i, fold.step);
    }
}

/// What folding a scale-and-shift step into its producer needs.
struct Fold {
    step: usize,
    scale: WeightId,
    offset: WeightId,
    kernel: WeightId,
    bias: Option<WeightId>,
}

fn foldable(plan: &Plan, i: usize) -> Option<Fold> {
    let step = &plan.steps[i];
    let (kernel, bias) = match step.kernel {
        Kernel::Dense { w, b, .. } | Kernel::Conv { w, b, .. } => (w, b),
        _ => return None,
    };
    let (cout, act) = producer(&step.kernel)?;
    if act != Act::Linear {
        return None;
    }
    let j = sole_reader(plan, step.output)?;
    match plan.steps[j].kernel {
        Kernel::ScaleShift { p, scale, offset } if p.inner == 1 && p.n == cout => Some(Fold {
            step: j,
            scale,
            offset,
            kernel,
            bias,
        }),
        _ => None,
    }
}

/// `Dense|Conv|ConvTranspose -> activation` becomes one call.
pub(super) fn fuse_activations(plan: &mut Plan) {
    let mut i = 0;
    while i < plan.steps.len() {
        let fusable = producer(&plan.steps[i].kernel)
            .filter(|(_, act)| *act == Act::Linear)
            .and_then(|_| {
                let j = sole_reader(plan, plan.steps[i].output)?;
                match plan.steps[j].kernel {
                    Kernel::Activation(act) => Some((j, act)),
                    _ => None,
                }
            });
        let Some((j, act)) = fusable else {
            i += 1;
            continue;
        };
        match &mut plan.steps[i].kernel {
            Kernel::Dense { p, .. } => p.act = act,
            Kernel::Conv { p, .. } => p.act = act,
            Kernel::ConvTranspose { p, .. } => p.act = act,
            _ => {}
        }
        absorb(plan, i, j);
    }
}

/// Step `i` takes over step `j`'s output and layer names; `j` goes.
fn absorb(plan: &mut Plan, i: usize, j: usize) {
    let absorbed = plan.steps.remove(j);
    let i = if j < i { i - 1 } else { i };
    let step = &mut plan.steps[i];
    step.output = absorbed.output;
    step.flops += absorbed.flops;
    // The producer's own output is no longer written: only the last layer's remains.
    step.taps = absorbed.taps;
    step.layers = format!("{} + {}", step.layers, absorbed.layers);
}
