"""kerasrnn: recurrent MNIST classifiers from first principles to a microcontroller.

The public API, re-exported. Names load lazily, so `kerasrnn --help` and the NumPy-only
modules start without importing TensorFlow.

    data → cells/models → training → tuning → export (kerasrnn.export) → runtime
"""

from kerasrnn._lazy import lazy_exports

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
    "SearchSpace": "kerasrnn.search_space",
    "TuneConfig": "kerasrnn.tuning",
    "tune": "kerasrnn.tuning",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
