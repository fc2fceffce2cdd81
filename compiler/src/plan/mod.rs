//! The Plan: what every backend compiles. An ordered list of kernel calls of the
//! runtime, each with constant parameters, weights by reference, and its buffers as
//! regions of one arena planned from tensor lifetimes.
//!
//! Lowering (`lower`) asks each layer's op for its kernel calls; the passes (`fuse`)
//! fold BatchNormalization into the Dense or Conv before it and fuse activations into
//! their producer; identities and reshapes become aliases, not copies; `arena` places
//! every value. `exec` runs a plan on the runtime's kernels, as generated code does.

mod arena;
pub mod exec;
mod fuse;
pub mod lower;

pub use lower::{Lower, StridedAxes};

use crate::error::Result;
use crate::graph::{Graph, Shape};
use kerac::merge::{BatchDot, Fold, RANK};
use kerac::{conv, dense, norm, pool, shape, Act};

/// Index of a weight in [`Plan::weights`].
pub type WeightId = usize;
/// Index of a value (a buffer) in [`Plan::values`].
pub type ValueId = usize;

/// One call of a runtime kernel.
#[derive(Debug, Clone, PartialEq)]
pub enum Kernel {
    /// `kerac::dense::dense`.
    Dense {
        p: dense::Dense,
        w: WeightId,
        b: Option<WeightId>,
    },
    /// `kerac::conv::conv`.
    Conv {
        p: conv::Conv,
        w: WeightId,
        b: Option<WeightId>,
    },
    /// `kerac::conv::conv_transpose`.
    ConvTranspose {
        p: conv::ConvTranspose,
        w: WeightId,
        b: Option<WeightId>,
    },
    /// `kerac::pool::pool`.
    Pool(pool::Pool),
    /// `kerac::pool::global_pool`.
    GlobalPool(pool::GlobalPool),
    /// `kerac::norm::scale_shift`.
    ScaleShift {
        p: norm::Strided,
        scale: WeightId,
        offset: WeightId,
    },
    /// `kerac::norm::prelu`.
    Prelu { p: norm::Strided, alpha: WeightId },
    /// `kerac::norm::activation`.
    Activation(Act),
    /// `kerac::norm::softmax`.
    Softmax { p: norm::Strided, log: bool },
    /// `kerac::norm::layer_norm`.
    LayerNorm {
        p: norm::LayerNorm,
        gamma: Option<WeightId>,
        beta: Option<WeightId>,
    },
    /// `kerac::norm::group_norm`.
    GroupNorm {
        p: norm::GroupNorm,
        gamma: Option<WeightId>,
        beta: Option<WeightId>,
    },
    /// `kerac::norm::unit_norm`.
    UnitNorm(norm::Strided),
    /// `kerac::merge::merge` with one stride set per input.
    Merge {
        fold: Fold,
        shape: [usize; RANK],
        strides: Vec<[usize; RANK]>,
    },
    /// `kerac::merge::concat`.
    Concat { outer: usize, parts: Vec<usize> },
    /// `kerac::merge::batch_dot`.
    BatchDot(BatchDot),
    /// `kerac::shape::strided_copy`.
    StridedCopy(shape::Strided),
    /// `kerac::shape::resample`.
    Resample(shape::Resample),
}

impl Kernel {
    /// The kernel's function name in the runtime, for reports and emitted code.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Dense { .. } => "dense",
            Kernel::Conv { .. } => "conv",
            Kernel::ConvTranspose { .. } => "conv_transpose",
            Kernel::Pool(_) => "pool",
            Kernel::GlobalPool(_) => "global_pool",
            Kernel::ScaleShift { .. } => "scale_shift",
            Kernel::Prelu { .. } => "prelu",
            Kernel::Activation(_) => "activation",
            Kernel::Softmax { .. } => "softmax",
            Kernel::LayerNorm { .. } => "layer_norm",
            Kernel::GroupNorm { .. } => "group_norm",
            Kernel::UnitNorm(_) => "unit_norm",
            Kernel::Merge { .. } => "merge",
            Kernel::Concat { .. } => "concat",
            Kernel::BatchDot(_) => "batch_dot",
            Kernel::StridedCopy(_) => "strided_copy",
            Kernel::Resample(_) => "resample",
        }
    }
}

/// A buffer: a tensor's values, or several tensors' where reshapes alias one buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// Floats.
    pub len: usize,
    /// Offset in the arena, in floats (set by the arena planner).
    pub offset: usize,
}

/// One kernel call.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The Keras layers it implements, e.g. `conv2d_1 + batch_normalization + re_lu`.
    pub layers: String,
    /// The kernel and its constant parameters.
    pub kernel: Kernel,
    /// Values read.
    pub inputs: Vec<ValueId>,
    /// Value written.
    pub output: ValueId,
    /// FLOPs of the call.
    pub flops: u64,
}

/// A named weight array.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightData {
    /// The layer and weight it came from, e.g. `conv2d_1/kernel (folded)`.
    pub name: String,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// A model input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    /// Keras's name.
    pub name: String,
    /// Shape, batch first.
    pub shape: Shape,
    /// Its buffer.
    pub value: ValueId,
}

/// A compiled model: kernel calls over one arena.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Model name.
    pub name: String,
    /// Batch size.
    pub batch: usize,
    /// Kernel calls in order.
    pub steps: Vec<Step>,
    /// Buffers.
    pub values: Vec<Value>,
    /// Weights.
    pub weights: Vec<WeightData>,
    /// Inputs in Keras's order.
    pub inputs: Vec<Port>,
    /// Outputs in Keras's order.
    pub outputs: Vec<Port>,
    /// Arena size in floats.
    pub arena_floats: usize,
    /// The most floats alive at once: no arena can be smaller.
    pub lower_bound_floats: usize,
}

/// Floats between value offsets: 32 bytes, one AVX2 vector.
pub const ALIGN_FLOATS: usize = 8;

impl Plan {
    /// Lowers, optimizes and lays out a graph.
    pub fn new(graph: &Graph) -> Result<Plan> {
        let mut plan = lower::lower(graph)?;
        fuse::fold_batch_norm(&mut plan);
        fuse::fuse_activations(&mut plan);
        arena::place(&mut plan);
        Ok(plan)
    }

    /// Total FLOPs per call.
    pub fn flops(&self) -> u64 {
        self.steps.iter().map(|s| s.flops).sum()
    }

    /// Bytes of weights.
    pub fn weight_bytes(&self) -> usize {
        self.weights.iter().map(|w| w.data.len() * 4).sum()
    }
}
