"""`kerasrnn export --format saved_model`: a TensorFlow SavedModel for serving that gives
the Keras model's logits, and what it refuses."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kerasrnn.config import DataConfig
from kerasrnn.errors import ConfigError
from kerasrnn.export.config import ExportConfig
from kerasrnn.export.workflow import export_model, export_saved_model


def kerasrnn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kerasrnn", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def elman_path(sample_runs):
    return os.path.join(sample_runs["elman"].run_dir, "model.keras")


@pytest.fixture(scope="module")
def served(elman_path, tmp_path_factory):
    """(the CLI's result, the SavedModel folder) of the session's elman-64."""
    out = tmp_path_factory.mktemp("saved_model") / "elman64"
    return kerasrnn("export", elman_path, "--format", "saved_model", "--out", str(out)), out


def test_cli_writes_a_saved_model_folder(served, elman_path):
    (result, out), model = served, elman_path
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout
        == f'wrote {out}: a SavedModel, signature "serving_default" (float32 logits)\n'
    )
    # what it does, in one line; TensorFlow's own chatter stays hidden
    assert result.stderr.splitlines() == [f"kerasrnn: writing {model} as the SavedModel {out}"]
    assert (out / "saved_model.pb").is_file() and (out / "variables").is_dir()
    assert os.listdir(out.parent) == ["elman64"]  # no temporary left beside it


@pytest.mark.parametrize("batch", [1, 7])
def test_serving_signature_gives_the_keras_logits(served, trained_models, test_digits, batch):
    _, out = served
    signature = tf.saved_model.load(str(out)).signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    images = test_digits[0][:batch]
    (logits,) = signature(**{name: tf.constant(images)}).values()
    expected = trained_models["elman"].predict(images, verbose=0)
    assert logits.shape == expected.shape == (batch, 10)
    # float32 round-off only: the same graph, bound relative to the logits' scale
    assert np.abs(logits.numpy() - expected).max() <= 1e-5 * np.abs(expected).max()
    assert (logits.numpy().argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize("existing", ["folder", "file"])
def test_an_existing_path_is_never_replaced(elman_path, tmp_path, existing):
    out = tmp_path / "served"
    if existing == "folder":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    else:
        out.write_text("mine")
    with pytest.raises(
        ConfigError, match=f"{re.escape(str(out))} exists: a SavedModel is never written over"
    ):
        export_saved_model(elman_path, str(out))
    assert (out / "keep.txt" if existing == "folder" else out).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


@pytest.mark.parametrize(
    "kwargs,named",
    [
        ({"quantization": "int8"}, "quantization='int8'"),
        ({"quantization": "float16"}, "quantization='float16'"),
        ({"stream": True}, "stream=True"),
        ({"c_array": True}, "c_array=True"),
    ],
)
def test_tflite_options_are_refused_for_a_saved_model(kwargs, named):
    with pytest.raises(
        ConfigError,
        match=f"format 'saved_model' serves the float32 Keras model: {named} applies to the "
        "tflite format only",
    ):
        ExportConfig(format="saved_model", **kwargs)


def test_cli_refuses_quantizing_a_saved_model_in_one_line(elman_path, tmp_path):
    result = kerasrnn(
        "export",
        elman_path,
        "--format",
        "saved_model",
        "--quantize",
        "int8",
        "--out",
        str(tmp_path / "served"),
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "kerasrnn: error: format 'saved_model' serves the float32 Keras model: "
        "quantization='int8' applies to the tflite format only\n"
    )
    assert not os.listdir(tmp_path)


def test_export_model_leaves_saved_models_to_export_saved_model(elman_path, tmp_path):
    with pytest.raises(ConfigError, match="format 'saved_model' is export_saved_model's"):
        export_model(
            elman_path,
            str(tmp_path / "m.tflite"),
            ExportConfig(format="saved_model"),
            DataConfig(source="sample"),
        )
