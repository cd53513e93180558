"""Firmware on the Cortex-M boards under QEMU, kind x quantization x core x kernels: flash, RAM,
arena, instructions per inference, MACs per instruction and agreement.

    python benchmarks/firmware_sizes.py [--cells elman simple lstm gru] [--units 64]
        [--cores cortex-m4 cortex-m55] [--epochs 3] [--digits 10] [--optimize speed|size]
        [--json FILE]
    python benchmarks/firmware_sizes.py --quick    # elman-64 int8 on the M4: minutes

Each kind trains `--epochs` epochs on the bundled sample (the constant rate) and is exported
as float32 (the default form), int8 with int16 activations (the int8 default; the fused LSTM
op for LSTM, whose gates are int8 with an int16 cell state) and int8 with int8 activations
(unrolled), calibrated on 500 training digits; the Elman model also as its int8 streaming
step model (one row per Invoke, instructions per row). Each file becomes TFLM firmware for
each core with TFLM's reference kernels and with `--kernels cmsis-nn` (the int8 files:
CMSIS-NN's kernels and int8 TANH/LOGISTIC tables; float32 runs the same reference code
either way), built as `FirmwareConfig` builds by default (a release build; `--optimize`:
"speed", the kernels at -O2 and the interpreter at -Os as TFLM builds, or "size", -Os
throughout), and runs the first `--digits` test digits under QEMU (`-icount shift=0`).
Columns: flash = text + data without the embedded digits; RAM = data + bss (arena, 1 KiB
heap, 4 KiB stack); the fitted arena; instructions per inference (median
over digits; a stream's per row), MACs per instruction, the operator with most of digit 0's
instructions; "= TFLM", "= LiteRT": digits whose output bytes equal the Python TFLM
interpreter's, LiteRT's (with the largest difference, in output steps or logit value);
"= ref": digits whose output bytes equal the reference kernels' firmware on the same core.
Needs gcc-arm-none-eabi, libnewlib-arm-none-eabi, libstdc++-arm-none-eabi-newlib and
qemu-system-arm (Debian).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

import numpy as np

import kerasrnn
from kerasrnn.export import to_tflite
from kerasrnn.export.config import FIRMWARE_OPTIMIZATIONS, FirmwareConfig
from kerasrnn.export.firmware import FirmwareResult, build_firmware

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Export:
    """One file of a kind: its label and `to_tflite` arguments."""

    label: str
    quantization: str
    activations: str = "int16"
    form: str = "auto"
    stream: bool = False


EXPORTS = (
    Export("float32", "none"),
    Export("int8, int16 act.", "int8"),
    Export("int8, int8 act.", "int8", activations="int8", form="unrolled"),
)
STREAM = Export("int8 stream", "int8", stream=True)


def exports(cell: str) -> tuple[Export, ...]:
    """The files of one kind: `EXPORTS`, and the streaming step model for the Elman cell."""
    return EXPORTS + ((STREAM,) if cell == "elman" else ())


def row(
    model: str, export: Export, result: FirmwareResult, reference: FirmwareResult | None
) -> dict:
    """One table row of a firmware run (`reference`: the reference-kernel run beside it)."""
    micro, litert = result.agreement
    shares = result.operator_instructions
    top = max(shares, key=shares.get) if shares else None
    total = sum(shares.values()) or 1
    same = None if reference is None else int((result.outputs == reference.outputs).all(1).sum())
    median = result.instructions_median
    return {
        "model": model,
        "file": export.label,
        "core": result.target,
        "kernels": result.kernels,
        "flash_kib": (result.flash_bytes - result.test_data_bytes) / 1024,
        "ram_kib": result.ram_bytes / 1024,
        "arena_bytes": result.arena_bytes,
        "instructions": median if not result.streaming else median // result.steps,
        "per": "row" if result.streaming else "inference",
        "macs_per_instruction": result.macs_per_instruction,
        "top_operator": None if top is None else f"{top} {shares[top] / total:.0%}",
        "tflm_exact": micro.exact,
        "tflm_max_diff": micro.max_diff,
        "litert_exact": litert.exact,
        "litert_max_diff": litert.max_diff,
        "digits": micro.digits,
        "reference_exact": same,
    }


def header() -> str:
    """The table's heading and rule."""
    line = (
        f"{'model':<9} {'file':<17} {'core':<10} {'kernels':<9} {'flash KiB':>9} {'RAM KiB':>7} "
        f"{'arena B':>7} {'instructions':>15} {'MAC/instr':>9} {'top operator':<34} "
        f"{'= TFLM':>13} {'= LiteRT':>13} {'= ref':>6}"
    )
    return f"{line}\n{'-' * len(line)}"


