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

from kerasrnn._io import atomic_write
from kerasrnn.config import check_choice, check_positive
from kerasrnn.errors import ConfigError, ConversionError
from kerasrnn.evaluation import load_model
from kerasrnn.export import flatbuffer, graph, integer_io
from kerasrnn.export.child_process import child_main, run_child
from kerasrnn.export.config import FORMS, INT8_ACTIVATIONS, QUANTIZATIONS
from kerasrnn.export.runtime import CLASS_NAMES_METADATA, INITIAL_STATE_METADATA, check_loads

_FORM_NAMES = {"loop": "WHILE loop", "unrolled": "unrolled", "fused": "fused LSTM"}
# Keras models are not saved from two threads at once; the conversions themselves (child
# processes) run in parallel.
_SAVING = threading.Lock()


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
    """

    path: str
    size_bytes: int
    parameter_bytes: int
    operators: tuple[str, ...]
    quantization: str
    form: str

    @property
    def size_ratio(self) -> float:
        """File size over float32 parameter bytes."""
        return self.size_bytes / self.parameter_bytes


def choose_form(quantization: str, form: str = "auto", fusable: bool = False) -> str:
    """The graph form of a file.

    "auto" picks the smallest file that runs everywhere: TFLite's fused LSTM op for models
    of LSTM layers (`graph.can_fuse`; lstm-32 int8: 11.4 KB vs 33.3 KB unrolled; but the
    dynamic-range quantizer leaves the fused op's weights float, so not for "dynamic"), else the
    WHILE loop (elman-64: 30.0 KB float vs 35.9 KB unrolled); but the int8 converter
    segfaults on the loop (with int8 and int16 activations alike), so int8 files of the
    other cells are unrolled.
    """
    check_choice("form", form, ("auto", *FORMS))
    if form != "auto":
        return form
    if fusable and quantization != "dynamic":
        return "fused"
    return "unrolled" if quantization == "int8" else "loop"


def _check_arguments(quantization, representative_data, batch_size, activations) -> None:
    check_choice("quantization", quantization, QUANTIZATIONS)
    check_choice("activations", activations, INT8_ACTIVATIONS)
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
    activations: str = "int16",
    class_names: tuple[str, ...] | None = None,
) -> TfliteFile:
    """Converts a classifier to a builtin-only .tflite file.

    Safe to call from several threads: the conversions run in parallel child processes.

    Args:
        model: a `keras.Model` from `build_classifier`, or the path of its .keras file.
        path: the .tflite file to write (atomically).
        quantization: "none" (float32), "float16" (weights), "dynamic" (int8 weights,
            float activations) or "int8" (full integer: int8 weights, input and output).
        representative_data: float32 [n, steps, features] real training images for int8
            calibration (a few hundred are enough).
        batch_size: 1 (runs on microcontrollers), another static size, or None (dynamic;
            LiteRT only).
        stream: write the streaming step model instead: (row [1, features], state) ->
            (state, logits), with the initial state stored in the file's metadata.
        form: "auto" (see `choose_form`), "loop" (builtin WHILE), "unrolled" or "fused"
            (LSTM: UNIDIRECTIONAL_SEQUENCE_LSTM, whose state lives in variable tensors:
            reset them between sequences, as `runtime.Classifier` does).
        activations: for int8, the activations inside the graph: "int16" (the recurrent
            state keeps 16 bits, so LiteRT and TFLM agree; a streaming file's state is
            int16) or "int8" (every tensor int8). The fused LSTM op has its own int8
            scheme (int16 cell state) and ignores this.
        class_names: what each output means, stored in the file (`runtime.Classifier`
            reads them as `class_names`); one per class. Not for a streaming file.

    Returns:
        A `TfliteFile` describing the written file.

    Raises:
        ConfigError: an argument out of its domain.
        ModelFileError: a model path that is missing or not a .keras model.
        ConversionError: a model this package cannot rebuild (named layer), or the
            converter failed, crashed or emitted non-builtin ops (named).
    """
    _check_arguments(quantization, representative_data, batch_size, activations)
    if class_names is not None and stream:
        raise ConfigError("class_names are stored in whole-sequence classifiers, not stream=True")
    choose_form(quantization, form)  # checks the argument; the child resolves "auto"
    calibration = None if representative_data is None else _representative(representative_data)
    with tempfile.TemporaryDirectory(prefix="kerasrnn-convert-") as tmp:
        job = {
            "model": os.path.join(tmp, "model.keras"),
            "quantization": quantization,
            "batch_size": batch_size,
            "stream": stream,
            "form": form,
            "activations": activations,
            "class_names": None if class_names is None else list(class_names),
            "out": os.path.join(tmp, "out.tflite"),
            "representative": None,
        }
        with _SAVING:
            if isinstance(model, str):
                model = load_model(model)
            # a model this package cannot rebuild fails here, not in the child
            classes = len(graph.classifier_weights(model).b_y)
            if class_names is not None and len(class_names) != classes:
                raise ConfigError(
                    f"class_names must name each of the model's {classes} classes, got "
                    f"{len(class_names)}: {list(class_names)}"
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
    form = info["form"]
    shape = "streaming step" if stream else _FORM_NAMES[form]
    batch = f"batch {batch_size}" if batch_size else "dynamic batch"
    inside = ""
    if quantization == "int8":
        inside = ", int16 cell state" if form == "fused" else f", {activations} activations"
    return TfliteFile(
        path,
        len(content),
        4 * info["parameters"],
        tuple(ops),
        quantization,
        f"{shape}, {batch}{inside}",
    )


def _representative(data) -> np.ndarray:
    array = np.asarray(data, dtype=np.float32)
    if array.ndim != 3 or len(array) == 0:
        raise ConfigError(
            f"representative_data must be [n, steps, features] with n > 0, got shape {array.shape}"
        )
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise ConfigError("representative_data must hold images scaled to [0, 1], all finite")
    return array


def _run_child(job: dict) -> dict:
    """Runs `_convert(job)` in a child process (see `child_process`); returns its result.

    Raises:
        ConversionError: the child crashed or reported an error.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    status, result = run_child("kerasrnn.export.convert", [json.dumps(job)], env)
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
    if "error" in result:
        raise ConversionError(
            f"the TFLite converter failed ({result['error']}); no file was written"
        )
    return result


def _convert(job: dict) -> dict:
    """The child process: build the graph, convert, slim, write `job["out"]`.

    Returns:
        {"parameters": int, "form": str}.
    """
    model = load_model(job["model"])
    weights = graph.classifier_weights(model)
    quantization = job["quantization"]
    form = choose_form(
        quantization, job["form"], graph.can_fuse(weights, job["batch_size"]) and not job["stream"]
    )
    if job["stream"]:
        function = graph.step_function(weights)
    else:
        function = graph.sequence_function(weights, job["batch_size"], form)
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
    int16_inside = quantization == "int8" and job["activations"] == "int16" and form != "fused"
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
        # One scale per weight tensor, not per output channel: on the unrolled graph every
        # step's FULLY_CONNECTED would carry its own per-channel multipliers. Measured on
        # elman-64: 20.1 KB vs 22.5 KB file, 18.4 KB vs 32.8 KB TFLM arena, same accuracy.
        converter._experimental_disable_per_channel = True
    content = converter.convert()
    inputs = [spec.name for spec in function.structured_input_signature[0]]
    outputs = sorted(function.structured_outputs) if job["stream"] else ["logits"]
    if int16_inside:
        content = integer_io.int8_interface(content, inputs, outputs)
    metadata = {INITIAL_STATE_METADATA: weights.initial_state.tobytes()} if job["stream"] else {}
    if job["class_names"] is not None:
        metadata[CLASS_NAMES_METADATA] = json.dumps(job["class_names"]).encode()
    content = flatbuffer.seal(flatbuffer.slim(content, metadata, outputs))
    # LiteRT loads and runs it once here: a file it rejects or aborts on fails the
    # conversion, not a later caller.
    check_loads(content)
    with open(job["out"], "wb") as f:
        f.write(content)
    return {"parameters": int(model.count_params()), "form": form}


def _calibration(weights, function, images: np.ndarray, job: dict):
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
