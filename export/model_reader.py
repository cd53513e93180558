"""A Keras model read as a chain of stages that `kerasrnn.export.graph` rebuilds exactly.

Any Sequential or functional Keras model whose layers form one chain from its input to its
output is read, layer by layer, into NumPy weights and the options that change its maths:

    Masking -> (Conv1D | pooling | Dense | ...)* -> recurrent layers -> (Dense | pooling | ...)*

A layer or an option that `graph` cannot rebuild exactly is refused with a
`ConversionError` naming the layer and the reason; nothing is ever dropped or approximated.
"""

from __future__ import annotations

import dataclasses
import functools

import keras
import numpy as np

from kerasrnn import legendre
from kerasrnn.cell_kinds import kind_of
from kerasrnn.cells import LearnableInitialState
from kerasrnn.errors import ConversionError

# Activations `graph` writes as builtin ops, by their Keras names.
ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softmax")
# Bidirectional merge modes `graph` writes (None, a pair of outputs, is refused).
MERGE_MODES = ("concat", "sum", "ave", "mul")


@dataclasses.dataclass(frozen=True)
class RecurrentWeights:
    """One recurrent layer's weights in a cell-agnostic layout.

    Attributes:
        recurrence: the equations (`CellKind.recurrence`): "elman", "lstm" or "gru".
        w_x: [features, gates * units] input kernel, gates in Keras's order (LSTM:
            [i, f, c, o]; GRU: [z, r, h]).
        w_h: [units, gates * units] recurrent kernel.
        b_x: [gates * units] bias added to the input projection.
        b_h: [units] GRU's recurrent candidate bias b_hh (reset_after: it sits inside
            r * (h @ W_hh + b_hh)), else None. GRU's recurrent gate biases are folded
            into b_x: each recurrent FULLY_CONNECTED then has no bias, and the unrolled
            steps share no bias tensor (a shared bias gets one quantization scale for
            steps whose inputs have different scales).
        h0: [units] initial hidden state (zeros for Keras's cells).
        activation: elman only: one of `ACTIVATIONS` except softmax.
        reset_after: GRU only: Keras's `reset_after` (False: the reset gate multiplies h
            before the recurrent candidate product, (r * h) @ W_hh).
    """

    recurrence: str
    w_x: np.ndarray
    w_h: np.ndarray
    b_x: np.ndarray
    b_h: np.ndarray | None
    h0: np.ndarray
    activation: str = "tanh"
    reset_after: bool = True

    @property
    def units(self) -> int:
        return self.w_h.shape[0]

    @property
    def state_size(self) -> int:
        return 2 * self.units if self.recurrence == "lstm" else self.units

    @property
    def initial_state(self) -> np.ndarray:
        """[state_size] float32: h0 (and a zero c for LSTM)."""
        if self.recurrence == "lstm":
            return np.concatenate([self.h0, np.zeros(self.units, np.float32)])
        return self.h0


