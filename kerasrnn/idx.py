"""The IDX file format of MNIST: read, validate and write.

An IDX file is a big-endian header (two zero bytes, a type code, the number of
dimensions, then one uint32 per dimension) followed by the raw payload. MNIST uses
unsigned bytes (type code 0x08): images have magic number 2051 (3 dimensions,
[count, 28, 28]) and labels 2049 (1 dimension, [count]). Files may be gzipped.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np

from kerasrnn._io import atomic_write
from kerasrnn.errors import IdxError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UBYTE = 0x08


def _read_bytes(path: str) -> bytes:
    """Reads a file, transparently gunzipping it when it starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise IdxError(f"{path}: file not found") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise IdxError(f"{path}: corrupt gzip data ({e})") from None


def _parse(path: str, expected_magic: int) -> np.ndarray:
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxError(f"{path}: file is {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise IdxError(f"{path}: magic number {magic}, expected {expected_magic} for MNIST {kind}")
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxError(f"{path}: truncated header ({len(data)} of {header_len} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data[4:header_len], dtype=">u4"))
    expected = int(np.prod(dims))
    payload = len(data) - header_len
    if payload < expected:
        raise IdxError(
            f"{path}: truncated payload: header promises {expected} bytes "
            f"for shape {dims}, file holds {payload}"
        )
    if payload > expected:
        raise IdxError(
            f"{path}: oversized payload: {payload - expected} bytes beyond the "
            f"{expected} the header declares for shape {dims}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def read_images(path: str) -> np.ndarray:
    """Reads an MNIST-style image file.

    Args:
        path: an `*-images-idx3-ubyte` file, gzipped or not.

    Returns:
        uint8 array of shape [count, 28, 28].

    Raises:
        IdxError: wrong magic number, dimensions, or a truncated/oversized payload.
    """
    images = _parse(path, IMAGES_MAGIC)
    if images.shape[1:] != (28, 28):
        raise IdxError(f"{path}: image dimensions {images.shape[1:]}, expected (28, 28)")
    return images


def read_labels(path: str) -> np.ndarray:
    """Reads an MNIST-style label file.

    Args:
        path: an `*-labels-idx1-ubyte` file, gzipped or not.

    Returns:
        uint8 array of shape [count] with values 0-9.

    Raises:
        IdxError: wrong magic number, a bad payload, or labels outside 0-9.
    """
    labels = _parse(path, LABELS_MAGIC)
    bad = labels > 9
    if bad.any():
        first = int(np.argmax(bad))
        raise IdxError(
            f"{path}: label {int(labels[first])} at index {first} is outside 0-9 "
            f"({int(bad.sum())} bad labels)"
        )
    return labels


def read_pair(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads matching image and label files and checks that their counts agree.

    Returns:
        (images uint8 [n, 28, 28], labels uint8 [n]).
    """
    images, labels = read_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise IdxError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels: image/label count mismatch"
        )
    return images, labels


def encode(array: np.ndarray) -> bytes:
    """Encodes a uint8 array (1 dim: labels, 3 dims: images) as IDX bytes."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"IDX arrays must be uint8, got {array.dtype}")
    if array.ndim not in (1, 3):
        raise ValueError(f"IDX arrays must have 1 (labels) or 3 (images) dims, got {array.ndim}")
    header = bytes([0, 0, _UBYTE, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array).tobytes()


def write(path: str, array: np.ndarray) -> None:
    """Writes a uint8 array as an IDX file, gzipped when `path` ends in `.gz`.

    The write is atomic: a temporary file in the same folder is renamed into place.
    """
    data = encode(array)
    if path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write(path, data)
