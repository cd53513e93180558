"""Inference graphs for conversion, rebuilt from a Keras model's weights.

Keras's RNN layers lower to TensorList ops, which TFLite can only run as Flex (Select TF)
ops. This module rebuilds the same maths, read by `model_reader`, from builtin-friendly
ops instead, in the form that gives the smallest file that still runs on LiteRT and
TensorFlow Lite Micro:

- the input projection x_t @ W_x + b of every time step is one FULLY_CONNECTED over the
  whole sequence, outside the recurrence;
- the recurrence is unrolled over the (static) time steps: per step one FULLY_CONNECTED
  with the shared W_h, an ADD and the activation (plus the gate arithmetic of LSTM/GRU,
  and, where a Masking mask keeps the state, old + mask * (new - old));
- a zero initial state skips the first step's recurrent product; a learnable h0 folds
  into a constant;
- or, joined (int8 activations, `sequence_function(joined=True)`), each Elman step is one
  FULLY_CONNECTED of the concatenated [x_t, h_{t-1}], so that int8 rounds its
  pre-activation once;
- a Legendre Memory Unit that returns its last h is one FULLY_CONNECTED of the flattened
  sequence and its activation: its memory, and so its readout's pre-activation, is linear
  in the inputs (`model_reader.MemoryWeights.readout_over`);
- or, for models that `ModelGraph.split` (a recurrent stack between per-step layers), the
  recurrence is one builtin WHILE ("loop"), or for LSTM stacks TFLite's fused
  UNIDIRECTIONAL_SEQUENCE_LSTM ("fused").

The streaming form runs one step: (x_t [1, features], state [1, state_size]) ->
(next state [1, state_size], outputs [1, outputs]), where the state concatenates every
recurrent layer's h (and c for LSTM).
"""

from __future__ import annotations

import uuid

import numpy as np
import tensorflow as tf

from kerasrnn.config import check_choice
from kerasrnn.errors import ConfigError, ConversionError
from kerasrnn.export import model_reader as mr
from kerasrnn.export.config import FORMS
from kerasrnn.export.model_reader import ModelGraph, RecurrentWeights

_ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": tf.nn.relu,
    "tanh": tf.tanh,
    "sigmoid": tf.sigmoid,
    "softmax": tf.nn.softmax,
}


def _step(layer: RecurrentWeights, xw_t, state):
    """One recurrent step. `state` is h (or (h, c) for LSTM, m for an LMU); None means all
    zeros.

    Args:
        xw_t: [batch, gates * units] the input projection x_t @ W_x + b_x.

    Returns:
        (h [batch, units], the next state).
    """
    if layer.recurrence == "lmu":  # the memory m, then the readout (see `MemoryWeights`)
        xm, xh = tf.split(xw_t, [layer.order, layer.units], axis=-1)
        if state is None:
            m = xm
        else:
            coarse, fine = layer.increment
            m = state + tf.matmul(state, coarse) + tf.matmul(state, fine) + xm
        h = _ACTIVATIONS[layer.activation](xh + tf.matmul(m, layer.w_mh))
        return h, m
    w_h = tf.constant(layer.w_h)
    if layer.recurrence == "elman":
        z = xw_t if state is None else xw_t + tf.matmul(state, w_h)
        h = _ACTIVATIONS[layer.activation](z)
        return h, h
    # Gates are cut apart with even SPLITs only: XNNPACK takes SPLIT but not SPLIT_V, and
    # each SPLIT_V left outside it cut an unrolled LSTM or GRU into 29 delegated pieces.
    if layer.recurrence == "lstm":  # gates in Keras's order [i, f, c, o]
        h, c = state if state is not None else (None, None)
        z = xw_t if h is None else xw_t + tf.matmul(h, w_h)
        i, f, g, o = tf.split(z, 4, axis=-1)
        g = tf.sigmoid(i) * tf.tanh(g)
        c = g if c is None else tf.sigmoid(f) * c + g
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, (h, c)
    x_z, x_r, x_h = tf.split(xw_t, 3, axis=-1)
    if state is None:  # h = 0: the recurrent terms are the bias alone
        z, r = tf.sigmoid(x_z), tf.sigmoid(x_r)
        # Zero constants are left out, not multiplied: int8 quantization of an all-zero
        # tensor gives a degenerate scale that LiteRT aborts on.
        has_bias = layer.b_h is not None and layer.b_h.any()
        candidate = tf.tanh(x_h + r * layer.b_h) if has_bias else tf.tanh(x_h)
        h = candidate - z * candidate
        return h, h
    units = layer.units
    if layer.reset_after:
        # candidate = tanh(x_h + r * (h @ W_hh + b_hh)); the gate biases are already in
        # xw_t (see `RecurrentWeights.b_h`)
        h_z, h_r, h_h = tf.split(tf.matmul(state, w_h), 3, axis=-1)
        z, r = tf.sigmoid(x_z + h_z), tf.sigmoid(x_r + h_r)
        candidate = tf.tanh(x_h + r * (h_h + layer.b_h))
    else:  # candidate = tanh(x_h + (r * h) @ W_hh)
        h_z, h_r = tf.split(tf.matmul(state, tf.constant(layer.w_h[:, : 2 * units])), 2, axis=-1)
        z, r = tf.sigmoid(x_z + h_z), tf.sigmoid(x_r + h_r)
        candidate = tf.tanh(x_h + tf.matmul(r * state, tf.constant(layer.w_h[:, 2 * units :])))
    h = candidate + z * (state - candidate)  # = z * state + (1 - z) * candidate
    return h, h


