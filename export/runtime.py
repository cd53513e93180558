"""The device runtime: run exported classifiers with NumPy and `ai_edge_litert` only.

This module never imports TensorFlow or Keras, so it runs where only the LiteRT runtime
is installed (`pip install ai-edge-litert numpy`). It is the one module that builds a
LiteRT interpreter (export checks converted files with `check_loads`).

    clf = Classifier("model.tflite")
    logits = clf.predict(images)          # images [n, 28, 28] in [0, 1] (or uint8 0-255)

    stream = Stream("model.step.tflite")  # one row at a time
    for row in image:
        logits = stream.push(row)

A damaged file is refused with a `ModelFileError` naming it, never believed and never a
crash. Every file `kerasrnn.export` writes carries its SHA-256 in its metadata
(`DIGEST_METADATA`), verified on load: a changed file is refused. A file without a digest
(from another tool) is checked (`check_model`), then loaded once in a child process, since
LiteRT aborts the whole process on some damaged files; only then is it loaded here. Logits
that are not finite are an error, never a prediction. (The digest detects damage, not
tampering: whoever can change a file can write a new digest into it.)
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import struct
import subprocess
import sys

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from kerasrnn.errors import InputError, ModelFileError

logger = logging.getLogger(__name__)

# The metadata entry of a streaming file that holds its initial state (float32 [state]).
INITIAL_STATE_METADATA = "kerasrnn.initial_state"
# The metadata entry that holds a file's SHA-256 (64 hex digits), taken over the whole
# file with this entry's digits zeroed. The file's description names the entry too, so a
# file whose entry was damaged is still known to have had one.
DIGEST_METADATA = "kerasrnn.sha256"
DIGEST_SIZE = 64

# What the flatbuffer reader raises on a malformed file (offsets out of the file, vectors
# longer than it, bytes that are not UTF-8 where names belong).
_MALFORMED = (IndexError, OverflowError, TypeError, ValueError, struct.error)
# The tensors of one model together: far above any classifier this runtime runs (kilobytes
# to a few megabytes), and a bound on what a damaged shape can make LiteRT allocate.
_MAX_TENSOR_BYTES = 1 << 30
# TensorType -> NumPy dtype, for the types both name alike (float32, int8, bool...).
_DTYPES = {
    value: np.dtype(name.lower())
    for name, value in vars(schema.TensorType).items()
    if name.isupper() and hasattr(np, name.lower())
}
_TENSOR_TYPES = {v for k, v in vars(schema.TensorType).items() if k.isupper()}
# A child process that loads and runs a file once, as `check_loads` does (see `_probe`).
_PROBE = (
    "import sys; from kerasrnn.export.runtime import check_loads; "
    "check_loads(sys.stdin.buffer.read())"
)
_PROBE_TIMEOUT_S = 60


def _interpreter(content: bytes) -> Interpreter:
    """A LiteRT interpreter over `content`, its tensors allocated.

    LiteRT's own kernels, not the XNNPACK delegate: XNNPACK aborts the process on some
    valid int8 graphs, and these are the kernels `kerasrnn export` verified.
    """
    interpreter = Interpreter(
        model_content=content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    return interpreter


def check_loads(content: bytes) -> None:
    """Checks a model (`check_model`), then loads and runs it once on zeros, as a device
    would (used on freshly converted files, and in `_probe`'s child process).

    Args:
        content: the model's bytes.

    Raises:
        ValueError: the model is malformed, or LiteRT rejects it.
        RuntimeError: LiteRT cannot allocate or run it.
    """
    check_model(schema.ModelT.InitFromPackedBuf(content, 0), len(content))
    _interpreter(content).invoke()


def digest_span(content: bytes) -> slice | None:
    """Where a file's digest lies: the data of the buffer its `DIGEST_METADATA` entry names.

    Returns:
        The slice of `content` that holds the digest, or None when it has no such entry.

    Raises:
        ValueError: the entry is repeated, or names no `DIGEST_SIZE`-byte buffer in the file
            (the reader raises one of `_MALFORMED` on a malformed flatbuffer).
    """
    model = schema.Model.GetRootAs(content, 0)
    entries = [model.Metadata(i) for i in range(model.MetadataLength())]
    found = [entry.Buffer() for entry in entries if entry.Name() == DIGEST_METADATA.encode()]
    if not found:
        return None
    if len(found) > 1 or not 0 <= found[0] < model.BuffersLength():
        raise ValueError(f"{len(found)} digest entries naming buffers {found}")
    table = model.Buffers(found[0])._tab  # the generated reader's view: offsets into the file
    field = table.Offset(4)  # Buffer.data, the table's first field
    start = table.Vector(field) if field else 0
    length = table.VectorLen(field) if field else 0
    if length != DIGEST_SIZE or start + length > len(content):
        raise ValueError(f"the digest buffer holds {length} bytes, not {DIGEST_SIZE}")
    return slice(start, start + length)


def content_digest(content: bytes, span: slice) -> bytes:
    """A file's SHA-256, taken with its digest field zeroed.

    Args:
        content: the file's bytes.
        span: where its digest field lies (`digest_span`).

    Returns:
        The digest as 64 ASCII hex digits.
    """
    digest = hashlib.sha256(content[: span.start])
    digest.update(bytes(span.stop - span.start))
    digest.update(content[span.stop :])
    return digest.hexdigest().encode("ascii")


def verify_digest(content: bytes, path: str) -> str | None:
    """Verifies the digest a file carries (see `DIGEST_METADATA`).

    Args:
        content: the file's bytes.
        path: its path, for messages.

    Returns:
        The digest (hex), or None when the file has none (it did not come from
        `kerasrnn.export`).

    Raises:
        ModelFileError: the digest does not match the content, or cannot be read.
    """
    try:
        span = digest_span(content)
    except _MALFORMED as e:
        raise ModelFileError(f"{path}: invalid or truncated TFLite model ({e})") from None
    if span is None:
        if DIGEST_METADATA.encode() in content:  # the description names the entry
            raise ModelFileError(
                f"{path}: the file was changed after export (digest entry damaged)"
            )
        return None
    if content[span] != content_digest(content, span):
        raise ModelFileError(
            f"{path}: the file was changed after export (its content does not match the "
            f"SHA-256 it carries); export it again"
        )
    return content[span].decode("ascii")


def _check_indices(name: str, indices, count: int, optional: bool = False) -> None:
    """Raises ValueError unless every index lies in [0, count) (or is -1 when optional)."""
    values = np.asarray([] if indices is None else indices, np.int64)
    low = -1 if optional else 0
    if values.size and (values.min() < low or values.max() >= count):
        raise ValueError(f"{name} {values.tolist()} out of range [{low}, {count})")


def _check_tensor(tensor: schema.TensorT, buffers: list, where: str) -> int:
    """Checks a tensor's type, shape, data size and quantization.

    Returns:
        The bytes its values take.

    Raises:
        ValueError: naming the first defect.
    """
    if tensor.type not in _TENSOR_TYPES:
        raise ValueError(f"{where} has an unknown type {tensor.type}")
    try:  # LiteRT's Python API decodes names
        (tensor.name or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where} has a name that is not UTF-8") from None
    shape = [int(d) for d in ([] if tensor.shape is None else tensor.shape)]
    if any(d < 0 for d in shape):
        raise ValueError(f"{where} has a negative dimension in its shape {shape}")
    dtype = _DTYPES.get(tensor.type, np.dtype(np.uint8))
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _MAX_TENSOR_BYTES:
        raise ValueError(f"{where} of shape {shape} would need {nbytes:,} bytes")
    if not 0 <= tensor.buffer < len(buffers):
        raise ValueError(f"{where} refers to buffer {tensor.buffer} of {len(buffers)}")
    data = buffers[tensor.buffer].data
    if (
        data is not None
        and len(data)
        and tensor.type in _DTYPES
        and tensor.sparsity is None
        and len(data) != nbytes
    ):
        raise ValueError(f"{where} of shape {shape} holds {len(data)} bytes, not {nbytes}")
    quantization = tensor.quantization
    if quantization is None or quantization.scale is None or not len(quantization.scale):
        return nbytes
    scale = np.asarray(quantization.scale, np.float64)
    zero_point = np.asarray(
        [] if quantization.zeroPoint is None else quantization.zeroPoint, np.int64
    )
    if not (np.isfinite(scale) & (scale > 0)).all():
        raise ValueError(f"{where} has quantization scales {scale.tolist()[:4]} (finite, > 0)")
    if len(zero_point) != len(scale):
        raise ValueError(f"{where} has {len(scale)} scales and {len(zero_point)} zero points")
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is not None and (zero_point.min() < info.min or zero_point.max() > info.max):
        raise ValueError(
            f"{where} has zero points {zero_point.tolist()[:4]} outside [{info.min}, {info.max}]"
        )
    if len(scale) > 1 and not (
        0 <= quantization.quantizedDimension < len(shape)
        and shape[quantization.quantizedDimension] == len(scale)
    ):
        raise ValueError(
            f"{where} has {len(scale)} scales along dimension "
            f"{quantization.quantizedDimension} of shape {shape}"
        )
    return nbytes


def check_model(model: schema.ModelT, file_size: int) -> None:
    """Checks what LiteRT trusts in a model before it builds an interpreter over it.

    Checks that buffers lie within the file, and tensor types, shapes, data sizes and
    quantization parameters (scales finite and positive, zero points in their type's range),
    and that every operator, tensor, buffer and subgraph index is in range.

    Args:
        model: the file as LiteRT's schema objects.
        file_size: the file's size in bytes.

    Raises:
        ValueError: naming the first defect found.
    """
    buffers, subgraphs = model.buffers or [], model.subgraphs or []
    if not subgraphs:
        raise ValueError("no subgraph")
    for i, buffer in enumerate(buffers):
        if buffer.offset > 1 and buffer.offset + buffer.size > file_size:
            raise ValueError(
                f"buffer {i} ends at byte {buffer.offset + buffer.size} of {file_size}"
            )
    _check_indices("metadata buffers", [m.buffer for m in model.metadata or []], len(buffers))
    total = 0
    for g, subgraph in enumerate(subgraphs):
        tensors = subgraph.tensors or []
        for t, tensor in enumerate(tensors):
            total += _check_tensor(tensor, buffers, f"tensor {t} of subgraph {g}")
        _check_indices(f"subgraph {g}'s inputs", subgraph.inputs, len(tensors))
        _check_indices(f"subgraph {g}'s outputs", subgraph.outputs, len(tensors))
        for o, op in enumerate(subgraph.operators or []):
            where = f"operator {o} of subgraph {g}"
            _check_indices(f"{where}: opcode", [op.opcodeIndex], len(model.operatorCodes or []))
            _check_indices(f"{where}: inputs", op.inputs, len(tensors), optional=True)
            _check_indices(f"{where}: outputs", op.outputs, len(tensors))
            _check_indices(f"{where}: intermediates", op.intermediates, len(tensors))
            options = {} if op.builtinOptions is None else vars(op.builtinOptions)
            subgraph_indices = [v for k, v in options.items() if k.endswith("SubgraphIndex")]
            _check_indices(f"{where}: subgraphs", subgraph_indices, len(subgraphs))
    if total > _MAX_TENSOR_BYTES:
        raise ValueError(f"the tensors would need {total:,} bytes")
    for signature in model.signatureDefs or []:
        _check_indices("a signature's subgraph", [signature.subgraphIndex], len(subgraphs))
        tensors = subgraphs[signature.subgraphIndex].tensors or []
        maps = [*(signature.inputs or []), *(signature.outputs or [])]
        _check_indices("a signature's tensors", [m.tensorIndex for m in maps], len(tensors))


def _read(path: str) -> bytes:
    """A model file's bytes, once they look like a TFLite file."""
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    with open(path, "rb") as f:
        content = f.read()
    if len(content) < 8:
        raise ModelFileError(f"{path}: {len(content)} bytes is too short for a TFLite model")
    if content[4:8] != b"TFL3":
        raise ModelFileError(
            f"{path}: not a TFLite model (file identifier {content[4:8]!r}, expected b'TFL3')"
        )
    return content


def _probe(content: bytes, path: str) -> None:
    """Loads and runs a model once in a child process, where a LiteRT abort costs nothing.

    Raises:
        ModelFileError: the child failed, crashed or hung.
    """
    # The child sees this process's import path, wherever kerasrnn was found.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        child = subprocess.run(
            [sys.executable, "-c", _PROBE],
            input=content,
            capture_output=True,
            env=env,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ModelFileError(
            f"{path}: LiteRT did not load and run it within {_PROBE_TIMEOUT_S} s"
        ) from None
    if child.returncode < 0:
        raise ModelFileError(
            f"{path}: invalid TFLite model: LiteRT crashed on it "
            f"(signal {-child.returncode}: {signal.strsignal(-child.returncode)})"
        )
    if child.returncode:
        lines = child.stderr.decode(errors="replace").strip().splitlines()
        raise ModelFileError(f"{path}: invalid TFLite model ({lines[-1] if lines else ''})")


def _load(path: str) -> tuple[bytes, Interpreter]:
    """Reads and verifies a model file, then builds its interpreter.

    A file whose digest matches is what `kerasrnn.export` wrote, checked and ran: it loads
    here directly. A file without a digest is checked (`check_model`) and loaded once in a
    child process (`_probe`) first.

    Returns:
        (the file's bytes, its interpreter with tensors allocated).

    Raises:
        ModelFileError: the file is missing, damaged or changed, or LiteRT cannot load it.
    """
    content = _read(path)
    if verify_digest(content, path) is None:
        logger.warning(
            "%s carries no kerasrnn digest, so changes to it cannot be detected "
            "(files from `kerasrnn export` carry one)",
            path,
        )
        try:
            check_model(schema.ModelT.InitFromPackedBuf(content, 0), len(content))
        except _MALFORMED as e:
            raise ModelFileError(f"{path}: invalid or truncated TFLite model ({e})") from None
        _probe(content, path)
    try:
        interpreter = _interpreter(content)
    except (ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: invalid or truncated TFLite model ({e})") from None
    return content, interpreter


def _invoke(interpreter: Interpreter, path: str) -> None:
    """Runs the interpreter; LiteRT's failures become `ModelFileError`s naming the file."""
    try:
        interpreter.invoke()
    except (ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: LiteRT failed to run the model ({e})") from None


def _check_finite(logits: np.ndarray, path: str) -> np.ndarray:
    """Returns `logits`, or raises `ModelFileError` when some are NaN or infinite."""
    if not np.isfinite(logits).all():
        raise ModelFileError(
            f"{path}: the model computed non-finite logits (NaN or infinity); its weights "
            f"are damaged or diverged"
        )
    return logits


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """float -> a tensor's dtype, using its (scale, zero point) when it is integer.

    Args:
        values: float values.
        detail: {"dtype": ..., "quantization": (scale, zero_point)}, as interpreters give.
    """
    if detail["dtype"] == np.float32:
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(
        detail["dtype"]
    )


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """A tensor's values -> float32 (see `quantize`)."""
    if detail["dtype"] == np.float32:
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


def _to_float(values) -> np.ndarray:
    """Validates pixel values and scales them to float32 [0, 1]."""
    array = np.asarray(values)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype.kind != "f":
        raise InputError(f"pixels must be uint8 (0-255) or float in [0, 1], got {array.dtype}")
    array = array.astype(np.float32)
    if np.isnan(array).any():
        raise InputError("pixels contain NaN")
    if array.size and (array.min() < 0.0 or array.max() > 1.0):
        raise InputError(
            f"float pixels must lie in [0, 1], got range [{array.min():.3g}, {array.max():.3g}]"
        )
    return array


def _as_batch(images, shape: tuple[int, int]) -> np.ndarray:
    """[n, steps, features] float32 from a batch or a single image of the model's shape.

    Models over 784 pixel steps also take [n, 28, 28] images, read in row-major order.
    """
    array = _to_float(images)
    if array.shape == shape:
        array = array[None]
    elif array.shape[-2:] == (28, 28) and shape == (784, 1):
        array = array.reshape(-1, *shape)
    if array.ndim != 3 or array.shape[1:] != shape:
        raise InputError(
            f"images must have shape [n, {shape[0]}, {shape[1]}] or "
            f"[{shape[0]}, {shape[1]}], got {list(np.shape(images))}"
        )
    return array


class Classifier:
    """Runs a whole-sequence classifier (.tflite from `kerasrnn export`).

    Args:
        path: the .tflite file (float32, float16, dynamic or int8).

    Raises:
        ModelFileError: the file is missing, damaged, changed since export, or not a
            classifier LiteRT can run.
    """

    def __init__(self, path: str):
        self.path = path
        _, self._interpreter = _load(path)
        inputs, outputs = (
            self._interpreter.get_input_details(),
            self._interpreter.get_output_details(),
        )
        if (
            len(inputs) != 1
            or len(outputs) != 1
            or len(inputs[0]["shape"]) != 3
            or len(outputs[0]["shape"]) != 2
        ):
            raise ModelFileError(
                f"{path}: not a kerasrnn classifier (expected one "
                f"[batch, steps, features] input and one [batch, classes] output)"
            )
        self._input, self._output = inputs[0], outputs[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"][1:])
        self.classes = int(self._output["shape"][-1])
        self.batch_size = int(self._input["shape_signature"][0])  # -1: dynamic
        self.quantized = self._input["dtype"] != np.float32
        # the size of one output quantization step (None for float outputs)
        self.output_scale = (
            float(self._output["quantization"][0]) if self._output["dtype"] != np.float32 else None
        )

    def predict(self, images) -> np.ndarray:
        """Logits for a batch of any size.

        Args:
            images: [n, 28, 28] (or the model's [n, steps, features]), uint8 0-255 or float
                in [0, 1]; a single image [28, 28] is accepted too.

        Returns:
            float32 logits [n, classes] (dequantized for int8 models); [0, classes] for an
            empty batch.

        Raises:
            InputError: the images are malformed.
            ModelFileError: LiteRT failed to run the model, or it computed non-finite logits.
        """
        x = _as_batch(images, self.input_shape)
        if not len(x):
            return np.zeros((0, self.classes), np.float32)
        batch = self.batch_size if self.batch_size > 0 else len(x)
        if self.batch_size < 0:
            try:
                self._interpreter.resize_tensor_input(
                    self._input["index"], [len(x), *self.input_shape]
                )
                self._interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise ModelFileError(
                    f"{self.path}: LiteRT cannot take {len(x)} images ({e})"
                ) from None
            self._input, self._output = (
                self._interpreter.get_input_details()[0],
                self._interpreter.get_output_details()[0],
            )
        logits = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            padded = np.concatenate(
                [chunk, np.zeros((batch - len(chunk), *self.input_shape), np.float32)]
            )
            self._interpreter.set_tensor(self._input["index"], quantize(padded, self._input))
            self._interpreter.reset_all_variables()  # a fused LSTM's state: every batch starts at 0
            _invoke(self._interpreter, self.path)
            out = dequantize(self._interpreter.get_tensor(self._output["index"]), self._output)
            logits.append(out[: len(chunk)])
        return _check_finite(np.concatenate(logits), self.path)

    def classify(self, images) -> np.ndarray:
        """Predicted class ids [n]."""
        return self.predict(images).argmax(axis=-1)


def _initial_state(content: bytes, path: str) -> np.ndarray:
    """The initial state a streaming file stores in its metadata (float32 [state])."""
    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == INITIAL_STATE_METADATA.encode():
            data = model.Buffers(entry.Buffer()).DataAsNumpy()  # 0 when it has no data
            if not isinstance(data, np.ndarray) or data.size % 4:
                raise ModelFileError(f"{path}: damaged initial state metadata")
            return data.view(np.float32).copy()
    raise ModelFileError(f"{path}: not a kerasrnn streaming model (no initial state metadata)")


class Stream:
    """Runs a streaming step model: push one row at a time, get the logits so far.

    Args:
        path: a step .tflite (`kerasrnn export --stream`), float32 or int8.

    Raises:
        ModelFileError: see `Classifier`.
    """

    def __init__(self, path: str):
        self.path = path
        content, self._interpreter = _load(path)
        inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        if set(inputs) != {"row", "state"} or set(outputs) != {"logits", "state"}:
            raise ModelFileError(
                f"{path}: not a kerasrnn streaming model (inputs "
                f"{sorted(inputs)}, outputs {sorted(outputs)}; expected "
                f"['row', 'state'] and ['logits', 'state'])"
            )
        self._row, self._state_in = inputs["row"], inputs["state"]
        self._state_out, self._logits = outputs["state"], outputs["logits"]
        self.initial_state = _initial_state(content, path)
        shapes = [list(d["shape"]) for d in (self._row, self._state_in, self._state_out)]
        state = [1, len(self.initial_state)]
        if len(shapes[0]) != 2 or shapes[0][0] != 1 or shapes[1:] != [state, state]:
            raise ModelFileError(
                f"{path}: damaged streaming model (row {shapes[0]}, state in {shapes[1]}, "
                f"state out {shapes[2]}, initial state {state})"
            )
        self.features = int(shapes[0][1])
        self.reset()

    def reset(self) -> None:
        """Starts a new sequence."""
        self.state = self.initial_state[None].copy()
        self.steps = 0

    def push(self, row) -> np.ndarray:
        """Feeds one row [features] (uint8 0-255 or float in [0, 1]).

        Returns:
            float32 logits [classes] after this row.

        Raises:
            InputError: the row is malformed.
            ModelFileError: LiteRT failed to run the model, or it computed non-finite logits.
        """
        x = _to_float(row)
        if x.shape != (self.features,):
            raise InputError(f"a row must have shape [{self.features}], got {list(x.shape)}")
        x = x[None]
        self._interpreter.set_tensor(self._row["index"], quantize(x, self._row))
        self._interpreter.set_tensor(self._state_in["index"], quantize(self.state, self._state_in))
        _invoke(self._interpreter, self.path)
        self.state = dequantize(
            self._interpreter.get_tensor(self._state_out["index"]), self._state_out
        )
        self.steps += 1
        logits = dequantize(self._interpreter.get_tensor(self._logits["index"]), self._logits)[0]
        return _check_finite(logits, self.path)
