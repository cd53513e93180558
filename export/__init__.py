"""kerasrnn.export: the edge side. Keras -> builtin-only TFLite, verification, device runtime.

    config.py        `ExportConfig`, quantizations, graph forms (no TensorFlow)
    model_reader.py  any Keras model read as a chain of stages, or refused by layer name
    graph.py         the inference graphs the converter sees (loop, unrolled, fused, step)
    convert.py       `to_tflite`: builtin-only .tflite (float32, float16, dynamic, int8)
    flatbuffer.py    reading and slimming .tflite files
    integer_io.py    int8 inputs and outputs around int16 activations
    verification.py  `verify`: parity and accuracy of a .tflite against its Keras model
    micro.py         TensorFlow Lite Micro: run, arena size, C source array
    workflow.py      `export_model`: convert, calibrate, verify and extras in one call
    runtime.py       `Classifier`, `Stream`: NumPy + ai_edge_litert only, runs on the device

Names load lazily: `from kerasrnn.export.runtime import Classifier` never imports TensorFlow.
"""

from kerasrnn._lazy import lazy_exports

_EXPORTS = {
    "to_tflite": "kerasrnn.export.convert",
    "ExportConfig": "kerasrnn.export.config",
    "ParityBounds": "kerasrnn.export.config",
    "read_model": "kerasrnn.export.model_reader",
    "export_model": "kerasrnn.export.workflow",
    "verify": "kerasrnn.export.verification",
    "run_micro": "kerasrnn.export.micro",
    "write_c_array": "kerasrnn.export.micro",
    "Classifier": "kerasrnn.export.runtime",
    "Stream": "kerasrnn.export.runtime",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
