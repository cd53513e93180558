"""Inference graphs for conversion, written from a trained classifier's weights.

Keras's RNN layers lower to TensorList ops, which TFLite can only run as Flex (Select TF)
ops. This module rebuilds the same maths from builtin-friendly ops instead, in the form
that gives the smallest file that still runs on LiteRT and TensorFlow Lite Micro:

- the input projection x_t @ W_x + b of every time step is one FULLY_CONNECTED over the
  whole sequence, outside the recurrence;
- the recurrence is unrolled over the (static) time steps: per step one FULLY_CONNECTED
  with the shared W_h, an ADD and the activation (plus the gate arithmetic of LSTM/GRU);
- a zero initial state skips the first step's recurrent product; a learnable h0 folds
  into a constant;
- or, for LSTM, the recurrence is TFLite's fused UNIDIRECTIONAL_SEQUENCE_LSTM ("fused").

The streaming form runs one step: (x_t [1, features], state [1, state_size]) ->
(next state [1, state_size], logits [1, classes]), where the state concatenates every
layer's h (and c for LSTM).
"""

from __future__ import annotations

import dataclasses
import uuid

import keras
import numpy as np
import tensorflow as tf

from kerasrnn.cell_kinds import kind_of
from kerasrnn.cells import LearnableInitialState
from kerasrnn.config import check_choice
from kerasrnn.errors import ConfigError, ConversionError
from kerasrnn.export.config import FORMS


@dataclasses.dataclass(frozen=True)
class RecurrentWeights:
    """One recurrent layer's weights in a cell-agnostic layout.

    Attributes:
        recurrence: the equations (`CellKind.recurrence`): "elman", "lstm" or "gru".
        w_x: [features, gates * units] input kernel.
        w_h: [units, gates * units] recurrent kernel.
        b_x: [gates * units] bias added to the input projection.
        b_h: [units] GRU's recurrent candidate bias b_hh (reset_after: it sits inside
            r * (h @ W_hh + b_hh)), else None. GRU's recurrent gate biases are folded
            into b_x: each recurrent FULLY_CONNECTED then has no bias, and the unrolled
            steps share no bias tensor (a shared bias gets one quantization scale for
            steps whose inputs have different scales).
        h0: [units] initial hidden state (zeros for Keras's cells).
        activation: "tanh" or "relu" (elman only).
    """

    recurrence: str
    w_x: np.ndarray
    w_h: np.ndarray
    b_x: np.ndarray
    b_h: np.ndarray | None
    h0: np.ndarray
    activation: str = "tanh"

    @property
    def units(self) -> int:
        return self.w_h.shape[0]

    @property
    def state_size(self) -> int:
        return 2 * self.units if self.recurrence == "lstm" else self.units


@dataclasses.dataclass(frozen=True)
class ClassifierWeights:
    """A whole classifier: recurrent layers, then logits = h_T @ w_y + b_y."""

    layers: tuple[RecurrentWeights, ...]
    w_y: np.ndarray
    b_y: np.ndarray
    input_shape: tuple[int, int]

    @property
    def state_size(self) -> int:
        return sum(layer.state_size for layer in self.layers)

    @property
    def initial_state(self) -> np.ndarray:
        """[state_size] float32: every layer's h0 (and a zero c for LSTM)."""
        parts = [
            np.concatenate([layer.h0, np.zeros(layer.units)])
            if layer.recurrence == "lstm"
            else layer.h0
            for layer in self.layers
        ]
        return np.concatenate(parts).astype(np.float32)


def _swap_last_gates(units: int) -> np.ndarray:
    """Column order that swaps LSTM's last two gates: Keras's [i, f, c, o] <-> the stored
    [i, f, o, c], where the three sigmoid gates are contiguous and share one LOGISTIC op.
    The swap is its own inverse."""
    return np.r_[0 : 2 * units, 3 * units : 4 * units, 2 * units : 3 * units]


