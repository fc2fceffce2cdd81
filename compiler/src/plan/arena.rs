//! The memory planner: every buffer gets an arena offset such that buffers alive at the
//! same step never overlap. Greedy by size (largest first, lowest free offset), which
//! lands at or near the liveness lower bound on the models kerac compiles.

use super::{Plan, ALIGN_FLOATS, WIDE_ALIGN_FLOATS};

/// Where a buffer of `len` floats may start: a cache line for large buffers, so that
/// 512-bit loads and stores do not straddle two lines (on AVX-512 a depthwise
/// convolution ran 10-20% slower at 32-byte offsets); one AVX2 vector for small ones,
/// which a cache line each would spread over a small arena.
fn alignment(len: usize) -> usize {
    if len >= 16 * WIDE_ALIGN_FLOATS {
        WIDE_ALIGN_FLOATS
    } else {
        ALIGN_FLOATS
    }
}

fn aligned(len: usize) -> usize {
    len.next_multiple_of(alignment(len))
}

/// Buffer orders the placement tries: four by size, span and first use, the rest by
/// jittered sizes.
const ORDERS: usize = 32;

pub(super) fn place(plan: &mut Plan) {
    let n = plan.buffers.len();
    let end = plan.steps.len();
    // Lifetime of each value as [first, last] step index; inputs from 0, outputs to end.
    let mut life: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut touch = |v: usize, at: usize| {
        life[v] = Some(match life[v] {
            Some((a, b)) => (a.min(at), b.max(at)),
            None => (at, at),
        });
    };
    for port in &plan.inputs {
        touch(port.buffer, 0);
    }
    for (i, step) in plan.steps.iter().enumerate() {
        for &v in &step.inputs {
            touch(v, i);
        }
        touch(step.output, i);
    }
    for port in &plan.outputs {
        touch(port.buffer, end);
    }
    // State lives across calls: alive from before the first step to after the last.
    for &v in &plan.state {
        touch(v, 0);
        touch(v, end);
    }
    let overlaps = |a: (usize, usize), b: (usize, usize)| a.0 <= b.1 && b.0 <= a.1;

    plan.lower_bound_floats = (0..=end)
        .map(|t| {
            (0..n)
                .filter(|&v| life[v].is_some_and(|(a, b)| a <= t && t <= b))
                .map(|v| aligned(plan.buffers[v].len))
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);

    // Greedy placement is near-optimal with a good order; which order wins depends on
    // the model, so try a few and keep the smallest arena.
    let live: Vec<usize> = (0..n).filter(|&v| life[v].is_some()).collect();
    let span = |v: usize| life[v].map_or(0, |(a, b)| b - a + 1);
    let sizes: Vec<usize> = plan.buffers.iter().map(|v| aligned(v.len)).collect();
    let size = |v: usize| sizes[v];
    let first = |v: usize| life[v].map_or(0, |l| l.0);
    // Orders past the first four: sizes scaled by a factor in [1/2, 3/2) from a fixed
    // sequence, so that near-equal buffers swap places: a chain of layers packs to its
    // bound only when each buffer lands at the end its neighbours leave free.
    let jitter = |order: usize, v: usize| {
        let mut z = ((order * 0x9e37_79b9) ^ (v * 0x85eb_ca6b)) as u64 | 1;
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        size(v) as u64 * (512 + z % 1024) / 1024
    };
    let key = |order: usize, v: usize| match order {
        0 => (std::cmp::Reverse(size(v) as u64), first(v)),
        1 => (std::cmp::Reverse(size(v) as u64), usize::MAX - span(v)),
        2 => (std::cmp::Reverse((size(v) * span(v)) as u64), first(v)),
        3 => (std::cmp::Reverse(0), first(v)),
        _ => (std::cmp::Reverse(jitter(order, v)), first(v)),
    };
    let mut best: Option<(usize, Vec<usize>)> = None;
    // Each order placed first-fit (the lowest free offset) and best-fit (the smallest
    // gap that holds the buffer, else past the end): on a chain of layers, best-fit
    // leaves the large gaps for the large buffers still to come.
    for (kind, best_fit) in (0..ORDERS).flat_map(|k| [(k, false), (k, true)]) {
        let mut order = live.clone();
        order.sort_by_key(|&v| key(kind, v));
        let mut offsets = vec![0; n];
        let mut placed: Vec<usize> = Vec::with_capacity(order.len());
        let mut arena = 0;
        for v in order {
            let lv = life[v].unwrap_or((0, 0));
            let mut busy: Vec<(usize, usize)> = placed
                .iter()
                .filter(|&&u| overlaps(lv, life[u].unwrap_or((0, 0))))
                .map(|&u| (offsets[u], offsets[u] + size(u)))
                .collect();
            busy.sort_unstable();
            let align = alignment(size(v));
            // The free gaps as (start, length), the open end last.
            let mut gaps = Vec::with_capacity(busy.len() + 1);
            let mut offset = 0;
            for (start, stop) in busy {
                if start >= offset + size(v) {
                    gaps.push((offset, start - offset));
                    if !best_fit {
                        break;
                    }
                }
                offset = offset.max(stop.next_multiple_of(align));
            }
            gaps.push((offset, usize::MAX));
            let offset = if best_fit {
                gaps.iter().min_by_key(|g| g.1).map_or(0, |g| g.0)
            } else {
                gaps.first().map_or(0, |g| g.0)
            };
            offsets[v] = offset;
            arena = arena.max(offset + size(v));
            placed.push(v);
        }
        if best.as_ref().is_none_or(|(a, _)| arena < *a) {
            best = Some((arena, offsets));
        }
    }
    let (arena, offsets) = best.unwrap_or_default();
    for (value, offset) in plan.buffers.iter_mut().zip(offsets) {
        value.offset = offset;
    }
    plan.arena_floats = arena;
}
