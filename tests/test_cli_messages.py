"""What the command line tells its user: errors name the flags to pass, Fashion-MNIST runs
speak of images and name their classes, a search reports each trial unless quiet, what a
model or a name holds is shown as text, and a user-fixable failure is one clear line."""

import contextlib
import csv
import errno
import io
import logging
import os
import signal

import numpy as np
import pytest
from conftest import png_header

from kerasrnn import cli, data, idx, plots
from kerasrnn._terminal import PrintableFormatter
from kerasrnn.config import CLASS_NAMES, DataConfig, ModelConfig


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Runs `kerasrnn.cli.main` in this process: (exit status, stdout, stderr).

    `main` sets the levels of its loggers; they are put back for the later tests.
    """
    loggers = [logging.getLogger(name) for name in ("kerasrnn", "kerasrnn.tuning", "tensorflow")]
    levels = [logger.level for logger in loggers]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(list(argv))
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return status, out.getvalue(), err.getvalue()


def test_main_run_from_python_leaves_ctrl_c_as_it_found_it(tmp_path):
    """`main` ignores SIGINT once its command is over (a late Ctrl-C cannot kill a finished
    command); called from Python it puts the caller's handler back, or the caller's Ctrl-C,
    and every process it starts later (an ignored SIGINT is inherited), would stop working."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _error_line("train", "--data", "idx", "--out", str(tmp_path / "run"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _PressedCtrlC:
    def __set_name__(self, owner, name):
        raise KeyboardInterrupt


def _ctrl_c_in_a_class_body():
    """As in a module being imported when Ctrl-C lands: Python 3.11 wraps the interrupt in
    a RuntimeError (3.12 lets it through)."""

    class ImportedClass:
        attribute = _PressedCtrlC()


def _ctrl_c_as_the_cause():
    raise RuntimeError("a library wrapped it") from KeyboardInterrupt()


def _error_while_handling_ctrl_c():
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise OSError("a clean-up failed on the way out") from None


@pytest.mark.parametrize(
    "work", [_ctrl_c_in_a_class_body, _ctrl_c_as_the_cause, _error_while_handling_ctrl_c]
)
def test_an_error_that_ctrl_c_raised_is_an_interruption(monkeypatch, work):
    from kerasrnn import training_run

    monkeypatch.setattr(training_run, "train", lambda *args, **kwargs: work())
    status, stdout, stderr = run_cli("train", "--data", "sample", "--out", "runs/x")
    assert (status, stdout, stderr) == (130, "", "kerasrnn: interrupted\n")


def test_an_error_without_ctrl_c_behind_it_is_not_an_interruption(monkeypatch):
    from kerasrnn import training_run

    def train(*args, **kwargs):
        try:
            raise ValueError("first")
        except ValueError:
            raise RuntimeError("second") from None

    monkeypatch.setattr(training_run, "train", train)
    status, _, stderr = run_cli("train", "--data", "sample", "--out", "runs/x")
    assert (status, stderr) == (
        1,
        "kerasrnn: unexpected error: RuntimeError: second (run with --debug for the traceback)\n",
    )


