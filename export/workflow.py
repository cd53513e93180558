"""Export in one call: convert, verify against Keras and TFLM, write the C arrays; or write
a SavedModel for serving."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile

from kerasrnn import data
from kerasrnn._io import TEMPORARY_PREFIX, check_replaceable, temporary_path, write_json
from kerasrnn.config import CLASS_NAMES, DataConfig
from kerasrnn.errors import ConfigError, ConversionError, MicroError
from kerasrnn.evaluation import load_model, model_view
from kerasrnn.export.config import (
    FAST_INT8_AGREEMENT,
    MICRO_QUANTIZATIONS,
    ExportConfig,
    ParityBounds,
)
from kerasrnn.export.convert import TfliteFile, to_tflite
from kerasrnn.export.integrity import is_sealed_model
from kerasrnn.export.micro import c_array_paths, check_c_array_replaceable, write_c_array
from kerasrnn.export.model_reader import read_model
from kerasrnn.export.runtime import PIXEL_RANGE
from kerasrnn.export.verification import Report, verify
from kerasrnn.sequences import Sequences

# int8 calibration: the training split, up to this many images. Measured on the sample,
# the whole 4,000-image split gave closer TFLM/LiteRT int8 agreement than 500 images.
CALIBRATION_IMAGES = 4000
# Below this top-1 agreement with Keras a written int8 file is flagged (README: 99.0-99.5%
# with int16 activations); below `ParityBounds`' it is not written.
INT8_AGREEMENT = 0.99
log = logging.getLogger(__name__)


def export_model(
    model_path: str,
    out_path: str,
    config: ExportConfig,
    data_config: DataConfig,
    sequences: Sequences | None = None,
) -> tuple[TfliteFile, Report, dict]:
    """Converts a saved model, verifies it and writes the extras.

    Calibration (int8) uses real training data; verification uses the test split. The
    file is converted beside `out_path` and put in its place only once it agrees with
    Keras (a quantized file: `ParityBounds`' agreement on the test data), so a refused
    file never replaces a previous one.

    Args:
        model_path: the .keras file.
        out_path: the .tflite to write.
        config: see `ExportConfig`.
        data_config: where calibration and test digits come from (read in the model's
            view, see `evaluation.model_view`; source "npz": its splits as training
            makes them, `data.load_sequences`);
            unused with `sequences`.
        sequences: the user's own data (`kerasrnn.sequences`) for a model of any input
            shape: x calibrates, x_test (else x) verifies; the file takes any finite values.

    Returns:
        (the written file, the verification report, the extras asked for: {"stream": path,
        "c_array": [header, source], "stream_c_array": [header, source]}).

    Raises:
        ConfigError: a file the export writes is the model itself, or its path holds
            something other than kerasrnn's output of the same kind (a .tflite with a
            kerasrnn digest, a report, this file's C array; never a link, folder or
            device); or `config.format` is not "tflite" (see `export_saved_model`).
        ConversionError: the model cannot be rebuilt (named layer), or the file does not
            agree with Keras on the test data; nothing is written.
        DataError: `sequences` do not fit the model.
        MicroError: the file was written but fails the TensorFlow Lite Micro check.
    """
    if config.format != "tflite":
        raise ConfigError(
            f"export_model writes .tflite files; format {config.format!r} is export_saved_model's"
        )
    _check_outputs(model_path, out_path, config)  # a refusal leaves every file as it was
    model = load_model(model_path)
    calibration, test, input_range, class_names = _data(model, config, data_config, sequences)
    log.info(
        "converting %s to %s (%s%s)",
        model_path,
        out_path,
        config.quantization,
        f", calibrated on {len(calibration):,} training sequences"
        if calibration is not None
        else "",
    )
    options = {
        "target": config.target,
        "min_agreement": config.min_agreement,
        "input_range": input_range,
        "per_channel": config.per_channel,
    }
    micro = config.micro and config.batch_size == 1 and config.quantization in MICRO_QUANTIZATIONS
    log.info(
        "verifying %s against Keras on %d test sequences%s",
        out_path,
        len(test[1]),
        " and in TensorFlow Lite Micro" if micro else "",
    )
    staged = temporary_path(out_path)
    if os.path.lexists(staged) and not os.path.isdir(staged):  # what a killed export left
        os.remove(staged)
    try:
        written = to_tflite(
            model,
            staged,
            config.quantization,
            calibration,
            config.batch_size,
            activations=config.activations,
            class_names=class_names,
            **options,
        )
        try:
            report = verify(staged, model, test, micro=micro)
        except MicroError as e:
            _put_in_place(staged, out_path)
            raise MicroError(
                f"{out_path} was written but fails the TensorFlow Lite Micro check "
                f"(--no-micro skips it): {e}"
            ) from None
        _refuse_disagreement(out_path, written, report, config)
        _put_in_place(staged, out_path)
    finally:
        if os.path.lexists(staged):
            os.remove(staged)
    written = dataclasses.replace(written, path=out_path)
    report.tflite_path, report.form, report.why = out_path, written.form, written.why
    write_json(_outputs(out_path, config)["report"], report.as_dict())
    _warn_about(written, report, config)
    extras = {}
    if config.stream:
        extras["stream"] = _outputs(out_path, config)["stream"]
        log.info("converting the streaming step model %s", extras["stream"])
        to_tflite(
            model,
            extras["stream"],
            "int8" if config.quantization == "int8" else "none",
            calibration,
            stream=True,
            # the whole-sequence file's where asked; "auto" keeps a stream's int16
            activations=config.activations,
            **options,
        )
    if config.c_array:
        arena = report.micro["arena_bytes"] if report.micro else None
        extras["c_array"] = list(write_c_array(out_path, arena_bytes=arena))
        if config.stream:
            extras["stream_c_array"] = list(write_c_array(extras["stream"]))
    return written, report, extras


def _data(model, config: ExportConfig, data_config: DataConfig, sequences: Sequences | None):
    """(calibration inputs or None, (test inputs, test labels), the file's input range,
    the class names it stores) for `export_model`."""
    int8 = config.quantization == "int8"
    if sequences is None and data_config.source == "npz":  # split as training split it
        sequences = Sequences(
            *data.load_sequences(data_config, "train+validation"),
            *data.load_sequences(data_config, "test"),
        )
    if sequences is not None:
        read = read_model(model)
        sequences.check_model(read.input_shape, read.outputs)
        calibration = sequences.x[:CALIBRATION_IMAGES] if int8 else None
        return calibration, sequences.test, None, None
    data_config = dataclasses.replace(data_config, view=model_view(model, data_config.view))
    calibration = None
    if int8:
        calibration, _ = data.load_sequences(
            dataclasses.replace(data_config, max_examples=CALIBRATION_IMAGES), "train+validation"
        )
    test = data.load_sequences(data_config, "test")
    return calibration, test, PIXEL_RANGE, _class_names(model, data_config)


def _refuse_disagreement(out_path: str, written: TfliteFile, report: Report, config) -> None:
    """Raises `ConversionError` when a quantized classifier's top-1 agreement with Keras
    on the test data is below its `ParityBounds`."""
    bound = ParityBounds.for_file(written.quantization, config.min_agreement).top1_agreement
    if bound is not None and report.keras_accuracy is not None and report.top1_agreement < bound:
        raise ConversionError(
            f"the {written.quantization} file agrees with Keras on {report.top1_agreement:.1%} "
            f"of the {report.examples} test sequences, below {bound:.1%} (--min-agreement "
            f"lowers it); nothing was written to {out_path}"
        )


def _class_names(model, data_config: DataConfig) -> tuple[str, ...] | None:
    """The class names a file for `data_config.dataset` stores: none for MNIST, whose
    digits are the runtime's default, nor for a model of another number of classes."""
    names = CLASS_NAMES[data_config.dataset]
    if data_config.dataset == "mnist" or model.output_shape[-1] != len(names):
        return None
    return names


