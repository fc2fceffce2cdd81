//! Runtime for models compiled by kerac.
//!
//! Generated code depends on this crate only; it is `no_std` and allocates nothing.
#![no_std]

/// Errors a compiled model reports through its generic entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The caller passed a different number of input or output buffers than the model has.
    BufferCount,
    /// A buffer's length differs from the number of floats the model expects there.
    BufferLength,
}
