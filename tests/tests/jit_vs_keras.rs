//! Every fixture through the Cranelift JIT, against the outputs Keras recorded: with
//! the assembled kernels of the host's widest vectors, and on an AVX-512 machine with
//! the AVX2 ones too (the committed fixtures). Cranelift's code alone is what the
//! `x86_64` objects run, checked in `object_vs_keras`.

use kerac_compiler::emit::clif::{Jit, Wide};
use kerac_compiler::plan::Plan;
use kerac_conformance::{committed_fixtures, fixtures, mismatches, mismatches_in};

#[test]
fn every_fixture_matches_keras_through_the_jit() {
    assert!(fixtures().len() >= 66);
    let failures = mismatches(|graph, x| Jit::new(&Plan::new(graph)?)?.run_arrays(x));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_matches_keras_through_each_width_the_host_runs() {
    let widths: &[Option<Wide>] = match Wide::host() {
        Some(Wide::Avx512) => &[Some(Wide::Avx2)],
        // The default build above is all there is.
        _ => &[],
    };
    for &wide in widths {
        let failures = mismatches_in(committed_fixtures(), |graph, x| {
            Jit::with(&Plan::new(graph)?, wide, false)?.run_arrays(x)
        });
        assert!(failures.is_empty(), "{wide:?}:\n{}", failures.join("\n"));
        eprintln!("{wide:?}: every fixture matches Keras");
    }
}
