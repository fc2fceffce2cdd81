"""Records a Keras model's inputs and outputs in kerac-io/1, for `kerac check`.

    python -m kerac_record MODEL [--inputs IN.npz | --samples N] -o io.json [--layers]

MODEL is a `.keras` file (Keras 3) or an `.h5` file (Keras 3, or Keras 2 / tf_keras:
the file says which wrote it). With `--layers` the file also holds every layer's
output, keyed by the layer's name (`outer/inner/layer` inside nested models), its call
and its output index, so that `kerac check` can name the first layer that disagrees.

Inputs come from `--inputs` (an .npz with one array per model input, by input name or
in order, samples first) or are drawn from a normal distribution (`--samples`,
`--seed`); dimensions the model leaves open take `--open-dim`.
"""

import argparse
import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

FORMAT = "kerac-io/1"


def keras_for(path, which):
    """The Keras that wrote `path`: `keras` (3) or `tf_keras` (2)."""
    if which == "auto":
        which = "3"
        if path.endswith(".h5"):
            import h5py

            with h5py.File(path, "r") as f:
                version = f.attrs.get("keras_version", b"")
                version = version.decode() if isinstance(version, bytes) else str(version)
            which = "2" if version.startswith("2") else "3"
    if which == "2":
        import tf_keras

        return tf_keras
    import keras

    return keras


def is_keras3(K):
    return not K.__name__.startswith("tf_keras")


def input_names(model, K):
    if is_keras3(K):
        return [t._keras_history[0].name for t in model.inputs]
    return list(model.input_names)


def output_names(model, K):
    if is_keras3(K):
        return [t._keras_history[0].name for t in model.outputs]
    return list(model.output_names)


def calls(model, K):
    """Every call made inside `model`, in graph order: (layer, call index, input
    tensors, output tensors), tensors symbolic."""
    found = []
    if is_keras3(K):
        # A Keras 3 Sequential keeps its graph in a functional model inside.
        model = getattr(model, "_functional", None) or model
        ops = [op for op in model.operations if type(op).__name__ != "InputLayer"]
        for op in ops:
            k = 0
            for i, node in enumerate(op._inbound_nodes):
                if f"{id(op)}_ib-{i}" not in model._nodes:
                    continue
                found.append((op, k, list(node.input_tensors), list(node.output_tensors)))
                k += 1
    else:
        for layer in model.layers:
            if type(layer).__name__ == "InputLayer":
                continue
            k = 0
            for i, node in enumerate(layer._inbound_nodes):
                if f"{layer.name}_ib-{i}" not in model._network_nodes:
                    continue
                ins = node.input_tensors
                outs = node.output_tensors
                ins = list(ins) if isinstance(ins, (list, tuple)) else [ins]
                outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
                found.append((layer, k, ins, outs))
                k += 1
    return found


def is_model(layer):
    return hasattr(layer, "layers") and hasattr(layer, "inputs") and type(layer).__name__ in (
        "Functional",
        "Sequential",
        "Model",
    )


def layer_outputs(model, K, xs, prefix=""):
    """[(name, class, call, output index, array)] for every call in `model` on `xs`,
    nested models entered with their name as a prefix."""
    found = calls(model, K)
    wanted = []
    for layer, k, ins, outs in found:
        wanted.extend(ins if is_model(layer) else outs)
    if not wanted:
        return []
    graph = getattr(model, "_functional", None) or model if is_keras3(K) else model
    extractor = K.Model(graph.inputs, wanted)
    values = extractor(xs if len(xs) > 1 else xs[0], training=False)
    if not isinstance(values, (list, tuple)):
        values = [values]
    values = [np.asarray(v, dtype=np.float32) for v in values]
    records, at = [], 0
    for layer, k, ins, outs in found:
        if is_model(layer):
            inner = values[at : at + len(ins)]
            at += len(ins)
            records.extend(layer_outputs(layer, K, inner, f"{prefix}{layer.name}/"))
            continue
        for o in range(len(outs)):
            records.append((prefix + layer.name, type(layer).__name__, k, o, values[at]))
            at += 1
    return records


def fmt(a):
    return "[" + ",".join("%.9g" % v for v in np.asarray(a, dtype=np.float32).ravel()) + "]"


def tensor(name, a, **extra):
    fields = {"name": name}
    fields.update(extra)
    head = ", ".join("%s: %s" % (json.dumps(k), json.dumps(v)) for k, v in fields.items())
    return '  {%s, "shape": %s, "data": %s}' % (head, json.dumps(list(a.shape)), fmt(a))


def make_inputs(model, names, args):
    if args.inputs:
        data = np.load(args.inputs)
        keys = list(data.keys())
        xs = [data[n] if n in data else data[keys[i]] for i, n in enumerate(names)]
        return [np.asarray(x, dtype=np.float32) for x in xs]
    rng = np.random.default_rng(args.seed)
    shapes = [tuple(d if d is not None else args.open_dim for d in t.shape[1:]) for t in model.inputs]
    return [rng.normal(0.0, 1.0, (args.samples,) + s).astype(np.float32) for s in shapes]


def to_text(model, K, xs, layers=False):
    """The kerac-io/1 text of `model` (loaded with `K`) on inputs `xs`, one array per
    model input, samples first; with `layers`, every layer's output too."""
    names = input_names(model, K)
    ys = model(xs if len(xs) > 1 else xs[0], training=False)
    if not isinstance(ys, (list, tuple)):
        ys = [ys]
    ys = [np.asarray(y, dtype=np.float32) for y in ys]
    parts = [
        '{"format": %s, "model": %s, "keras_version": %s,'
        % (json.dumps(FORMAT), json.dumps(model.name), json.dumps(K.__version__)),
        '"inputs": [\n%s],' % ",\n".join(tensor(n, x) for n, x in zip(names, xs)),
    ]
    outputs = ",\n".join(tensor(n, y) for n, y in zip(output_names(model, K), ys))
    if not layers:
        parts.append('"outputs": [\n%s]}' % outputs)
        return "\n".join(parts) + "\n"
    parts.append('"outputs": [\n%s],' % outputs)
    rows = layer_outputs(model, K, xs)
    parts.append(
        '"layers": [\n%s]}'
        % ",\n".join(tensor(name, a, **{"class": cls, "call": k, "output": o}) for name, cls, k, o, a in rows)
    )
    return "\n".join(parts) + "\n"


def record(args):
    K = keras_for(args.model, args.keras)
    model = K.models.load_model(args.model, compile=False)
    xs = make_inputs(model, input_names(model, K), args)
    text = to_text(model, K, xs, args.layers)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="kerac_record", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a .keras or .h5 model file")
    p.add_argument("-o", "--output", required=True, help="the kerac-io/1 file to write (- for stdout)")
    p.add_argument("--inputs", help="an .npz of inputs, one array per model input, samples first")
    p.add_argument("--samples", type=int, default=4, help="random samples when no --inputs (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random samples")
    p.add_argument("--open-dim", type=int, default=8, help="length of open dimensions (default 8)")
    p.add_argument("--layers", action="store_true", help="also record every layer's output")
    p.add_argument("--keras", choices=["auto", "2", "3"], default="auto", help="which Keras reads the file")
    return record(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
