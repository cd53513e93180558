"""The custom Elman cell and the learnable initial state, written from the equations; and
Keras's LSTM and GRU with leaner unrolled steps."""

from __future__ import annotations

import keras
import tensorflow as tf
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
        # BiasAdd, whose gradient is one op (an add's sums over the broadcast batch axis at
        # run time), on the input's product, off the recurrent chain of the unrolled steps.
        x_proj = tf.nn.bias_add(ops.matmul(x_t, self.w_xh), self.b)
        h = self.activation(x_proj + ops.matmul(states[0], self.w_hh))
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


def _leaner_step_applies(layer: keras.layers.RNN, mask) -> bool:
    """Whether `layer` (an `LSTM` or `GRU` below) runs its own unrolled steps: it unrolls,
    and nothing of Keras's that its steps leave out is asked for."""
    cell = layer.cell
    return bool(
        layer.unroll
        and mask is None
        and not layer.go_backwards
        and cell.use_bias
        and not cell.dropout
        and not cell.recurrent_dropout
    )


@keras.saving.register_keras_serializable(package="kerasrnn")
class LSTM(keras.layers.LSTM):
    """Keras's LSTM, whose unrolled steps run fewer ops.

    The same weights, configuration and maths as `keras.layers.LSTM`. When it unrolls
    (see `models.unrolls`), each step computes, gates in Keras's order,

        i, f, g, o = split((x_t @ W + b) + h @ U, 4)
        c = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h = sigmoid(o) * tanh(c)

    Keras's maths in plain ops, with no layer call around each step and the bias added by
    a BiasAdd (whose gradient is one op). A bare training step on a 2-core CPU runs 1.07x
    as fast as Keras's for batches of unknown size (Keras `fit`), and as fast (16.6k
    against 16.5k samples/s) for a known size, as the BPTT loop traces it. A loop over
    time, cuDNN, dropout inside the cell or a mask run Keras's code.
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not _leaner_step_applies(self, mask):
            return super().inner_loop(sequences, initial_state, mask, training)
        cell = self.cell
        h, c = initial_state
        outputs = []
        for x_t in ops.unstack(sequences, axis=1):
            z = tf.nn.bias_add(ops.matmul(x_t, cell.kernel), cell.bias) + ops.matmul(
                h, cell.recurrent_kernel
            )
            i, f, g, o = ops.split(z, 4, axis=-1)
            c = cell.recurrent_activation(f) * c + cell.recurrent_activation(i) * cell.activation(g)
            h = cell.recurrent_activation(o) * cell.activation(c)
            outputs.append(h)
        return h, _outputs(self, outputs), [h, c]


@keras.saving.register_keras_serializable(package="kerasrnn")
class GRU(keras.layers.GRU):
    """Keras's GRU (reset_after), whose unrolled steps run fewer ops.

    The same weights, configuration and maths as `keras.layers.GRU`. When it unrolls (see
    `models.unrolls`), each step computes, with the input bias b and the recurrent bias c,

        x_z, x_r, x_h = split(x_t @ W + b, 3)
        h_z, h_r, h_h = split(h @ U + c, 3)
        z, r = sigmoid(x_z + h_z), sigmoid(x_r + h_r)
        candidate = tanh(x_h + r * h_h)
        h = candidate + z * (h - candidate)        (= z * h + (1 - z) * candidate)

    splitting each projection where Keras's cell slices it and adding the biases by BiasAdd
    (whose gradient is one op): a bare training step on a 2-core CPU runs 1.7x as fast as
    Keras's (20.8k against 12.1k samples/s, batches of a known size). A loop over time,
    cuDNN, dropout inside the cell, a mask or `reset_after=False` run Keras's code.
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not (_leaner_step_applies(self, mask) and self.cell.reset_after):
            return super().inner_loop(sequences, initial_state, mask, training)
        cell = self.cell
        h = initial_state[0] if isinstance(initial_state, (list, tuple)) else initial_state
        input_bias, recurrent_bias = cell.bias[0], cell.bias[1]
        outputs = []
        for x_t in ops.unstack(sequences, axis=1):
            x_z, x_r, x_h = ops.split(
                tf.nn.bias_add(ops.matmul(x_t, cell.kernel), input_bias), 3, axis=-1
            )
            h_z, h_r, h_h = ops.split(
                tf.nn.bias_add(ops.matmul(h, cell.recurrent_kernel), recurrent_bias), 3, axis=-1
            )
            z = cell.recurrent_activation(x_z + h_z)
            r = cell.recurrent_activation(x_r + h_r)
            candidate = cell.activation(x_h + r * h_h)
            h = candidate + z * (h - candidate)
            outputs.append(h)
        return h, _outputs(self, outputs), [h]


def _outputs(layer: keras.layers.RNN, outputs: list):
    """What `RNN.inner_loop` returns as outputs: every step's [batch, steps, units] with
    `return_sequences`, else the last [batch, 1, units]."""
    return ops.stack(outputs, axis=1) if layer.return_sequences else ops.expand_dims(outputs[-1], 1)
