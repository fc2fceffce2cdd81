//! Runtime for models compiled by kerac.
//!
//! Generated code calls these kernels with constant parameters; it is `no_std`,
//! allocates nothing and never panics. Every kernel checks its buffer lengths once on
//! entry (a branch that depends only on constants) and then runs loops whose trip
//! counts come from its parameters alone, so the instruction path does not depend on
//! the data.
#![no_std]
#![deny(missing_docs)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod act;
pub mod arena;
pub mod attention;
pub mod conv;
pub mod dense;
pub mod fp;
pub mod isa;
pub mod lanes;
pub mod merge;
pub mod norm;
pub mod pool;
pub mod recurrent;
pub mod shape;
mod simd;
pub mod weights;
pub mod window;

pub use act::Act;
pub use arena::Arena;
pub use isa::{Dispatch, Isa, Level, WithIsa};
pub use weights::{Flat, Weights};
pub use window::Window;

/// Errors a compiled model reports through its generic entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The caller passed a different number of input or output buffers than the model has.
    BufferCount,
    /// A buffer's length differs from the number of floats the model expects there.
    BufferLength,
}

/// What every compiled model implements: flat row-major buffers in Keras's input and
/// output order, for the batch size it was compiled with. Generic code (a server, a test
/// harness, a benchmark) drives any compiled model through it.
pub trait Model {
    /// A model with a zeroed arena, running the widest kernels the CPU has.
    fn new() -> Self
    where
        Self: Sized;
    /// As [`Model::new`], with kernels no wider than `max`.
    fn with_isa(max: Level) -> Self
    where
        Self: Sized;
    /// The instruction set the model's kernels run with.
    fn isa(&self) -> Level;
    /// Runs the model; a wrong number or length of buffers is an error, never a panic.
    fn run(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), Error>;
    /// Forgets the recurrent state of a streaming model (nothing to do for others).
    fn reset_state(&mut self) {}
}
