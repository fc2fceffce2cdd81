//! Random Keras 3 graphs for the tests: layer configs and operation nodes with random
//! weights, drawn for a given input shape, and the check that the compiled plan and
//! the JIT agree with the reference interpreter on them.

use kerac_compiler::emit::clif::Jit;
use kerac_compiler::graph::{self, Graph};
use kerac_compiler::keras::hdf5::Tensor;
use kerac_compiler::keras::weights::Node;
use kerac_compiler::keras::{Dialect, ModelFile, WeightStore};
use kerac_compiler::plan::{exec, Plan};
use kerac_compiler::{interp, BuildOptions};
use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};

/// A xorshift generator: the same draws on every machine.
pub struct Rng(pub u64);
impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in `[-1, 1]`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// A graph under construction: Keras 3 layer configs and their weights.
pub struct Builder {
    layers: Vec<Value>,
    weights: Node,
    count: usize,
}

impl Builder {
    /// The model file with `output` as its output.
    pub fn file(&self, output: &str) -> ModelFile {
        ModelFile {
            path: "random.keras".into(),
            keras_version: Some("3.15.1".into()),
            dialect: Dialect::Keras3,
            config: json!({"class_name": "Functional", "config": {
                "name": "random", "layers": self.layers,
                "input_layers": [["x", 0, 0]], "output_layers": [[output, 0, 0]]}}),
            weights: Some(WeightStore::Tree(self.weights.clone())),
        }
    }

    /// A weight of `shape` drawn uniform in `[-scale, scale]`.
    pub fn tensor(name: &str, shape: &[usize], rng: &mut Rng, scale: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            name: name.into(),
            shape: shape.to_vec(),
            data: (0..n).map(|_| rng.unit() * scale).collect(),
        }
    }

    /// Adds a layer called on `inputs`; returns its name.
    pub fn add(
        &mut self,
        class: &str,
        mut config: Value,
        inputs: &[&str],
        vars: Vec<Tensor>,
    ) -> String {
        let name = format!("layer_{}", self.count);
        self.count += 1;
        config["name"] = json!(name);
        let args: Vec<Value> = inputs.iter().map(|i| tref(i)).collect();
        let args = if inputs.len() == 1 {
            json!([args[0]])
        } else {
            json!([args])
        };
        self.layers.push(json!({"class_name": class, "name": name, "config": config, "inbound_nodes": [{"args": args, "kwargs": {}}]}));
        let layers = self.weights.children.entry("layers".into()).or_default();
        layers.children.insert(
            name.clone(),
            Node {
                name: Some(name.clone()),
                vars,
                children: Default::default(),
            },
        );
        name
    }

    /// Adds a Keras 3 operation node (`x + 3.0`, `ops.mean(x, 1)`): `args` mixes tensor
    /// references ([`tref`]) and constants, options go in its config; returns its name.
    pub fn add_op(
        &mut self,
        module: &str,
        class: &str,
        mut config: Value,
        args: Vec<Value>,
    ) -> String {
        let name = format!("op_{}", self.count);
        self.count += 1;
        config["name"] = json!(name);
        self.layers.push(
            json!({"module": format!("keras.src.ops.{module}"), "class_name": class,
            "registered_name": class, "name": name, "config": config,
            "inbound_nodes": [{"args": args, "kwargs": {}}]}),
        );
        name
    }

    /// Drops the last layer added.
    pub fn undo(&mut self) {
        if let Some(l) = self.layers.pop() {
            if let Some(layers) = self.weights.children.get_mut("layers") {
                layers
                    .children
                    .remove(l["name"].as_str().unwrap_or_default());
            }
        }
    }
}

/// A reference to a tensor, as operation arguments hold them.
pub fn tref(name: &str) -> Value {
    json!({"class_name": "__keras_tensor__", "config": {"keras_history": [name, 0, 0]}})
}

