"""Writes sample.h: the keyword-spotting fixture's recorded inputs and Keras's outputs
(tests/fixtures/kws_cnn/k3.io.json), for the board, which has no file system of its own.

    python3 make_sample.py > sample.h
"""
import json
import pathlib

io = json.loads(
    (pathlib.Path(__file__).parent / "../../tests/fixtures/kws_cnn/k3.io.json").read_text()
)
x, y = io["inputs"][0], io["outputs"][0]
samples = x["shape"][0]


def floats(values):
    return ",\n".join(
        "    " + ", ".join(f"{v:.9g}f" for v in values[i : i + 6])
        for i in range(0, len(values), 6)
    )


print("/* The recorded inputs of tests/fixtures/kws_cnn/k3.io.json and the outputs Keras")
print(" * gave for them; made by make_sample.py. */")
print(f"#define SAMPLES {samples}")
print(f"static const float sample_inputs[{len(x['data'])}] = {{\n{floats(x['data'])}\n}};")
print(f"static const float keras_outputs[{len(y['data'])}] = {{\n{floats(y['data'])}\n}};")