@dataclasses.dataclass(frozen=True)
class MemoryWeights:
    """A Legendre Memory Unit layer's weights (`cells.LegendreMemoryCell`), written as an
    Elman-like recurrence of its memory m plus a readout:

        m_t = m_{t-1} + m_{t-1} @ (a - I) + (x_t @ e_x + b_u) * b_m
        h_t = act(x_t @ w_xh + m_t @ w_mh + b)

    Attributes:
        e_x: [features, 1], b_u: [1]: the memory's input u = x @ e_x + b_u.
        w_xh: [features, units], w_mh: [order, units], b: [units]: the readout (the
            cell's w_x, w_m and b).
        order, theta: the Legendre delay system (`legendre.memory_step`).
        activation: of h, one of `ACTIVATIONS` except softmax.
    """

    e_x: np.ndarray
    b_u: np.ndarray
    w_xh: np.ndarray
    w_mh: np.ndarray
    b: np.ndarray
    order: int
    theta: float
    activation: str = "tanh"
    recurrence: str = "lmu"

    @property
    def units(self) -> int:
        return self.w_mh.shape[1]

    @property
    def state_size(self) -> int:
        return self.order

    @property
    def initial_state(self) -> np.ndarray:
        """[order] float32 zeros: the memory starts empty."""
        return np.zeros(self.order, np.float32)

    @functools.cached_property
    def _step(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 (a, b_m) of the memory's step (`legendre.memory_step`)."""
        return legendre.memory_step(self.order, self.theta)

    @property
    def increment(self) -> tuple[np.ndarray, np.ndarray]:
        """a - I [order, order] as the sum of two float32 matrices (coarse, fine): coarse
        on the int8 grid of its largest entry (a per-tensor int8 scale holds it exactly),
        fine the rest (an int8 scale 254 times finer).

        Quantized, a - I must keep about 16 bits: its 784 steps sum every rounding, and
        the Legendre system is so far from normal that an int8 a - I (one scale per
        tensor or per channel) moves its poles outside the unit circle (order 256: the
        memory blew up on MNIST's pixels). The identity stays out of the product, exact.
        The split costs one more product per step, in float files too.
        """
        a, _ = self._step
        increment = a - np.eye(self.order)
        scale = np.abs(increment).max() / 127
        coarse = np.round(increment / scale) * scale
        return coarse.astype(np.float32), (increment - coarse).astype(np.float32)

    @property
    def w_x(self) -> np.ndarray:
        """[features, order + units] float32: each step's input projection, the memory's
        input (e_x b_m) beside the readout's (w_xh), as one product."""
        _, b_m = self._step
        return np.concatenate([self.e_x * b_m, self.w_xh], axis=1).astype(np.float32)

    @property
    def b_x(self) -> np.ndarray:
        """[order + units] float32: the bias of `w_x`'s product, b_u b_m beside b."""
        _, b_m = self._step
        return np.concatenate([self.b_u * b_m, self.b]).astype(np.float32)

    def readout_over(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The last h's pre-activation x_T @ w_xh + m_T @ w_mh + b, from m_0 = 0, as one
        product of the flattened sequence [batch, steps * features]: m_T is linear in the
        inputs (`legendre.impulse_response`, see `cells.LMU`), and so is the sum.

        Returns:
            float32 (kernel [steps * features, units], bias [units]), computed in float64.
        """
        response = legendre.impulse_response(self.order, self.theta, steps)  # [steps, order]
        memory = self.e_x[None, :, :] * response[:, None, :]  # [steps, features, order]
        kernel = memory @ self.w_mh  # [steps, features, units]
        kernel[-1] += self.w_xh  # x_T's own term
        bias = (self.b_u * response.sum(axis=0)) @ self.w_mh + self.b
        return kernel.reshape(-1, self.units).astype(np.float32), bias.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Recurrent:
    """A recurrent layer over [batch, steps, features].

    Attributes:
        weights: its `RecurrentWeights` (`MemoryWeights` for a Legendre Memory Unit).
        return_sequences: outputs [batch, steps, units] (in the order it read the steps)
            instead of the last h [batch, units].
        go_backwards: reads the steps last to first.
        masked: a `Masking` layer's mask reaches it: a masked step keeps the state (and,
            with `return_sequences`, outputs zeros when `zero_output_for_mask`, else the
            kept h).
        zero_output_for_mask: see `masked`.
    """

    weights: RecurrentWeights | MemoryWeights
    return_sequences: bool = False
    go_backwards: bool = False
    masked: bool = False
    zero_output_for_mask: bool = False


@dataclasses.dataclass(frozen=True)
class Bidirectional:
    """Keras's Bidirectional: `forward` and `backward` (which reads the steps last to first
    and whose sequence is flipped back into time order) merged by `merge_mode`."""

    forward: Recurrent
    backward: Recurrent
    merge_mode: str


@dataclasses.dataclass(frozen=True)
class Dense:
    """y = activation(x @ kernel + bias) on the last axis; kernel [in, out], bias [out]."""

    kernel: np.ndarray
    bias: np.ndarray
    activation: str = "linear"


@dataclasses.dataclass(frozen=True)
class Activation:
    """An activation alone (one of `ACTIVATIONS`), on the last axis for softmax."""

    activation: str


@dataclasses.dataclass(frozen=True)
class Affine:
    """y = x * scale + offset on the last axis: BatchNormalization at inference."""

    scale: np.ndarray
    offset: np.ndarray


@dataclasses.dataclass(frozen=True)
class Conv1D:
    """Keras's Conv1D over [batch, steps, channels]: kernel [size, in, out], bias [out].

    Attributes:
        padding: "valid", "same" or "causal" (zeros before the first step).
    """

    kernel: np.ndarray
    bias: np.ndarray
    strides: int
    padding: str
    dilation: int
    activation: str = "linear"


@dataclasses.dataclass(frozen=True)
class Pool1D:
    """MaxPooling1D / AveragePooling1D over the steps ("valid" or "same" padding)."""

    reduce: str  # "max" or "mean"
    size: int
    strides: int
    padding: str


@dataclasses.dataclass(frozen=True)
class GlobalPool:
    """GlobalAveragePooling1D / GlobalMaxPooling1D: [batch, steps, f] -> [batch, f]."""

    reduce: str  # "max" or "mean"


@dataclasses.dataclass(frozen=True)
class Reshape:
    """Flatten or Reshape: to [batch, *shape]."""

    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Mask:
    """Keras's Masking: a step whose features all equal `value` is masked (and zeroed)."""

    value: float


