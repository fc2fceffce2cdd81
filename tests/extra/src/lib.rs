//! The keras.applications models too large to commit, compiled by `model!` when
//! `KERAC_EXTRA_FIXTURES` names their folder (`tests/applications.sh` does). Apart from
//! the conformance crate, so that setting the variable rebuilds only this crate.

include!(concat!(env!("OUT_DIR"), "/compiled_extra.rs"));