/// Draws one Keras operation for an input of `shape` (batch first): arithmetic with
/// constants on either side or with another tensor of the same shape, elementwise
/// functions, reductions, transposes, slices and matmul with a constant.
pub fn draw_op(
    b: &mut Builder,
    rng: &mut Rng,
    input: &str,
    shape: &[usize],
    others: &[(String, Vec<usize>)],
) -> String {
    let x = tref(input);
    let k = rng.unit() * 2.0;
    let rank = shape.len();
    match rng.below(10) {
        0 => {
            let class = rng.pick(&["Add", "Subtract", "Multiply", "Maximum", "Minimum"]);
            if rng.below(2) == 0 {
                b.add_op("numpy", class, json!({}), vec![x, json!(k)])
            } else {
                b.add_op("numpy", class, json!({}), vec![json!(k), x])
            }
        }
        1 => {
            // A per-channel constant (NumPy array) or a divisor away from zero.
            let c = *shape.last().unwrap_or(&1);
            if rng.below(2) == 0 {
                let values: Vec<f32> = (0..c).map(|_| rng.unit()).collect();
                let array = json!({"class_name": "__numpy__", "config": {"value": values, "dtype": "float32"}});
                let class = rng.pick(&["Add", "Multiply", "Subtract", "Maximum", "Minimum"]);
                if rng.below(2) == 0 {
                    b.add_op("numpy", class, json!({}), vec![x, array])
                } else {
                    b.add_op("numpy", class, json!({}), vec![array, x])
                }
            } else {
                b.add_op("numpy", "Divide", json!({}), vec![x, json!(k.abs() + 0.5)])
            }
        }
        2 => {
            let same: Vec<&(String, Vec<usize>)> =
                others.iter().filter(|(_, s)| s == shape).collect();
            // The input itself is among them.
            let (other, _) = same[rng.below(same.len())];
            let class = rng.pick(&["Add", "Subtract", "Multiply", "Maximum", "Minimum"]);
            b.add_op("numpy", class, json!({}), vec![x, tref(other)])
        }
        3 => {
            let class = rng.pick(&[
                "Absolute", "Negative", "Square", "Tanh", "Sigmoid", "Relu", "Silu",
            ]);
            let module = if ["Absolute", "Negative", "Square", "Tanh"].contains(&class) {
                "numpy"
            } else {
                "nn"
            };
            b.add_op(module, class, json!({}), vec![x])
        }
        4 => {
            // Functions defined on part of the line, on a positive argument.
            let abs = b.add_op("numpy", "Absolute", json!({}), vec![x]);
            let shifted = b.add_op("numpy", "Add", json!({}), vec![tref(&abs), json!(0.25)]);
            let (module, class, extra) = rng.pick(&[
                ("numpy", "Sqrt", None),
                ("math", "Rsqrt", None),
                ("numpy", "Log", None),
                ("numpy", "Reciprocal", None),
                ("numpy", "Power", Some(1.5f32)),
                ("numpy", "Power", Some(-0.75)),
            ]);
            let mut args = vec![tref(&shifted)];
            args.extend(extra.map(|p| json!(p)));
            b.add_op(module, class, json!({}), args)
        }
        5 => {
            let class = rng.pick(&["Mean", "Sum", "Max", "Min"]);
            let axis = 1 + rng.below(rank.saturating_sub(1).max(1));
            // Axes apart (the first and the last after the batch) where there are some.
            let axis = if rank >= 4 && rng.below(2) == 0 {
                json!([1, rank - 1])
            } else {
                json!(axis)
            };
            b.add_op(
                "numpy",
                class,
                json!({"axis": axis, "keepdims": rng.below(2) == 0}),
                vec![x],
            )
        }
        6 if rank >= 3 => {
            let mut axes: Vec<usize> = (0..rank).collect();
            axes.swap(rank - 1, rank - 2);
            b.add_op("numpy", "Transpose", json!({"axes": axes}), vec![x])
        }
        7 => {
            let last = *shape.last().unwrap_or(&1) as i64;
            let start =
                rng.below(last.max(1) as usize) as i64 - if rng.below(2) == 0 { last } else { 0 };
            let step = (1 + rng.below(2)) as i64 * if rng.below(3) == 0 { -1 } else { 1 };
            let mut index = vec![
                json!({"class_name": "__slice__", "config": {"start": null, "stop": null, "step": null}}),
            ];
            index.extend((2..rank).map(|_| json!({"class_name": "__slice__", "config": {"start": null, "stop": null, "step": null}})));
            index.push(json!({"class_name": "__slice__", "config": {"start": start, "stop": null, "step": step}}));
            b.add_op("numpy", "GetItem", json!({}), vec![x, json!(index)])
        }
        8 => {
            // where with a constant per-channel mask; the other side a constant or a
            // tensor of the same shape, on either side.
            let c = *shape.last().unwrap_or(&1);
            let mask: Vec<bool> = (0..c).map(|_| rng.below(2) == 0).collect();
            let mask =
                json!({"class_name": "__numpy__", "config": {"value": mask, "dtype": "bool"}});
            let same: Vec<&(String, Vec<usize>)> =
                others.iter().filter(|(_, s)| s == shape).collect();
            let other = match rng.below(2) {
                0 => json!(k),
                _ => tref(&same[rng.below(same.len())].0),
            };
            if rng.below(2) == 0 {
                b.add_op("numpy", "Where", json!({}), vec![mask, x, other])
            } else {
                b.add_op("numpy", "Where", json!({}), vec![mask, other, x])
            }
        }
        _ => {
            let c = *shape.last().unwrap_or(&1);
            let n = 1 + rng.below(6);
            let matrix: Vec<Vec<f32>> = (0..c)
                .map(|_| (0..n).map(|_| rng.unit()).collect())
                .collect();
            let array =
                json!({"class_name": "__numpy__", "config": {"value": matrix, "dtype": "float32"}});
            b.add_op("numpy", "Matmul", json!({}), vec![x, array])
        }
    }
}