def export_saved_model(model_path: str, out_path: str) -> str:
    """Writes a saved classifier as a TensorFlow SavedModel folder, for serving.

    Its "serving_default" signature takes float32 [batch, steps, features] in [0, 1] (any
    batch size) and gives the float32 logits [batch, classes] of the Keras model.

    Args:
        model_path: the .keras file.
        out_path: the folder to create; it is written whole or not at all.

    Returns:
        `out_path`.

    Raises:
        ConfigError: `out_path` exists (a file or folder is never replaced).
        ModelFileError: `model_path` is missing or not a .keras model.
    """
    if os.path.lexists(out_path):
        raise ConfigError(
            f"{out_path} exists: a SavedModel is never written over a file or folder; "
            f"remove it or choose another --out"
        )
    model = load_model(model_path)
    parent = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(parent, exist_ok=True)
    log.info("writing %s as the SavedModel %s", model_path, out_path)
    with tempfile.TemporaryDirectory(prefix=TEMPORARY_PREFIX, dir=parent) as tmp:
        staged = os.path.join(tmp, "saved_model")
        model.export(staged, format="tf_saved_model", verbose=False)
        os.rename(staged, out_path)  # whole or not at all
    return out_path


def _outputs(out_path: str, config: ExportConfig) -> dict[str, str]:
    """Every file an export writes: the .tflite, its report, and the extras asked for."""
    stem = os.path.splitext(out_path)[0]
    outputs = {"tflite": out_path, "report": stem + ".verify.json"}
    if config.stream:
        outputs["stream"] = stem + ".step.tflite"
    if config.c_array:
        outputs["c_header"], outputs["c_source"] = c_array_paths(out_path)
        if config.stream:
            outputs["stream_c_header"], outputs["stream_c_source"] = c_array_paths(
                outputs["stream"]
            )
    return outputs


