"""End-to-end tests of the `kerasrnn` command line, each in a fresh process."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest


def kerasrnn(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "kerasrnn", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kerasrnn {' '.join(args)} failed:\n{result.stderr}")
    return result


def test_help_lists_the_commands():
    out = kerasrnn("--help").stdout
    for command in ("train", "evaluate", "run", "export", "predict", "tune"):
        assert command in out


def test_train_then_evaluate(tmp_path):
    out = str(tmp_path / "run")
    result = kerasrnn(
        "train",
        "--data",
        "sample",
        "--units",
        "16",
        "--epochs",
        "2",
        "--max-examples",
        "512",
        "--shift",
        "1",
        "--quiet",
        "--out",
        out,
    )
    assert "test accuracy" in result.stdout
    assert result.stderr == ""  # TensorFlow's start-up chatter is hidden
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["data"]["shift"] == 1  # the run folder says how it trained
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    scores = json.loads(
        kerasrnn(
            "evaluate",
            os.path.join(out, "model.keras"),
            "--data",
            "sample",
            "--max-examples",
            "512",
            "--json",
        ).stdout
    )
    assert scores["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert scores["examples"] == 512


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "sample", "--units", "0", "--out", "x"], "units must be a positive"),
        (
            ["export", "m.keras", "--out", "m.tflite", "--min-agreement", "2"],
            "min_agreement must lie in [0, 1]",
        ),
        (["tune", "--set", "cells=gru", "--out", "x"], "unknown hyperparameter 'cells'"),
    ],
    ids=["train", "export", "tune"],
)
def test_a_bad_flag_is_refused_before_tensorflow_starts(tmp_path, args, message):
    """Seconds sooner: the flags are checked before the command imports TensorFlow."""
    show = (
        "import sys; from kerasrnn import cli; "
        "print(cli.main(sys.argv[1:]), 'tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", show, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.stdout.split() == ["1", "False"], result.stderr
    assert result.stderr.startswith(f"kerasrnn: error: {message}")
    assert os.listdir(tmp_path) == []


def test_an_error_is_one_clear_line_from_the_program(tmp_path):
    """The program's own process (the messages of each bad input: test_cli_messages.py)."""
    result = subprocess.run(
        [sys.executable, "-m", "kerasrnn", "evaluate", "missing.keras", "--data", "sample"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line == "kerasrnn: error: model file missing.keras does not exist"


def test_not_a_keras_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    result = kerasrnn("evaluate", str(bad), "--data", "sample", check=False)
    assert result.returncode == 1 and "is not a loadable .keras model" in result.stderr


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """`kerasrnn run --target micro` on a slice of the sample: train, export float and int8
    with the int8 file's C arrays, verify."""
    out = tmp_path_factory.mktemp("run") / "run"
    result = kerasrnn(
        "run",
        "--target",
        "micro",
        "--data",
        "sample",
        "--units",
        "16",
        "--epochs",
        "2",
        "--max-examples",
        "600",
        "--quiet",
        "--out",
        str(out),
    )
    return out, result.stdout


def test_run_prints_one_summary_and_writes_every_file(pipeline_run):
    out, stdout = pipeline_run
    for text in ("Keras model:", "model.tflite", "model_int8.tflite", "TFLM arena"):
        assert text in stdout
    for name in (
        "model.keras",
        "model.tflite",
        "model_int8.tflite",
        "model_int8.step.tflite",
        "model_int8.cc",
        "model_int8.h",
        "model_int8.step.cc",
        "model_int8.step.h",
        "pipeline.json",
        "model_int8.verify.json",
    ):
        assert (out / name).stat().st_size > 0, name
    with open(out / "pipeline.json") as f:
        summary = json.load(f)
    exported = summary["exports"]["model.tflite"]
    assert exported["max_abs_logit_diff"] < 1e-4 and exported["top1_agreement"] == 1.0
    assert summary["exports"]["model_int8.tflite"]["micro"]["arena_bytes"] > 0


def test_export_command_prints_the_report(pipeline_run, tmp_path):
    out, _ = pipeline_run
    target = tmp_path / "f16.tflite"
    stdout = kerasrnn(
        "export",
        str(out / "model.keras"),
        "--quantize",
        "float16",
        "--out",
        str(target),
        "--data",
        "sample",
        "--max-examples",
        "200",
    ).stdout
    assert "wrote" in stdout and "operators" in stdout and "DEQUANTIZE" in stdout
    assert target.stat().st_size > 0


def test_predict_reads_npy_and_png(pipeline_run, tmp_path):
    from PIL import Image

    from kerasrnn import data
    from kerasrnn.config import DataConfig

    out, _ = pipeline_run
    images, _ = data.load_arrays(DataConfig(source="sample"), "test")
    np.save(tmp_path / "digits.npy", images[:3])
    lines = (
        kerasrnn("predict", str(out / "model_int8.tflite"), str(tmp_path / "digits.npy"))
        .stdout.strip()
        .splitlines()
    )
    assert len(lines) == 3 and all(" digit " in line for line in lines)
    Image.fromarray(255 - images[0]).save(tmp_path / "ink_on_paper.png")  # dark on light
    line = kerasrnn(
        "predict", str(out / "model.tflite"), str(tmp_path / "ink_on_paper.png")
    ).stdout.strip()
    npy_line = kerasrnn(
        "predict", str(out / "model.tflite"), str(tmp_path / "digits.npy")
    ).stdout.splitlines()[0]
    assert line.split("(")[0] == npy_line.split("(")[0]  # inverted back: same digit


def test_predict_names_the_classes_of_a_fashion_mnist_export(pipeline_run, fashion_dir, tmp_path):
    from kerasrnn import data
    from kerasrnn.config import CLASS_NAMES, DataConfig

    out, _ = pipeline_run
    target = tmp_path / "fashion.tflite"
    fashion = ["--data", "idx", "--dataset", "fashion_mnist", "--data-dir", fashion_dir]
    kerasrnn(
        "export", str(out / "model.keras"), "--out", str(target), *fashion, "--max-examples", "100"
    )
    images, _ = data.load_arrays(
        DataConfig(source="idx", dataset="fashion_mnist", data_dir=fashion_dir), "test"
    )
    np.save(tmp_path / "clothes.npy", images[:20])
    lines = kerasrnn("predict", str(target), str(tmp_path / "clothes.npy")).stdout.splitlines()
    names = [line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in lines]
    assert len(names) == 20 and set(names) <= set(CLASS_NAMES["fashion_mnist"])


def test_predict_does_not_need_tensorflow(pipeline_run, tmp_path):
    from kerasrnn import data
    from kerasrnn.config import DataConfig

    out, _ = pipeline_run
    images, _ = data.load_arrays(DataConfig(source="sample"), "test")
    np.save(tmp_path / "d.npy", images[:2])
    code = (
        "import sys\nfor m in ('tensorflow', 'keras'): sys.modules[m] = None\n"
        "from kerasrnn.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "predict", str(out / "model.tflite"), str(tmp_path / "d.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2


@pytest.mark.parametrize(
    "content,message",
    [
        (b"garbage, not a model", "not a TFLite model"),
        (b"", "too short for a TFLite model"),
    ],
)
def test_predict_with_a_bad_model_is_one_line(tmp_path, content, message):
    model = tmp_path / "bad.tflite"
    model.write_bytes(content)
    np.save(tmp_path / "d.npy", np.zeros((1, 28, 28), np.uint8))
    result = kerasrnn("predict", str(model), str(tmp_path / "d.npy"), check=False)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("kerasrnn: error: ") and message in line


def _train_args(out: str, epochs: int) -> list[str]:
    return [
        "train",
        "--data",
        "sample",
        "--max-examples",
        "256",
        "--units",
        "8",
        "--epochs",
        str(epochs),
        "--patience",
        "0",
        "--quiet",
        "--out",
        out,
    ]


# The child puts SIGINT back to Python's own handler before it runs the program: a shell
# starts a background job (a suite run with `&`) with SIGINT ignored, the child inherits
# that, and Python keeps it. Done in the child's Python, not in a `preexec_fn`: a fork of
# this threaded process that runs Python before exec can crash (CI saw one die by SIGSEGV).
_AS_A_FOREGROUND_JOB = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('kerasrnn', run_name='__main__', alter_sys=True)"
)


def _start(*args) -> subprocess.Popen:
    """`kerasrnn ARGS` in a child that takes Ctrl-C as a terminal's foreground job does."""
    return subprocess.Popen(
        [sys.executable, "-c", _AS_A_FOREGROUND_JOB, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_during_training_exits_130_and_the_run_resumes(tmp_path):
    out = str(tmp_path / "run")
    # 60 tiny epochs: the SIGINT, sent once the first has finished, lands long before the
    # last, even on a loaded machine (with 15, one CI run beside other training exited 0 first).
    process = _start(*_train_args(out, 60))
    metrics = os.path.join(out, "metrics.json")
    while process.poll() is None and not os.path.exists(metrics):
        time.sleep(0.05)  # polls for the first finished epoch; asserts no timing
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stdout == "" and stderr.strip().splitlines() == ["kerasrnn: interrupted"]
    result = kerasrnn(*_train_args(out, 60), "--resume")
    assert "test accuracy" in result.stdout
    with open(metrics) as f:
        assert [row["epoch"] for row in json.load(f)] == list(range(1, 61))


def test_ctrl_c_as_training_ends_never_kills_the_process_or_prints_a_traceback(tmp_path):
    process = _start(*_train_args(str(tmp_path / "run"), 1))
    for line in process.stdout:
        if line.startswith("run folder:"):  # the last line of success: Ctrl-C until it exits
            while process.poll() is None:
                process.send_signal(signal.SIGINT)
                time.sleep(0.01)
    _, stderr = process.communicate(timeout=120)
    # Finished (0), or interrupted as it finished (130, in one line); never a death by
    # SIGINT or a traceback from the interpreter's exit.
    assert process.returncode in (0, 130), stderr
    assert stderr in ("", "kerasrnn: interrupted\n")
