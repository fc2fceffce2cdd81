//! `kerac inspect` against Keras's own parameter counts (`model.count_params()` and
//! each layer's), recorded by make_fixtures.py in `<dialect>.summary.json`.

use kerac_compiler::report::Report;
use kerac_compiler::BuildOptions;
use kerac_conformance::fixtures;
use serde_json::Value;

#[test]
fn parameter_counts_match_keras_per_layer_and_in_total() {
    let mut failures = Vec::new();
    for f in fixtures() {
        let summary_path = f
            .reference
            .with_file_name(format!("{}.summary.json", &f.file[..2]));
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
        let reference = kerac_compiler::io::IoFile::read(&f.reference).unwrap();
        let options = BuildOptions {
            input_shapes: kerac_compiler::io::input_shapes(&reference.inputs),
            ..Default::default()
        };
        let graph = kerac_compiler::load(&f.model, None, &options).unwrap();
        let report = Report::new(&graph);
        if report.params as u64 != summary["params"].as_u64().unwrap() {
            failures.push(format!(
                "{}: {} params, Keras {}",
                f.label(),
                report.params,
                summary["params"]
            ));
        }
        // Keras 2 names some top-level layers with slashes (MobileNetV3's
        // `Conv/BatchNorm` beside `Conv`): those count for themselves, not as nested.
        let top: std::collections::HashSet<&str> = summary["layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["name"].as_str())
            .collect();
        for layer in summary["layers"].as_array().unwrap() {
            let name = layer["name"].as_str().unwrap();
            let nested = format!("{name}/");
            let ours: usize = report
                .layers
                .iter()
                .filter(|l| {
                    l.name == name
                        || (l.name.starts_with(&nested) && !top.contains(l.name.as_str()))
                })
                .map(|l| l.params)
                .sum();
            if ours as u64 != layer["params"].as_u64().unwrap() {
                failures.push(format!(
                    "{}: layer {name}: {ours} params, Keras {}",
                    f.label(),
                    layer["params"]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn inspect_json_has_the_totals() {
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "resnet_cnn" && f.file == "k3.keras")
        .unwrap();
    let graph = kerac_compiler::load(&f.model, None, &BuildOptions::default()).unwrap();
    let json: Value = serde_json::to_value(Report::new(&graph)).unwrap();
    assert_eq!(
        json["weight_bytes"].as_u64().unwrap(),
        4 * json["params"].as_u64().unwrap()
    );
    assert!(json["flops"].as_u64().unwrap() > 20_000_000);
    assert_eq!(json["inputs"][0][1], serde_json::json!([1, 32, 32, 3]));
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(f.reference.with_file_name("k3.summary.json")).unwrap(),
    )
    .unwrap();
    let keras = summary["params"].as_u64().unwrap().to_string();
    let grouped: String = keras
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            ((i > 0 && (keras.len() - i).is_multiple_of(3)).then_some(','))
                .into_iter()
                .chain([c])
        })
        .collect();
    let text = Report::new(&graph).to_text();
    assert!(
        text.contains(&format!("Total params: {grouped} ")),
        "{text}"
    );
}
