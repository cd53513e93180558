"""The configuration objects: where data comes from, the architecture, training, tuning.

Each is a small frozen dataclass, validated where it is made, written to a run or search
folder as JSON so that every result says how it was made. The CLI takes its choices and
defaults from here. This module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import dataclasses
import math

from kerasrnn.cell_kinds import CELLS
from kerasrnn.errors import ConfigError

SOURCES = ("auto", "sample", "idx", "tfds", "npz")
DATASETS = ("mnist", "fashion_mnist")
# Each dataset's class names, by label (figures and messages use them).
CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}
VIEWS = ("rows", "pixels", "permuted")
SPLITS = ("train", "validation", "train+validation", "test")
# Debian's `dataset-fashion-mnist` package installs the IDX files here.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# The most pixels augmentation may move an image (28: off its 28x28 frame).
MAX_SHIFT = 27
ACTIVATIONS = ("tanh", "relu")
RECURRENT_INITIALIZERS = ("orthogonal", "identity")
LOOPS = ("bptt", "fit")
# constant: a fixed rate; cosine: linear warm-up, then cosine decay; onecycle: warm-up
# from rate/25, then decay to nearly zero (see `training.learning_rate`).
SCHEDULES = ("constant", "cosine", "onecycle")
# none: one device; mirrored: the devices of this machine (`TrainConfig.devices`);
# multi-worker: the workers TF_CONFIG names (see `kerasrnn.distribute`).
STRATEGIES = ("none", "mirrored", "multi-worker")
TUNERS = ("random", "bayesian", "hyperband")
ROLES = ("chief", "worker")
SIZE_MEASURES = ("float32_params", "int8_params", "int8_tflite")


def check_choice(name: str, value, allowed: tuple) -> None:
    """Raises `ConfigError` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def check_positive(name: str, value, optional: bool = False, integer: bool = False) -> None:
    """Raises `ConfigError` unless `value` is a positive number (or None when optional)."""
    if value is None and optional:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive integer" if integer else "positive"
        raise ConfigError(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}")


