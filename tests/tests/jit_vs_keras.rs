//! Every fixture through the Cranelift JIT, against the outputs Keras recorded.

use kerac_compiler::emit::clif::Jit;
use kerac_compiler::plan::Plan;
use kerac_conformance::{fixtures, mismatches};

#[test]
fn every_fixture_matches_keras_through_the_jit() {
    assert!(fixtures().len() >= 66);
    let failures = mismatches(|graph, x| Jit::new(&Plan::new(graph)?)?.run_arrays(x));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
