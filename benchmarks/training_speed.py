"""Training throughput of `kerasrnn train` per cell kind, against a reference PyTorch loop.

    python benchmarks/training_speed.py --data mnist --levers --epochs 4 --runs 2 --json speed.json
    python benchmarks/training_speed.py --quick          # the bundled sample, a smoke run

Rows, each trained in a fresh process; 64 units, batch 64, seed 0, the defaults otherwise:
    train CELL             `kerasrnn train --cell CELL` (the BPTT loop) with its progress bar,
                           through `training_run.train`, which the command runs
    train CELL --quiet     the same without the progress bar
    train CELL --loop fit  Keras `model.fit`, quiet
    pytorch, N threads     the reference: `nn.RNN(28, 64, batch_first=True)` and
                           `nn.Linear(64, 10)`, Adam 1e-3, `DataLoader(shuffle=True)`, plain
                           `loss.backward(); opt.step()`, on the same training examples, with
                           as many threads as TensorFlow's intra-op pool (one per usable CPU)
    pytorch, 1 thread      the same on one thread: on a busy machine PyTorch's threads wait
                           for each other at every op, and one thread can be many times
                           faster (an epoch stops after `MAX_TORCH_EPOCH_SECONDS`)
With --levers, also each cell kind quiet with one training step per graph call (the speed
before `TrainConfig.steps_per_execution`), with its steps traced for batches of unknown
size (before `training._steps_of_one_batch_size`), with its recurrent layer not unrolled
(before `models.UNROLL_MAX_STEPS`) and with XLA (`--xla`). With --baseline DIR, also each
cell kind quiet with the kerasrnn of another checkout (`git worktree add DIR COMMIT`), side
by side with this one's.

A row's rate is the median samples per second over the epochs after the first (which
traces the graphs and fills the data cache), over all runs; runs go through the rows in
turn (every other run backwards), so that rivals see the same machine. The ratios are to
the faster PyTorch row. kerasrnn's rate is what its run folder records (metrics.csv): the
training examples over each epoch's time, which includes the epoch's validation pass;
PyTorch's epochs time training alone. "samples/CPU-s" divides by the CPU time the process
used instead (all its threads): on a machine shared with other work it varies less.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench_data import CHOICES, MNIST_DIR, data_config

CELLS = ("simple", "elman", "lstm", "gru")
TF_THREADS = len(os.sched_getaffinity(0))  # TensorFlow's default intra-op pool
# A PyTorch epoch ends early after this long (rate: the examples it trained so far), so
# that a row whose threads stall on a busy machine still ends.
MAX_TORCH_EPOCH_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Row:
    """One way of training: `kerasrnn train` with some options, or the PyTorch reference
    (`torch_threads` > 0)."""

    name: str
    cell: str = "simple"
    loop: str = "bptt"
    quiet: bool = False
    xla: bool = False
    unroll: bool = True
    steps_per_execution: int | None = None  # None: TrainConfig's default
    batch_size_known: bool = True
    code: str | None = None  # another checkout's kerasrnn (None: this one)
    torch_threads: int = 0


def rows(cells: list[str], levers: bool, baseline: str | None = None) -> list[Row]:
    out = []
    for cell in cells:
        if baseline:
            out.append(
                Row(
                    f"train {cell} --quiet, code at {code_label(baseline)}",
                    cell,
                    quiet=True,
                    code=baseline,
                )
            )
        out += [
            Row(f"train {cell}", cell),
            Row(f"train {cell} --quiet", cell, quiet=True),
            Row(f"train {cell} --loop fit", cell, loop="fit", quiet=True),
        ]
        if levers:
            out += [
                Row(
                    f"train {cell} --quiet --steps-per-execution 1",
                    cell,
                    quiet=True,
                    steps_per_execution=1,
                ),
                Row(
                    f"train {cell} --quiet, batch size unknown",
                    cell,
                    quiet=True,
                    batch_size_known=False,
                ),
                Row(f"train {cell} --quiet, no unroll", cell, quiet=True, unroll=False),
                Row(f"train {cell} --quiet --xla", cell, quiet=True, xla=True),
            ]
    out.append(Row(f"pytorch, {TF_THREADS} threads", torch_threads=TF_THREADS))
    if TF_THREADS > 1:
        out.append(Row("pytorch, 1 thread", torch_threads=1))
    return out


def worker(task: dict) -> dict:
    """Trains one row in this process.

    Returns:
        {"rates": samples/s per epoch, "cpu_rates": samples per CPU-second per epoch}.
    """
    row = Row(**task["row"])
    config = data_config(task["data"], task["data_dir"], batch_size=task["batch_size"])
    if row.torch_threads:
        return pytorch_reference(config, task["units"], task["epochs"], row.torch_threads)
    import keras

    from kerasrnn import models
    from kerasrnn.config import ModelConfig, TrainConfig
    from kerasrnn.training_run import train

    class EpochCpuTime(keras.callbacks.Callback):
        """The process's CPU seconds of each epoch (no per-batch hook: the progress bar
        keeps running beside the training step, as under `kerasrnn train`)."""

        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.process_time() - self.start)

    if not row.unroll:
        models.UNROLL_MAX_STEPS = 0
    if not row.batch_size_known:
        from kerasrnn import training

        training._steps_of_one_batch_size = training._steps_in_one_call
    clock = EpochCpuTime()
    options = {}
    if row.steps_per_execution is not None:
        options["steps_per_execution"] = row.steps_per_execution
    result = train(
        ModelConfig(cell=row.cell, units=task["units"]),
        config,
        TrainConfig(
            epochs=task["epochs"],
            loop=row.loop,
            jit_compile=row.xla,
            patience=None,
            verbose=0 if row.quiet else 1,
            **options,
        ),
        os.path.join(task["tmp"], "run"),
        callbacks=[clock],
    )
    rates = [epoch["samples_per_second"] for epoch in result.history]
    wall = [epoch["seconds"] for epoch in result.history]
    return {
        "rates": rates,
        "cpu_rates": [r * w / cpu for r, w, cpu in zip(rates, wall, clock.seconds)],
    }


def pytorch_reference(config, units: int, epochs: int, threads: int) -> dict:
    """The reference loop (see the module's docstring) on the training examples of `config`."""
    import torch
    from torch import nn

    from kerasrnn import data

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images, labels = data.load_arrays(config, "train")
    x = torch.from_numpy(images.astype("float32") / 255.0)  # [n, 28 steps, 28 features]
    y = torch.from_numpy(labels.astype("int64"))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=config.batch_size, shuffle=True
    )

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(28, units, batch_first=True)
            self.fc = nn.Linear(units, 10)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.fc(out[:, -1])

    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    rates, cpu_rates = [], []
    for _ in range(epochs):
        start, cpu, seen = time.perf_counter(), time.process_time(), 0
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            seen += len(yb)
            if time.perf_counter() - start > MAX_TORCH_EPOCH_SECONDS:
                break  # threads stalled on a busy machine: the rate so far says enough
        rates.append(seen / (time.perf_counter() - start))
        cpu_rates.append(seen / (time.process_time() - cpu))
    return {"rates": rates, "cpu_rates": cpu_rates, "torch": torch.__version__}


