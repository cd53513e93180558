"""A training run's folder: its configuration, per-epoch metrics, checkpoints and figures.

RUN/config.json        how the run was made (model, data and training configs)
RUN/metrics.csv|json   one row per finished epoch
RUN/checkpoints/       the latest epoch (model, optimizer, epoch counter)
RUN/best/              the weights of the best epoch, see `best_row` (written
                       into RUN/.tmp-best/, then renamed into place: a kill leaves one copy)
RUN/logs/train/        TensorBoard, as Keras's callback writes it: epoch_loss, epoch_accuracy,
RUN/logs/validation/   epoch_learning_rate (train) by epoch, and weight histograms on request
RUN/model.keras        the final model; RUN/summary.json its test scores
RUN/curves.png, RUN/confusion.png
RUN/.lock              held by the process training or exporting into RUN (see `kerasrnn._lock`)
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import shutil
import socket
import time

import keras
import numpy as np
import tensorflow as tf

from kerasrnn._io import TEMPORARY_PREFIX, atomic_write, remove_temporaries, write_json
from kerasrnn.errors import RunExistsError

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
    "samples_per_second",
)


class RunDirectory:
    """Paths and files of one run folder.

    Args:
        path: the folder (created when missing).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.config_path = os.path.join(self.path, "config.json")
        self.metrics_json = os.path.join(self.path, "metrics.json")
        self.metrics_csv = os.path.join(self.path, "metrics.csv")
        self.checkpoint_dir = os.path.join(self.path, "checkpoints")
        self.best_dir = os.path.join(self.path, "best")
        self.best_prefix = os.path.join(self.best_dir, "weights")
        # `write_best` writes here, then moves the old copy aside and this one into place.
        self.best_staging = os.path.join(self.path, TEMPORARY_PREFIX + "best")
        self._best_aside = os.path.join(self.path, TEMPORARY_PREFIX + "best-previous")
        self.log_dir = os.path.join(self.path, "logs")
        self.train_log_dir = os.path.join(self.log_dir, "train")
        self.validation_log_dir = os.path.join(self.log_dir, "validation")
        self.model_path = os.path.join(self.path, "model.keras")
        self.summary_path = os.path.join(self.path, "summary.json")
        self.curves_path = os.path.join(self.path, "curves.png")
        self.confusion_path = os.path.join(self.path, "confusion.png")

    def begin(self, config: dict, resume: bool, defaults: dict | None = None) -> None:
        """Claims the folder for a run with `config`, refusing to clobber another run, and
        undoes what a kill of an earlier attempt left half-done (see `recover`).

        Args:
            config: the run's settings, nested dicts ({"model": {...}, "train": {...}}).
            resume: continue the run the folder holds.
            defaults: the settings' defaults, shaped like `config`: a setting that a run
                made by an older kerasrnn lacks counts as its default there.

        Raises:
            RunExistsError: the folder holds a run and `resume` is false, or it holds a
                run made with a different configuration.
        """
        config = json.loads(json.dumps(config))  # compare as stored (tuples become lists)
        if os.path.exists(self.config_path):
            with open(self.config_path) as f:
                saved = with_defaults(json.load(f), json.loads(json.dumps(defaults or {})))
            if not resume:
                raise RunExistsError(
                    f"{self.path} already holds a run: pass resume=True (--resume) to "
                    f"continue it, or choose another output folder"
                )
            if saved != config:
                raise RunExistsError(
                    f"{self.path} holds a run with a different configuration "
                    f"({', '.join(differences(saved, config))}): resume it with the same "
                    f"settings or choose another output folder"
                )
        self.recover()
        write_json(self.config_path, config)

    def recover(self) -> None:
        """Undoes what a kill left half-done: puts the previous best weights back when the
        kill fell between the two renames of `write_best`, then removes the temporaries
        of interrupted writes (`.tmp-*`)."""
        if not os.path.exists(self.best_dir) and os.path.isdir(self._best_aside):
            os.replace(self._best_aside, self.best_dir)
        removed = remove_temporaries(self.path, self.train_log_dir, self.validation_log_dir)
        if removed:
            log.info("removed %d leftovers of an interrupted run: %s", len(removed), removed)

    def write_best(self, checkpoint: tf.train.Checkpoint) -> None:
        """Writes `checkpoint` as the best weights, so that a kill leaves the old or the new
        copy whole (TensorFlow rewrites a checkpoint's index in place, so overwriting
        `best/` could tear it)."""
        if os.path.exists(self.best_staging):
            shutil.rmtree(self.best_staging)
        checkpoint.write(os.path.join(self.best_staging, "weights"))
        if os.path.exists(self.best_dir):
            os.replace(self.best_dir, self._best_aside)
        os.replace(self.best_staging, self.best_dir)
        shutil.rmtree(self._best_aside, ignore_errors=True)

    def read_history(self) -> list[dict]:
        """The rows of the finished epochs (empty for a new run)."""
        if not os.path.exists(self.metrics_json):
            return []
        with open(self.metrics_json) as f:
            return json.load(f)

    def write_history(self, history: list[dict]) -> None:
        """Writes the per-epoch metrics as JSON and CSV, atomically."""
        write_json(self.metrics_json, history)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        atomic_write(self.metrics_csv, buffer.getvalue())


