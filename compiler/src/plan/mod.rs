//! The Plan: what every backend compiles. An ordered list of kernel calls of the
//! runtime, each with constant parameters, weights by reference, and its buffers as
//! regions of one arena planned from tensor lifetimes.
//!
//! Lowering (`lower`) asks each layer's op for its kernel calls; the passes (`fuse`)
//! fold BatchNormalization into the Dense or Conv before it and fuse activations into
//! their producer; `pad` gives padded convolutions a zero-padded input; identities and reshapes become aliases, not copies; `pack` keeps the
//! weights the steps read and places them in one blob; `arena` places every buffer. `exec` runs a plan on the runtime's kernels, as generated code does.

mod arena;
pub mod exec;
mod fuse;
pub mod lower;
pub(crate) mod pack;
mod pad;

pub use pack::WEIGHT_ALIGN_FLOATS;

pub use lower::{Lower, StridedAxes};

use crate::error::Result;
use crate::graph::{Graph, Shape};
use kerac::merge::{BatchDot, Fold, RANK};
use kerac::{conv, dense, norm, pool, recurrent, shape, Act};

/// Index of a weight in [`Plan::weights`].
pub type WeightId = usize;
/// Index of a buffer in [`Plan::buffers`].
pub type BufferId = usize;

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
    /// `kerac::attention::attention` on `[query, key, value]`; `w` the weights of
    /// additive scores.
    Attention {
        p: kerac::attention::Attention,
        w: Option<WeightId>,
    },
    /// `kerac::shape::gather`.
    Gather { p: shape::Gather, table: WeightId },
    /// `kerac::recurrent::recurrent`: input projections in, every step's state out;
    /// with `initial`, the initial `h` (and `c`) are the step's next inputs, and with
    /// `masked` the last input is the step mask.
    Recurrent {
        p: recurrent::Recurrent,
        u: WeightId,
        rb: Option<WeightId>,
        initial: bool,
        masked: bool,
    },
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
            Kernel::Gather { .. } => "gather",
            Kernel::Attention { .. } => "attention",
            Kernel::Recurrent { .. } => "recurrent",
        }
    }
}

impl Kernel {
    /// The weights the call reads, in the order it names them.
    pub fn weights(&self) -> Vec<WeightId> {
        let mut ids = Vec::new();
        self.clone().map_weights(|id| {
            ids.push(id);
            id
        });
        ids
    }

    /// Replaces each weight the call reads by `f` of it. Exhaustive on purpose: a new
    /// kernel must say which weights it reads.
    pub fn map_weights(&mut self, mut f: impl FnMut(WeightId) -> WeightId) {
        let mut one = |id: &mut WeightId| *id = f(*id);
        match self {
            Kernel::Dense { w, b, .. }
            | Kernel::Conv { w, b, .. }
            | Kernel::ConvTranspose { w, b, .. } => {
                one(w);
                b.iter_mut().for_each(one);
            }
            Kernel::Recurrent { u, rb, .. } => {
                one(u);
                rb.iter_mut().for_each(one);
            }
            Kernel::Gather { table, .. } => one(table),
            Kernel::ScaleShift { scale, offset, .. } => {
                one(scale);
                one(offset);
            }
            Kernel::Prelu { alpha, .. } => one(alpha),
            Kernel::LayerNorm { gamma, beta, .. } | Kernel::GroupNorm { gamma, beta, .. } => {
                gamma.iter_mut().for_each(&mut one);
                beta.iter_mut().for_each(one);
            }
            Kernel::Attention { w, .. } => w.iter_mut().for_each(one),
            Kernel::Pool(_)
            | Kernel::GlobalPool(_)
            | Kernel::Activation(_)
            | Kernel::Softmax { .. }
            | Kernel::UnitNorm(_)
            | Kernel::Merge { .. }
            | Kernel::Concat { .. }
            | Kernel::BatchDot(_)
            | Kernel::StridedCopy(_)
            | Kernel::Resample(_) => {}
        }
    }

