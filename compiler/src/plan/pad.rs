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
            // Sizes from a file may be huge: any count that overflows leaves the
            // convolution on its edge path, unpadded.
            let lens = p.windows.map(|w| padded(&w));
            let floats = |lens: [Option<usize>; 3]| {
                lens.iter()
                    .try_fold(p.batch.checked_mul(p.cin)?, |n, &l| n.checked_mul(l?))
            };
            let len = floats(lens);
            let input = floats(p.windows.map(|w| Some(w.input)));
            // A window far wider than its input ("same" with a huge kernel) would pad
            // mostly zeros and multiply them; it keeps the edge path too.
            let worth = matches!((len, input), (Some(len), Some(input)) if len / 4 <= input);
            if p.groups == 1 && !p.windows.iter().all(Window::is_valid) && worth {
                let (Some(len), [Some(d), Some(h), Some(w)]) = (len, lens) else {
                    steps.push(step);
                    continue;
                };
                let axes =
                    [(p.windows[0], d), (p.windows[1], h), (p.windows[2], w)].map(|(w, len)| {
                        AxisMap::Pad {
                            before: w.pad_before,
                            input: w.input,
                            len,
                        }
                    });
                let pad = Resample {
                    batch: p.batch,
                    input: p.windows.map(|w| w.input),
                    axes,
                    channels: p.cin,
                };
                plan.buffers.push(Buffer { len, offset: 0 });
                let padded_input = plan.buffers.len() - 1;
                for (w, len) in p.windows.iter_mut().zip([d, h, w]) {
                    w.input = len;
                    w.pad_before = 0;
                }
                steps.push(Step {
                    layers: format!("{} (padding)", step.layers),
                    kernel: Kernel::Resample(pad),
                    inputs: step.inputs.clone(),
                    output: padded_input,
                    flops: 0,
                    taps: Vec::new(),
                });
                step.inputs = vec![padded_input];
            }
        }
        steps.push(step);
    }
    plan.steps = steps;
}

/// A zero padding (`ZeroPadding2D`, as MobileNetV2 and EfficientNet put before their
/// strided depthwise convolutions) whose only reader is a grouped convolution becomes
/// that convolution's own padding: one pass over memory fewer. The taps that landed on
/// the zeros are skipped instead of multiplied, so only convolutions whose weights are
/// all finite take it: there each skipped product was a zero. Single-group convolutions are left to
/// [`pad_convolutions`], which pads their input again for the tiled valid path.
pub fn fold_zero_padding(plan: &mut Plan) {
    let mut i = 0;
    while i < plan.steps.len() {
        let Kernel::Resample(pad) = plan.steps[i].kernel else {
            i += 1;
            continue;
        };
        let reader = super::fuse::sole_reader(plan, plan.steps[i].output);
        let Some(j) =
            reader.filter(|&j| plan.steps[j].inputs.first() == Some(&plan.steps[i].output))
        else {
            i += 1;
            continue;
        };
        // A tap on a padded zero adds weight x 0, which is 0 only for finite weights.
        let finite = match plan.steps[j].kernel {
            Kernel::Conv { w, .. } => plan.weights[w].data.iter().all(|v| v.is_finite()),
            _ => false,
        };
        let Kernel::Conv { p, .. } = &mut plan.steps[j].kernel else {
            i += 1;
            continue;
        };
        // Each axis padded, or left as it is (the unit depth axis of a 2-D padding).
        let axes = pad.axes.map(|a| match a {
            AxisMap::Pad { before, input, len } => Some((before, input, len)),
            AxisMap::Crop { before: 0, len } => Some((0, len, len)),
            _ => None,
        });
        let fits = finite
            && p.groups > 1
            && pad.batch == p.batch
            && pad.channels == p.cin
            && (0..3).all(|k| {
                axes[k].is_some_and(|(_, input, len)| {
                    let w = p.windows[k];
                    input == pad.input[k] && w.input == len && w.pad_before == 0 && w.is_valid()
                })
            });
        if !fits {
            i += 1;
            continue;
        }
        for (w, axis) in p.windows.iter_mut().zip(axes) {
            if let Some((before, input, _)) = axis {
                w.input = input;
                w.pad_before = before;
            }
        }
        let padding = plan.steps.remove(i);
        let j = if i < j { j - 1 } else { j };
        let conv = &mut plan.steps[j];
        conv.inputs[0] = padding.inputs[0];
        conv.layers = format!("{} + {}", padding.layers, conv.layers);
    }
}

/// The input length a window reads with its padding: up to the last tap of its last
/// output, which may stop short of the input's end (a strided window can leave it).
/// `None` where the count overflows.
fn padded(w: &Window) -> Option<usize> {
    if w.output == 0 {
        return Some(0);
    }
    (w.output - 1)
        .checked_mul(w.stride)?
        .checked_add((w.kernel.max(1) - 1).checked_mul(w.dilation)?)?
        .checked_add(1)
}