def with_defaults(saved: dict, defaults: dict) -> dict:
    """`saved` with the settings it lacks taken from `defaults` (nested alike)."""
    merged = dict(saved)
    for key, default in defaults.items():
        if key not in merged:
            merged[key] = default
        elif isinstance(merged[key], dict) and isinstance(default, dict):
            merged[key] = with_defaults(merged[key], default)
    return merged


def differences(saved: dict, new: dict, prefix: str = "") -> list[str]:
    """Names the settings that differ between two nested configs, e.g. 'model.units 8 -> 9'."""
    out = []
    for key in sorted(set(saved) | set(new)):
        old, value = saved.get(key), new.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out += differences(old, value, f"{prefix}{key}.")
        elif old != value:
            out.append(f"{prefix}{key} {old!r} -> {value!r}")
    return out


# TensorBoard's runs and tags, as Keras's TensorBoard callback names them, so that train and
# validation curves overlay: run -> {tag: metrics column}.
TENSORBOARD_SCALARS = {
    "train": {
        "epoch_loss": "loss",
        "epoch_accuracy": "accuracy",
        "epoch_learning_rate": "learning_rate",
        "epoch_samples_per_second": "samples_per_second",
    },
    "validation": {"epoch_loss": "val_loss", "epoch_accuracy": "val_accuracy"},
}
_SCALAR_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
)


