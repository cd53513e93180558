"""A training run: `train` builds a classifier, trains it into a run folder (resumable),
then saves it, scores it on the test split and draws its figures."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil

import keras
import tensorflow as tf

from kerasrnn import data, distribute, plots
from kerasrnn._io import atomic_write, write_json
from kerasrnn._lock import folder_lock
from kerasrnn.config import CLASS_NAMES, DataConfig, ModelConfig, TrainConfig
from kerasrnn.errors import DataError
from kerasrnn.evaluation import predict_logits, scores
from kerasrnn.models import build_classifier
from kerasrnn.rundir import RunDirectory, RunRecorder
from kerasrnn.training import (
    compile_model,
    fit,
    make_reproducible,
    random_states,
    steps_per_epoch,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What `train` produced.

    Attributes:
        model: the classifier, holding the best epoch's weights.
        history: one row per finished epoch (see `rundir.METRIC_COLUMNS`).
        test: test_loss, test_accuracy, test_examples, parameters, epochs.
        run_dir: the run folder.
    """

    model: keras.Model
    history: list[dict]
    test: dict
    run_dir: str


def train(
    model_config: ModelConfig,
    data_config: DataConfig,
    config: TrainConfig,
    out_dir: str,
    resume: bool = False,
    callbacks=(),
    histograms: bool = False,
) -> TrainResult:
    """Trains a classifier into a run folder (see `kerasrnn.rundir`), resumable.

    Under `config.strategy` (see `kerasrnn.distribute`), the model and its optimizer are
    made in the strategy's scope and each batch is split between the replicas. In a
    multi-worker run, every worker calls `train` with the same arguments; the chief writes
    `out_dir`, the other workers a temporary folder that is deleted at the end, and to
    resume they read the chief's `out_dir` (which they must see: a shared file system).

    Args:
        model_config: the architecture; its view is `data_config.view`, and for a .npz's
            sequences its steps, features and classes are the data's (`data.model_shape`).
        data_config: the data; `validation` is carved from the training split.
        config: see `TrainConfig`.
        out_dir: the run folder.
        resume: continue the run in `out_dir` from its last finished epoch.
        callbacks: extra Keras callbacks.
        histograms: also write a TensorBoard histogram of every trainable variable each
            epoch (RUN/logs/train; see `rundir.EventLog`).

    Returns:
        A `TrainResult`; the model holds the best epoch's weights. On a multi-worker
        run's workers other than the chief: the last epoch's weights, and no test scores.

    Raises:
        ConfigError: the strategy cannot be made (see `distribute.make_strategy`).
        DataError: a split holds no examples (nothing is written then).
        RunExistsError: `out_dir` holds a run and `resume` is false, or a different run.
        RunFolderError: another process is training into `out_dir` (see
            `kerasrnn._lock`), or the workers of a multi-worker run resume from
            different epochs.
    """
    # First: a strategy may set up TensorFlow's devices, which must not have started.
    strategy = distribute.make_strategy(config)
    data_config = dataclasses.replace(data_config, source=data.resolve_source(data_config))
    if data_config.npz is not None:  # a run resumes from any working directory
        data_config = dataclasses.replace(data_config, npz=os.path.abspath(data_config.npz))
    model_config = dataclasses.replace(
        model_config, view=data_config.view, **data.model_shape(data_config)
    )
    if data.lacks_test_split(data_config):
        log.warning(
            "%s holds no x_test/y_test: the test scores are on the validation split, which "
            "also chose the best epoch (optimistic)",
            data_config.npz,
        )
    make_reproducible(config)
    splits = {split: data.pipeline(data_config, split) for split in ("train", "validation", "test")}
    num_samples = _check_splits(data_config, splits)
    run = RunDirectory(out_dir)
    chief = distribute.is_chief(strategy)
    # The chief alone writes the run folder, and holds it for the whole run: another
    # `train` of it (a second --resume) is refused while this one runs.
    with folder_lock(run.path, "run folder") if chief else contextlib.nullcontext():
        if chief:
            digest = data.npz_sha256(data_config)  # read once: a .npz may be large
            run.begin(
                _settings(model_config, data_config, config, digest),
                resume,
                _settings_of_old_runs(digest),
            )
        # Each epoch's batches in an order fixed by the seeds and the epoch, so that a resumed
        # run reads what an uninterrupted one would (see `data.epochs`).
        train_batches = data.epochs(data_config, "train")
        steps = steps_per_epoch(train_batches)
        with distribute.scope(strategy):
            model = compile_model(build_classifier(model_config), config, steps)
            if strategy is not None:  # now, on every worker alike: making variables is collective
                model.optimizer.build(model.trainable_variables)
        if config.verbose:  # the layers and parameter counts, as Keras users expect to see first
            model.summary()
        checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=model.optimizer,
            epoch=tf.Variable(0, dtype=tf.int64),
            random=random_states(model),
        )
        initial_epoch = 0
        latest = tf.train.latest_checkpoint(run.checkpoint_dir) if resume else None
        if latest:
            model.optimizer.build(model.trainable_variables)
            checkpoint.restore(latest).assert_existing_objects_matched()
            initial_epoch = int(checkpoint.epoch.numpy())
            log.info("resuming %s after epoch %d", out_dir, initial_epoch)
            if not config.deterministic and initial_epoch < config.epochs:
                log.info(
                    "resumed without --deterministic: bit-exact only where TensorFlow's kernels "
                    "happen to be deterministic (usually on CPUs, not on GPUs)"
                )
        distribute.check_workers_agree(strategy, initial_epoch, run.path)
        # Every worker runs the same recorder, so that all stop early at the same epoch and
        # all save, as TensorFlow's multi-worker guide advises (a save may need every worker).
        records = run if chief else RunDirectory(distribute.worker_folder())
        try:
            recorder = RunRecorder(
                records,
                checkpoint,
                run.read_history()[:initial_epoch],
                num_samples,
                config.patience,
                histograms=histograms,
            )
            if initial_epoch < config.epochs and not recorder.should_stop():
                fit(
                    model,
                    train_batches,
                    splits["validation"],
                    config,
                    [recorder, *callbacks],
                    initial_epoch,
                )
        finally:
            if not chief:
                shutil.rmtree(records.path, ignore_errors=True)
        if not chief:  # the chief restores the best epoch, saves and scores the model
            return TrainResult(distribute.local_copy(model), recorder.history, {}, run.path)
        recorder.restore_best()
        if strategy is not None:  # saved and scored on one device (see `distribute.local_copy`)
            model = compile_model(distribute.local_copy(model), config, steps)
        return _finish(run, model, splits["test"], recorder, CLASS_NAMES[data_config.dataset])


