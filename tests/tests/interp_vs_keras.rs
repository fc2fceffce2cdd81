//! Every fixture, in every file dialect, through the reference interpreter, compared
//! with the outputs real Keras recorded.

use kerac_compiler::io::{self, IoFile};
use kerac_compiler::{interp, layers, BuildOptions};
use kerac_conformance::fixtures;
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn interpreter_matches_keras_on_every_fixture_and_dialect() {
    assert!(
        fixtures().len() >= 50,
        "expected the committed fixtures, found {}",
        fixtures().len()
    );
    let failures = kerac_conformance::mismatches(interp::run);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn batched_run_matches_keras() {
    // The recorded samples run as one batch give the same values as one at a time.
    for f in fixtures().iter().filter(|f| f.file == "k3.keras") {
        let reference = IoFile::read(&f.reference).unwrap();
        let samples = reference.inputs[0].shape[0];
        let options = BuildOptions {
            batch: samples,
            input_shapes: io::input_shapes(&reference.inputs),
            ..Default::default()
        };
        let graph = kerac_compiler::load(&f.model, None, &options).unwrap();
        let outputs =
            io::run_samples(&graph, &reference.inputs, |x| interp::run(&graph, x)).unwrap();
        for c in io::compare(&outputs, &reference).unwrap() {
            assert_eq!(
                c.mismatches,
                0,
                "{}: output {} at batch {samples}",
                f.label(),
                c.name
            );
        }
    }
}

/// Layer classes that Keras 2 (tf-keras) does not have, or Keras 3 dropped.
// Keras 3 writes the masks of `mask_zero` and Masking as NotEqual and Any operations;
// Keras 2 leaves them implicit.
const KERAS3_ONLY: &[&str] = &["NotEqual", "Any"];
const KERAS2_ONLY: &[&str] = &["ThresholdedReLU"];

#[test]
fn every_supported_layer_has_a_fixture_in_every_dialect_that_has_it() {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in fixtures() {
        let reference = IoFile::read(&f.reference).unwrap();
        let options = BuildOptions {
            input_shapes: io::input_shapes(&reference.inputs),
            ..Default::default()
        };
        let graph = kerac_compiler::load(&f.model, None, &options).unwrap();
        for node in &graph.nodes {
            seen.entry(f.file.clone())
                .or_default()
                .insert(node.class.clone());
        }
    }
    let mut missing = Vec::new();
    for class in layers::supported() {
        for file in ["k3.keras", "k3.h5", "k2.h5"] {
            let exempt = (file.starts_with("k2") && KERAS3_ONLY.contains(&class))
                || (file.starts_with("k3") && KERAS2_ONLY.contains(&class));
            if !exempt && !seen.get(file).is_some_and(|s| s.contains(class)) {
                missing.push(format!("{class} in {file}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "supported layers without a Keras fixture: {}",
        missing.join(", ")
    );
}

#[test]
fn open_dimensions_need_a_shape_and_say_how_to_give_it() {
    for f in fixtures().iter().filter(|f| f.name == "open_length") {
        let err = kerac_compiler::load(&f.model, None, &BuildOptions::default()).unwrap_err();
        assert!(
            err.file.is_some() && err.layer.is_some(),
            "{}: {err}",
            f.label()
        );
        assert!(
            err.message.contains("--input-shape series=N,3"),
            "{}: {err}",
            f.label()
        );
        let mut options = BuildOptions::default();
        options.input_shapes.insert("series".into(), vec![4, 5]);
        let err = kerac_compiler::load(&f.model, None, &options).unwrap_err();
        assert!(err.message.contains("does not fit"), "{}: {err}", f.label());
        options.input_shapes.insert("series".into(), vec![30, 3]);
        let graph = kerac_compiler::load(&f.model, None, &options).unwrap();
        assert_eq!(graph.shape(graph.inputs[0].tensor), &vec![1, 30, 3]);
    }
}
