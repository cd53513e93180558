"""The custom Elman cell and the learnable initial state, written from the equations; the
Legendre Memory Unit, its cell and its parallel layer; and Keras's LSTM and GRU with leaner
unrolled steps."""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kerasrnn import legendre


def _checked_units(units) -> int:
    """`units`, a positive integer; else ValueError saying what was given."""
    if not isinstance(units, int) or units <= 0:
        raise ValueError(f"units must be a positive integer, got {units!r}")
    return units


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
        self.units = _checked_units(units)
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
        self.units = _checked_units(units)

    def build(self, input_shape):
        self.h0 = self.add_weight(name="h0", shape=(self.units,), initializer="zeros")

    def call(self, x):
        batch = ops.shape(x)[0]
        return ops.broadcast_to(ops.expand_dims(self.h0, 0), (batch, self.units))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="kerasrnn")
class LegendreMemoryCell(keras.layers.Layer):
    """One step of a Legendre Memory Unit whose output does not feed back (Voelker, Kajić
    and Eliasmith, 2019; the parallelisable form of Chilkuri and Eliasmith, 2021):

        u_t = x_t @ e_x + b_u                 the memory's input, one number per example
        m_t = m_{t-1} @ A + u_t * B           a fixed linear memory of the last theta steps
        h_t = act(x_t @ W_x + m_t @ W_m + b)

    (A, B) is the Legendre delay system of `order` states and window `theta` steps,
    discretised by zero-order hold (`legendre.memory_step`): m_t holds the Legendre
    coefficients of u over the last theta steps. Only e_x, b_u, W_x, W_m and b are
    trained. The state is m [batch, order]; x_t is [batch, features], h_t [batch, units].
    Wrap it in `LMU` (parallel over time) or `keras.layers.RNN` to run a sequence.

    Args:
        units: size of the output h.
        order: the memory's size: Legendre coefficients kept (256 for MNIST's pixels).
        theta: the window the memory spans, in steps (a sequence's length, say).
        activation: of h, "tanh" (default) or "relu".
        kernel_initializer: initializer of W_x and W_m.
    """

    def __init__(
        self,
        units: int,
        order: int = 256,
        theta: float = 784.0,
        activation="tanh",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _checked_units(units)
        self.order = order
        self.theta = float(theta)
        # float64 arrays, cast to the layer's dtype where used; checks order and theta
        self.a, self.b_m = legendre.memory_step(order, self.theta)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.state_size = order
        self.output_size = units

    def build(self, input_shape):
        features = input_shape[-1]
        # ones: the memory starts by holding the input itself (the sum of its features)
        self.e_x = self.add_weight(name="e_x", shape=(features, 1), initializer="ones")
        self.b_u = self.add_weight(name="b_u", shape=(1,), initializer="zeros")
        self.w_x = self.add_weight(
            name="w_x", shape=(features, self.units), initializer=self.kernel_initializer
        )
        self.w_m = self.add_weight(
            name="w_m", shape=(self.order, self.units), initializer=self.kernel_initializer
        )
        self.b = self.add_weight(name="b", shape=(self.units,), initializer="zeros")

    def memory_input(self, x):
        """u = x @ e_x + b_u: [..., features] -> [..., 1]."""
        return ops.matmul(x, self.e_x) + self.b_u

    def readout(self, x_t, m):
        """h = act(x_t @ W_x + m @ W_m + b) [batch, units]."""
        return self.activation(
            tf.nn.bias_add(ops.matmul(x_t, self.w_x), self.b) + ops.matmul(m, self.w_m)
        )

    def call(self, x_t, states, training=False):
        m = states[0]
        m = ops.matmul(m, ops.cast(self.a, m.dtype)) + self.memory_input(x_t) * ops.cast(
            self.b_m, m.dtype
        )
        return self.readout(x_t, m), [m]

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "order": self.order,
            "theta": self.theta,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


@keras.saving.register_keras_serializable(package="kerasrnn")
class LMU(keras.layers.RNN):
    """A `LegendreMemoryCell` over a sequence, trained in parallel over time.

    When it returns the last h alone (no mask, no `go_backwards`), it computes the steps'
    result in one product instead of a loop: from the initial state m_0, after T steps

        m_T = m_0 @ A**T + u @ response,   h_T = act(x_T @ W_x + m_T @ W_m + b)

    with u [batch, T] the memory inputs of every step and response [T, order] the
    memory's impulse response (`legendre.impulse_response`): the same sum the steps
    compute, in another order (Chilkuri and Eliasmith, 2021). For MNIST's 784 pixels that
    is one [batch, 784] x [784, order] product instead of 784 dependent steps. With
    `return_sequences`, a mask or `go_backwards` it runs the cell's step, as
    `keras.layers.RNN` does.

    Args:
        units, order, theta, activation, kernel_initializer: see `LegendreMemoryCell`.
        **kwargs: `keras.layers.RNN`'s (return_sequences, unroll, name, ...).
    """

    def __init__(
        self,
        units: int,
        order: int = 256,
        theta: float = 784.0,
        activation="tanh",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        cell = LegendreMemoryCell(
            units,
            order,
            theta,
            activation,
            kernel_initializer,
            dtype=kwargs.get("dtype"),
            name="legendre_memory_cell",
        )
        super().__init__(cell, **kwargs)

    def parallel_applies(self, mask) -> bool:
        """Whether a call computes the last h in one product (see the class)."""
        return mask is None and not self.go_backwards and not self.return_sequences

    def inner_loop(self, sequences, initial_state, mask, training=False):
        steps = sequences.shape[1]
        if steps is None or not self.parallel_applies(mask):
            return super().inner_loop(sequences, initial_state, mask, training)
        cell = self.cell
        response, transition = _parallel_memory(cell.order, cell.theta, steps)
        (m0,) = initial_state if isinstance(initial_state, (list, tuple)) else [initial_state]
        u = ops.squeeze(cell.memory_input(sequences), axis=-1)  # [batch, steps]
        m = ops.matmul(u, ops.cast(response, u.dtype)) + ops.matmul(
            m0, ops.cast(transition, m0.dtype)
        )
        h = cell.readout(sequences[:, -1], m)
        return h, ops.expand_dims(h, 1), [m]

    def get_config(self):
        config = super().get_config()
        del config["cell"]
        cell = self.cell.get_config()
        return {**config, **{name: cell[name] for name in _LMU_ARGUMENTS}}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# What `LMU` passes to its cell, and stores in its config in place of the cell's.
_LMU_ARGUMENTS = ("units", "order", "theta", "activation", "kernel_initializer")


@functools.lru_cache(maxsize=8)
def _parallel_memory(order: int, theta: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 (impulse response [steps, order], state transition [order, order]) of the
    memory over `steps` steps (see `LMU`), computed once per process."""
    return (
        legendre.impulse_response(order, theta, steps),
        legendre.state_transition(order, theta, steps),
    )


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
