"""Training throughput of the explicit BPTT loop, Keras fit, and both with XLA.

    python benchmarks/training_speed.py [--cell elman] [--units 64] [--epochs 4]

Each configuration trains the same model on the bundled sample; the table gives the median
training samples per second over the epochs after the first (which includes tracing), and
the ratio to the BPTT loop, all measured in one run (timings here are noisy: compare ratios).
"""

import argparse
import statistics
import tempfile

from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
from kerasrnn.training_run import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="elman")
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    config = DataConfig(source="sample")
    results = {}
    for loop in ("bptt", "fit"):
        for xla in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                result = train(
                    ModelConfig(cell=args.cell, units=args.units),
                    config,
                    TrainConfig(
                        epochs=args.epochs, loop=loop, jit_compile=xla, patience=None, verbose=0
                    ),
                    tmp,
                )
            rates = [row["samples_per_second"] for row in result.history[1:]]
            results[(loop, xla)] = statistics.median(rates)
    base = results[("bptt", False)]
    print(f"{args.cell}-{args.units} on the bundled sample, {args.epochs} epochs")
    print(f"{'loop':<6} {'XLA':<5} {'samples/s (median)':>19} {'vs bptt':>8}")
    for (loop, xla), rate in results.items():
        print(f"{loop:<6} {xla!s:<5} {rate:>19,.0f} {rate / base:>8.2f}")


if __name__ == "__main__":
    main()
