//! Every fixture, in every file dialect, lowered to a plan (BatchNorm folded,
//! activations fused, arena planned) and run on the runtime's kernels, compared with
//! the outputs real Keras recorded.

use kerac_compiler::io::{self, IoFile};
use kerac_compiler::plan::{self, Plan};
use kerac_compiler::BuildOptions;
use kerac_conformance::fixtures;

#[test]
fn plan_on_runtime_kernels_matches_keras_on_every_fixture_and_dialect() {
    // As generated Rust runs it: convolution weights in the runtime's panels.
    let failures = kerac_conformance::mismatches(|graph, x| {
        plan::exec::run(&Plan::new(graph)?.with_runtime_panels(), x)
    });
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn arena_is_within_ten_percent_of_the_liveness_lower_bound() {
    let mut report = Vec::new();
    for f in fixtures()
        .iter()
        .filter(|f| f.file != "k3.json" && f.file != "k2.json")
    {
        let reference = IoFile::read(&f.reference).unwrap();
        let options = BuildOptions {
            input_shapes: io::input_shapes(&reference.inputs),
            ..Default::default()
        };
        let graph = kerac_compiler::load(&f.model, None, &options).unwrap();
        let plan = Plan::new(&graph).unwrap();
        assert!(
            plan.arena_floats >= plan.lower_bound_floats,
            "{}",
            f.label()
        );
        if plan.arena_floats * 10 > plan.lower_bound_floats * 11 {
            report.push(format!(
                "{}: arena {} floats, lower bound {}",
                f.label(),
                plan.arena_floats,
                plan.lower_bound_floats
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn batch_norm_folds_and_activations_fuse() {
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "resnet_cnn" && f.file == "k3.keras")
        .unwrap();
    let graph = kerac_compiler::load(&f.model, None, &BuildOptions::default()).unwrap();
    let plan = Plan::new(&graph).unwrap();
    let names: Vec<&str> = plan.steps.iter().map(|s| s.kernel.name()).collect();
    assert!(
        !names.contains(&"scale_shift"),
        "every BatchNormalization follows a Conv: {names:?}"
    );
    assert!(
        plan.steps[0].layers.contains("batch_normalization")
            && plan.steps[0].layers.contains("re_lu"),
        "{}",
        plan.steps[0].layers
    );
    // An activation stays a step of its own only after a kernel that cannot absorb it.
    for step in plan
        .steps
        .iter()
        .filter(|s| s.kernel.name() == "activation")
    {
        let producer = plan
            .steps
            .iter()
            .find(|p| p.output == step.inputs[0])
            .unwrap();
        assert!(
            !["dense", "conv", "conv_transpose"].contains(&producer.kernel.name()),
            "{} not fused into {}",
            step.layers,
            producer.layers
        );
    }
}

#[test]
fn plan_counts_the_same_flops_as_the_graph() {
    for f in fixtures() {
        let reference = IoFile::read(&f.reference).unwrap();
        let graph = kerac_conformance::load(&f, &reference).unwrap();
        let plan = Plan::new(&graph).unwrap();
        assert_eq!(plan.flops(), graph.flops(), "{}", f.label());
    }
}

#[test]
fn zero_padding_before_a_depthwise_convolution_becomes_its_padding() {
    // MobileNetV2 pads explicitly before each of its four strided depthwise
    // convolutions; the plan holds no copy for them, and plan_on_runtime_kernels_...
    // above checks the result against Keras.
    let model = kerac_conformance::fixtures_dir().join("app_mobilenetv2/k3.keras");
    let graph = kerac_compiler::load(&model, None, &BuildOptions::default()).unwrap();
    let plan = Plan::new(&graph).unwrap();
    let folded: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| s.layers.contains("_pad + ") && s.layers.contains("depthwise"))
        .map(|s| s.layers.as_str())
        .collect();
    assert_eq!(folded.len(), 4, "{folded:#?}");
    for step in &plan.steps {
        let copy = matches!(step.kernel, plan::Kernel::Resample(_));
        assert!(!(copy && step.layers.ends_with("_pad")), "{}", step.layers);
    }
}
