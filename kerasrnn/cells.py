"""The custom Elman cell and the learnable initial state, written from the equations."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kerasrnn")
class ElmanCell(keras.layers.Layer):
    """h_t = act(x_t @ W_xh + h_{t-1} @ W_hh + b), one step of an Elman RNN.

    Wrap it in `keras.layers.RNN` to run a sequence. Inputs x_t are [batch, features],
    the state h is [batch, units].

    Args:
        units: size of the hidden state h.
        activation: "tanh" (default) or "relu" (with `recurrent_initializer="identity"`:
            the IRNN of Le, Jaitly and Hinton, 2015).
        recurrent_initializer: initializer of W_hh, "orthogonal" (default) or "identity".
        kernel_initializer: initializer of W_xh.
    """

    def __init__(
        self,
        units: int,
        activation="tanh",
        recurrent_initializer="orthogonal",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        self.units = units
        self.activation = keras.activations.get(activation)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        self.w_xh = self.add_weight(
            name="w_xh", shape=(input_shape[-1], self.units), initializer=self.kernel_initializer
        )
        self.w_hh = self.add_weight(
            name="w_hh", shape=(self.units, self.units), initializer=self.recurrent_initializer
        )
        self.b = self.add_weight(name="b", shape=(self.units,), initializer="zeros")

    def call(self, x_t, states, training=False):
        h = self.activation(ops.matmul(x_t, self.w_xh) + ops.matmul(states[0], self.w_hh) + self.b)
        return h, [h]

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


@keras.saving.register_keras_serializable(package="kerasrnn")
class LearnableInitialState(keras.layers.Layer):
    """A trainable initial hidden state h0 [units], tiled over the batch.

    Call it on the input sequence [batch, steps, features]; it returns h0 as
    [batch, units], ready for `keras.layers.RNN(...)(x, initial_state=[h0])`.

    Args:
        units: size of the hidden state.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        self.units = units

    def build(self, input_shape):
        self.h0 = self.add_weight(name="h0", shape=(self.units,), initializer="zeros")

    def call(self, x):
        batch = ops.shape(x)[0]
        return ops.broadcast_to(ops.expand_dims(self.h0, 0), (batch, self.units))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
