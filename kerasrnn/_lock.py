"""The lock of an output folder: one writer at a time, and no lock outlives its process.

The lock is `fcntl.flock` on FOLDER/.lock, taken without waiting: a second writer is
refused at once, the message naming the holder's PID (which the holder writes into the
file). The kernel releases a flock when its process ends, however it ends (a crash,
kill -9), so a lock is never stale; the file stays behind and means nothing unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from kerasrnn.errors import RunFolderError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str, what: str) -> Iterator[None]:
    """Holds the lock of `folder` (created when missing) for the block.

    Args:
        folder: the folder that one process at a time writes.
        what: what the folder is, for the refusal: "run folder", "search folder".

    Raises:
        RunFolderError: another process holds the lock; the message names its PID.
    """
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            holder = f"process {pid}" if pid.isdigit() else "another process"
            raise RunFolderError(
                f"the {what} {folder} is in use by {holder}; wait for it to end, or "
                f"choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
