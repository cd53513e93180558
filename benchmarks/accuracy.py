"""Test accuracy of each cell with the default recipe, mean and spread over seeds.

    python benchmarks/accuracy.py --data mnist|fashion [--cells elman,lstm] [--units 128]
        [--seeds 0,1,2] [--json accuracy.json]
    python benchmarks/accuracy.py --data mnist --view pixels --cells lstm --seeds 0 --epochs 2
    python benchmarks/accuracy.py --data mnist --view permuted --cells lmu --units 512 \
        --hidden 256 --dropout 0.2 --activation relu --epochs 10 --int8
    python benchmarks/accuracy.py --data mnist --view pixels --cells gru --seconds 200
    python benchmarks/accuracy.py --quick        # the bundled sample: a few minutes

Each run is `kerasrnn train` with no other flags than the cell, the units, the data and the
seed (the defaults are the recipe; `--layers`, `--epochs`, `--weight-decay`, `--dropout`,
`--shift` and `--flip` change it, and the table's heading says so), scored on the 10,000
t10k digits (or the sample's 1,000 test digits). The table gives, per cell: parameters,
epochs run, wall time, test accuracy as mean ± standard deviation over the seeds, the goal
for that cell and data (`GOALS`) and whether the mean meets it, and the training time until
the validation accuracy first reached `--target` (validation, so that the test split
decides nothing).
`--view pixels` reads each digit pixel by pixel (784 steps), `--view permuted` in a fixed
random pixel order, with `--epochs` to bound it, or `--seconds` to give each run the same
training time (it stops within an epoch; "epochs" then counts the share of one run). The
goals there are the Legendre Memory Unit's (`LONG_GOALS`). `--int8` also exports each model
to an int8 .tflite (calibrated on 1,000 training digits) and scores it in LiteRT on the same
test digits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

import keras
from bench_data import CHOICES, data_config

import kerasrnn

# Test accuracy each cell kind should reach (mean over seeds, rows view, 128 units).
GOALS = {
    "mnist": {"elman": 0.98, "simple": 0.98, "lstm": 0.99, "gru": 0.99},
    "fashion": {"elman": 0.88, "simple": 0.88, "lstm": 0.91, "gru": 0.91},
}
# On MNIST read pixel by pixel (784 steps), within 10 epochs (issue 25; the Legendre Memory
# Unit papers report 98.5-99.0% and 97.2%).
LONG_GOALS = {"pixels": {"lmu": 0.985}, "permuted": {"lmu": 0.96}}
# int8 export (`--int8`): calibration digits from the training split.
CALIBRATION_DIGITS = 1000


@dataclasses.dataclass
class Run:
    """One training run: its cell, seed and what it measured."""

    cell: str
    seed: int
    parameters: int
    epochs: float
    wall_s: float
    test_accuracy: float
    seconds_to_target: float | None
    int8_accuracy: float | None = None


def seconds_to(history: list[dict], target: float) -> float | None:
    """Training seconds until the validation accuracy first reached `target` (None: never)."""
    elapsed = 0.0
    for row in history:
        elapsed += row["seconds"]
        if row["val_accuracy"] >= target:
            return elapsed
    return None


class TimeBudget(keras.callbacks.Callback):
    """Stops training once `seconds` of it have passed (None: never); within an epoch,
    `training.fit` then ends that epoch as a whole one. `share` is how much of its last
    epoch ran."""

    def __init__(self, seconds: float | None):
        super().__init__()
        self.seconds, self.share = seconds, 1.0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds is not None and time.perf_counter() - self.start >= self.seconds:
            self.model.stop_training = True
            self.share = (batch + 1) / self.params["steps"]


def train_once(cell: str, seed: int, args, data: kerasrnn.DataConfig) -> Run:
    """Trains one model with the default recipe and scores it on the test split (and, with
    `args.int8`, its int8 file)."""
    model = kerasrnn.ModelConfig(
        cell=cell,
        units=args.units,
        layers=args.layers,
        dropout=args.dropout,
        activation=args.activation,
        hidden=args.hidden,
        memory_order=args.memory_order,
    )
    config = kerasrnn.TrainConfig(seed=seed, verbose=0, weight_decay=args.weight_decay)
    if args.epochs:
        config = dataclasses.replace(config, epochs=args.epochs)
    budget = TimeBudget(args.seconds)
    data = dataclasses.replace(data, seed=seed)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = kerasrnn.train(model, data, config, out, callbacks=[budget])
        wall = time.perf_counter() - start
        int8 = int8_accuracy(result.model, data, out) if args.int8 else None
    return Run(
        cell,
        seed,
        int(result.test["parameters"]),
        len(result.history) - 1 + budget.share,
        wall,
        float(result.test["test_accuracy"]),
        seconds_to(result.history, args.target),
        int8,
    )


def int8_accuracy(model, data: kerasrnn.DataConfig, folder: str) -> float:
    """Test accuracy of `model` exported to an int8 .tflite, run in LiteRT."""
    from kerasrnn.data import load_sequences
    from kerasrnn.export import to_tflite
    from kerasrnn.export.runtime import Classifier

    calibration, _ = load_sequences(
        dataclasses.replace(data, max_examples=CALIBRATION_DIGITS), "train"
    )
    path = os.path.join(folder, "int8.tflite")
    # for TFLM (int16 activations), as the README's long-sequence table was measured
    to_tflite(model, path, "int8", calibration, target="micro")
    x, labels = load_sequences(data, "test")
    return float((Classifier(path).predict(x).argmax(1) == labels).mean())


def table(runs: list[Run], target: float, goals: dict) -> str:
    """One row per cell: parameters, epochs, wall time, accuracy mean ± std, its goal,
    time to target (and the int8 file's test accuracy, when measured)."""
    int8 = any(r.int8_accuracy is not None for r in runs)
    lines = [
        f"{'cell':<7} {'params':>8} {'epochs':>7} {'wall s':>8} {'test accuracy':>17} "
        f"{'goal':>11} {f'to {target:.0%} (val)':>14}" + (f" {'int8 acc':>9}" if int8 else "")
    ]
    for cell in dict.fromkeys(r.cell for r in runs):
        rows = [r for r in runs if r.cell == cell]
        accuracies = [r.test_accuracy for r in rows]
        spread = statistics.stdev(accuracies) if len(rows) > 1 else 0.0
        reached = [r.seconds_to_target for r in rows if r.seconds_to_target is not None]
        to_target = "never"
        if reached:
            to_target = f"{statistics.median(reached):.0f} s ({len(reached)}/{len(rows)})"
        mean = statistics.mean(accuracies)
        goal = "-"
        if cell in goals:
            goal = f"{100 * goals[cell]:g}% {'met' if mean >= goals[cell] else 'NOT'}"
        epochs = statistics.mean(r.epochs for r in rows)
        lines.append(
            f"{cell:<7} {rows[0].parameters:>8,} "
            f"{epochs:>7.{1 if epochs >= 1 else 2}f} "
            f"{statistics.mean(r.wall_s for r in rows):>8.0f} "
            f"{mean:>9.2%} ± {spread:.2%} {goal:>11} {to_target:>14}"
            + (f" {statistics.mean(r.int8_accuracy for r in rows):>9.2%}" if int8 else "")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=CHOICES, default="mnist")
    parser.add_argument("--data-dir", help="the IDX folder (default: ../shared/mnist, Debian's)")
    parser.add_argument("--cells", default="elman,simple,lstm,gru")
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1, help="stacked recurrent layers")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--target", type=float, help="validation accuracy to time (default: elman's goal)"
    )
    parser.add_argument("--view", choices=("rows", "pixels", "permuted"), default="rows")
    parser.add_argument("--epochs", type=int, help="default: TrainConfig's (the recipe)")
    parser.add_argument(
        "--seconds", type=float, help="stop each run's training after this many seconds"
    )
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's (0: Adam)")
    parser.add_argument("--dropout", type=float, default=0.0, help="before the output layer")
    parser.add_argument("--activation", default="tanh", help="simple, elman: recurrent; lmu: h")
    parser.add_argument("--hidden", type=int, default=0, help="Dense(relu) units before logits")
    parser.add_argument("--memory-order", type=int, default=256, help="lmu: its memory's size")
    parser.add_argument("--shift", type=int, default=0, help="augment: move images up to N px")
    parser.add_argument("--flip", action="store_true", help="augment: mirror half the images")
    parser.add_argument("--int8", action="store_true", help="also score each int8 file")
    parser.add_argument("--json", help="also write the runs here")
    parser.add_argument("--quick", action="store_true", help="sample, 2 epochs, 1 seed, 32 units")
    args = parser.parse_args()
    if args.quick:
        args.data, args.seeds, args.units, args.epochs = "sample", "0", 32, 2
    # the goals are for full data read by rows with 128 units, or MNIST pixel by pixel
    goals = GOALS.get(args.data, {}) if args.view == "rows" and args.units == 128 else {}
    if args.view != "rows" and args.data == "mnist":
        goals = LONG_GOALS[args.view]
    if args.target is None:
        args.target = GOALS.get(args.data, GOALS["mnist"])["elman"]
    data = data_config(args.data, args.data_dir, view=args.view, shift=args.shift, flip=args.flip)
    runs = []
    for cell in args.cells.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            runs.append(train_once(cell, seed, args, data))
            print(
                f"{cell}-{args.units} seed {seed}: {runs[-1].test_accuracy:.2%} "
                f"in {runs[-1].epochs:.2f} epochs, {runs[-1].wall_s:.0f} s"
                + (f", int8 {runs[-1].int8_accuracy:.2%}" if args.int8 else ""),
                flush=True,
            )
    name = "the sample" if data.source == "sample" else f"full {data.dataset} ({data.data_dir})"
    changes = [
        f"{flag} {value}"
        for flag, value, default in (
            ("--layers", args.layers, 1),
            ("--epochs", args.epochs, None),
            ("--seconds", args.seconds, None),
            ("--hidden", args.hidden, 0),
            ("--activation", args.activation, "tanh"),
            ("--memory-order", args.memory_order, 256),
            ("--weight-decay", args.weight_decay, 0.0),
            ("--dropout", args.dropout, 0.0),
            ("--shift", args.shift, 0),
        )
        if value != default
    ] + (["--flip"] if args.flip else [])
    recipe = "the defaults" + (f" with {' '.join(changes)}" if changes else "")
    print(f"\n{args.units} units, {args.view}, {recipe}, {name}, seeds {args.seeds}")
    print(table(runs, args.target, goals))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in runs], f, indent=2)


if __name__ == "__main__":
    main()
