//! Every committed fixture file (`tests/fixtures`) compiled by `kerac::model!`, as a
//! user crate would, with the table the conformance tests walk.

/// Label, reference file (relative to `tests/`) and constructor of a fixture file
/// compiled by `model!`.
pub type Compiled = (
    &'static str,
    &'static str,
    fn(kerac::Level) -> Box<dyn kerac::Model>,
);

include!(concat!(env!("OUT_DIR"), "/compiled_fixtures.rs"));