Stage = (
    Recurrent
    | Bidirectional
    | Dense
    | Activation
    | Affine
    | Conv1D
    | Pool1D
    | GlobalPool
    | Reshape
    | Mask
)
# Stages that act on each step (or on a vector) alone: they stream, and a mask passes them.
PER_STEP = (Dense, Activation, Affine)


@dataclasses.dataclass(frozen=True)
class ModelGraph:
    """A Keras model as `graph` rebuilds it.

    Attributes:
        stages: the chain, input first.
        input_shape: (steps, features) of one sequence.
        outputs: the width of the output, [batch, outputs] (classes, or regression targets).
        names: each stage's Keras layer name (for messages).
    """

    stages: tuple[Stage, ...]
    input_shape: tuple[int, int]
    outputs: int
    names: tuple[str, ...]

    def split(self) -> tuple[tuple, tuple[Recurrent, ...], tuple] | None:
        """(prefix, recurrent stack, head) when the model is per-step stages, then forward
        recurrent layers one after another (each but the last returning its sequence),
        then per-vector stages; None otherwise (a model only the unrolled form rebuilds)."""
        recurrent = [i for i, s in enumerate(self.stages) if isinstance(s, Recurrent)]
        if not recurrent or any(isinstance(s, Bidirectional) for s in self.stages):
            return None
        first, last = recurrent[0], recurrent[-1]
        stack = self.stages[first : last + 1]
        head = self.stages[last + 1 :]
        if (
            len(stack) != len(recurrent)
            or any(s.go_backwards for s in stack)
            or any(not s.return_sequences for s in stack[:-1])
            or stack[-1].return_sequences
            or not all(isinstance(s, PER_STEP) for s in head)
        ):
            return None
        return self.stages[:first], stack, head

    def streaming_refusal(self) -> str | None:
        """Why the model has no streaming form (one step per call), or None when it has."""
        parts = self.split()
        if parts is None:
            return (
                "streaming needs forward recurrent layers one after another, the last "
                "N-to-1, with per-step layers only around them (this model has "
                "Bidirectional, go_backwards, pooling, Flatten or layers between or after "
                "the recurrent layers that see the whole sequence)"
            )
        prefix, _, _ = parts
        if not all(isinstance(s, PER_STEP + (Mask,)) for s in prefix):
            return (
                "streaming needs per-step layers before the recurrent ones (Conv1D, "
                "pooling and Reshape see several steps)"
            )
        return None

    def check_streams(self) -> None:
        """Raises `ConversionError` saying why, when the model has no streaming form."""
        refusal = self.streaming_refusal()
        if refusal:
            raise ConversionError(f"cannot export this model as a stream: {refusal}")

    @property
    def recurrent_stack(self) -> tuple[Recurrent, ...]:
        """The recurrent layers of a model that `split`s (empty otherwise)."""
        parts = self.split()
        return parts[1] if parts else ()

    @property
    def initial_state(self) -> np.ndarray:
        """[state_size] float32: the streaming state's start, every layer's h0 (and c)."""
        return np.concatenate([s.weights.initial_state for s in self.recurrent_stack]).astype(
            np.float32
        )