def view_shape(view: str) -> tuple[int, int]:
    """The (steps, features) shape of one example in `view`: rows (28, 28), else (784, 1)."""
    check_choice("view", view, VIEWS)
    return (28, 28) if view == "rows" else (784, 1)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is shaped and batched.

    Attributes:
        source: one of `SOURCES`: the bundled `sample`, an `idx` folder, `tfds`, `auto`
            (TFDS when prepared or downloadable, otherwise the sample), or `npz`: the
            user's own labelled sequences in the file `npz`.
        dataset: one of `DATASETS` (`sample` holds MNIST only).
        data_dir: the IDX folder for `idx`; TFDS's data_dir for `tfds`.
        manual_dir: for `tfds`, a folder of the original files to prepare from offline.
        view: one of `VIEWS`.
        batch_size: examples per batch.
        validation_fraction: share of the training data held out as `validation`.
        max_examples: keep only the first N examples of each split (quick runs).
        seed: shuffling and validation-split seed.
        shift: augment the training batches (`data.epochs`) by moving each image up to
            this many pixels in each direction, a fresh draw per example and epoch, the
            vacated border black (0: no shift). Validation and test data are not touched.
        flip: augment the training batches by mirroring half of the images left to
            right (for Fashion-MNIST's clothing; a mirrored digit is no digit).
        npz: for source `npz`, a .npz file of sequences x float [n, steps, features] and
            int labels y (optionally x_test, y_test; see `kerasrnn.sequences`), read as
            they are: views, `dataset` and augmentation are MNIST's.
    """

    source: str = "auto"
    dataset: str = "mnist"
    data_dir: str | None = None
    manual_dir: str | None = None
    view: str = "rows"
    batch_size: int = 64
    validation_fraction: float = 0.1
    max_examples: int | None = None
    seed: int = 0
    shift: int = 0
    flip: bool = False
    npz: str | None = None

    def __post_init__(self):
        check_choice("source", self.source, SOURCES)
        if (self.source == "npz") != (self.npz is not None):
            raise ConfigError(
                f"source 'npz' reads the file that npz names (--npz FILE), got source="
                f"{self.source!r} and npz={self.npz!r}"
            )
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("view", self.view, VIEWS)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("max_examples", self.max_examples, optional=True, integer=True)
        if (
            isinstance(self.shift, bool)
            or not isinstance(self.shift, int)
            or not 0 <= self.shift <= MAX_SHIFT
        ):
            raise ConfigError(
                f"shift must be a whole number of pixels in [0, {MAX_SHIFT}] (0: no shift), "
                f"got {self.shift!r}"
            )
        if not isinstance(self.flip, bool):
            raise ConfigError(f"flip must be True or False, got {self.flip!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction}"
            )
        if self.npz is not None:
            mnist_only = {
                "view": self.view != "rows",
                "dataset": self.dataset != "mnist",
                "shift": self.shift != 0,
                "flip": self.flip,
            }
            if any(mnist_only.values()):
                raise ConfigError(
                    f"{', '.join(k for k, v in mnist_only.items() if v)}: views, datasets and "
                    f"augmentation reshape MNIST images; the sequences of {self.npz} are read "
                    f"as they are"
                )
        if self.source == "sample" and self.dataset != "mnist":
            raise ConfigError(
                f"the bundled sample holds MNIST only, not {self.dataset!r}: use "
                f"source='idx' (--data idx; Fashion-MNIST: {FASHION_MNIST_DIR}) or "
                f"source='tfds' (--data tfds)"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture of a classifier.

    Attributes:
        cell: a name of `cell_kinds.CELL_KINDS`: "simple" (Keras SimpleRNN), "elman" (the
            custom cell with a learnable h0), "lstm", "gru" or "lmu" (a Legendre Memory
            Unit, `cells.LMU`: for long sequences).
        units: hidden units per recurrent layer.
        layers: number of stacked recurrent layers.
        dropout: dropout rate between layers and before the output layer (and after the
            hidden layer).
        activation: recurrent activation of simple/elman, activation of lmu's output
            ("tanh" or "relu").
        recurrent_initializer: "orthogonal" or "identity" (IRNN with relu).
        view: the sequences it reads, one of `VIEWS` (rows: 28 x 28; pixels and permuted:
            784 x 1). The model keeps it (its input is named `sequence_{view}`), so that
            evaluation and export read digits the way it was trained on them.
        classes: number of output logits.
        hidden: units of a Dense(relu) layer between the last recurrent layer and the
            logits (0: none).
        memory_order: lmu: the Legendre coefficients its memory keeps.
        theta: lmu: the steps its memory spans (None: the whole sequence, `input_shape`).
        steps, features: the shape of the user's own sequences (`DataConfig.npz`)
            instead of a view's; both or neither. Such a model's input is named
            `sequence`: no view reads it.
    """

    cell: str = "elman"
    units: int = 64
    layers: int = 1
    dropout: float = 0.0
    activation: str = "tanh"
    recurrent_initializer: str = "orthogonal"
    view: str = "rows"
    classes: int = 10
    hidden: int = 0
    memory_order: int = 256
    theta: float | None = None
    steps: int | None = None
    features: int | None = None

    def __post_init__(self):
        check_choice("cell", self.cell, CELLS)
        for name in ("units", "layers", "classes", "memory_order"):
            check_positive(name, getattr(self, name), integer=True)
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 0:
            raise ConfigError(
                f"hidden must be a whole number of units (0: none), got {self.hidden!r}"
            )
        check_positive("theta", self.theta, optional=True)
        for name in ("steps", "features"):
            check_positive(name, getattr(self, name), optional=True, integer=True)
        if (self.steps is None) != (self.features is None):
            raise ConfigError(
                f"steps and features give a sequence's shape together, got steps="
                f"{self.steps} and features={self.features}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("recurrent_initializer", self.recurrent_initializer, RECURRENT_INITIALIZERS)
        check_choice("view", self.view, VIEWS)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(steps, features) of one example: `steps` and `features`, else the view's."""
        if self.steps is not None:
            return (self.steps, self.features)
        return view_shape(self.view)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a model is trained.

    The defaults are the recipe measured on full MNIST (`benchmarks/accuracy.py`, the
    README's Results; Fashion-MNIST's plain cells also take 40 epochs and
    `weight_decay=0.05`): Adam at 2e-3 with a 5% warm-up then cosine decay over 20
    epochs, gradient norm clipped at 1, batches of 64 (`DataConfig.batch_size`), every
    epoch run (the schedule decides the length: its last, small steps are where the
    accuracy peaks, so stopping early would cut them), and the epoch with the best
    validation accuracy kept.

    Attributes:
        epochs: the most epochs to run.
        learning_rate: Adam's step size (the peak of a schedule).
        schedule: one of `SCHEDULES`: how the step size changes over the training steps.
        weight_decay: AdamW's decoupled weight decay (0: plain Adam).
        clipnorm: global-norm gradient clipping threshold (None: no clipping).
        loop: "bptt" (the explicit GradientTape loop) or "fit" (Keras `model.fit`).
        jit_compile: compile the steps with XLA.
        steps_per_execution: training steps run by one call into TensorFlow's graph, which
            reads their batches itself (Keras's `steps_per_execution`): the same batches,
            order and maths as one step a call, without the Python round trip between
            steps (1.6x the samples/s of simple-64 and elman-64, 1.34x of LSTM-64 and
            1.44x of GRU-64 on a 2-core CPU; `benchmarks/training_speed.py`). Callbacks,
            the progress bar among them, see the batches in groups of this many.
            `loop="fit"` runs the most that divide an epoch's steps (see
            `training.fit_steps_per_execution`).
        patience: early stopping after this many epochs without a better one (None:
            train all epochs). The best epoch's weights are kept: the highest validation
            accuracy, ties to the lower validation loss (`rundir.best_row`).
        seed: seeds weights, dropout and shuffling.
        deterministic: make TensorFlow's ops deterministic too (slower), so that a run
            repeats bit for bit, resumed or not, on the same machine and software.
        strategy: one of `STRATEGIES`: train the BPTT loop (or Keras `fit`) under a
            `tf.distribute` strategy, each batch (the global batch, `batch_size`) split
            between the replicas. How a run is trained, not what: a run resumes under
            another strategy or number of devices.
        devices: the replicas of strategy "mirrored": that many GPUs, or the CPU split
            into that many logical devices where there is none (None: every GPU, or the
            CPU as one device).
        verbose: 1 shows a progress bar, 0 is silent.
    """

    epochs: int = 20
    learning_rate: float = 2e-3
    schedule: str = "cosine"
    weight_decay: float = 0.0
    clipnorm: float | None = 1.0
    loop: str = "bptt"
    jit_compile: bool = False
    steps_per_execution: int = 32
    patience: int | None = None
    seed: int = 0
    deterministic: bool = False
    strategy: str = "none"
    devices: int | None = None
    verbose: int = 1

    def __post_init__(self):
        check_choice("loop", self.loop, LOOPS)
        check_positive("epochs", self.epochs, integer=True)
        check_positive("learning_rate", self.learning_rate)
        check_choice("schedule", self.schedule, SCHEDULES)
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not 0 <= wd < math.inf:
            raise ConfigError(f"weight_decay must be >= 0 (0: plain Adam), got {wd!r}")
        check_positive("clipnorm", self.clipnorm, optional=True)
        check_positive("steps_per_execution", self.steps_per_execution, integer=True)
        check_positive("patience", self.patience, optional=True, integer=True)
        check_choice("strategy", self.strategy, STRATEGIES)
        check_positive("devices", self.devices, optional=True, integer=True)
        if self.devices is not None and self.strategy != "mirrored":
            raise ConfigError(
                f"devices (--devices) sets the replicas of strategy='mirrored' "
                f"(--strategy mirrored), got devices={self.devices} with "
                f"strategy={self.strategy!r} (multi-worker: each worker uses its GPUs, or "
                f"its CPU)"
            )
        if self.strategy != "none" and self.jit_compile:
            raise ConfigError(
                f"jit_compile (--xla) does not run under strategy={self.strategy!r}: XLA "
                f"cannot compile a step that reads variables mirrored on other devices "
                f"(Keras turns it off under tf.distribute too)"
            )
        if self.strategy != "none" and self.loop == "fit" and self.clipnorm is not None:
            raise ConfigError(
                f"loop='fit' under strategy={self.strategy!r} clips each replica's share of "
                f"the gradient by clipnorm={self.clipnorm}, not the batch's: use loop='bptt' "
                f"(--loop bptt), which clips the whole batch's gradient, or clipnorm=None "
                f"(--clipnorm 0)"
            )


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """How a search runs.

    Attributes:
        tuner: "random", "bayesian" (needs scipy and scikit-learn) or "hyperband".
        max_trials: trials to run (random, bayesian); Hyperband's budget follows max_epochs.
        max_epochs: the most epochs one trial trains (Hyperband: its max_epochs).
        patience: early stopping inside a trial (epochs without a higher val_accuracy,
            the trial's score).
        loop: train trials with the "bptt" loop or Keras "fit".
        max_bytes: a model-size budget: the objective becomes the best validation accuracy
            among models within it (None: plain val_accuracy).
        size_measure: what counts against max_bytes: float32 parameter bytes, int8
            parameter bytes, or the size of the real int8 .tflite file.
        time_budget_s: stop cleanly after the trial running when this many seconds passed.
        seed: the search's seed.
    """

    tuner: str = "random"
    max_trials: int = 10
    max_epochs: int = 10
    patience: int | None = 2
    loop: str = "bptt"
    max_bytes: int | None = None
    size_measure: str = "float32_params"
    time_budget_s: float | None = None
    seed: int = 0

    def __post_init__(self):
        check_choice("tuner", self.tuner, TUNERS)
        check_choice("loop", self.loop, LOOPS)
        check_choice("size_measure", self.size_measure, SIZE_MEASURES)
        check_positive("max_trials", self.max_trials, integer=True)
        check_positive("max_epochs", self.max_epochs, integer=True)
        check_positive("patience", self.patience, optional=True, integer=True)
        check_positive("max_bytes", self.max_bytes, optional=True, integer=True)
        check_positive("time_budget_s", self.time_budget_s, optional=True)
