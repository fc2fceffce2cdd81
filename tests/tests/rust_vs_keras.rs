//! Every fixture, in every file dialect, compiled by the `model!` macro and run through
//! the generic `kerac::Model` entry point with each instruction set this CPU has,
//! compared with the outputs real Keras recorded.

use kerac_conformance_compiled as compiled;

use kerac_compiler::io::IoFile;
use std::path::Path;

/// The committed fixtures; `tests/extra` runs the keras.applications ones the same way.
#[test]
fn model_macro_matches_keras_on_every_fixture_and_dialect() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let all = compiled::compiled();
    assert!(
        all.len() >= 50,
        "expected every fixture file, found {}",
        all.len()
    );
    let failures = kerac_conformance::check_compiled(root, &all);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn generic_entry_point_rejects_wrong_buffers() {
    let (_, _, make) = compiled::compiled()
        .into_iter()
        .find(|(l, _, _)| *l == "mlp/k3.keras")
        .unwrap();
    let mut model = make(kerac::Level::Avx512);
    let x = [0f32; 12];
    let mut y = [0f32; 10];
    assert_eq!(
        model.run(&[&x, &x], &mut [&mut y]),
        Err(kerac::Error::BufferCount)
    );
    assert_eq!(
        model.run(&[&x[..11]], &mut [&mut y]),
        Err(kerac::Error::BufferLength)
    );
    assert_eq!(
        model.run(&[&x], &mut [&mut y[..9]]),
        Err(kerac::Error::BufferLength)
    );
    assert_eq!(model.run(&[&x], &mut [&mut y]), Ok(()));
}

#[test]
fn predict_takes_and_returns_arrays_shaped_like_the_model() {
    use compiled::m_functional_graph_k3_keras::Model as Graph;
    let mut net = Graph::new();
    let (a, b) = ([0.5f32; 10], [-0.25f32; 10]);
    let (class, value): ([f32; 3], [f32; 1]) = net.predict(&a, &b);
    assert!(
        (class.iter().sum::<f32>() - 1.0).abs() < 1e-5,
        "softmax head sums to 1: {class:?}"
    );
    assert!(value[0].is_finite());
    assert_eq!(Graph::INPUT_SHAPES, [&[1usize, 10][..], &[1, 10][..]]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/functional_graph/k3.keras");
    let plan = kerac_compiler::plan::Plan::new(
        &kerac_compiler::load(&path, None, &Default::default()).unwrap(),
    )
    .unwrap();
    assert_eq!(Graph::FLOPS, plan.flops());
    assert_eq!(Graph::ARENA_BYTES, plan.arena_floats * 4);
    assert_eq!(Graph::WEIGHT_BYTES, plan.weight_blob().len());
    use compiled::m_conv2d_k3_keras::Model as Conv;
    let mut conv = Conv::new();
    let image = [[[0.1f32; 4]; 8]; 9];
    let outputs = conv.predict(&image);
    let first: &[[[f32; 6]; 6]; 7] = &outputs.0;
    assert!(
        first.iter().flatten().flatten().all(|v| *v >= 0.0),
        "relu output"
    );
}

/// One weight size per model: the Rust type's `WEIGHT_BYTES`, the C header's
/// `<PREFIX>_WEIGHT_BYTES`, the object's weight data and the plan agree on every fixture,
/// as all embed the plan's one weight layout.
#[test]
fn every_backend_reports_the_same_weight_bytes() {
    use kerac_compiler::emit::clif::{self, Target};
    use kerac_compiler::emit::header::{header, HeaderInfo};
    let sizes: std::collections::HashMap<_, _> = compiled::weight_bytes().into_iter().collect();
    let mut checked = 0;
    for f in kerac_conformance::fixtures() {
        let Some(&rust) = sizes.get(f.label().as_str()) else {
            continue;
        };
        let reference = IoFile::read(&f.reference).unwrap();
        let graph = kerac_conformance::load(&f, &reference).unwrap();
        let plan = kerac_compiler::plan::Plan::new(&graph).unwrap();
        let info = HeaderInfo {
            prefix: "net",
            source: "model",
            target: "x86_64",
            params: graph.params(),
        };
        let text = header(&plan, &info);
        let in_header: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("#define NET_WEIGHT_BYTES "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no NET_WEIGHT_BYTES in the header", f.label()));
        let object = clif::object(&plan, Target::X86_64, "net").unwrap();
        let in_object = clif::data_sizes(&object)
            .unwrap()
            .into_iter()
            .find(|(name, _)| name == "net_weights")
            .map_or(0, |(_, size)| size as usize);
        let label = f.label();
        assert_eq!(rust, plan.weight_bytes(), "{label}: Rust type vs plan");
        assert_eq!(in_header, rust, "{label}: header vs Rust type");
        assert_eq!(in_object, rust, "{label}: object vs Rust type");
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} fixtures checked");
}
