"""A training run: `train` builds a classifier, trains it into a run folder (resumable),
then saves it, scores it on the test split and draws its figures."""

from __future__ import annotations

import dataclasses
import logging

import keras
import tensorflow as tf

from kerasrnn import data, plots
from kerasrnn._io import atomic_write, write_json
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
from kerasrnn.errors import DataError
from kerasrnn.evaluation import predict_logits, scores
from kerasrnn.models import build_classifier
from kerasrnn.rundir import RunDirectory, RunRecorder
from kerasrnn.training import compile_model, fit

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
) -> TrainResult:
    """Trains a classifier into a run folder (see `kerasrnn.rundir`), resumable.

    Args:
        model_config: the architecture; its view is `data_config.view`.
        data_config: the data; `validation` is carved from the training split.
        config: see `TrainConfig`.
        out_dir: the run folder.
        resume: continue the run in `out_dir` from its last finished epoch.
        callbacks: extra Keras callbacks.

    Returns:
        A `TrainResult`; the model holds the best epoch's weights.

    Raises:
        DataError: a split holds no examples (nothing is written then).
        RunExistsError: `out_dir` holds a run and `resume` is false, or a different run.
    """
    data_config = dataclasses.replace(data_config, source=data.resolve_source(data_config))
    model_config = dataclasses.replace(model_config, view=data_config.view)
    keras.utils.set_random_seed(config.seed)
    splits = {split: data.pipeline(data_config, split) for split in ("train", "validation", "test")}
    num_samples = _check_splits(data_config, splits)
    run = RunDirectory(out_dir)
    run.begin(
        {
            "model": dataclasses.asdict(model_config),
            "data": dataclasses.asdict(data_config),
            "train": {k: v for k, v in dataclasses.asdict(config).items() if k != "verbose"},
        },
        resume,
    )
    model = compile_model(build_classifier(model_config), config)
    if config.verbose:  # the layers and parameter counts, as Keras users expect to see first
        model.summary()
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=model.optimizer, epoch=tf.Variable(0, dtype=tf.int64)
    )
    initial_epoch = 0
    latest = tf.train.latest_checkpoint(run.checkpoint_dir) if resume else None
    if latest:
        model.optimizer.build(model.trainable_variables)
        checkpoint.restore(latest).assert_existing_objects_matched()
        initial_epoch = int(checkpoint.epoch.numpy())
        log.info("resuming %s after epoch %d", out_dir, initial_epoch)
    recorder = RunRecorder(
        run, checkpoint, run.read_history()[:initial_epoch], num_samples, config.patience
    )
    if initial_epoch < config.epochs and not recorder.should_stop():
        fit(
            model,
            splits["train"],
            splits["validation"],
            config,
            [recorder, *callbacks],
            initial_epoch,
        )
    recorder.restore_best()
    return _finish(run, model, splits["test"], recorder)


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
        where = f" in {data_config.data_dir}" if data_config.data_dir else ""
        sizes = ", ".join(f"{count} {split}" for split, count in counts.items())
        raise DataError(
            f"data {data_config.source!r}{where}: no {' or '.join(empty)} examples ({sizes}; "
            f"validation takes {data_config.validation_fraction:.0%} of the training "
            f"images, at least one): training needs at least one example in every split"
        )
    return counts["train"]


def _finish(
    run: RunDirectory, model: keras.Model, test_ds: tf.data.Dataset, recorder: RunRecorder
) -> TrainResult:
    """Saves the model, scores it on the test split and draws the figures."""
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
        counts, run.confusion_path, f"test accuracy {test['test_accuracy']:.2%}"
    )
    return TrainResult(model, history, test, run.path)
