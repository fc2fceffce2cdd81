"""The Python half of bench/run.sh.

  bench.py export DIR [MODEL ...]   Keras model -> DIR/models/<m>.onnx and <m>.tflite
  bench.py time DIR [--runs N] [--seconds S] [MODEL ...]
                                    times ONNX Runtime, TensorFlow Lite and TensorFlow,
                                    one thread each, on the inputs kerac-bench wrote
  bench.py report DIR               DIR/README.md (tables) and DIR/latency.png

Every call is timed on its own, so the tail (p99, max) shows as well as the median.
"""

import json
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")
# keras.applications models too large to commit, made by tests/make_applications.sh.
APPLICATIONS = os.path.join(HERE, "..", "target", "applications")
KERAC = "kerac (model!)"
PEERS = ["onnxruntime", "tflite", "tensorflow"]


def models(only):
    out = []
    for line in open(os.path.join(HERE, "models.txt")):
        line = line.strip()
        if line and not line.startswith("#"):
            name, label = line.split(None, 1)
            if not only or name in only:
                out.append((name, label))
    return out


def model_file(name):
    """The model's k3.keras: a committed fixture, else a made keras.applications model."""
    for root in (FIXTURES, APPLICATIONS):
        path = os.path.join(root, name, "k3.keras")
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{name}: no k3.keras; bash tests/make_applications.sh makes it")


def load_keras(name):
    import keras

    m = keras.saving.load_model(model_file(name))
    m(np.zeros((1,) + tuple(m.inputs[0].shape[1:]), np.float32))
    return m


def export(results, only):
    import tensorflow as tf

    os.makedirs(os.path.join(results, "models"), exist_ok=True)
    for name, _ in models(only):
        m = load_keras(name)
        errors = {}
        onnx = os.path.join(results, "models", name + ".onnx")
        # Batch 1 fixed, as every tool runs it: a static shape lets the converters
        # specialise (and TFLite lower the recurrent layers' loops at all).
        spec = tf.TensorSpec((1,) + tuple(m.inputs[0].shape[1:]), tf.float32)
        try:
            m.export(onnx, format="onnx", verbose=False, input_signature=[spec])
        except Exception as e:  # a converter that cannot take a model is a result
            errors["onnx"] = f"{type(e).__name__}: {e}"
        try:
            from tensorflow.python.framework.convert_to_constants import (
                convert_variables_to_constants_v2,
            )

            # Weights frozen into constants: a function that reads variables converts,
            # but its variables are never initialised in the interpreter.
            fn = tf.function(lambda x: m(x, training=False)).get_concrete_function(spec)
            conv = tf.lite.TFLiteConverter.from_concrete_functions(
                [convert_variables_to_constants_v2(fn)]
            )
            with open(os.path.join(results, "models", name + ".tflite"), "wb") as f:
                f.write(conv.convert())
        except Exception as e:
            errors["tflite"] = f"{type(e).__name__}: {str(e)[:400]}"
        with open(os.path.join(results, "models", name + ".errors.json"), "w") as f:
            json.dump(errors, f, indent=1)
        print(f"exported {name}" + (f" (failed: {', '.join(errors)})" if errors else ""))


def time_calls(run, xs, runs, seconds):
    """Like kerac-bench's: a quarter second of warm-up, then `runs` calls or `seconds`."""
    n = len(xs)
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < 0.25 or i < 20:
        run(xs[i % n])
        i += 1
    times = np.zeros(runs, np.uint32)
    clock = time.perf_counter_ns
    begin = time.perf_counter()
    count = 0
    for i in range(runs):
        x = xs[i % n]
        t = clock()
        run(x)
        times[i] = min(clock() - t, 0xFFFFFFFF)
        count = i + 1
        if i >= 200 and i % 64 == 0 and time.perf_counter() - begin > seconds:
            break
    return times[:count]


def make_onnxruntime(results, name, shape):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    path = os.path.join(results, "models", name + ".onnx")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {feed: x})[0]


def make_tflite(results, name, shape):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=os.path.join(results, "models", name + ".tflite"), num_threads=1)
    it.allocate_tensors()
    i = it.get_input_details()[0]["index"]
    o = it.get_output_details()[0]["index"]

    def run(x):
        it.set_tensor(i, x)
        it.invoke()
        return it.get_tensor(o)

    return run


