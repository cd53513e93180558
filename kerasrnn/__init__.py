"""kerasrnn: recurrent MNIST classifiers from first principles to a microcontroller.

The public API, re-exported. Names load lazily, so `kerasrnn --help` and the NumPy-only
modules start without importing TensorFlow.

    data → cells/models → training → tuning → export (kerasrnn.export) → runtime
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": "kerasrnn.data",
    "mnist": "kerasrnn.data",
    "load_arrays": "kerasrnn.data",
    "ElmanCell": "kerasrnn.cells",
    "LearnableInitialState": "kerasrnn.cells",
    "ModelConfig": "kerasrnn.models",
    "build_classifier": "kerasrnn.models",
    "TrainConfig": "kerasrnn.training",
    "train": "kerasrnn.training",
    "evaluate": "kerasrnn.training",
    "evaluate_file": "kerasrnn.training",
    "load_model": "kerasrnn.training",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kerasrnn' has no attribute {name!r}")


def __dir__():
    return __all__ + ["__version__"]
