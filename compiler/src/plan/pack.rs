//! The weight layout, decided once for every backend: only the weights some step reads
//! (folding leaves the originals unread), numbered and placed in the order the steps
//! first read them, each at a cache-line boundary. The Rust source, the object file,
//! its header and the reports all embed or count this one blob. (An x86-64 object's
//! assembled products may hold their own weights in panels: permuted in place, at the
//! same offsets and sizes.)

use super::Plan;

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
