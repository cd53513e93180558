"""Keras classifier -> builtin-only TFLite (LiteRT) file, float32/float16/dynamic/int8.

The converter sees the unrolled graph of `kerasrnn.export.graph`, never Keras's RNN
layers (whose TensorList ops would need Flex). It runs in a child process, so a converter
crash (it segfaults on some graphs) becomes a `ConversionError`, not a dead caller, and the
file is written atomically: a failed export leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import threading

import numpy as np
import tensorflow as tf

from kerasrnn._io import atomic_write, check_replaceable
from kerasrnn.config import check_choice, check_positive
from kerasrnn.errors import ConfigError, ConversionError
from kerasrnn.evaluation import load_model
from kerasrnn.export import calibration, flatbuffer, graph, integer_io, model_reader
from kerasrnn.export.child_process import ChildTimeout, child_main, run_child
from kerasrnn.export.config import (
    ACTIVATION_CHOICES,
    FAST_INT8_AGREEMENT,
    FORMS,
    INT16_MIN_GAIN,
    LITERT_UNROLL_MAX_STEPS,
    QUANTIZATIONS,
    TARGETS,
    ParityBounds,
)
from kerasrnn.export.integrity import is_sealed_model
from kerasrnn.export.runtime import (
    CLASS_NAMES_METADATA,
    INITIAL_STATE_METADATA,
    INPUT_RANGE_METADATA,
    PIXEL_RANGE,
    Invoker,
    check_loads,
)

_FORM_NAMES = {"loop": "WHILE loop", "unrolled": "unrolled", "fused": "fused LSTM"}
# Keras models are not saved from two threads at once; the conversions themselves (child
# processes) run in parallel.
_SAVING = threading.Lock()
# The conversion child's wall-clock limit: far above any conversion measured here (the
# 784-step models take minutes), so only a converter that hangs meets it.
_CONVERT_TIMEOUT_S = 1800


@dataclasses.dataclass(frozen=True)
class TfliteFile:
    """What `to_tflite` wrote.

    Attributes:
        path: the .tflite file.
        size_bytes: its size.
        parameter_bytes: the Keras model's parameters as float32 (4 bytes each).
        operators: the distinct operators in the file (builtins only).
        quantization: one of `QUANTIZATIONS`.
        form: the graph form, e.g. "unrolled, batch 1, int16 activations".
        parity: what the check before writing measured, LiteRT vs Keras on the probes:
            {"probes", "max_abs_diff", "relative_diff", "top1_agreement"}.
        target: the runtime it was made for (one of `config.TARGETS`).
        activations: an int8 file's activations ("int8" or "int16"; None for other files
            and the fused LSTM, which has its own scheme).
        why: one line: why this form and these activations.
    """

    path: str
    size_bytes: int
    parameter_bytes: int
    operators: tuple[str, ...]
    quantization: str
    form: str
    parity: dict
    target: str = "litert"
    activations: str | None = None
    why: str = ""

    @property
    def size_ratio(self) -> float:
        """File size over float32 parameter bytes."""
        return self.size_bytes / self.parameter_bytes


def choose_form(
    quantization: str,
    form: str = "auto",
    fusable: bool = False,
    loopable: bool = True,
    target: str = "litert",
    steps: int = 1,
) -> str:
    """The graph form of a file.

    "auto" picks, for target "litert", the fastest form: unrolled. XNNPACK runs the whole
    unrolled graph as one delegated piece, but not the WHILE op, whose steps run outside
    that piece (64 units, one thread: elman 8.4 us unrolled vs 24.7 us loop, LSTM 39.1 vs
    52.8, GRU 34.8 vs 47.5; README "Latency on LiteRT"); the fused int8 LSTM has no fast
    kernel (538 us vs 23.5 us unrolled). Float files of more than
    `LITERT_UNROLL_MAX_STEPS` steps keep the loop where the model has one.

    For target "micro", the smallest file and TFLM arena that runs everywhere and keeps
    parity: for int8, TFLite's fused LSTM op for models of LSTM layers (`graph.can_fuse`;
    lstm-32 int8: 11.4 KB vs 33.3 KB unrolled); else the WHILE loop (elman-64: 30.0 KB
    float vs 35.9 KB unrolled) where the model has one (`graph.can_loop`). Float files are
    not fused: LiteRT's float fused LSTM kernel drifts from Keras (trained LSTM-16 ->
    Dense(16, relu), 28 steps: 2.5e-5 of the largest logit; LSTM-16 over 56 steps: 3.4e-5,
    vs 5.0e-7 for the loop), and the dynamic-range quantizer leaves the fused op's weights
    float. `form="fused"` still writes it (its TFLM arena is smaller: LSTM-64 14.2 KB vs
    94.0 KB). The int8 converter segfaults on the loop (with int8 and int16 activations
    alike), so int8 files of the other cells are unrolled.

    Args:
        fusable, loopable: whether the model has the fused and loop forms (an explicit
            `form` is checked against the model by `graph.check_form`).
        target: one of `config.TARGETS`.
        steps: the model's sequence length.
    """
    check_choice("form", form, ("auto", *FORMS))
    check_choice("target", target, TARGETS)
    if form != "auto":
        return form
    if target == "litert":
        long_float = quantization != "int8" and steps > LITERT_UNROLL_MAX_STEPS
        return "loop" if long_float and loopable else "unrolled"
    if fusable and quantization == "int8":
        return "fused"
    return "unrolled" if quantization == "int8" or not loopable else "loop"


def activation_trials(
    quantization: str, activations: str, target: str, form: str, measured: bool = True
) -> tuple:
    """The activations an int8 file is made with, in the order they are tried: the first
    that keeps its bounds is written. "auto": int8, then int16, for target "litert"
    (XNNPACK has int8 kernels, no int16 ones: elman-64 5.3 us vs 99 us, README "Latency on
    LiteRT"), int16 for "micro". (None,) for files without int8 activations (float,
    dynamic, the fused LSTM).

    Args:
        measured: whether the probes can tell that int8 activations keep the accuracy: a
            classifier's whole-sequence file. A streaming file (16 probes, its state
            carried across invokes) and a one-output model (no top-1 agreement to hold) keep
            int16 activations under "auto".
    """
    if quantization != "int8" or form == "fused":
        return (None,)
    if activations != "auto":
        return (activations,)
    return ("int8", "int16") if target == "litert" and measured else ("int16",)


def _check_arguments(quantization, representative_data, batch_size, activations) -> None:
    check_choice("quantization", quantization, QUANTIZATIONS)
    check_choice("activations", activations, ACTIVATION_CHOICES)
    check_positive("batch_size", batch_size, optional=True, integer=True)
    if quantization == "int8" and representative_data is None:
        raise ConfigError(
            "int8 quantization needs representative_data: real training images "
            "[n, steps, features] float32 in [0, 1]"
        )


def to_tflite(
    model,
    path: str,
    quantization: str = "none",
    representative_data=None,
    batch_size: int | None = 1,
    stream: bool = False,
    form: str = "auto",
    activations: str = "auto",
    target: str = "litert",
    class_names: tuple[str, ...] | None = None,
    min_agreement: float | None = None,
    input_range: tuple[float, float] | None = PIXEL_RANGE,
    per_channel: bool = False,
) -> TfliteFile:
    """Converts a recurrent Keras model to a builtin-only .tflite file, checked against it.

    The model is read layer by layer (`model_reader.read_model`: the README's table lists
    what is rebuilt); a layer that is not rebuilt exactly is refused by name. Before the
    file is written, LiteRT runs it beside the Keras model on probe inputs (the
    representative data, else random sequences): a file outside `ParityBounds` is never
    written.

    Safe to call from several threads: the conversions run in parallel child processes.

    Args:
        model: a `keras.Model` (Sequential or functional, one chain of layers from a
            [steps, features] input to an [outputs] output), or the path of its .keras file.
        path: the .tflite file to write (atomically).
        quantization: "none" (float32), "float16" (weights), "dynamic" (int8 weights,
            float activations) or "int8" (full integer: int8 weights, input and output).
        representative_data: float32 [n, steps, features] real training inputs (images
            in [0, 1]) for int8 calibration (a few hundred are enough); they are also the
            parity check's probes.
        batch_size: 1 (runs on microcontrollers), another static size, or None (dynamic;
            LiteRT only).
        stream: write the streaming step model instead: (row [1, features], state) ->
            (state, logits), with the initial state stored in the file's metadata.
        form: "auto" (see `choose_form`), "loop" (builtin WHILE), "unrolled" or "fused"
            (LSTM: UNIDIRECTIONAL_SEQUENCE_LSTM, whose state lives in variable tensors:
            reset them between sequences, as `runtime.Classifier` does).
        activations: for int8, the activations inside the graph: "int16" (the recurrent
            state keeps 16 bits, so LiteRT and TFLM agree; a streaming file's state is
            int16), "int8" (every tensor int8: XNNPACK's fast kernels) or "auto" (see
            `activation_trials`: for target "litert", int8 where the file keeps
            `config.FAST_INT8_AGREEMENT` top-1 agreement with Keras on the probes, else
            int16 where int16 agrees better by `config.INT16_MIN_GAIN`, and
            `TfliteFile.why` says which and why). The fused LSTM op has its own int8
            scheme (int16 cell state) and ignores this.
        target: "litert" (LiteRT with XNNPACK: `runtime.Classifier`) or "micro"
            (TensorFlow Lite Micro): what "auto" form and activations choose for.
        class_names: what each output means, stored in the file (`runtime.Classifier`
            reads them as `class_names`); one per class. Not for a streaming file.
        min_agreement: for "dynamic" and "int8", the top-1 agreement with Keras the file
            must reach on the probes (default: `ParityBounds`' documented agreement for its
            activations). A regression model (one output) is held to a relative bound.
        input_range: the values the file takes: (0, 1), pixels (the runtime also takes
            uint8 0-255 images), another (low, high), or None: any finite values (sensor
            data, series). Stored in the file; the runtime refuses inputs outside it.
        per_channel: int8: one weight scale per output channel instead of per tensor:
            closer to Keras where a kernel's columns differ in range (a Bidirectional
            GRU-8: 99.6% vs 98.9% top-1 agreement), a larger file and TFLM arena (elman-64:
            22.5 vs 20.1 KB, 32.8 vs 18.4 KB).

    Returns:
        A `TfliteFile` describing the written file.

    Raises:
        ConfigError: an argument out of its domain, or `path` holds something other than
            a .tflite that kerasrnn wrote (`_io.check_replaceable`).
        ModelFileError: a model path that is missing or not a .keras model.
        ConversionError: a model this package cannot rebuild (named layer), the
            converter failed, crashed or emitted non-builtin ops (named), or the file does
            not compute what the Keras model does (the measured difference and bound).
    """
    _check_arguments(quantization, representative_data, batch_size, activations)
    check_replaceable(path, "a .tflite", is_sealed_model)
    if class_names is not None and stream:
        raise ConfigError("class_names are stored in whole-sequence classifiers, not stream=True")
    choose_form(quantization, form, target=target)  # checks the arguments' spelling
    bounds = ParityBounds.for_file(quantization, min_agreement)
    low, high = (-np.inf, np.inf) if input_range is None else map(float, input_range)
    if not low < high:
        raise ConfigError(f"input_range must be (low, high) with low < high, got {input_range}")
    with tempfile.TemporaryDirectory(prefix="kerasrnn-convert-") as tmp:
        job = {
            "model": os.path.join(tmp, "model.keras"),
            "quantization": quantization,
            "batch_size": batch_size,
            "stream": stream,
            "form": form,
            "activations": None,
            "target": target,
            "fast_agreement": FAST_INT8_AGREEMENT,
            "int16_min_gain": INT16_MIN_GAIN,
            "class_names": None if class_names is None else list(class_names),
            "out": os.path.join(tmp, "out.tflite"),
            "representative": None,
            "bounds": dataclasses.asdict(bounds),
            "input_range": [low, high],
            "per_channel": per_channel,
        }
        with _SAVING:
            if isinstance(model, str):
                model = load_model(model)
            # a model this package cannot rebuild fails here, not in the child
            read = model_reader.read_model(model)
            job["form"] = _form(read, quantization, form, batch_size, stream, target)
            measured = not stream and read.outputs > 1
            job["activations"] = activation_trials(
                quantization, activations, target, job["form"], measured
            )
            if class_names is not None and len(class_names) != read.outputs:
                raise ConfigError(
                    f"class_names must name each of the model's {read.outputs} classes, got "
                    f"{len(class_names)}: {list(class_names)}"
                )
            calibration = (
                None
                if representative_data is None
                else _representative(representative_data, read.input_shape, (low, high))
            )
            model.save(job["model"])
        if calibration is not None:
            job["representative"] = os.path.join(tmp, "representative.npy")
            np.save(job["representative"], calibration)
        info = _run_child(job)
        with open(job["out"], "rb") as f:
            content = f.read()
    ops = flatbuffer.operators(content)
    foreign = [op for op in ops if not flatbuffer.is_builtin(op)]
    if foreign:
        raise ConversionError(
            f"the converted graph needs non-builtin ops {foreign}; nothing was written to {path}"
        )
    atomic_write(path, content)
    written, chosen = info["form"], info["activations"]
    shape = "streaming step" if stream else _FORM_NAMES[written]
    batch = f"batch {batch_size}" if batch_size else "dynamic batch"
    inside = ""
    if quantization == "int8":
        inside = ", int16 cell state" if written == "fused" else f", {chosen} activations"
    return TfliteFile(
        path,
        len(content),
        4 * info["parameters"],
        tuple(ops),
        quantization,
        f"{shape}, {batch}{inside}",
        info["parity"],
        target,
        chosen,
        _why(target, form, quantization, activations, stream, info),
    )


def _form(read, quantization: str, form: str, batch_size, stream: bool, target: str) -> str:
    """The form the child writes (see `choose_form`); refuses a stream the model has not,
    and an int8 file of a masked model."""
    masks = [n for n, s in zip(read.names, read.stages) if isinstance(s, model_reader.Mask)]
    if masks and quantization == "int8":
        raise ConversionError(
            f"cannot export layer {masks[0]} (Masking) as int8: the mask is computed with "
            f"CEIL, which has no integer kernel; export it as float32 or float16"
        )
    if stream:
        read.check_streams()
        return "unrolled"  # the step function: one step of each layer
    if form != "auto":
        graph.check_form(read, form, batch_size)
    return choose_form(
        quantization,
        form,
        graph.can_fuse(read, batch_size),
        graph.can_loop(read),
        target,
        read.input_shape[0],
    )


_RUNTIMES = {"litert": "LiteRT with XNNPACK", "micro": "TensorFlow Lite Micro"}


def _why(
    target: str, form_asked: str, quantization: str, activations_asked: str, stream: bool, info
) -> str:
    """One line: why a written file has its form and activations (`TfliteFile.why`)."""
    written = info["form"]
    if stream:
        reason = "one step of every layer, for streaming"
    elif form_asked != "auto":
        reason = "as asked"
    elif target == "litert" and written == "loop":
        reason = f"more than {LITERT_UNROLL_MAX_STEPS} steps, too long to unroll"
    elif target == "litert":
        reason = f"the fastest form for {_RUNTIMES[target]}"
    elif written == "unrolled" and quantization == "int8":
        reason = "int8 files unroll (the converter cannot quantize a WHILE loop)"
    elif written == "unrolled":
        reason = "the model has no loop form"
    else:
        reason = f"the smallest form for {_RUNTIMES[target]}"
    reasons = [reason if stream else f"{_FORM_NAMES[written]}: {reason}"]
    chosen, agreement = info["activations"], info["parity"]["top1_agreement"]
    if chosen is None:
        pass
    elif activations_asked != "auto":
        reasons.append(f"{chosen} activations: as asked")
    elif info["rejected"] is not None:
        reasons.append(
            f"int16 activations: int8 ones were passed over, {info['rejected']} (XNNPACK "
            f"has no int16 kernels: slower)"
        )
    elif info["int16_agreement"] is not None:
        reasons.append(
            f"int8 activations: XNNPACK's kernels, {agreement:.2%} top-1 agreement with Keras "
            f"on the probes, below {FAST_INT8_AGREEMENT:.1%}, but int16 ones agreed on "
            f"{info['int16_agreement']:.2%}, not {100 * INT16_MIN_GAIN:.1f} points more, and "
            f"run about 20x slower"
        )
    elif chosen == "int8":
        kept = "" if agreement is None else f", {agreement:.1%} top-1 agreement with Keras"
        reasons.append(f"int8 activations: XNNPACK's kernels{kept} on the probes")
    elif target == "micro":
        reasons.append("int16 activations: TFLM and LiteRT give the same bytes")
    elif stream:
        reasons.append("int16 activations: a streaming file's state crosses invokes")
    else:
        reasons.append("int16 activations: one output, no top-1 agreement to check int8 by")
    return "; ".join(reasons)


def _representative(data, input_shape: tuple[int, int], input_range) -> np.ndarray:
    array = np.asarray(data, dtype=np.float32)
    if array.ndim != 3 or len(array) == 0 or array.shape[1:] != input_shape:
        raise ConfigError(
            f"representative_data must be [n, {input_shape[0]}, {input_shape[1]}] (the "
            f"model's input) with n > 0, got shape {array.shape}"
        )
    low, high = input_range
    if not np.isfinite(array).all() or array.min() < low or array.max() > high:
        if (low, high) == PIXEL_RANGE:
            raise ConfigError(
                "representative_data must hold images scaled to [0, 1], all finite "
                "(data other than pixels: pass input_range=None)"
            )
        raise ConfigError(f"representative_data must be finite and lie in [{low:g}, {high:g}]")
    return array


def _run_child(job: dict) -> dict:
    """Runs `_convert(job)` in a child process (see `child_process`); returns its result.

    Raises:
        ConversionError: the child crashed or reported an error.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        status, result = run_child(
            "kerasrnn.export.convert", [json.dumps(job)], timeout_s=_CONVERT_TIMEOUT_S, env=env
        )
    except ChildTimeout as e:
        raise ConversionError(f"the TFLite conversion hung: {e}; no file was written") from None
    if status < 0:
        raise ConversionError(
            f"the TFLite converter or LiteRT's check of its output crashed (signal "
            f"{-status}); no file was written. For int8 this happens when "
            f"calibration sees a tensor that never varies (an untrained model on MNIST's "
            f"blank first rows, say): train the model or calibrate on more varied data"
        )
    if result is None:
        raise ConversionError(
            f"the conversion process ended (status {status}) without a result; no file was written"
        )
    if result.get("error", "").startswith("ConversionError: "):  # the parity check's refusal
        raise ConversionError(result["error"].removeprefix("ConversionError: "))
    if "error" in result:
        raise ConversionError(
            f"the TFLite converter failed ({result['error']}); no file was written"
        )
    return result