def _layer_weights(layer: keras.layers.RNN, h0: np.ndarray | None) -> RecurrentWeights:
    """One recurrent layer's weights, read as its kind in `cell_kinds.CELL_KINDS` says."""
    cell = layer.cell
    try:
        kind = kind_of(cell)
    except TypeError as e:
        raise ConversionError(f"cannot export layer {layer.name}: {e}") from None
    w_x, w_h, b = (getattr(cell, name).numpy() for name in kind.weights)
    b_h, activation, units = None, "tanh", w_h.shape[0]
    if kind.takes_activation:
        activation = keras.activations.serialize(cell.activation)
    if kind.recurrence == "lstm":
        order = _swap_last_gates(units)
        w_x, w_h, b = w_x[:, order], w_h[:, order], b[order]
    elif kind.recurrence == "gru":
        if not cell.reset_after:
            raise ConversionError(
                f"cannot export {layer.name}: only GRU with "
                f"reset_after=True (the Keras default) can be exported"
            )
        b, b_h = b  # reset_after: input and recurrent biases
        b = b + np.concatenate([b_h[: 2 * units], np.zeros(units, b_h.dtype)])
        b_h = b_h[2 * units :]
    if activation not in ("tanh", "relu"):
        raise ConversionError(
            f"cannot export {layer.name}: activation {activation!r} (tanh or relu only)"
        )
    h0 = np.zeros(units, np.float32) if h0 is None else h0
    return RecurrentWeights(kind.recurrence, w_x, w_h, b, b_h, h0.astype(np.float32), activation)


def classifier_weights(model: keras.Model) -> ClassifierWeights:
    """Reads the weights of a model built by `kerasrnn.build_classifier`.

    Raises:
        ConversionError: the model is not a recurrent classifier this module can rebuild
            (the message names the layer).
    """
    layers, h0 = [], None
    dense = None
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer | keras.layers.Dropout):
            continue
        if isinstance(layer, LearnableInitialState):
            h0 = layer.h0.numpy()
        elif isinstance(layer, keras.layers.RNN):
            if layer.go_backwards or getattr(layer, "stateful", False):
                raise ConversionError(f"cannot export {layer.name}: backwards or stateful RNN")
            layers.append(_layer_weights(layer, h0))
            h0 = None
        elif isinstance(layer, keras.layers.Dense):
            dense = layer
        else:
            raise ConversionError(
                f"cannot export layer {layer.name} ({type(layer).__name__}): "
                f"expected recurrent layers and a final Dense"
            )
    if not layers or dense is None or dense.activation.__name__ != "linear":
        raise ConversionError(
            f"model {model.name!r} is not an N-to-1 recurrent classifier "
            f"(recurrent layers, then a linear Dense)"
        )
    w_y, b_y = dense.get_weights()
    return ClassifierWeights(tuple(layers), w_y, b_y, tuple(model.input_shape[1:]))


def _act(name: str):
    return tf.nn.relu if name == "relu" else tf.tanh


