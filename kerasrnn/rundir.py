"""A training run's folder: its configuration, per-epoch metrics, checkpoints and figures.

RUN/config.json        how the run was made (model, data and training configs)
RUN/metrics.csv|json   one row per finished epoch
RUN/checkpoints/       the latest epoch (model, optimizer, epoch counter)
RUN/best/              the weights of the epoch with the lowest validation loss (written
                       into RUN/.tmp-best/, then renamed into place: a kill leaves one copy)
RUN/logs/              TensorBoard scalars
RUN/model.keras        the final model; RUN/summary.json its test scores
RUN/curves.png, RUN/confusion.png
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time

import keras
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
        self.model_path = os.path.join(self.path, "model.keras")
        self.summary_path = os.path.join(self.path, "summary.json")
        self.curves_path = os.path.join(self.path, "curves.png")
        self.confusion_path = os.path.join(self.path, "confusion.png")

    def begin(self, config: dict, resume: bool) -> None:
        """Claims the folder for a run with `config`, refusing to clobber another run, and
        undoes what a kill of an earlier attempt left half-done (see `recover`).

        Raises:
            RunExistsError: the folder holds a run and `resume` is false, or it holds a
                run made with a different configuration.
        """
        config = json.loads(json.dumps(config))  # compare as stored (tuples become lists)
        if os.path.exists(self.config_path):
            with open(self.config_path) as f:
                saved = json.load(f)
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
        removed = remove_temporaries(self.path)
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


class RunRecorder(keras.callbacks.Callback):
    """Records each finished epoch: metrics, checkpoint, best weights, TensorBoard.

    Early stopping lives here too, derived from the recorded history alone, so a resumed
    run stops exactly where an uninterrupted one would.

    Args:
        run: the run folder.
        checkpoint: a `tf.train.Checkpoint` with an `epoch` variable.
        history: the rows of epochs already finished (when resuming).
        num_samples: training examples per epoch, for samples/second.
        patience: stop after this many epochs without a lower validation loss
            (None: never stop early).
    """

    def __init__(
        self,
        run: RunDirectory,
        checkpoint: tf.train.Checkpoint,
        history: list[dict],
        num_samples: int,
        patience: int | None,
    ):
        super().__init__()
        self.run = run
        self.checkpoint = checkpoint
        self.manager = tf.train.CheckpointManager(checkpoint, run.checkpoint_dir, max_to_keep=2)
        self.best = tf.train.Checkpoint(model=checkpoint.model)
        self.history = history
        self.num_samples = num_samples
        self.patience = patience
        self.writer = tf.summary.create_file_writer(run.log_dir)
        self._start = 0.0

    def best_epoch(self) -> int | None:
        """The epoch (1-based) with the lowest validation loss so far."""
        if not self.history:
            return None
        return min(self.history, key=lambda row: row["val_loss"])["epoch"]

    def should_stop(self) -> bool:
        """Whether `patience` epochs have passed without a lower validation loss."""
        if self.patience is None or not self.history:
            return False
        return self.history[-1]["epoch"] - self.best_epoch() >= self.patience

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        row = {
            "epoch": epoch + 1,
            "seconds": round(seconds, 3),
            "samples_per_second": round(self.num_samples / seconds, 1),
        }
        row.update({k: float(logs[k]) for k in METRIC_COLUMNS[1:5]})
        self.history.append(row)
        if self.best_epoch() == row["epoch"]:
            self.run.write_best(self.best)
        # Metrics first, then the checkpoint: a kill between the two re-runs this epoch on
        # resume (the history is cut back to the checkpoint), so no epoch is lost or doubled.
        self.run.write_history(self.history)
        self.checkpoint.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        with self.writer.as_default(step=epoch + 1):
            for key in METRIC_COLUMNS[1:]:
                tf.summary.scalar(key, row[key])
        self.writer.flush()
        if self.should_stop():
            self.model.stop_training = True

    def restore_best(self) -> None:
        """Loads the weights of the best epoch into the model."""
        if self.best_epoch() is not None:
            self.best.read(self.run.best_prefix).assert_existing_objects_matched()