def make_tensorflow(results, name, shape):
    import tensorflow as tf

    m = load_keras(name)
    f = tf.function(
        lambda x: m(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)]
    )
    return lambda x: f(tf.constant(x)).numpy()


def time_peers(results, runs, seconds, only):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    for name, _ in models(only):
        meta_path = os.path.join(results, "raw", name + ".json")
        meta = json.load(open(meta_path))
        shape = tuple(meta["input_shape"])
        pool = meta["pool"]["size"]
        xs = np.fromfile(os.path.join(results, "inputs", name + ".f32"), np.float32)
        xs = list(xs.reshape((pool,) + shape))
        ref = np.fromfile(os.path.join(results, "inputs", name + ".kerac_out.f32"), np.float32)
        ref = ref.reshape(pool, -1)
        errors = json.load(open(os.path.join(results, "models", name + ".errors.json")))
        for tool, make in [
            ("onnxruntime", make_onnxruntime),
            ("tflite", make_tflite),
            ("tensorflow", make_tensorflow),
        ]:
            source = {"onnxruntime": "onnx", "tflite": "tflite"}.get(tool)
            if source in errors:
                meta["tools"][tool] = {"error": f"export to {source}: {errors[source]}"}
                continue
            try:
                run = make(results, name, shape)
                diff = max(
                    float(np.max(np.abs(np.asarray(run(x)).ravel() - r))) for x, r in zip(xs, ref)
                )
                times = time_calls(run, xs, runs, seconds)
            except Exception as e:
                meta["tools"][tool] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
                print(f"{name}: {tool} failed: {e}")
                continue
            samples = f"raw/{name}.{tool}.u32"
            times.astype("<u4").tofile(os.path.join(results, samples))
            meta["tools"][tool] = {"samples": samples, "max_abs_diff": diff}
            print(f"{name}: {tool} median {np.median(times) / 1e3:.2f} µs over {len(times)} calls")
        json.dump(meta, open(meta_path, "w"), indent=1)


# ------------------------------------------------------------------------------ report


def fmt_ns(ns):
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns / 1e6:.2f} ms"


def stats(t):
    t = np.sort(t.astype(np.float64))
    med = float(np.median(t))
    return dict(
        runs=len(t),
        median=med,
        p99=float(np.percentile(t, 99)),
        p999=float(np.percentile(t, 99.9)),
        max=float(t[-1]),
        max_over_median=float(t[-1] / med),
    )


