"""Batch-1 latency of every edge file in LiteRT, with its size and accuracy beside it.

    python benchmarks/edge_latency.py --data mnist [--units 64 128] [--cells elman lstm gru]
    python benchmarks/edge_latency.py --data mnist --recipe --cases defaults --units 128
    python benchmarks/edge_latency.py --quick     # elman-64 and LSTM-64 on the sample: minutes

Each kind trains `--epochs` epochs at the default rate held constant (`--recipe`: the
default recipe, `TrainConfig()`), and is converted the way `kerasrnn export` does by
default for each target (`--target litert`, float32 and int8; `--target micro`, int8) and,
with `--cases all`, in every quantization x graph form x int8 activations that `to_tflite`
writes (int8 calibrated on the training digits `kerasrnn export` calibrates on:
`CALIBRATION_IMAGES`, 4,000). Each kind trains once per `--seeds` seed (the model is named
with its seed where there are several): the int8 defaults depend on the trained weights.
Each file is timed in a fresh process
(an abort costs that process only) with LiteRT's builtin kernels
(`BUILTIN_WITHOUT_DEFAULT_DELEGATES`) and with its XNNPACK delegate, on one thread and on
`--threads` (4, a phone's big cores; more threads than cores only slow it): `--repeats`
timings of `--invokes` invokes of one test digit, best and median microseconds per invoke.
"runtime" names the kernels `kerasrnn.export.runtime.Classifier` (and `kerasrnn predict`)
runs the file with. Accuracy and top-1 agreement with Keras: the file's on the test digits,
in that runtime. A second table sets each default int8 file's latency beside the default
float32 file's, both on the runtime's kernels and one thread.
Prints the tables; `--json` also writes the rows.
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

# (target or None, quantization, graph form, int8 activations): a target's row is what
# `to_tflite` writes by default for it ("auto" form and activations); the others pin both,
# as `benchmarks/export_sizes.py` lists them.
DEFAULTS = (
    ("litert", "none", "auto", "auto"),
    ("litert", "int8", "auto", "auto"),
    ("micro", "int8", "auto", "auto"),
)
EVERY_FORM = (
    (None, "none", "loop", "auto"),
    (None, "none", "unrolled", "auto"),
    (None, "float16", "unrolled", "auto"),
    (None, "dynamic", "unrolled", "auto"),
    (None, "int8", "unrolled", "int16"),
    (None, "int8", "unrolled", "int8"),
    (None, "none", "fused", "auto"),
    (None, "int8", "fused", "auto"),
)
CASES = {"defaults": DEFAULTS, "all": DEFAULTS + EVERY_FORM}


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


def _timed(path: str, digit: str, kernels: str, threads: int, args) -> dict | str:
    """{"best_us", "median_us"} of one file, measured in a child; or why none."""
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
    return json.loads(child.stdout.strip().splitlines()[-1])


def _shown(timing: dict | str) -> str:
    if isinstance(timing, str):
        return timing
    return f"{timing['best_us']:.1f} / {timing['median_us']:.1f}"


def _train(cell: str, units: int, config, args, folder: str):
    """A classifier of `cell` x `units` trained on `config`'s training split: `--epochs` at
    a constant rate, or with `--recipe` as `kerasrnn train` trains it by default (the
    recipe's schedule, a validation split, the best epoch kept) into `folder`."""
    from kerasrnn import data
    from kerasrnn.config import ModelConfig, TrainConfig
    from kerasrnn.models import build_classifier
    from kerasrnn.training import compile_model, fit
    from kerasrnn.training_run import train

    if args.recipe:
        return train(
            ModelConfig(cell=cell, units=units), config, TrainConfig(verbose=0), folder
        ).model
    constant = TrainConfig(epochs=args.epochs, schedule="constant", verbose=0)
    model = compile_model(build_classifier(cell=cell, units=units), constant)
    fit(model, data.epochs(config, "train"), None, constant)
    return model


def _rows(args):
    """Trains each kind once per seed, converts it every way and times each file; yields
    table rows."""
    import keras
    from bench_data import data_config

    from kerasrnn import data
    from kerasrnn.export.workflow import CALIBRATION_IMAGES

    config = data_config(args.data, args.data_dir)
    calibration, _ = data.load_sequences(  # as `kerasrnn export` calibrates
        data_config(args.data, args.data_dir, max_examples=CALIBRATION_IMAGES), "train"
    )
    test_x, test_y = data.load_sequences(config, "test")
    with tempfile.TemporaryDirectory() as tmp:
        digit = os.path.join(tmp, "digit.npy")
        np.save(digit, test_x[:1])
        for cell in args.cells:
            for units in args.units:
                for seed in args.seeds:
                    keras.utils.set_random_seed(seed)
                    label = f"{cell}-{units}" + (f" s{seed}" if len(args.seeds) > 1 else "")
                    folder = os.path.join(tmp, f"{cell}{units}s{seed}")
                    model = _train(cell, units, config, args, folder)
                    yield from _model_rows(
                        model, cell, label, calibration, test_x, test_y, digit, args
                    )


def _model_rows(model, cell: str, label: str, calibration, test_x, test_y, digit: str, args):
    """The rows of one trained model of `cell`, named `label` in the table: each case of
    `--cases` converted and timed."""
    from kerasrnn.export.convert import to_tflite
    from kerasrnn.export.runtime import Classifier

    expected = model.predict(test_x, verbose=0, batch_size=500).argmax(-1)
    folder = os.path.dirname(digit)
    for target, quantization, form, activations in CASES[args.cases]:
        if form == "fused" and cell != "lstm":  # the fused op exists for LSTM only
            continue
        name = f"{label.replace(' ', '')}-{target}-{quantization}-{form}-{activations}"
        path = os.path.join(folder, f"{name}.tflite")
        written = to_tflite(
            model,
            path,
            quantization,
            calibration if quantization == "int8" else None,
            form=form,
            activations=activations,
            target=target or "litert",
        )
        classifier = Classifier(path)
        predicted = classifier.predict(test_x).argmax(-1)
        yield {
            "model": label,
            "default": f"{target} default" if target else "-",
            "quantization": quantization,
            "form": written.form.split(",")[0],
            "activations": written.activations or "-",
            "bytes": written.size_bytes,
            "accuracy": float((predicted == test_y).mean()),
            "agreement": float((predicted == expected).mean()),
            "keras_accuracy": float((expected == test_y).mean()),
            "runtime": classifier.kernels,
            **{
                f"{kernels} {threads}t": _timed(path, digit, kernels, threads, args)
                for kernels, threads in timings(args.threads)
            },
        }


def _speedups(rows: list[dict]) -> list[str]:
    """Lines of the second table: each model's default int8 file (LiteRT's) against its
    default float32 file, on the runtime's kernels and one thread."""
    lines = []
    for model in dict.fromkeys(row["model"] for row in rows):
        defaults = {
            row["quantization"]: row
            for row in rows
            if row["model"] == model and row["default"] == "litert default"
        }
        if set(defaults) != {"none", "int8"}:
            continue
        float32, int8 = defaults["none"], defaults["int8"]
        times = [row[f"{row['runtime']} 1t"] for row in (float32, int8)]
        if any(isinstance(t, str) for t in times):
            continue
        best, median = (times[1][key] / times[0][key] for key in ("best_us", "median_us"))
        lines.append(
            f"{model:<12} {float32['form']:<9} {_shown(times[0]):>15} "
            f"{int8['form']:<9} {int8['activations']:<5} {_shown(times[1]):>15} "
            f"{best:>6.2f} {median:>6.2f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=("sample", "mnist", "fashion"))
    parser.add_argument("--data-dir", help="the IDX folder (default: see bench_data.py)")
    parser.add_argument("--cells", nargs="+", default=["simple", "elman", "lstm", "gru"])
    parser.add_argument("--units", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each kind")
    parser.add_argument(
        "--recipe", action="store_true", help="train with the default recipe, not --epochs"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="train each kind once per seed"
    )
    parser.add_argument("--cases", default="all", choices=tuple(CASES))
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
        f"{args.invokes} invokes); accuracy and agreement with Keras on the {args.data} "
        f"test digits"
    )
    header = (
        f"{'model':<12} {'default':<14} {'quant':<8} {'form':<10} {'act':<5} {'bytes':>8} "
        f"{'accuracy':>8} {'agree':>7} {'Keras':>7} {'runtime':>8} "
        + " ".join(f"{f'{k} {t}t':>15}" for k, t in timings(args.threads))
    )
    print(header)
    print("-" * len(header))
    rows = []
    for row in _rows(args):
        rows.append(row)
        print(
            f"{row['model']:<12} {row['default']:<14} {row['quantization']:<8} "
            f"{row['form']:<10} {row['activations']:<5} {row['bytes']:>8,} "
            f"{row['accuracy']:>8.2%} {row['agreement']:>7.2%} {row['keras_accuracy']:>7.2%} "
            f"{row['runtime']:>8} "
            + " ".join(f"{_shown(row[f'{k} {t}t']):>15}" for k, t in timings(args.threads)),
            flush=True,
        )
    print()
    print("LiteRT's defaults in the runtime's kernels, one thread: int8 / float32 latency")
    header = (
        f"{'model':<12} {'float32':<9} {'us':>15} {'int8':<9} {'act':<5} {'us':>15} "
        f"{'best':>6} {'median':>6}"
    )
    print(header)
    print("-" * len(header))
    for line in _speedups(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