def _convert(job: dict) -> dict:
    """The child process: build the graph, convert, slim, check; write `job["out"]`.

    `job["activations"]` lists the activations to try (`activation_trials`): each but the
    last must keep `job["fast_agreement"]` (`FAST_INT8_AGREEMENT`) on the probes, the last
    `job["bounds"]`.

    Returns:
        {"parameters": int, "form": str, "activations": the ones written (or None),
        "parity": `_parity`'s measures, "rejected": why the activations tried first were
        passed over (or None)}.

    Raises:
        ConversionError: the file does not compute what the Keras model does.
    """
    model = load_model(job["model"])
    weights = model_reader.read_model(model)
    rejected, passed_over, int16_agreement = None, None, None
    for k, activations in enumerate(job["activations"]):
        last = k == len(job["activations"]) - 1
        try:
            content = _converted(job, weights, activations)
        except (RuntimeError, ValueError) as e:  # the converter's or LiteRT's own errors
            if last:
                raise
            rejected = f"their conversion failed ({type(e).__name__}: {str(e)[:200]})"
            continue
        parity = _parity(content, model, weights, job)
        bounds = job["bounds"]
        if not last:  # the fast try: FAST_INT8_AGREEMENT, or a stricter bound asked for
            asked = bounds["top1_agreement"] or 0.0
            bounds = {**bounds, "top1_agreement": max(job["fast_agreement"], asked)}
        failure = ParityBounds(**bounds).failure(parity)
        if last and passed_over is not None and not _agrees_better(parity, passed_over, job):
            # int16 buys no accuracy over the int8 file that missed only the fast bound
            int16_agreement = parity["top1_agreement"]
            activations, content, parity = passed_over
            rejected = None
            break
        if failure is None:
            break
        if last:
            raise ConversionError(
                f"the converted file does not compute what the Keras model does on "
                f"{parity['probes']} probe sequences: {failure}; nothing was written"
            )
        rejected = (
            f"they agreed with Keras on {parity['top1_agreement']:.1%} of the probes, "
            f"below {bounds['top1_agreement']:.1%}"
        )
        if ParityBounds(**job["bounds"]).failure(parity) is None:
            passed_over = (activations, content, parity)
    with open(job["out"], "wb") as f:
        f.write(content)
    return {
        "parameters": int(model.count_params()),
        "form": job["form"],
        "activations": activations,
        "parity": parity,
        "rejected": rejected,
        "int16_agreement": int16_agreement,
    }


