"""Building firmware: the TFLM sources a model's operators need, compiled once per target
and flags into a cache, linked with the project's sources for an MPS2 board or the host.

Used by `kerasrnn.export.firmware`, which writes the project and runs it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import hashlib
import os
import re
import subprocess

from kerasrnn.errors import FirmwareError
from kerasrnn.export.config import FirmwareConfig


@dataclasses.dataclass(frozen=True)
class Board:
    """An ARM MPS2 board as QEMU emulates it: machine, CPU, compiler flags, memory map and
    the console UART's address."""

    machine: str
    cpu: str
    flags: tuple[str, ...]
    flash_origin: int
    ram_origin: int
    uart: int


BOARDS = {
    "cortex-m3": Board(
        "mps2-an385",
        "cortex-m3",
        ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"),
        0x00000000,
        0x20000000,
        0x40004000,
    ),
    "cortex-m33": Board(
        "mps2-an505",
        "cortex-m33",
        ("-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
        0x10000000,
        0x38000000,
        0x50200000,  # secure: the firmware runs in the M33's secure state
    ),
}
REGION_BYTES = 0x100000  # the linker script's flash and RAM regions; the boards have 4 MiB

# The interpreter, its allocator and the kernel helpers: the sources a model with no
# operators links against (found by resolving symbols, linking this tree's objects).
_CORE_SOURCES = tuple(
    f"tensorflow/{path}.cc"
    for path in (
        "compiler/mlir/lite/core/api/error_reporter",
        "compiler/mlir/lite/schema/schema_utils",
        "lite/core/api/flatbuffer_conversions",
        "lite/core/c/common",
        "lite/kernels/internal/common",
        "lite/kernels/internal/portable_tensor_utils",
        "lite/kernels/internal/quantization_util",
        "lite/kernels/internal/tensor_ctypes",
        "lite/kernels/kernel_util",
        "lite/micro/kernels/kernel_util",
        "lite/micro/arena_allocator/non_persistent_arena_buffer_allocator",
        "lite/micro/arena_allocator/persistent_arena_buffer_allocator",
        "lite/micro/arena_allocator/single_arena_buffer_allocator",
        "lite/micro/memory_planner/greedy_memory_planner",
        "lite/micro/memory_planner/linear_memory_planner",
        "lite/micro/debug_log",
        "lite/micro/flatbuffer_utils",
        "lite/micro/memory_helpers",
        "lite/micro/micro_allocation_info",
        "lite/micro/micro_allocator",
        "lite/micro/micro_context",
        "lite/micro/micro_interpreter",
        "lite/micro/micro_interpreter_context",
        "lite/micro/micro_interpreter_graph",
        "lite/micro/micro_log",
        "lite/micro/micro_op_resolver",
        "lite/micro/micro_resource_variable",
        "lite/micro/micro_utils",
        "lite/micro/tflite_bridge/flatbuffer_conversions_bridge",
        "lite/micro/tflite_bridge/micro_error_reporter",
    )
)
_KERNELS = "tensorflow/lite/micro/kernels"
RESOLVER = "tensorflow/lite/micro/micro_mutable_op_resolver.h"
_INCLUDES = ("", "third_party/gemmlowp", "third_party/flatbuffers/include", "third_party/ruy")
# Integer kernels give the same bytes at any optimization; -ffp-contract=off keeps float
# ones from fusing multiply-adds that the host build does not fuse.
_CXX_FLAGS = (
    "-std=c++17",
    "-Os",
    "-DTF_LITE_STATIC_MEMORY",
    "-fno-exceptions",
    "-fno-rtti",
    "-fno-threadsafe-statics",
    "-fno-unwind-tables",
    "-ffunction-sections",
    "-fdata-sections",
    "-ffp-contract=off",
)


# The wall-clock limit of one compiler, linker or tool run: far above the minutes a TFLM
# kernel takes to compile, so only a hung tool meets it.
TOOL_SECONDS = 900


def tool_output(command: list[str]) -> str:
    """A tool's standard output, stripped (empty when it fails or hangs)."""
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=TOOL_SECONDS
        )
    except subprocess.TimeoutExpired:
        return ""
    return result.stdout.strip()


