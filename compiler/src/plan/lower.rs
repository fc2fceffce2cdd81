//! Graph to plan: each node's op emits its kernel calls through [`Lower`].

use super::{Buffer, BufferId, Kernel, Plan, Port, Step, Tap, WeightData, WeightId};
use crate::bail;
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, Shape};
use kerac::merge::RANK;
use kerac::norm::Strided;

/// What an op sees while it lowers one call: its buffers, and ways to add weights,
/// temporaries and kernel calls.
pub struct Lower<'a> {
    plan: &'a mut Plan,
    layer: &'a str,
    /// Values of the inputs.
    pub inputs: Vec<BufferId>,
    /// Shapes of the inputs, batch first.
    pub input_shapes: Vec<Shape>,
    /// Shapes of the outputs, batch first.
    pub output_shapes: Vec<Shape>,
    outputs: Vec<Option<BufferId>>,
    /// Whether recurrent state persists between calls.
    pub stream: bool,
}

impl Lower<'_> {
    /// Registers a weight array.
    pub fn weight(&mut self, name: &str, data: Vec<f32>) -> WeightId {
        self.plan.weights.push(WeightData {
            name: format!("{}/{name}", self.layer),
            data,
            offset: 0,
        });
        self.plan.weights.len() - 1
    }

    /// A fresh buffer of `len` floats.
    pub fn temp(&mut self, len: usize) -> BufferId {
        self.plan.buffers.push(Buffer { len, offset: 0 });
        self.plan.buffers.len() - 1
    }

    /// A buffer that keeps its contents from one call to the next (recurrent state):
    /// the arena never lends its space to anything else.
    pub fn state(&mut self, len: usize) -> BufferId {
        let v = self.temp(len);
        self.plan.state.push(v);
        v
    }

    /// The buffer of output `i`.
    pub fn output(&mut self, i: usize) -> BufferId {
        if let Some(v) = self.outputs[i] {
            return v;
        }
        let len = self.output_shapes[i].iter().product();
        let v = self.temp(len);
        self.outputs[i] = Some(v);
        v
    }

    /// Makes output `i` share `value`'s buffer: reshapes and identities cost nothing.
    pub fn alias(&mut self, i: usize, value: BufferId) {
        self.outputs[i] = Some(value);
    }

    /// Adds a kernel call.
    pub fn step(&mut self, kernel: Kernel, inputs: Vec<BufferId>, output: BufferId, flops: u64) {
        self.plan.steps.push(Step {
            layers: self.layer.to_string(),
            kernel,
            inputs,
            output,
            flops,
            taps: Vec::new(),
        });
    }

    /// One input to output 0 through one kernel.
    pub fn unary(&mut self, kernel: Kernel, flops: u64) {
        let out = self.output(0);
        let input = self.inputs[0];
        self.step(kernel, vec![input], out, flops);
    }
}

/// `outer x n x inner` views of a shape for a set of axes.
pub trait StridedAxes {
    /// The view for `axes`, which must be adjacent (in any order, with only length-1
    /// axes between them); an error otherwise.
    fn strided(&self, axes: &[usize]) -> Result<Strided>;
}

impl StridedAxes for [usize] {
    fn strided(&self, axes: &[usize]) -> Result<Strided> {
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
            return Ok(Strided {
                outer: self.iter().product(),
                n: 1,
                inner: 1,
            });
        };
        // Axes of length 1 between them change no offset, so they do not break adjacency.
        if last >= self.len() || (first..=last).any(|a| !sorted.contains(&a) && self[a] != 1) {
            bail!(
                "axes {axes:?} of shape {self:?} are not adjacent; the compiled backends need adjacent axes"
            );
        }
        Ok(Strided {
            outer: self[..first].iter().product(),
            n: self[first..=last].iter().product(),
            inner: self[last + 1..].iter().product(),
        })
    }
}

