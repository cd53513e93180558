"""N-to-1 recurrent classifiers: read a sequence, classify its last hidden state."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from kerasrnn.cell_kinds import CELL_KINDS
from kerasrnn.cells import LearnableInitialState
from kerasrnn.config import ModelConfig

# The longest sequence a recurrent layer unrolls. Unrolled, the 28 steps of the rows view
# are one graph of small ops instead of a while loop: on a 2-core CPU `kerasrnn train` ran
# 1.43x (simple), 1.42x (elman), 2.0x (GRU, with its leaner steps in `cells`) and 1.23x
# (LSTM) as fast (benchmarks/training_speed.py, README). The 784 steps of the pixel views
# would make a graph of tens of thousands of ops, slow to build and trace.
UNROLL_MAX_STEPS = 64


def unrolls(config: ModelConfig) -> bool:
    """Whether the recurrent layers of `config` unroll over time: for sequences of at
    most `UNROLL_MAX_STEPS` steps, except LSTM and GRU when a GPU is visible (Keras runs
    those as one cuDNN op there, which it does only for layers that do not unroll)."""
    if config.input_shape[0] > UNROLL_MAX_STEPS:
        return False
    cudnn = issubclass(CELL_KINDS[config.cell].layer_class(), (keras.layers.LSTM, keras.layers.GRU))
    return not (cudnn and tf.config.list_physical_devices("GPU"))


def recurrent_layer(config: ModelConfig, return_sequences: bool, name: str) -> keras.layers.RNN:
    """One recurrent layer of the kind `config.cell` names (see `cell_kinds.CELL_KINDS`),
    unrolled over time when `unrolls(config)`.

    Returns:
        A Keras RNN layer mapping [batch, steps, features] to [batch, units] (or
        [batch, steps, units] with `return_sequences`).
    """
    kind = CELL_KINDS[config.cell]
    unroll = unrolls(config)
    options = {}
    if kind.takes_activation:
        options = {
            "activation": config.activation,
            "recurrent_initializer": config.recurrent_initializer,
        }
    if kind.memory:
        options = {
            "order": config.memory_order,
            "theta": config.theta or config.input_shape[0],
            "activation": config.activation,
        }
    layer_class = kind.layer_class()
    if layer_class is keras.layers.RNN:
        return keras.layers.RNN(
            kind.cell_class()(config.units, **options),
            return_sequences=return_sequences,
            unroll=unroll,
            name=name,
        )
    return layer_class(
        config.units, return_sequences=return_sequences, unroll=unroll, name=name, **options
    )


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
    kind = CELL_KINDS[config.cell]
    name = "sequence" if config.steps is not None else f"sequence_{config.view}"
    inputs = keras.Input(shape=config.input_shape, name=name)
    x = inputs
    for i in range(config.layers):
        last = i == config.layers - 1
        rnn = recurrent_layer(config, return_sequences=not last, name=f"{config.cell}_{i}")
        if kind.learnable_h0:
            h0 = LearnableInitialState(config.units, name=f"h0_{i}")(x)
            x = rnn(x, initial_state=[h0])
        else:
            x = rnn(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
    if config.hidden:
        x = keras.layers.Dense(config.hidden, activation="relu", name="hidden")(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name="dropout_hidden")(x)
    logits = keras.layers.Dense(config.classes, name="logits")(x)
    return keras.Model(inputs, logits, name=f"{config.cell}_classifier")
