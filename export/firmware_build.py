"""Building firmware: the TFLM sources a model's operators need, compiled once per target
and flags into a cache, linked with the project's sources for an MPS2 board or the host.

Used by `kerasrnn.export.firmware`, which writes the project and runs it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import glob
import hashlib
import os
import re
import subprocess

from ai_edge_litert import schema_py_generated as schema

from kerasrnn.errors import FirmwareError
from kerasrnn.export import flatbuffer
from kerasrnn.export.config import FirmwareConfig


@dataclasses.dataclass(frozen=True)
class Board:
    """An ARM MPS2/MPS3 board as QEMU emulates it.

    Attributes:
        machine: QEMU's `-M` name.
        cpu: QEMU's `-cpu` name.
        flags: the compiler's target flags.
        flash_origin: where code and constants go (the vector table first).
        flash_bytes: the size of that memory.
        ram_origin: where .data, .bss, the heap and the stack go.
        ram_bytes: the size of that memory.
        uart: the console UART's address (CMSDK APB UART 0).
        clock_hz: the processor clock that SysTick counts; under `-icount shift=0` QEMU runs
            one instruction per virtual nanosecond, so one tick is 1e9 / clock_hz
            instructions.
    """

    machine: str
    cpu: str
    flags: tuple[str, ...]
    flash_origin: int
    flash_bytes: int
    ram_origin: int
    ram_bytes: int
    uart: int
    clock_hz: int

    @property
    def instructions_per_tick(self) -> float:
        return 1e9 / self.clock_hz


_MIB = 0x100000
# The Cortex-M3 board; its M4 and M7 siblings share its memory map, UART and clock.
_AN385 = Board(
    "mps2-an385",
    "cortex-m3",
    ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"),
    0x00000000,
    _MIB,
    0x20000000,
    _MIB,
    0x40004000,
    25_000_000,
)
BOARDS = {
    "cortex-m3": _AN385,
    "cortex-m4": dataclasses.replace(
        _AN385,
        machine="mps2-an386",
        cpu="cortex-m4",
        flags=("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
    ),
    "cortex-m7": dataclasses.replace(
        _AN385,
        machine="mps2-an500",
        cpu="cortex-m7",
        flags=("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
    ),
    "cortex-m33": Board(
        "mps2-an505",
        "cortex-m33",
        ("-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
        0x10000000,  # the secure aliases: the firmware runs in the M33's secure state
        _MIB,
        0x38000000,
        _MIB,
        0x50200000,
        20_000_000,
    ),
    "cortex-m55": Board(
        "mps3-an547",
        "cortex-m55",
        ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),  # Helium (MVE) included
        0x10000000,  # ITCM and DTCM, secure aliases
        0x80000,
        0x30000000,
        0x80000,
        0x59303000,
        32_000_000,
    ),
}

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
_CMSIS_NN_HEADER = os.path.join("Include", "arm_nnfunctions.h")
_INCLUDES = ("", "third_party/gemmlowp", "third_party/flatbuffers/include", "third_party/ruy")
# Integer kernels give the same bytes at any optimization; -ffp-contract=off keeps float
# ones from fusing multiply-adds that the host build does not fuse. The optimization level
# and the defines come from `OPTIMIZATIONS` and `BUILD_DEFINES`.
_CXX_FLAGS = (
    "-std=c++17",
    "-DTF_LITE_STATIC_MEMORY",
    "-fno-exceptions",
    "-fno-rtti",
    "-fno-threadsafe-statics",
    "-fno-unwind-tables",
    "-ffunction-sections",
    "-fdata-sections",
    "-ffp-contract=off",
)

# `FirmwareConfig.optimize` -> (the interpreter's level, the kernels' level, the define that
# picks the kernels' variant), as TFLM's own Makefile builds: its CORE_OPTIMIZATION_LEVEL
# -Os, KERNEL_ and THIRD_PARTY_KERNEL_OPTIMIZATION_LEVEL -O2 (TFLM's kernels/ and CMSIS-NN)
# and OPTIMIZE_KERNELS_FOR=KERNELS_OPTIMIZED_FOR_SPEED, its defaults; or -Os throughout.
OPTIMIZATIONS = {
    "speed": ("-Os", "-O2", "-DKERNELS_OPTIMIZED_FOR_SPEED"),
    "size": ("-Os", "-Os", "-DKERNELS_OPTIMIZED_FOR_SIZE"),
}
# `FirmwareConfig.build` -> defines, as TFLM's BUILD_TYPE=release (no error messages and no
# debug checks: TFLM's strings are most of its flash) and its default build.
BUILD_DEFINES = {
    "release": ("-DNDEBUG", "-DTF_LITE_STRIP_ERROR_STRINGS"),
    "debug": (),
}

# Flags of single TFLM sources. The CMSIS-NN FULLY_CONNECTED glue checks, before its conv 1x1
# path (an int8 product with a 3-D output), that its scratch buffer's index is >= 4: a
# wrong check (indices count from 0; the buffer it guards is the one it requested) that
# aborts the firmware for most models. NDEBUG turns TFLITE_DCHECKs off in that file only;
# its TF_LITE_ENSUREs stay, and every build's outputs are compared with the interpreter's.
_SOURCE_FLAGS = {f"{_KERNELS}/cmsis_nn/fully_connected.cc": ("-DNDEBUG",)}


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


def tflm_sources(
    tflm_dir: str, operators: tuple[str, ...], cmsis_nn_operators: tuple[str, ...] = ()
) -> list[str]:
    """The TFLM .cc files (relative to `tflm_dir`) that firmware with these operators needs:
    the core, and each operator's kernel with the kernel sources its headers declare.

    Args:
        tflm_dir: the TFLM tree.
        operators: builtin operator names, as `flatbuffer.operators` gives them.
        cmsis_nn_operators: operators whose kernel is taken from TFLM's CMSIS-NN glue
            (kernels/cmsis_nn/NAME.cc) instead of the reference kernel of the same name.

    Raises:
        FirmwareError: the tree lacks a core source, or has no kernel for an operator.
    """
    missing = [path for path in _CORE_SOURCES if not os.path.isfile(os.path.join(tflm_dir, path))]
    if missing:
        raise FirmwareError(
            f"{tflm_dir} is not a TFLM tree this version knows: {missing[0]} "
            f"is missing; pass --tflm-dir DIR"
        )
    glue = {os.path.basename(_kernel_source(tflm_dir, op)) for op in cmsis_nn_operators}
    sources = set(_CORE_SOURCES)
    for op in operators:
        sources |= _kernel_closure(tflm_dir, [_kernel_source(tflm_dir, op)], glue)
    return sorted(sources)


def cmsis_nn_operators(tflm_dir: str, operators: tuple[str, ...]) -> tuple[str, ...]:
    """The operators whose kernel TFLM's CMSIS-NN glue replaces (the others run TFLM's
    reference kernels in a CMSIS-NN build)."""
    return tuple(
        op
        for op in operators
        if os.path.isfile(_cmsis_nn_source(tflm_dir, _kernel_source(tflm_dir, op)))
    )


def find_cmsis_nn(tflm_dir: str, cmsis_nn_dir: str | None) -> str | None:
    """The CMSIS-NN tree to build with: `cmsis_nn_dir`, or one found where TFLM's build
    puts it, in the TFLM tree's third_party/, or beside the tree; None when none is found.

    Raises:
        FirmwareError: `cmsis_nn_dir` is given and is not a CMSIS-NN tree.
    """
    if cmsis_nn_dir is not None:
        if not os.path.isfile(os.path.join(cmsis_nn_dir, _CMSIS_NN_HEADER)):
            raise FirmwareError(
                f"no CMSIS-NN tree at {cmsis_nn_dir} (no {_CMSIS_NN_HEADER}): pass "
                f"--cmsis-nn-dir DIR, CMSIS-NN at the commit the TFLM tree pins"
            )
        return os.path.abspath(cmsis_nn_dir)
    tflm_dir = os.path.abspath(tflm_dir)
    candidates = (
        os.path.join(tflm_dir, "tensorflow/lite/micro/tools/make/downloads/cmsis_nn"),
        os.path.join(tflm_dir, "third_party/cmsis_nn"),
        os.path.join(os.path.dirname(tflm_dir), "cmsis-nn"),
        os.path.join(os.path.dirname(tflm_dir), "cmsis_nn"),
    )
    return next((c for c in candidates if os.path.isfile(os.path.join(c, _CMSIS_NN_HEADER))), None)


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The kernel set of one build.

    Attributes:
        cmsis_nn_dir: the CMSIS-NN tree compiled in; None: TFLM's reference kernels only.
        cmsis_nn_operators: the operators whose CMSIS-NN kernel replaces the reference one.
        table_operators: the operators whose int8 instances run as a lookup table of TFLM's
            own kernel (`TABLE_OPERATORS`, firmware_templates/int8_tables.h).
        typed_operators: (operator, "INT8" or "INT16") for each operator registered with
            the glue's kernel of that one input type (`TYPED_OPERATORS`).
        note: why an "auto" build has reference kernels only (else empty).
    """

    cmsis_nn_dir: str | None
    cmsis_nn_operators: tuple[str, ...] = ()
    table_operators: tuple[str, ...] = ()
    typed_operators: tuple[tuple[str, str], ...] = ()
    note: str = ""

    @property
    def name(self) -> str:
        return "reference" if self.cmsis_nn_dir is None else "cmsis-nn"

    def registration(self, op: str, function: str) -> str:
        """The C++ expression of `op`'s registration, given its kernel's registration
        function (Register_TANH, ...): that function's, its typed variant's, or a table's."""
        if op in self.table_operators:
            return f"kerasrnn::Int8TableOf<tflite::{function}>()"
        typed = dict(self.typed_operators)
        return f"tflite::{function}{'_' + typed[op] if op in typed else ''}()"