def _agrees_better(parity: dict, passed_over: tuple, job: dict) -> bool:
    """Whether a file (`parity`, int16 activations) agrees with Keras on more of the probes
    than the int8 file `passed_over` by at least `job["int16_min_gain"]`: otherwise int16's
    slower kernels buy nothing. A file that fails the bounds never agrees better."""
    if ParityBounds(**job["bounds"]).failure(parity) is not None:
        return False
    gain = parity["top1_agreement"] - passed_over[2]["top1_agreement"]
    return gain >= job["int16_min_gain"]


def _converted(job: dict, weights, activations: str | None) -> bytes:
    """The file's bytes: the model's graph converted as `job` asks (int8 with
    `activations`), slimmed and sealed, and loaded and run once by LiteRT (a file it
    rejects or aborts on fails the conversion, not a later caller).

    An int8-activation file joins each Elman step's inputs (`graph`) and gets its ranges
    pinned (`calibration`): measured 99.24% -> 99.65% top-1 agreement with Keras.
    """
    quantization, form = job["quantization"], job["form"]
    pinned = activations == "int8"
    if job["stream"]:
        function = graph.step_function(weights)
    else:
        function = graph.sequence_function(weights, job["batch_size"], form, joined=pinned)
    if form == "fused":  # the converter fuses marked functions only on this (newer) path
        holder = tf.Module()
        holder.function = function
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
    else:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    int16_inside = activations == "int16"
    if quantization == "int8":
        images = np.load(job["representative"])
        converter.representative_dataset = _calibration(weights, function, images, job)
        if int16_inside:  # float32 interface here; `integer_io` makes it int8 below
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.int8
        # One scale per weight tensor, not per output channel, unless asked: on the unrolled
        # graph every step's FULLY_CONNECTED carries its own per-channel multipliers.
        # Measured on elman-64: 20.1 KB vs 22.5 KB file, 18.4 KB vs 32.8 KB TFLM arena, same
        # accuracy; a Bidirectional GRU-8 (sum, pooled): 98.9% vs 99.6% agreement.
        converter._experimental_disable_per_channel = not job["per_channel"]
    if pinned:
        content = calibration.quantize(converter)
    else:
        content = converter.convert()
    inputs = [spec.name for spec in function.structured_input_signature[0]]
    outputs = sorted(function.structured_outputs) if job["stream"] else ["logits"]
    if int16_inside:
        content = integer_io.int8_interface(content, inputs, outputs)
    metadata = {INITIAL_STATE_METADATA: weights.initial_state.tobytes()} if job["stream"] else {}
    if job["class_names"] is not None:
        metadata[CLASS_NAMES_METADATA] = json.dumps(job["class_names"]).encode()
    if tuple(job["input_range"]) != PIXEL_RANGE:
        metadata[INPUT_RANGE_METADATA] = np.array(job["input_range"], np.float32).tobytes()
    content = flatbuffer.seal(flatbuffer.slim(content, metadata, outputs))
    check_loads(content)
    return content


