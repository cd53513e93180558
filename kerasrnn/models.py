"""N-to-1 recurrent classifiers: read a sequence, classify its last hidden state."""

from __future__ import annotations

import dataclasses

import keras

from kerasrnn.cells import ElmanCell, LearnableInitialState

CELLS = ("simple", "elman", "lstm", "gru")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture of a classifier.

    Attributes:
        cell: "simple" (Keras SimpleRNN), "elman" (our cell with a learnable h0),
            "lstm" or "gru".
        units: hidden units per recurrent layer.
        layers: number of stacked recurrent layers.
        dropout: dropout rate between layers and before the output layer.
        activation: recurrent activation of simple/elman ("tanh" or "relu").
        recurrent_initializer: "orthogonal" or "identity" (IRNN with relu).
        input_shape: (steps, features) of one example: (28, 28) rows, (784, 1) pixels.
        classes: number of output logits.
    """

    cell: str = "elman"
    units: int = 64
    layers: int = 1
    dropout: float = 0.0
    activation: str = "tanh"
    recurrent_initializer: str = "orthogonal"
    input_shape: tuple[int, int] = (28, 28)
    classes: int = 10

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        for name in ("units", "layers", "classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {self.activation!r}")
        if self.recurrent_initializer not in ("orthogonal", "identity"):
            raise ValueError("recurrent_initializer must be 'orthogonal' or 'identity', "
                             f"got {self.recurrent_initializer!r}")
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        if len(self.input_shape) != 2:
            raise ValueError(f"input_shape must be (steps, features), got {self.input_shape}")


def _recurrent_layer(config: ModelConfig, return_sequences: bool, name: str):
    common = {"return_sequences": return_sequences, "name": name}
    if config.cell == "simple":
        return keras.layers.SimpleRNN(config.units, activation=config.activation,
                                      recurrent_initializer=config.recurrent_initializer,
                                      **common)
    if config.cell == "elman":
        cell = ElmanCell(config.units, activation=config.activation,
                         recurrent_initializer=config.recurrent_initializer)
        return keras.layers.RNN(cell, **common)
    layer = keras.layers.LSTM if config.cell == "lstm" else keras.layers.GRU
    return layer(config.units, **common)


def build_classifier(config: ModelConfig | None = None, **options) -> keras.Model:
    """Builds an N-to-1 classifier that outputs logits.

    Args:
        config: a `ModelConfig`; or pass its fields as keyword arguments
            (`build_classifier(cell="gru", units=128)`).

    Returns:
        A functional `keras.Model` mapping [batch, steps, features] to logits [batch, classes].
    """
    if config is None:
        config = ModelConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    inputs = keras.Input(shape=config.input_shape, name="sequence")
    x = inputs
    for i in range(config.layers):
        last = i == config.layers - 1
        rnn = _recurrent_layer(config, return_sequences=not last, name=f"{config.cell}_{i}")
        if config.cell == "elman":
            h0 = LearnableInitialState(config.units, name=f"h0_{i}")(x)
            x = rnn(x, initial_state=[h0])
        else:
            x = rnn(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
    logits = keras.layers.Dense(config.classes, name="logits")(x)
    return keras.Model(inputs, logits, name=f"{config.cell}_classifier")