/// Pads a shape to the merge rank with leading 1s.
pub fn padded(shape: &[usize]) -> Result<[usize; RANK]> {
    if shape.len() > RANK {
        bail!("shape {shape:?} has more than {RANK} axes");
    }
    let mut out = [1; RANK];
    out[RANK - shape.len()..].copy_from_slice(shape);
    Ok(out)
}

/// Row-major strides of `shape` seen through `out`'s (padded) axes: 0 where `shape`
/// broadcasts (length 1 against a longer axis, or missing).
pub fn broadcast_strides(shape: &[usize], out: &[usize; RANK]) -> Result<[usize; RANK]> {
    let dims = padded(shape)?;
    let mut strides = [0; RANK];
    let mut step = 1;
    for i in (0..RANK).rev() {
        strides[i] = if dims[i] == out[i] { step } else { 0 };
        step *= dims[i];
    }
    Ok(strides)
}

/// Records output `i` of `node` as a tap: read after the node's last step, or, for an
/// output that shares an earlier buffer (a reshape), right after the step that wrote
/// that buffer, while its contents are certainly intact.
fn tap(plan: &mut Plan, node: &Node, i: usize, shape: &Shape, buffer: BufferId, first: usize) {
    let step = if plan.steps.len() > first {
        plan.steps.len() - 1
    } else {
        match plan.steps.iter().rposition(|s| s.output == buffer) {
            Some(k) => k,
            None => return,
        }
    };
    plan.taps.push(Tap {
        layer: node.name.clone(),
        call: node.call,
        output: i,
        shape: shape.clone(),
        buffer,
    });
    let id = plan.taps.len() - 1;
    plan.steps[step].taps.push(id);
}

/// Lowers a graph to kernel calls, one node at a time in graph order.
pub(super) fn lower(graph: &Graph) -> Result<Plan> {
    let mut plan = Plan {
        name: graph.name.clone(),
        batch: graph.batch,
        steps: Vec::new(),
        buffers: Vec::new(),
        weights: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        arena_floats: 0,
        lower_bound_floats: 0,
        state: Vec::new(),
        taps: Vec::new(),
    };
    let mut value_of: Vec<Option<BufferId>> = vec![None; graph.tensors.len()];
    for port in &graph.inputs {
        let shape = graph.shape(port.tensor).clone();
        plan.buffers.push(Buffer {
            len: shape.iter().product(),
            offset: 0,
        });
        let buffer = plan.buffers.len() - 1;
        value_of[port.tensor] = Some(buffer);
        plan.inputs.push(Port {
            name: port.name.clone(),
            shape,
            buffer,
        });
    }
    for node in &graph.nodes {
        let steps_before = plan.steps.len();
        let inputs = node
            .inputs
            .iter()
            .map(|&t| value_of[t].ok_or_else(|| Error::new("input used before it is computed")))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| e.in_layer(&node.name, &node.class))?;
        let mut l = Lower {
            layer: &node.name,
            inputs,
            input_shapes: node
                .inputs
                .iter()
                .map(|&t| graph.shape(t).clone())
                .collect(),
            output_shapes: node
                .outputs
                .iter()
                .map(|&t| graph.shape(t).clone())
                .collect(),
            outputs: vec![None; node.outputs.len()],
            stream: graph.stream,
            plan: &mut plan,
        };
        node.op
            .lower(&mut l)
            .map_err(|e| e.in_layer(&node.name, &node.class).in_file(&graph.source))?;
        let outputs = l.outputs;
        for (i, &t) in node.outputs.iter().enumerate() {
            let buffer = outputs[i].ok_or_else(|| {
                Error::new("lowering produced no output").in_layer(&node.name, &node.class)
            })?;
            value_of[t] = Some(buffer);
            tap(&mut plan, node, i, graph.shape(t), buffer, steps_before);
        }
    }
    for port in &graph.outputs {
        let value = value_of[port.tensor]
            .ok_or_else(|| Error::new(format!("output `{}` is never computed", port.name)))?;
        plan.outputs.push(Port {
            name: port.name.clone(),
            shape: graph.shape(port.tensor).clone(),
            buffer: value,
        });
    }
    Ok(plan)
}