    /// The kernel's loop nest as named constant trip counts, outermost first.
    pub fn loops(&self) -> Vec<(&'static str, usize)> {
        let spatial = |w: &[kerac::Window; 3]| w.iter().map(|w| w.output).product::<usize>();
        let taps = |w: &[kerac::Window; 3]| w.iter().map(|w| w.kernel).product::<usize>();
        match self {
            Kernel::Dense { p, .. } => vec![("rows", p.rows), ("k", p.k), ("n", p.n)],
            Kernel::Conv { p, .. } => vec![
                ("batch", p.batch),
                ("positions", spatial(&p.windows)),
                ("taps", taps(&p.windows)),
                ("cin/group", p.cin / p.groups.max(1)),
                ("cout", p.cout),
            ],
            Kernel::ConvTranspose { p, .. } => vec![
                ("batch", p.batch),
                ("positions", spatial(&p.windows)),
                ("taps", taps(&p.windows)),
                ("cout", p.cout),
                ("cin", p.cin),
            ],
            Kernel::Pool(p) => vec![
                ("batch", p.batch),
                ("positions", spatial(&p.windows)),
                ("taps", taps(&p.windows)),
                ("channels", p.channels),
            ],
            Kernel::GlobalPool(p) => vec![
                ("batch", p.batch),
                ("positions", p.positions),
                ("channels", p.channels),
            ],
            Kernel::ScaleShift { p, .. }
            | Kernel::Prelu { p, .. }
            | Kernel::UnitNorm(p)
            | Kernel::Softmax { p, .. } => vec![("outer", p.outer), ("n", p.n), ("inner", p.inner)],
            Kernel::LayerNorm { p, .. } => vec![
                ("outer", p.shape.outer),
                ("n", p.shape.n),
                ("inner", p.shape.inner),
            ],
            Kernel::GroupNorm { p, .. } => vec![
                ("batch", p.batch),
                ("groups", p.groups),
                ("positions", p.positions),
                ("channels/group", p.channels / p.groups.max(1)),
            ],
            Kernel::Activation(_) => Vec::new(),
            Kernel::Merge { shape, strides, .. } => vec![
                ("elements", shape.iter().product()),
                ("inputs", strides.len()),
            ],
            Kernel::Concat { outer, parts } => vec![
                ("outer", *outer),
                ("inputs", parts.len()),
                ("row", parts.iter().sum()),
            ],
            Kernel::BatchDot(p) => vec![("batch", p.batch), ("m", p.m), ("n", p.n), ("k", p.k)],
            Kernel::StridedCopy(p) => vec![("elements", p.shape.iter().product())],
            Kernel::Gather { p, .. } => vec![("indices", p.indices), ("dim", p.dim)],
            Kernel::Attention { p, .. } => vec![
                ("batch", p.batch),
                ("queries", p.tq),
                ("heads", p.heads),
                ("keys", p.tk),
                ("dk+dv", p.dk + p.dv),
            ],
            Kernel::Recurrent { p, .. } => vec![
                ("batch", p.batch),
                ("steps", p.steps),
                ("units", p.units),
                ("gates*units", p.gates() * p.units),
            ],
            Kernel::Resample(p) => vec![
                ("batch", p.batch),
                ("positions", p.axes.iter().map(|a| a.len()).product()),
                ("channels", p.channels),
            ],
        }
    }
}

/// A buffer: a tensor's values, or several tensors' where reshapes alias one buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Buffer {
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
    pub inputs: Vec<BufferId>,
    /// Buffer written.
    pub output: BufferId,
    /// FLOPs of the call.
    pub flops: u64,
    /// The [`Plan::taps`] whose values are complete once this step has run: the outputs
    /// of its last Keras layer, for comparing a model layer by layer.
    pub taps: Vec<usize>,
}

/// One Keras layer output as the plan holds it: where to read it, and after which
/// step ([`Step::taps`]). Layers fused into a later one have no tap of their own.
#[derive(Debug, Clone, PartialEq)]
pub struct Tap {
    /// The layer's name (`outer/inner/layer` inside nested models).
    pub layer: String,
    /// Which call of a shared layer (0 for the first).
    pub call: usize,
    /// Which of the layer's outputs.
    pub output: usize,
    /// Shape, batch first.
    pub shape: Shape,
    /// The buffer holding it, in Keras's row-major order.
    pub buffer: BufferId,
}

