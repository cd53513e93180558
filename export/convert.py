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
import re
import subprocess
import sys
import tempfile

import numpy as np

from kerasrnn._io import atomic_write

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
# Activations of an int8 file: int16 inside (int8 weights, int8 images and logits; see
# `kerasrnn.export.integer_io`) or int8 throughout.
ACTIVATIONS = ("int16", "int8")
# Graph forms of `kerasrnn.export.graph.sequence_function`.
FORMS = ("loop", "unrolled", "fused")
_FORM_NAMES = {"loop": "WHILE loop", "unrolled": "unrolled", "fused": "fused LSTM"}
INITIAL_STATE_METADATA = "kerasrnn.initial_state"


class ConversionError(RuntimeError):
    """The model could not be converted to a builtin-only TFLite file."""


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
    if form not in ("auto", *FORMS):
        raise ValueError(f"form must be 'auto' or one of {FORMS}, got {form!r}")
    if form != "auto":
        return form
    if fusable and quantization != "dynamic":
        return "fused"
    return "unrolled" if quantization == "int8" else "loop"


def _check_arguments(quantization, representative_data, batch_size, activations):
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    if quantization == "int8" and representative_data is None:
        raise ValueError("int8 quantization needs representative_data: real training images "
                         "[n, steps, features] float32 in [0, 1]")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")


def to_tflite(model, path: str, quantization: str = "none", representative_data=None,
              batch_size: int | None = 1, stream: bool = False, form: str = "auto",
              activations: str = "int16") -> TfliteFile:
    """Converts a classifier to a builtin-only .tflite file.

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

    Returns:
        A `TfliteFile` describing the written file.

    Raises:
        ConversionError: the converter failed or crashed, or emitted Flex/custom ops
            (named in the message).
    """
    _check_arguments(quantization, representative_data, batch_size, activations)
    choose_form(quantization, form)  # checks the argument; the child resolves "auto"
    with tempfile.TemporaryDirectory(prefix="kerasrnn-convert-") as tmp:
        model_path = model if isinstance(model, str) else os.path.join(tmp, "model.keras")
        if not isinstance(model, str):
            model.save(model_path)
        elif not os.path.isfile(model_path):
            raise FileNotFoundError(f"model file {model_path} does not exist")
        job = {"model": os.path.abspath(model_path), "quantization": quantization,
               "batch_size": batch_size, "stream": stream, "form": form,
               "activations": activations, "out": os.path.join(tmp, "out.tflite"),
               "representative": None}
        if representative_data is not None:
            job["representative"] = os.path.join(tmp, "representative.npy")
            np.save(job["representative"], _representative(representative_data))
        with open(os.path.join(tmp, "job.json"), "w") as f:
            json.dump(job, f)
        _run_worker(os.path.join(tmp, "job.json"))
        with open(job["out"], "rb") as f:
            content = f.read()
        with open(job["out"] + ".json") as f:
            info = json.load(f)
    from kerasrnn.export import flatbuffer

    ops = flatbuffer.operators(content)
    foreign = [op for op in ops if not flatbuffer.is_builtin(op)]
    if foreign:
        raise ConversionError(f"the converted graph needs non-builtin ops {foreign}; "
                              f"nothing was written to {path}")
    atomic_write(path, content)
    form = info["form"]
    shape = "streaming step" if stream else _FORM_NAMES[form]
    batch = f"batch {batch_size}" if batch_size else "dynamic batch"
    inside = ""
    if quantization == "int8":
        inside = ", int16 cell state" if form == "fused" else f", {activations} activations"
    return TfliteFile(path, len(content), 4 * info["parameters"], tuple(ops), quantization,
                      f"{shape}, {batch}{inside}")


def _representative(data) -> np.ndarray:
    array = np.asarray(data, dtype=np.float32)
    if array.ndim != 3 or len(array) == 0:
        raise ValueError(f"representative_data must be [n, steps, features] with n > 0, "
                         f"got shape {array.shape}")
    if np.isnan(array).any() or array.min() < 0.0 or array.max() > 1.0:
        raise ValueError("representative_data must hold images scaled to [0, 1] without NaN")
    return array


def _run_worker(job_path: str) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "kerasrnn.export.convert", job_path],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode < 0:
        raise ConversionError(
            f"the TFLite converter or LiteRT's check of its output crashed (signal "
            f"{-result.returncode}); no file was written. For int8 this happens when "
            f"calibration sees a tensor that never varies (an untrained model on MNIST's "
            f"blank first rows, say): train the model or calibrate on more varied data")
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        ops = sorted(set(re.findall(r"\btf\.(\w+)", result.stderr)))
        detail = f"unsupported ops: {ops}" if ops else (lines[-1] if lines else "no output")
        raise ConversionError(f"the TFLite converter failed ({detail}); no file was written")


def _convert(job: dict) -> None:
    """The child process: build the graph, convert, slim, write."""
    import tensorflow as tf
    from kerasrnn.export import flatbuffer, graph, integer_io

    from kerasrnn.training import load_model

    model = load_model(job["model"])
    weights = graph.classifier_weights(model)
    quantization = job["quantization"]
    form = choose_form(quantization, job["form"],
                       graph.can_fuse(weights, job["batch_size"]) and not job["stream"])
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
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
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
    _smoke_test(content)
    metadata = {INITIAL_STATE_METADATA: weights.initial_state.tobytes()} if job["stream"] else {}
    with open(job["out"], "wb") as f:
        f.write(flatbuffer.slim(content, metadata, outputs))
    with open(job["out"] + ".json", "w") as f:
        json.dump({"parameters": int(model.count_params()), "form": form}, f)


def _smoke_test(content: bytes) -> None:
    """Loads and runs the converted model once in LiteRT, here in the child process: a
    model that LiteRT rejects or aborts on fails the conversion, not a later caller."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=content,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    interpreter.invoke()


def _calibration(weights, function, images: np.ndarray, job: dict):
    """Representative inputs: whole images, or (row, state) pairs met while streaming them."""
    batch = job["batch_size"] or 1

    def sequences():
        for start in range(0, len(images) - batch + 1, batch):
            yield [images[start:start + batch]]

    def steps():
        for image in images[:64]:  # 64 images give 64 * steps calibration points
            state = weights.initial_state[None]
            for row in image:
                yield [row[None], state]
                state = function(row[None], state)["state"].numpy()

    return steps if job["stream"] else sequences


def to_stream_tflite(model, path: str, quantization: str = "none",
                     representative_data=None, activations: str = "int16") -> TfliteFile:
    """The streaming step model (see `to_tflite(stream=True)`)."""
    return to_tflite(model, path, quantization, representative_data, batch_size=1, stream=True,
                     activations=activations)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        _convert(json.load(f))
