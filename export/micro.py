"""TensorFlow Lite Micro: run a model in the real microcontroller interpreter, size its
arena, and write the C source array that firmware projects compile in (`NAME.h/.cc`, named
after the .tflite, the header documenting the arena, operators, quantization and state).

`tflite-micro` (PyPI) wraps TFLM's C++ interpreter. It aborts or crashes the whole process
on some errors (an unsupported op, a fused LSTM in too small an arena), so models run in a
child process, which sends its result back as JSON on a pipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import tempfile
import urllib.parse

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from tflite_micro.python.tflite_micro import runtime as tflm

from kerasrnn._io import atomic_write_all, not_a_file, temporary_path
from kerasrnn.errors import ConfigError, MicroError, ModelFileError
from kerasrnn.export import c_text, flatbuffer
from kerasrnn.export.child_process import ChildTimeout, child_main, run_child
from kerasrnn.export.integrity import read_checked
from kerasrnn.export.runtime import INITIAL_STATE_METADATA, dequantize, quantize

# TFLM's report of what it allocated: the Python wrapper gives it only as text.
_ARENA_REPORT = re.compile(rb"Arena allocation total (\d+) bytes")
# The first arena tried, and the largest: too small an arena fails to allocate (and a
# fused LSTM may crash in it), so the first is generous and doubles while it fails.
_LARGEST_ARENA = 64 * 1024 * 1024
# A TFLM child's wall-clock limit: this many seconds, and one more per image (a 784-step
# model takes well under a second per image), so only a model that hangs (a WHILE loop
# that never ends) meets it.
CHILD_SECONDS = 60.0
CHILD_SECONDS_PER_IMAGE = 1.0


@dataclasses.dataclass(frozen=True)
class MicroResult:
    """Outputs of a TFLM run.

    Attributes:
        logits: float32 [n, classes] (dequantized for int8 models).
        arena_bytes: the tensor arena TFLM allocated for this model.
    """

    logits: np.ndarray
    arena_bytes: int


def run_micro(tflite_path: str, images: np.ndarray) -> MicroResult:
    """Runs a batch-1 classifier in TensorFlow Lite Micro, one image at a time.

    Args:
        tflite_path: a .tflite with a static batch of 1 (`to_tflite(batch_size=1)`).
        images: float32 [n, steps, features] in [0, 1].

    Returns:
        A `MicroResult`.

    Raises:
        MicroError: TFLM rejected or crashed on the model (the message says which).
    """
    images = np.asarray(images, np.float32)
    with tempfile.TemporaryDirectory(prefix="kerasrnn-micro-") as tmp:
        np.save(os.path.join(tmp, "images.npy"), images)
        try:
            status, result = run_child(
                "kerasrnn.export.micro",
                [os.path.abspath(tflite_path), tmp],
                timeout_s=child_time_limit(len(images)),
            )
        except ChildTimeout as e:
            raise MicroError(f"TensorFlow Lite Micro hung on {tflite_path}: {e}") from None
        if result is None:
            raise MicroError(
                f"TensorFlow Lite Micro crashed on {tflite_path} (status "
                f"{status}): an operator it lacks, or a damaged file"
            )
        if "error" in result:
            raise MicroError(f"TensorFlow Lite Micro failed on {tflite_path}: {result['error']}")
        logits = np.load(os.path.join(tmp, "logits.npy"))
    return MicroResult(logits, result["arena_bytes"])


def child_time_limit(images: int) -> float:
    """The wall-clock limit of a TFLM child that runs `images` images (see `CHILD_SECONDS`)."""
    return CHILD_SECONDS + CHILD_SECONDS_PER_IMAGE * images


def _detail(tflm_detail: dict) -> dict:
    """TFLM's tensor details in the form the runtime's `quantize`/`dequantize` take."""
    params = tflm_detail["quantization_parameters"]
    scale = float(params["scales"][0]) if len(params["scales"]) else 0.0
    zero_point = int(params["zero_points"][0]) if len(params["zero_points"]) else 0
    return {"dtype": tflm_detail["dtype"], "quantization": (scale, zero_point)}


def allocate(content: bytes, arena: int | None = None) -> tflm.Interpreter:
    """An interpreter whose arena fits the model: `arena` (default 16 x the file + 64 KB),
    doubled while TFLM fails to allocate (784-step models need more than that guess).

    Raises:
        RuntimeError: it does not fit in `_LARGEST_ARENA`.
    """
    arena = arena or 16 * len(content) + 65536
    while True:
        try:
            return tflm.Interpreter.from_bytes(content, arena_size=arena)
        except RuntimeError:  # "TFLM failed to allocate tensors"
            if arena >= _LARGEST_ARENA:
                raise RuntimeError(
                    f"the model does not fit in a {_LARGEST_ARENA:,}-byte arena"
                ) from None
            arena *= 2


def arena_used(interpreter: tflm.Interpreter) -> int:
    """The bytes of arena TFLM allocated, read from its allocation report (which the
    interpreter writes to this process's stdout or stderr)."""
    with tempfile.TemporaryFile() as report:
        saved = os.dup(1), os.dup(2)
        os.dup2(report.fileno(), 1)
        os.dup2(report.fileno(), 2)
        try:
            interpreter.print_allocations()
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        report.seek(0)
        found = _ARENA_REPORT.search(report.read())
    if found is None:
        raise RuntimeError("TFLM printed no arena allocation report")
    return int(found.group(1))


def _child(model_path: str, folder: str) -> dict:
    """The child process: allocate, measure the arena, then run every image in TFLM."""
    with open(model_path, "rb") as f:
        content = f.read()
    interpreter = allocate(content)
    arena = arena_used(interpreter)
    inp, out = (
        _detail(interpreter.get_input_details(0)),
        _detail(interpreter.get_output_details(0)),
    )
    raw = []
    for image in np.load(os.path.join(folder, "images.npy")):
        interpreter.reset()  # variable tensors (a fused LSTM's state) back to zero
        interpreter.set_input(quantize(image[None], inp), 0)
        interpreter.invoke()
        raw.append(interpreter.get_output(0)[0].copy())
    np.save(os.path.join(folder, "logits.npy"), dequantize(np.array(raw), out))
    return {"arena_bytes": arena}


def measure_arena(tflite_path: str) -> int:
    """The bytes of tensor arena TFLM allocates for a batch-1 model (loaded in a child).

    Raises:
        MicroError: TFLM rejected or crashed on the model.
    """
    return run_micro(tflite_path, np.empty((0, 0, 0), np.float32)).arena_bytes


def c_array_paths(
    tflite_path: str, out_dir: str | None = None, stem: str | None = None
) -> tuple[str, str]:
    """(header, source) of a file's C array: `STEM.h` and `STEM.cc` in `out_dir`.

    Args:
        tflite_path: the .tflite file.
        out_dir: their folder (default: the file's).
        stem: their name without extension (default: the file's, "m.step.tflite" ->
            "m.step"), so that every file of a folder gets its own pair.

    Raises:
        ConfigError: the header's name cannot be #included (see `c_text.include_name`).
    """
    folder = os.path.dirname(os.path.abspath(tflite_path)) if out_dir is None else out_dir
    stem = stem or os.path.splitext(os.path.basename(tflite_path))[0]
    try:
        c_text.include_name(f"{stem}.h")
    except ValueError as e:
        raise ConfigError(f"no C array for {tflite_path}: its header {e}") from None
    return os.path.join(folder, f"{stem}.h"), os.path.join(folder, f"{stem}.cc")


_GENERATED_FROM = "// Generated by kerasrnn from "


def _generated_from(tflite_path: str) -> str:
    """The first line of a C array's files: the file they hold, by name (its
    `c_text.comment` form)."""
    return f"{_GENERATED_FROM}{c_text.comment(os.path.basename(tflite_path))}."


def check_c_array_replaceable(
    tflite_path: str, out_dir: str | None = None, stem: str | None = None
) -> None:
    """Refuses to replace anything but this file's own C array (see `write_c_array`).

    A new export of the same .tflite name replaces its C array, as it replaces the file,
    also when a kill left one of the pair new and the other old.

    Raises:
        ConfigError: a C array path holds another file's C array, a file kerasrnn did
            not write, or a link, folder or device.
    """
    expected = _generated_from(tflite_path)
    for path in c_array_paths(tflite_path, out_dir, stem):
        if not os.path.lexists(path):
            continue
        other = not_a_file(path)
        first = ""
        if other is None:
            with open(path, errors="replace") as f:
                first = f.readline(500).rstrip("\n")
        if first == expected:
            continue
        if other is not None:
            holds = f"is {other}"
        elif first.startswith(_GENERATED_FROM):
            holds = (
                f"holds the C array of {urllib.parse.unquote(first[len(_GENERATED_FROM) : -1])!r}"
            )
        else:
            holds = "was not written by kerasrnn"
        raise ConfigError(
            f"{path} exists and {holds}: it is never replaced by the C array of "
            f"{os.path.basename(tflite_path)}; remove it, or export under another name"
        )


def write_c_array(
    tflite_path: str,
    out_dir: str | None = None,
    name: str | None = None,
    *,
    stem: str | None = None,
    arena_bytes: int | None = None,
    overwrite: bool = False,
) -> tuple[str, str]:
    """Writes the model as a C array, `STEM.h` and `STEM.cc`, for firmware to compile in.

    The array is 16-byte aligned, as TFLM requires, and named `name` with its length in
    `{name}_len`. The header documents what firmware needs (its macros start `{NAME}_`):
    the file's SHA-256 digest when it has one (see `integrity.verify_digest`), the tensor
    arena TFLM allocated for it, its operators as a `MicroMutableOpResolver` snippet, the
    type, shape and quantization of every input and output, its variable tensors, and for
    a streaming step model its initial state (`{name}_initial_state`, defined in the
    source) and how to carry the state from row to row.

    Args:
        tflite_path: a batch-1 .tflite that TFLM runs (float32 or int8).
        out_dir: the folder of the two files (default: the file's).
        name: the array's C name (default: the file's name as `xxd -i` makes it,
            "elman64_int8.tflite" -> `elman64_int8_tflite`).
        stem: the two files' name (default: the file's, see `c_array_paths`).
        arena_bytes: the arena TFLM allocated for this file when already measured
            (`run_micro`); None measures it.
        overwrite: replace whatever the two paths hold; by default only this file's own
            C array is replaced (see `check_c_array_replaceable`).

    Returns:
        (header path, source path).

    Raises:
        ValueError: `name` is not a C identifier.
        ConfigError: a path holds something else, and `overwrite` is False.
        ModelFileError: the file fails its checks (`integrity.read_checked`).
        MicroError: TFLM cannot run the file.
    """
    name = name or c_text.identifier(os.path.basename(tflite_path))
    if not re.fullmatch(r"[A-Za-z_]\w*", name, re.ASCII):
        raise ValueError(f"name must be a C identifier, got {name!r}")
    if not overwrite:
        check_c_array_replaceable(tflite_path, out_dir, stem)
    content, digest = read_checked(tflite_path)
    if arena_bytes is None:
        try:
            arena_bytes = measure_arena(tflite_path)
        except MicroError as e:
            raise MicroError(f"{e}; a C array is for TFLM, so none was written") from None
    paths = c_array_paths(tflite_path, out_dir, stem)
    described = _describe(tflite_path, content, name)
    for path in paths:  # what a kill inside an earlier write of this pair left
        if os.path.isfile(temporary_path(path)):
            os.remove(temporary_path(path))
    atomic_write_all(
        {
            paths[1]: _source(tflite_path, content, name, paths[0], described),
            paths[0]: _header(tflite_path, content, name, digest, arena_bytes, described),
        }
    )
    return paths


@dataclasses.dataclass(frozen=True)
class _Described:
    """What a C header says of a model: see `_describe`."""

    operators: list[str]
    tensors: list[str]  # comment lines, one per input and output
    macros: list[str]  # their quantization
    variable_tensors: int
    stream: dict | None  # a step model's state: its input, output and initial values


def _describe(tflite_path: str, content: bytes, name: str) -> _Described:
    """The model's operators, interface and state, read from its flatbuffer."""
    model, macro = flatbuffer.unpack(content), name.upper()
    graph = model.subgraphs[0]
    tensors, macros, names = [], [], {}
    for kind, indices in (("input", graph.inputs), ("output", graph.outputs)):
        names[kind] = [_text(graph.tensors[i].name) for i in indices]
        for position, index in enumerate(indices):
            tensor = graph.tensors[index]
            dtype = _TENSOR_TYPES.get(tensor.type, f"TensorType {tensor.type}")
            line = (
                f'{kind} {position} "{c_text.comment(names[kind][position])}": '
                f"{dtype} {[int(d) for d in tensor.shape]}"
            )
            q = tensor.quantization
            if q is None or q.scale is None or not len(q.scale):
                tensors.append(f"{line}, not quantized")
                continue
            scale, zero_point = np.float32(q.scale[0]), int(q.zeroPoint[0])
            tensors.append(f"{line}, scale {scale:.9g}, zero point {zero_point}")
            prefix = f"{macro}_{kind.upper()}{position}"
            macros += [
                f"#define {prefix}_SCALE {_c_float(scale)}",
                f"#define {prefix}_ZERO_POINT ({zero_point})",
            ]
    stream = None
    for entry in model.metadata or ():
        if _text(entry.name) != INITIAL_STATE_METADATA:
            continue
        if sorted(names["input"]) != ["row", "state"] or sorted(names["output"]) != [
            "logits",
            "state",
        ]:
            raise ModelFileError(
                f"{tflite_path}: has an initial state but not a streaming model's "
                f"inputs and outputs (row, state -> logits, state)"
            )
        stream = {
            "initial": np.asarray(model.buffers[entry.buffer].data, np.uint8).view(np.float32),
            "row": names["input"].index("row"),
            "state_in": names["input"].index("state"),
            "state_out": names["output"].index("state"),
            "logits": names["output"].index("logits"),
        }
    return _Described(
        operators=flatbuffer.operators(content),
        tensors=tensors,
        macros=macros,
        variable_tensors=sum(t.isVariable for g in model.subgraphs for t in g.tensors),
        stream=stream,
    )


# LiteRT's TensorType values -> names ("INT8" -> "int8").
_TENSOR_TYPES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
# TFLM's MicroMutableOpResolver methods that are not the op's name in CamelCase.
_RESOLVER_METHODS = {
    "BATCH_MATMUL": "AddBatchMatMul",
    "CUMSUM": "AddCumSum",
    "PADV2": "AddPadV2",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
}


def resolver_method(operator: str) -> str:
    """The `tflite::MicroMutableOpResolver` method that registers a builtin operator:
    "FULLY_CONNECTED" -> "AddFullyConnected", "CONV_2D" -> "AddConv2D"."""
    if operator in _RESOLVER_METHODS:
        return _RESOLVER_METHODS[operator]
    words = [
        word.upper() if re.fullmatch(r"\d+D", word) else word.capitalize()
        for word in operator.split("_")
    ]
    return "Add" + "".join(words)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""


def _c_float(value) -> str:
    """A float32 as a C literal that reads back to the same float32."""
    text = f"{float(value):.9g}"
    return text + ("" if any(c in text for c in ".en") else ".0") + "f"


def _pair_id(content: bytes) -> str:
    """What ties a C array's header to its source: the first 32 bits of the file's SHA-256,
    as a C literal."""
    return f"0x{hashlib.sha256(content).hexdigest()[:8]}u"


def _header(
    tflite_path: str, content: bytes, name: str, digest: str | None, arena: int, model: _Described
) -> str:
    """The C header: the array's declarations and what firmware needs to run it."""
    macro = name.upper()
    guard = f"KERASRNN_{macro}_H_"
    lines = [
        _generated_from(tflite_path),
        f"// The model as a 16-byte aligned C array ({len(content):,} bytes) for TensorFlow Lite",
        "// Micro, and what firmware needs to run it.",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "// The header and source of one export: the source checks it at compile time.",
        f"#define {macro}_PAIR {_pair_id(content)}",
        "",
    ]
    if digest is None:
        lines += ["// It carries no kerasrnn digest."]
    else:
        # verified: the 64 hex digits that the content hashes to
        lines += [
            f"// SHA-256: {digest}",
            f"#define {macro}_SHA256 {c_text.string_literal(digest)}",
        ]
    lines += [
        "",
        f"// Tensor arena: TensorFlow Lite Micro allocated {arena:,} bytes for this model",
        "// (tflite-micro on the host). AllocateTensors may need some scratch beyond it: give",
        "// the arena up to twice this, then trim it to the target's",
        "// MicroInterpreter::arena_used_bytes() plus a margin.",
        f"#define {macro}_ARENA_BYTES {arena}",
        "",
        f"// Operators: the model's {len(model.operators)}, for a resolver that links only their"
        " kernels:",
        f"//   static tflite::MicroMutableOpResolver<{len(model.operators)}> resolver;",
        *(f"//   resolver.{resolver_method(op)}();" for op in model.operators),
        "// or the same in one expression, true when all were added:",
        f"//   {macro}_ADD_OPERATORS(resolver)",
        f"#define {macro}_OPERATOR_COUNT {len(model.operators)}",
        f"#define {macro}_ADD_OPERATORS(resolver) \\",
        "  ("
        + " && \\\n   ".join(
            f"(resolver).{resolver_method(op)}() == kTfLiteOk" for op in model.operators
        )
        + ")",
        "",
        "// Inputs and outputs (a quantized tensor holds q = real / scale + zero_point):",
        *(f"//   {line}" for line in model.tensors),
        *model.macros,
        "",
    ]
    if model.variable_tensors:
        lines += [
            f"// Variable tensors: {model.variable_tensors}. They keep their values from one"
            " Invoke()",
            "// to the next (a fused LSTM's state): firmware must reset them before each new",
            "// sequence, with MicroInterpreter::Reset().",
        ]
    else:
        lines += ["// No variable tensors: Invoke() keeps no state from one call to the next."]
    lines.append(f"#define {macro}_VARIABLE_TENSORS {model.variable_tensors}")
    if model.stream:
        s = model.stream
        lines += [
            "",
            "// Streaming: one row per Invoke(), the recurrent state carried by firmware. Before",
            f'// each new sequence, reset the state: set input {s["state_in"]} "state" to'
            f" {name}_initial_state",
            '// (the learnable h0, from the file\'s metadata "kerasrnn.initial_state"), quantized',
            f"// with that input's scale and zero point. Then for each row: set input {s['row']}"
            ' "row",',
            f'// Invoke(), and give output {s["state_out"]} "state" back as the next state input',
            "// (dequantize, then quantize: the two have their own scales). After the last row,",
            f'// output {s["logits"]} "logits" holds the sequence\'s logits.',
            f"#define {macro}_STATE_SIZE {len(s['initial'])}",
            f"extern const float {name}_initial_state[{macro}_STATE_SIZE];",
        ]
    lines += [
        "",
        f"extern const unsigned char {name}[];",
        f"extern const unsigned int {name}_len;",
        "",
        f"#endif  // {guard}",
    ]
    return "\n".join(lines) + "\n"


def _source(
    tflite_path: str, content: bytes, name: str, header_path: str, model: _Described
) -> str:
    """The C source: the array (and a streaming model's initial state)."""
    rows = [
        ", ".join(f"0x{b:02x}" for b in content[i : i + 12]) for i in range(0, len(content), 12)
    ]
    source = (
        f"{_generated_from(tflite_path)}\n"
        f'#include "{os.path.basename(header_path)}"\n\n'  # checked by c_array_paths
        f"static_assert({name.upper()}_PAIR == {_pair_id(content)},\n"
        "              \"this C array's header and source come from different exports: "
        'export again");\n\n'
        f"alignas(16) const unsigned char {name}[] = {{\n    "
        + ",\n    ".join(rows)
        + f"\n}};\nconst unsigned int {name}_len = {len(content)};\n"
    )
    if model.stream:
        values = [_c_float(v) for v in model.stream["initial"]]
        source += (
            f"\nconst float {name}_initial_state[{name.upper()}_STATE_SIZE] = {{\n    "
            + ",\n    ".join(", ".join(values[i : i + 6]) for i in range(0, len(values), 6))
            + "\n};\n"
        )
    return source


if __name__ == "__main__":
    sys.exit(child_main(_child, sys.argv[1:]))
