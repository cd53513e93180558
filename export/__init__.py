"""kerasrnn.export: the edge side. Keras -> builtin-only TFLite, verification, device runtime.

    convert.py  `to_tflite`: builtin-only .tflite (float32, float16, dynamic, int8)
    graph.py    the unrolled inference graphs the converter sees
    verification.py `verify`: parity and accuracy of a .tflite against its Keras model
    micro.py    TensorFlow Lite Micro: run, arena size, C source array
    runtime.py  `Classifier`, `Stream`: NumPy + ai_edge_litert only, runs on the device

Names load lazily: `from kerasrnn.export.runtime import Classifier` never imports TensorFlow.
"""

from kerasrnn._lazy import lazy_exports

_EXPORTS = {
    "to_tflite": "kerasrnn.export.convert",
    "to_stream_tflite": "kerasrnn.export.convert",
    "ConversionError": "kerasrnn.export.convert",
    "verify": "kerasrnn.export.verification",
    "run_micro": "kerasrnn.export.micro",
    "write_c_array": "kerasrnn.export.micro",
    "Classifier": "kerasrnn.export.runtime",
    "Stream": "kerasrnn.export.runtime",
    "ModelFileError": "kerasrnn.export.runtime",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