/// Where a recurrent step finds its optional inputs: positions in [`Step::inputs`]
/// (the projections are always position 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecurrentInputs {
    /// The initial `h`.
    pub h0: Option<usize>,
    /// The initial `c` (LSTM).
    pub c0: Option<usize>,
    /// The step mask.
    pub mask: Option<usize>,
}

impl Step {
    /// For a `Recurrent` step, which inputs are the initial states and the mask; the one
    /// statement of that rule, for every backend. Empty for other kernels.
    pub fn recurrent_inputs(&self) -> RecurrentInputs {
        let Kernel::Recurrent {
            initial, masked, ..
        } = self.kernel
        else {
            return RecurrentInputs::default();
        };
        let n = self.inputs.len();
        let states = n.saturating_sub(1 + masked as usize);
        let init = |i: usize| (initial && i <= states && i < n).then_some(i);
        RecurrentInputs {
            h0: init(1),
            c0: init(2),
            mask: (masked && n > 1).then_some(n - 1),
        }
    }
}

/// A named weight array, in the layout its kernel reads.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightData {
    /// The layer and weight it came from, e.g. `conv2d_1/kernel (folded)`.
    pub name: String,
    /// Values, row-major.
    pub data: Vec<f32>,
    /// Offset in the weight blob, in floats (set by the packing pass).
    pub offset: usize,
}

/// A model input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    /// Keras's name.
    pub name: String,
    /// Shape, batch first.
    pub shape: Shape,
    /// Its buffer.
    pub buffer: BufferId,
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
    pub buffers: Vec<Buffer>,
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
    /// Values that keep their contents between calls (recurrent state when
    /// streaming); a zeroed arena is the initial state.
    pub state: Vec<BufferId>,
    /// Keras layer outputs that can be read between steps.
    pub taps: Vec<Tap>,
}

/// Floats between buffer offsets: 32 bytes, one AVX2 vector.
pub const ALIGN_FLOATS: usize = 8;

/// Alignment of large buffers' offsets: 64 bytes, a cache line and one AVX-512 vector.
pub const WIDE_ALIGN_FLOATS: usize = 16;

impl Plan {
    /// Lowers, optimizes and lays out a graph.
    pub fn new(graph: &Graph) -> Result<Plan> {
        let mut plan = lower::lower(graph).map_err(|e| e.in_file(&graph.source))?;
        fuse::fold_batch_norm(&mut plan);
        fuse::fuse_activations(&mut plan);
        pad::fold_zero_padding(&mut plan);
        pad::pad_convolutions(&mut plan);
        pack::pack(&mut plan);
        arena::place(&mut plan);
        Ok(plan)
    }

    /// Total FLOPs per call.
    pub fn flops(&self) -> u64 {
        self.steps.iter().map(|s| s.flops).sum()
    }

    /// Bytes of the weight blob every backend embeds: [`Plan::weight_blob`]'s length.
    pub fn weight_bytes(&self) -> usize {
        pack::blob_floats(self) * 4
    }

    /// This plan as the runtime kernels run it fastest, for generated Rust and the plan
    /// executor: convolutions read their weights in panels where they can (see
    /// [`kerac::conv::Conv::panels`]). The C and native-code backends refuse it.
    pub fn with_runtime_panels(&self) -> Plan {
        pack::runtime_panels(self)
    }

    /// Whether some step reads its weights in the runtime kernels' panels
    /// ([`Plan::with_runtime_panels`]).
    pub fn has_runtime_panels(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(&s.kernel, Kernel::Conv { p, .. } if p.panels))
    }

    /// The weights as every backend embeds them: each array at its offset, little-endian
    /// float32, padding zeroed.
    pub fn weight_blob(&self) -> Vec<u8> {
        let mut floats = vec![0f32; pack::blob_floats(self)];
        for w in &self.weights {
            floats[w.offset..w.offset + w.data.len()].copy_from_slice(&w.data);
        }
        floats.iter().flat_map(|f| f.to_le_bytes()).collect()
    }
}