def _initial(layer: RecurrentWeights, batch=None):
    """The first step's state: None (zeros, skipped) or the constant h0.

    Args:
        batch: with a batch size (an int or a scalar tensor), the state is explicit even
            when zero, broadcast to [batch, units] (a masked layer selects it).
    """
    if layer.recurrence == "lmu":  # the memory starts empty
        return None if batch is None else tf.zeros([batch, layer.order])
    if batch is None and not layer.h0.any():
        return None
    h0 = tf.constant(layer.h0[None])
    if batch is not None:
        h0 = tf.broadcast_to(h0, [batch, layer.units])
    return (h0, tf.zeros_like(h0)) if layer.recurrence == "lstm" else h0


def _batch(x):
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def _last_axis(x, function):
    """`function` [n, f] -> [n, g] applied over the last axis of x [batch, ..., f]."""
    if x.shape.rank == 2:
        return function(x)
    y = function(tf.reshape(x, [-1, x.shape[-1]]))
    return tf.reshape(y, [-1, *x.shape[1:-1], y.shape[-1]])


def _in_parallel(stage: mr.Recurrent) -> bool:
    """Whether `stage` is a Legendre Memory Unit that `_memory_over_sequence` writes."""
    return stage.weights.recurrence == "lmu" and not (
        stage.return_sequences or stage.go_backwards or stage.masked
    )


def _memory_over_sequence(layer: mr.MemoryWeights, x):
    """A Legendre Memory Unit's last h from x [batch, steps, features] (see
    `MemoryWeights.readout_over`): one FULLY_CONNECTED, then the activation."""
    steps, features = x.shape[1], x.shape[2]
    kernel, bias = layer.readout_over(steps)
    z = tf.matmul(tf.reshape(x, [-1, steps * features]), kernel) + bias
    return _ACTIVATIONS[layer.activation](z)


