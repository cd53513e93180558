"""The vocabulary of exports: quantizations, int8 activations, graph forms, `ExportConfig`.

Imports neither TensorFlow nor the LiteRT runtime, so the CLI reads its choices here.
"""

from __future__ import annotations

import dataclasses

from kerasrnn.config import check_choice, check_positive

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
# Activations inside an int8 file: int16 (int8 weights, int8 images and logits; see
# `kerasrnn.export.integer_io`) or int8 throughout.
INT8_ACTIVATIONS = ("int16", "int8")
# Graph forms of `kerasrnn.export.graph.sequence_function`.
FORMS = ("loop", "unrolled", "fused")
# TFLM runs float32 and full-int8 files; it has no float16 DEQUANTIZE or hybrid kernels.
MICRO_QUANTIZATIONS = ("none", "int8")


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
        c_array: also write `model_data.cc/.h` next to the file.
    """

    quantization: str = "none"
    activations: str = "int16"
    batch_size: int | None = 1
    stream: bool = False
    micro: bool = True
    c_array: bool = False

    def __post_init__(self):
        check_choice("quantization", self.quantization, QUANTIZATIONS)
        check_choice("activations", self.activations, INT8_ACTIVATIONS)
        check_positive("batch_size", self.batch_size, optional=True, integer=True)
