"""The ranges of an int8 file's tensors: measured on real inputs, then pinned where the int8
graph makes the measured range waste its 256 steps, and only then quantized.

The converter sets every tensor's int8 scale from the smallest and largest value it met
while calibrating. For int8 activations that wastes steps in two places, and `pin_ranges`
fixes both (and one more) before `quantize` hands the model to the converter's own quantizer:

- A tensor read only by TANH or LOGISTIC, and made by an op of its own output scale
  (`OWN_SCALE`), is clipped to where their int8 outputs saturate (`SATURATING`): beyond,
  every input gives the same output byte, so no output changes and the steps inside get
  finer (an Elman pre-activation calibrated to [-15.3, 12.0] moves in 0.105 steps, clipped
  to [-3.2, 3.2] in 0.025).
- A CONCATENATION of tensors that lie in [-1, 1] (the joined Elman step of
  `graph.sequence_function`: [x_t, h_{t-1}], h a TANH output), and the UNPACK and model
  input it reads, get TANH's own int8 range (scale 1/128, zero point 0): then no input of
  the CONCATENATION needs requantizing, an op per step. A pixel of 1.0 reads as 127/128.

And one place where the measured range is simply not the int8 one: TANH's and LOGISTIC's
int8 outputs have a fixed scale (`FIXED_OUTPUT`), which the quantizer gives their tensors
whatever was measured, requantizing to the measured scale for an op that keeps its input's
scale (a PACK of an Elman layer's sequence: a QUANTIZE per step, each rounding h again).
Those tensors get their fixed range, and so do the outputs of PACK, UNPACK and
CONCATENATION where every input has the one same fixed range: exact, since they move
values without computing (a stacked elman-64's int8-activation file, 1 epoch on the
sample: 81 QUANTIZE ops and 43.2 KB before, none and 33.0 KB after; top-1 agreement with
Keras 98.2% -> 98.5%).

Measured on elman-64 trained 3 epochs on full MNIST (int8 activations, XNNPACK, the 10,000
t10k digits): top-1 agreement with Keras 99.24% as the converter quantizes it, 99.62%
joined and pinned (simple-64: 99.02% -> 99.66%), in 5.3 us a digit (README, "Latency on
LiteRT").
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.lite.python.convert import mlir_quantize

from kerasrnn.export import flatbuffer

# The input range beyond which an op's int8 output no longer changes: TANH's (scale 1/128,
# zero point 0) reaches 127 from 2.57 and -128 from -3.12, LOGISTIC's (scale 1/256, zero
# point -128) its ends from -6.24 and 5.14; the bounds keep a margin.
SATURATING = {"TANH": 3.2, "LOGISTIC": 6.5}
# The ops whose int8 output takes its own scale (the others, SPLIT, UNPACK, RESHAPE...,
# keep their input's): the ones whose outputs `pin_ranges` may clip.
OWN_SCALE = ("FULLY_CONNECTED", "ADD", "SUB", "MUL", "CONV_2D", "BATCH_MATMUL")
# TANH's int8 output range: scale 1/128, zero point 0.
TANH_RANGE = (-1.0, 127.0 / 128.0)
# The int8 output ranges that TFLite fixes: TANH's, and LOGISTIC's (scale 1/256, zero point
# -128).
FIXED_OUTPUT = {"TANH": TANH_RANGE, "LOGISTIC": (0.0, 255.0 / 256.0)}
# Ops whose int8 outputs keep their inputs' scale: where every input has one fixed range,
# so do the outputs.
MOVES_VALUES = ("PACK", "UNPACK", "CONCATENATION")


def quantize(converter: tf.lite.TFLiteConverter) -> bytes:
    """Converts to full int8 (int8 activations, input and output) with `pin_ranges`.

    Args:
        converter: set up for int8 (`TFLITE_BUILTINS_INT8`, a representative dataset,
            int8 input and output types, per-channel weight scales or not).

    Returns:
        The quantized model's bytes (what `converter.convert()` gives, with the pinned
        ranges).
    """
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    return mlir_quantize(
        pin_ranges(calibrated),
        disable_per_channel=converter._experimental_disable_per_channel,
        input_data_type=tf.int8,
        output_data_type=tf.int8,
    )


def pin_ranges(calibrated: bytes) -> bytes:
    """A calibrated model (the converter's float model with each tensor's measured min and
    max) with the ranges pinned as the module says.

    Returns:
        The model's bytes, its other ranges as measured.
    """
    model = flatbuffer.unpack(calibrated)
    graph = model.subgraphs[0]
    readers, producers = {}, {}  # tensor -> names of the ops reading it; -> (name, op)
    for op in graph.operators:
        name = flatbuffer.operator_name(model, op)
        for i in op.inputs:
            readers.setdefault(i, []).append(name)
        for o in op.outputs:
            producers[o] = (name, op)
    for index, tensor in enumerate(graph.tensors):
        names = set(readers.get(index, []))
        own_scale = producers.get(index, (None,))[0] in OWN_SCALE
        if own_scale and len(names) == 1 and names <= SATURATING.keys() and _measured(tensor):
            bound = SATURATING[names.pop()]
            q = tensor.quantization
            _set_range(tensor, max(q.min[0], -bound), min(q.max[0], bound))
    for op in graph.operators:
        if flatbuffer.operator_name(model, op) == "CONCATENATION":
            _pin_concatenation(graph, op, producers, readers)
    _pin_fixed_outputs(model, graph)
    return flatbuffer.pack(model)


def _pin_fixed_outputs(model, graph) -> None:
    """Gives TANH's and LOGISTIC's outputs their fixed int8 ranges, and the outputs of
    PACK, UNPACK and CONCATENATION the one fixed range of all their inputs (in execution
    order, so a PACK of TANH outputs passes its range to the UNPACK that reads it)."""
    for op in graph.operators:
        name = flatbuffer.operator_name(model, op)
        if name in FIXED_OUTPUT:
            fixed = FIXED_OUTPUT[name]
        elif name in MOVES_VALUES:
            ranges = {_range(graph.tensors[i]) for i in op.inputs if i >= 0}
            fixed = ranges.pop() if len(ranges) == 1 else None
            if fixed not in FIXED_OUTPUT.values():
                continue
        else:
            continue
        for o in op.outputs:
            if _measured(graph.tensors[o]):
                _set_range(graph.tensors[o], *fixed)


def _range(tensor) -> tuple[float, float] | None:
    """The tensor's (min, max) as float32 values, or None where it has none."""
    if not _measured(tensor):
        return None
    q = tensor.quantization
    return float(q.min[0]), float(q.max[0])


