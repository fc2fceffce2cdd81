//! Each runtime kernel on its own, without Keras: one-layer graphs with random
//! parameters, weights and inputs (`kerac_conformance::random`), each run through the
//! reference interpreter (`Op::eval`), the plan on the runtime's kernels (`plan::exec`),
//! the JIT and the C backend, and compared. A new kernel is testable here as soon as
//! `random::draw` can draw a layer that lowers to it, before any Keras fixture exists.

use kerac_conformance::random::{build, disagreements, draw, input, Builder, Rng};
use std::collections::BTreeMap;

/// The kernels a one-layer graph reaches, each to be drawn at least [`AT_LEAST`]
/// times. `gather` (Embedding, on integer inputs) is left to the fixtures.
const KERNELS: &[&str] = &[
    "dense",
    "conv",
    "conv_transpose",
    "pool",
    "global_pool",
    "scale_shift",
    "prelu",
    "activation",
    "softmax",
    "layer_norm",
    "group_norm",
    "unit_norm",
    "merge",
    "concat",
    "batch_dot",
    "strided_copy",
    "resample",
    "recurrent",
    "attention",
];

const AT_LEAST: usize = 3;

#[test]
fn every_kernel_alone_matches_the_interpreter() {
    let mut rng = Rng(0x6b65_726e_656c_7321);
    let shapes: [&[usize]; 4] = [&[16], &[12, 5], &[9, 8, 4], &[7, 6, 5, 3]];
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in 0..1500 {
        if KERNELS
            .iter()
            .all(|k| seen.get(k).copied().unwrap_or(0) >= AT_LEAST)
        {
            break;
        }
        let per_sample = shapes[case % shapes.len()];
        let mut b = Builder::new(per_sample);
        let x_shape = [&[1usize][..], per_sample].concat();
        let others = vec![("x".to_string(), x_shape.clone())];
        let name = draw(&mut b, &mut rng, "x", &x_shape, &others);
        let Some(graph) = build(&b, &name) else {
            continue;
        };
        if graph
            .shape(graph.outputs[0].tensor)
            .iter()
            .product::<usize>()
            > 20_000
        {
            continue;
        }
        let x = input(&mut rng, per_sample);
        let (wrong, plan) = disagreements(&graph, &x);
        let kernels: Vec<&'static str> = plan.steps.iter().map(|s| s.kernel.name()).collect();
        for k in &kernels {
            *seen.entry(k).or_default() += 1;
        }
        let class = &graph.nodes[0].class;
        failures.extend(
            wrong
                .into_iter()
                .map(|w| format!("case {case}, {class} as {kernels:?}: {w}")),
        );
    }
    eprintln!("kernels drawn: {seen:?}");
    let missing: Vec<&&str> = KERNELS
        .iter()
        .filter(|k| seen.get(*k).copied().unwrap_or(0) < AT_LEAST)
        .collect();
    assert!(
        missing.is_empty(),
        "kernels drawn fewer than {AT_LEAST} times: {missing:?} (drawn: {seen:?})"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