def code_label(checkout: str) -> str:
    """The commit of a checkout (`git worktree add DIR COMMIT`), or its folder's name."""
    done = subprocess.run(
        ["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else os.path.basename(checkout)


def run_row(row: Row, args, tmp: str) -> dict | str:
    """Runs one row in a fresh process; returns its result, or why it did not run."""
    if row.torch_threads and importlib.util.find_spec("torch") is None:
        return "skipped: torch is not installed (pip install -e '.[bench]')"
    task = {
        "row": dataclasses.asdict(row),
        "tmp": tmp,
        "units": args.units,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "data": args.data,
        "data_dir": args.data_dir,
    }
    result_path = os.path.join(tmp, "result.json")
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(task), "--json", result_path],
        stdout=subprocess.DEVNULL,  # the progress bar is drawn, and thrown away
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **code_path(row.code)},
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return f"failed: {lines[-1] if lines else f'exit status {done.returncode}'}"
    with open(result_path) as f:
        return json.load(f)


def code_path(checkout: str | None) -> dict:
    """The environment that makes a row's process import kerasrnn from `checkout`."""
    if checkout is None:
        return {}
    return {"PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))}


def ratio(medians: dict, a: str, b: str) -> str:
    return f"{medians[a] / medians[b]:.2f}" if a in medians and b in medians else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=CHOICES, default="mnist")
    parser.add_argument("--data-dir", help=f"the IDX folder (mnist: default {MNIST_DIR})")
    parser.add_argument("--epochs", type=int, default=4, help="per row; the first is not timed")
    parser.add_argument("--runs", type=int, default=1, help="times through all the rows")
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--levers", action="store_true", help="add one-step-a-call, no-unroll and XLA rows"
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="add rows trained by the kerasrnn of this checkout (git worktree add DIR COMMIT)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the sample, simple and elman, 3 epochs, one run"
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one row, in the fresh process `run_row` started
        result = worker(json.loads(args.worker))
        with open(args.json, "w") as f:
            json.dump(result, f)
        return
    if args.quick:
        args.data, args.epochs, args.runs, args.cells = "sample", 3, 1, ["simple", "elman"]
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    data_config(args.data, args.data_dir)  # refuses a folder without the IDX files, here

    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "kerasrnn", "__init__.py")):
        parser.error(f"--baseline {args.baseline}: no kerasrnn package in that folder")
    table = rows(args.cells, args.levers, args.baseline)
    rates = {row.name: [] for row in table}
    cpu_rates = {row.name: [] for row in table}
    notes = {}
    for run in range(args.runs):
        for row in table if run % 2 == 0 else table[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                result = run_row(row, args, tmp)
            if isinstance(result, str):
                notes[row.name] = result
                print(f"run {run + 1}/{args.runs} {row.name}: {result}", flush=True)
                continue
            rates[row.name] += result["rates"][1:]
            cpu_rates[row.name] += result["cpu_rates"][1:]
            epochs = ", ".join(f"{rate:,.0f}" for rate in result["rates"])
            print(f"run {run + 1}/{args.runs} {row.name}: {epochs} samples/s", flush=True)

    medians = {name: statistics.median(r) for name, r in rates.items() if r}
    cpu_medians = {name: statistics.median(r) for name, r in cpu_rates.items() if r}
    reference = max(
        (r for r in table if r.torch_threads and r.name in medians),
        default=None,
        key=lambda r: medians[r.name],
    )
    print(
        f"\n{args.data}, batch {args.batch_size}, {args.units} units: median over epochs "
        f"2-{args.epochs} of {args.runs} run(s); TensorFlow's intra-op pool: {TF_THREADS} "
        f"threads; vs PyTorch: to '{reference.name if reference else 'none'}'"
    )
    width = max(len(row.name) for row in table)
    print(
        f"{'row':<{width}} {'samples/s':>10} {'vs PyTorch':>10} {'samples/CPU-s':>14} {'epochs':>7}"
    )
    for row in table:
        if row.name not in medians:
            print(f"{row.name:<{width}} {notes.get(row.name, '')}")
            continue
        rate = medians[row.name]
        versus = f"{rate / medians[reference.name]:.2f}" if reference else "n/a"
        print(
            f"{row.name:<{width}} {rate:>10,.0f} {versus:>10} {cpu_medians[row.name]:>14,.0f} "
            f"{len(rates[row.name]):>7}"
        )
    print()
    for cell in args.cells:
        quiet = f"train {cell} --quiet"
        line = (
            f"{cell}: progress bar on/off {ratio(medians, f'train {cell}', quiet)}, "
            f"bptt/fit {ratio(medians, quiet, f'train {cell} --loop fit')}"
        )
        if args.baseline:
            before = f"{quiet}, code at {code_label(args.baseline)}"
            line += f", this code/baseline {ratio(medians, quiet, before)}"
        if args.levers:
            line += (
                f", batch size known/not {ratio(medians, quiet, f'{quiet}, batch size unknown')}"
                f", unrolled/not {ratio(medians, quiet, f'{quiet}, no unroll')}, "
                f"XLA/not {ratio(medians, f'{quiet} --xla', quiet)}"
            )
        print(line)
    if {"simple", "elman"} <= set(args.cells):
        print(
            f"elman/simple, quiet: {ratio(medians, 'train elman --quiet', 'train simple --quiet')}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "settings": {k: v for k, v in vars(args).items() if k != "worker"},
                    "tensorflow_threads": TF_THREADS,
                    "reference": reference.name if reference else None,
                    "rows": [
                        {
                            **dataclasses.asdict(row),
                            "rates": rates[row.name],
                            "cpu_rates": cpu_rates[row.name],
                            "median": medians.get(row.name),
                            "cpu_median": cpu_medians.get(row.name),
                            "vs_pytorch": medians[row.name] / medians[reference.name]
                            if reference and row.name in medians
                            else None,
                            "note": notes.get(row.name),
                        }
                        for row in table
                    ],
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