def _probes(weights: model_reader.ModelGraph, job: dict) -> np.ndarray:
    """float32 [n, steps, features]: the representative data (its first 4,000 sequences:
    an int8 file's choice of activations rests on them), else 1,000 seeded random sequences
    in the input range (normal ones where it is unbounded); where the model masks, half of
    them end in masked steps. A streaming file: 16 of them."""
    if job["representative"]:
        return np.load(job["representative"])[: 16 if job["stream"] else 4000]
    count = 16 if job["stream"] else 1000
    rng, (low, high) = np.random.default_rng(0), job["input_range"]
    shape = (count, *weights.input_shape)
    finite = np.isfinite(low) and np.isfinite(high)
    probes = rng.uniform(low, high, shape) if finite else rng.standard_normal(shape)
    masks = [s for s in weights.stages if isinstance(s, model_reader.Mask)]
    if masks:
        steps = weights.input_shape[0]
        for i, probe in enumerate(probes[::2]):
            probe[steps - 1 - i % steps :] = masks[0].value
    return probes.astype(np.float32)


def _parity(content: bytes, model, weights: model_reader.ModelGraph, job: dict) -> dict:
    """Runs the file in LiteRT beside the Keras model on `_probes`: with the builtin kernels,
    and for target "litert" also with XNNPACK, which the runtime runs it with where it can
    (the two round int8 differently); the worse of the two is what it measures.

    Returns:
        {"probes": n, "max_abs_diff", "relative_diff" (over the largest |Keras output|),
        "top1_agreement" (None for one output)}, what `ParityBounds.failure` reads.
    """
    probes = _probes(weights, job)
    expected = model.predict(probes, verbose=0, batch_size=256)
    invokers = [Invoker(content)]
    if job["target"] == "litert":
        try:
            invokers.append(Invoker(content, "xnnpack"))
        except RuntimeError:  # XNNPACK cannot prepare it: the runtime runs the builtin kernels
            pass
    measures = [_measure(invoke, probes, expected, weights, job) for invoke in invokers]
    agreements = [m["top1_agreement"] for m in measures]
    return {
        "probes": len(probes),
        "max_abs_diff": max(m["max_abs_diff"] for m in measures),
        "relative_diff": max(m["relative_diff"] for m in measures),
        "top1_agreement": None if agreements[0] is None else min(agreements),
    }