# Element-wise operators that CMSIS-NN has no kernel for and whose int8 form TFLM computes
# element by element in fixed point (int8 TANH: about 600 instructions an element on a
# Cortex-M4): a CMSIS-NN build tabulates them over the 256 int8 inputs in Prepare.
TABLE_OPERATORS = ("TANH", "LOGISTIC")

# Operators whose CMSIS-NN glue has a registration for one input type (Register_ADD_INT8()
# and so on) that runs that type only: where every instance of the operator has one of
# these types, it is registered so, and the linker leaves out the other types' kernels (the
# int4, int16 and float code of FULLY_CONNECTED and ADD). Their Eval dispatches on the
# type alone; int4 weights, which need their own registration, keep the generic one.
TYPED_OPERATORS = {
    "ADD": ("INT8", "INT16"),
    "FULLY_CONNECTED": ("INT8", "INT16"),
    "MUL": ("INT8", "INT16"),
}


def choose_kernels(config: FirmwareConfig, model_bytes: bytes) -> Kernels:
    """The kernels `config.kernels` asks for, for this model: CMSIS-NN for each operator
    that has a CMSIS-NN kernel (TFLM's glue, kernels/cmsis_nn/NAME.cc), registered for one
    input type where the model has one (`TYPED_OPERATORS`), and int8 tables for its
    `TABLE_OPERATORS`.

    Raises:
        FirmwareError: "cmsis-nn" for the host, or without a CMSIS-NN tree; a
            `config.cmsis_nn_dir` that is not one.
    """
    if config.kernels == "reference":
        return Kernels(None)
    if config.target == "host":
        if config.kernels == "cmsis-nn":
            raise FirmwareError(
                "CMSIS-NN kernels are for the Cortex-M targets; the host builds TFLM's "
                "reference kernels (--kernels reference)"
            )
        return Kernels(None, note="the host builds reference kernels")
    found = find_cmsis_nn(config.tflm_dir, config.cmsis_nn_dir)
    if found is None:
        if config.kernels == "cmsis-nn":
            raise FirmwareError(
                f"no CMSIS-NN tree found beside or inside {config.tflm_dir}: pass "
                f"--cmsis-nn-dir DIR, CMSIS-NN at the commit the TFLM tree pins"
            )
        return Kernels(None, note="no CMSIS-NN tree found: pass --cmsis-nn-dir DIR")
    types = input_types(model_bytes)
    cmsis_nn = cmsis_nn_operators(config.tflm_dir, tuple(sorted(types)))
    tables = tuple(op for op in types if op in TABLE_OPERATORS and "INT8" in types[op])
    typed = tuple(
        (op, types[op][0])
        for op in cmsis_nn
        if len(types[op]) == 1
        and types[op][0] in TYPED_OPERATORS.get(op, ())
        and _glue_defines(config.tflm_dir, op, types[op][0])
    )
    return Kernels(found, cmsis_nn, tables, typed)


