"""Whether a model file can be believed: its SHA-256 digest, a structural check made
without the interpreter, and a first load in a child process (NumPy, ai_edge_litert's
schema and the standard library only, like the device runtime that uses it).

Every file `kerasrnn.export` writes carries its SHA-256 in its metadata (`DIGEST_METADATA`),
verified on load: a damaged file is refused, naming it. The digest detects damage, not
tampering (whoever can change a file can write a new digest into it), so every file, with
a digest or without, is also checked (`check_model`) and then loaded once in a child
process (`probe`), since LiteRT aborts or hangs the whole process on some crafted files:
`read_checked` does all three.
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

from kerasrnn.errors import ModelFileError

# The metadata entry that holds a file's SHA-256 (64 hex digits), taken over the whole
# file with this entry's digits zeroed. The file's description names the entry too, so a
# file whose entry was damaged is still known to have had one.
DIGEST_METADATA = "kerasrnn.sha256"
DIGEST_SIZE = 64

# What the flatbuffer reader raises on a malformed file (offsets out of the file, vectors
# longer than it, bytes that are not UTF-8 where names belong).
MALFORMED = (IndexError, OverflowError, TypeError, ValueError, struct.error)
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
# A child process that loads and runs a file once with LiteRT's builtin kernels, then with
# its XNNPACK delegate, as `check_loads` does, saying which ran (see `probe`).
_PROBE = (
    "import sys; from kerasrnn.export.runtime import check_loads; "
    "content = sys.stdin.buffer.read(); "
    "check_loads(content, 'builtin'); print('builtin', flush=True); "
    "check_loads(content, 'xnnpack'); print('xnnpack', flush=True)"
)
_PROBE_TIMEOUT_S = 60
# The largest file `read_model_file` reads (2 GiB is TFLite's own limit).
MAX_MODEL_BYTES = 256 * 1024 * 1024
# The SHA-256 of every file content that passed `check_model` and `probe` in this process
# -> why XNNPACK cannot run it, or None where it ran (see `xnnpack_failure`).
_CHECKED: dict[bytes, str | None] = {}

logger = logging.getLogger(__name__)


def digest_span(content: bytes) -> slice | None:
    """Where a file's digest lies: the data of the buffer its `DIGEST_METADATA` entry names.

    Returns:
        The slice of `content` that holds the digest, or None when it has no such entry.

    Raises:
        ValueError: the entry is repeated, or names no `DIGEST_SIZE`-byte buffer in the file
            (the reader raises one of `MALFORMED` on a malformed flatbuffer).
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
    except MALFORMED as e:
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


def read_model_file(path: str) -> bytes:
    """A model file's bytes, read only once its size and first 8 bytes look like a TFLite
    file (a huge or foreign file is refused before it is read).

    Raises:
        ModelFileError: the file is missing, not a regular file, larger than
            `MAX_MODEL_BYTES`, too short, or not TFLite.
    """
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = f.read(8)
        if len(header) < 8:
            raise ModelFileError(f"{path}: {len(header)} bytes is too short for a TFLite model")
        if header[4:8] != b"TFL3":
            raise ModelFileError(
                f"{path}: not a TFLite model (file identifier {header[4:8]!r}, expected b'TFL3')"
            )
        if size <= MAX_MODEL_BYTES:  # read at most one byte more, should it grow meanwhile
            content = header + f.read(MAX_MODEL_BYTES + 1 - len(header))
            size = len(content)
    if size > MAX_MODEL_BYTES:
        raise ModelFileError(
            f"{path}: {size:,} bytes is larger than the {MAX_MODEL_BYTES:,} this runtime "
            f"reads (its classifiers are kilobytes to megabytes)"
        )
    return content


def is_sealed_model(path: str) -> bool:
    """Whether a file is a TFLite model that carries a kerasrnn digest entry (whatever
    its digest's value): a file `kerasrnn export` may replace."""
    try:
        return digest_span(read_model_file(path)) is not None
    except (ModelFileError, *MALFORMED):
        return False


def read_checked(path: str) -> tuple[bytes, str | None]:
    """Reads a model file that may come from anyone, and checks it all: its digest
    (`verify_digest`), its structure (`check_model`) and a first load and run in a child
    process (`probe`), whether or not it carries a digest.

    The digest is public (anyone can write one), so it only tells a damaged kerasrnn file
    from an intact one; it never stands in for the other checks. A file already checked
    by this process (the same bytes) is not probed again.

    Args:
        path: the .tflite file.

    Returns:
        (its bytes, its digest or None when it carries none, which is logged once).

    Raises:
        ModelFileError: naming the file and the first check it fails.
    """
    content = read_model_file(path)
    digest = verify_digest(content, path)
    if digest is None:
        logger.warning(
            "%s carries no kerasrnn digest, so changes to it cannot be detected "
            "(files from `kerasrnn export` carry one)",
            path,
        )
    xnnpack_failure(content, path)
    return content, digest


def xnnpack_failure(content: bytes, path: str) -> str | None:
    """Why LiteRT's XNNPACK delegate cannot run a model, or None where it ran: checks the
    model (`check_model`) and probes it in a child (`probe`) once per content and process.

    Raises:
        ModelFileError: the model fails the structural check, or LiteRT's builtin kernels
            cannot load and run it.
    """
    key = hashlib.sha256(content).digest()
    if key not in _CHECKED:
        try:
            check_model(schema.ModelT.InitFromPackedBuf(content, 0), len(content))
        except MALFORMED as e:
            raise ModelFileError(f"{path}: invalid or truncated TFLite model ({e})") from None
        _CHECKED[key] = probe(content, path)
    return _CHECKED[key]


def probe(content: bytes, path: str) -> str | None:
    """Loads and runs a model once in a child process, where a LiteRT abort costs nothing:
    with LiteRT's builtin kernels, then with its XNNPACK delegate.

    Returns:
        None where XNNPACK ran it too, else why not (one line: the error, or the signal
        that ended the child).

    Raises:
        ModelFileError: the builtin kernels failed, crashed or hung on it.
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
    except subprocess.TimeoutExpired as e:
        if b"builtin" in (e.stdout or b"").split():
            return f"it did not load and run within {_PROBE_TIMEOUT_S} s"
        raise ModelFileError(
            f"{path}: LiteRT did not load and run it within {_PROBE_TIMEOUT_S} s"
        ) from None
    ran = child.stdout.split()
    if child.returncode < 0:
        ending = f"signal {-child.returncode}: {signal.strsignal(-child.returncode)}"
        if b"builtin" in ran:
            return f"it crashed LiteRT ({ending})"
        raise ModelFileError(f"{path}: invalid TFLite model: LiteRT crashed on it ({ending})")
    lines = child.stderr.decode(errors="replace").strip().splitlines()
    if b"builtin" not in ran:
        raise ModelFileError(f"{path}: invalid TFLite model ({lines[-1] if lines else ''})")
    if b"xnnpack" not in ran:
        return lines[-1] if lines else f"the check ended with status {child.returncode}"
    return None
