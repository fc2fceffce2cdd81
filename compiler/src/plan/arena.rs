//! The memory planner: every buffer gets an arena offset such that buffers alive at the
//! same step never overlap. Greedy by size (largest first, lowest free offset), which
//! lands at or near the liveness lower bound on the models kerac compiles.

use super::{Plan, ALIGN_FLOATS};

fn aligned(len: usize) -> usize {
    len.div_ceil(ALIGN_FLOATS) * ALIGN_FLOATS
}

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
    let key = |order: usize, v: usize| match order {
        0 => (std::cmp::Reverse(size(v)), first(v)),
        1 => (std::cmp::Reverse(size(v)), usize::MAX - span(v)),
        2 => (std::cmp::Reverse(size(v) * span(v)), first(v)),
        _ => (std::cmp::Reverse(0), first(v)),
    };
    let mut best: Option<(usize, Vec<usize>)> = None;
    for kind in 0..4 {
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
            let mut offset = 0;
            for (start, stop) in busy {
                if start >= offset + size(v) {
                    break;
                }
                offset = offset.max(stop);
            }
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