def _glue_defines(tflm_dir: str, op: str, kind: str) -> bool:
    """Whether TFLM declares (in a kernels/ header) and its CMSIS-NN glue for `op` defines
    the registration for `kind` inputs (Register_ADD_INT8() for "ADD", "INT8"): the glue
    defines Register_MUL_INT16(), which no header declares."""
    function = f"{resolver_methods(tflm_dir)[op][1]}_{kind}"
    declared = re.compile(rf"TFLMRegistration\s+{function}\(\);")
    headers = glob.glob(os.path.join(tflm_dir, _KERNELS, "*.h"))
    if not any(declared.search(_read(path)) for path in headers):
        return False
    return _defines(_read(_cmsis_nn_source(tflm_dir, _kernel_source(tflm_dir, op))), function)


def _defines(source: str, function: str) -> bool:
    """Whether C++ `source` defines the registration function `function` (Register_ADD)."""
    return re.search(rf"TFLMRegistration\s+{function}\(\)\s*\{{", source) is not None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def input_types(model_bytes: bytes) -> dict[str, tuple[str, ...]]:
    """operator -> the input types of its instances ("INT8", "INT16", "FLOAT32", ...; the
    first input's), in first-use order; an instance with an int4 tensor counts as "INT4",
    one without inputs as "NONE"."""
    model = flatbuffer.unpack(model_bytes)
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    found: dict[str, list[str]] = {}
    for graph in model.subgraphs:
        for op in graph.operators:
            tensors = [graph.tensors[i] for i in op.inputs if i >= 0]
            int4 = any(t.type == schema.TensorType.INT4 for t in tensors)
            kind = "INT4" if int4 else names[tensors[0].type] if tensors else "NONE"
            kinds = found.setdefault(flatbuffer.operator_name(model, op), [])
            if kind not in kinds:
                kinds.append(kind)
    return {op: tuple(kinds) for op, kinds in found.items()}