def _recurrent(stage: mr.Recurrent, x, mask, joined: bool = False):
    """A recurrent layer, unrolled: x [batch, steps, features] -> [batch, units] or
    [batch, steps, units]; `mask` [batch, steps, 1] bool or None (see `Recurrent.masked`);
    `joined`: see `sequence_function`."""
    layer = stage.weights
    if _in_parallel(stage):
        return _memory_over_sequence(layer, x)
    # not where every h is also output: the quantizer ties a tensor's scale to both the
    # next step's CONCATENATION and the PACK of the sequence, and refuses the two
    if joined and layer.recurrence == "elman" and not (stage.masked or stage.return_sequences):
        return _joined_elman(stage, x)
    steps = x.shape[1]
    xw = _last_axis(x, lambda v: tf.matmul(v, layer.w_x) + layer.b_x)
    xs = tf.unstack(xw, axis=1)
    masks = tf.unstack(mask, axis=1) if stage.masked else [None] * steps
    order = range(steps - 1, -1, -1) if stage.go_backwards else range(steps)
    state = _initial(layer, _batch(x) if stage.masked else None)
    output, outputs = None, []
    for t in order:
        h, new_state = _step(layer, xs[t], state)
        if stage.masked:  # a masked step keeps the state and repeats the last output
            m = masks[t]
            state = tf.nest.map_structure(
                lambda new, old, m=m: _keep(m, new, old), new_state, state
            )
            output = h * m if output is None else _keep(m, h, output)
            h = output * m if stage.zero_output_for_mask else output
        else:
            state = new_state
        outputs.append(h)
    return tf.stack(outputs, axis=1) if stage.return_sequences else outputs[-1]


def _joined_elman(stage: mr.Recurrent, x):
    """An Elman layer whose step is one FULLY_CONNECTED of the joined [x_t, h_{t-1}] and
    [W_x; W_h]: x [batch, steps, features] -> the last h [batch, units]. The first step's
    h0 @ W_h is a constant, folded into its bias."""
    layer = stage.weights
    kernel = np.concatenate([layer.w_x, layer.w_h])
    first_bias = layer.b_x + layer.h0 @ layer.w_h
    xs = tf.unstack(x, axis=1)
    order = range(len(xs) - 1, -1, -1) if stage.go_backwards else range(len(xs))
    h = None
    for t in order:
        if h is None:
            z = tf.matmul(xs[t], layer.w_x) + first_bias
        else:
            z = tf.matmul(tf.concat([xs[t], h], axis=-1), kernel) + layer.b_x
        h = _ACTIVATIONS[layer.activation](z)
    return h


def _keep(mask, new, old):
    """new where mask is 1.0, old where it is 0.0 (exactly: old + 0)."""
    return old + mask * (new - old)


def _bidirectional(stage: mr.Bidirectional, x, mask, joined: bool):
    forward = _recurrent(stage.forward, x, mask, joined)
    backward = _recurrent(stage.backward, x, mask, joined)
    if stage.forward.return_sequences:
        backward = tf.reverse(backward, axis=[1])  # back into time order, as Keras does
    if stage.merge_mode == "concat":
        return tf.concat([forward, backward], axis=-1)
    if stage.merge_mode == "sum":
        return forward + backward
    if stage.merge_mode == "ave":
        return (forward + backward) * 0.5
    return forward * backward


def _dense(stage: mr.Dense, x):
    y = _last_axis(x, lambda v: tf.matmul(v, stage.kernel) + stage.bias)
    return _ACTIVATIONS[stage.activation](y)


def _conv1d(stage: mr.Conv1D, x):
    padding = stage.padding.upper()
    if stage.padding == "causal":
        x = tf.pad(x, [[0, 0], [stage.dilation * (stage.kernel.shape[0] - 1), 0], [0, 0]])
        padding = "VALID"
    y = tf.nn.conv1d(
        x, stage.kernel, stride=stage.strides, padding=padding, dilations=stage.dilation
    )
    return _ACTIVATIONS[stage.activation](y + stage.bias)


def _pool1d(stage: mr.Pool1D, x):
    pool = tf.nn.max_pool1d if stage.reduce == "max" else tf.nn.avg_pool1d
    return pool(x, stage.size, stage.strides, stage.padding.upper())


