"""Batch-1 latency of every edge file in LiteRT, with its size and accuracy beside it.

    python benchmarks/edge_latency.py --data mnist [--units 64 128] [--cells elman lstm gru]
    python benchmarks/edge_latency.py --quick     # elman-64 and LSTM-64 on the sample: minutes

Each kind trains `--epochs` epochs (the default rate, held constant), is converted in every
quantization x graph form x int8 activations that `to_tflite` writes (int8 calibrated on
1,000 training digits), and each file is timed in a fresh process (an abort costs that
process only) with LiteRT's builtin kernels (`BUILTIN_WITHOUT_DEFAULT_DELEGATES`, what
`kerasrnn.export.runtime` uses) and with its default XNNPACK delegate, on one thread and on
`--threads` (4, a phone's big cores; more threads than cores only slow it): `--repeats`
timings of `--invokes` invokes of one test digit, best and median microseconds per invoke.
Accuracy: the file's on the test digits (builtin kernels), beside the Keras model's.
Prints a table; `--json` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# (quantization, graph form, int8 activations), as `benchmarks/export_sizes.py` lists them
CASES = (
    ("none", "loop", None),
    ("none", "unrolled", None),
    ("float16", "unrolled", None),
    ("dynamic", "unrolled", None),
    ("int8", "unrolled", "int16"),
    ("int8", "unrolled", "int8"),
    ("none", "fused", None),
    ("int8", "fused", None),
)


def timings(threads: int) -> tuple[tuple[str, int], ...]:
    """(kernels, threads) of each timing: builtin and XNNPACK on one thread, XNNPACK on
    `threads` (a phone's big cores: 4)."""
    return (("builtin", 1), ("xnnpack", 1), ("xnnpack", threads))


def time_file(path: str, digit: str, kernels: str, threads: int, repeats: int, invokes: int):
    """Times one file in this process; prints {"best_us", "median_us"} as JSON.

    Args:
        path: the .tflite file.
        digit: a .npy of one float32 sequence [1, steps, features] in [0, 1].
        kernels: "builtin" or "xnnpack" (LiteRT's default delegate).
        threads: the interpreter's threads.
        repeats, invokes: `repeats` timings of `invokes` invokes each.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = {
        "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        "xnnpack": OpResolverType.AUTO,
    }[kernels]
    interpreter = Interpreter(
        model_path=path, experimental_op_resolver_type=resolver, num_threads=threads
    )
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    x = np.load(digit)
    if detail["dtype"] != np.float32:
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / scale + zero), info.min, info.max)
    interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
    for _ in range(invokes):  # warm-up
        interpreter.invoke()
    per_invoke = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(invokes):
            interpreter.invoke()
        per_invoke.append(1e6 * (time.perf_counter() - start) / invokes)
    print(json.dumps({"best_us": min(per_invoke), "median_us": statistics.median(per_invoke)}))


def _timed(path: str, digit: str, kernels: str, threads: int, args) -> str:
    """'best / median' microseconds of one file, measured in a child; or why none."""
    child = subprocess.run(
        [sys.executable, __file__, "--time", path, digit, kernels, str(threads)]
        + ["--repeats", str(args.repeats), "--invokes", str(args.invokes)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if child.returncode != 0:
        return "abort" if child.returncode < 0 else "fails"
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return f"{result['best_us']:.1f} / {result['median_us']:.1f}"


def _rows(args):
    """Trains each kind, converts it every way and times each file; yields table rows."""
    from bench_data import data_config

    from kerasrnn import data
    from kerasrnn.config import TrainConfig
    from kerasrnn.evaluation import evaluate
    from kerasrnn.export.convert import to_tflite
    from kerasrnn.export.runtime import Classifier
    from kerasrnn.models import build_classifier
    from kerasrnn.training import compile_model, fit

    config = data_config(args.data, args.data_dir)
    calibration, _ = data.load_sequences(
        data_config(args.data, args.data_dir, max_examples=1000), "train"
    )
    test_x, test_y = data.load_sequences(config, "test")
    with tempfile.TemporaryDirectory() as tmp:
        digit = os.path.join(tmp, "digit.npy")
        np.save(digit, test_x[:1])
        for cell in args.cells:
            for units in args.units:
                train = TrainConfig(epochs=args.epochs, schedule="constant", verbose=0)
                model = compile_model(build_classifier(cell=cell, units=units), train)
                fit(model, data.epochs(config, "train"), None, train)
                keras_accuracy = evaluate(model, data.pipeline(config, "test"))["accuracy"]
                for quantization, form, activations in CASES:
                    if form == "fused" and cell != "lstm":  # the fused op exists for LSTM only
                        continue
                    path = os.path.join(tmp, f"{cell}{units}-{quantization}-{form}.tflite")
                    written = to_tflite(
                        model,
                        path,
                        quantization,
                        calibration if quantization == "int8" else None,
                        form=form,
                        activations=activations or "int16",
                    )
                    predicted = Classifier(path).predict(test_x).argmax(-1)
                    yield {
                        "model": f"{cell}-{units}",
                        "quantization": quantization,
                        "form": form,
                        "activations": activations or "-",
                        "bytes": written.size_bytes,
                        "accuracy": float((predicted == test_y).mean()),
                        "keras_accuracy": keras_accuracy,
                        **{
                            f"{kernels} {threads}t": _timed(path, digit, kernels, threads, args)
                            for kernels, threads in timings(args.threads)
                        },
                    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=("sample", "mnist", "fashion"))
    parser.add_argument("--data-dir", help="the IDX folder (default: see bench_data.py)")
    parser.add_argument("--cells", nargs="+", default=["simple", "elman", "lstm", "gru"])
    parser.add_argument("--units", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each kind")
    parser.add_argument("--threads", type=int, default=4, help="XNNPACK's threads, beside 1")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--invokes", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="elman-64, LSTM-64, the sample")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--time", nargs=4, help=argparse.SUPPRESS)  # the timing child
    args = parser.parse_args()
    if args.time:
        path, digit, kernels, threads = args.time
        time_file(path, digit, kernels, int(threads), args.repeats, args.invokes)
        return
    if args.quick:
        args.data, args.cells, args.units, args.epochs = "sample", ["elman", "lstm"], [64], 1
        args.repeats, args.invokes = 5, 100
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(
        f"batch-1 LiteRT latency, us per invoke (best / median of {args.repeats} x "
        f"{args.invokes} invokes); accuracy on the {args.data} test digits"
    )
    header = (
        f"{'model':<10} {'quant':<8} {'form':<8} {'act':<5} {'bytes':>8} {'accuracy':>8} "
        f"{'Keras':>7} " + " ".join(f"{f'{k} {t}t':>17}" for k, t in timings(args.threads))
    )
    print(header)
    print("-" * len(header))
    rows = []
    for row in _rows(args):
        rows.append(row)
        print(
            f"{row['model']:<10} {row['quantization']:<8} {row['form']:<8} "
            f"{row['activations']:<5} {row['bytes']:>8,} {row['accuracy']:>8.2%} "
            f"{row['keras_accuracy']:>7.2%} "
            + " ".join(f"{row[f'{k} {t}t']:>17}" for k, t in timings(args.threads)),
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
