//! Layer-by-layer diagnosis (`kerac check` with layer outputs, and `--against interp`):
//! it must agree with Keras layer by layer where the model matches, and name exactly
//! the layer that was changed where it does not.

use kerac_compiler::diagnose::{self, Report, Source};
use kerac_compiler::emit::clif::Jit;
use kerac_compiler::io::IoFile;
use kerac_compiler::plan::{Kernel, Plan};
use kerac_compiler::{BuildOptions, Graph};
use kerac_conformance::fixtures_dir;
use std::path::Path;

fn load(model: &Path, reference: &IoFile) -> Graph {
    let options = BuildOptions {
        input_shapes: kerac_compiler::io::input_shapes(&reference.inputs),
        ..Default::default()
    };
    kerac_compiler::load(model, None, &options)
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()))
}

/// The report of every backend against the recorded layer outputs.
fn reports(model: &Path, reference: &IoFile) -> Vec<Report> {
    let graph = load(model, reference);
    let plan = Plan::new(&graph).unwrap();
    let mut jit = Jit::new(&plan).unwrap();
    let sources = [
        ("interp", Source::Interp),
        ("plan", Source::Plan(&plan)),
        ("jit", Source::Jit(&plan, &mut jit)),
    ];
    sources
        .into_iter()
        .map(|(name, source)| {
            diagnose::against_reference(&graph, source, reference, None, name)
                .unwrap_or_else(|e| panic!("{} ({name}): {e}", model.display()))
        })
        .collect()
}

/// Nested models, a shared layer called twice, a layer with three outputs and Keras 3
/// operations, recorded by `kerac_record --layers` in both dialects: every backend
/// matches every layer it exposes, and the interpreter finds every recorded layer
/// under the name and call kerac gives it.
#[test]
fn every_backend_matches_the_recorded_layer_outputs() {
    let mut checked = 0;
    for dir in kerac_conformance::fixture_dirs(&fixtures_dir()) {
        for (tag, file) in [("k3", "k3.keras"), ("k2", "k2.h5")] {
            let layers = dir.join(format!("{tag}.layers.io.json"));
            if !layers.exists() {
                continue;
            }
            let reference = IoFile::read(&layers).unwrap();
            let model = dir.join(file);
            for report in reports(&model, &reference) {
                assert!(
                    report.first_divergence().is_none(),
                    "{}:\n{report}",
                    model.display()
                );
                assert!(!report.rows.is_empty(), "{}", model.display());
                if report.title.starts_with("interp") {
                    assert_eq!(
                        report.rows.len(),
                        reference.layers.len(),
                        "{}: recorded layers the interpreter does not name alike:\n{report}",
                        model.display()
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} layer recordings found");
}

/// `mnist_cnn/k3.altered.layers.io.json` was recorded after `conv2d_1`'s kernel was
/// scaled by 1.01: every backend names exactly that layer first.
#[test]
fn the_altered_layer_is_named_first() {
    let dir = fixtures_dir().join("mnist_cnn");
    let reference = IoFile::read(&dir.join("k3.altered.layers.io.json")).unwrap();
    for report in reports(&dir.join("k3.keras"), &reference) {
        let first = report.first_divergence().map(|r| r.layer.as_str());
        assert_eq!(first, Some("conv2d_1"), "\n{report}");
        let row = report.first_divergence().unwrap();
        assert_eq!(row.class, "Conv2D");
        assert!(row.settings.contains("kernel_size"), "{}", row.settings);
        // A 1% change shows as a real difference against the layer's scale, far above
        // rounding.
        assert!(row.comparison.max_abs / row.scale > 1e-3, "\n{report}");
        // The layers before it match: the recording and kerac agree up to there.
        assert!(report.rows[0].comparison.mismatches == 0, "\n{report}");
    }
}

/// A plan with one step's bias changed (a stand-in for a kernel bug): `--against
/// interp` names that step's layer, through the plan and through the JIT, and a
/// correct plan shows no divergence.
#[test]
fn a_broken_step_is_found_against_the_interpreter() {
    let dir = fixtures_dir().join("kws_cnn");
    let model = dir.join("k3.keras");
    let reference = IoFile::read(&dir.join("k3.io.json")).unwrap();
    let graph = load(&model, &reference);
    let inputs = diagnose::seeded_inputs(&graph, 2, 7).unwrap();
    let tolerance = (1e-5, 1e-4);

    let plan = Plan::new(&graph).unwrap();
    let clean = diagnose::against_interp(&graph, Source::Plan(&plan), &inputs, tolerance, "plan");
    let clean = clean.unwrap();
    assert!(clean.first_divergence().is_none(), "\n{clean}");

    // Break the first step after the first one that has a bias and a layer output.
    let mut broken = plan.clone();
    let (k, bias) = broken
        .steps
        .iter()
        .enumerate()
        .skip(1)
        .find_map(|(k, s)| match &s.kernel {
            Kernel::Conv { b: Some(b), .. } | Kernel::Dense { b: Some(b), .. }
                if !s.taps.is_empty() =>
            {
                Some((k, *b))
            }
            _ => None,
        })
        .expect("a step with a bias");
    for v in &mut broken.weights[bias].data {
        *v += 0.25;
    }
    let expected = &broken.taps[broken.steps[k].taps[0]].layer;
    let mut jit = Jit::new(&broken).unwrap();
    for (name, source) in [
        ("plan", Source::Plan(&broken)),
        ("jit", Source::Jit(&broken, &mut jit)),
    ] {
        let report = diagnose::against_interp(&graph, source, &inputs, tolerance, name).unwrap();
        let first = report.first_divergence().map(|r| &r.layer);
        assert_eq!(first, Some(expected), "{name}:\n{report}");
    }
}