def format_row(r: dict) -> str:
    """One row of `row` as a line under `header`."""
    instructions = f"{r['instructions']:,}" + ("/row" if r["per"] == "row" else "")
    macs = r["macs_per_instruction"]
    tflm = f"{r['tflm_exact']}/{r['digits']} ({r['tflm_max_diff']:.2g})"
    litert = f"{r['litert_exact']}/{r['digits']} ({r['litert_max_diff']:.2g})"
    same = "" if r["reference_exact"] is None else f"{r['reference_exact']}/{r['digits']}"
    return (
        f"{r['model']:<9} {r['file']:<17} {r['core']:<10} {r['kernels']:<9} "
        f"{r['flash_kib']:>9.1f} {r['ram_kib']:>7.1f} {r['arena_bytes']:>7,} "
        f"{instructions:>15} {'' if macs is None else f'{macs:.3f}':>9} "
        f"{r['top_operator'] or '':<34} {tflm:>13} {litert:>13} {same:>6}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflm-dir", default=os.path.join(os.path.dirname(REPO), "shared", "tflm"))
    parser.add_argument("--cells", nargs="+", default=["elman", "simple", "lstm", "gru"])
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--cores", nargs="+", default=["cortex-m4", "cortex-m55"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--digits", type=int, default=10)
    parser.add_argument(
        "--optimize",
        default=FirmwareConfig.optimize,
        choices=FIRMWARE_OPTIMIZATIONS,
        help="speed: kernels at -O2, as TFLM builds (default); size: -Os throughout",
    )
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--quick", action="store_true", help="elman, int8, Cortex-M4, 5 digits")
    args = parser.parse_args()
    files = None
    if args.quick:
        args.cells, args.cores, args.epochs, args.digits = ["elman"], ["cortex-m4"], 1, 5
        files = [e for e in EXPORTS if e.quantization == "int8"]
    sample = kerasrnn.DataConfig(source="sample")
    calibration = kerasrnn.load_arrays(sample, "train+validation")[0][:500].astype(np.float32) / 255
    images = kerasrnn.load_arrays(sample, "test")[0][: args.digits]
    rows = []
    print(
        f"{args.units} units, {args.epochs} epochs on the bundled sample, first {args.digits} "
        f"test digits; release build optimized for {args.optimize}; instructions under QEMU "
        "-icount (not cycles)\n"
    )
    print(header(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells:
            name = f"{cell}-{args.units}"
            model = kerasrnn.train(
                kerasrnn.ModelConfig(cell=cell, units=args.units),
                sample,
                kerasrnn.TrainConfig(epochs=args.epochs, schedule="constant", verbose=0),
                os.path.join(tmp, cell),
            ).model
            for i, export in enumerate(files or exports(cell)):
                path = to_tflite(
                    model,
                    os.path.join(tmp, f"{cell}-{i}.tflite"),
                    export.quantization,
                    calibration,
                    stream=export.stream,
                    form=export.form,
                    activations=export.activations,
                    target="micro",
                ).path
                kernel_sets = ("reference", "cmsis-nn")[: 2 if export.quantization == "int8" else 1]
                for core in args.cores:
                    reference = None
                    for kernels in kernel_sets:
                        config = FirmwareConfig(
                            tflm_dir=args.tflm_dir,
                            target=core,
                            digits=args.digits,
                            kernels=kernels,
                            optimize=args.optimize,
                        )
                        out = os.path.join(tmp, f"{cell}-{i}-{core}-{kernels}")
                        result = build_firmware(path, out, config, images)
                        rows.append(row(name, export, result, reference))
                        print(format_row(rows[-1]), flush=True)
                        reference = reference or result
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
