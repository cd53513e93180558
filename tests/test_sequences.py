"""The user's own sequences: arrays and .npz files checked where they enter, and a user's
own Keras model of another input shape going to a verified .tflite through `kerasrnn export
--npz`."""

import json

import numpy as np
import pytest
from test_cli import kerasrnn

from kerasrnn.errors import DataError
from kerasrnn.sequences import load_npz, sequences


def _signals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three-axis signals of 64 steps whose class is the frequency of the first axis
    (4 classes), with noise on every axis: data no MNIST view gives."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    t = np.arange(64)[None, :]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    x = np.stack(
        [
            np.sin(2 * np.pi * (labels[:, None] + 1) * t / 32 + phase),
            np.cos(2 * np.pi * t / 16 + phase),
            np.zeros((n, 64)),
        ],
        axis=-1,
    )
    return (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32), labels


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"x": np.zeros((4, 28)), "y": np.zeros(4, int)}, r"x must be \[n, steps, features\]"),
        ({"x": np.full((2, 3, 1), np.nan), "y": np.zeros(2, int)}, "x holds NaN or infinite"),
        ({"x": np.zeros((4, 3, 1)), "y": np.zeros(3, int)}, r"y must be \[4\] labels or targets"),
        ({"x": np.zeros((2, 3, 1)), "y": np.array([0, -1])}, "negative label"),
        ({"x": np.zeros((2, 3, 1)), "y": np.array(["a", "b"])}, "int labels or float targets"),
        (
            {"x": np.zeros((2, 3, 1)), "y": np.zeros(2, int), "x_test": np.zeros((2, 3, 1))},
            "x_test and y_test come together",
        ),
        (
            {
                "x": np.zeros((2, 3, 1)),
                "y": np.zeros(2, int),
                "x_test": np.zeros((2, 4, 1)),
                "y_test": np.zeros(2, int),
            },
            "x_test/y_test must be like x/y",
        ),
    ],
)
def test_bad_sequence_arrays_are_refused_naming_the_array(arrays, message):
    with pytest.raises(DataError, match=message):
        sequences(**arrays)


def test_labels_outside_the_models_classes_are_refused():
    data = sequences(np.zeros((2, 3, 1)), np.array([0, 7]))
    with pytest.raises(DataError, match="y holds label 7 but the model has 4 classes"):
        data.check_model((3, 1), 4)
    with pytest.raises(DataError, match=r"sequences are \[3, 1\] but the model reads \[5, 1\]"):
        data.check_model((5, 1), 10)


def test_npz_round_trip_and_its_refusals(tmp_path):
    x, y = _signals(8, 0)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, x_test=x[:2], y_test=y[:2])
    data = load_npz(str(path))
    np.testing.assert_array_equal(data.x, x)
    assert data.test[0].shape == (2, 64, 3) and data.y.dtype == np.int64
    np.savez(tmp_path / "bad.npz", x=x, labels=y)
    with pytest.raises(DataError, match=r"bad.npz: .* missing \['y'\]"):
        load_npz(str(tmp_path / "bad.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match="text.npz: not a readable .npz file"):
        load_npz(str(tmp_path / "text.npz"))


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """A user's own model of sensor signals [64, 3], trained, with its .npz data."""
    import keras

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("user")
    x, y = _signals(1200, 0)
    x_test, y_test = _signals(300, 1)
    model = keras.Sequential(
        [
            keras.Input((64, 3)),
            keras.layers.Conv1D(16, 5, activation="relu"),
            keras.layers.MaxPooling1D(2),
            keras.layers.GRU(16),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    model.save(folder / "sensor.keras")
    np.savez(folder / "sensor.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    return folder


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_user_model_and_data_export_verified_through_the_cli(user_model, quantization):
    out = user_model / f"sensor-{quantization}.tflite"
    result = kerasrnn(
        "export",
        str(user_model / "sensor.keras"),
        "--npz",
        str(user_model / "sensor.npz"),
        "--quantize",
        quantization,
        "--out",
        str(out),
    )
    report = json.loads((user_model / f"sensor-{quantization}.verify.json").read_text())
    assert report["examples"] == 300 and report["micro"]["arena_bytes"] > 0
    assert report["keras_accuracy"] >= 0.9, report  # learnt, or agreement says little
    if quantization == "none":
        assert report["max_abs_logit_diff"] <= 1e-5  # softmax outputs, at most 1
    else:
        assert report["top1_agreement"] >= 0.99
    assert "TFLM arena" in result.stdout


def test_file_of_other_data_than_pixels_takes_any_finite_values(user_model, tmp_path):
    from kerasrnn.errors import InputError
    from kerasrnn.evaluation import load_model
    from kerasrnn.export.convert import to_tflite
    from kerasrnn.export.runtime import Classifier

    model = load_model(str(user_model / "sensor.keras"))
    x, _ = _signals(5, 2)
    assert x.min() < 0  # not pixels
    pixels = Classifier(to_tflite(model, str(tmp_path / "p.tflite")).path)
    with pytest.raises(InputError, match=r"float pixels must lie in \[0, 1\]"):
        pixels.predict(x)
    written = to_tflite(model, str(tmp_path / "any.tflite"), input_range=None)
    classifier = Classifier(written.path)
    assert classifier.input_range == (-np.inf, np.inf)
    expected = model.predict(x, verbose=0)
    assert np.abs(classifier.predict(x) - expected).max() <= 1e-5
    with pytest.raises(InputError, match="inputs contain NaN"):
        classifier.predict(np.full_like(x, np.nan))