def tflm_sources(tflm_dir: str, operators: tuple[str, ...]) -> list[str]:
    """The TFLM .cc files (relative to `tflm_dir`) that firmware with these operators needs:
    the core, and each operator's kernel with the kernel sources its headers declare.

    Raises:
        FirmwareError: the tree lacks a core source, or has no kernel for an operator.
    """
    missing = [path for path in _CORE_SOURCES if not os.path.isfile(os.path.join(tflm_dir, path))]
    if missing:
        raise FirmwareError(
            f"{tflm_dir} is not a TFLM tree this version knows: {missing[0]} "
            f"is missing; pass --tflm-dir DIR"
        )
    sources = set(_CORE_SOURCES)
    for op in operators:
        sources |= _kernel_closure(tflm_dir, [_kernel_source(tflm_dir, op)])
    return sorted(sources)


def resolver_methods(tflm_dir: str) -> dict[str, tuple[str, str]]:
    """builtin op name -> (MicroMutableOpResolver method, kernel registration function)."""
    with open(os.path.join(tflm_dir, RESOLVER)) as f:
        header = f.read()
    pattern = re.compile(
        r"TfLiteStatus (Add\w+)\(\s*const TFLMRegistration& registration\s*=\s*"
        r"(?:\w+::)*(Register_\w+)\(\)\)\s*\{\s*return AddBuiltin\(\s*"
        r"BuiltinOperator_(\w+)"
    )
    return {m.group(3): (m.group(1), m.group(2)) for m in pattern.finditer(header)}


def _kernel_source(tflm_dir: str, op: str) -> str:
    methods = resolver_methods(tflm_dir)
    if op not in methods:
        raise FirmwareError(f"TensorFlow Lite Micro in {tflm_dir} has no kernel for {op}")
    definition = re.compile(rf"TFLMRegistration\s+{methods[op][1]}\(\)\s*\{{")
    for path in sorted(glob.glob(os.path.join(tflm_dir, _KERNELS, "*.cc"))):
        with open(path) as f:
            if definition.search(f.read()):
                return os.path.relpath(path, tflm_dir)
    raise FirmwareError(f"no source in {tflm_dir}/{_KERNELS} defines {methods[op][1]}()")


def _kernel_closure(tflm_dir: str, sources: list[str]) -> set[str]:
    """Kernel sources plus, for each kernel header they include (kernels/foo.h), the sources
    that define it (foo.cc, foo_common.cc), recursively."""
    include = re.compile(rf'#include "({_KERNELS}/\w+)\.h"')
    found, todo = set(), list(sources)
    while todo:
        source = todo.pop()
        if source in found:
            continue
        found.add(source)
        with open(os.path.join(tflm_dir, source)) as f:
            headers = include.findall(f.read())
        todo += [
            f"{h}{suffix}.cc"
            for h in headers
            for suffix in ("", "_common")
            if os.path.isfile(os.path.join(tflm_dir, f"{h}{suffix}.cc"))
        ]
    return found


def _toolchain(target: str) -> tuple[str, str, tuple[str, ...]]:
    """(C compiler, C++ compiler, target flags)."""
    if target == "host":
        return "gcc", "g++", ()
    return "arm-none-eabi-gcc", "arm-none-eabi-g++", BOARDS[target].flags


