"""Any Keras recurrent model to the edge, never silently wrong: every row of the conversion
matrix (`conversion_matrix.ROWS`, the README's table) either exports builtin-only and agrees
with Keras on real digits in LiteRT and TFLM, or is refused by name with nothing written.

The default run converts a row per layer kind to float32 and a few to int8 (the default
target's choice of activations); every row x every quantization runs with `make test-slow`."""

import os
import re

import conversion_matrix as matrix
import numpy as np
import pytest
from conftest import previous_export, relative_difference

from kerasrnn.errors import ConversionError
from kerasrnn.export import convert, flatbuffer
from kerasrnn.export.micro import run_micro
from kerasrnn.export.runtime import Classifier

SUPPORTED = {row.name: row for row in matrix.supported()}
REFUSED = {row.name: row for row in matrix.refused()}
# The default run's rows (every row runs with `-m slow`): float32, one row per layer kind
# and form; int8, an LSTM alone and a bidirectional GRU with pooling around it (a GRU of
# build_classifier's is the session models', tests/test_export.py).
FLOAT_DEFAULT = (
    "SimpleRNN: go_backwards",
    "LSTM: stacked, return_sequences",
    "GRU: reset_after=False",
    "kerasrnn ElmanCell: RNN(ElmanCell), as build_classifier makes it",
    "kerasrnn LMU: LMU(order=16), as build_classifier makes it",
    "Bidirectional: LSTM, merge_mode concat",
    "Bidirectional: GRU, return_sequences, merge_mode sum, GlobalAveragePooling1D",
    "Dense: hidden relu layer, then the output",
    "Dense: one output: regression",
    "BatchNormalization: on the features before the RNN",
    "Conv1D: causal, dilation 2, MaxPooling1D, GRU",
    "Reshape: sequence to vector",
    "Masking: stacked GRU",
)
INT8_DEFAULT = (
    "LSTM: one layer",
    "Bidirectional: GRU, return_sequences, merge_mode sum, GlobalAveragePooling1D",
)


def _rows(default: tuple[str, ...]) -> list:
    """Every supported row, those outside `default` marked slow."""
    return [
        name if name in default else pytest.param(name, marks=pytest.mark.slow)
        for name in SUPPORTED
    ]


# What each quantization keeps against Keras on the 1,000 test digits: the largest logit
# difference relative to the largest |logit|, or the top-1 agreement (classifiers) /
# relative difference (regression) of the quantized files.
FLOAT_RELATIVE = {"none": 1e-5, "float16": 0.02}
QUANTIZED = {"dynamic": (0.98, 0.1), "int8": (0.99, 0.1)}


@pytest.fixture(scope="module")
def digits():
    """(train images, train labels, test images, test labels) of the sample, float in [0, 1]."""
    from kerasrnn.config import DataConfig
    from kerasrnn.data import load_arrays

    train = load_arrays(DataConfig(source="sample"), "train+validation")
    test = load_arrays(DataConfig(source="sample"), "test")
    return train[0] / np.float32(255), train[1], test[0] / np.float32(255), test[1]


@pytest.fixture(scope="module")
def matrix_models(digits):
    """(name, trained) -> the row's model: as built (seeded), or trained 12 epochs on the
    sample (made once per module, on first use). Float parity holds for any weights;
    quantized agreement is measured on trained models, whose logits are not near-ties."""
    import keras

    cache = {}
    train_x, train_y, _, _ = digits

    def get(name, trained=True):
        if (name, trained) not in cache:
            row = SUPPORTED[name]
            keras.utils.set_random_seed(0)
            model = matrix.build(row)
            cache[name, trained] = model
            if not trained:
                return model
            loss = {
                "logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                "softmax": "sparse_categorical_crossentropy",
                "regression": "mse",
            }[row.head]
            model.compile(keras.optimizers.Adam(3e-3), loss)
            x = matrix.inputs(row, train_x)
            model.fit(x, matrix.targets(row, train_y), epochs=12, batch_size=64, verbose=0)
        return cache[name, trained]

    return get


def _export(row, model, path, quantization, digits):
    train_x = digits[0]
    options = {}
    if quantization == "int8":
        options = {"representative_data": matrix.inputs(row, train_x[:2000]), **row.int8}
    return convert.to_tflite(model, path, quantization, **options)