def _apply(stage, x, mask, joined: bool = False):
    """One stage on x; returns (y, the mask after it). `joined`: see `sequence_function`."""
    if isinstance(stage, mr.Mask):
        # 1.0 where a step has a feature other than the mask value, else 0.0, in float ops
        # that TFLM has (its kernels have no SELECT on a broadcast bool)
        mask = tf.math.ceil(
            tf.minimum(tf.reduce_max(tf.abs(x - stage.value), axis=-1, keepdims=True), 1.0)
        )
        return (x if stage.value == 0 else x * mask), mask
    if isinstance(stage, mr.Recurrent):
        return _recurrent(stage, x, mask, joined), mask if stage.return_sequences else None
    if isinstance(stage, mr.Bidirectional):
        return _bidirectional(stage, x, mask, joined), None
    if isinstance(stage, mr.Dense):
        return _dense(stage, x), mask
    if isinstance(stage, mr.Activation):
        return _ACTIVATIONS[stage.activation](x), mask
    if isinstance(stage, mr.Affine):
        return x * stage.scale + stage.offset, mask
    if isinstance(stage, mr.Conv1D):
        return _conv1d(stage, x), None
    if isinstance(stage, mr.Pool1D):
        return _pool1d(stage, x), None
    if isinstance(stage, mr.GlobalPool):
        reduce = tf.reduce_max if stage.reduce == "max" else tf.reduce_mean
        return reduce(x, axis=1), None
    if isinstance(stage, mr.Reshape):
        return tf.reshape(x, [-1, *stage.shape]), None
    raise ConversionError(f"no graph for stage {type(stage).__name__}")  # read_model's list


def _apply_all(stages, x, mask=None, joined: bool = False):
    for stage in stages:
        x, mask = _apply(stage, x, mask, joined)
    return x


def can_fuse(model: ModelGraph, batch_size: int | None) -> bool:
    """Whether the "fused" form applies: a stack of LSTM layers between per-step layers
    (`ModelGraph.split`), zero initial states, no mask, a static batch."""
    parts = model.split()
    return (
        batch_size is not None
        and parts is not None
        and all(
            s.weights.recurrence == "lstm" and not s.weights.h0.any() and not s.masked
            for s in parts[1]
        )
    )


def can_loop(model: ModelGraph) -> bool:
    """Whether the "loop" form applies: a recurrent stack between per-step layers
    (`ModelGraph.split`), no mask and no Legendre Memory Unit (whose unrolled form is one
    product over the sequence anyway)."""
    parts = model.split()
    # the loop carries the states, and a Legendre memory's h is not its state
    return parts is not None and not any(
        s.masked or s.weights.recurrence == "lmu" for s in parts[1]
    )


def check_form(model: ModelGraph, form: str, batch_size: int | None) -> None:
    """Raises `ConfigError` when `form` (one of `FORMS`) is not a form of `model`, saying
    what the form needs."""
    check_choice("form", form, FORMS)
    if form == "fused" and not can_fuse(model, batch_size):
        raise ConfigError(
            "the fused form needs LSTM layers only (one after another, between per-step "
            "layers), zero initial states, no mask and a static batch size"
        )
    if form == "loop" and not can_loop(model):
        raise ConfigError(
            "the loop form needs forward recurrent layers one after another, between "
            "per-step layers, no mask and no Legendre Memory Unit"
        )


def sequence_function(
    model: ModelGraph, batch_size: int | None = 1, form: str = "unrolled", joined: bool = False
):
    """The whole-sequence model as a `tf.function`.

    Args:
        model: see `model_reader.read_model`.
        batch_size: static batch size (1 for microcontrollers) or None (dynamic).
        form: "unrolled" (one set of ops per time step; every model), "loop" (one builtin
            WHILE whose body runs a step of every layer; smaller, but the int8 converter
            crashes on it; see `can_loop`) or "fused" (LSTM stacks, see `can_fuse`:
            TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM).
        joined: unrolled form: each Elman layer that gives its last h alone, unmasked, has
            its step as one FULLY_CONNECTED of the joined [x_t, h_{t-1}], not x_t's
            projection (all steps at once, outside the recurrence) added to h_{t-1}'s. In an
            int8 file the pre-activation is then rounded once, not three times
            (`calibration`: files with int8 activations).

    Returns:
        A concrete function: sequence [batch, steps, features] float32 -> [batch, outputs].

    Raises:
        ConfigError: a form the model has not (the message says what it needs).
    """
    check_form(model, form, batch_size)
    steps, features = model.input_shape
    spec = tf.TensorSpec([batch_size, steps, features], tf.float32, name="sequence")
    if form == "unrolled":
        body = lambda sequence: _apply_all(model.stages, sequence, joined=joined)  # noqa: E731
    else:
        body = lambda sequence: {"loop": _loop, "fused": _fused}[form](model, sequence)  # noqa: E731
    return tf.function(body, input_signature=[spec]).get_concrete_function()


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


