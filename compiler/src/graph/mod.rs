//! The graph IR: layers as typed ops over tensors with static shapes (batch included),
//! in topological order.

mod build;

pub use build::{build, BuildOptions};

use crate::layers::Op;
use std::path::PathBuf;

/// A tensor shape, batch first.
pub type Shape = Vec<usize>;

/// The largest tensor kerac accepts: 2^28 elements (1 GiB of float32), far beyond what
/// a statically planned model holds, and a bound on what a hostile shape can claim.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 28;

/// A tensor of the graph.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Shape, batch first.
    pub shape: Shape,
    /// The node producing it, `None` for a model input.
    pub producer: Option<usize>,
}

/// One call of one layer.
#[derive(Debug)]
pub struct Node {
    /// The layer's name, with enclosing models as `outer/inner/layer`.
    pub name: String,
    /// The Keras class name.
    pub class: String,
    /// Which call of a shared layer this is (0 for the first).
    pub call: usize,
    /// The lowered op.
    pub op: Box<dyn Op>,
    /// Input tensors.
    pub inputs: Vec<usize>,
    /// Output tensors.
    pub outputs: Vec<usize>,
    /// Parameters this call's layer owns (0 for later calls of a shared layer).
    pub params: usize,
    /// The options that decide what it computes, as `key=value` pairs, for reports.
    pub settings: String,
}

/// A model input or output: Keras's name and the tensor.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    /// Keras's name for it (the input or output layer's name).
    pub name: String,
    /// The tensor.
    pub tensor: usize,
}

/// A whole model.
#[derive(Debug)]
pub struct Graph {
    /// The model's name.
    pub name: String,
    /// The file it came from.
    pub source: PathBuf,
    /// The Keras version recorded in the file.
    pub keras_version: Option<String>,
    /// The batch size every shape was fixed with.
    pub batch: usize,
    /// Whether recurrent layers keep their state between calls ([`BuildOptions::stream`]).
    pub stream: bool,
    /// All tensors.
    pub tensors: Vec<TensorInfo>,
    /// Nodes in an order where every input is produced before it is used.
    pub nodes: Vec<Node>,
    /// Inputs in Keras's order.
    pub inputs: Vec<NamedTensor>,
    /// Outputs in Keras's order.
    pub outputs: Vec<NamedTensor>,
}

impl Graph {
    /// Total parameters (as Keras's `count_params`).
    pub fn params(&self) -> usize {
        self.nodes.iter().map(|n| n.params).sum()
    }

    /// Total FLOPs of one call of the model at its batch size.
    pub fn flops(&self) -> u64 {
        self.nodes.iter().map(|n| n.op.flops()).sum()
    }

    /// Shape of a tensor.
    pub fn shape(&self, tensor: usize) -> &Shape {
        &self.tensors[tensor].shape
    }
}
