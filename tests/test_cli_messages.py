"""What the command line tells its user: errors name the flags to pass, Fashion-MNIST runs
speak of images and name their classes, and a search reports each trial unless quiet."""

import contextlib
import csv
import io
import logging
import os
import signal

import numpy as np
import pytest

from kerasrnn import cli, data, idx, plots
from kerasrnn.config import CLASS_NAMES, DataConfig, ModelConfig


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Runs `kerasrnn.cli.main` in this process: (exit status, stdout, stderr).

    `main` leaves SIGINT ignored once a command is over (a late Ctrl-C cannot kill a
    finished command) and sets the levels of its loggers; both are put back, so that
    the processes later tests start still take Ctrl-C.
    """
    handler = signal.getsignal(signal.SIGINT)
    loggers = [logging.getLogger(name) for name in ("kerasrnn", "kerasrnn.tuning", "tensorflow")]
    levels = [logger.level for logger in loggers]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(list(argv))
    finally:
        signal.signal(signal.SIGINT, handler)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return status, out.getvalue(), err.getvalue()


def _error_line(*argv: str) -> str:
    status, stdout, stderr = run_cli(*argv)
    assert status == 1, stdout
    [line] = stderr.strip().splitlines()
    assert line.startswith("kerasrnn: error: ")
    return line


@pytest.fixture(scope="module")
def pixels_model(tmp_path_factory):
    """An untrained classifier of pixel sequences, saved as .keras."""
    from kerasrnn.models import build_classifier

    path = str(tmp_path_factory.mktemp("model") / "pixels.keras")
    build_classifier(ModelConfig(cell="elman", units=8, view="pixels")).save(path)
    return path


@pytest.mark.parametrize(
    "argv,flags",
    [
        (["train", "--data", "idx"], ["--data-dir"]),
        (["train", "--data", "idx", "--data-dir", "nowhere"], ["--data-dir"]),
        (
            ["train", "--data", "sample", "--dataset", "fashion_mnist"],
            ["--data idx", "--data tfds"],
        ),
    ],
)
def test_data_errors_name_the_flags_to_pass(tmp_path, argv, flags):
    line = _error_line(*argv, "--out", str(tmp_path / "run"))
    for flag in flags:
        assert flag in line
    assert not os.path.exists(tmp_path / "run")


def test_tfds_unavailable_names_the_flags_of_every_alternative(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "network_available", lambda timeout=1.0: False)
    line = _error_line(
        "train", "--data", "tfds", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")
    )
    assert "is not prepared" in line
    for flag in ("--manual-dir", "--data idx", "--data-dir", "--data sample"):
        assert flag in line


def test_evaluating_in_another_view_names_the_view_flag(pixels_model):
    line = _error_line("evaluate", pixels_model, "--view", "permuted", "--data", "sample")
    assert "the model reads pixels sequences, not permuted" in line and "--view pixels" in line


@pytest.fixture(scope="module")
def toy_fashion_dir(tmp_path_factory):
    """A folder of the four IDX files with 96 training and 32 test images, standing in
    for Fashion-MNIST (the images are the sample's: only the class names matter here)."""
    folder = tmp_path_factory.mktemp("fashion")
    for split, prefix, n in (("train", "train", 96), ("test", "t10k", 32)):
        images, labels = data.load_arrays(DataConfig(source="sample"), split)
        idx.write(str(folder / f"{prefix}-images-idx3-ubyte.gz"), images[:n])
        idx.write(str(folder / f"{prefix}-labels-idx1-ubyte.gz"), labels[:n].astype(np.uint8))
    return str(folder)


def test_fashion_run_speaks_of_images_and_names_the_classes(toy_fashion_dir, tmp_path, monkeypatch):
    drawn = []
    figure = plots.confusion_matrix_figure

    def keep_tick_labels(*args, **kwargs):
        fig = figure(*args, **kwargs)
        [ax] = [a for a in fig.axes if a.get_xlabel() == "predicted"]
        drawn.append(
            (
                [t.get_text() for t in ax.get_xticklabels()],
                [t.get_text() for t in ax.get_yticklabels()],
            )
        )
        return fig

    monkeypatch.setattr(plots, "confusion_matrix_figure", keep_tick_labels)
    fashion = ["--data", "idx", "--dataset", "fashion_mnist", "--data-dir", toy_fashion_dir]
    out = str(tmp_path / "run")
    status, stdout, _ = run_cli(
        "train", *fashion, "--units", "8", "--epochs", "1", "--quiet", "--out", out
    )
    assert status == 0
    assert "on 32 test images" in stdout and "digit" not in stdout
    names = list(CLASS_NAMES["fashion_mnist"])
    assert drawn == [(names, names)]
    assert os.path.getsize(os.path.join(out, "confusion.png")) > 0
    status, stdout, _ = run_cli("evaluate", os.path.join(out, "model.keras"), *fashion)
    assert status == 0
    assert "on 32 test images" in stdout and "digit" not in stdout


def test_confusion_matrix_labels_digits_by_default():
    fig = plots.confusion_matrix_figure(np.eye(10, dtype=np.int64))
    [ax] = [a for a in fig.axes if a.get_xlabel() == "predicted"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASS_NAMES["mnist"])
    with pytest.raises(ValueError, match="10 classes, but 2 class names"):
        plots.confusion_matrix_figure(np.eye(10, dtype=np.int64), class_names=("a", "b"))


@pytest.mark.parametrize("quiet", [False, True])
def test_search_logs_a_line_per_finished_trial_unless_quiet(tmp_path, caplog, quiet):
    status, _, _ = run_cli(
        "tune",
        *("--set", "cell=elman", "--range", "units=8,16", "--set", "batch_size=64"),
        *("--max-trials", "2", "--max-epochs", "1", "--no-retrain"),
        *("--data", "sample", "--max-examples", "128", "--out", str(tmp_path)),
        *(["--quiet"] if quiet else []),
    )
    assert status == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "kerasrnn.tuning"]
    if quiet:
        assert lines == []
        return
    with open(tmp_path / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(lines) == len(rows) == 2
    for line, row in zip(lines, rows):  # in the order the trials finished: trial order
        assert line.startswith(f"trial {row['trial']}: units={row['units']} ")
        assert "cell=" not in line  # fixed by --set: not searched
        assert f"val_accuracy {float(row['val_accuracy']):.4f}" in line
        assert f"{int(float(row['model_bytes'])):,} bytes of float32 parameters" in line
        assert "1 epoch," in line and line.endswith(" s")
