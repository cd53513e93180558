"""Hostile names for the tests of every place a name reaches generated code: each one would
define `kerasrnn_injected` (a symbol) or `KERASRNN_INJECTED` (a macro), or swallow the next
line, if it reached a C or C++ source as code."""

import subprocess

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


def with_input_name(content: bytes, name: str) -> bytes:
    """A .tflite whose first input tensor is named `name`, sealed again with its digest."""
    model = flatbuffer.unpack(content)
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].name = name.encode()
    digest = [i for i, e in enumerate(model.metadata or []) if e.name == DIGEST_METADATA.encode()]
    model.metadata = [e for i, e in enumerate(model.metadata or []) if i not in digest]
    model.description = None
    return flatbuffer.seal(flatbuffer.pack(model))


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