def _measured(tensor) -> bool:
    """Whether calibration gave the tensor one (min, max)."""
    q = tensor.quantization
    return q is not None and q.min is not None and len(q.min) == 1


def _set_range(tensor, low: float, high: float) -> None:
    tensor.quantization.min = np.array([low], np.float32)
    tensor.quantization.max = np.array([high], np.float32)


def _pin_concatenation(graph, op, producers: dict, readers: dict) -> None:
    """Gives a CONCATENATION of tensors within [-1, 1] TANH's int8 range, with the UNPACK
    outputs and the model input it reads (see the module). Only where every tensor it pins
    is read by ops of their own output scale: a tensor also read by a PACK (an Elman layer
    that returns its sequence) gets the PACK's scale, which the concatenation's would
    contradict."""
    inputs = [graph.tensors[i] for i in op.inputs]
    in_tanh_range = [
        _measured(t) and -1 <= t.quantization.min[0] <= t.quantization.max[0] <= 1 for t in inputs
    ]
    if not all(in_tanh_range):
        return
    pinned = list(op.outputs)
    for i in op.inputs:
        name, producer = producers.get(i, (None, None))
        if name == "UNPACK" and producer.inputs[0] in graph.inputs:
            pinned += [producer.inputs[0], *producer.outputs]
        elif name == "TANH":  # its int8 range is TANH_RANGE already
            pinned.append(i)
        else:
            return  # another producer: its range stays, and the quantizer requantizes
    joins = ("CONCATENATION", "FULLY_CONNECTED", "UNPACK")
    if any(
        name not in joins for t in pinned for name in readers.get(t, []) if t not in graph.outputs
    ):
        return
    for t in pinned:
        if _measured(graph.tensors[t]):
            _set_range(graph.tensors[t], *TANH_RANGE)
