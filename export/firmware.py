"""Firmware: a .tflite model compiled with TensorFlow Lite Micro for a Cortex-M board, run
under QEMU, and its output bytes checked against the Python TFLM interpreter and LiteRT.

    config = FirmwareConfig(tflm_dir="../shared/tflm", target="cortex-m3")
    result = build_firmware("model.tflite", "fw/", config, images)
    print(result.table())

`build_firmware` writes a small project into its folder: the model as a C array, the test
digits quantized exactly as the Python interpreters quantize them, `main.cc` with an op
resolver of the model's operators, `arena.cc`, and for the boards a startup file and a
linker script. It compiles only the TFLM sources those operators need, caching the objects
per target and flags, links, and with `run=True` runs the firmware under `qemu-system-arm`
(or natively for "host"), which prints each digit's output bytes on the board's UART, and
fits the arena to the smallest that runs on the target. The firmware has no semihosting:
QEMU gives it a console and a way to exit (a reset request under -no-reboot), never the
host's files. QEMU is not cycle-accurate, so no cycle counts are given.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import string
import subprocess
import sys
import tempfile

import numpy as np

from kerasrnn._io import atomic_write, write_json
from kerasrnn.errors import FirmwareError
from kerasrnn.export import c_text, firmware_build, flatbuffer, micro
from kerasrnn.export.child_process import child_main, run_child
from kerasrnn.export.config import FirmwareConfig
from kerasrnn.export.micro import write_c_array
from kerasrnn.export.runtime import INITIAL_STATE_METADATA, Classifier, Stream, dequantize, quantize

log = logging.getLogger(__name__)

_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "firmware_templates")


_EXIT_CODES = {
    2: "the model's schema version is not this TFLM's",
    3: "the op resolver rejected an operator",
    4: "AllocateTensors failed (is the arena too small?)",
    5: "an input tensor does not have the size of the embedded digits",
    6: "Invoke failed",
    70: "the CPU faulted",
}


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Firmware output bytes against a reference interpreter's.

    Attributes:
        reference: "TFLM (Python)" or "LiteRT".
        exact: digits whose output bytes are identical.
        digits: digits compared.
        max_diff: the largest difference, in quantization steps for integer outputs, in
            logit value for float outputs.
    """

    reference: str
    exact: int
    digits: int
    max_diff: float


