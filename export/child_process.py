"""Work that may crash the process (the TFLite converter, TFLM) runs in a child process,
which sends its result back as JSON on a pipe: the parent reads data, never stderr text.

    parent: status, result = run_child("kerasrnn.export.micro", [path, folder])
    child:  sys.exit(child_main(_child, sys.argv[1:]))   # its last argument is the pipe
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable


def run_child(module: str, args: list[str], env: dict | None = None) -> tuple[int, dict | None]:
    """Runs `python -m module *args PIPE_FD` and reads the JSON the child sends.

    Args:
        module: a module whose `__main__` calls `child_main`.
        args: its arguments (strings), before the pipe's file descriptor.
        env: the child's environment (default: this process's).

    Returns:
        (the child's exit status, negative for a signal; its result, or None when it sent
        none, as when it crashed).
    """
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
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    status = child.wait()
    return status, json.loads(message) if message else None


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
