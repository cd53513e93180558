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


# float32: the same path with fewer checks than int8 (`make test-slow` runs it)
@pytest.mark.parametrize("quantization", [pytest.param("none", marks=pytest.mark.slow), "int8"])
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


# The user's own labelled sequences through kerasrnn's training, tuning and evaluation.


@pytest.fixture(scope="module")
def signals_npz(tmp_path_factory) -> str:
    """A .npz of 1,200 training and 200 test signals [64, 3] of 4 classes."""
    x, y = _signals(1200, 2)
    x_test, y_test = _signals(200, 3)
    path = tmp_path_factory.mktemp("signals") / "signals.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return str(path)


@pytest.fixture(scope="module")
def signals_run(signals_npz, tmp_path_factory):
    """`kerasrnn train --npz` of a GRU-16 on the signals, and its printed summary."""
    out = tmp_path_factory.mktemp("signals-run") / "run"
    result = kerasrnn(
        "train",
        "--npz",
        signals_npz,
        "--cell",
        "gru",
        "--units",
        "16",
        "--epochs",
        "8",
        "--learning-rate",
        "1e-2",
        "--schedule",
        "constant",
        "--batch-size",
        "32",
        "--quiet",
        "--out",
        str(out),
    )
    return out, result.stdout


def test_train_reads_the_users_sequences_and_learns_them(signals_run):
    from kerasrnn.evaluation import load_model

    out, stdout = signals_run
    model = load_model(str(out / "model.keras"))
    assert (model.input_shape, model.output_shape) == ((None, 64, 3), (None, 4))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_examples"] == 200
    assert summary["test_accuracy"] >= 0.9, summary  # chance is 0.25
    assert f"{summary['test_accuracy']:.2%} on 200 test sequences" in stdout


