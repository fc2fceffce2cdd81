//! The weight layout, decided once for every backend: only the weights some step reads
//! (folding leaves the originals unread), numbered and placed in the order the steps
//! first read them, each at a cache-line boundary. The Rust source, the object file,
//! its header and the reports all embed or count this one blob. Two backends hold some
//! weights in panels, permuted in place at the same offsets and sizes: an x86-64
//! object's assembled products ([`to_panels`] of their vector width), and the runtime
//! kernels that generated Rust runs ([`Plan::with_runtime_panels`]).

use super::{Kernel, Plan};

/// Floats between weight offsets: 64 bytes, a cache line (and any vector's alignment).
pub const WEIGHT_ALIGN_FLOATS: usize = 16;

/// Drops unread weights, renumbers the rest in order of first use and sets offsets.
pub(super) fn pack(plan: &mut Plan) {
    let mut order = Vec::new();
    let mut new_id = vec![usize::MAX; plan.weights.len()];
    for step in &plan.steps {
        for id in step.kernel.weights() {
            if new_id[id] == usize::MAX {
                new_id[id] = order.len();
                order.push(id);
            }
        }
    }
    for step in &mut plan.steps {
        step.kernel.map_weights(|id| new_id[id]);
    }
    let mut old: Vec<_> = std::mem::take(&mut plan.weights)
        .into_iter()
        .map(Some)
        .collect();
    let mut offset = 0;
    for id in order {
        if let Some(mut w) = old[id].take() {
            w.offset = offset;
            offset = (offset + w.data.len()).div_ceil(WEIGHT_ALIGN_FLOATS) * WEIGHT_ALIGN_FLOATS;
            plan.weights.push(w);
        }
    }
}

/// Floats in the blob: the end of the last weight, padded to the alignment.
pub(super) fn blob_floats(plan: &Plan) -> usize {
    plan.weights
        .iter()
        .map(|w| (w.offset + w.data.len()).div_ceil(WEIGHT_ALIGN_FLOATS) * WEIGHT_ALIGN_FLOATS)
        .max()
        .unwrap_or(0)
}

/// `w` (`rows x n`, row-major) in panels of `lanes` columns, each panel's rows
/// together.
pub(crate) fn to_panels(w: &[f32], rows: usize, n: usize, lanes: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    for p in 0..n / lanes {
        for r in 0..rows {
            out.extend_from_slice(&w[r * n + p * lanes..r * n + (p + 1) * lanes]);
        }
    }
    out
}

/// `plan` for the runtime kernels: every convolution that can read its weights in
/// panels ([`kerac::conv::Conv::can_panel`]) gets them so, unless another step also
/// reads them. Only generated Rust and the plan executor run such a plan; the C and
/// Cranelift backends read the plain layout and refuse it.
pub(super) fn runtime_panels(plan: &Plan) -> Plan {
    let mut plan = plan.clone();
    let mut uses = vec![0usize; plan.weights.len()];
    for step in &plan.steps {
        for w in step.kernel.weights() {
            uses[w] += 1;
        }
    }
    for step in &mut plan.steps {
        if let Kernel::Conv { p, w, .. } = &mut step.kernel {
            let data = &mut plan.weights[*w].data;
            let rows = data.len() / p.cout.max(1);
            if p.can_panel() && uses[*w] == 1 && data.len() == rows * p.cout {
                *data = to_panels(data, rows, p.cout, kerac::conv::PANEL);
                p.panels = true;
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    #[test]
    fn panels_hold_each_vector_of_columns_with_its_rows_together() {
        // 3 rows of 4 columns in panels of 2: columns 0-1 for rows 0..3, then 2-3.
        let w: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let p = super::to_panels(&w, 3, 4, 2);
        assert_eq!(p, [0., 1., 4., 5., 8., 9., 2., 3., 6., 7., 10., 11.]);
    }
}