def build(sources: list[str], tflm: list[str], config: FirmwareConfig) -> str:
    """Compiles the TFLM sources (cached) and the project's, and links.

    Args:
        sources: the project's .c/.cc files; objects go to `build/` beside them.
        tflm: TFLM sources relative to `config.tflm_dir` (see `tflm_sources`).
        config: the `FirmwareConfig` (target, TFLM tree, cache folder, jobs).

    Returns:
        The linked binary, `build/fw.elf` (or `build/fw` on the host).

    Raises:
        FirmwareError: a compiler or the linker failed (its first error line).
    """
    cc, cxx, target_flags = _toolchain(config.target)
    project_dir = os.path.dirname(os.path.abspath(sources[0]))
    includes = tuple(f"-I{os.path.join(os.path.abspath(config.tflm_dir), d)}" for d in _INCLUDES)
    cxx_flags = (*target_flags, *_CXX_FLAGS, *includes)
    cache = _cache_folder(config, cxx, cxx_flags)
    jobs = [
        (os.path.join(config.tflm_dir, s), os.path.join(cache, s[:-3] + ".o"), cxx, cxx_flags)
        for s in tflm
    ]
    build = os.path.join(project_dir, "build")
    for source in sources:
        compiler = cc if source.endswith(".c") else cxx
        flags = (
            (*target_flags, "-Os", "-ffunction-sections", "-fdata-sections")
            if source.endswith(".c")
            else cxx_flags
        )
        name = os.path.splitext(os.path.basename(source))[0] + ".o"
        jobs.append((source, os.path.join(build, name), compiler, flags))
    with concurrent.futures.ThreadPoolExecutor(config.jobs) as pool:
        objects = list(pool.map(lambda job: _compile(*job), jobs))
    binary = os.path.join(build, "fw" if config.target == "host" else "fw.elf")
    if config.target == "host":
        link = [cxx, "-Wl,--gc-sections", "-o", binary, *objects, "-lm"]
    else:
        script = os.path.join(project_dir, f"{BOARDS[config.target].machine}.ld")
        link = [
            cxx,
            *target_flags,
            "-nostartfiles",
            "--specs=nano.specs",
            "--specs=nosys.specs",  # startup.c writes the console and exits
            "-Wl,--gc-sections",
            "-T",  # paths as arguments of their own: -Wl,... would split them at commas
            script,
            "-Xlinker",
            f"-Map={binary[:-4]}.map",
            "-o",
            binary,
            *objects,
            "-lm",
        ]
    _check_call(link, "linking the firmware")
    return binary


def _cache_folder(config: FirmwareConfig, compiler: str, flags: tuple[str, ...]) -> str:
    """The object cache of one target, compiler, flag set and TFLM tree."""
    version = tool_output([compiler, "--version"]).splitlines()[:1]
    key = hashlib.sha256(repr((version, flags, os.path.realpath(config.tflm_dir))).encode())
    root = config.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "kerasrnn", "tflm")
    return os.path.join(root, f"{config.target}-{key.hexdigest()[:12]}")


def _compile(source: str, obj: str, compiler: str, flags: tuple[str, ...]) -> str:
    """Compiles one source unless its object is newer; returns the object's path."""
    if os.path.exists(obj) and os.path.getmtime(obj) >= os.path.getmtime(source):
        return obj
    os.makedirs(os.path.dirname(obj), exist_ok=True)
    tmp = f"{obj}.{os.getpid()}.tmp"  # a concurrent build never sees a half-written object
    _check_call([compiler, *flags, "-c", source, "-o", tmp], f"compiling {source}")
    os.replace(tmp, obj)
    return obj


def _check_call(command: list[str], what: str) -> None:
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=TOOL_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise FirmwareError(f"{what} did not finish in {TOOL_SECONDS} s") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line or "undefined reference" in line]
        detail = (errors or lines or ["no output"])[0]
        raise FirmwareError(f"{what} failed: {detail}")


def sizes(binary: str) -> tuple[int, int]:
    """(flash, RAM) in bytes from arm-none-eabi-size: text + data, and data + bss (the
    arena, heap and stack are NOLOAD sections, which size counts as bss)."""
    output = tool_output(["arm-none-eabi-size", binary]).splitlines()
    text, data, bss = (int(v) for v in output[-1].split()[:3])
    return text + data, data + bss