def _measure(invoke: Invoker, probes, expected, weights: model_reader.ModelGraph, job: dict):
    """One interpreter's outputs on the probes against Keras's (see `_parity`)."""
    if job["stream"]:
        got = []
        for sequence in probes:
            state = weights.initial_state[None]
            for row in sequence:
                out = invoke(row=row[None], state=state)
                state = out["state"]
            got.append(out["logits"][0])
        got = np.stack(got)
    else:
        batch = job["batch_size"] or len(probes)
        padded = np.concatenate([probes, probes[: -len(probes) % batch or 0]])
        got = np.concatenate(
            [invoke(padded[i : i + batch])["logits"] for i in range(0, len(padded), batch)]
        )[: len(probes)]
    diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max()) or 1.0
    return {
        "max_abs_diff": diff,
        "relative_diff": diff / scale,
        "top1_agreement": (
            float((got.argmax(-1) == expected.argmax(-1)).mean()) if got.shape[-1] > 1 else None
        ),
    }


def _calibration(weights: model_reader.ModelGraph, function, images: np.ndarray, job: dict):
    """Representative inputs: whole images, or (row, state) pairs met while streaming them."""
    batch = job["batch_size"] or 1

    def sequences():
        for start in range(0, len(images) - batch + 1, batch):
            yield [images[start : start + batch]]

    def steps():
        for image in images[:64]:  # 64 images give 64 * steps calibration points
            state = weights.initial_state[None]
            for row in image:
                yield [row[None], state]
                state = function(row[None], state)["state"].numpy()

    return steps if job["stream"] else sequences


if __name__ == "__main__":
    sys.exit(child_main(lambda job: _convert(json.loads(job)), sys.argv[1:]))