const ACTS: &[&str] = &[
    "linear",
    "relu",
    "relu6",
    "tanh",
    "sigmoid",
    "gelu",
    "swish",
    "elu",
    "selu",
    "softplus",
    "softsign",
    "hard_sigmoid",
    "mish",
    "leaky_relu",
    "hard_swish",
];

/// Draws one layer for an input of `shape` (batch first).
pub fn draw(
    b: &mut Builder,
    rng: &mut Rng,
    input: &str,
    shape: &[usize],
    others: &[(String, Vec<usize>)],
) -> String {
    let c = *shape.last().unwrap_or(&1);
    let act = rng.pick(ACTS);
    let w = |rng: &mut Rng, name: &str, s: &[usize]| {
        let fan_in: usize = s[..s.len().saturating_sub(1)]
            .iter()
            .product::<usize>()
            .max(1);
        Builder::tensor(name, s, rng, 1.5 / (fan_in as f32).sqrt())
    };
    let bias = |rng: &mut Rng, n: usize| Builder::tensor("bias", &[n], rng, 0.3);
    let k = 1 + rng.below(3);
    let padding = rng.pick(&["valid", "same"]);
    match (shape.len(), rng.below(13)) {
        (_, 0) => {
            let units = 1 + rng.below(12);
            let vars = vec![w(rng, "kernel", &[c, units]), bias(rng, units)];
            b.add(
                "Dense",
                json!({"units": units, "activation": act, "use_bias": true}),
                &[input],
                vars,
            )
        }
        (_, 1) => {
            let vars = vec![
                Builder::tensor("gamma", &[c], rng, 1.0),
                Builder::tensor("beta", &[c], rng, 1.0),
                Builder::tensor("moving_mean", &[c], rng, 1.0),
                Tensor {
                    name: "moving_variance".into(),
                    shape: vec![c],
                    data: (0..c).map(|_| 0.5 + rng.unit().abs()).collect(),
                },
            ];
            b.add(
                "BatchNormalization",
                json!({"axis": -1, "epsilon": 0.001}),
                &[input],
                vars,
            )
        }
        (_, 2) => {
            let vars = vec![
                Builder::tensor("gamma", &[c], rng, 1.0),
                Builder::tensor("beta", &[c], rng, 1.0),
            ];
            b.add(
                "LayerNormalization",
                json!({"axis": -1, "epsilon": 0.001}),
                &[input],
                vars,
            )
        }
        (_, 3) => b.add("Activation", json!({"activation": act}), &[input], vec![]),
        (_, 4) => {
            let same: Vec<&(String, Vec<usize>)> = others
                .iter()
                .filter(|(_, s)| s.as_slice() == shape)
                .collect();
            match same.as_slice() {
                [] => b.add("Softmax", json!({"axis": -1}), &[input], vec![]),
                many => {
                    let other = many[rng.below(many.len())].0.clone();
                    let class = rng.pick(&[
                        "Add",
                        "Multiply",
                        "Maximum",
                        "Subtract",
                        "Average",
                        "Concatenate",
                    ]);
                    b.add(class, json!({"axis": -1}), &[input, &other], vec![])
                }
            }
        }
        (_, 5) => {
            let alpha = Builder::tensor("alpha", &shape[1..], rng, 0.5);
            b.add("PReLU", json!({}), &[input], vec![alpha])
        }
        (3, 6) | (3, 7) => {
            let f = 1 + rng.below(6);
            let padding = rng.pick(&["valid", "same", "causal"]);
            let vars = vec![w(rng, "kernel", &[k, c, f]), bias(rng, f)];
            b.add("Conv1D", json!({"filters": f, "kernel_size": k, "strides": 1 + rng.below(2), "padding": padding, "dilation_rate": 1 + rng.below(2), "activation": act}), &[input], vars)
        }
        (3, 8) => b.add(
            rng.pick(&["MaxPooling1D", "AveragePooling1D"]),
            json!({"pool_size": 2, "padding": padding}),
            &[input],
            vec![],
        ),
        (3, 9) => b.add(
            rng.pick(&["ZeroPadding1D", "UpSampling1D", "Cropping1D"]),
            json!({"padding": [1, 2], "size": 2, "cropping": [1, 0]}),
            &[input],
            vec![],
        ),
        (4, 6) => {
            let f = 1 + rng.below(8);
            let groups = if c.is_multiple_of(2) && f.is_multiple_of(2) && rng.below(3) == 0 {
                2
            } else {
                1
            };
            let vars = vec![w(rng, "kernel", &[k, k, c / groups, f]), bias(rng, f)];
            b.add("Conv2D", json!({"filters": f, "kernel_size": k, "strides": 1 + rng.below(2), "padding": padding, "groups": groups, "activation": act}), &[input], vars)
        }
        (4, 7) => {
            let dm = 1 + rng.below(2);
            let vars = vec![w(rng, "kernel", &[k, k, c, dm]), bias(rng, c * dm)];
            b.add("DepthwiseConv2D", json!({"kernel_size": k, "depth_multiplier": dm, "padding": padding, "activation": act}), &[input], vars)
        }
        (4, 8) => {
            let f = 1 + rng.below(6);
            let vars = vec![
                w(rng, "depthwise_kernel", &[k, k, c, 1]),
                w(rng, "pointwise_kernel", &[1, 1, c, f]),
                bias(rng, f),
            ];
            b.add(
                "SeparableConv2D",
                json!({"filters": f, "kernel_size": k, "padding": padding, "activation": act}),
                &[input],
                vars,
            )
        }
        (4, 9) => {
            let f = 1 + rng.below(4);
            let vars = vec![w(rng, "kernel", &[k, k, f, c]), bias(rng, f)];
            b.add("Conv2DTranspose", json!({"filters": f, "kernel_size": k, "strides": 1 + rng.below(2), "padding": padding, "activation": act}), &[input], vars)
        }
        (4, 10) => b.add(
            rng.pick(&["MaxPooling2D", "AveragePooling2D"]),
            json!({"pool_size": 2, "strides": 1 + rng.below(2), "padding": padding}),
            &[input],
            vec![],
        ),
        (4, 11) => {
            let class = rng.pick(&[
                "ZeroPadding2D",
                "UpSampling2D",
                "Cropping2D",
                "GlobalAveragePooling2D",
            ]);
            let interpolation = rng.pick(&["nearest", "bilinear"]);
            b.add(class, json!({"padding": [[1, 0], [0, 2]], "size": [2, 1], "interpolation": interpolation, "cropping": [[1, 0], [0, 1]]}), &[input], vec![])
        }
        (3, 10) => {
            // A recurrent layer, on its own or in both directions.
            let class = rng.pick(&["SimpleRNN", "LSTM", "GRU"]);
            let units = 1 + rng.below(8);
            let gates = match class {
                "LSTM" => 4,
                "GRU" => 3,
                _ => 1,
            };
            let reset_after = rng.below(2) == 0;
            let config = json!({
                "units": units,
                "activation": rng.pick(&["tanh", "relu", "softsign", "sigmoid", "elu"]),
                "recurrent_activation": rng.pick(&["sigmoid", "hard_sigmoid", "tanh"]),
                "return_sequences": rng.below(2) == 0,
                "go_backwards": rng.below(4) == 0,
                "reset_after": reset_after,
            });
            let cell = |rng: &mut Rng| {
                let bias = if class == "GRU" && reset_after {
                    Builder::tensor("bias", &[2, gates * units], rng, 0.3)
                } else {
                    Builder::tensor("bias", &[gates * units], rng, 0.3)
                };
                vec![
                    w(rng, "kernel", &[c, gates * units]),
                    w(rng, "recurrent_kernel", &[units, gates * units]),
                    bias,
                ]
            };
            if rng.below(3) == 0 {
                let mut forward = config.clone();
                forward["go_backwards"] = json!(false);
                let mode = rng.pick(&["concat", "sum", "mul", "ave"]);
                let mut vars = cell(rng);
                vars.extend(cell(rng));
                b.add(
                    "Bidirectional",
                    json!({"layer": {"class_name": class, "config": forward}, "merge_mode": mode}),
                    &[input],
                    vars,
                )
            } else {
                let vars = cell(rng);
                b.add(class, config, &[input], vars)
            }
        }
        (3, 11) => {
            let heads = 1 + rng.below(3);
            let (dk, dv) = (1 + rng.below(4), 1 + rng.below(4));
            let out = 1 + rng.below(6);
            let vars = vec![
                w(rng, "kernel", &[c, heads, dk]),
                Builder::tensor("bias", &[heads, dk], rng, 0.3),
                w(rng, "kernel", &[c, heads, dk]),
                Builder::tensor("bias", &[heads, dk], rng, 0.3),
                w(rng, "kernel", &[c, heads, dv]),
                Builder::tensor("bias", &[heads, dv], rng, 0.3),
                w(rng, "kernel", &[heads, dv, out]),
                Builder::tensor("bias", &[out], rng, 0.3),
            ];
            let name = b.add(
                "MultiHeadAttention",
                json!({"num_heads": heads, "key_dim": dk, "value_dim": dv, "output_shape": out}),
                &[input, input],
                vars,
            );
            if let Some(layer) = b.layers.last_mut() {
                layer["inbound_nodes"][0]["kwargs"] = json!({"use_causal_mask": rng.below(2) == 0});
            }
            name
        }
        (_, 12) => match rng.below(4) {
            0 => b.add("Softmax", json!({"axis": -1}), &[input], vec![]),
            1 => b.add("UnitNormalization", json!({"axis": -1}), &[input], vec![]),
            2 => {
                let divisors: Vec<usize> = (1..=c).filter(|g| c.is_multiple_of(*g)).collect();
                let groups = rng.pick(&divisors);
                let vars = vec![
                    Builder::tensor("gamma", &[c], rng, 1.0),
                    Builder::tensor("beta", &[c], rng, 1.0),
                ];
                b.add(
                    "GroupNormalization",
                    json!({"groups": groups, "axis": -1, "epsilon": 0.001, "center": true, "scale": true}),
                    &[input],
                    vars,
                )
            }
            // The compiled backends take Dot on up to three axes.
            _ if shape.len() > 3 => b.add("Softmax", json!({"axis": -1}), &[input], vec![]),
            _ => {
                let same: Vec<&(String, Vec<usize>)> = others
                    .iter()
                    .filter(|(_, s)| s.as_slice() == shape)
                    .collect();
                let other = match same.as_slice() {
                    [] => input.to_string(),
                    many => many[rng.below(many.len())].0.clone(),
                };
                b.add(
                    "Dot",
                    json!({"axes": shape.len() - 1, "normalize": rng.below(2) == 0}),
                    &[input, &other],
                    vec![],
                )
            }
        },
        (3, _) => b.add(
            rng.pick(&["GlobalAveragePooling1D", "Flatten", "Dropout"]),
            json!({"rate": 0.5}),
            &[input],
            vec![],
        ),
        _ => b.add("Flatten", json!({}), &[input], vec![]),
    }
}

