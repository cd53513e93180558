"""The conversion matrix: user-built Keras models, each a row of the README's table of
layers and options (`tools/support_table.py` prints the table from these rows;
`tests/test_conversion_matrix.py` proves each row: a supported model exports and agrees with
Keras in LiteRT and TFLM, a refused one is refused by name and nothing is written).

Inputs are the bundled sample's real digits in the row's shape (`SHAPES`); targets are the
digit (classification, 10 classes) or the digit / 9 (regression, one output).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

# shape name -> (steps, features), and how a [n, 28, 28] float image becomes it.
SHAPES = {
    "(28, 28)": ((28, 28), lambda x: x),
    "(56, 14)": ((56, 14), lambda x: x.reshape(-1, 56, 14)),
    "(49, 16)": ((49, 16), lambda x: x.reshape(-1, 49, 16)),
    "(49, 1)": ((49, 1), lambda x: x.reshape(-1, 49, 16).mean(-1, keepdims=True)),
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One model of the matrix.

    Attributes:
        layer: the layer (or model trait) the row is about, as the README's table names it.
        option: the option or combination it shows.
        layers: builds the model's layers after its `keras.Input` (imports Keras).
        shape: a key of `SHAPES`.
        head: "logits", "softmax" (probabilities out) or "regression" (one output).
        refused: for a refused row, a regex of the refusal (it names the layer); else None.
        reason: for a refused row, why (the README's words); else what the file holds.
        functional: build it as a functional model, not a Sequential.
        int8: `to_tflite` options its int8 file is written with (the README names them).
    """

    layer: str
    option: str
    layers: Callable[[], list]
    shape: str = "(28, 28)"
    head: str = "logits"
    refused: str | None = None
    reason: str = ""
    functional: bool = False
    int8: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.layer}: {self.option}"

    def build(self):
        """The Keras model (seeded by the caller)."""
        import keras

        steps_features, _ = SHAPES[self.shape]
        inputs = keras.Input(steps_features)
        if not self.functional:
            return keras.Sequential([inputs, *self.layers()])
        x = inputs
        for layer in self.layers():
            x = layer(x)
        return keras.Model(inputs, x)


def _k():
    import keras

    return keras.layers


def _out(head: str = "logits"):
    L = _k()
    if head == "softmax":
        return L.Dense(10, activation="softmax")
    return L.Dense(1 if head == "regression" else 10)


def _two_outputs():
    """A functional model with two outputs (refused)."""
    import keras

    inputs = keras.Input((28, 28))
    h = keras.layers.LSTM(8)(inputs)
    return keras.Model(inputs, [keras.layers.Dense(10)(h), keras.layers.Dense(1)(h)])


def _stateful():
    """A stateful SimpleRNN (refused); stateful layers need a static batch."""
    import keras

    inputs = keras.Input((28, 28), batch_size=1)
    x = keras.layers.SimpleRNN(8, stateful=True)(inputs)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _residual():
    """A functional model whose Add takes two inputs (refused)."""
    import keras

    inputs = keras.Input((28, 28))
    x = keras.layers.Dense(28)(inputs)
    x = keras.layers.Add()([x, inputs])
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GRU(8)(x)))


