"""Flash, RAM and output parity of int8 firmware on the Cortex-M3 and M33 boards under QEMU.

    python benchmarks/firmware_sizes.py [--tflm-dir ../shared/tflm] [--epochs 3] [--digits 100]
    python benchmarks/firmware_sizes.py --quick    # 1 epoch, 10 digits

Trains elman-64 and lstm-64 on the bundled sample, exports them as int8 files (the Elman
graph with int16 activations, the LSTM as the fused UNIDIRECTIONAL_SEQUENCE_LSTM op), builds
TensorFlow Lite Micro firmware for each board, runs it on the first test digits and prints:
flash (text + data, with and without the embedded test digits), RAM (data + bss: arena,
heap and stack included), the arena (the smallest that runs on the board, plus 256 bytes),
and how many digits' output bytes equal the Python TFLM interpreter's and LiteRT's (with the
largest difference in steps).
Needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm (Debian).
"""

import argparse
import os
import tempfile

import numpy as np

import kerasrnn
from kerasrnn.export import to_tflite
from kerasrnn.export.config import FirmwareConfig
from kerasrnn.export.firmware import build_firmware

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("elman", "lstm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflm-dir", default=os.path.join(os.path.dirname(REPO), "shared", "tflm"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--digits", type=int, default=100)
    parser.add_argument("--targets", nargs="+", default=["cortex-m3", "cortex-m33"])
    parser.add_argument("--quick", action="store_true", help="1 epoch, the first 10 digits")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.digits = 1, 10
    sample = kerasrnn.DataConfig(source="sample")
    calibration = kerasrnn.load_arrays(sample, "train+validation")[0][:500].astype(np.float32) / 255
    images = kerasrnn.load_arrays(sample, "test")[0][: args.digits]
    header = (
        f"{'model':<10} {'target':<10} {'flash KiB':>9} {'w/o digits':>10} {'RAM KiB':>7} "
        f"{'arena B':>7} {'= TFLM':>7} {'steps':>5} {'= LiteRT':>8} {'steps':>5}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for cell in MODELS:
            model = kerasrnn.train(
                kerasrnn.ModelConfig(cell=cell, units=args.units),
                sample,
                # the constant rate the README's table was made with
                kerasrnn.TrainConfig(epochs=args.epochs, schedule="constant", verbose=0),
                os.path.join(tmp, cell),
            ).model
            path = to_tflite(model, os.path.join(tmp, f"{cell}.tflite"), "int8", calibration).path
            for target in args.targets:
                config = FirmwareConfig(tflm_dir=args.tflm_dir, target=target, digits=args.digits)
                result = build_firmware(path, os.path.join(tmp, f"{cell}-{target}"), config, images)
                micro, litert = result.agreement
                print(
                    f"{f'{cell}-{args.units}':<10} {target:<10} "
                    f"{result.flash_bytes / 1024:>9.1f} "
                    f"{(result.flash_bytes - result.test_data_bytes) / 1024:>10.1f} "
                    f"{result.ram_bytes / 1024:>7.1f} {result.arena_bytes:>7,} "
                    f"{micro.exact:>3}/{micro.digits:<3} {micro.max_diff:>5g} "
                    f"{litert.exact:>4}/{litert.digits:<3} {litert.max_diff:>5g}"
                )


if __name__ == "__main__":
    main()
