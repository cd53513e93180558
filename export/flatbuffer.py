"""Reading, slimming and sealing .tflite flatbuffers (the LiteRT schema, object API).

The converter names every intermediate tensor after its fused source ops (hundreds of
bytes each in an unrolled int8 graph) and gives every tensor its own empty buffer. None of
that is needed to run the model, so `slim` drops it: it keeps the names of the graph's
inputs and outputs, points every data-less tensor at the shared empty buffer 0, and writes
identical tables and small vectors once. `seal` then stores the file's SHA-256 in its
metadata, which the runtime verifies on load.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from kerasrnn.export.integrity import DIGEST_METADATA, DIGEST_SIZE, content_digest, digest_span

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def unpack(model_bytes: bytes) -> schema.ModelT:
    """A .tflite model as LiteRT's schema objects, to edit."""
    return schema.ModelT.InitFromPackedBuf(model_bytes, 0)


def pack(model: schema.ModelT) -> bytes:
    """schema objects -> .tflite bytes (see `slim` for the compact form)."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def operator_name(model: schema.ModelT, op: schema.OperatorT) -> str:
    """An operator's builtin name, e.g. "FULLY_CONNECTED" (or its custom code)."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return (code.customCode or b"").decode() or "CUSTOM"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def drop_unused_tensors(subgraph: schema.SubGraphT) -> None:
    """Removes the tensors no operator, input or output refers to, renumbering the rest."""
    used = set(subgraph.inputs) | set(subgraph.outputs)
    for op in subgraph.operators:
        used.update(i for i in (*op.inputs, *op.outputs) if i >= 0)
    remap = {old: new for new, old in enumerate(sorted(used))}
    remap[-1] = -1  # an absent optional input
    subgraph.tensors = [subgraph.tensors[i] for i in sorted(used)]
    for op in subgraph.operators:
        op.inputs = [remap[i] for i in op.inputs]
        op.outputs = [remap[i] for i in op.outputs]
    subgraph.inputs = [remap[i] for i in subgraph.inputs]
    subgraph.outputs = [remap[i] for i in subgraph.outputs]


class _SharingBuilder(flatbuffers.Builder):
    """A builder that writes each distinct small vector (shapes, tensor indices,
    quantization scales) once; larger vectors (weights) keep their own storage."""

    def __init__(self, size: int):
        super().__init__(size)
        self._vectors = {}

    def CreateNumpyVector(self, x):
        if x.nbytes > 64:
            return super().CreateNumpyVector(x)
        key = (x.dtype.str, x.shape, x.tobytes())
        if key not in self._vectors:
            self._vectors[key] = super().CreateNumpyVector(x)
        return self._vectors[key]


def _content(obj):
    """A hashable key of an object-API value: equal keys pack to identical bytes."""
    if isinstance(obj, np.ndarray):
        return ("array", obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, list | tuple):
        return tuple(_content(v) for v in obj)
    if hasattr(obj, "__dict__"):
        name = getattr(type(obj), "shared_base", type(obj)).__name__
        return (name, tuple(sorted((k, _content(v)) for k, v in vars(obj).items())))
    return obj


def _share_tables(objects, cache: dict) -> None:
    """Makes each object pack its table once per distinct content (see `_content`).

    A flatbuffer may point several places at one table; interpreters only read them.
    """
    subclasses = {}
    for obj in objects:
        base = type(obj)
        if base not in subclasses:

            def pack(self, builder, _base=base):
                key = _content(self)
                if key not in cache:
                    cache[key] = _base.Pack(self, builder)
                return cache[key]

            subclasses[base] = type(base.__name__, (base,), {"Pack": pack, "shared_base": base})
        obj.__class__ = subclasses[base]


def _pack_shared(model: schema.ModelT) -> bytes:
    """Packs `model`, writing identical tensors, quantization parameters, operator options
    and small vectors once. An unrolled graph has hundreds of alike tensors and ops.

    The sharing overrides `Pack` of the schema's generated classes (checked with
    ai-edge-litert 2.3 and flatbuffers 25.x). Should the generated code change, the result
    is checked against a plain pack and the difference raised, never written.

    Raises:
        RuntimeError: the shared pack does not read back as the plain pack does.
    """
    plain = pack(model)
    cache = {}
    for subgraph in model.subgraphs:
        quantizations = [t.quantization for t in subgraph.tensors if t.quantization is not None]
        options = [op.builtinOptions for op in subgraph.operators if op.builtinOptions is not None]
        _share_tables(quantizations + options, cache)
        _share_tables(subgraph.tensors, cache)
    builder = _SharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    shared = bytes(builder.Output())
    if _content(unpack(shared)) != _content(unpack(plain)):
        raise RuntimeError(
            "flatbuffer table sharing changed the model: the generated schema "
            "code of ai-edge-litert/flatbuffers differs from the versions it "
            "was checked against (see kerasrnn.export.flatbuffer)"
        )
    return shared


def operators(model_bytes: bytes) -> list[str]:
    """The distinct operators a model uses: builtin names, or the custom code (Flex ops)."""
    model = unpack(model_bytes)
    return sorted(
        {operator_name(model, op) for subgraph in model.subgraphs for op in subgraph.operators}
    )