/// The graph ending at `output`, or None where kerac refuses it.
pub fn build(b: &Builder, output: &str) -> Option<Graph> {
    graph::build(&b.file(output), &BuildOptions::default()).ok()
}

impl Builder {
    /// A graph with one input `x` of `per_sample` (batch of one).
    pub fn new(per_sample: &[usize]) -> Builder {
        let mut shape_with_batch = vec![None::<usize>];
        shape_with_batch.extend(per_sample.iter().map(|&d| Some(d)));
        Builder {
            layers: vec![
                json!({"class_name": "InputLayer", "name": "x", "config": {"batch_shape": shape_with_batch, "name": "x"}, "inbound_nodes": []}),
            ],
            weights: Node::default(),
            count: 0,
        }
    }
}

/// A random input of `per_sample`, batch of one.
pub fn input(rng: &mut Rng, per_sample: &[usize]) -> ArrayD<f32> {
    let x: Vec<f32> = (0..per_sample.iter().product::<usize>())
        .map(|_| rng.unit() * 2.0)
        .collect();
    ArrayD::from_shape_vec(IxDyn(&[&[1usize][..], per_sample].concat()), x)
        .expect("the shape holds the values")
}

/// The plan as C99 (`--emit c`) compiled by the host's C compiler with warnings as
/// errors and run on `x`; the outputs flat, in Keras's order.
fn c_outputs(plan: &Plan, x: &ArrayD<f32>) -> Result<Vec<ArrayD<f32>>, String> {
    use crate::program::{self, Code, Toolchain, STRICT};
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CASE: AtomicUsize = AtomicUsize::new(0);
    let case = std::env::temp_dir().join(format!(
        "kerac-random-c-{}-{}",
        std::process::id(),
        CASE.fetch_add(1, Ordering::Relaxed)
    ));
    let code = Code::C { flags: STRICT };
    program::build(plan, 0, "random graph", code, &Toolchain::HOST, &case)?;
    let flat: Vec<f32> = x.iter().copied().collect();
    let floats = program::run(&Toolchain::HOST, &case, &flat, 1, 0)?;
    let _ = std::fs::remove_dir_all(&case);
    let mut at = 0;
    plan.outputs
        .iter()
        .map(|port| {
            let n = plan.buffers[port.buffer].len;
            let v = floats.get(at..at + n).ok_or("too few outputs")?.to_vec();
            at += n;
            ArrayD::from_shape_vec(IxDyn(&port.shape), v).map_err(|e| e.to_string())
        })
        .collect()
}

