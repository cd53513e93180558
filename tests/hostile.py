"""Hostile names for the tests of every place a name reaches generated code: each one would
define `kerasrnn_injected` (a symbol) or `KERASRNN_INJECTED` (a macro), or swallow the next
line, if it reached a C or C++ source as code."""

import subprocess

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from kerasrnn.export import flatbuffer
from kerasrnn.export.integrity import DIGEST_METADATA

# Names a file may have (no NUL, no "/"): the end of a // comment, of a string; a line
# splice; shell and linker syntax; a Unicode line separator.
FILE_NAMES = (
    "m\n#define KERASRNN_INJECTED 1\nint kerasrnn_injected = 1;\n",
    'm"; int kerasrnn_injected = 1; const char* k = "',
    "m\\",
    "m$(touch kerasrnn_injected),-T,x",
    "m\u2028int kerasrnn_injected = 1;\u00e9",
)
# Names a tensor may have: those, and with a NUL or a "/" (the end of a /* */ comment, a
# trigraph splice).
TENSOR_NAMES = (
    *FILE_NAMES,
    "m\x00\nint kerasrnn_injected = 1;",
    "m\nint kerasrnn_injected = 1; //",
    "m */ int kerasrnn_injected = 1; /*",
    "m??/",
)


def drop_digest(model: schema.ModelT) -> None:
    """Removes kerasrnn's digest from a model's schema objects, as another tool writes it."""
    model.metadata = [e for e in model.metadata or [] if e.name != DIGEST_METADATA.encode()]
    model.description = None


def resealed(model: schema.ModelT) -> bytes:
    """An edited model's bytes with a freshly computed digest, as anyone can write one."""
    drop_digest(model)
    return flatbuffer.seal(flatbuffer.pack(model))


def with_input_name(content: bytes, name: str) -> bytes:
    """A .tflite whose first input tensor is named `name`, sealed again with its digest."""
    model = flatbuffer.unpack(content)
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].name = name.encode()
    return resealed(model)


def endless_loop(model: schema.ModelT) -> None:
    """Edits a WHILE-loop model so that its loop never ends: every int32 constant 1 added
    to a counter (the loop's step) becomes 0, so the counters never reach their limit."""
    for graph in model.subgraphs:
        for op in graph.operators:
            if flatbuffer.operator_name(model, op) != "ADD":
                continue
            for index in op.inputs:
                tensor = graph.tensors[index]
                data = model.buffers[tensor.buffer].data
                if tensor.type == schema.TensorType.INT32 and data is not None:
                    if np.frombuffer(bytes(data), np.int32).tolist() == [1]:
                        model.buffers[tensor.buffer].data = np.zeros(4, np.uint8)


def injected(objects: list[str], sources: list[str], include_dirs: list[str]) -> list[str]:
    """What of the payloads became code: `kerasrnn_injected` among the objects' symbols, or
    `KERASRNN_INJECTED` among the macros the sources define."""
    symbols = subprocess.run(["nm", *objects], capture_output=True, text=True, check=True)
    found = [line for line in symbols.stdout.splitlines() if "kerasrnn_injected" in line]
    for source in sources:
        macros = subprocess.run(
            ["g++", "-std=c++17", "-dM", "-E", *(f"-I{d}" for d in include_dirs), source],
            capture_output=True,
            text=True,
            check=True,
        )
        found += [line for line in macros.stdout.splitlines() if "KERASRNN_INJECTED" in line]
    return found
