"""Atomic file writes: a reader never sees a half-written file, a failure leaves none.

A write goes to `.tmp-NAME` in the destination's folder, then `os.replace` moves it into
place. A kill in between leaves only that temporary, which `remove_temporaries` clears on
the next run of the folder. The name is predictable (fault-injection tests aim at it); a
second writer of the same file in the same moment gets a unique one instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from typing import Any

from kerasrnn.errors import ConfigError

TEMPORARY_PREFIX = ".tmp-"


def temporary_path(path: str) -> str:
    """Where `atomic_write` first writes `path`: `.tmp-NAME` beside it."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, TEMPORARY_PREFIX + name)


def _create_temporary(path: str) -> tuple[int, str]:
    """Creates an empty temporary file for `path`; its permissions follow the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tmp = temporary_path(path)
    try:
        return os.open(tmp, flags, 0o666), tmp
    except FileExistsError:  # another writer's, or one a kill left (removed on the next run)
        folder, name = os.path.split(os.path.abspath(path))
        tmp = os.path.join(folder, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}-{name}")
        return os.open(tmp, flags, 0o666), tmp


def atomic_write(path: str, data: bytes | str | Callable[[str], None]) -> None:
    """Writes `path` atomically (temporary file in the same folder, then `os.replace`).

    The file is created with mode 0o666 less the umask, like any `open(path, "w")`.

    Args:
        path: destination file; its folder is created when missing.
        data: bytes or text to write, or a callable that writes a file at the
            temporary path it is given (for writers such as `model.save`). The
            temporary keeps the destination's extension (Keras checks it).
    """
    if not callable(data):
        atomic_write_all({path: data})
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = _create_temporary(path)
    os.close(fd)
    try:
        data(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_all(files: dict[str, bytes | str]) -> None:
    """Writes files that belong together (a C array's header and source): every one to its
    temporary first, then each moved into place, so that a failure while writing (a full
    disk) leaves every file as it was. A kill between two moves can still leave the new
    first file beside the old second: readers of such a set must check that its files
    match (a C array's do, at compile time).

    Args:
        files: destination path -> bytes or text, in the order they are moved into place.
    """
    temporaries = {}
    try:
        for path, data in files.items():
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fd, temporaries[path] = _create_temporary(path)
            with os.fdopen(fd, "w" if isinstance(data, str) else "wb") as f:
                f.write(data)
        for path, tmp in temporaries.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in temporaries.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def not_a_file(path: str) -> str | None:
    """What `path` is when it is not a regular file (a link is never followed).

    Returns:
        None for a regular file or a missing path, else "a symbolic link", "a folder" or
        "a device, pipe or socket".
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"


def check_replaceable(path: str, kind: str, is_own: Callable[[str], bool]) -> None:
    """Refuses to replace anything but kerasrnn's own output of one kind.

    Args:
        path: the file a writer is about to replace.
        kind: what the writer writes, for the message (e.g. "a .tflite").
        is_own: whether the regular file at a path is kerasrnn's `kind` (checks its
            contents, never its name).

    Raises:
        ConfigError: `path` exists and is not a regular file, or `is_own` rejects it.
    """
    if not os.path.lexists(path):
        return
    other = not_a_file(path)
    if other is None and is_own(path):
        return
    raise ConfigError(
        f"{path} exists and is {other or f'not {kind} that kerasrnn wrote'}: it is never "
        f"replaced; remove it or choose another --out"
    )


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_temporaries(*folders: str) -> list[str]:
    """Removes the `.tmp-*` files and folders that killed writers left in `folders`.

    Only the folders' own entries are looked at, not their sub-folders: callers name the
    folders they write into. Call it only while no other process writes there.

    Args:
        *folders: folders (missing ones are skipped).

    Returns:
        The paths removed.
    """
    removed = []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            if entry.name.startswith(TEMPORARY_PREFIX):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.path)
    return removed
