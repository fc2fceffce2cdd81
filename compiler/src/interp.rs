//! The reference interpreter: runs a [`Graph`] with each op's reference semantics.
//! It is checked against Keras, and every backend is checked against it.

use crate::bail;
use crate::error::{Error, Result};
use crate::graph::Graph;
use ndarray::ArrayD;

/// Runs the model once at its compiled batch size. `inputs` are in Keras's order.
pub fn run(graph: &Graph, inputs: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
    run_observed(graph, inputs, |_, _| {})
}

/// As [`run`], calling `after_node(i, outputs)` with the outputs of each node
/// `graph.nodes[i]` as it is computed.
pub fn run_observed(
    graph: &Graph,
    inputs: &[ArrayD<f32>],
    mut after_node: impl FnMut(usize, &[ArrayD<f32>]),
) -> Result<Vec<ArrayD<f32>>> {
    if inputs.len() != graph.inputs.len() {
        bail!(
            "the model has {} inputs, {} were given",
            graph.inputs.len(),
            inputs.len()
        );
    }
    let mut values: Vec<Option<ArrayD<f32>>> = vec![None; graph.tensors.len()];
    for (port, x) in graph.inputs.iter().zip(inputs) {
        let expected = graph.shape(port.tensor);
        if x.shape() != expected.as_slice() {
            bail!(
                "input `{}` has shape {:?}, the model expects {expected:?}",
                port.name,
                x.shape()
            );
        }
        values[port.tensor] = Some(x.as_standard_layout().into_owned());
    }
    // Drop each value after its last use, so memory follows liveness.
    let mut last_use = vec![usize::MAX; graph.tensors.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        for &t in &node.inputs {
            last_use[t] = i;
        }
    }
    for port in &graph.outputs {
        last_use[port.tensor] = usize::MAX;
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        let args: Vec<&ArrayD<f32>> = node
            .inputs
            .iter()
            .map(|&t| {
                values[t]
                    .as_ref()
                    .ok_or_else(|| Error::new(format!("tensor {t} used before it is computed")))
            })
            .collect::<Result<_>>()
            .map_err(|e| e.in_layer(&node.name, &node.class))?;
        // Subnormals flushed, as TensorFlow computes Keras models.
        let outputs = kerac::fp::flushed(|| node.op.eval(&args));
        after_node(i, &outputs);
        for (&t, y) in node.outputs.iter().zip(outputs) {
            debug_assert_eq!(
                y.shape(),
                graph.shape(t).as_slice(),
                "layer {} output shape",
                node.name
            );
            values[t] = Some(y.as_standard_layout().into_owned());
        }
        for &t in &node.inputs {
            if last_use[t] == i {
                values[t] = None;
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|port| {
            values[port.tensor]
                .clone()
                .ok_or_else(|| Error::new(format!("output `{}` was never computed", port.name)))
        })
        .collect()
}