def _fused(model: ModelGraph, sequence):
    """Stacked LSTM layers, each one fused sequence op (see `_keras_lstm`)."""
    prefix, stack, head = model.split()
    x = _apply_all(prefix, sequence)
    for stage in stack:
        layer = stage.weights
        lstm = tf.function(
            _keras_lstm,
            autograph=False,
            experimental_attributes={
                "api_implements": f"lstm_{uuid.uuid4().hex}",
                "time_major": False,
                "go_backwards": False,
            },
        )
        zeros = tf.zeros([sequence.shape[0], layer.units])
        last, x, _, _, _ = lstm(
            x,
            zeros,
            zeros,
            tf.constant(layer.w_x),
            tf.constant(layer.w_h),
            tf.constant(layer.b_x),
        )
    return _apply_all(head, last)


def _loop(model: ModelGraph, sequence):
    """The recurrence as a WHILE loop over time; the body steps every layer once."""
    prefix, stack, head = model.split()
    layers = [stage.weights for stage in stack]
    x = _apply_all(prefix, sequence)
    steps = x.shape[1]
    # The first layer's input projection for all steps at once, outside the loop.
    xw = _last_axis(x, lambda v: tf.matmul(v, layers[0].w_x) + layers[0].b_x)
    batch = tf.shape(sequence)[0]
    states = []
    for layer in layers:
        h0 = tf.broadcast_to(tf.constant(layer.h0[None]), [batch, layer.units])
        states.append((h0, tf.zeros_like(h0)) if layer.recurrence == "lstm" else h0)

    def body(t, states):
        x, new_states = None, []
        for i, (layer, state) in enumerate(zip(layers, states)):
            projection = (
                tf.gather(xw, t, axis=1) if i == 0 else (tf.matmul(x, layer.w_x) + layer.b_x)
            )
            x, state = _step(layer, projection, state)
            new_states.append(state)
        return t + 1, new_states

    _, states = tf.while_loop(
        lambda t, _: t < steps, body, [tf.constant(0), states], maximum_iterations=steps
    )
    top = states[-1][0] if layers[-1].recurrence == "lstm" else states[-1]
    return _apply_all(head, top)


def step_function(model: ModelGraph):
    """One streaming step as a `tf.function` (batch 1).

    Returns:
        A concrete function: (row [1, features], state [1, state_size]) ->
        {"state": [1, state_size], "logits": [1, outputs]}.

    Raises:
        ConversionError: the model has no streaming form (`ModelGraph.check_streams`).
    """
    model.check_streams()
    prefix, stack, head = model.split()
    layers = [stage.weights for stage in stack]
    features = model.input_shape[1]
    state_size = sum(layer.state_size for layer in layers)

    @tf.function(
        input_signature=[
            tf.TensorSpec([1, features], tf.float32, name="row"),
            tf.TensorSpec([1, state_size], tf.float32, name="state"),
        ]
    )
    def step(row, state):
        parts = tf.split(state, [layer.state_size for layer in layers], axis=-1)
        x, mask = row, None
        for stage in prefix:
            x, mask = _apply(stage, x[:, None], mask)  # one step, [1, 1, features]
            x, mask = x[:, 0], None if mask is None else mask[:, 0]
        new_states = []
        for stage, layer, part in zip(stack, layers, parts):
            xw = tf.matmul(x, layer.w_x) + layer.b_x
            previous = tuple(tf.split(part, 2, axis=-1)) if layer.recurrence == "lstm" else part
            x, next_state = _step(layer, xw, previous)
            if stage.masked:  # a masked row keeps the state
                next_state = tf.nest.map_structure(
                    lambda new, old: _keep(mask, new, old), next_state, previous
                )
                x = next_state[0] if layer.recurrence == "lstm" else next_state
            new_states.extend(next_state if layer.recurrence == "lstm" else [next_state])
        return {"state": tf.concat(new_states, axis=-1), "logits": _apply_all(head, x)}

    return step.get_concrete_function()
