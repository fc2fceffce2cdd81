//! Operation nodes (Keras 3 `keras.src.ops.*`, Keras 2 `TFOpLambda`) are never read as
//! the layers of the same class name: each is computed as the operation, or refused by
//! name. The fixtures `ops_arith` and `ops_shapes` check the values against Keras.

use kerac_compiler::{layers, ops, BuildOptions, Error, Graph};
use serde_json::{json, Value};
use std::path::PathBuf;

fn keras_tensor(layer: &str) -> Value {
    json!({"class_name": "__keras_tensor__",
           "config": {"shape": [null, 4, 6], "dtype": "float32", "keras_history": [layer, 0, 0]}})
}

/// A Keras 3 functional config: an input `x` of shape (4, 6) and one more node.
fn keras3_model(node: Value) -> Value {
    let name = node["name"].clone();
    json!({
        "class_name": "Functional",
        "config": {
            "name": "m",
            "layers": [
                {"module": "keras.layers", "class_name": "InputLayer", "name": "x",
                 "config": {"batch_shape": [null, 4, 6], "dtype": "float32", "name": "x"},
                 "inbound_nodes": []},
                node
            ],
            "input_layers": [["x", 0, 0]],
            "output_layers": [[name, 0, 0]]
        }
    })
}

/// A Keras 2 functional config: an input `x` and one TFOpLambda node.
fn keras2_model(function: &str, node: Value) -> Value {
    let name = format!("tf.{function}");
    json!({
        "class_name": "Functional",
        "keras_version": "2.21.0",
        "config": {
            "name": "m",
            "layers": [
                {"class_name": "InputLayer", "name": "x",
                 "config": {"batch_input_shape": [null, 4, 6], "dtype": "float32", "name": "x"},
                 "inbound_nodes": []},
                {"class_name": "TFOpLambda", "name": name,
                 "config": {"name": name, "trainable": true, "dtype": "float32", "function": function},
                 "inbound_nodes": [node]}
            ],
            "input_layers": [["x", 0, 0]],
            "output_layers": [[name, 0, 0]]
        }
    })
}

fn load(tag: &str, config: &Value) -> Result<Graph, Error> {
    let dir = std::env::temp_dir().join(format!("kerac-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join(format!("{tag}.json"));
    std::fs::write(&path, config.to_string()).unwrap();
    kerac_compiler::load(&path, None, &BuildOptions::default())
}

#[test]
fn no_layer_class_saved_as_an_operation_is_read_as_the_layer() {
    for class in layers::supported() {
        let node = json!({
            "module": "keras.src.ops.numpy", "class_name": class, "name": "op",
            "config": {"name": "op"}, "registered_name": class,
            "inbound_nodes": [{"args": [keras_tensor("x"), 2.0], "kwargs": {}}]
        });
        match load(&format!("as-op-{class}"), &keras3_model(node)) {
            Ok(graph) => {
                let node = graph.nodes.last().unwrap();
                assert_eq!(
                    node.class,
                    format!("keras.src.ops.numpy.{class}"),
                    "{class} was built as a layer"
                );
                assert!(
                    ops::canonical(&node.class).is_some(),
                    "{class}: not an operation kerac knows"
                );
            }
            Err(e) => assert!(
                e.to_string().contains("keras.src.ops.numpy."),
                "{class}: the error does not name the operation: {e}"
            ),
        }
    }
}

#[test]
fn an_operation_with_a_constant_keeps_it() {
    // `x + 3.0` is the Add operation with a constant, which the Add layer would drop.
    let node = json!({
        "module": "keras.src.ops.numpy", "class_name": "Add", "name": "add",
        "config": {"name": "add"},
        "inbound_nodes": [{"args": [keras_tensor("x"), 3.0], "kwargs": {}}]
    });
    let graph = load("add-constant", &keras3_model(node)).unwrap();
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 4, 6]));
    let y = kerac_compiler::interp::run(&graph, &[x]).unwrap();
    assert!(y[0].iter().all(|&v| v == 3.0), "{:?}", y[0]);
}

#[test]
fn unknown_operations_are_refused_by_name() {
    let node = json!({
        "module": "keras.src.ops.numpy", "class_name": "Cumsum", "name": "cumsum_1",
        "config": {"name": "cumsum_1", "axis": 1},
        "inbound_nodes": [{"args": [keras_tensor("x")], "kwargs": {}}]
    });
    let e = load("cumsum", &keras3_model(node)).unwrap_err().to_string();
    assert!(
        e.contains("operation `keras.src.ops.numpy.Cumsum` (node cumsum_1)"),
        "{e}"
    );
    let k2 = keras2_model("math.cumsum", json!(["x", 0, 0, {"axis": 1}]));
    let e = load("cumsum-k2", &k2).unwrap_err().to_string();
    assert!(
        e.contains("operation `tf.math.cumsum` (node tf.math.cumsum)"),
        "{e}"
    );
}

#[test]
fn keras2_constants_stand_first_or_as_keywords() {
    // `1.0 - x` in tf.keras: the constant is the first argument, the tensor `y`.
    let k2 = keras2_model(
        "math.subtract",
        json!(["_CONSTANT_VALUE", -1, 1.0, {"y": ["x", 0, 0], "name": null}]),
    );
    let graph = load("rsub-k2", &k2).unwrap();
    let x = ndarray::ArrayD::<f32>::from_elem(ndarray::IxDyn(&[1, 4, 6]), 0.25);
    let y = kerac_compiler::interp::run(&graph, &[x]).unwrap();
    assert!(y[0].iter().all(|&v| v == 0.75), "{:?}", y[0]);
}

#[test]
fn operations_name_what_they_refuse() {
    let cases = [
        (
            "Where",
            json!([keras_tensor("x"), keras_tensor("x"), 0.5]),
            "supports a constant condition",
        ),
        (
            "GetItem",
            json!([keras_tensor("x"), [{"class_name": "__slice__", "config": {"start": null, "stop": null, "step": null}}, {"class_name": "__slice__", "config": {"start": null, "stop": null, "step": 0}}]]),
            "step of 0",
        ),
        (
            "Power",
            json!([keras_tensor("x"), keras_tensor("x")]),
            "constant scalar exponent",
        ),
        (
            "Maximum",
            json!([keras_tensor("x"), [[[1.0]], [[2.0]], [[3.0]]]]),
            "would broadcast the tensor",
        ),
    ];
    for (class, args, expected) in cases {
        let node = json!({
            "module": "keras.src.ops.numpy", "class_name": class, "name": "op",
            "config": {"name": "op"},
            "inbound_nodes": [{"args": args, "kwargs": {}}]
        });
        let e = load(&format!("refuse-{class}"), &keras3_model(node))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(expected) && e.contains("layer `op`"),
            "{class}: {e}"
        );
    }
}
