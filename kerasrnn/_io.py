"""Atomic file writes: a reader never sees a half-written file, a failure leaves none."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any


def atomic_write(path: str, data: bytes | str | Callable[[str], None]) -> None:
    """Writes `path` atomically (temporary file in the same folder, then `os.replace`).

    Args:
        path: destination file; its folder is created when missing.
        data: bytes or text to write, or a callable that writes a file at the
            temporary path it is given (for writers such as `model.save`).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]  # some writers (Keras) check the extension
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            mode = "w" if isinstance(data, str) else "wb"
            with os.fdopen(fd, mode) as f:
                f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
