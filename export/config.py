"""The vocabulary of exports: formats, quantizations, int8 activations, graph forms,
`ExportConfig`.

Imports neither TensorFlow nor the LiteRT runtime, so the CLI reads its choices here.
"""

from __future__ import annotations

import dataclasses

from kerasrnn.config import check_choice, check_positive
from kerasrnn.errors import ConfigError

# What `kerasrnn export` writes: a .tflite file (with its extras), or a TensorFlow
# SavedModel folder for serving (the float32 Keras model, any batch size).
FORMATS = ("tflite", "saved_model")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
# Activations inside an int8 file: int16 (int8 weights, int8 images and logits; see
# `kerasrnn.export.integer_io`) or int8 throughout.
INT8_ACTIVATIONS = ("int16", "int8")
# Graph forms of `kerasrnn.export.graph.sequence_function`.
FORMS = ("loop", "unrolled", "fused")
# TFLM runs float32 and full-int8 files; it has no float16 DEQUANTIZE or hybrid kernels.
MICRO_QUANTIZATIONS = ("none", "int8")
# Firmware targets: QEMU's MPS2 boards, or the host's g++ (see `export.firmware`).
FIRMWARE_TARGETS = ("cortex-m3", "cortex-m33", "host")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """How a model is exported.

    Attributes:
        quantization: one of `QUANTIZATIONS`: "none" (float32), "float16" (weights),
            "dynamic" (int8 weights, float activations) or "int8" (full integer).
        activations: int8 only: "int16" inside the graph (int8 weights, input and output)
            or "int8" throughout (see `convert.to_tflite`).
        batch_size: static batch size of the file (1 runs on microcontrollers), or None
            (dynamic; LiteRT only).
        stream: also write the streaming step model next to the file (`NAME.step.tflite`).
        micro: check the file in TensorFlow Lite Micro (batch-1 float32 and int8 files).
        c_array: also write the file as a C array, `NAME.h` and `NAME.cc` next to it (and
            with `stream` the step model's, `NAME.step.h/.cc`; see `micro.write_c_array`).
            It needs a file TFLM runs: batch size 1, quantization "none" or "int8".
        format: one of `FORMATS`: "tflite", or "saved_model" (the float32 Keras model as a
            SavedModel folder; quantization, stream and c_array do not apply, the batch
            size is dynamic).
    """

    quantization: str = "none"
    activations: str = "int16"
    batch_size: int | None = 1
    stream: bool = False
    micro: bool = True
    c_array: bool = False
    format: str = "tflite"

    def __post_init__(self):
        check_choice("quantization", self.quantization, QUANTIZATIONS)
        check_choice("activations", self.activations, INT8_ACTIVATIONS)
        check_positive("batch_size", self.batch_size, optional=True, integer=True)
        check_choice("format", self.format, FORMATS)
        if self.format == "saved_model":
            tflite_only = [
                f"{field}={value!r}"
                for field, value, default in (
                    ("quantization", self.quantization, "none"),
                    ("stream", self.stream, False),
                    ("c_array", self.c_array, False),
                )
                if value != default
            ]
            if tflite_only:
                raise ConfigError(
                    f"format 'saved_model' serves the float32 Keras model: "
                    f"{', '.join(tflite_only)} applies to the tflite format only"
                )
        if self.c_array and (self.batch_size != 1 or self.quantization not in MICRO_QUANTIZATIONS):
            raise ConfigError(
                f"c_array needs a file TensorFlow Lite Micro runs (batch size 1, "
                f"quantization {' or '.join(MICRO_QUANTIZATIONS)}), got batch size "
                f"{self.batch_size} and quantization {self.quantization!r}"
            )


@dataclasses.dataclass(frozen=True)
class FirmwareConfig:
    """How firmware is built and run.

    Attributes:
        tflm_dir: a TFLM checkout or a tree made by its `create_tflm_tree.py`.
        target: one of `FIRMWARE_TARGETS` ("host" builds with the host g++ and runs natively).
        digits: how many test digits the firmware embeds and runs.
        run: run the firmware (under QEMU for the boards) and compare its outputs.
        timeout_s: the most seconds a run may take; a run never hangs.
        cache_dir: where compiled TFLM objects are kept, per target and flags (None:
            ~/.cache/kerasrnn/tflm).
        jobs: parallel compiler processes.
        arena_margin_bytes: added to the arena the interpreter needs (a multiple of 16).
        fit_arena: with `run`, find the smallest arena in which the firmware runs on the
            target (about 10 more links and runs, a few seconds in all) and build with it
            plus the margin; else the arena is twice the Python TFLM's measure plus the
            margin, which is larger (elman-16 int8 on Cortex-M3: 47.4 KB vs 16.3 KB).
        stack_bytes: the boards' stack.
        heap_bytes: the boards' heap (newlib's stdio).
    """

    tflm_dir: str
    target: str = "cortex-m3"
    digits: int = 20
    run: bool = True
    timeout_s: float = 60.0
    cache_dir: str | None = None
    jobs: int = 2
    arena_margin_bytes: int = 256
    fit_arena: bool = True
    stack_bytes: int = 4096
    heap_bytes: int = 1024

    def __post_init__(self):
        check_choice("target", self.target, FIRMWARE_TARGETS)
        for name in ("digits", "jobs", "stack_bytes"):
            check_positive(name, getattr(self, name), integer=True)
        check_positive("timeout_s", self.timeout_s)
        for name in ("arena_margin_bytes", "heap_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be zero or positive, got {getattr(self, name)}")
        if self.arena_margin_bytes % 16:
            raise ConfigError(
                f"arena_margin_bytes must be a multiple of 16 (TFLM aligns the "
                f"arena to 16 bytes), got {self.arena_margin_bytes}"
            )