def _error_line(*argv: str) -> str:
    status, stdout, stderr = run_cli(*argv)
    assert status == 1, stdout
    [line] = stderr.strip().splitlines()
    assert line.startswith("kerasrnn: error: ")
    return line


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["evaluate", "missing.keras", "--data", "sample"],
            "model file missing.keras does not exist",
        ),
        (["train", "--data", "idx", "--out", "x"], "source 'idx' needs data_dir"),
        (["train", "--data", "sample", "--units", "0", "--out", "x"], "units must be a positive"),
        (["train", "--data", "sample", "--shift", "28", "--out", "x"], "shift must be a whole"),
        (
            ["train", "--data", "idx", "--data-dir", "nowhere", "--out", "x"],
            "IDX folder nowhere does not exist",
        ),
    ],
)
def test_bad_arguments_are_one_clear_line_and_write_nothing(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert _error_line(*argv).startswith(f"kerasrnn: error: {message}")
    assert os.listdir(tmp_path) == []


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


class _HostileClassifier:
    """Stands in for `runtime.Classifier`: a model whose class names would forge a line,
    clear and colour the terminal, and reverse the text after them."""

    class_names = ("cat\n1: digit 7 (99.9%)", "\x1b[2J\x1b[31mdog\r", "\u202etac\x00")

    def __init__(self, path, kernels="auto"):
        self.path, self.kernels = path, kernels

    def predict(self, images):
        return 10 * np.eye(3, dtype=np.float32)[: len(images)]  # image i is class i


@pytest.fixture
def hostile_classifier(monkeypatch):
    from kerasrnn.export import runtime

    monkeypatch.setattr(runtime, "Classifier", _HostileClassifier)


def test_predict_prints_a_models_class_names_as_text_never_as_terminal_control(
    tmp_path, hostile_classifier
):
    np.save(tmp_path / "digits.npy", np.zeros((3, 28, 28), np.uint8))
    status, stdout, _ = run_cli("predict", "m.tflite", str(tmp_path / "digits.npy"))
    assert status == 0
    assert stdout.splitlines() == [
        r"0: cat\n1: digit 7 (99.9%) (100.0%)",
        r"1: \x1b[2J\x1b[31mdog\r (100.0%)",
        r"2: \u202etac\x00 (100.0%)",
    ]


def test_an_error_shows_a_hostile_file_name_as_text_on_one_line(tmp_path, hostile_classifier):
    line = _error_line("predict", "m.tflite", str(tmp_path / "x\nkerasrnn: done\x1b[0m.npy"))
    assert (
        line
        == rf"kerasrnn: error: image file {tmp_path}/x\nkerasrnn: done\x1b[0m.npy does not exist"
    )


def test_a_logged_name_is_shown_as_text():
    formatter = PrintableFormatter("kerasrnn: %(message)s")
    record = logging.LogRecord(
        "kerasrnn", logging.INFO, __file__, 1, "resuming %s", ("r\n\x1b[2J",), None
    )
    assert formatter.format(record) == r"kerasrnn: resuming r\n\x1b[2J"


def test_a_png_too_large_to_be_a_digit_is_one_clear_line(tmp_path, hostile_classifier):
    (tmp_path / "huge.png").write_bytes(png_header(20000, 20000))
    line = _error_line("predict", "m.tflite", str(tmp_path / "huge.png"))
    assert f"{tmp_path}/huge.png is an image of more than" in line


def test_firmware_of_a_missing_model_is_one_clear_line(tmp_path, monkeypatch):
    from kerasrnn.export import firmware, firmware_build

    resolver = tmp_path / "tflm" / firmware_build.RESOLVER
    resolver.parent.mkdir(parents=True)
    resolver.touch()
    monkeypatch.setattr(firmware.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    line = _error_line(
        "firmware",
        str(tmp_path / "missing.tflite"),
        *("--tflm-dir", str(tmp_path / "tflm"), "--target", "host"),
        *("--out", str(tmp_path / "fw"), "--data", "sample"),
    )
    assert f"{tmp_path}/missing.tflite" in line


@pytest.mark.parametrize("view,shape", [("rows", (28, 28)), ("pixels", (784, 1))])
def test_firmware_embeds_the_digits_in_the_view_it_is_given(tmp_path, monkeypatch, view, shape):
    """A pixel model's firmware reads 784 steps of one pixel, not 28 rows."""
    from kerasrnn.export import firmware

    given = []

    class _Built:
        def table(self):
            return "built"

    def build_firmware(model, out, config, images):
        given.append(images)
        return _Built()

    monkeypatch.setattr(firmware, "build_firmware", build_firmware)
    status, out, _ = run_cli(
        "firmware",
        "m.tflite",
        *("--tflm-dir", str(tmp_path), "--out", str(tmp_path / "fw")),
        *("--data", "sample", "--view", view),
    )
    assert status == 0 and "built" in out
    assert given[0].shape[1:] == shape and given[0].max() <= 1.0


@pytest.mark.parametrize(
    "error,message",
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/ro/run"),
            "/ro/run: permission denied: choose a path you may write, or change its permissions",
        ),
        (
            PermissionError(errno.EPERM, "Operation not permitted", "/sys/run"),
            "/sys/run: operation not permitted: choose a path you may write, or change its "
            "permissions",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/ro/run/config.json"),
            "/ro/run/config.json: read-only file system: choose a path on a writable file system",
        ),
        (  # a write's error names no file
            OSError(errno.ENOSPC, "No space left on device"),
            "no space left on device (writing into runs/x): free some space, or write elsewhere",
        ),
    ],
    ids=["EACCES", "EPERM", "EROFS", "ENOSPC"],
)
def test_a_full_disk_or_a_folder_one_may_not_write_is_one_clear_line(monkeypatch, error, message):
    from kerasrnn import training_run

    def train(*args, **kwargs):
        raise error

    monkeypatch.setattr(training_run, "train", train)
    assert (
        _error_line("train", "--data", "sample", "--out", "runs/x") == f"kerasrnn: error: {message}"
    )