def test_evaluate_scores_the_users_test_split_as_training_did(signals_run, signals_npz):
    out, _ = signals_run
    scores = json.loads(
        kerasrnn("evaluate", str(out / "model.keras"), "--npz", signals_npz, "--json").stdout
    )
    summary = json.loads((out / "summary.json").read_text())
    assert scores["examples"] == 200
    assert scores["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1 / 200)


def test_a_model_trained_on_sequences_exports_verified_on_them(signals_run, signals_npz):
    from kerasrnn.config import DataConfig
    from kerasrnn.evaluation import load_model
    from kerasrnn.export.config import ExportConfig
    from kerasrnn.export.workflow import export_model

    out, _ = signals_run
    written, report, _ = export_model(
        str(out / "model.keras"),
        str(out / "model.tflite"),
        ExportConfig(),
        DataConfig(source="npz", npz=signals_npz),
    )
    assert report.examples == 200 and report.micro["arena_bytes"] > 0
    x_test = np.load(signals_npz)["x_test"]
    scale = np.abs(load_model(str(out / "model.keras")).predict(x_test, verbose=0)).max()
    assert report.max_abs_logit_diff <= 1e-5 * scale, (report, scale)  # float32 parity
    assert report.top1_agreement == 1.0


def test_tune_searches_models_of_the_users_sequences(signals_npz, tmp_path):
    from kerasrnn.config import DataConfig, TuneConfig
    from kerasrnn.evaluation import load_model
    from kerasrnn.search_space import SearchSpace
    from kerasrnn.tuning import tune

    space = SearchSpace.parse(["cell=gru", "units=8", "batch_size=64"])
    outcome = tune(
        space,
        DataConfig(source="npz", npz=signals_npz),
        TuneConfig(max_trials=1, max_epochs=1, patience=None),
        str(tmp_path),
    )
    assert [r["status"] for r in outcome.rows] == ["COMPLETED"]
    best = load_model(str(tmp_path / "best_model.keras"))
    assert (best.input_shape, best.output_shape) == ((None, 64, 3), (None, 4))
    assert 0.0 <= outcome.summary["test_accuracy"] <= 1.0


def test_training_refuses_float_targets_naming_the_file(tmp_path):
    from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
    from kerasrnn.training_run import train

    path = tmp_path / "series.npz"
    np.savez(path, x=np.zeros((8, 5, 1), np.float32), y=np.zeros(8, np.float32))
    with pytest.raises(DataError, match=r"series\.npz: y holds float targets \(regression\)"):
        train(
            ModelConfig(),
            DataConfig(source="npz", npz=str(path)),
            TrainConfig(),
            str(tmp_path / "run"),
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "options,message",
    [
        ({"shift": 2}, "shift: views, datasets and augmentation reshape MNIST images"),
        ({"view": "pixels"}, "view: views"),
        ({"source": "idx"}, "source 'npz' reads the file that npz names"),
    ],
)
def test_mnist_only_options_are_refused_with_sequences(options, message):
    from kerasrnn.config import DataConfig
    from kerasrnn.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        DataConfig(**{"source": "npz", "npz": "data.npz", **options})


def test_evaluate_names_the_shapes_that_differ(signals_run, signals_npz, tmp_path):
    out, _ = signals_run
    mnist_model = tmp_path / "mnist.keras"
    from kerasrnn.models import build_classifier

    build_classifier(units=4).save(str(mnist_model))
    result = kerasrnn("evaluate", str(mnist_model), "--npz", signals_npz, check=False)
    assert result.returncode != 0
    assert "the data's sequences are [64, 3] but the model reads [28, 28]" in result.stderr
    result = kerasrnn("evaluate", str(out / "model.keras"), "--data", "sample", check=False)
    assert "reads sequences of shape (64, 3), which no view gives: give it its own data" in (
        result.stderr
    )


def test_without_x_test_export_verifies_on_the_split_training_scored(signals_run, tmp_path):
    from kerasrnn.config import DataConfig
    from kerasrnn.export.config import ExportConfig
    from kerasrnn.export.workflow import export_model

    out, _ = signals_run
    x, y = _signals(1200, 2)
    np.savez(tmp_path / "train_only.npz", x=x, y=y)
    _, report, _ = export_model(
        str(out / "model.keras"),
        str(tmp_path / "m.tflite"),
        ExportConfig(micro=False),
        DataConfig(source="npz", npz=str(tmp_path / "train_only.npz")),
    )
    assert report.examples == 120  # the validation split (10%), never the training data


def test_a_run_resumes_only_on_the_npz_it_was_trained_on(tmp_path):
    """The run folder records the file's SHA-256 beside its path: a file replaced by other
    sequences under the same name is refused, naming the digest, and the run is kept."""
    from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
    from kerasrnn.errors import RunExistsError
    from kerasrnn.training_run import train

    path, out = tmp_path / "signals.npz", str(tmp_path / "run")
    x, y = _signals(120, 4)
    np.savez(path, x=x, y=y)
    data = DataConfig(source="npz", npz=str(path))
    model, config = ModelConfig(cell="elman", units=4), TrainConfig(epochs=1, verbose=0)
    train(model, data, config, out)
    assert len(train(model, data, config, out, resume=True).history) == 1  # same file: resumes
    settings = json.loads((tmp_path / "run" / "config.json").read_text())
    digest = settings["data"].pop("npz_sha256")  # as a run from before digests were recorded
    (tmp_path / "run" / "config.json").write_text(json.dumps(settings))
    train(model, data, config, out, resume=True)  # resumes on the file as it is now
    assert (
        json.loads((tmp_path / "run" / "config.json").read_text())["data"]["npz_sha256"] == digest
    )
    metrics = (tmp_path / "run" / "metrics.json").read_bytes()
    np.savez(path, x=x[::-1], y=y[::-1])
    with pytest.raises(RunExistsError, match=r"different configuration \(data\.npz_sha256 "):
        train(model, data, config, out, resume=True)
    assert (tmp_path / "run" / "metrics.json").read_bytes() == metrics


def test_a_search_resumes_only_on_the_npz_it_began_with(tmp_path):
    from kerasrnn.config import DataConfig, TuneConfig
    from kerasrnn.errors import RunExistsError
    from kerasrnn.search_space import SearchSpace
    from kerasrnn.tuning import tune

    path, out = tmp_path / "signals.npz", tmp_path / "search"
    x, y = _signals(120, 4)
    np.savez(path, x=x, y=y)
    search = (
        SearchSpace.parse(["cell=elman", "units=4"]),
        DataConfig(source="npz", npz=str(path)),
        TuneConfig(max_trials=1, max_epochs=1, patience=None),
        str(out),
    )
    tune(*search, retrain=False)
    recorded = (out / "search.json").read_bytes()
    np.savez(path, x=x[::-1], y=y[::-1])
    with pytest.raises(RunExistsError, match=r"other settings \(data\.npz_sha256 "):
        tune(*search, retrain=False)
    assert (out / "search.json").read_bytes() == recorded