@dataclasses.dataclass(frozen=True)
class FirmwareResult:
    """What `build_firmware` built, and with `run=True` what the firmware printed.

    Attributes:
        target: see `FirmwareConfig`.
        project_dir: the firmware project (sources, build/, report.json).
        binary: the linked firmware (fw.elf, or fw on the host).
        operators: the model's operators, as registered in the op resolver.
        tflm_sources: how many TFLM .cc files were compiled in.
        flash_bytes: text + data (the boards only).
        ram_bytes: data + bss, which holds the arena, heap and stack (the boards only).
        test_data_bytes: the embedded test digits, part of the flash.
        arena_bytes: the arena compiled in (see `FirmwareConfig.fit_arena`).
        arena_used_bytes: what the interpreter holds after AllocateTensors (after a run); less
            than it needs, since memory planning takes scratch space.
        outputs: the output tensor's bytes per digit, uint8 [digits, bytes] (after a run).
        agreement: one `Agreement` per reference interpreter (after a run).
    """

    target: str
    project_dir: str
    binary: str
    operators: tuple[str, ...]
    tflm_sources: int
    flash_bytes: int | None
    ram_bytes: int | None
    test_data_bytes: int
    arena_bytes: int
    arena_used_bytes: int | None = None
    outputs: np.ndarray | None = None
    agreement: tuple[Agreement, ...] = ()

    def as_dict(self) -> dict:
        """The result as JSON-ready values (the output bytes as hex, one string a digit)."""
        result = dataclasses.asdict(self)
        result["operators"] = list(self.operators)
        result["agreement"] = [dataclasses.asdict(a) for a in self.agreement]
        result["outputs"] = (
            None if self.outputs is None else [bytes(row).hex() for row in self.outputs]
        )
        return result

    def table(self) -> str:
        """The result as aligned text lines."""
        rows = [
            ("target", self.target),
            ("firmware", self.binary),
            ("operators", ", ".join(self.operators)),
            ("TFLM sources compiled", str(self.tflm_sources)),
        ]
        if self.flash_bytes is not None:
            rows += [
                (
                    "flash (text + data)",
                    f"{_kib(self.flash_bytes)}, test digits {self.test_data_bytes:,} bytes of it",
                ),
                ("RAM (data + bss, stack incl.)", _kib(self.ram_bytes)),
            ]
        rows.append(
            (
                "arena",
                f"{self.arena_bytes:,} bytes compiled in"
                + (
                    f", {self.arena_used_bytes:,} used" if self.arena_used_bytes is not None else ""
                ),
            )
        )
        for a in self.agreement:
            rows.append(
                (
                    f"output bytes vs {a.reference}",
                    (f"{a.exact}/{a.digits} digits identical, largest difference {a.max_diff:g}"),
                )
            )
        if self.outputs is None:
            rows.append(("run", "not run (pass run=True / --run)"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _kib(size: int) -> str:
    return f"{size:,} bytes ({size / 1024:.1f} KiB)"


def check_tools(config: FirmwareConfig) -> None:
    """Checks that the compiler, QEMU (for a run) and the TFLM tree are there.

    Raises:
        FirmwareError: one line naming the missing Debian packages or the `--tflm-dir`.
    """
    if not os.path.isfile(os.path.join(config.tflm_dir, firmware_build.RESOLVER)):
        raise FirmwareError(
            f"no TFLM source tree at {config.tflm_dir}: pass --tflm-dir DIR, "
            f"a TFLM checkout or a tree made by its create_tflm_tree.py"
        )
    if config.target == "host":
        if shutil.which("g++") is None:
            raise FirmwareError("g++ not found: install it (apt-get install g++)")
        return
    missing = []
    if shutil.which("arm-none-eabi-g++") is None:
        missing += [
            "gcc-arm-none-eabi",
            "libnewlib-arm-none-eabi",
            "libstdc++-arm-none-eabi-newlib",
        ]
    else:
        # What the compiler cannot find is only a bare name: the C library's specs, and
        # the C++ library whose package brings <cstdarg> and the other headers TFLM needs.
        for name, package in (
            ("nano.specs", "libnewlib-arm-none-eabi"),
            ("libstdc++.a", "libstdc++-arm-none-eabi-newlib"),
        ):
            found = firmware_build.tool_output(["arm-none-eabi-g++", f"-print-file-name={name}"])
            if not os.path.isabs(found):
                missing.append(package)
    if config.run and shutil.which("qemu-system-arm") is None:
        missing.append("qemu-system-arm")
    if missing:
        raise FirmwareError(
            f"the {config.target} firmware needs Debian's {' '.join(missing)}: "
            f"apt-get install {' '.join(missing)}"
        )


def build_firmware(
    tflite_path: str, out_dir: str, config: FirmwareConfig, images: np.ndarray
) -> FirmwareResult:
    """Writes, builds and (with `config.run`) runs firmware for a batch-1 .tflite model.

    Args:
        tflite_path: a classifier (`to_tflite(batch_size=1)`) or a streaming step model
            (`stream=True`), float32 or int8.
        out_dir: the project folder (created; its generated files are overwritten).
        config: see `FirmwareConfig`.
        images: test digits, uint8 [n, 28, 28] or float32 in [0, 1]; the first
            `config.digits` are embedded.

    Returns:
        A `FirmwareResult`; its JSON form is written to `out_dir/report.json`.

    Raises:
        FirmwareError: a tool or the TFLM tree is missing, the build failed (its first
            error line), or the run failed, timed out or exited nonzero.
        ValueError: `images` is empty or not [n, steps, features].
    """
    check_tools(config)
    out_dir = os.path.abspath(out_dir)  # no path a compiler reads as an option
    with open(tflite_path, "rb") as f:
        content = f.read()
    model = _ModelIO.read(content)
    operators = tuple(flatbuffer.operators(content))
    x = _as_float(images)[: config.digits]
    if x.ndim != 3 or len(x) == 0:
        raise ValueError(f"images must be [n, steps, features] with n > 0, got {x.shape}")
    reference = _reference_outputs(tflite_path, model, x)
    sources = firmware_build.tflm_sources(config.tflm_dir, operators)
    os.makedirs(out_dir, exist_ok=True)

    project = _write_project(tflite_path, out_dir, config, model, operators, x)
    # The Python TFLM's measure leaves out AllocateTensors' planning scratch; twice it is
    # safe on 32- and 64-bit targets (measured: the streaming elman-16 needs 1.2x on the host).
    arena = 2 * _align(reference.arena_bytes) + config.arena_margin_bytes
    binary = firmware_build.build([*project, _write_arena(out_dir, arena)], sources, config)
    used = outputs = None
    if config.run:
        used, outputs = _run(binary, config, len(x))
        if config.fit_arena:
            arena = _smallest_arena(project, sources, config, used, arena)
            arena += config.arena_margin_bytes
            binary = firmware_build.build([*project, _write_arena(out_dir, arena)], sources, config)
            used, outputs = _run(binary, config, len(x))
    flash, ram = firmware_build.sizes(binary) if config.target != "host" else (None, None)
    agreement = (
        ()
        if outputs is None
        else tuple(
            _agreement(name, outputs, expected, model.output_dtype)
            for name, expected in reference.outputs.items()
        )
    )
    result = FirmwareResult(
        config.target,
        out_dir,
        binary,
        operators,
        len(sources),
        flash,
        ram,
        x.size * np.dtype(model.image_input["dtype"]).itemsize,
        arena,
        used,
        outputs,
        agreement,
    )
    write_json(os.path.join(out_dir, "report.json"), result.as_dict())
    return result


def _align(size: int) -> int:
    return -(-size // 16) * 16


def _as_float(images) -> np.ndarray:
    array = np.asarray(images)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _ModelIO:
    """The model's interface, read from the flatbuffer: tensor details in the form
    `runtime.quantize` takes, and the subgraph positions of the named inputs and outputs."""

    inputs: dict
    outputs: dict
    initial_state: np.ndarray | None

    @property
    def streaming(self) -> bool:
        return self.initial_state is not None

    @property
    def image_input(self) -> dict:
        """The input that takes pixels: the image, or a streaming model's row."""
        return self.inputs["row"] if self.streaming else next(iter(self.inputs.values()))

    @property
    def output_dtype(self):
        return self.outputs["logits"]["dtype"]

    @classmethod
    def read(cls, content: bytes) -> _ModelIO:
        model = flatbuffer.unpack(content)
        graph = model.subgraphs[0]
        inputs = {
            _name(graph.tensors[t]): _detail(graph.tensors[t], i)
            for i, t in enumerate(graph.inputs)
        }
        outputs = {
            _name(graph.tensors[t]): _detail(graph.tensors[t], i)
            for i, t in enumerate(graph.outputs)
        }
        if len(outputs) == 1:
            outputs = {"logits": next(iter(outputs.values()))}
        state = None
        for entry in model.metadata or ():
            if _name(entry) == INITIAL_STATE_METADATA:
                state = np.asarray(model.buffers[entry.buffer].data, np.uint8).view(np.float32)
        return cls(inputs, outputs, state)


_DTYPES = {0: np.float32, 7: np.int16, 9: np.int8}  # LiteRT's TensorType values


def _name(table) -> str:
    return table.name.decode() if isinstance(table.name, bytes) else table.name


def _detail(tensor, position: int) -> dict:
    if tensor.type not in _DTYPES:
        raise FirmwareError(
            f"input or output {_name(tensor)!r} has TensorType {tensor.type}; "
            f"the firmware handles float32, int16 and int8"
        )
    q = tensor.quantization
    quantized = q is not None and q.scale is not None and len(q.scale) > 0
    scale = float(np.float32(q.scale[0])) if quantized else 0.0
    zero_point = int(q.zeroPoint[0]) if quantized else 0
    return {
        "dtype": _DTYPES[tensor.type],
        "quantization": (scale, zero_point),
        "position": position,
    }


@dataclasses.dataclass(frozen=True)
class _Reference:
    arena_bytes: int
    outputs: dict  # reference name -> output tensor values [digits, classes]


def _reference_outputs(tflite_path: str, model: _ModelIO, images: np.ndarray) -> _Reference:
    """The Python TFLM interpreter's and LiteRT's outputs, as the output tensor's values."""
    arena, micro = _run_micro(tflite_path, images)
    if model.streaming:
        stream = Stream(tflite_path)
        litert = []
        for image in images:
            stream.reset()
            litert.append([stream.push(row) for row in image][-1])
        litert = np.array(litert)
    else:
        litert = Classifier(tflite_path).predict(images)
    logits = model.outputs["logits"]
    return _Reference(
        arena, {"TFLM (Python)": quantize(micro, logits), "LiteRT": quantize(litert, logits)}
    )


def _run_micro(tflite_path: str, images: np.ndarray) -> tuple[int, np.ndarray]:
    """(arena bytes, logits [n, classes]) of the model in the Python TFLM interpreter, run in
    a child process (TFLM aborts the process on some errors).

    The firmware does what this does, so their outputs must be identical.
    """
    with tempfile.TemporaryDirectory(prefix="kerasrnn-firmware-") as tmp:
        np.save(os.path.join(tmp, "images.npy"), images)
        status, result = run_child("kerasrnn.export.firmware", [os.path.abspath(tflite_path), tmp])
        if result is None or "error" in result:
            raise FirmwareError(
                f"TensorFlow Lite Micro (Python) failed on {tflite_path}: "
                + (result["error"] if result else f"it crashed (status {status})")
            )
        return result["arena_bytes"], np.load(os.path.join(tmp, "logits.npy"))


def _micro_child(model_path: str, folder: str) -> dict:
    """The child process: every image through TFLM, the whole image at once after a reset
    of the variable tensors, or one row at a time carrying the state as `runtime.Stream`
    does (dequantized, then quantized for the next row)."""
    with open(model_path, "rb") as f:
        content = f.read()
    model = _ModelIO.read(content)
    interpreter = micro.allocate(content)
    logits = model.outputs["logits"]
    results = []
    for image in np.load(os.path.join(folder, "images.npy")):
        if model.streaming:
            _stream_micro(interpreter, model, image)
        else:
            interpreter.reset()  # a fused LSTM's variable tensors back to zero
            interpreter.set_input(quantize(image[None], model.image_input), 0)
            interpreter.invoke()
        results.append(dequantize(interpreter.get_output(logits["position"]), logits)[0])
    np.save(os.path.join(folder, "logits.npy"), np.array(results))
    return {"arena_bytes": micro.arena_used(interpreter)}


def _stream_micro(interpreter, model: _ModelIO, image: np.ndarray) -> None:
    row, state_in, state_out = model.inputs["row"], model.inputs["state"], model.outputs["state"]
    state = model.initial_state[None]
    for x in image:
        interpreter.set_input(quantize(x[None], row), row["position"])
        interpreter.set_input(quantize(state, state_in), state_in["position"])
        interpreter.invoke()
        state = dequantize(interpreter.get_output(state_out["position"]), state_out)


def _write_project(
    tflite_path: str,
    out_dir: str,
    config: FirmwareConfig,
    model: _ModelIO,
    operators: tuple[str, ...],
    images: np.ndarray,
) -> list[str]:
    """Writes the firmware's sources but the arena's into `out_dir`; returns their paths."""
    methods = firmware_build.resolver_methods(config.tflm_dir)
    # main.cc includes model_data.h and runs g_model; a project's files are its own to replace
    _, model_source = write_c_array(
        tflite_path, out_dir, "g_model", stem="model_data", overwrite=True
    )
    atomic_write(os.path.join(out_dir, "test_data.h"), _test_data(model, images))
    run_digit = _template("run_stream.inc" if model.streaming else "run_sequence.inc")
    main = string.Template(_template("main.cc.in")).substitute(
        model_file=c_text.comment(os.path.basename(tflite_path)),
        digits=len(images),
        operator_count=len(operators),
        run_digit=run_digit.rstrip() + "\n",
        add_operators="\n".join(
            f"  TF_LITE_ENSURE_STATUS(resolver.{methods[op][0]}());" for op in operators
        ),
    )
    atomic_write(os.path.join(out_dir, "main.cc"), main)
    sources = [os.path.join(out_dir, "main.cc"), model_source]
    if config.target != "host":
        board = firmware_build.BOARDS[config.target]
        atomic_write(
            os.path.join(out_dir, "startup.c"),
            string.Template(_template("startup.c")).substitute(uart=f"0x{board.uart:08x}u"),
        )
        atomic_write(
            os.path.join(out_dir, f"{board.machine}.ld"),
            string.Template(_template("cortex-m.ld.in")).substitute(
                board=board.machine,
                flash_origin=f"0x{board.flash_origin:08x}",
                ram_origin=f"0x{board.ram_origin:08x}",
                flash_length=f"0x{firmware_build.REGION_BYTES:x}",
                ram_length=f"0x{firmware_build.REGION_BYTES:x}",
                heap_bytes=config.heap_bytes,
                stack_bytes=config.stack_bytes,
            ),
        )
        sources.append(os.path.join(out_dir, "startup.c"))
    return sources


def _write_arena(out_dir: str, arena: int) -> str:
    """Writes arena.cc, the tensor arena in a file of its own (resizing it recompiles
    nothing else); returns its path."""
    path = os.path.join(out_dir, "arena.cc")
    atomic_write(
        path,
        "// The tensor arena; generated by kerasrnn.\n#include <stddef.h>\n"
        "#include <stdint.h>\n\n"
        f"extern const size_t kArenaBytes = {arena};\n"
        f"alignas(16) uint8_t g_arena[{arena}];\n",
    )
    return path


def _smallest_arena(
    project: list[str], tflm: list[str], config: FirmwareConfig, used: int, arena: int
) -> int:
    """The smallest arena (to 16 bytes) in which the firmware runs on the target, by
    bisection between the arena its interpreter used (less than it needs: AllocateTensors
    plans in scratch space) and `arena`, rebuilding arena.cc and running it each time.

    TFLM cannot retry an allocation in one process (the fused LSTM's Prepare asserts when
    its scratch tensors do not fit), so each size is a run of its own.
    """
    out_dir = os.path.dirname(project[0])
    fails, fits = _align(used) - 16, arena
    while fits - fails > 16:
        middle = (fails + fits) // 32 * 16
        binary = firmware_build.build([*project, _write_arena(out_dir, middle)], tflm, config)
        # 4: AllocateTensors failed; 1: a kernel's assertion on a missing scratch tensor
        if _execute(binary, config).returncode in (1, 4):
            fails = middle
        else:
            fits = middle
    log.info("smallest arena on %s: %d bytes", config.target, fits)
    return fits


def _template(name: str) -> str:
    with open(os.path.join(_TEMPLATES, name)) as f:
        return f.read()


def _test_data(model: _ModelIO, images: np.ndarray) -> str:
    """test_data.h: the digits as the input tensor's bytes, and the tensor positions."""
    data = quantize(images, model.image_input).reshape(len(images), -1).view(np.uint8)
    steps = images.shape[1]  # one line a row of pixels
    rows = ",\n".join(
        f"    {{  // digit {i}\n"
        + ",\n".join("        " + ", ".join(map(str, row)) for row in digit.reshape(steps, -1))
        + "}"
        for i, digit in enumerate(data)
    )
    lines = [
        "// The test digits, quantized as kerasrnn.export.runtime.quantize does; generated.",
        "#ifndef KERASRNN_TEST_DATA_H_",
        "#define KERASRNN_TEST_DATA_H_",
        "",
        "#include <stdint.h>",
        "",
        f"constexpr int kDigits = {len(data)};",
        f"constexpr unsigned kInputBytes = {data.shape[1]};",
        f"constexpr int kOutputIndex = {model.outputs['logits']['position']};",
    ]
    if model.streaming:
        state = ", ".join(f"{float(v).hex()}f" for v in model.initial_state)
        lines += [
            f"constexpr int kSteps = {images.shape[1]};",
            f"constexpr int kRowInput = {model.inputs['row']['position']};",
            f"constexpr int kStateInput = {model.inputs['state']['position']};",
            f"constexpr int kStateOutput = {model.outputs['state']['position']};",
            f"constexpr int kStateSize = {len(model.initial_state)};",
            f"const float kInitialState[kStateSize] = {{{state}}};",
        ]
    lines += [
        "",
        "alignas(16) const uint8_t kInputs[kDigits][kInputBytes] = {",
        rows,
        "};",
        "",
        "#endif  // KERASRNN_TEST_DATA_H_",
        "",
    ]
    return "\n".join(lines)


def _run(binary: str, config: FirmwareConfig, digits: int) -> tuple[int, np.ndarray]:
    """Runs the firmware; returns (arena used, output bytes uint8 [digits, bytes])."""
    result = _execute(binary, config)
    if result.returncode != 0:
        meaning = _EXIT_CODES.get(result.returncode, "unexpected exit code")
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        detail = f"; last output: {lines[-1]}" if lines else ""
        raise FirmwareError(
            f"the firmware exited with {result.returncode} {_where(config)}: {meaning}{detail}"
        )
    return _parse_output(result.stdout, digits)


def _where(config: FirmwareConfig) -> str:
    if config.target == "host":
        return "natively"
    return f"under QEMU ({firmware_build.BOARDS[config.target].machine})"


def _execute(binary: str, config: FirmwareConfig) -> subprocess.CompletedProcess:
    """Runs the firmware natively or under QEMU, with the timeout; the result's return code
    is the firmware's exit code (under QEMU, from its "exit CODE" line)."""
    if config.target == "host":
        command = [binary]
    else:
        board = firmware_build.BOARDS[config.target]
        command = [
            "qemu-system-arm",
            "-M",
            board.machine,
            "-cpu",
            board.cpu,
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "stdio",  # UART 0: the console, and all the firmware reaches
            "-no-reboot",  # the firmware's reset request ends QEMU
            "-kernel",
            binary,
        ]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            timeout=config.timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise FirmwareError(
            f"the firmware did not finish in {config.timeout_s:g} s {_where(config)}: {binary}"
        ) from None
    if config.target == "host":
        return result
    exit_line = re.search(r"^exit (-?\d+)$", result.stdout, re.MULTILINE)
    if result.returncode != 0 or exit_line is None:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise FirmwareError(
            f"QEMU ended with status {result.returncode} and no exit line {_where(config)}"
            + (f": {lines[0]}" if lines else "")
        )
    result.returncode = int(exit_line.group(1))
    return result


def _parse_output(stdout: str, digits: int) -> tuple[int, np.ndarray]:
    arena = re.search(r"^arena used (\d+)$", stdout, re.MULTILINE)
    rows = dict(re.findall(r"^out (\d+) ([0-9a-f]+)$", stdout, re.MULTILINE))
    if arena is None or len(rows) != digits:
        raise FirmwareError(f"the firmware printed {len(rows)} of {digits} outputs")
    return (
        int(arena.group(1)),
        np.array([np.frombuffer(bytes.fromhex(rows[str(i)]), np.uint8) for i in range(digits)]),
    )


def _agreement(name: str, outputs: np.ndarray, expected: np.ndarray, dtype) -> Agreement:
    """Compares the firmware's output bytes with a reference's output tensor values."""
    values = outputs.view(dtype).reshape(expected.shape)
    diff = np.abs(values.astype(np.float64) - expected.astype(np.float64))
    exact = int(
        (outputs == np.ascontiguousarray(expected).view(np.uint8).reshape(outputs.shape))
        .all(axis=1)
        .sum()
    )
    return Agreement(name, exact, len(outputs), float(diff.max()) if diff.size else 0.0)


if __name__ == "__main__":
    sys.exit(child_main(_micro_child, sys.argv[1:]))
