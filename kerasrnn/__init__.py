"""kerasrnn: recurrent MNIST classifiers from first principles to a microcontroller.

The public API, re-exported. Names load lazily, so `kerasrnn --help` and the NumPy-only
modules start without importing TensorFlow.

    data → cells/models → training → tuning → export (kerasrnn.export) → runtime
"""

from kerasrnn._lazy import import_after, lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": "kerasrnn.config",
    "ModelConfig": "kerasrnn.config",
    "TrainConfig": "kerasrnn.config",
    "TuneConfig": "kerasrnn.config",
    "CELL_KINDS": "kerasrnn.cell_kinds",
    "KerasRnnError": "kerasrnn.errors",
    "mnist": "kerasrnn.data",
    "load_arrays": "kerasrnn.data",
    "sequences": "kerasrnn.sequences",
    "load_npz": "kerasrnn.sequences",
    "ElmanCell": "kerasrnn.cells",
    "LearnableInitialState": "kerasrnn.cells",
    "LegendreMemoryCell": "kerasrnn.cells",
    "LMU": "kerasrnn.cells",
    "build_classifier": "kerasrnn.models",
    "fit": "kerasrnn.training",
    "train": "kerasrnn.training_run",
    "evaluate": "kerasrnn.evaluation",
    "evaluate_file": "kerasrnn.evaluation",
    "load_model": "kerasrnn.evaluation",
    "SearchSpace": "kerasrnn.search_space",
    "tune": "kerasrnn.tuning",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
# `keras.models.load_model` finds the package's layers (`cells`) once Keras is loaded.
import_after("keras", "kerasrnn.cells")