def report(results):
    machine = json.load(open(os.path.join(results, "raw", "machine.json")))
    peak = machine.get("measured_peak_flops")
    rows, summary, jitter, layers, all_samples = [], [], [], [], []
    out = {"machine": machine, "models": {}}
    for name, label in models([]):
        path = os.path.join(results, "raw", name + ".json")
        if not os.path.exists(path):
            continue
        meta = json.load(open(path))
        flops = meta["flops"]
        per_tool = {}
        samples = {}
        for tool, entry in meta["tools"].items():
            if "samples" in entry:
                t = np.fromfile(os.path.join(results, entry["samples"]), "<u4")
                samples[tool] = t
                per_tool[tool] = dict(stats(t), max_abs_diff=entry.get("max_abs_diff"))
            else:
                per_tool[tool] = dict(error=entry["error"])
        out["models"][name] = dict(label=label, flops=flops, tools=per_tool, largest_layers=meta["largest_layers"])
        all_samples.append((label, samples))
        base = per_tool.get(KERAC, {}).get("median")
        for tool, s in per_tool.items():
            if "error" in s:
                rows.append(f"| {label} | {tool} | could not run: {s['error'][:160].replace('|', '/')} |||||||")
                continue
            ratio = s["median"] / base if base else float("nan")
            rows.append(
                f"| {label} | {tool} | {fmt_ns(s['median'])} | {fmt_ns(s['p99'])} | {fmt_ns(s['max'])} "
                f"| {s['max_over_median']:.2f} | {flops / s['median']:.2f} | {ratio:.2f} | {s['max_abs_diff']:.1e} |"
            )
        cells = []
        verdict = []
        for tool, need in [("onnxruntime", 1.5), ("tflite", 1.5), ("tract", 1.0), ("tensorflow", None)]:
            s = per_tool.get(tool, {})
            if "median" not in s or not base:
                cells.append("—")
                continue
            r = s["median"] / base
            cells.append(f"{r:.2f}x")
            if need and r < need:
                verdict.append(f"{tool} {r:.2f}x < {need}x")
        # The widest object this machine runs: the last one measured.
        obj = ([t for t in per_tool if t.startswith("kerac (object")] or [None])[-1]
        summary.append(
            f"| {label} | {fmt_ns(base) if base else '—'} | "
            + (f"{fmt_ns(per_tool[obj]['median'])}" if obj and "median" in per_tool[obj] else "—")
            + " | " + " | ".join(cells) + " | " + ("met" if not verdict else "missed: " + "; ".join(verdict)) + " |"
        )
        # Jitter: the machine's (raw max) and the code's (per input, the median of its
        # repetitions, so interrupts drop out; spread across inputs is then the data's).
        pool = meta["pool"]
        for tool in [t for t in samples if t.startswith("kerac")]:
            t = samples[tool].astype(np.float64)
            idx = np.arange(len(t)) % pool["size"]
            per_input = np.array([np.median(t[idx == i]) for i in range(pool["size"])])
            normal = np.median(t[idx < pool["normal"]])
            sub = np.median(t[idx >= pool["normal"]])
            s = per_tool[tool]
            jitter.append(
                f"| {label} | {tool} | {s['runs']} | {fmt_ns(s['median'])} | {fmt_ns(s['p999'])} | {fmt_ns(s['max'])} "
                f"| {s['max_over_median']:.2f} | {s['p999'] / s['median']:.2f} | {per_input.max() / per_input.min():.3f} | {sub / normal:.3f} |"
            )
        for kind, l in (meta["largest_layers"] or {}).items():
            if isinstance(l, dict) and "flops" in l:
                share = f"{100 * l['share_of_peak']:.0f}%" if l.get("share_of_peak") else "—"
                loops = " x ".join(f"{n} {c}" for n, c in l["loops"])
                if l.get("object_median_ns"):
                    obj = fmt_ns(l["object_median_ns"])
                    obj_share = f"{100 * l['object_share_of_peak']:.0f}%" if l.get("object_share_of_peak") else "—"
                else:
                    obj, obj_share = "—", "—"
                layers.append(
                    f"| {label} | {kind} | `{l['layers']}` | {loops} | {l['flops']} | {fmt_ns(l['median_ns'])} | {share} "
                    f"| {obj} | {obj_share} |"
                )
    wcet = []
    mhz = machine["derived_peak_flops"] / 32e6 if machine.get("derived_peak_flops") else None
    for name, label in models([]):
        path = os.path.join(results, "wcet", name + ".wcet.json")
        if not os.path.exists(path) or name not in out["models"]:
            continue
        w = json.load(open(path))
        out["models"][name]["wcet"] = w
        loops = sum(len(s["loops"]) for s in w["steps"]) + len(w["io_loops"])
        obj = ([v for t, v in out["models"][name]["tools"].items() if t.startswith("kerac (object")] or [{}])[-1]
        if w.get("instructions"):
            bound = w["cycle_bound"]
            at = fmt_ns(bound / mhz * 1e3) if mhz else "—"
            wcet.append(
                f"| {label} | {len(w['steps'])} | {loops} | {w['instructions']} | {bound} | {at} | "
                + (fmt_ns(obj["max"]) if "max" in obj else "—") + " |"
            )
        else:
            wcet.append(f"| {label} | {len(w['steps'])} | {loops} | {w['instructions_from']} |||| ")
    with open(os.path.join(results, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    lines = [
        "# kerac against its peers",
        "",
        "Batch 1, one thread, one pinned core; every call timed on its own. Produced by `bench/run.sh`.",
        "",
        f"- Measured peak of one core: {peak / 1e9:.1f} GFLOP/s (independent FMAs of the widest vectors)." if peak else "- No AVX2+FMA: no peak measured.",
    ]
    if machine.get("derived_peak_flops"):
        lines.append(f"- Data-sheet peak: {machine['derived_peak_flops'] / 1e9:.1f} GFLOP/s ({machine['derived_peak_from']}); the core boosts past that clock, so fractions use the measured peak.")
    lines += [
        f"- kerac's Rust kernels, built with no RUSTFLAGS and chosen at run time: {machine.get('rust_simd')}; peak measured with {machine.get('peak_isa')} FMAs.",
        "- Peers: ONNX Runtime and TensorFlow Lite (ai-edge-litert) from Python, one thread, default providers and delegates; tract (tract-onnx, optimised plan) from Rust on the same ONNX file; TensorFlow is a `tf.function` of the Keras model. Calls from Python include the binding's overhead, as users see it.",
        "",
        "## Summary: peer median / kerac median",
        "",
        "Targets: ONNX Runtime and TensorFlow Lite at least 1.5x kerac's time, tract at least 1.0x.",
        "",
        "| model | kerac `model!` | kerac object (widest) | ONNX Runtime | TFLite | tract | TensorFlow | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *summary,
        "",
        "## Every tool",
        "",
        "`x kerac` is the tool's median over kerac `model!`'s; `max diff` the largest difference from kerac's outputs over the input pool.",
        "",
        "| model | tool | median | p99 | max | max/median | GFLOP/s | x kerac | max diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "## Jitter of kerac's `predict`",
        "",
        "Inputs cycle through a pool of 64: 48 uniform in [-1, 1), 16 made of float32 subnormals (all, or every other value). "
        "kerac flushes subnormals to zero while a model runs, as TensorFlow does (its inputs read as zeros); the last column shows what they cost. "
        "`per-input spread` takes each input's median over its repetitions (about 1 560 each) and divides the slowest input's by the fastest's: the part of the jitter that comes from the data, with the machine's interruptions, which fall on any input, left out.",
        "",
        "| model | backend | runs | median | p99.9 | max | max/median | p99.9/median | per-input spread | subnormal/normal median |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *jitter,
        "",
        "## The largest Dense and Conv layer of each model",
        "",
        "Each step timed on its own (median of 2000 calls), against the measured peak: on the runtime's kernels through the plan "
        "(what `Model::run` runs: shapes read at run time), and as the step function of the x86-64 object for this machine "
        "(the JIT's code: shapes as constants, as in `model!`'s steps, with the assembled kernels of the widest vectors).",
        "",
        "| model | kind | layers | loops | FLOPs | runtime kernels | of peak | object step | of peak |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
        *layers,
        "",
        "## WCET reports (`kerac inspect --wcet`, in wcet/)",
        "",
        "Instructions of one call of the Cranelift code for this machine, counted under callgrind (the same for every input); "
        "the cycle bound assumes one instruction at a time at 14 cycles each and a 300-cycle miss for every 64-byte line moved. "
        "It bounds the call's own execution, far above its measured time; a measured max can still exceed it when the operating system takes the core away mid-call (interrupts, other processes), which no per-call bound covers.",
        "",
        "| model | steps | loops | instructions | cycle bound | bound at the nominal clock | measured max (object) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *wcet,
        "",
        "![latency distributions](latency.png)",
        "",
    ]
    with open(os.path.join(results, "README.md"), "w") as f:
        f.write("\n".join(lines))
    plot(results, all_samples)
    print("\n".join(lines[: lines.index("## Every tool")]))
    print(f"wrote {os.path.join(results, 'README.md')} and latency.png")


def plot(results, all_samples):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    n = len(all_samples)
    cols = 2
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(13, 3.2 * ((n + cols - 1) // cols)))
    for ax, (label, samples) in zip(np.ravel(axes), all_samples):
        tools = list(samples)
        data = [samples[t].astype(np.float64) / 1e3 for t in tools]
        ax.violinplot(data, vert=False, showextrema=False, quantiles=[[0.5, 0.99]] * len(data))
        for i, d in enumerate(data):
            ax.plot(d.max(), i + 1, "kx", ms=4)
        ax.set_yticks(range(1, len(tools) + 1), tools, fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("µs per call (log); lines: median, p99; x: max", fontsize=8)
    for ax in np.ravel(axes)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(results, "latency.png"), dpi=110)


def main(argv):
    if len(argv) < 2 or argv[0] not in ("export", "time", "report"):
        sys.exit(__doc__)
    cmd, results, rest = argv[0], argv[1], argv[2:]
    runs, seconds, only = 100_000, 5.0, []
    i = 0
    while i < len(rest):
        if rest[i] == "--runs":
            runs = int(rest[i + 1])
            i += 2
        elif rest[i] == "--seconds":
            seconds = float(rest[i + 1])
            i += 2
        else:
            only.append(rest[i])
            i += 1
    if cmd == "export":
        export(results, only)
    elif cmd == "time":
        time_peers(results, runs, seconds, only)
    else:
        report(results)


if __name__ == "__main__":
    main(sys.argv[1:])
