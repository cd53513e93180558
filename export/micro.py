"""TensorFlow Lite Micro: run a model in the real microcontroller interpreter, size its
arena, and write the C source array that firmware projects compile in.

`tflite-micro` (PyPI) wraps TFLM's C++ interpreter. It aborts or crashes the whole process
on some errors (an unsupported op, a fused LSTM in too small an arena), so models run in a
child process, which sends its result back as JSON on a pipe.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile

import numpy as np
from tflite_micro.python.tflite_micro import runtime as tflm

from kerasrnn._io import atomic_write
from kerasrnn.errors import MicroError
from kerasrnn.export.child_process import child_main, run_child
from kerasrnn.export.integrity import verify_digest
from kerasrnn.export.runtime import dequantize, quantize

# TFLM's report of what it allocated: the Python wrapper gives it only as text.
_ARENA_REPORT = re.compile(rb"Arena allocation total (\d+) bytes")
# The first arena tried, and the largest: too small an arena fails to allocate (and a
# fused LSTM may crash in it), so the first is generous and doubles while it fails.
_LARGEST_ARENA = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class MicroResult:
    """Outputs of a TFLM run.

    Attributes:
        logits: float32 [n, classes] (dequantized for int8 models).
        arena_bytes: the tensor arena TFLM allocated for this model.
    """

    logits: np.ndarray
    arena_bytes: int


def run_micro(tflite_path: str, images: np.ndarray) -> MicroResult:
    """Runs a batch-1 classifier in TensorFlow Lite Micro, one image at a time.

    Args:
        tflite_path: a .tflite with a static batch of 1 (`to_tflite(batch_size=1)`).
        images: float32 [n, steps, features] in [0, 1].

    Returns:
        A `MicroResult`.

    Raises:
        MicroError: TFLM rejected or crashed on the model (the message says which).
    """
    images = np.asarray(images, np.float32)
    with tempfile.TemporaryDirectory(prefix="kerasrnn-micro-") as tmp:
        np.save(os.path.join(tmp, "images.npy"), images)
        status, result = run_child("kerasrnn.export.micro", [os.path.abspath(tflite_path), tmp])
        if result is None:
            raise MicroError(
                f"TensorFlow Lite Micro crashed on {tflite_path} (status "
                f"{status}): an operator it lacks, or a damaged file"
            )
        if "error" in result:
            raise MicroError(f"TensorFlow Lite Micro failed on {tflite_path}: {result['error']}")
        logits = np.load(os.path.join(tmp, "logits.npy"))
    return MicroResult(logits, result["arena_bytes"])


def _detail(tflm_detail: dict) -> dict:
    """TFLM's tensor details in the form the runtime's `quantize`/`dequantize` take."""
    params = tflm_detail["quantization_parameters"]
    scale = float(params["scales"][0]) if len(params["scales"]) else 0.0
    zero_point = int(params["zero_points"][0]) if len(params["zero_points"]) else 0
    return {"dtype": tflm_detail["dtype"], "quantization": (scale, zero_point)}


def allocate(content: bytes, arena: int | None = None) -> tflm.Interpreter:
    """An interpreter whose arena fits the model: `arena` (default 16 x the file + 64 KB),
    doubled while TFLM fails to allocate (784-step models need more than that guess).

    Raises:
        RuntimeError: it does not fit in `_LARGEST_ARENA`.
    """
    arena = arena or 16 * len(content) + 65536
    while True:
        try:
            return tflm.Interpreter.from_bytes(content, arena_size=arena)
        except RuntimeError:  # "TFLM failed to allocate tensors"
            if arena >= _LARGEST_ARENA:
                raise RuntimeError(
                    f"the model does not fit in a {_LARGEST_ARENA:,}-byte arena"
                ) from None
            arena *= 2


def arena_used(interpreter: tflm.Interpreter) -> int:
    """The bytes of arena TFLM allocated, read from its allocation report (which the
    interpreter writes to this process's stdout or stderr)."""
    with tempfile.TemporaryFile() as report:
        saved = os.dup(1), os.dup(2)
        os.dup2(report.fileno(), 1)
        os.dup2(report.fileno(), 2)
        try:
            interpreter.print_allocations()
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        report.seek(0)
        found = _ARENA_REPORT.search(report.read())
    if found is None:
        raise RuntimeError("TFLM printed no arena allocation report")
    return int(found.group(1))


def _child(model_path: str, folder: str) -> dict:
    """The child process: allocate, measure the arena, then run every image in TFLM."""
    with open(model_path, "rb") as f:
        content = f.read()
    interpreter = allocate(content)
    arena = arena_used(interpreter)
    inp, out = (
        _detail(interpreter.get_input_details(0)),
        _detail(interpreter.get_output_details(0)),
    )
    raw = []
    for image in np.load(os.path.join(folder, "images.npy")):
        interpreter.reset()  # variable tensors (a fused LSTM's state) back to zero
        interpreter.set_input(quantize(image[None], inp), 0)
        interpreter.invoke()
        raw.append(interpreter.get_output(0)[0].copy())
    np.save(os.path.join(folder, "logits.npy"), dequantize(np.array(raw), out))
    return {"arena_bytes": arena}


def write_c_array(tflite_path: str, out_dir: str, name: str = "g_model") -> tuple[str, str]:
    """Writes `model_data.h` and `model_data.cc` holding the model as a C array.

    The array is 16-byte aligned, as TFLM requires, and named `name` with its length in
    `{name}_len`. The header carries the file's SHA-256 digest (see `integrity.verify_digest`),
    as a comment and as `{NAME}_SHA256`, when the file has one.

    Returns:
        (header path, source path).

    Raises:
        ValueError: `name` is not a C identifier.
        ModelFileError: the file does not match the digest it carries.
    """
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise ValueError(f"name must be a C identifier, got {name!r}")
    with open(tflite_path, "rb") as f:
        content = f.read()
    digest = verify_digest(content, tflite_path)
    if digest is None:
        identity = "// It carries no kerasrnn digest.\n"
    else:
        identity = f'// SHA-256: {digest}\n#define {name.upper()}_SHA256 "{digest}"\n'
    header = (
        f"// Generated by kerasrnn from {os.path.basename(tflite_path)}.\n"
        f"#ifndef KERASRNN_MODEL_DATA_H_\n#define KERASRNN_MODEL_DATA_H_\n\n{identity}\n"
        f"extern const unsigned char {name}[];\nextern const unsigned int {name}_len;\n\n"
        f"#endif  // KERASRNN_MODEL_DATA_H_\n"
    )
    rows = [
        ", ".join(f"0x{b:02x}" for b in content[i : i + 12]) for i in range(0, len(content), 12)
    ]
    source = (
        f"// Generated by kerasrnn from {os.path.basename(tflite_path)}.\n"
        f'#include "model_data.h"\n\n'
        f"alignas(16) const unsigned char {name}[] = {{\n    "
        + ",\n    ".join(rows)
        + f"\n}};\nconst unsigned int {name}_len = {len(content)};\n"
    )
    paths = (os.path.join(out_dir, "model_data.h"), os.path.join(out_dir, "model_data.cc"))
    atomic_write(paths[0], header)
    atomic_write(paths[1], source)
    return paths


if __name__ == "__main__":
    sys.exit(child_main(_child, sys.argv[1:]))