def cmsis_nn_sources(cmsis_nn_dir: str) -> list[str]:
    """CMSIS-NN's integer C sources (absolute paths); the linker keeps the functions used.

    Its float kernels (`*_f16.c`, `*_f32.c`) are left out: TFLM's glue calls none of them
    (float32 operators run TFLM's reference code) and they need CMSIS-DSP's types."""
    return sorted(
        path
        for path in glob.glob(os.path.join(cmsis_nn_dir, "Source", "*", "*.c"))
        if not path.endswith(("_f16.c", "_f32.c"))
    )


def resolver_methods(tflm_dir: str) -> dict[str, tuple[str, str]]:
    """builtin op name -> (MicroMutableOpResolver method, kernel registration function)."""
    header = _read(os.path.join(tflm_dir, RESOLVER))
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
    for path in sorted(glob.glob(os.path.join(tflm_dir, _KERNELS, "*.cc"))):
        if _defines(_read(path), methods[op][1]):
            return os.path.relpath(path, tflm_dir)
    raise FirmwareError(f"no source in {tflm_dir}/{_KERNELS} defines {methods[op][1]}()")


def _cmsis_nn_source(tflm_dir: str, source: str) -> str:
    """kernels/NAME.cc -> the path of TFLM's CMSIS-NN glue for it, kernels/cmsis_nn/NAME.cc
    (which may not exist)."""
    return os.path.join(tflm_dir, _KERNELS, "cmsis_nn", os.path.basename(source))


