import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kerasrnn import data, idx, training
from kerasrnn.config import LOOPS, DataConfig, ModelConfig, TrainConfig
from kerasrnn.errors import ConfigError, DataError, RunExistsError, RunFolderError
from kerasrnn.evaluation import evaluate, evaluate_file
from kerasrnn.models import build_classifier
from kerasrnn.training_run import train

SMALL = DataConfig(source="sample", max_examples=256)


def test_train_step_updates_every_variable():
    config = TrainConfig(epochs=1, schedule="constant", verbose=0)
    model = training.compile_model(build_classifier(cell="elman", units=8, layers=2), config)
    before = [v.numpy().copy() for v in model.trainable_variables]
    ds = data.pipeline(DataConfig(source="sample", max_examples=64), "train")
    training.fit(model, ds, ds, config)
    for v, old in zip(model.trainable_variables, before):
        assert not np.array_equal(v.numpy(), old), f"{v.path} did not change"


def test_bptt_loop_overfits_a_small_batch():
    config = TrainConfig(epochs=60, learning_rate=1e-2, schedule="constant", verbose=0)
    model = training.compile_model(build_classifier(cell="elman", units=32), config)
    ds = data.pipeline(DataConfig(source="sample", max_examples=32, batch_size=32), "train")
    training.fit(model, ds, ds, config)
    assert evaluate(model, ds)["accuracy"] == 1.0


@pytest.mark.parametrize("cell", ["elman", "simple"])
def test_reaches_85_percent_on_the_sample_in_10_epochs(sample_runs, cell):
    assert sample_runs[cell].test["test_accuracy"] >= 0.85


@pytest.mark.parametrize("cell", ["elman", "simple"])
def test_sample_trained_model_reaches_85_percent_on_mnist_t10k(sample_runs, cell, mnist_dir):
    path = os.path.join(sample_runs[cell].run_dir, "model.keras")
    scores = evaluate_file(path, DataConfig(source="idx", data_dir=mnist_dir))
    assert scores["examples"] == 10000 and scores["accuracy"] >= 0.85


def test_run_folder_holds_every_artefact(sample_runs):
    run = sample_runs["elman"].run_dir
    for name in (
        "config.json",
        "metrics.csv",
        "metrics.json",
        "model.keras",
        "summary.json",
        "curves.png",
        "confusion.png",
    ):
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    with open(os.path.join(run, "metrics.json")) as f:
        rows = json.load(f)
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["samples_per_second"] > 0 for r in rows)
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["model"]["cell"] == "elman"
    assert os.listdir(os.path.join(run, "logs"))  # TensorBoard events


def test_fit_loop_and_bptt_loop_compute_the_same_training(tmp_path):
    histories = {}
    for loop in LOOPS:
        result = train(
            ModelConfig(cell="elman", units=16),
            SMALL,
            TrainConfig(epochs=3, loop=loop, verbose=0),
            str(tmp_path / loop),
        )
        histories[loop] = result.history
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(
            [r[key] for r in histories["fit"]],
            [r[key] for r in histories["bptt"]],
            rtol=1e-3,
            err_msg=key,
        )
    # float round-off may flip the argmax of a near-tie: allow one validation digit
    np.testing.assert_allclose(
        [r["val_accuracy"] for r in histories["fit"]],
        [r["val_accuracy"] for r in histories["bptt"]],
        atol=1.5 / 256,
    )


def test_xla_compiled_loop_computes_the_same_training(tmp_path):
    histories = {}
    for xla in (False, True):
        histories[xla] = train(
            ModelConfig(cell="elman", units=16),
            SMALL,
            TrainConfig(epochs=2, jit_compile=xla, verbose=0),
            str(tmp_path / str(xla)),
        ).history
    for key in ("loss", "val_loss"):  # XLA fuses differently: round-off only
        np.testing.assert_allclose(
            [r[key] for r in histories[True]],
            [r[key] for r in histories[False]],
            rtol=1e-3,
            err_msg=key,
        )


def test_early_stopping_keeps_the_epoch_with_the_best_validation_accuracy(tmp_path):
    # A learning rate this high makes the validation accuracy fall after the first epochs.
    result = train(
        ModelConfig(cell="elman", units=16),
        SMALL,
        TrainConfig(epochs=30, learning_rate=0.3, patience=2, verbose=0),
        str(tmp_path),
    )
    rows = result.history
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_accuracy"], -rows[i]["val_loss"]))
    assert len(rows) == best + 3  # stopped two epochs after the best
    scores = evaluate(result.model, data.pipeline(SMALL, "validation"))
    assert scores["accuracy"] == pytest.approx(rows[best]["val_accuracy"], abs=1e-6)
    assert scores["loss"] == pytest.approx(rows[best]["val_loss"], rel=1e-5)


