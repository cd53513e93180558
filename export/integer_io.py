"""int8 inputs and outputs for a model whose activations are int16 inside.

An int8 recurrent model re-rounds its hidden state to 256 levels at every step, and
int8 kernels do not all round alike: LiteRT's FULLY_CONNECTED requantizes with one
rounding, TensorFlow Lite Micro's with two, so about 0.1% of their outputs differ by
one step. Twenty-eight steps of recurrence carry those steps to the logits, and top-1
agreement between the two runtimes falls to 98-99.8%. TFLite's own quantized LSTM
kernel keeps its cell state in int16 for this reason; `kerasrnn` does the same for
every cell: weights int8, activations int16 (the converter's "16x8" mode).

The converter gives such a model float32 (or int16) inputs and outputs only. The
functions here rewrite its interface: images come in and logits go out as int8 (the
converter's QUANTIZE/DEQUANTIZE ops become int8 <-> int16 requantizations), and a
streaming model's recurrent state goes in and out as int16, as it is inside.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from kerasrnn.export import flatbuffer


def int8_parameters(low: float, high: float) -> tuple[float, int]:
    """Asymmetric int8 (scale, zero point) for a real range, as the converter picks them.

    Args:
        low, high: the calibrated range; it is widened to contain 0.

    Returns:
        (scale, zero_point) with zero_point in [-128, 127].
    """
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0 or 1.0
    return scale, int(np.clip(round(-128 - low / scale), -128, 127))


def _as_int8(tensor: schema.TensorT, inner: schema.TensorT) -> None:
    """Makes a float32 interface tensor int8, over the calibrated range of `inner` (or,
    for an op whose output scale is fixed, as SOFTMAX's and LOGISTIC's are, the range its
    int16 scale spans)."""
    q = inner.quantization
    if q is not None and q.min is not None and q.max is not None:
        low, high = float(q.min[0]), float(q.max[0])
    elif q is not None and q.scale is not None and inner.type == schema.TensorType.INT16:
        zero = int(q.zeroPoint[0]) if q.zeroPoint is not None else 0
        low, high = (-32768 - zero) * float(q.scale[0]), (32767 - zero) * float(q.scale[0])
    else:
        raise ValueError(f"tensor {inner.name!r} carries no calibrated range")
    scale, zero_point = int8_parameters(low, high)
    tensor.type = schema.TensorType.INT8
    tensor.quantization = schema.QuantizationParametersT()
    tensor.quantization.scale = [scale]
    tensor.quantization.zeroPoint = [zero_point]


def int8_interface(
    model_bytes: bytes,
    input_names: list[str],
    output_names: list[str],
    int16_names: frozenset[str] = frozenset({"state"}),
) -> bytes:
    """Rewrites a 16x8 model's float32 interface as int8 (int16 for `int16_names`).

    Args:
        model_bytes: a model converted with int16 activations and int8 weights, float32
            inputs and outputs.
        input_names, output_names: the interface tensors' names, in the graph's order.
        int16_names: interface tensors to expose as the int16 tensors the graph uses
            inside (the recurrent state); the others become int8.

    Returns:
        The rewritten model bytes.

    Raises:
        ValueError: the model's interface is not float32 around QUANTIZE/DEQUANTIZE ops.
    """
    model = flatbuffer.unpack(model_bytes)
    graph = model.subgraphs[0]
    if len(input_names) != len(graph.inputs) or len(output_names) != len(graph.outputs):
        raise ValueError(
            f"the model has {len(graph.inputs)} inputs and {len(graph.outputs)} "
            f"outputs; names given: {input_names}, {output_names}"
        )
    graph.inputs, graph.outputs = list(graph.inputs), list(graph.outputs)
    removed = set()

    def only_op(ops, expected: str, name: str) -> schema.OperatorT:
        if len(ops) != 1 or flatbuffer.operator_name(model, ops[0]) != expected:
            found = [flatbuffer.operator_name(model, op) for op in ops]
            raise ValueError(f"interface tensor {name!r} should meet one {expected}, got {found}")
        return ops[0]

    for position, name in enumerate(input_names):
        index = graph.inputs[position]
        op = only_op([op for op in graph.operators if index in op.inputs], "QUANTIZE", name)
        inner = graph.tensors[op.outputs[0]]
        if name in int16_names:  # the graph takes the int16 tensor itself
            graph.inputs[position] = op.outputs[0]
            inner.name = name.encode()
            removed.add(id(op))
        else:  # QUANTIZE float -> int16 becomes a requantization int8 -> int16
            _as_int8(graph.tensors[index], inner)
    quantize_code = next(
        (
            op.opcodeIndex
            for op in graph.operators
            if flatbuffer.operator_name(model, op) == "QUANTIZE"
        ),
        None,
    )
    if quantize_code is None:
        raise ValueError(
            "the model has no QUANTIZE operator: it was not converted with "
            "int16 activations and a float32 interface"
        )
    for position, name in enumerate(output_names):
        index = graph.outputs[position]
        op = only_op([op for op in graph.operators if index in op.outputs], "DEQUANTIZE", name)
        inner = graph.tensors[op.inputs[0]]
        if name in int16_names:
            graph.outputs[position] = op.inputs[0]
            inner.name = name.encode()
            removed.add(id(op))
        else:  # DEQUANTIZE int16 -> float becomes QUANTIZE int16 -> int8
            op.opcodeIndex = quantize_code
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.NONE, None
            _as_int8(graph.tensors[index], inner)
    graph.operators = [op for op in graph.operators if id(op) not in removed]
    flatbuffer.drop_unused_tensors(graph)
    return flatbuffer.pack(model)