def _step(layer: RecurrentWeights, xw_t, state):
    """One recurrent step. `state` is h (or (h, c) for LSTM); None means all zeros.

    Args:
        xw_t: [batch, gates * units] the input projection x_t @ W_x + b_x.

    Returns:
        (h [batch, units], the next state).
    """
    w_h = tf.constant(layer.w_h)
    if layer.recurrence == "elman":
        z = xw_t if state is None else xw_t + tf.matmul(state, w_h)
        h = _act(layer.activation)(z)
        return h, h
    units = layer.units
    if layer.recurrence == "lstm":  # gates stored as [i, f, o | c] (see `_layer_weights`)
        h, c = state if state is not None else (None, None)
        z = xw_t if h is None else xw_t + tf.matmul(h, w_h)
        sigmoid_gates, g = tf.split(z, [3 * units, units], axis=-1)
        i, f, o = tf.split(tf.sigmoid(sigmoid_gates), 3, axis=-1)  # one LOGISTIC for three
        g = i * tf.tanh(g)
        c = g if c is None else f * c + g
        h = o * tf.tanh(c)
        return h, (h, c)
    # GRU, reset_after: candidate = tanh(x_h + r * (h @ W_hh + b_hh)); the gate biases
    # are already in xw_t (see `RecurrentWeights.b_h`).
    x_zr, x_h = tf.split(xw_t, [2 * units, units], axis=-1)
    if state is None:  # h = 0: the recurrent terms are the bias alone
        z, r = tf.split(tf.sigmoid(x_zr), 2, axis=-1)
        # Zero constants are left out, not multiplied: int8 quantization of an all-zero
        # tensor gives a degenerate scale that LiteRT aborts on.
        candidate = tf.tanh(x_h + r * layer.b_h) if layer.b_h.any() else tf.tanh(x_h)
        h = candidate - z * candidate
        return h, h
    h_zr, h_h = tf.split(tf.matmul(state, w_h), [2 * units, units], axis=-1)
    z, r = tf.split(tf.sigmoid(x_zr + h_zr), 2, axis=-1)  # one LOGISTIC for both gates
    candidate = tf.tanh(x_h + r * (h_h + layer.b_h))
    h = candidate + z * (state - candidate)  # = z * state + (1 - z) * candidate
    return h, h


def _initial(layer: RecurrentWeights):
    """The first step's state: None (zeros, skipped) or the constant learnable h0."""
    if not layer.h0.any():
        return None
    h0 = tf.constant(layer.h0[None])
    return (h0, tf.zeros_like(h0)) if layer.recurrence == "lstm" else h0


def can_fuse(weights: ClassifierWeights, batch_size: int | None) -> bool:
    """Whether the "fused" form applies: LSTM layers only, zero initial states, static batch."""
    return batch_size is not None and all(
        layer.recurrence == "lstm" and not layer.h0.any() for layer in weights.layers
    )


def sequence_function(
    weights: ClassifierWeights, batch_size: int | None = 1, form: str = "unrolled"
):
    """The whole-sequence classifier as a `tf.function`.

    Args:
        weights: see `classifier_weights`.
        batch_size: static batch size (1 for microcontrollers) or None (dynamic).
        form: "unrolled" (one set of ops per time step), "loop" (one builtin WHILE whose
            body runs a step of every layer; smaller, but the int8 converter crashes on it)
            or "fused" (LSTM only, see `can_fuse`: TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM).

    Returns:
        A concrete function: sequence [batch, steps, features] float32 -> logits [batch, classes].
    """
    check_choice("form", form, FORMS)
    if form == "fused" and not can_fuse(weights, batch_size):
        raise ConfigError(
            "the fused form needs LSTM layers only, zero initial states and a static batch size"
        )
    steps, features = weights.input_shape
    spec = tf.TensorSpec([batch_size, steps, features], tf.float32, name="sequence")
    if form in ("loop", "fused"):
        body = _loop if form == "loop" else _fused
        return tf.function(
            lambda sequence: body(weights, sequence), input_signature=[spec]
        ).get_concrete_function()

    @tf.function(input_signature=[spec])
    def classify(sequence):
        x = sequence
        for layer in weights.layers:
            width = layer.w_x.shape[1]
            xw = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), layer.w_x) + layer.b_x
            state, outputs = _initial(layer), []
            for xw_t in tf.unstack(tf.reshape(xw, [-1, steps, width]), axis=1):
                h, state = _step(layer, xw_t, state)
                outputs.append(h)
            x = tf.stack(outputs, axis=1)
        return tf.matmul(h, weights.w_y) + weights.b_y

    return classify.get_concrete_function()


