"""Test accuracy of each cell with the default recipe, mean and spread over seeds.

    python benchmarks/accuracy.py --data mnist|fashion [--cells elman,lstm] [--units 128]
        [--seeds 0,1,2] [--json accuracy.json]
    python benchmarks/accuracy.py --data mnist --view pixels --cells lstm --seeds 0 --epochs 2
    python benchmarks/accuracy.py --quick        # the bundled sample: a few minutes

Each run is `kerasrnn train` with no other flags than the cell, the units, the data and the
seed (the defaults are the recipe; `--layers`, `--epochs`, `--weight-decay`, `--dropout`,
`--shift` and `--flip` change it, and the table's heading says so), scored on the 10,000
t10k digits (or the sample's 1,000 test digits). The table gives, per cell: parameters,
epochs run, wall time, test accuracy as mean ± standard deviation over the seeds, the goal
for that cell and data (`GOALS`) and whether the mean meets it, and the training time until
the validation accuracy first reached `--target` (validation, so that the test split
decides nothing).
`--view pixels` reads each digit pixel by pixel (784 steps), with `--epochs` to bound it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

from bench_data import CHOICES, data_config

import kerasrnn

# Test accuracy each cell kind should reach (mean over seeds, rows view, 128 units).
GOALS = {
    "mnist": {"elman": 0.98, "simple": 0.98, "lstm": 0.99, "gru": 0.99},
    "fashion": {"elman": 0.88, "simple": 0.88, "lstm": 0.91, "gru": 0.91},
}


@dataclasses.dataclass
class Run:
    """One training run: its cell, seed and what it measured."""

    cell: str
    seed: int
    parameters: int
    epochs: int
    wall_s: float
    test_accuracy: float
    seconds_to_target: float | None


def seconds_to(history: list[dict], target: float) -> float | None:
    """Training seconds until the validation accuracy first reached `target` (None: never)."""
    elapsed = 0.0
    for row in history:
        elapsed += row["seconds"]
        if row["val_accuracy"] >= target:
            return elapsed
    return None


def train_once(cell: str, seed: int, args, data: kerasrnn.DataConfig) -> Run:
    """Trains one model with the default recipe and scores it on the test split."""
    model = kerasrnn.ModelConfig(
        cell=cell, units=args.units, layers=args.layers, dropout=args.dropout
    )
    config = kerasrnn.TrainConfig(seed=seed, verbose=0, weight_decay=args.weight_decay)
    if args.epochs:
        config = dataclasses.replace(config, epochs=args.epochs)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = kerasrnn.train(model, dataclasses.replace(data, seed=seed), config, out)
        wall = time.perf_counter() - start
    return Run(
        cell,
        seed,
        int(result.test["parameters"]),
        len(result.history),
        wall,
        float(result.test["test_accuracy"]),
        seconds_to(result.history, args.target),
    )


def table(runs: list[Run], target: float, goals: dict) -> str:
    """One row per cell: parameters, epochs, wall time, accuracy mean ± std, its goal,
    time to target."""
    lines = [
        f"{'cell':<7} {'params':>8} {'epochs':>7} {'wall s':>8} {'test accuracy':>17} "
        f"{'goal':>11} {f'to {target:.0%} (val)':>14}"
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
            goal = f"{goals[cell]:.0%} {'met' if mean >= goals[cell] else 'NOT'}"
        lines.append(
            f"{cell:<7} {rows[0].parameters:>8,} "
            f"{statistics.mean(r.epochs for r in rows):>7.1f} "
            f"{statistics.mean(r.wall_s for r in rows):>8.0f} "
            f"{mean:>9.2%} ± {spread:.2%} {goal:>11} {to_target:>14}"
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
    parser.add_argument("--view", choices=("rows", "pixels"), default="rows")
    parser.add_argument("--epochs", type=int, help="default: TrainConfig's (the recipe)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's (0: Adam)")
    parser.add_argument("--dropout", type=float, default=0.0, help="before the output layer")
    parser.add_argument("--shift", type=int, default=0, help="augment: move images up to N px")
    parser.add_argument("--flip", action="store_true", help="augment: mirror half the images")
    parser.add_argument("--json", help="also write the runs here")
    parser.add_argument("--quick", action="store_true", help="sample, 2 epochs, 1 seed, 32 units")
    args = parser.parse_args()
    if args.quick:
        args.data, args.seeds, args.units, args.epochs = "sample", "0", 32, 2
    # the goals are for full data read by rows with 128 units
    goals = GOALS.get(args.data, {}) if args.view == "rows" and args.units == 128 else {}
    if args.target is None:
        args.target = GOALS.get(args.data, GOALS["mnist"])["elman"]
    data = data_config(args.data, args.data_dir, view=args.view, shift=args.shift, flip=args.flip)
    runs = []
    for cell in args.cells.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            runs.append(train_once(cell, seed, args, data))
            print(
                f"{cell}-{args.units} seed {seed}: {runs[-1].test_accuracy:.2%} "
                f"in {runs[-1].epochs} epochs, {runs[-1].wall_s:.0f} s",
                flush=True,
            )
    name = "the sample" if data.source == "sample" else f"full {data.dataset} ({data.data_dir})"
    changes = [
        f"{flag} {value}"
        for flag, value, default in (
            ("--layers", args.layers, 1),
            ("--epochs", args.epochs, None),
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
