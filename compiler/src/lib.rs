//! kerac-compiler: reads Keras model files into a validated graph with static shapes,
//! runs it with a reference interpreter, and reports on it.
//!
//! ```no_run
//! let graph = kerac_compiler::load("model.keras".as_ref(), None, &Default::default())?;
//! println!("{}", kerac_compiler::report::Report::new(&graph).to_text());
//! # Ok::<(), kerac_compiler::Error>(())
//! ```

pub mod bench;
pub mod diagnose;
pub mod emit;
pub mod error;
pub mod graph;
pub mod interp;
pub mod io;
pub mod keras;
pub mod layers;
pub mod ops;
pub mod plan;

/// The runtime kernels' instruction sets: what the plan backend runs with, and the widest
/// generated code may choose.
pub use kerac::isa::{Dispatch, Level};
pub mod report;
#[cfg(feature = "clif")]
pub mod wcet;

pub use error::{Error, Result};
pub use graph::{BuildOptions, Graph};

use std::path::Path;

/// Reads a model file (and, for a config JSON, its weights) and builds its graph.
pub fn load(path: &Path, weights: Option<&Path>, options: &BuildOptions) -> Result<Graph> {
    let file = keras::open(path, weights)?;
    graph::build(&file, options)
}