def multiply_accumulates(model_bytes: bytes) -> int | None:
    """The multiply-accumulates of one Invoke() of the main subgraph, the usual measure of
    a network's work: the matrix products of FULLY_CONNECTED, BATCH_MATMUL, CONV_2D,
    DEPTHWISE_CONV_2D and UNIDIRECTIONAL_SEQUENCE_LSTM (its input, recurrent and projection
    weights at every step), and a WHILE's body times the trip count that its condition
    compares with. Elementwise ops (gates, activations, adds) are not counted.

    Returns:
        The count, or None when a WHILE's trip count is not a constant of its condition.
    """
    model = unpack(model_bytes)
    return _subgraph_macs(model, 0)


def _subgraph_macs(model: schema.ModelT, index: int) -> int | None:
    graph = model.subgraphs[index]

    def shape(tensor: int) -> list[int]:
        return [int(d) for d in graph.tensors[tensor].shape]

    total = 0
    for op in graph.operators:
        name = operator_name(model, op)
        if name == "FULLY_CONNECTED":
            weights = shape(op.inputs[1])
            total += int(np.prod(shape(op.inputs[0]))) // weights[-1] * int(np.prod(weights))
        elif name == "BATCH_MATMUL":
            lhs = shape(op.inputs[0])
            inner = lhs[-2] if op.builtinOptions is not None and op.builtinOptions.adjX else lhs[-1]
            total += int(np.prod(shape(op.outputs[0]))) * inner
        elif name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            kernel = shape(op.inputs[1])  # [out, h, w, in] or [1, h, w, out]
            per_output = int(np.prod(kernel[1:3])) * (kernel[3] if name == "CONV_2D" else 1)
            total += int(np.prod(shape(op.outputs[0]))) * per_output
        elif name == "UNIDIRECTIONAL_SEQUENCE_LSTM":
            rows = int(np.prod(shape(op.inputs[0])[:-1]))  # batch x steps
            weights = [*op.inputs[1:9], *op.inputs[16:17]]  # gates, recurrent, projection
            total += rows * sum(int(np.prod(shape(w))) for w in weights if w >= 0)
        elif name == "WHILE":
            options = op.builtinOptions
            trips = _trip_count(model, options.condSubgraphIndex)
            body = _subgraph_macs(model, options.bodySubgraphIndex)
            if trips is None or body is None:
                return None
            total += trips * body
    return total


def _trip_count(model: schema.ModelT, cond: int) -> int | None:
    """The constant a WHILE condition's LESS compares its counter with (the smallest, when
    TensorFlow adds a maximum_iterations counter)."""
    graph = model.subgraphs[cond]
    bounds = []
    for op in graph.operators:
        if operator_name(model, op) != "LESS":
            continue
        data = model.buffers[graph.tensors[op.inputs[1]].buffer].data
        if data is not None and len(data) == 4:
            bounds.append(int(np.asarray(data, np.uint8).view(np.int32)[0]))
    return min(bounds) if bounds else None


def is_builtin(name: str) -> bool:
    """Whether an operator name from `operators` is a TFLite builtin (not Flex/custom)."""
    return name in _OP_NAMES.values() and name != "CUSTOM"


def slim(
    model_bytes: bytes,
    metadata: dict[str, bytes] | None = None,
    output_names: list[str] | None = None,
) -> bytes:
    """Drops tensor names and empty per-tensor buffers; adds named metadata buffers.

    Args:
        model_bytes: a converted .tflite model.
        metadata: extra named byte strings to store in the model's metadata table.
        output_names: names for the main graph's outputs, in order (the converter calls
            them "Identity", "Identity_1", ...); the inputs keep their names.

    Returns:
        The slimmed model bytes (same graph, same numbers).
    """
    model = unpack(model_bytes)
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
    main = model.subgraphs[0]
    if output_names is not None:
        if len(output_names) != len(main.outputs):
            raise ValueError(f"{len(output_names)} output names for {len(main.outputs)} outputs")
        for index, name in zip(main.outputs, output_names):
            main.tensors[index].name = name.encode()
    for name, data in (metadata or {}).items():
        _add_metadata(model, name, data)
    return _pack_shared(model)


def _add_metadata(model: schema.ModelT, name: str, data: bytes) -> None:
    """Appends a buffer holding `data` and a metadata entry `name` that names it."""
    buffer = schema.BufferT()
    buffer.data = list(data)  # a list packs into a vector of its own, never a shared one
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name.encode(), len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]


def seal(model_bytes: bytes) -> bytes:
    """Stores the file's SHA-256 in its metadata, for the runtime to verify on load.

    The digest (64 hex digits in the metadata entry `integrity.DIGEST_METADATA`) covers the
    whole file with its own digits zeroed. The file's description names the entry too, so
    a file whose entry is damaged is still known to have carried one.

    Args:
        model_bytes: a finished .tflite model without a digest.

    Returns:
        The same model with its digest (see `integrity.verify_digest`).

    Raises:
        ValueError: the model already carries a digest entry.
    """
    model = unpack(model_bytes)
    if any(entry.name == DIGEST_METADATA.encode() for entry in model.metadata or []):
        raise ValueError(f"the model already carries a {DIGEST_METADATA} entry")
    model.description = DIGEST_METADATA.encode()
    _add_metadata(model, DIGEST_METADATA, bytes(DIGEST_SIZE))
    sealed = _pack_shared(model)
    span = digest_span(sealed)
    return sealed[: span.start] + content_digest(sealed, span) + sealed[span.stop :]
