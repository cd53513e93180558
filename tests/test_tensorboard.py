"""TensorBoard logs of a run: Keras's layout and tags, weight histograms, and resume."""

import csv
import glob
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from kerasrnn.cli import build_parser
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
from kerasrnn.rundir import histogram_tags
from kerasrnn.training_run import train

TINY = DataConfig(source="sample", max_examples=128)
MODEL = ModelConfig(cell="elman", units=8)
TRAIN_TAGS = {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "epoch_samples_per_second"}
VALIDATION_TAGS = {"epoch_loss", "epoch_accuracy"}


def _events(folder: str) -> dict[str, list[tuple[int, np.ndarray]]]:
    """tag -> [(step, value)] as TensorBoard reads the event files of one run folder."""
    accumulator = event_accumulator.EventAccumulator(
        folder, size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return {
        tag: [(e.step, tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]
        for tag in accumulator.Tags()["tensors"]
    }


def _metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def _assert_scalars_are_the_metrics(run_dir: str, epochs: int) -> None:
    rows = _metrics(run_dir)
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    for run, columns in (
        ("train", {"epoch_loss": "loss", "epoch_accuracy": "accuracy"}),
        ("validation", {"epoch_loss": "val_loss", "epoch_accuracy": "val_accuracy"}),
    ):
        events = _events(os.path.join(run_dir, "logs", run))
        for tag, column in columns.items():
            assert [step for step, _ in events[tag]] == list(range(1, epochs + 1)), (run, tag)
            np.testing.assert_allclose(
                [float(value) for _, value in events[tag]],
                [float(row[column]) for row in rows],
                rtol=1e-6,
                err_msg=f"{run}/{tag}",
            )
    learning_rates = [
        float(v) for _, v in _events(os.path.join(run_dir, "logs", "train"))["epoch_learning_rate"]
    ]
    np.testing.assert_allclose(learning_rates, [float(row["learning_rate"]) for row in rows])


@pytest.mark.parametrize("loop", ["bptt", "fit"])
def test_train_and_validation_runs_hold_the_tags_of_keras_tensorboard(tmp_path, loop):
    keras_logs = str(tmp_path / "keras")
    result = train(
        MODEL,
        TINY,
        TrainConfig(epochs=2, loop=loop, patience=None, verbose=0),
        str(tmp_path / "run"),
        callbacks=[keras.callbacks.TensorBoard(keras_logs)],
    )
    logs = os.path.join(result.run_dir, "logs")
    assert sorted(os.listdir(logs)) == ["train", "validation"]
    ours = {run: _events(os.path.join(logs, run)) for run in ("train", "validation")}
    assert set(ours["train"]) == TRAIN_TAGS
    assert set(ours["validation"]) == VALIDATION_TAGS
    _assert_scalars_are_the_metrics(result.run_dir, epochs=2)
    # Keras's own callback, given the same epochs: the same runs, its tags among ours, the
    # same values (it numbers steps from epoch 0, metrics.csv and we from epoch 1)
    for run in ("train", "validation"):
        theirs = _events(os.path.join(keras_logs, run))
        epoch_tags = {tag for tag in theirs if tag.startswith("epoch_")}
        assert epoch_tags and epoch_tags <= set(ours[run]), run
        for tag in epoch_tags:
            assert [step + 1 for step, _ in theirs[tag]] == [step for step, _ in ours[run][tag]]
            np.testing.assert_allclose(
                [float(v) for _, v in theirs[tag]],
                [float(v) for _, v in ours[run][tag]],
                rtol=1e-6,
                err_msg=f"{run}/{tag}",
            )


def test_histograms_of_every_trainable_variable_each_epoch(tmp_path):
    result = train(
        MODEL,
        TINY,
        TrainConfig(epochs=2, patience=None, verbose=0),
        str(tmp_path),
        histograms=True,
    )
    events = _events(os.path.join(result.run_dir, "logs", "train"))
    tags = histogram_tags(result.model)
    assert len(tags) == len(result.model.trainable_variables) and set(tags) <= set(events)
    assert {"elman_0/w_xh/histogram", "h0_0/h0/histogram", "logits/kernel/histogram"} <= set(tags)
    for tag in tags:
        steps = [step for step, _ in events[tag]]
        assert steps == [1, 2], tag
        buckets = events[tag][-1][1]  # [buckets, (left edge, right edge, count)]
        assert buckets.ndim == 2 and buckets.shape[1] == 3 and buckets[:, 2].sum() > 0
    for tag, variable in tags.items():  # a histogram counts every value of its variable
        assert events[tag][-1][1][:, 2].sum() == np.prod(variable.shape), tag
    assert not set(_events(os.path.join(result.run_dir, "logs", "validation"))) & set(tags)


def test_histograms_flag_reaches_train():
    parser = build_parser()
    assert parser.parse_args(["train", "--histograms", "--out", "x"]).histograms is True
    assert parser.parse_args(["train", "--out", "x"]).histograms is False


class _Killed(Exception):
    pass


class _KillAfterEpoch(keras.callbacks.Callback):
    """Stops the process's training after an epoch was recorded, as a kill would."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise _Killed


def test_resumed_run_logs_every_epoch_once_in_order(tmp_path):
    config = TrainConfig(epochs=3, patience=None, verbose=0)
    out = str(tmp_path / "run")
    with pytest.raises(_Killed):
        train(MODEL, TINY, config, out, callbacks=[_KillAfterEpoch(2)], histograms=True)
    train_logs = os.path.join(out, "logs", "train")
    [first] = glob.glob(os.path.join(train_logs, "events.out.tfevents.*"))
    # What kills leave: a second copy of the events (a run killed after its epoch was
    # logged but before it was checkpointed logs that epoch again), and a torn last record.
    shutil.copy(first, first.replace(".v2", "-copy.v2"))
    with open(first, "ab") as f:
        f.write(b"\x20\x00\x00\x00\x00\x00\x00\x00torn")
    result = train(MODEL, TINY, config, out, resume=True, histograms=True)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    _assert_scalars_are_the_metrics(out, epochs=3)
    events = _events(train_logs)
    for tag in histogram_tags(result.model):
        assert [step for step, _ in events[tag]] == [1, 2, 3], tag
    for path in glob.glob(os.path.join(out, "logs", "*", "events.out.tfevents.*")):
        for _ in tf.data.TFRecordDataset(path):  # every record whole: no DataLossError
            pass


_FIRST_EPOCH = """
import glob, os, sys, keras
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
from kerasrnn.training_run import train

run_dir = sys.argv[1]

class LookAtTheFirstEpoch(keras.callbacks.Callback):  # runs after the run's own recorder
    def on_epoch_begin(self, epoch, logs=None):
        pattern = os.path.join(run_dir, "logs", "*", "events.out.tfevents.*")
        print(sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(pattern)))
        self.before = set(sys.modules)

    def on_epoch_end(self, epoch, logs=None):
        new = set(sys.modules) - self.before
        print(sorted(m for m in new if m.startswith(("tensorboard", "fsspec"))))

train(ModelConfig(cell="elman", units=8), DataConfig(source="sample", max_examples=128),
      TrainConfig(epochs=1, patience=None, verbose=0), run_dir, callbacks=[LookAtTheFirstEpoch()])
"""


def test_tensorboard_is_ready_before_the_first_epoch_not_imported_as_it_ends(tmp_path):
    """A Ctrl-C that lands inside an import comes out of Python 3.11 as a RuntimeError: the
    event files are opened, and TensorBoard's summaries imported, before the first epoch
    (in a new process: this one imported TensorBoard long ago)."""
    result = subprocess.run(
        [sys.executable, "-c", _FIRST_EPOCH, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    open_files, imported_as_the_epoch_ended = result.stdout.splitlines()
    assert open_files == "['train', 'validation']"
    assert imported_as_the_epoch_ended == "[]"