/// Runs `graph` on `x` through the interpreter, the plan on the runtime's kernels, the
/// JIT and the C backend; returns how each backend differs beyond float32 rounding, and
/// the plan.
pub fn disagreements(graph: &Graph, x: &ArrayD<f32>) -> (Vec<String>, Plan) {
    let reference = interp::run(graph, std::slice::from_ref(x)).expect("the interpreter runs");
    let plan = Plan::new(graph).unwrap_or_else(|e| panic!("plan: {e}"));
    // As generated Rust runs it: convolution weights in the runtime's panels.
    let ours =
        exec::run(&plan.with_runtime_panels(), std::slice::from_ref(x)).expect("the plan runs");
    let jit = Jit::new(&plan)
        .and_then(|mut j| j.run_arrays(std::slice::from_ref(x)))
        .unwrap_or_else(|e| panic!("jit: {e}"));
    let c = c_outputs(&plan, x).unwrap_or_else(|e| panic!("C: {e}"));
    let mut out = Vec::new();
    for (backend, outputs) in [("plan", &ours), ("jit", &jit), ("C", &c)] {
        for (r, o) in reference.iter().zip(outputs) {
            let worst = r
                .iter()
                .zip(o.iter())
                .map(|(&a, &b)| ((a - b).abs() as f64, a.abs() as f64))
                .fold(0f64, |w, (d, m)| w.max(d / (1e-4 + 1e-3 * m)));
            if worst > 1.0 {
                out.push(format!("{backend}: off by {worst:.2}x the tolerance"));
            }
        }
    }
    (out, plan)
}
