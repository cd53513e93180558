"""End-to-end tests of the `kerasrnn` command line, each in a fresh process."""

import json
import os
import subprocess
import sys

import pytest


def kerasrnn(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "kerasrnn", *args], capture_output=True,
                            text=True, timeout=600, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"kerasrnn {' '.join(args)} failed:\n{result.stderr}")
    return result


def test_help_lists_the_commands():
    out = kerasrnn("--help").stdout
    for command in ("train", "evaluate"):
        assert command in out


def test_train_then_evaluate(tmp_path):
    out = str(tmp_path / "run")
    result = kerasrnn("train", "--data", "sample", "--units", "16", "--epochs", "2",
                      "--max-examples", "512", "--quiet", "--out", out)
    assert "test accuracy" in result.stdout
    assert result.stderr == ""  # TensorFlow's start-up chatter is hidden
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    scores = json.loads(kerasrnn("evaluate", os.path.join(out, "model.keras"), "--data", "sample",
                                 "--max-examples", "512", "--json").stdout)
    assert scores["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert scores["examples"] == 512


@pytest.mark.parametrize("args,message", [
    (["evaluate", "missing.keras", "--data", "sample"], "model file missing.keras does not exist"),
    (["train", "--data", "idx", "--out", "x"], "source 'idx' needs data_dir"),
    (["train", "--data", "sample", "--units", "0", "--out", "x"], "units must be a positive"),
    (["train", "--data", "idx", "--data-dir", "nowhere", "--out", "x"],
     "IDX folder nowhere does not exist"),
])
def test_errors_are_one_clear_line(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "kerasrnn", *args], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path, check=False)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"kerasrnn: error: {message}")


def test_not_a_keras_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    result = kerasrnn("evaluate", str(bad), "--data", "sample", check=False)
    assert result.returncode == 1 and "is not a loadable .keras model" in result.stderr