def _refuse(layer, reason: str) -> ConversionError:
    return ConversionError(f"cannot export layer {layer.name} ({type(layer).__name__}): {reason}")


def _activation_name(activation) -> str:
    name = keras.activations.serialize(activation)
    return name if isinstance(name, str) else getattr(activation, "__name__", repr(activation))


def _activation(layer, activation, allowed=ACTIVATIONS) -> str:
    name = _activation_name(activation)
    if name not in allowed:
        raise _refuse(layer, f"activation {name!r} is not rebuilt (only {', '.join(allowed)})")
    return name


def _recurrent_weights(
    layer: keras.layers.RNN, h0: np.ndarray | None
) -> RecurrentWeights | MemoryWeights:
    """One recurrent layer's weights, read as its kind in `cell_kinds.CELL_KINDS` says."""
    cell = layer.cell
    try:
        kind = kind_of(cell)
    except TypeError as e:
        raise _refuse(layer, str(e)) from None
    if kind.recurrence == "lmu":
        return _memory_weights(layer)
    w_x, w_h = (getattr(cell, name).numpy() for name in kind.weights[:2])
    b = getattr(cell, kind.weights[2], None)
    b = None if b is None else b.numpy()
    units = w_h.shape[0]
    b_h, activation, reset_after = None, "tanh", True
    if kind.takes_activation:
        activation = _activation(layer, cell.activation, ("linear", "relu", "tanh", "sigmoid"))
    else:
        if _activation_name(cell.activation) != "tanh":
            raise _refuse(layer, "only the default activation tanh is rebuilt")
        if _activation_name(cell.recurrent_activation) != "sigmoid":
            raise _refuse(layer, "only the default recurrent_activation sigmoid is rebuilt")
    if b is None:  # use_bias=False
        gru_biases = kind.recurrence == "gru" and cell.reset_after
        b = np.zeros((2, w_x.shape[1]) if gru_biases else w_x.shape[1], np.float32)
    if kind.recurrence == "gru":
        reset_after = bool(cell.reset_after)
        if reset_after:
            b, b_h = b  # reset_after: input and recurrent biases
            b = b + np.concatenate([b_h[: 2 * units], np.zeros(units, b_h.dtype)])
            b_h = b_h[2 * units :]
    h0 = np.zeros(units, np.float32) if h0 is None else h0
    return RecurrentWeights(
        kind.recurrence, w_x, w_h, b, b_h, h0.astype(np.float32), activation, reset_after
    )


def _memory_weights(layer: keras.layers.RNN) -> MemoryWeights:
    """A Legendre Memory Unit layer's weights (see `MemoryWeights`)."""
    cell = layer.cell
    activation = _activation(layer, cell.activation, ("linear", "relu", "tanh", "sigmoid"))
    e_x, b_u, w_x, w_m, b = (
        getattr(cell, name).numpy() for name in ("e_x", "b_u", "w_x", "w_m", "b")
    )
    return MemoryWeights(e_x, b_u, w_x, w_m, b, cell.order, cell.theta, activation)


def _recurrent(layer, h0, masked: bool) -> Recurrent:
    if getattr(layer, "stateful", False):
        raise _refuse(layer, "a stateful RNN keeps state between calls; export one without")
    if getattr(layer, "return_state", False):
        raise _refuse(layer, "return_state gives several outputs; the file has one")
    weights = _recurrent_weights(layer, h0)
    if masked and weights.recurrence == "lmu":
        raise _refuse(layer, "a masked Legendre Memory Unit is not rebuilt")
    return Recurrent(
        weights,
        bool(layer.return_sequences),
        bool(layer.go_backwards),
        masked,
        bool(getattr(layer, "zero_output_for_mask", False)),
    )