class EventLog:
    """A run's TensorBoard event files: RUN/logs/train and RUN/logs/validation.

    Each finished epoch gets one step, numbered as in metrics.csv (1-based): the scalars of
    `TENSORBOARD_SCALARS` and, with `histograms`, a histogram of every trainable variable
    in the train run, tagged `LAYER/VARIABLE/histogram` (see `histogram_tags`).

    A killed run leaves event files that may lack its last epochs, or end in a torn record.
    `repair` rewrites them from the recorded history before a run resumes, so that every
    step appears once, in order (TensorBoard drops the later points of a tag whose steps
    go backwards), with the values of metrics.csv.

    Args:
        run: the run folder.
        histograms: also write weight histograms each epoch.
    """

    def __init__(self, run: RunDirectory, histograms: bool = False):
        self.folders = {"train": run.train_log_dir, "validation": run.validation_log_dir}
        self.histograms = histograms
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def repair(self, history: list[dict]) -> None:
        """Rewrites the event files to hold exactly the epochs of `history` (the finished
        epochs of the run being resumed): scalars from `history`, and the histograms that
        were written for those epochs."""
        last = history[-1]["epoch"] if history else 0
        for name, folder in self.folders.items():
            paths = sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
            if not paths and not history:
                continue
            kept, wall_times = {}, {}
            for event in (e for path in paths for e in _read_events(path)):
                for value in event.summary.value:
                    if event.step > last:
                        continue
                    key = (event.step, value.tag)
                    wall_times.setdefault(key, event.wall_time)
                    if value.tag not in TENSORBOARD_SCALARS[name]:
                        kept[key] = _event(event.wall_time, event.step, value)
            now = time.time()
            for row in history:
                for tag, column in TENSORBOARD_SCALARS[name].items():
                    if row.get(column) is not None:
                        key = (row["epoch"], tag)
                        value = tf.compat.v1.Summary.Value(
                            tag=tag,
                            tensor=tf.make_tensor_proto(np.float32(row[column])),
                            metadata=_SCALAR_METADATA,
                        )
                        kept[key] = _event(wall_times.get(key, now), row["epoch"], value)
            _rewrite(folder, paths, [kept[key] for key in sorted(kept)])

    def open(self) -> None:
        """Opens the event files, when not open, and imports the TensorBoard summaries that
        `write` uses (tf.summary imports them at its first call). A run calls it before its
        first epoch, so that a Ctrl-C as an epoch ends never lands inside an import (Python
        3.11 reports one as a RuntimeError, not as the interruption)."""
        if not self._writers:
            import tensorboard.summary.v2  # noqa: F401

            self._writers = {
                name: tf.summary.create_file_writer(folder) for name, folder in self.folders.items()
            }

    def write(self, row: dict, model: keras.Model) -> None:
        """Writes one finished epoch (a row of the history) and flushes it to disk."""
        self.open()
        for name, writer in self._writers.items():
            with writer.as_default(step=row["epoch"]):
                for tag, column in TENSORBOARD_SCALARS[name].items():
                    tf.summary.scalar(tag, row[column])
                if self.histograms and name == "train":
                    for tag, variable in histogram_tags(model).items():
                        tf.summary.histogram(tag, variable)
            writer.flush()

    def close(self) -> None:
        """Closes the event files (the next `write` opens new ones)."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def histogram_tags(model: keras.Model) -> dict:
    """`LAYER/VARIABLE/histogram` -> variable, for every trainable variable of `model`.

    Tags take the names of the model's layers, which `build_classifier` gives, rather
    than the variables' paths (Keras's TensorBoard callback uses those), because Keras
    numbers the names of inner cells in a process up (`elman_cell_1`): a run resumed in
    the same process would log its histograms under other tags.
    """
    return {
        f"{layer.name}/{variable.name}/histogram": variable
        for layer in model.layers
        for variable in layer.trainable_weights
    }


def _read_events(path: str) -> list:
    """The events of one file, up to a record that a kill cut short."""
    events = []
    try:
        for record in tf.data.TFRecordDataset(path):
            events.append(tf.compat.v1.Event.FromString(record.numpy()))
    except tf.errors.DataLossError:
        log.info("%s: a torn last record (an interrupted write) is dropped", path)
    return events


def _event(wall_time: float, step: int, value) -> tf.compat.v1.Event:
    return tf.compat.v1.Event(
        wall_time=wall_time, step=step, summary=tf.compat.v1.Summary(value=[value])
    )


def _rewrite(folder: str, paths: list[str], events: list) -> None:
    """Replaces the event files `paths` with one holding `events`.

    The new file takes the name of the first old one (or an early name when there was
    none), so that it sorts before the file the resumed run writes: TensorBoard reads a
    folder's files in name order. A kill between the replace and the removals leaves
    copies of events that the next `repair` merges again.
    """
    if not events:
        for path in paths:
            os.unlink(path)
        return
    os.makedirs(folder, exist_ok=True)
    # Writers name their files events.out.tfevents.{seconds}.{host}.{pid}.{n}.v2: with
    # "0" in place of the pid, this one sorts before any a writer makes in the same second.
    path = (
        paths[0]
        if paths
        else os.path.join(
            folder, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.0.v2"
        )
    )
    header = tf.compat.v1.Event(wall_time=events[0].wall_time, file_version="brain.Event:2")

    def write(tmp: str) -> None:
        with tf.io.TFRecordWriter(tmp) as writer:
            for event in (header, *events):
                writer.write(event.SerializeToString())

    atomic_write(path, write)
    for old in paths[1:]:
        os.unlink(old)


def best_row(history: list[dict]) -> dict:
    """The best epoch of a run: the highest validation accuracy, then the lowest
    validation loss, then the earliest.

    Accuracy first, because the loss keeps rising after the accuracy has peaked: as the
    model grows confident, its few wrong answers cost more (measured on full MNIST,
    GRU-128 with dropout 0.2 and the cosine schedule: the lowest loss at epoch 10 with
    98.83%, 99.03% at epoch 15).

    Args:
        history: one row per epoch, with epoch, val_accuracy and val_loss.
    """
    return min(history, key=lambda row: (-row["val_accuracy"], row["val_loss"], row["epoch"]))


class RunRecorder(keras.callbacks.Callback):
    """Records each finished epoch: metrics, checkpoint, best weights, TensorBoard.

    Early stopping lives here too, derived from the recorded history alone, so a resumed
    run stops exactly where an uninterrupted one would.

    Args:
        run: the run folder.
        checkpoint: a `tf.train.Checkpoint` with an `epoch` variable.
        history: the rows of epochs already finished (when resuming).
        num_samples: training examples per epoch, for samples/second.
        patience: stop after this many epochs without a better one (see `best_row`)
            (None: never stop early).
        histograms: write a TensorBoard histogram of every trainable variable each epoch.
    """

    def __init__(
        self,
        run: RunDirectory,
        checkpoint: tf.train.Checkpoint,
        history: list[dict],
        num_samples: int,
        patience: int | None,
        histograms: bool = False,
    ):
        super().__init__()
        self.run = run
        self.checkpoint = checkpoint
        self.manager = tf.train.CheckpointManager(checkpoint, run.checkpoint_dir, max_to_keep=2)
        self.best = tf.train.Checkpoint(model=checkpoint.model)
        self.history = history
        self.num_samples = num_samples
        self.patience = patience
        self.events = EventLog(run, histograms)
        self.events.repair(history)
        self._start = 0.0

    def best_epoch(self) -> int | None:
        """The epoch (1-based) with the highest validation accuracy so far (see
        `best_row`)."""
        return best_row(self.history)["epoch"] if self.history else None

    def should_stop(self) -> bool:
        """Whether `patience` epochs have passed without a better epoch (see `best_row`)."""
        if self.patience is None or not self.history:
            return False
        return self.history[-1]["epoch"] - self.best_epoch() >= self.patience

    def on_train_begin(self, logs=None):
        self.events.open()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        row = {
            "epoch": epoch + 1,
            "loss": float(logs["loss"]),
            "accuracy": float(logs["accuracy"]),
            "val_loss": float(logs["val_loss"]),
            "val_accuracy": float(logs["val_accuracy"]),
            # the rate the epoch's last step used (a schedule's value, when there is one)
            "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "seconds": round(seconds, 3),
            "samples_per_second": round(self.num_samples / seconds, 1),
        }
        self.history.append(row)
        if self.best_epoch() == row["epoch"]:
            self.run.write_best(self.best)
        # Metrics first, then the checkpoint: a kill between the two re-runs this epoch on
        # resume (the history is cut back to the checkpoint), so no epoch is lost or doubled.
        # TensorBoard last: its files are rewritten from the history on resume (`EventLog`).
        self.run.write_history(self.history)
        self.checkpoint.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        self.events.write(row, self.model)
        if self.should_stop():
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.events.close()

    def restore_best(self) -> None:
        """Loads the weights of the best epoch into the model."""
        if self.best_epoch() is not None:
            self.best.read(self.run.best_prefix).assert_existing_objects_matched()
