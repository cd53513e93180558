"""The vocabulary of exports: formats, quantizations, int8 activations, graph forms,
`ExportConfig`.

Imports neither TensorFlow nor the LiteRT runtime, so the CLI reads its choices here.
"""

from __future__ import annotations

import dataclasses

from kerasrnn.config import check_choice, check_positive
from kerasrnn.errors import ConfigError

# What `kerasrnn export` writes: a .tflite file (with its extras), or a TensorFlow
# SavedModel folder for serving (the float32 Keras model, any batch size).
FORMATS = ("tflite", "saved_model")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
# Activations inside an int8 file: int16 (int8 weights, int8 images and logits; see
# `kerasrnn.export.integer_io`) or int8 throughout.
INT8_ACTIVATIONS = ("int16", "int8")
# What an export asks for: one of those, or "auto", the target's choice (`TARGETS`).
ACTIVATION_CHOICES = ("auto", *INT8_ACTIVATIONS)
# The runtimes a file is made for, which choose its "auto" graph form and activations:
# - "litert": LiteRT with XNNPACK (phones, Linux boards; `runtime.Classifier`, `kerasrnn
#   predict`): every form unrolled (XNNPACK runs the whole unrolled graph as one delegated
#   piece, but not a WHILE op; up to `LITERT_UNROLL_MAX_STEPS` steps for float), int8
#   activations where they keep `FAST_INT8_AGREEMENT` (XNNPACK has int8 kernels, no int16
#   ones), else int16 where those agree better by `INT16_MIN_GAIN`;
# - "micro": TensorFlow Lite Micro: the smallest file and arena, int16 activations (LiteRT
#   and TFLM give the same bytes), the WHILE loop for float, the fused LSTM op for int8.
TARGETS = ("litert", "micro")
# The longest sequence a "litert" float file unrolls; longer ones keep the WHILE loop (a
# 784-step unrolled graph takes minutes to convert and hundreds of kilobytes).
LITERT_UNROLL_MAX_STEPS = 64
# The least top-1 agreement with Keras, on the probes, of a file whose activations "auto"
# made int8; below it the file is made again with int16 activations, and says why.
FAST_INT8_AGREEMENT = 0.995
# How much more of the probes int16 activations must agree on than int8 ones (that fell
# short of FAST_INT8_AGREEMENT) for the file to be made with int16: XNNPACK runs int8 about
# 20x faster (int16 about 11x slower than float32), so int16 must buy accuracy that the
# probes can tell from chance. On 4,000 probes two files' agreement differs by about 0.15
# points (one standard deviation) without any difference in kind; 0.5 points (20 probes)
# is three of those. Measured (64 units, 3 epochs on full MNIST, README "Latency on
# LiteRT"): int16 gained 0.03-0.45 points where int8 fell short; with this bound all 20
# trainings (four kinds, seeds 0-4) kept int8, within 0.21 points of Keras's test accuracy.
INT16_MIN_GAIN = 0.005
# Graph forms of `kerasrnn.export.graph.sequence_function`.
FORMS = ("loop", "unrolled", "fused")
# The LiteRT kernels that run a file (`runtime.Classifier`, `kerasrnn predict`): "xnnpack"
# (LiteRT's default delegate, for the operators it takes: the fastest on CPUs, README
# "Latency on LiteRT"), "builtin" (LiteRT's own kernels only), or "auto": XNNPACK where
# the child process that loads every file first (`integrity.probe`) ran it, else builtin.
RUNTIME_KERNELS = ("auto", "xnnpack", "builtin")
# TFLM runs float32 and full-int8 files; it has no float16 DEQUANTIZE or hybrid kernels.
MICRO_QUANTIZATIONS = ("none", "int8")
# Firmware targets: QEMU's MPS2 boards, or the host's g++ (see `export.firmware`).
FIRMWARE_TARGETS = ("cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "host")
# Kernel sets of firmware: Arm's CMSIS-NN for every operator it has a kernel for (the others
# stay TFLM's reference kernels), TFLM's reference kernels only, or "auto": CMSIS-NN when a
# CMSIS-NN tree is found (see `FirmwareConfig.cmsis_nn_dir`), else reference, and says so.
FIRMWARE_KERNELS = ("auto", "cmsis-nn", "reference")
# Firmware builds, as TFLM's BUILD_TYPE: "release" (no error messages, no debug checks) or
# "debug" (TFLM's default build: its messages say why a model fails; about 20 KiB more flash).
FIRMWARE_BUILDS = ("release", "debug")
# Firmware optimization, as TFLM's Makefile: "speed" (its defaults: the interpreter at -Os,
# the kernels at -O2) or "size" (-Os throughout).
FIRMWARE_OPTIMIZATIONS = ("speed", "size")


# The least top-1 agreement with Keras, on the probes and the test data, of a quantized file
# that is written: below it a file computes something else than its model (a dropped or
# misread layer agreed on 4.6%). Quantization alone stays above it: the README measures
# int16 activations at 99.2-99.7%, int8 activations at 97.7-99.5%, IRNNs at 92.4%, and
# barely trained toy models at 97%; `export_model` flags a written int8 file below 99%.
QUANTIZED_AGREEMENT = 0.9


@dataclasses.dataclass(frozen=True)
class ParityBounds:
    """What a converted file must reach against its Keras model before it is written.

    Attributes:
        relative_diff: the largest max |file - Keras| over max |Keras| (None: unchecked).
        top1_agreement: the least fraction of probes with the same argmax (classifiers;
            None: unchecked).
    """

    relative_diff: float | None
    top1_agreement: float | None = None

    @classmethod
    def for_file(cls, quantization: str, min_agreement: float | None = None) -> ParityBounds:
        """The bounds of a file: float32 differs from Keras by round-off (measured 1e-6
        relative; bound 1e-4), float16 weights by about 1e-3 (bound 0.05); quantized files
        keep `QUANTIZED_AGREEMENT` (or `min_agreement`), and a one-output (regression)
        file a relative 0.1."""
        if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
            raise ConfigError(f"min_agreement must lie in [0, 1], got {min_agreement}")
        if quantization == "none":
            return cls(1e-4)
        if quantization == "float16":
            return cls(0.05)
        return cls(0.1, QUANTIZED_AGREEMENT if min_agreement is None else min_agreement)

    def failure(self, measured: dict) -> str | None:
        """Why `measured` (see `convert.TfliteFile.parity`) is outside the bounds, or None."""
        agreement = measured["top1_agreement"]
        if self.top1_agreement is not None and agreement is not None:
            if agreement < self.top1_agreement:
                return (
                    f"top-1 agreement {agreement:.1%}, below {self.top1_agreement:.1%} "
                    f"(min_agreement / --min-agreement lowers it)"
                )
            return None  # a quantized classifier is held to its agreement
        if self.relative_diff is not None and measured["relative_diff"] > self.relative_diff:
            return (
                f"max |difference| {measured['max_abs_diff']:.3g} is "
                f"{measured['relative_diff']:.3g} of the largest output, above "
                f"{self.relative_diff:.3g}"
            )
        return None


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """How a model is exported.

    Attributes:
        quantization: one of `QUANTIZATIONS`: "none" (float32), "float16" (weights),
            "dynamic" (int8 weights, float activations) or "int8" (full integer).
        activations: int8 only: "int16" inside the graph (int8 weights, input and output),
            "int8" throughout, or "auto": the target's choice (see `convert.to_tflite`).
        target: one of `TARGETS`: the runtime the file is made for ("litert": the fastest
            file that keeps the accuracy in LiteRT with XNNPACK; "micro": TFLM's).
        batch_size: static batch size of the file (1 runs on microcontrollers), or None
            (dynamic; LiteRT only).
        stream: also write the streaming step model next to the file (`NAME.step.tflite`).
        micro: check the file in TensorFlow Lite Micro (batch-1 float32 and int8 files).
        c_array: also write the file as a C array, `NAME.h` and `NAME.cc` next to it (and
            with `stream` the step model's, `NAME.step.h/.cc`; see `micro.write_c_array`).
            It needs a file TFLM runs: batch size 1, quantization "none" or "int8".
        format: one of `FORMATS`: "tflite", or "saved_model" (the float32 Keras model as a
            SavedModel folder; quantization, stream and c_array do not apply, the batch
            size is dynamic).
        min_agreement: the least top-1 agreement with Keras of a quantized file that is
            written (None: `ParityBounds`' documented agreement).
        per_channel: int8 weight scales per output channel (see `convert.to_tflite`).
    """

    quantization: str = "none"
    activations: str = "auto"
    target: str = "litert"
    batch_size: int | None = 1
    stream: bool = False
    micro: bool = True
    c_array: bool = False
    format: str = "tflite"
    min_agreement: float | None = None
    per_channel: bool = False

    def __post_init__(self):
        check_choice("quantization", self.quantization, QUANTIZATIONS)
        ParityBounds.for_file(self.quantization, self.min_agreement)
        check_choice("activations", self.activations, ACTIVATION_CHOICES)
        check_choice("target", self.target, TARGETS)
        check_positive("batch_size", self.batch_size, optional=True, integer=True)
        check_choice("format", self.format, FORMATS)
        if self.format == "saved_model":
            tflite_only = [
                f"{field}={value!r}"
                for field, value, default in (
                    ("quantization", self.quantization, "none"),
                    ("stream", self.stream, False),
                    ("c_array", self.c_array, False),
                )
                if value != default
            ]
            if tflite_only:
                raise ConfigError(
                    f"format 'saved_model' serves the float32 Keras model: "
                    f"{', '.join(tflite_only)} applies to the tflite format only"
                )
        if self.c_array and (self.batch_size != 1 or self.quantization not in MICRO_QUANTIZATIONS):
            raise ConfigError(
                f"c_array needs a file TensorFlow Lite Micro runs (batch size 1, "
                f"quantization {' or '.join(MICRO_QUANTIZATIONS)}), got batch size "
                f"{self.batch_size} and quantization {self.quantization!r}"
            )


@dataclasses.dataclass(frozen=True)
class FirmwareConfig:
    """How firmware is built and run.

    Attributes:
        tflm_dir: a TFLM checkout or a tree made by its `create_tflm_tree.py`.
        target: one of `FIRMWARE_TARGETS` ("host" builds with the host g++ and runs natively).
        digits: how many test digits the firmware embeds and runs.
        run: run the firmware (under QEMU for the boards) and compare its outputs.
        timeout_s: the most seconds a run may take; a run never hangs.
        cache_dir: where compiled TFLM objects are kept, per target and flags (None:
            ~/.cache/kerasrnn/tflm).
        jobs: parallel compiler processes.
        arena_margin_bytes: added to the arena the interpreter needs (a multiple of 16).
        fit_arena: with `run`, find the smallest arena in which the firmware runs on the
            target (about 10 more links and runs, a few seconds in all) and build with it
            plus the margin; else the arena is twice the Python TFLM's measure plus the
            margin, which is larger (elman-16 int8 on Cortex-M3: 47.4 KB vs 16.3 KB).
        stack_bytes: the boards' stack.
        heap_bytes: the boards' heap (newlib's stdio).
        kernels: one of `FIRMWARE_KERNELS`.
        build: one of `FIRMWARE_BUILDS`.
        optimize: one of `FIRMWARE_OPTIMIZATIONS`.
        cmsis_nn_dir: a CMSIS-NN tree (its Include/ and Source/) at the commit the TFLM
            tree pins; None: found where TFLM's build puts it
            (`tensorflow/lite/micro/tools/make/downloads/cmsis_nn`), in the tree's
            `third_party/cmsis_nn`, or beside the tree as `cmsis-nn` or `cmsis_nn`.
    """

    tflm_dir: str
    target: str = "cortex-m3"
    digits: int = 20
    run: bool = True
    timeout_s: float = 60.0
    cache_dir: str | None = None
    jobs: int = 2
    arena_margin_bytes: int = 256
    fit_arena: bool = True
    stack_bytes: int = 4096
    heap_bytes: int = 1024
    kernels: str = "auto"
    cmsis_nn_dir: str | None = None
    build: str = "release"
    optimize: str = "speed"

    def __post_init__(self):
        check_choice("target", self.target, FIRMWARE_TARGETS)
        check_choice("kernels", self.kernels, FIRMWARE_KERNELS)
        check_choice("build", self.build, FIRMWARE_BUILDS)
        check_choice("optimize", self.optimize, FIRMWARE_OPTIMIZATIONS)
        for name in ("digits", "jobs", "stack_bytes"):
            check_positive(name, getattr(self, name), integer=True)
        check_positive("timeout_s", self.timeout_s)
        for name in ("arena_margin_bytes", "heap_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be zero or positive, got {getattr(self, name)}")
        if self.arena_margin_bytes % 16:
            raise ConfigError(
                f"arena_margin_bytes must be a multiple of 16 (TFLM aligns the "
                f"arena to 16 bytes), got {self.arena_margin_bytes}"
            )