def _check(row, model, written, quantization, digits):
    _, _, test_x, test_y = digits
    assert all(flatbuffer.is_builtin(op) for op in written.operators), written.operators
    x = matrix.inputs(row, test_x)
    expected = model.predict(x, verbose=0)
    litert = Classifier(written.path).predict(x)
    if quantization in FLOAT_RELATIVE:
        assert relative_difference(litert, expected) <= FLOAT_RELATIVE[quantization]
    else:
        agreement, relative = QUANTIZED[quantization]
        if row.head == "regression":
            assert relative_difference(litert, expected) <= relative
        else:
            assert (litert.argmax(1) == expected.argmax(1)).mean() >= agreement
    if quantization in ("none", "int8"):  # the two that TFLM runs
        micro = run_micro(written.path, x[:20]).logits
        if quantization == "none":
            assert relative_difference(micro, litert[:20]) <= 1e-5
        else:
            assert (micro.argmax(1) == litert[:20].argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("name", _rows(FLOAT_DEFAULT))
def test_user_model_float32_file_matches_keras_in_litert_and_tflm(
    name, matrix_models, digits, tmp_path
):
    row = SUPPORTED[name]
    model = matrix_models(name, trained=False)
    written = _export(row, model, str(tmp_path / "m.tflite"), "none", digits)
    _check(row, model, written, "none", digits)


@pytest.mark.parametrize("name", _rows(INT8_DEFAULT))
def test_user_model_int8_file_agrees_with_keras(name, matrix_models, digits, tmp_path):
    row = SUPPORTED[name]
    model = matrix_models(name)
    if row.layer == "Masking":
        with pytest.raises(ConversionError, match=r"\(Masking\) as int8: the mask .* CEIL"):
            _export(row, model, str(tmp_path / "m.tflite"), "int8", digits)
        return
    written = _export(row, model, str(tmp_path / "m.tflite"), "int8", digits)
    _check(row, model, written, "int8", digits)


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["float16", "dynamic"])
@pytest.mark.parametrize("name", SUPPORTED)
def test_every_user_model_exports_in_every_quantization(
    name, quantization, matrix_models, digits, tmp_path
):
    row = SUPPORTED[name]
    model = matrix_models(name)
    written = _export(row, model, str(tmp_path / "m.tflite"), quantization, digits)
    _check(row, model, written, quantization, digits)