def _kernel_closure(tflm_dir: str, sources: list[str], glue: set[str]) -> set[str]:
    """Kernel sources plus, for each kernel header they include (kernels/foo.h), the sources
    that define it (foo.cc, foo_common.cc), recursively; those named in `glue` (foo.cc) are
    taken from TFLM's CMSIS-NN glue."""
    include = re.compile(rf'#include "({_KERNELS}/\w+)\.h"')
    found, todo = set(), list(sources)
    while todo:
        source = todo.pop()
        if os.path.dirname(source) == _KERNELS and os.path.basename(source) in glue:
            source = os.path.relpath(_cmsis_nn_source(tflm_dir, source), tflm_dir)
        if source in found:
            continue
        found.add(source)
        headers = include.findall(_read(os.path.join(tflm_dir, source)))
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


def build(
    sources: list[str], tflm: list[str], config: FirmwareConfig, cmsis_nn_dir: str | None = None
) -> str:
    """Compiles the TFLM sources (cached) and the project's, and links.

    Args:
        sources: the project's .c/.cc files; objects go to `build/` beside them.
        tflm: TFLM sources relative to `config.tflm_dir` (see `tflm_sources`).
        config: the `FirmwareConfig` (target, TFLM tree, cache folder, jobs).
        cmsis_nn_dir: a CMSIS-NN tree to compile in (`find_cmsis_nn`) when `tflm` holds
            its glue; its C sources are cached like TFLM's.

    Returns:
        The linked binary, `build/fw.elf` (or `build/fw` on the host).

    Raises:
        FirmwareError: a compiler or the linker failed (its first error line).
    """
    cc, cxx, target_flags = _toolchain(config.target)
    project_dir = os.path.dirname(os.path.abspath(sources[0]))
    includes = tuple(f"-I{os.path.join(os.path.abspath(config.tflm_dir), d)}" for d in _INCLUDES)
    interpreter_level, kernel_level, kernel_define = OPTIMIZATIONS[config.optimize]
    defines = (*BUILD_DEFINES[config.build], kernel_define)
    c_flags = (*target_flags, "-ffunction-sections", "-fdata-sections", *defines)
    if cmsis_nn_dir is not None:
        cmsis = (f"-I{cmsis_nn_dir}", f"-I{os.path.join(cmsis_nn_dir, 'Include')}")
        includes += (*cmsis, "-DCMSIS_NN")
        c_flags += (*cmsis, "-ffp-contract=off")
    cxx_flags = (*target_flags, *_CXX_FLAGS, *includes, *defines)

    def tflm_flags(source: str) -> tuple[str, ...]:
        level = kernel_level if source.startswith(f"{_KERNELS}/") else interpreter_level
        return (*cxx_flags, level, *_SOURCE_FLAGS.get(source, ()))

    jobs = [
        (
            os.path.join(config.tflm_dir, s),
            os.path.join(_cache_folder(config, cxx, tflm_flags(s)), s[:-3] + ".o"),
            cxx,
            tflm_flags(s),
        )
        for s in tflm
    ]
    if cmsis_nn_dir is not None:
        flags = (*c_flags, kernel_level)
        cache = _cache_folder(config, cc, flags)
        jobs += [
            (s, os.path.join(cache, "cmsis_nn", os.path.relpath(s, cmsis_nn_dir))[:-2] + ".o")
            + (cc, flags)
            for s in cmsis_nn_sources(cmsis_nn_dir)
        ]
    build = os.path.join(project_dir, "build")
    for source in sources:
        compiler, flags = (cc, c_flags) if source.endswith(".c") else (cxx, cxx_flags)
        flags = (*flags, interpreter_level)
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
    """The object cache of one target, compiler, flag set and TFLM tree (the interpreter's
    and the kernels' flags differ, so each set has a folder of its own)."""
    key = (_version(compiler), flags, os.path.realpath(config.tflm_dir))
    key = hashlib.sha256(repr(key).encode())
    root = config.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "kerasrnn", "tflm")
    return os.path.join(root, f"{config.target}-{key.hexdigest()[:12]}")


@functools.cache
def _version(compiler: str) -> list[str]:
    """The first line of `compiler --version` (asked once per process)."""
    return tool_output([compiler, "--version"]).splitlines()[:1]


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