def test_existing_run_is_never_overwritten(tmp_path):
    train(ModelConfig(units=8), SMALL, TrainConfig(epochs=1, verbose=0), str(tmp_path))
    before = (tmp_path / "metrics.json").read_bytes()
    with pytest.raises(RunExistsError, match="already holds a run"):
        train(ModelConfig(units=8), SMALL, TrainConfig(epochs=1, verbose=0), str(tmp_path))
    with pytest.raises(RunExistsError, match=r"different configuration \(model.units 8 -> 9\)"):
        train(
            ModelConfig(units=9),
            SMALL,
            TrainConfig(epochs=1, verbose=0),
            str(tmp_path),
            resume=True,
        )
    assert (tmp_path / "metrics.json").read_bytes() == before


def test_a_second_train_of_a_run_folder_is_refused_until_the_first_ends(tmp_path, lock_holder):
    run = str(tmp_path / "run")
    first = lock_holder(run)
    with pytest.raises(
        RunFolderError,
        match=rf"the run folder {re.escape(run)} is in use by process {first.pid}; wait",
    ):
        train(ModelConfig(units=8), SMALL, TrainConfig(epochs=1, verbose=0), run, resume=True)
    assert not os.path.exists(os.path.join(run, "config.json"))  # refused before writing
    first.kill()  # kill -9: the kernel drops its lock, none is left stale
    first.wait()
    result = train(ModelConfig(units=8), SMALL, TrainConfig(epochs=1, verbose=0), run)
    assert len(result.history) == 1


def test_kerasrnn_runs_export_is_refused_while_another_process_holds_the_folder(
    tmp_path, lock_holder, monkeypatch
):
    """`pipeline.run` trains, then exports into the run folder: another process that took the
    folder in between (a second `kerasrnn run --resume`) keeps it, and nothing is exported."""
    from kerasrnn import pipeline

    run = str(tmp_path / "run")
    holders = []

    def train_then_another_process_takes_the_folder(*args, **kwargs):
        result = train(*args, **kwargs)
        holders.append(lock_holder(run))
        return result

    monkeypatch.setattr(pipeline, "train", train_then_another_process_takes_the_folder)
    with pytest.raises(RunFolderError, match=r"is in use by process \d+; wait"):
        pipeline.run(ModelConfig(units=8), SMALL, TrainConfig(epochs=1, verbose=0), run)
    assert holders and not os.path.exists(os.path.join(run, "model.tflite"))
    assert not os.path.exists(os.path.join(run, "pipeline.json"))


def test_kerasrnn_run_refuses_a_multi_worker_strategy_before_writing(tmp_path):
    from kerasrnn import pipeline

    with pytest.raises(ConfigError, match="run trains and exports in one process"):
        pipeline.run(
            ModelConfig(units=8),
            SMALL,
            TrainConfig(epochs=1, verbose=0, strategy="multi-worker"),
            str(tmp_path / "run"),
        )
    assert os.listdir(tmp_path) == []


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys, keras
    from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
    from kerasrnn.training_run import train

    class KillAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9, right after epoch k

    train(ModelConfig(cell="elman", units=16), DataConfig(source="sample", max_examples=256),
          TrainConfig(epochs=4, patience=None, verbose=0), sys.argv[1], resume=True,
          callbacks=[KillAfter()])
