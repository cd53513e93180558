"""The device runtime: NumPy + ai_edge_litert only, clear errors, never a crash."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kerasrnn.errors import InputError
from kerasrnn.export import convert

# Run code where `import tensorflow` (or keras) raises, as on a device with LiteRT only.
_NO_TENSORFLOW = textwrap.dedent("""
    import sys
    for name in ("tensorflow", "keras", "tf_keras"):
        sys.modules[name] = None  # any import of these now raises ImportError
""")


def run_without_tensorflow(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _NO_TENSORFLOW + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def files(trained_models, test_digits, calibration, tmp_path_factory):
    """The session's elman-64 as float32, int8 and streaming files, with Keras's logits."""
    folder = tmp_path_factory.mktemp("runtime")
    model = trained_models["elman"]
    images = (test_digits[0][:64] * 255).round().astype(np.uint8)
    return {
        "float": convert.to_tflite(model, str(folder / "f.tflite")).path,
        "int8": convert.to_tflite(model, str(folder / "q.tflite"), "int8", calibration).path,
        "stream": convert.to_tflite(model, str(folder / "s.tflite"), stream=True).path,
        "keras_logits": model.predict(images.astype(np.float32) / 255, verbose=0),
        "images": images,
    }


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| over max |expected| (see tests/test_export.py)."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_runtime_works_where_tensorflow_cannot_be_imported(files, tmp_path):
    np.save(tmp_path / "images.npy", files["images"])
    result = run_without_tensorflow(
        """
        import sys, numpy as np
        try:
            import tensorflow
            raise SystemExit("tensorflow imported")
        except ImportError:
            pass
        from kerasrnn.export.runtime import Classifier, Stream
        images = np.load(sys.argv[3])
        np.save(sys.argv[4], Classifier(sys.argv[1]).predict(images))
        stream = Stream(sys.argv[2])
        for row in images[0]:
            logits = stream.push(row)
        np.save(sys.argv[5], logits)
        assert not any(m.split(".")[0] in ("tensorflow", "keras") and sys.modules[m] is not None
                       for m in sys.modules)
    """,
        files["float"],
        files["stream"],
        str(tmp_path / "images.npy"),
        str(tmp_path / "out.npy"),
        str(tmp_path / "stream.npy"),
    )
    assert result.returncode == 0, result.stderr
    assert relative_difference(np.load(tmp_path / "out.npy"), files["keras_logits"]) < 1e-5
    assert relative_difference(np.load(tmp_path / "stream.npy"), files["keras_logits"][0]) < 1e-5


def test_int8_model_quantizes_and_dequantizes(files):
    from kerasrnn.export.runtime import Classifier

    logits = Classifier(files["int8"]).predict(files["images"])
    assert logits.dtype == np.float32 and logits.shape == (64, 10)
    # the int8 file agrees with Keras on 99.5% of the sample's test digits (README): at most
    # one of these 64 may differ
    assert (logits.argmax(1) != files["keras_logits"].argmax(1)).sum() <= 1


@pytest.mark.parametrize("n", [1, 3, 8])
def test_any_batch_size_on_a_batch_1_file(files, n):
    from kerasrnn.export.runtime import Classifier

    logits = Classifier(files["float"]).predict(files["images"][:n])
    assert relative_difference(logits, files["keras_logits"][:n]) < 1e-5


def test_uint8_and_float_images_give_the_same_logits(files):
    from kerasrnn.export.runtime import Classifier

    classifier = Classifier(files["float"])
    # uint8 / 255 in float32 and in float64 may round one ulp apart: round-off only
    assert (
        relative_difference(
            classifier.predict(files["images"]), classifier.predict(files["images"] / 255.0)
        )
        < 1e-6
    )


_BAD_BYTES = {
    "empty": b"",
    "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
}


@pytest.mark.parametrize(
    "kind,message",
    [
        ("empty", "too short for a TFLite model"),
        ("random", "not a TFLite model"),
        ("wrong_magic", r"not a TFLite model \(file identifier b'XXXX'"),
        ("truncated", "invalid or truncated TFLite model"),
        ("missing", "no such model file"),
    ],
)
def test_bad_model_files_give_a_clear_error_not_a_crash(files, tmp_path, kind, message):
    with open(files["float"], "rb") as f:
        content = f.read()
    path = tmp_path / f"{kind}.tflite"
    if kind == "wrong_magic":
        path.write_bytes(content[:4] + b"XXXX" + content[8:])
    elif kind == "truncated":
        path.write_bytes(content[: len(content) // 2])
    elif kind != "missing":
        path.write_bytes(_BAD_BYTES[kind])
    result = run_without_tensorflow(
        """
        import sys
        from kerasrnn.export.runtime import Classifier
        from kerasrnn.errors import ModelFileError
        try:
            Classifier(sys.argv[1])
        except ModelFileError as e:
            print(e)
    """,
        str(path),
    )
    assert result.returncode == 0, f"process died: {result.returncode} {result.stderr}"
    assert re.search(message, result.stdout), result.stdout


@pytest.mark.parametrize(
    "images,message",
    [
        (np.zeros((2, 27, 28), np.uint8), r"images must have shape \[n, 28, 28\]"),
        (np.zeros((2, 28, 28), np.int64), "must be uint8 .* or float in \\[0, 1\\], got int64"),
        (np.full((1, 28, 28), np.nan, np.float32), "pixels contain NaN"),
        (np.full((1, 28, 28), 255.0, np.float32), r"float pixels must lie in \[0, 1\]"),
    ],
)
def test_bad_inputs_give_a_clear_error(files, images, message):
    from kerasrnn.export.runtime import Classifier

    with pytest.raises(InputError, match=message):
        Classifier(files["float"]).predict(images)


def test_stream_rejects_a_wrong_row_and_a_whole_sequence_file(files):
    from kerasrnn.errors import ModelFileError
    from kerasrnn.export.runtime import Stream

    with pytest.raises(InputError, match=r"a row must have shape \[28\], got \[27\]"):
        Stream(files["stream"]).push(np.zeros(27, np.uint8))
    with pytest.raises(ModelFileError, match="not a kerasrnn streaming model"):
        Stream(files["float"])


def test_stream_reset_starts_a_new_sequence(files):
    from kerasrnn.export.runtime import Stream

    stream = Stream(files["stream"])
    first = [stream.push(row) for row in files["images"][0]][-1]
    stream.reset()
    again = [stream.push(row) for row in files["images"][0]][-1]
    np.testing.assert_array_equal(first, again)
    assert os.path.exists(files["stream"])
