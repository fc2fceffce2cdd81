//! Each plan step as a call of its kernel family's emitter, with the step's parameters
//! as constants and its buffers and weights as addresses. The one place that maps a
//! [`Kernel`] to Cranelift code, as `plan::exec` maps it to the runtime and
//! `emit::rust` to Rust source.

use super::fx::{Addr, Fx};
use super::{attention, conv, dense, merge, norm, pool, recurrent, shape};
use crate::plan::{Kernel, Plan, Step};

/// Emits one plan step.
pub(super) fn step(fx: &mut Fx, plan: &Plan, step: &Step) {
    let arena = fx.arena;
    let value = |id: usize| Addr {
        base: arena,
        off: plan.buffers[id].offset as i64,
    };
    let weights = fx.weights;
    let weight = |id: usize| Addr {
        base: weights,
        off: plan.weights[id].offset as i64,
    };
    let xs: Vec<Addr> = step.inputs.iter().map(|&v| value(v)).collect();
    let y = value(step.output);
    let x = xs.first().copied().unwrap_or(y);
    match &step.kernel {
        // An assembled kernel takes the step's buffers in the order of its listing.
        Kernel::Dense { w, b, .. } | Kernel::Conv { w, b, .. } if fx.assembled.is_some() => {
            if let Some(k) = fx.assembled.take() {
                fx.call_assembled(k, [Some(x), Some(weight(*w)), b.map(weight), Some(y), None]);
            }
        }
        Kernel::Activation(_)
        | Kernel::Merge { .. }
        | Kernel::Pool(_)
        | Kernel::GlobalPool(_)
        | Kernel::Resample(_)
            if fx.assembled.is_some() =>
        {
            if let Some(k) = fx.assembled.take() {
                let at = |i: usize| xs.get(i).copied();
                fx.call_assembled(k, [at(0), at(1), at(2), Some(y), at(3)]);
            }
        }
        Kernel::Dense { p, w, b } => dense::dense(fx, p, x, weight(*w), b.map(weight), y),
        Kernel::Conv { p, w, b } => conv::conv(fx, p, x, weight(*w), b.map(weight), y),
        Kernel::ConvTranspose { p, w, b } => {
            conv::conv_transpose(fx, p, x, weight(*w), b.map(weight), y)
        }
        Kernel::Pool(p) => pool::pool(fx, p, x, y),
        Kernel::GlobalPool(p) => pool::global_pool(fx, p, x, y),
        Kernel::ScaleShift { p, scale, offset } => {
            norm::scale_shift(fx, p, weight(*scale), weight(*offset), x, y)
        }
        Kernel::Prelu { p, alpha } => norm::prelu(fx, p, weight(*alpha), x, y),
        Kernel::Activation(act) => norm::activation(fx, *act, plan.buffers[step.output].len, x, y),
        Kernel::Softmax { p, log } => norm::softmax(fx, p, *log, x, y),
        Kernel::LayerNorm { p, gamma, beta } => {
            norm::layer_norm(fx, p, gamma.map(weight), beta.map(weight), x, y)
        }
        Kernel::GroupNorm { p, gamma, beta } => {
            norm::group_norm(fx, p, gamma.map(weight), beta.map(weight), x, y)
        }
        Kernel::UnitNorm(p) => norm::unit_norm(fx, p, x, y),
        Kernel::Merge {
            fold,
            shape,
            strides,
        } => merge::merge(fx, *fold, shape, strides, &xs, y),
        Kernel::Concat { outer, parts } => merge::concat(fx, *outer, parts, &xs, y),
        Kernel::BatchDot(p) => merge::batch_dot(fx, p, xs[0], xs[1], y),
        Kernel::StridedCopy(p) => shape::strided_copy(fx, p, x, y),
        Kernel::Resample(p) => shape::resample(fx, p, x, y),
        Kernel::Gather { p, table } => shape::gather(fx, p, x, weight(*table), y),
        Kernel::Attention { p, w } => {
            attention::attention(fx, p, [xs[0], xs[1], xs[2]], w.map(weight), y)
        }
        Kernel::Recurrent { p, u, rb, .. } => {
            let r = step.recurrent_inputs();
            let at = |i: Option<usize>| i.map(|i| xs[i]);
            recurrent::recurrent(
                fx,
                p,
                x,
                weight(*u),
                rb.map(weight),
                [at(r.h0), at(r.c0)],
                at(r.mask),
                y,
            )
        }
    }
}
