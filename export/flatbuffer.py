"""Reading and slimming .tflite flatbuffers (the LiteRT schema, object API).

The converter names every intermediate tensor after its fused source ops (hundreds of
bytes each in an unrolled int8 graph) and gives every tensor its own empty buffer. None of
that is needed to run the model, so `slim` drops it: it keeps the names of the graph's
inputs and outputs, points every data-less tensor at the shared empty buffer 0, and writes
identical tensor tables once.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _unpack(model_bytes: bytes) -> schema.ModelT:
    return schema.ModelT.InitFromPackedBuf(model_bytes, 0)


def _pack(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _values(vector) -> tuple | None:
    return None if vector is None else tuple(np.asarray(vector).tolist())


def _tensor_key(tensor: schema.TensorT):
    """What makes two tensor tables byte-identical (None: never share this one)."""
    if tensor.sparsity is not None or tensor.variantTensors:
        return None
    q = tensor.quantization
    quantization = None if q is None else (_values(q.scale), _values(q.zeroPoint),
                                           q.quantizedDimension, q.detailsType)
    if q is not None and q.details is not None:
        return None
    shape = lambda v: None if v is None else tuple(np.asarray(v).tolist())
    return (shape(tensor.shape), shape(tensor.shapeSignature), tensor.type, tensor.buffer,
            tensor.name, tensor.isVariable, tensor.hasRank, quantization)


def _pack_sharing_tensors(model: schema.ModelT) -> bytes:
    """Packs `model`, writing each distinct tensor table once.

    An unrolled graph has hundreds of intermediate tensors, many alike (same shape, type
    and quantization, no data, no name). A flatbuffer may point several entries of the
    tensor vector at one table; interpreters read tensors by index, so nothing changes.
    """
    cache = {}

    class SharedTensor(schema.TensorT):
        def Pack(self, builder):
            key = _tensor_key(self)
            if key is None:
                return super().Pack(builder)
            if key not in cache:
                cache[key] = super().Pack(builder)
            return cache[key]

    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            tensor.__class__ = SharedTensor
    return _pack(model)


def operators(model_bytes: bytes) -> list[str]:
    """The distinct operators a model uses: builtin names, or the custom code (Flex ops)."""
    model = _unpack(model_bytes)
    names = []
    for code in model.operatorCodes:
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.append((code.customCode or b"").decode() or "CUSTOM")
        else:
            names.append(_OP_NAMES.get(builtin, f"BUILTIN_{builtin}"))
    return sorted(set(names))


def is_builtin(name: str) -> bool:
    """Whether an operator name from `operators` is a TFLite builtin (not Flex/custom)."""
    return name in _OP_NAMES.values() and name != "CUSTOM"


def slim(model_bytes: bytes, metadata: dict[str, bytes] | None = None) -> bytes:
    """Drops tensor names and empty per-tensor buffers; adds named metadata buffers.

    Args:
        model_bytes: a converted .tflite model.
        metadata: extra named byte strings to store in the model's metadata table.

    Returns:
        The slimmed model bytes (same graph, same numbers).
    """
    model = _unpack(model_bytes)
    used_by_metadata = {m.buffer for m in model.metadata or []}
    remap, kept = {0: 0}, [model.buffers[0]]
    for i, buffer in enumerate(model.buffers[1:], start=1):
        if (buffer.data is None or len(buffer.data) == 0) and i not in used_by_metadata:
            remap[i] = 0
        else:
            remap[i] = len(kept)
            kept.append(buffer)
    for subgraph in model.subgraphs:
        keep_names = set(subgraph.inputs) | set(subgraph.outputs)
        for index, tensor in enumerate(subgraph.tensors):
            tensor.buffer = remap[tensor.buffer]
            if index not in keep_names:
                tensor.name = None
            if tensor.quantization is not None:
                tensor.quantization.min = tensor.quantization.max = None
    for entry in model.metadata or []:
        entry.buffer = remap[entry.buffer]
    model.buffers = kept
    for name, data in (metadata or {}).items():
        buffer = schema.BufferT()
        buffer.data = list(data)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name.encode(), len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    return _pack_sharing_tensors(model)