@pytest.mark.parametrize("name", REFUSED)
def test_unsupported_user_model_is_refused_by_name_and_nothing_is_written(name, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    row = REFUSED[name]
    target = tmp_path / "m.tflite"
    target.write_bytes(previous_export())
    with pytest.raises(ConversionError, match=row.refused):
        convert.to_tflite(matrix.build(row), str(target))
    assert target.read_bytes() == previous_export()
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_the_old_silent_drop_of_a_hidden_dense_layer_is_rebuilt(digits, tmp_path):
    """LSTM -> Dense(relu) -> Dense(10) was exported without its hidden layer, exit 0;
    a Dense(64) hidden layer made the converter fail on a shape mismatch."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.LSTM(32),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    written = convert.to_tflite(model, str(tmp_path / "m.tflite"))
    x = digits[2][:200]
    expected = model.predict(x, verbose=0)
    assert relative_difference(Classifier(written.path).predict(x), expected) <= 1e-5
    assert written.parity["relative_diff"] <= 1e-5 and written.parity["probes"] == 1000


def test_file_that_differs_from_its_keras_model_is_refused(tmp_path):
    """The check before writing: a file compared with a model it does not compute."""
    import keras

    from kerasrnn.export import model_reader
    from kerasrnn.export.config import ParityBounds

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.GRU(8), keras.layers.Dense(10)])
    other = keras.models.clone_model(model)  # same layers, other weights
    written = convert.to_tflite(model, str(tmp_path / "m.tflite"))
    with open(written.path, "rb") as f:
        content = f.read()
    job = {
        "stream": False,
        "representative": None,
        "batch_size": 1,
        "bounds": vars(ParityBounds.for_file("none")),
        "input_range": [0.0, 1.0],
        "target": "litert",
    }
    measured = convert._parity(content, other, model_reader.read_model(other), job)
    failure = ParityBounds(**job["bounds"]).failure(measured)
    assert re.fullmatch(
        r"max \|difference\| \S+ is \S+ of the largest output, above 0\.0001", failure
    )
    assert measured["probes"] == 1000


@pytest.mark.parametrize(
    "name",
    [
        "Bidirectional: SimpleRNN, merge_mode ave, GlobalMaxPooling1D",
        "GRU: stacked with SimpleRNN",
    ],
)
def test_int8_activations_export_elman_layers_joined_where_they_may_be(name, tmp_path, digits):
    """int8 activations join an Elman layer's step inputs (`graph`, `calibration`) only
    where it gives its last h alone: where every h is also output (a PACK of the sequence),
    the quantizer ties h's scale to the PACK's and the CONCATENATION's, and refused the
    file (the Bidirectional SimpleRNN); a last SimpleRNN over a GRU's sequence joins."""
    import keras

    row = SUPPORTED[name]
    keras.utils.set_random_seed(0)
    model = matrix.build(row)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = matrix.inputs(row, digits[0][:600])
    model.fit(x, digits[1][:600], epochs=1, verbose=0)
    written = convert.to_tflite(
        model, str(tmp_path / "b.tflite"), "int8", x[:300], activations="int8", min_agreement=0
    )
    assert written.activations == "int8"
    assert ("CONCATENATION" in written.operators) == name.startswith("GRU")


def test_int8_file_below_its_agreement_is_not_written(tmp_path, digits):
    """An untrained model's near-tied logits: int8 disagrees on many probes."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.LSTM(8), keras.layers.Dense(10)])
    target = tmp_path / "m.tflite"
    with pytest.raises(ConversionError, match=r"top-1 agreement .* below 100\.0%"):
        convert.to_tflite(
            model, str(target), "int8", representative_data=digits[0][:300], min_agreement=1.0
        )
    assert not target.exists()


def test_streaming_a_model_that_sees_the_whole_sequence_is_refused(tmp_path):
    import keras

    layers = keras.layers
    model = keras.Sequential(
        [keras.Input((28, 28)), layers.Bidirectional(layers.GRU(4)), layers.Dense(2)]
    )
    with pytest.raises(ConversionError, match="as a stream: streaming needs"):
        convert.to_tflite(model, str(tmp_path / "s.tflite"), stream=True)
    assert not os.listdir(tmp_path)


def test_masked_user_model_streams_one_row_at_a_time(tmp_path, digits):
    import keras

    from kerasrnn.export.runtime import Stream

    keras.utils.set_random_seed(0)
    row = SUPPORTED["Masking: zero-padded steps, LSTM"]
    model = matrix.build(row)
    written = convert.to_tflite(model, str(tmp_path / "s.tflite"), stream=True)
    x = matrix.inputs(row, digits[2][:4])
    stream = Stream(written.path)
    for sequence in x:
        stream.reset()
        for step in sequence:
            logits = stream.push(step)
        assert relative_difference(logits, model.predict(sequence[None], verbose=0)[0]) <= 1e-5


@pytest.mark.parametrize("quantization", [pytest.param("none", marks=pytest.mark.slow), "int8"])
def test_lmu_streams_one_step_at_a_time_like_its_parallel_form(
    quantization, matrix_models, digits, tmp_path
):
    """Keras runs the memory over a whole sequence as one product; the streaming file
    steps it one input per Invoke, in int8 with its step matrix split in two (see
    `model_reader.MemoryWeights.increment`)."""
    from kerasrnn.export.runtime import Stream

    row = SUPPORTED["kerasrnn LMU: LMU(order=16), as build_classifier makes it"]
    model = matrix_models(row.name)
    options = {}
    if quantization == "int8":
        options = {"representative_data": matrix.inputs(row, digits[0][:300])}
    written = convert.to_tflite(
        model, str(tmp_path / "s.tflite"), quantization, stream=True, **options
    )
    x = matrix.inputs(row, digits[2][:40])
    expected = model.predict(x, verbose=0)
    stream = Stream(written.path)
    got = []
    for sequence in x:
        stream.reset()
        for step in sequence:
            logits = stream.push(step)
        got.append(logits)
    got = np.stack(got)
    if quantization == "none":
        assert relative_difference(got, expected) <= 1e-5
    else:
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
