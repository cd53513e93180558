"""The IDX file format of MNIST: read, validate and write.

An IDX file is a big-endian header (two zero bytes, a type code, the number of
dimensions, then one uint32 per dimension) followed by the raw payload. MNIST uses
unsigned bytes (type code 0x08): images have magic number 2051 (3 dimensions,
[count, 28, 28]) and labels 2049 (1 dimension, [count]). Files may be gzipped.
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import zlib
from typing import BinaryIO

import numpy as np

from kerasrnn._io import atomic_write
from kerasrnn.errors import IdxError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UBYTE = 0x08
_CHUNK = 1 << 24  # payloads are read in pieces of 16 MiB
_DEFLATE_MAX_RATIO = 1032  # no deflate stream inflates more than this


def _open_file(path: str) -> BinaryIO:
    """Opens a regular file for reading, refusing devices, FIFOs and folders unread.

    The open does not block (a FIFO would wait for a writer); the type is checked on the
    opened file, so a symlink is judged by what it points to.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise IdxError(f"{path}: file not found") from None
    except OSError as e:
        raise IdxError(f"{path}: cannot be read ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
        raise IdxError(f"{path}: not a regular file ({kind}); give the path of an IDX file")
    return os.fdopen(fd, "rb")


def _read_header(path: str, f: BinaryIO, expected_magic: int) -> tuple[int, ...]:
    """Reads and checks the magic number and the dimensions.

    Returns:
        The declared shape.
    """
    head = f.read(4)
    if len(head) < 4:
        raise IdxError(f"{path}: file is {len(head)} bytes, too short for an IDX header")
    magic = int.from_bytes(head, "big")
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise IdxError(f"{path}: magic number {magic}, expected {expected_magic} for MNIST {kind}")
    ndim = head[3]  # 1 or 3: the magic number was checked
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise IdxError(f"{path}: truncated header ({4 + len(dims)} of {4 + 4 * ndim} bytes)")
    return tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4))


def _payload_error(path: str, dims: tuple[int, ...], declared: int, held: int) -> IdxError:
    """The error for a payload of `held` bytes where the header declares `declared`."""
    if held < declared:
        return IdxError(
            f"{path}: truncated payload: header promises {declared:,} bytes "
            f"for shape {dims}, file holds {held:,}"
        )
    return IdxError(
        f"{path}: oversized payload: {held - declared:,} bytes beyond the "
        f"{declared:,} the header declares for shape {dims}"
    )


def _parse(path: str, expected_magic: int) -> np.ndarray:
    """Reads an IDX file, checking every declared size before reading the payload.

    A plain file's payload size is known from the file system; a gzipped payload is
    decompressed up to the declared size plus one byte, so a gzip bomb costs no more
    memory than the file claims to hold, and memory follows the data actually read.
    """
    with _open_file(path) as f:
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f) if gzipped else f
        file_size = os.fstat(f.fileno()).st_size
        try:
            dims = _read_header(path, stream, expected_magic)
            declared = math.prod(dims)  # Python integers: no overflow
            if not gzipped and file_size - 4 - 4 * len(dims) != declared:
                raise _payload_error(path, dims, declared, file_size - 4 - 4 * len(dims))
            if gzipped and declared > _DEFLATE_MAX_RATIO * file_size:
                raise IdxError(
                    f"{path}: truncated payload: header promises {declared:,} bytes for "
                    f"shape {dims}, more than a gzip file of {file_size:,} bytes can hold"
                )
            payload = bytearray()
            while len(payload) <= declared:
                chunk = stream.read(min(_CHUNK, declared + 1 - len(payload)))
                if not chunk:
                    break
                payload += chunk
        except (OSError, EOFError, zlib.error) as e:
            problem = "corrupt gzip data" if gzipped else "read error"
            raise IdxError(f"{path}: {problem} ({e})") from None
    if len(payload) > declared:
        raise IdxError(
            f"{path}: oversized payload: the gzip data holds more than the {declared:,} "
            f"bytes the header declares for shape {dims}"
        )
    if len(payload) < declared:
        raise _payload_error(path, dims, declared, len(payload))
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


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