def _keras_lstm(inputs, init_h, init_c, kernel, recurrent_kernel, bias):
    """An LSTM layer over a whole sequence, gates in Keras's [i, f, c, o] order.

    The TFLite converter replaces a function marked `api_implements="lstm_..."` (as Keras 2's
    LSTM marks its own) with one fused UNIDIRECTIONAL_SEQUENCE_LSTM; this body is what it
    stands for, and what TensorFlow runs.

    Args:
        inputs: [batch, steps, features]; init_h, init_c: [batch, units];
        kernel: [features, 4 * units]; recurrent_kernel: [units, 4 * units]; bias: [4 * units].

    Returns:
        (last h [batch, units], every h [batch, steps, units], h, c, a placeholder), the
        signature the converter expects.
    """
    h, c, outputs = init_h, init_c, []
    for x_t in tf.unstack(inputs, axis=1):
        z = tf.matmul(x_t, kernel) + tf.matmul(h, recurrent_kernel) + bias
        i, f, g, o = tf.split(z, 4, axis=1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        outputs.append(h)
    return h, tf.stack(outputs, axis=1), h, c, tf.constant(0.0)


def _fused(weights: ClassifierWeights, sequence):
    """Stacked LSTM layers, each one fused sequence op (see `_keras_lstm`)."""
    x = sequence
    for layer in weights.layers:
        units = layer.units
        keras_order = _swap_last_gates(units)
        lstm = tf.function(
            _keras_lstm,
            autograph=False,
            experimental_attributes={
                "api_implements": f"lstm_{uuid.uuid4().hex}",
                "time_major": False,
                "go_backwards": False,
            },
        )
        zeros = tf.zeros([sequence.shape[0], units])
        last, x, _, _, _ = lstm(
            x,
            zeros,
            zeros,
            tf.constant(layer.w_x[:, keras_order]),
            tf.constant(layer.w_h[:, keras_order]),
            tf.constant(layer.b_x[keras_order]),
        )
    return tf.matmul(last, weights.w_y) + weights.b_y


def _loop(weights: ClassifierWeights, sequence):
    """The recurrence as a WHILE loop over time; the body steps every layer once."""
    steps = weights.input_shape[0]
    first = weights.layers[0]
    # The first layer's input projection for all steps at once, outside the loop.
    xw = tf.matmul(sequence, first.w_x) + first.b_x  # [batch, steps, gates * units]
    batch = tf.shape(sequence)[0]
    states = []
    for layer in weights.layers:
        h0 = tf.broadcast_to(tf.constant(layer.h0[None]), [batch, layer.units])
        states.append((h0, tf.zeros_like(h0)) if layer.recurrence == "lstm" else h0)

    def body(t, states):
        x, new_states = None, []
        for i, (layer, state) in enumerate(zip(weights.layers, states)):
            projection = (
                tf.gather(xw, t, axis=1) if i == 0 else (tf.matmul(x, layer.w_x) + layer.b_x)
            )
            x, state = _step(layer, projection, state)
            new_states.append(state)
        return t + 1, new_states

    _, states = tf.while_loop(
        lambda t, _: t < steps, body, [tf.constant(0), states], maximum_iterations=steps
    )
    top = states[-1][0] if weights.layers[-1].recurrence == "lstm" else states[-1]
    return tf.matmul(top, weights.w_y) + weights.b_y


def step_function(weights: ClassifierWeights):
    """One streaming step as a `tf.function` (batch 1).

    Returns:
        A concrete function: (row [1, features], state [1, state_size]) ->
        {"state": [1, state_size], "logits": [1, classes]}.
    """
    features = weights.input_shape[1]

    @tf.function(
        input_signature=[
            tf.TensorSpec([1, features], tf.float32, name="row"),
            tf.TensorSpec([1, weights.state_size], tf.float32, name="state"),
        ]
    )
    def step(row, state):
        parts = tf.split(state, [layer.state_size for layer in weights.layers], axis=-1)
        x, new_states = row, []
        for layer, part in zip(weights.layers, parts):
            xw = tf.matmul(x, layer.w_x) + layer.b_x
            previous = tuple(tf.split(part, 2, axis=-1)) if layer.recurrence == "lstm" else part
            x, next_state = _step(layer, xw, previous)
            new_states.extend(next_state if layer.recurrence == "lstm" else [next_state])
        return {
            "state": tf.concat(new_states, axis=-1),
            "logits": tf.matmul(x, weights.w_y) + weights.b_y,
        }

    return step.get_concrete_function()