def _settings(
    model_config: ModelConfig | None = None,
    data_config: DataConfig | None = None,
    config: TrainConfig | None = None,
    npz_sha256: str | None = None,
) -> dict:
    """A run's settings as `config.json` holds them (by default, the defaults'). Not
    `_HOW_TRAINED`: they say how a run is trained, not what, so a run resumes with others.
    A .npz's settings hold its SHA-256 (`data.npz_sha256`) beside its path: a run resumes
    on the same data."""
    return {
        "model": dataclasses.asdict(model_config or ModelConfig()),
        "data": data.recorded_settings(data_config or DataConfig(), npz_sha256),
        "train": {
            k: v
            for k, v in dataclasses.asdict(config or TrainConfig()).items()
            if k not in _HOW_TRAINED
        },
    }


def _settings_of_old_runs(npz_sha256: str | None) -> dict:
    """What a run made by an older kerasrnn did for each setting its config.json lacks:
    the setting's first default, which is today's unless it changed since; a run made
    before digests were recorded resumes on its .npz as it is now (`npz_sha256`)."""
    settings = _settings(npz_sha256=npz_sha256)
    # Added with a constant rate as default; 20 epochs of "cosine" became the recipe later.
    settings["train"]["schedule"] = "constant"
    return settings


# The training settings that config.json leaves out (see `_settings`).
_HOW_TRAINED = ("verbose", "strategy", "devices", "steps_per_execution")


def _check_splits(data_config: DataConfig, splits: dict[str, tf.data.Dataset]) -> int:
    """Counts the examples of each split, refusing an empty one.

    Returns:
        The number of training examples.

    Raises:
        DataError: a split holds no examples; names the data and every split's count.
    """
    counts = {
        split: int(ds.reduce(0, lambda n, batch: n + tf.shape(batch[1])[0]))
        for split, ds in splits.items()
    }
    empty = [split for split, count in counts.items() if count == 0]
    if empty:
        folder = data_config.npz or data_config.data_dir
        where = f" in {folder}" if folder else ""
        sizes = ", ".join(f"{count} {split}" for split, count in counts.items())
        raise DataError(
            f"data {data_config.source!r}{where}: no {' or '.join(empty)} examples ({sizes}; "
            f"validation takes {data_config.validation_fraction:.0%} of the training "
            f"examples, at least one): training needs at least one example in every split"
        )
    return counts["train"]


def _finish(
    run: RunDirectory,
    model: keras.Model,
    test_ds: tf.data.Dataset,
    recorder: RunRecorder,
    class_names: tuple[str, ...],
) -> TrainResult:
    """Saves the model, scores it on the test split and draws the figures (the confusion
    matrix names the dataset's classes)."""
    history = recorder.history
    atomic_write(run.model_path, model.save)
    labels, logits = predict_logits(model, test_ds)
    test = {f"test_{k}": v for k, v in scores(labels, logits).items()}
    test.update(
        {
            "test_examples": len(labels),
            "parameters": int(model.count_params()),
            "epochs": len(history),
        }
    )
    write_json(run.summary_path, test)
    plots.training_curves(history, run.curves_path, recorder.best_epoch())
    counts = plots.confusion_matrix(labels, logits.argmax(-1), logits.shape[-1])
    plots.confusion_matrix_png(
        counts,
        run.confusion_path,
        f"test accuracy {test['test_accuracy']:.2%}",
        class_names if len(class_names) == len(counts) else None,  # a model of other classes
    )
    return TrainResult(model, history, test, run.path)
