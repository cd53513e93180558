"""Work that may crash or hang the process (the TFLite converter, TFLM) runs in a child
process, which sends its result back as JSON on a pipe: the parent reads data, never stderr
text, and kills a child that outlives its wall-clock limit.

    parent: status, result = run_child("kerasrnn.export.micro", [path, folder], timeout_s=60)
    child:  sys.exit(child_main(_child, sys.argv[1:]))   # its last argument is the pipe
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable


class ChildTimeout(TimeoutError):
    """A child process ran past its wall-clock limit and was killed.

    Attributes:
        timeout_s: the limit, in seconds.
    """

    def __init__(self, timeout_s: float):
        super().__init__(f"it did not finish within {timeout_s:g} s and was stopped")
        self.timeout_s = timeout_s


def run_child(
    module: str, args: list[str], *, timeout_s: float, env: dict | None = None
) -> tuple[int, dict | None]:
    """Runs `python -m module *args PIPE_FD` and reads the JSON the child sends.

    Args:
        module: a module whose `__main__` calls `child_main`.
        args: its arguments (strings), before the pipe's file descriptor.
        timeout_s: the child's wall-clock limit, in seconds.
        env: the child's environment (default: this process's).

    Returns:
        (the child's exit status, negative for a signal; its result, or None when it sent
        none, as when it crashed).

    Raises:
        ChildTimeout: the child ran past `timeout_s`; it was killed.
    """
    deadline = time.monotonic() + timeout_s
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", module, *args, str(write_end)],
            pass_fds=(write_end,),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = _read_until(pipe, deadline)
    try:
        if message is None:
            raise subprocess.TimeoutExpired(module, timeout_s)
        # a child that closed its pipe has finished its work: it gets a moment to exit
        status = child.wait(timeout=max(_EXIT_GRACE_S, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise ChildTimeout(timeout_s) from None
    return status, json.loads(message) if message else None


# How long a child that sent its result may take to exit, past its limit.
_EXIT_GRACE_S = 10.0


def _read_until(pipe, deadline: float) -> bytes | None:
    """Everything written to `pipe` until its writer closes it, or None at `deadline`
    (`time.monotonic()` seconds)."""
    message = bytearray()
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([pipe], [], [], remaining)[0]:
            break
        chunk = os.read(pipe.fileno(), 1 << 16)
        if not chunk:
            return bytes(message)
        message += chunk
    return None


def child_main(function: Callable[..., dict], argv: list[str]) -> int:
    """The child's side: runs `function(*argv[:-1])` and sends its result, or
    {"error": "Type: last line of the message"}, as JSON on the descriptor `argv[-1]`.

    Returns:
        The exit status: 0, or 1 after an error.
    """
    try:
        result, status = function(*argv[:-1]), 0
    except Exception as e:  # noqa: BLE001 - every failure goes back to the parent as data
        detail = str(e).strip().splitlines()
        result = {"error": f"{type(e).__name__}: {detail[-1] if detail else ''}".rstrip(": ")}
        status = 1
    with os.fdopen(int(argv[-1]), "w") as pipe:
        json.dump(result, pipe)
    return status