MASKING = "a masked step keeps the state; float only (the mask is CEIL: no int8 kernel)"
ROWS: tuple[Row, ...] = (
    Row("SimpleRNN", "tanh", lambda: [_k().SimpleRNN(16), _out()]),
    Row("SimpleRNN", "activation relu", lambda: [_k().SimpleRNN(16, activation="relu"), _out()]),
    Row("SimpleRNN", "go_backwards", lambda: [_k().SimpleRNN(16, go_backwards=True), _out()]),
    Row("LSTM", "one layer", lambda: [_k().LSTM(16), _out()], shape="(56, 14)"),
    Row(
        "LSTM",
        "stacked, return_sequences",
        lambda: [_k().LSTM(12, return_sequences=True), _k().LSTM(12), _out()],
    ),
    Row(
        "LSTM",
        "return_sequences, then Flatten",
        lambda: [_k().LSTM(8, return_sequences=True), _k().Flatten(), _out()],
    ),
    Row("GRU", "reset_after=True (default)", lambda: [_k().GRU(16), _out()]),
    Row("GRU", "reset_after=False", lambda: [_k().GRU(16, reset_after=False), _out()]),
    Row(
        "GRU",
        "stacked with SimpleRNN",
        lambda: [_k().GRU(12, return_sequences=True), _k().SimpleRNN(12), _out()],
        shape="(49, 16)",
    ),
    Row(
        "kerasrnn ElmanCell",
        "RNN(ElmanCell), as build_classifier makes it",
        lambda: [_k().RNN(__import__("kerasrnn").ElmanCell(16)), _out()],
    ),
    Row(
        "kerasrnn LMU",
        "LMU(order=16), as build_classifier makes it",
        lambda: [__import__("kerasrnn").LMU(16, order=16, theta=49.0), _out()],
        shape="(49, 16)",
        reason="the whole sequence is one FULLY_CONNECTED (the memory is linear in it)",
    ),
    Row(
        "kerasrnn LMU",
        "return_sequences, then GRU",
        lambda: [
            __import__("kerasrnn").LMU(12, order=8, theta=28.0, return_sequences=True),
            _k().GRU(8),
            _out(),
        ],
    ),
    Row(
        "Bidirectional",
        "LSTM, merge_mode concat",
        lambda: [_k().Bidirectional(_k().LSTM(8)), _out()],
    ),
    Row(
        "Bidirectional",
        "GRU, return_sequences, merge_mode sum, GlobalAveragePooling1D",
        lambda: [
            _k().Bidirectional(_k().GRU(8, return_sequences=True), merge_mode="sum"),
            _k().GlobalAveragePooling1D(),
            _out(),
        ],
        int8={"per_channel": True},
        reason="int8 with per_channel=True (98.9% top-1 agreement per tensor, 99.6% per channel)",
    ),
    Row(
        "Bidirectional",
        "SimpleRNN, merge_mode ave, GlobalMaxPooling1D",
        lambda: [
            _k().Bidirectional(_k().SimpleRNN(8, return_sequences=True), merge_mode="ave"),
            _k().GlobalMaxPooling1D(),
            _out(),
        ],
    ),
    Row(
        "Bidirectional",
        "LSTM, merge_mode mul",
        lambda: [_k().Bidirectional(_k().LSTM(8), merge_mode="mul"), _out()],
    ),
    Row(
        "Dense",
        "hidden relu layer, then the output",
        lambda: [_k().LSTM(16), _k().Dense(16, activation="relu"), _out()],
    ),
    Row("Dense", "softmax output", lambda: [_k().LSTM(16), _out("softmax")], head="softmax"),
    Row(
        "Dense",
        "sigmoid hidden layer, functional model",
        lambda: [_k().GRU(16), _k().Dense(16, activation="sigmoid"), _out()],
        functional=True,
    ),
    Row(
        "Dense",
        "per step before the RNN (TimeDistributed)",
        lambda: [_k().TimeDistributed(_k().Dense(16, activation="tanh")), _k().LSTM(12), _out()],
    ),
    Row(
        "Dense",
        "one output: regression",
        lambda: [_k().GRU(16), _out("regression")],
        shape="(49, 1)",
        head="regression",
    ),
    Row(
        "Activation",
        "softmax layer after the logits",
        lambda: [_k().SimpleRNN(16), _out(), _k().Activation("softmax")],
        head="softmax",
    ),
    Row(
        "Dropout",
        "between layers (inference: none)",
        lambda: [
            _k().Dropout(0.1),
            _k().GRU(16, return_sequences=True, dropout=0.1),
            _k().GRU(16),
            _k().Dropout(0.2),
            _out(),
        ],
    ),
    Row(
        "BatchNormalization",
        "on the features before the RNN",
        lambda: [_k().BatchNormalization(), _k().LSTM(12), _out()],
    ),
    Row(
        "Conv1D",
        "valid padding, relu, before the LSTM",
        lambda: [_k().Conv1D(16, 3, activation="relu"), _k().LSTM(12), _out()],
    ),
    Row(
        "Conv1D",
        "causal, dilation 2, MaxPooling1D, GRU",
        lambda: [
            _k().Conv1D(12, 3, padding="causal", dilation_rate=2, activation="relu"),
            _k().MaxPooling1D(2),
            _k().GRU(12),
            _out(),
        ],
        shape="(56, 14)",
    ),
    Row(
        "Conv1D",
        "same padding, stride 2, AveragePooling1D",
        lambda: [
            _k().Conv1D(12, 4, strides=2, padding="same"),
            _k().AveragePooling1D(2, padding="same"),
            _k().SimpleRNN(12),
            _out(),
        ],
        shape="(49, 16)",
    ),
    Row(
        "Reshape",
        "sequence to vector",
        lambda: [_k().GRU(8, return_sequences=True), _k().Reshape((28 * 8,)), _out()],
    ),
    Row(
        "Masking",
        "zero-padded steps, LSTM",
        lambda: [_k().Masking(), _k().LSTM(12), _out()],
        reason=MASKING,
    ),
    Row(
        "Masking",
        "stacked GRU",
        lambda: [_k().Masking(), _k().GRU(12, return_sequences=True), _k().GRU(12), _out()],
        reason=MASKING,
    ),
    # refused, by name, with the reason
    Row(
        "Masking",
        "then GlobalAveragePooling1D",
        lambda: [
            _k().Masking(),
            _k().GlobalAveragePooling1D(),
            _k().Reshape((1, 28)),
            _k().LSTM(4),
            _out(),
        ],
        refused=r"layer global_average_pooling1d.*meets a Masking mask",
        reason="Keras applies the mask in the pooling; masks are rebuilt in recurrent layers",
    ),
    Row(
        "Masking",
        "Bidirectional",
        lambda: [_k().Masking(), _k().Bidirectional(_k().GRU(8)), _out()],
        refused=r"layer bidirectional.*masked Bidirectional layer is not rebuilt",
        reason="not rebuilt yet",
    ),
    Row(
        "LSTM",
        "activation relu",
        lambda: [_k().LSTM(8, activation="relu"), _out()],
        refused=r"layer lstm.*only the default activation tanh",
        reason="the gates' activations are the fused op's and TFLM's: tanh and sigmoid",
    ),
    Row(
        "GRU",
        "recurrent_activation hard_sigmoid",
        lambda: [_k().GRU(8, recurrent_activation="hard_sigmoid"), _out()],
        refused=r"layer gru.*only the default recurrent_activation sigmoid",
        reason="the gates' activations are the fused op's and TFLM's: tanh and sigmoid",
    ),
    Row(
        "Dense",
        "activation gelu",
        lambda: [_k().GRU(8), _k().Dense(10, activation="gelu")],
        refused=r"layer dense.*activation 'gelu' is not rebuilt",
        reason="not rebuilt yet (activations: linear, relu, tanh, sigmoid, softmax)",
    ),
    Row(
        "LayerNormalization",
        "after the RNN",
        lambda: [_k().GRU(8), _k().LayerNormalization(), _out()],
        refused=r"layer layer_normalization\S* \(LayerNormalization\): this layer is not rebuilt",
        reason="not rebuilt yet",
    ),
    Row(
        "SimpleRNN",
        "stateful",
        _stateful,
        refused=r"layer simple_rnn.*stateful RNN keeps state between calls",
        reason="a stateful layer keeps state between calls; use the streaming file",
    ),
    Row(
        "Model",
        "two outputs",
        _two_outputs,
        refused=r"it has 1 inputs and 2 outputs",
        reason="a file is rebuilt from one input and one output",
    ),
    Row(
        "Add",
        "a residual branch",
        _residual,
        refused=r"layer add\S* \(Add\): it takes 2 inputs",
        reason="only a chain of one-input layers is rebuilt",
    ),
)
# the rows whose `layers` builds a whole model
WHOLE_MODELS = (_two_outputs, _residual, _stateful)


def build(row: Row):
    """The row's Keras model."""
    if row.layers in WHOLE_MODELS:
        return row.layers()
    return row.build()


def supported() -> list[Row]:
    return [row for row in ROWS if row.refused is None]


def refused() -> list[Row]:
    return [row for row in ROWS if row.refused is not None]


def inputs(row: Row, images: np.ndarray) -> np.ndarray:
    """float32 [n, steps, features] of the row's shape from [n, 28, 28] images in [0, 1];
    for a Masking row, every other sequence ends in zero-padded steps."""
    x = SHAPES[row.shape][1](images).astype(np.float32).copy()
    if row.layer == "Masking":
        steps = x.shape[1]
        for i in range(0, len(x), 2):
            x[i, steps - 1 - (i // 2) % (steps // 2) :] = 0.0
    return x


def targets(row: Row, labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.float32) / 9.0 if row.head == "regression" else labels
