"""How closely int8 files follow Keras and each other on LiteRT and TensorFlow Lite Micro.

    python benchmarks/int8_agreement.py [--epochs 10] [--seeds 0 1]
    python benchmarks/int8_agreement.py --quick    # elman and lstm, 2 epochs, one seed

Trains every model kind of the export tests on the bundled sample, exports int8 files for
TFLM (`target="micro"`) with int16 activations and with int8 activations throughout, and
prints, on the
sample's 1,000 test digits: test accuracy of Keras and of the int8 file in LiteRT, top-1
agreement of LiteRT with Keras and with TFLM, and the largest LiteRT/TFLM logit difference
in output quantization steps. LSTM files use the fused LSTM op, which has its own int8
scheme (int16 cell state), so its two rows are the same file.
"""

import argparse
import os
import tempfile

import numpy as np

from kerasrnn import data
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
from kerasrnn.export.convert import to_tflite
from kerasrnn.export.micro import run_micro
from kerasrnn.export.runtime import Classifier
from kerasrnn.training_run import train

KINDS = {
    "simple": ("simple", 64, 1),
    "elman": ("elman", 64, 1),
    "lstm": ("lstm", 32, 1),
    "gru": ("gru", 32, 1),
    "elmanx2": ("elman", 32, 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--quick", action="store_true", help="elman and lstm, 2 epochs, seed 0")
    args = parser.parse_args()
    if args.quick:
        args.kinds, args.epochs, args.seeds = ["elman", "lstm"], 2, [0]
    sample = DataConfig(source="sample")
    calibration = data.load_arrays(sample, "train+validation")[0].astype(np.float32) / 255.0
    images, labels = data.load_arrays(sample, "test")
    images = images.astype(np.float32) / 255.0
    header = (
        f"{'model':<9} {'seed':>4} {'activations':<11} {'bytes':>7} {'keras acc':>9} "
        f"{'int8 acc':>8} {'vs keras':>8} {'vs TFLM':>8} {'max steps':>9}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name in args.kinds:
                cell, units, layers = KINDS[name]
                model = train(
                    ModelConfig(cell=cell, units=units, layers=layers),
                    sample,
                    # the constant rate and patience the README's table was made with
                    TrainConfig(
                        epochs=args.epochs, schedule="constant", patience=3, verbose=0, seed=seed
                    ),
                    os.path.join(tmp, f"{cell}{layers}-{seed}"),
                ).model
                expected = model.predict(images, verbose=0).argmax(1)
                keras_accuracy = (expected == labels).mean()
                for activations in ("int16", "int8"):
                    path = os.path.join(tmp, f"{cell}{layers}-{seed}-{activations}.tflite")
                    written = to_tflite(
                        model, path, "int8", calibration, activations=activations, target="micro"
                    )
                    classifier = Classifier(path)
                    litert = classifier.predict(images)
                    micro = run_micro(path, images).logits
                    steps = np.abs(micro - litert).max() / classifier.output_scale
                    print(
                        f"{name:<9} {seed:>4} {activations:<11} {written.size_bytes:>7,} "
                        f"{keras_accuracy:>9.1%} {(litert.argmax(1) == labels).mean():>8.1%} "
                        f"{(litert.argmax(1) == expected).mean():>8.1%} "
                        f"{(litert.argmax(1) == micro.argmax(1)).mean():>8.1%} "
                        f"{steps:>9.0f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