def _chain(model: keras.Model) -> list[tuple[keras.layers.Layer, np.ndarray | None]]:
    """The model's layers from input to output, each with its learnable h0 (or None).

    Raises:
        ConversionError: the layers do not form one chain (named).
    """
    if isinstance(model, keras.Sequential):
        return [(layer, None) for layer in model.layers]
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConversionError(
            f"cannot export model {model.name!r}: it has {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs; a file is rebuilt from one input and one output"
        )
    chain, tensor = [], model.outputs[0]
    while True:
        layer, node_index, _ = tensor._keras_history
        if isinstance(layer, keras.layers.InputLayer):
            break
        node = layer._inbound_nodes[node_index]
        inputs = [
            a for a in keras.tree.flatten(node.arguments.args) if isinstance(a, keras.KerasTensor)
        ]
        kwargs = node.arguments.kwargs
        if len(inputs) != 1:
            raise _refuse(
                layer, f"it takes {len(inputs)} inputs; only a chain of one-input layers is rebuilt"
            )
        if kwargs.get("mask") is not None:
            raise _refuse(layer, "an explicit mask argument is not rebuilt (use Masking)")
        h0 = None
        if kwargs.get("initial_state") is not None:
            (state,) = kwargs["initial_state"]
            source = state._keras_history[0]
            if not isinstance(source, LearnableInitialState):
                raise _refuse(
                    layer,
                    f"its initial_state comes from {source.name}; only kerasrnn's "
                    f"LearnableInitialState (a constant h0) is rebuilt",
                )
            h0 = source.h0.numpy()
        chain.append((layer, h0))
        tensor = inputs[0]
    return chain[::-1]


def read_model(model: keras.Model) -> ModelGraph:
    """Reads a Keras model (Sequential or functional, one chain of layers).

    Args:
        model: a built `keras.Model` taking [batch, steps, features] and giving
            [batch, outputs].

    Returns:
        Its `ModelGraph`.

    Raises:
        ConversionError: a layer or option that is not rebuilt exactly (the message names
            the layer and why), or a model of another input or output rank.
    """
    try:
        input_shape = tuple(model.input_shape[1:])
        output_shape = tuple(model.output_shape[1:])
    except (AttributeError, ValueError) as e:
        raise ConversionError(f"cannot export model {model.name!r}: {e}") from None
    if len(input_shape) != 2 or None in input_shape:
        raise ConversionError(
            f"cannot export model {model.name!r}: its input is {list(input_shape)} per "
            f"example; a file reads sequences of a fixed [steps, features]"
        )
    if len(output_shape) != 1:
        raise ConversionError(
            f"cannot export model {model.name!r}: its output is {list(output_shape)} per "
            f"example; a file gives one vector [outputs] (classes or regression targets)"
        )
    stages, names, masked = [], [], False
    for layer, h0 in _chain(model):
        if isinstance(layer, keras.layers.InputLayer | keras.layers.Dropout):
            continue  # Dropout: the identity at inference
        stage = _stage(layer, h0, masked)
        if isinstance(stage, Mask):
            if masked:
                raise _refuse(layer, "a second Masking is not rebuilt")
            masked = True
        elif masked and not isinstance(stage, PER_STEP + (Recurrent,)):
            raise _refuse(
                layer,
                "it meets a Masking mask, which Keras applies there; masks are rebuilt "
                "in recurrent layers (and passed through per-step layers) only",
            )
        elif isinstance(stage, Recurrent) and not stage.return_sequences:
            masked = False
        stages.append(stage)
        names.append(layer.name)
    if not any(isinstance(s, Recurrent | Bidirectional) for s in stages):
        raise ConversionError(
            f"cannot export model {model.name!r}: it has no recurrent layer (kerasrnn "
            f"exports recurrent models)"
        )
    return ModelGraph(tuple(stages), input_shape, int(output_shape[0]), tuple(names))