def _check_outputs(model_path: str, out_path: str, config: ExportConfig) -> None:
    """Refuses, before anything is converted, an export that would replace the model it
    reads or a file that is not kerasrnn's own output of the same kind.

    Raises:
        ConfigError: naming the file (see `_io.check_replaceable` and
            `micro.check_c_array_replaceable`).
    """
    model = os.path.realpath(model_path)
    outputs = _outputs(out_path, config)
    for kind, path in outputs.items():
        if os.path.realpath(path) == model:
            raise ConfigError(
                f"the export's {kind} file {path} is the model {model_path} "
                f"itself: choose another --out"
            )
    for kind in ("tflite", "stream"):
        if kind in outputs:
            check_replaceable(outputs[kind], "a .tflite", is_sealed_model)
    check_replaceable(outputs["report"], "a verification report", Report.is_report)
    if config.c_array:
        check_c_array_replaceable(out_path)
        if config.stream:
            check_c_array_replaceable(outputs["stream"])


def _put_in_place(staged: str, out_path: str) -> None:
    """Moves a verified file to `out_path`, checked again (the conversion took minutes)."""
    check_replaceable(out_path, "a .tflite", is_sealed_model)
    os.replace(staged, out_path)


def _warn_about(written: TfliteFile, report: Report, config: ExportConfig) -> None:
    """One line for each way an int8 file falls short of what int8 promises."""
    if written.quantization != "int8":
        return
    if config.c_array and written.target != "micro":
        log.warning(
            "%s: its C array holds a file made for LiteRT; --target micro makes the one for "
            "microcontrollers (int16 activations, the smallest arena)",
            written.path,
        )
    classifier = report.keras_accuracy is not None
    chosen = config.activations == "auto" and written.target == "litert" and classifier
    if chosen and written.activations == "int16":
        log.warning(
            "%s: int16 activations, which XNNPACK has no kernels for: in LiteRT this int8 "
            "file runs about 10x slower than float32 (%s); --quantize dynamic (int8 "
            "weights, float activations) runs faster than float32 there",
            written.path,
            written.why,
        )
    if chosen and written.activations == "int8" and report.top1_agreement < FAST_INT8_AGREEMENT:
        log.warning(
            "%s: its int8 activations agree with Keras on %.2f%% of the test sequences, "
            "below %.1f%% (--activations int16 may keep more, about 20x slower in LiteRT)",
            written.path,
            100 * report.top1_agreement,
            100 * FAST_INT8_AGREEMENT,
        )
    if written.size_ratio > 1.0:
        log.warning(
            "%s: the int8 file (%s bytes) is larger than the float32 parameters "
            "(%s bytes): at this size its unrolled graph costs more than int8 saves",
            written.path,
            f"{written.size_bytes:,}",
            f"{written.parameter_bytes:,}",
        )
    if report.keras_accuracy is not None and report.top1_agreement < INT8_AGREEMENT:
        log.warning(
            "%s: the int8 file agrees with Keras on only %.1f%% of the test digits "
            "(below %.0f%%): check its accuracy (%.2f%% vs Keras %.2f%%) before "
            "deploying it",
            written.path,
            100 * report.top1_agreement,
            100 * INT8_AGREEMENT,
            100 * report.tflite_accuracy,
            100 * report.keras_accuracy,
        )
