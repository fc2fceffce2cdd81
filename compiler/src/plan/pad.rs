//! Explicit padding for convolutions: a zero-padded copy of the input (a `Resample`
//! step) ahead of each single-group convolution with padding, which then runs as a
//! valid one. The conv kernel's valid path tiles output pixels across rows, so edge
//! pixels and small maps (the 4x4 and 2x2 stages of a ResNet) share each weight load
//! among a whole tile instead of running one pixel at a time; the copy costs one pass
//! over the input, against the convolution's `taps * cout` multiply-adds per value.

use super::{Buffer, Kernel, Plan, Step};
use kerac::shape::{AxisMap, Resample};
use kerac::window::Window;

/// Pads the input of every single-group convolution whose windows reach outside it.
pub fn pad_convolutions(plan: &mut Plan) {
    let mut steps = Vec::with_capacity(plan.steps.len());
    for mut step in std::mem::take(&mut plan.steps) {
        if let Kernel::Conv { p, .. } = &mut step.kernel {
            if p.groups == 1 && !p.windows.iter().all(Window::is_valid) {
                let axes = p.windows.map(|w| AxisMap::Pad {
                    before: w.pad_before,
                    input: w.input,
                    len: padded(&w),
                });
                let pad = Resample {
                    batch: p.batch,
                    input: p.windows.map(|w| w.input),
                    axes,
                    channels: p.cin,
                };
                let len = p.batch * axes.iter().map(AxisMap::len).product::<usize>() * p.cin;
                let input = p.batch * p.windows.iter().map(|w| w.input).product::<usize>() * p.cin;
                // A window far wider than its input ("same" with a huge kernel) would
                // pad mostly zeros and multiply them; it keeps the edge path instead.
                if len > 4 * input.max(1) {
                    steps.push(step);
                    continue;
                }
                plan.buffers.push(Buffer { len, offset: 0 });
                let padded_input = plan.buffers.len() - 1;
                for w in &mut p.windows {
                    w.input = padded(w);
                    w.pad_before = 0;
                }
                steps.push(Step {
                    layers: format!("{} (padding)", step.layers),
                    kernel: Kernel::Resample(pad),
                    inputs: step.inputs.clone(),
                    output: padded_input,
                    flops: 0,
                });
                step.inputs = vec![padded_input];
            }
        }
        steps.push(step);
    }
    plan.steps = steps;
}

/// The input length a window reads with its padding: up to the last tap of its last
/// output, which may stop short of the input's end (a strided window can leave it).
fn padded(w: &Window) -> usize {
    if w.output == 0 {
        return 0;
    }
    (w.output - 1) * w.stride + (w.kernel.max(1) - 1) * w.dilation + 1
}