def _stage(layer, h0, masked: bool) -> Stage:
    """One layer as its stage (see `read_model`)."""
    if isinstance(layer, LearnableInitialState):
        raise _refuse(layer, "a LearnableInitialState is read as the initial_state of an RNN")
    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode not in MERGE_MODES:
            raise _refuse(
                layer,
                f"merge_mode {layer.merge_mode!r} is not rebuilt (only {', '.join(MERGE_MODES)})",
            )
        if masked:
            raise _refuse(layer, "a masked Bidirectional layer is not rebuilt")
        forward = _recurrent(layer.forward_layer, None, False)
        backward = _recurrent(layer.backward_layer, None, False)
        return Bidirectional(forward, backward, layer.merge_mode)
    if isinstance(layer, keras.layers.RNN):
        return _recurrent(layer, h0, masked)
    if isinstance(layer, keras.layers.TimeDistributed):
        if not isinstance(layer.layer, keras.layers.Dense):
            raise _refuse(layer, "only TimeDistributed(Dense) is rebuilt")
        layer = layer.layer
    if isinstance(layer, keras.layers.Dense):
        if layer.lora_enabled or getattr(layer, "quantization_mode", None):
            raise _refuse(layer, "a LoRA or quantized Dense is not rebuilt")
        kernel = layer.kernel.numpy()
        bias = layer.bias.numpy() if layer.use_bias else np.zeros(kernel.shape[1], np.float32)
        return Dense(kernel, bias, _activation(layer, layer.activation))
    if isinstance(layer, keras.layers.Activation):
        return Activation(_activation(layer, layer.activation))
    if isinstance(layer, keras.layers.ReLU):
        if layer.max_value is not None or layer.negative_slope or layer.threshold:
            raise _refuse(layer, "only the plain ReLU (no max_value, slope, threshold) is rebuilt")
        return Activation("relu")
    if isinstance(layer, keras.layers.Softmax):
        if layer.axis != -1:
            raise _refuse(layer, "only a softmax over the last axis is rebuilt")
        return Activation("softmax")
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.axis not in (-1, 2):
            raise _refuse(layer, "only a BatchNormalization over the last axis is rebuilt")
        inv = 1.0 / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
        gamma = layer.gamma.numpy() if layer.scale else 1.0
        beta = layer.beta.numpy() if layer.center else 0.0
        scale = (gamma * inv).astype(np.float32)
        offset = (beta - layer.moving_mean.numpy() * scale).astype(np.float32)
        return Affine(scale, offset)
    if isinstance(layer, keras.layers.Conv1D):
        if layer.groups != 1 or layer.data_format != "channels_last":
            raise _refuse(layer, "only groups=1, channels_last is rebuilt")
        kernel = layer.kernel.numpy()
        bias = layer.bias.numpy() if layer.use_bias else np.zeros(kernel.shape[-1], np.float32)
        return Conv1D(
            kernel,
            bias,
            int(layer.strides[0]),
            layer.padding,
            int(layer.dilation_rate[0]),
            _activation(layer, layer.activation),
        )
    if isinstance(layer, keras.layers.MaxPooling1D | keras.layers.AveragePooling1D):
        if layer.data_format != "channels_last":
            raise _refuse(layer, "only channels_last is rebuilt")
        reduce = "max" if isinstance(layer, keras.layers.MaxPooling1D) else "mean"
        return Pool1D(reduce, int(layer.pool_size[0]), int(layer.strides[0]), layer.padding)
    if isinstance(layer, keras.layers.GlobalAveragePooling1D | keras.layers.GlobalMaxPooling1D):
        if layer.data_format != "channels_last" or layer.keepdims:
            raise _refuse(layer, "only channels_last without keepdims is rebuilt")
        mean = isinstance(layer, keras.layers.GlobalAveragePooling1D)
        return GlobalPool("mean" if mean else "max")
    if isinstance(layer, keras.layers.Flatten | keras.layers.Reshape):
        return Reshape(tuple(int(d) for d in layer.output.shape[1:]))
    if isinstance(layer, keras.layers.Masking):
        return Mask(float(layer.mask_value))
    if isinstance(layer, keras.Model):
        raise _refuse(layer, "a model nested as a layer is not rebuilt; build one flat model")
    raise _refuse(layer, "this layer is not rebuilt (see the README's table of layers)")
