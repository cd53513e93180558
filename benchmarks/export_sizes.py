"""File size and TFLM arena of every model kind, graph form and quantization.

    python benchmarks/export_sizes.py [--units 64] [--cells elman lstm]
    python benchmarks/export_sizes.py --quick      # Elman and LSTM only: a minute or two

Each model trains one epoch on the bundled sample first (sizes do not depend on the weights,
but int8 calibration of an untrained model meets constant tensors); int8 files are
calibrated on its training digits, with int16 activations ("int8/a16", the default) and
with int8 activations throughout ("int8/a8"); LSTM also in the fused form (its default).
Prints a table.
"""

import argparse
import os
import tempfile

import numpy as np

from kerasrnn import data
from kerasrnn.config import DataConfig, TrainConfig
from kerasrnn.errors import MicroError
from kerasrnn.export.convert import to_tflite
from kerasrnn.export.micro import run_micro
from kerasrnn.models import build_classifier
from kerasrnn.training import compile_model, fit

KINDS = (("simple", 1), ("elman", 1), ("lstm", 1), ("gru", 1), ("elman", 2))
# (quantization, graph form, int8 activations)
CASES = (
    ("none", "loop", None),
    ("none", "unrolled", None),
    ("float16", "loop", None),
    ("dynamic", "loop", None),
    ("int8", "unrolled", "int16"),
    ("int8", "unrolled", "int8"),
    ("none", "fused", None),
    ("float16", "fused", None),
    ("int8", "fused", None),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument(
        "--cells", nargs="+", default=sorted({cell for cell, _ in KINDS}), help="only these cells"
    )
    parser.add_argument("--quick", action="store_true", help="elman and lstm only")
    args = parser.parse_args()
    if args.quick:
        args.cells = ["elman", "lstm"]
    images, _ = data.load_arrays(DataConfig(source="sample"), "train+validation")
    calibration = images[:1000].astype(np.float32) / 255.0
    header = (
        f"{'model':<12} {'params':>7} {'param bytes':>11} {'quant':<9} {'form':<9} "
        f"{'file bytes':>10} {'ratio':>6} {'TFLM arena':>10}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for cell, layers in (kind for kind in KINDS if kind[0] in args.cells):
            config = TrainConfig(epochs=1, schedule="constant", verbose=0)
            model = compile_model(
                build_classifier(cell=cell, units=args.units, layers=layers), config
            )
            fit(model, data.pipeline(DataConfig(source="sample"), "train"), None, config)
            name = f"{cell}x{layers}" if layers > 1 else cell
            for quantization, form, activations in CASES:
                if form == "fused" and cell != "lstm":  # the fused op exists for LSTM only
                    continue
                label = f"{quantization}/a{activations[3:]}" if activations else quantization
                path = os.path.join(tmp, f"{name}-{label.replace('/', '-')}-{form}.tflite")
                written = to_tflite(
                    model,
                    path,
                    quantization,
                    calibration if quantization == "int8" else None,
                    form=form,
                    activations=activations or "int16",
                    target="micro",
                )
                arena = "-"
                if quantization in ("none", "int8"):
                    try:
                        arena = f"{run_micro(path, calibration[:1]).arena_bytes:,}"
                    except MicroError:
                        arena = "fails"
                print(
                    f"{name:<12} {model.count_params():>7,} {written.parameter_bytes:>11,} "
                    f"{label:<9} {form:<9} {written.size_bytes:>10,} "
                    f"{written.size_ratio:>6.2f} {arena:>10}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
