//! Random graphs with random weights and inputs: the compiled plan, run on the runtime's
//! kernels (the calls generated code makes), the JIT and the C backend, against the
//! reference interpreter.
//!
//! Each graph grows one layer at a time; a layer kerac refuses for its input (a window
//! longer than the input, say) is dropped and another drawn, so every kept graph is one
//! Keras could have saved.

use kerac_conformance::random::{build, disagreements, draw, draw_op, input, Builder, Rng};

#[test]
fn compiled_plan_and_jit_match_the_interpreter_on_random_graphs() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let inputs: [&[usize]; 3] = [&[16], &[12, 5], &[9, 8, 4]];
    let (mut graphs, mut layers) = (0, 0);
    let mut classes = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for case in 0..150 {
        let per_sample = inputs[case % 3];
        let mut b = Builder::new(per_sample);
        let mut tensors: Vec<(String, Vec<usize>)> =
            vec![("x".into(), [&[1usize][..], per_sample].concat())];
        let mut graph = None;
        for _ in 0..(2 + rng.below(8)) {
            for _attempt in 0..6 {
                let (input, shape) = if rng.below(4) == 0 {
                    tensors[rng.below(tensors.len())].clone()
                } else {
                    tensors[tensors.len() - 1].clone()
                };
                let name = if rng.below(4) == 0 {
                    draw_op(&mut b, &mut rng, &input, &shape, &tensors)
                } else {
                    draw(&mut b, &mut rng, &input, &shape, &tensors)
                };
                match build(&b, &name) {
                    Some(g) if g.shape(g.outputs[0].tensor).iter().product::<usize>() <= 20_000 => {
                        tensors.push((name, g.shape(g.outputs[0].tensor).clone()));
                        graph = Some(g);
                        break;
                    }
                    _ => b.undo(),
                }
            }
        }
        let Some(graph) = graph else { continue };
        graphs += 1;
        layers += graph.nodes.len();
        classes.extend(graph.nodes.iter().map(|n| n.class.clone()));
        let x = input(&mut rng, per_sample);
        let classes: Vec<&str> = graph.nodes.iter().map(|n| n.class.as_str()).collect();
        let (wrong, _) = disagreements(&graph, &x);
        failures.extend(
            wrong
                .into_iter()
                .map(|w| format!("case {case}: {w} through {classes:?}")),
        );
    }
    eprintln!(
        "{graphs} graphs, {layers} layers, {} classes: {classes:?}",
        classes.len()
    );
    assert!(
        graphs >= 120 && layers >= 500,
        "only {graphs} graphs with {layers} layers were built"
    );
    assert!(
        classes.len() >= 25,
        "the random graphs cover only {classes:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {graphs} graphs disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
