//! Run Keras models compiled ahead of time by kerac.
//!
//! ```ignore
//! kerac::model!(pub Controller = "models/controller.keras");
//!
//! let mut net = Controller::new();        // owns its fixed-size arena
//! let y: [f32; 8] = net.predict(&x);      // x: &[f32; 32]; shapes are types
//! ```
//!
//! `no_std`, no allocation: generated code and the kernels it calls allocate nothing,
//! never panic, and run the same instructions for every input.
#![no_std]

pub use kerac_kernels::*;

#[cfg(feature = "cuda")]
pub mod cuda;

/// Compiles a Keras model file into a Rust type at build time.
///
/// `kerac::model!(pub Net = "models/net.keras");` — the path is relative to the crate's
/// `Cargo.toml`. Options follow, comma-separated: `batch = 4`, `weights = "net.weights.h5"`
/// (for a config JSON), `input_shape(name) = [30, 3]` (for dimensions the file leaves
/// open), `isa = "avx2"` (the widest kernels `new()` may pick), `stream = true` (one
/// time step a call), `cuda` (also `Net::new_cuda`, with the `cuda` feature), `inline =
/// false` (kernels out of line: a faster build, slower code). Errors
/// are compile errors at the call.
#[cfg(feature = "macros")]
pub use kerac_macros::model;
