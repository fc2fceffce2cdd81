//! Config values from a file are checked before any count is derived from them: errors
//! name the layer and the key in Keras's terms, and no value can overflow a count.

use kerac_compiler::BuildOptions;
use serde_json::{json, Value};

/// A Keras 3 Sequential model: an input of `shape` and one layer.
fn sequential(shape: Value, class: &str, config: Value) -> Value {
    let mut config = config;
    config["name"] = json!("under_test");
    config["trainable"] = json!(true);
    json!({
        "class_name": "Sequential",
        "config": {
            "name": "m",
            "layers": [
                {"module": "keras.layers", "class_name": "InputLayer",
                 "config": {"batch_shape": shape, "dtype": "float32", "name": "x"}},
                {"module": "keras.layers", "class_name": class, "config": config}
            ]
        }
    })
}

fn error(tag: &str, model: &Value) -> String {
    let dir = std::env::temp_dir().join(format!("kerac-config-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.json"));
    std::fs::write(&path, model.to_string()).unwrap();
    match kerac_compiler::load(&path, None, &BuildOptions::default()) {
        Ok(_) => panic!("{tag}: loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn huge_same_pooling_windows_are_refused_not_wrapped() {
    for (class, shape, size) in [
        ("MaxPooling1D", json!([null, 8, 3]), json!(u64::MAX)),
        ("AveragePooling1D", json!([null, 8, 3]), json!(i64::MAX)),
        (
            "AveragePooling3D",
            json!([null, 4, 4, 4, 2]),
            json!([u64::MAX, 1, 1]),
        ),
        (
            "MaxPooling2D",
            json!([null, 4, 4, 2]),
            json!([1 << 30, 1 << 30]),
        ),
    ] {
        let model = sequential(shape, class, json!({"pool_size": size, "padding": "same"}));
        let e = error(class, &model);
        assert!(
            e.contains("layer `under_test`") && e.contains("pool_size"),
            "{class}: {e}"
        );
    }
}

#[test]
fn config_errors_name_the_key_in_keras_terms() {
    let e = error(
        "units",
        &sequential(json!([null, 4]), "Dense", json!({"units": 10.5})),
    );
    assert!(
        e.contains("layer `under_test` (Dense)")
            && e.contains("`units`: must be a non-negative integer, found floating point `10.5`"),
        "{e}"
    );
    let e = error(
        "kernel_size",
        &sequential(
            json!([null, 8, 8, 1]),
            "Conv2D",
            json!({"filters": 2, "kernel_size": 10.5}),
        ),
    );
    assert!(
        e.contains("`kernel_size`: must be a non-negative integer or a list of them, found 10.5"),
        "{e}"
    );
}

#[test]
fn softmax_axes_named_twice_are_refused() {
    let e = error(
        "softmax_twice",
        &sequential(json!([null, 3, 4]), "Softmax", json!({"axis": [2, -1]})),
    );
    assert!(
        e.contains("layer `under_test`") && e.contains("names axis 2 twice"),
        "{e}"
    );
    let both = sequential(json!([null, 3, 4]), "Softmax", json!({"axis": [1, -1]}));
    let path = std::env::temp_dir().join(format!("kerac-softmax-{}.json", std::process::id()));
    std::fs::write(&path, both.to_string()).unwrap();
    assert!(kerac_compiler::load(&path, None, &BuildOptions::default()).is_ok());
}

#[test]
fn group_normalization_of_a_batch_axis_alone_is_refused() {
    // A rank-1 tensor (a full reduction's output) has no channels to group.
    let e = error(
        "group_norm_rank1",
        &sequential(json!([null]), "GroupNormalization", json!({"groups": 1})),
    );
    assert!(
        e.contains("layer `under_test`") && e.contains("no axis after the batch"),
        "{e}"
    );
}