""")


def test_resume_after_kill_loses_no_epoch(tmp_path):
    run = str(tmp_path / "run")
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, run, "2"], timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL
    with open(os.path.join(run, "metrics.json")) as f:
        assert [r["epoch"] for r in json.load(f)] == [1, 2]
    assert not os.path.exists(os.path.join(run, "model.keras"))
    result = train(
        ModelConfig(cell="elman", units=16),
        SMALL,
        TrainConfig(epochs=4, patience=None, verbose=0),
        run,
        resume=True,
    )
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    with open(os.path.join(run, "metrics.json")) as f:
        assert [r["epoch"] for r in json.load(f)] == [1, 2, 3, 4]


def test_resuming_a_finished_run_trains_nothing(tmp_path):
    config = TrainConfig(epochs=2, patience=None, verbose=0)
    first = train(ModelConfig(units=8), SMALL, config, str(tmp_path))
    again = train(ModelConfig(units=8), SMALL, config, str(tmp_path), resume=True)
    assert again.history == first.history
    assert again.test == first.test


def test_a_run_made_before_a_setting_existed_resumes_with_its_default(tmp_path):
    """A run folder from an older kerasrnn lacks the settings added since (here
    `schedule`, whose default was "constant" then): it resumes when they are at what that
    version did, and is refused otherwise, today's default included."""
    config = TrainConfig(epochs=1, patience=None, verbose=0, schedule="constant")
    train(ModelConfig(units=8), SMALL, config, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    del saved["train"]["schedule"]
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    longer = TrainConfig(epochs=2, patience=None, verbose=0, schedule="constant")
    with pytest.raises(RunExistsError, match="train.epochs 1 -> 2"):
        train(ModelConfig(units=8), SMALL, longer, str(tmp_path), resume=True)
    with pytest.raises(RunExistsError, match="train.schedule 'constant' -> 'cosine'"):
        cosine = TrainConfig(epochs=1, patience=None, verbose=0, schedule="cosine")
        train(ModelConfig(units=8), SMALL, cosine, str(tmp_path), resume=True)
    again = train(ModelConfig(units=8), SMALL, config, str(tmp_path), resume=True)
    assert [row["epoch"] for row in again.history] == [1]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"loop": "keras"}, "loop must be one of"),
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"learning_rate": -1.0}, "learning_rate must be positive, got -1.0"),
        ({"clipnorm": 0.0}, "clipnorm must be positive or None, got 0.0"),
        ({"patience": 0}, "patience must be a positive integer or None, got 0"),
    ],
)
def test_bad_train_config_is_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.slow
def test_full_mnist_through_tfds_prepared_offline(tmp_path, mnist_dir):
    config = DataConfig(
        source="tfds", data_dir=str(tmp_path / "tfds"), manual_dir=mnist_dir, batch_size=128
    )
    result = train(
        ModelConfig(cell="elman", units=128),
        config,
        TrainConfig(epochs=5, verbose=0),
        str(tmp_path / "run"),
    )
    assert result.test["test_examples"] == 10000
    assert result.test["test_accuracy"] >= 0.95


def _idx_folder(folder, train_count: int, test_count: int = 5) -> str:
    """An IDX folder with `train_count` training and `test_count` test digits."""
    images = np.random.default_rng(0).integers(0, 256, (max(train_count, test_count), 28, 28))
    for prefix, count in (("train", train_count), ("t10k", test_count)):
        idx.write(f"{folder}/{prefix}-images-idx3-ubyte", images[:count].astype(np.uint8))
        idx.write(f"{folder}/{prefix}-labels-idx1-ubyte", np.arange(count, dtype=np.uint8) % 10)
    return str(folder)


@pytest.mark.parametrize(
    "train_count,message",
    [
        (1, r"no train examples \(0 train, 1 validation, 5 test;"),
        (0, r"no train or validation examples \(0 train, 0 validation, 5 test;"),
    ],
)
def test_degenerate_data_is_refused_before_the_run_folder_is_made(tmp_path, train_count, message):
    folder = _idx_folder(tmp_path, train_count)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=f"data 'idx' in {folder}: {message}"):
        train(
            ModelConfig(units=8),
            DataConfig(source="idx", data_dir=folder),
            TrainConfig(epochs=1, verbose=0),
            str(out),
        )
    assert not out.exists()


def test_resume_removes_the_leftovers_of_killed_writes(tmp_path):
    config = TrainConfig(epochs=1, patience=None, verbose=0)
    train(ModelConfig(units=8), SMALL, config, str(tmp_path))
    leftovers = [tmp_path / ".tmp-metrics.json", tmp_path / ".tmp-0123abcd-model.keras"]
    for path in leftovers:
        path.write_text("half")
    (tmp_path / ".tmp-best").mkdir()
    (tmp_path / ".tmp-best" / "weights.index").write_text("half")
    train(ModelConfig(units=8), SMALL, config, str(tmp_path), resume=True)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_kill_between_the_renames_of_best_keeps_the_previous_best(tmp_path):
    config = TrainConfig(epochs=2, patience=None, verbose=0)
    first = train(ModelConfig(units=8), SMALL, config, str(tmp_path))
    # What a kill inside `RunDirectory.write_best` leaves: best/ moved aside, the new copy
    # still in its staging folder, half-written.
    os.replace(tmp_path / "best", tmp_path / ".tmp-best-previous")
    (tmp_path / ".tmp-best").mkdir()
    (tmp_path / ".tmp-best" / "weights.index").write_text("half")
    (tmp_path / "model.keras").unlink()
    again = train(ModelConfig(units=8), SMALL, config, str(tmp_path), resume=True)
    assert again.history == first.history
    assert again.test == first.test
    assert sorted(os.listdir(tmp_path / "best")) == [
        "weights.data-00000-of-00001",
        "weights.index",
    ]
