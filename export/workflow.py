"""Export in one call: convert, verify against Keras and TFLM, write the C array."""

from __future__ import annotations

import dataclasses
import logging
import os

import tensorflow as tf

from kerasrnn import data
from kerasrnn.config import DataConfig
from kerasrnn.errors import ConfigError, MicroError
from kerasrnn.evaluation import load_model, model_view
from kerasrnn.export.config import MICRO_QUANTIZATIONS, ExportConfig
from kerasrnn.export.convert import TfliteFile, to_tflite
from kerasrnn.export.micro import write_c_array
from kerasrnn.export.verification import Report, verify

# int8 calibration: the training split, up to this many images. Measured on the sample,
# the whole 4,000-image split gave closer TFLM/LiteRT int8 agreement than 500 images.
CALIBRATION_IMAGES = 4000
# Below this top-1 agreement with Keras an int8 file is flagged (README: 99.0-99.5% with
# int16 activations; IRNN models measured 92.4%).
INT8_AGREEMENT = 0.99
log = logging.getLogger(__name__)


def export_model(
    model_path: str, out_path: str, config: ExportConfig, data_config: DataConfig
) -> tuple[TfliteFile, Report, dict]:
    """Converts a saved classifier, verifies it and writes the extras.

    Calibration (int8) uses real training images; verification uses the test split.

    Args:
        model_path: the .keras file.
        out_path: the .tflite to write.
        config: see `ExportConfig`.
        data_config: where calibration and test digits come from (read in the model's
            view, see `evaluation.model_view`).

    Returns:
        (the written file, the verification report, {"stream": path, "c_array": [paths]}).

    Raises:
        ConfigError: a file the export writes is the model itself.
        MicroError: the file was written but fails the TensorFlow Lite Micro check.
    """
    _refuse_overwriting_the_model(model_path, out_path, config)
    model = load_model(model_path)
    data_config = dataclasses.replace(data_config, view=model_view(model, data_config.view))
    calibration = None
    if config.quantization == "int8":
        images, _ = data.load_arrays(
            dataclasses.replace(data_config, max_examples=None), "train+validation"
        )
        calibration = _views(images[:CALIBRATION_IMAGES], data_config.view)
    log.info(
        "converting %s to %s (%s%s)",
        model_path,
        out_path,
        config.quantization,
        f", calibrated on {len(calibration):,} training digits" if calibration is not None else "",
    )
    written = to_tflite(
        model,
        out_path,
        config.quantization,
        calibration,
        config.batch_size,
        activations=config.activations,
    )
    images, labels = data.load_arrays(data_config, "test")
    micro = config.micro and config.batch_size == 1 and config.quantization in MICRO_QUANTIZATIONS
    log.info(
        "verifying %s against Keras on %d test digits%s",
        out_path,
        len(labels),
        " and in TensorFlow Lite Micro" if micro else "",
    )
    try:
        report = verify(
            out_path,
            model,
            (_views(images, data_config.view), labels),
            micro=micro,
            json_path=_outputs(out_path, config)["report"],
        )
    except MicroError as e:
        raise MicroError(
            f"{out_path} was written but fails the TensorFlow Lite Micro check "
            f"(--no-micro skips it): {e}"
        ) from None
    _warn_about(written, report)
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
            activations=config.activations,
        )
    if config.c_array:
        extras["c_array"] = list(
            write_c_array(out_path, os.path.dirname(os.path.abspath(out_path)))
        )
    return written, report, extras


def _outputs(out_path: str, config: ExportConfig) -> dict[str, str]:
    """Every file an export writes: the .tflite, its report, and the extras asked for."""
    stem, folder = os.path.splitext(out_path)[0], os.path.dirname(os.path.abspath(out_path))
    outputs = {"tflite": out_path, "report": stem + ".verify.json"}
    if config.stream:
        outputs["stream"] = stem + ".step.tflite"
    if config.c_array:
        outputs["c_header"] = os.path.join(folder, "model_data.h")
        outputs["c_source"] = os.path.join(folder, "model_data.cc")
    return outputs


def _refuse_overwriting_the_model(model_path: str, out_path: str, config: ExportConfig) -> None:
    """Raises `ConfigError` when a file the export would write is the model it reads."""
    model = os.path.realpath(model_path)
    for kind, path in _outputs(out_path, config).items():
        if os.path.realpath(path) == model:
            raise ConfigError(
                f"the export's {kind} file {path} is the model {model_path} "
                f"itself: choose another --out"
            )


def _warn_about(written: TfliteFile, report: Report) -> None:
    """One line for each way an int8 file falls short of what int8 promises."""
    if written.quantization != "int8":
        return
    if written.size_ratio > 1.0:
        log.warning(
            "%s: the int8 file (%s bytes) is larger than the float32 parameters "
            "(%s bytes): at this size its unrolled graph costs more than int8 saves",
            written.path,
            f"{written.size_bytes:,}",
            f"{written.parameter_bytes:,}",
        )
    if report.top1_agreement < INT8_AGREEMENT:
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


def _views(images, view: str):
    """uint8 [n, 28, 28] -> float32 [n, steps, features] in the given view (as `data` makes it)."""
    dataset = tf.data.Dataset.from_tensor_slices((images, tf.zeros(len(images), tf.int32)))
    batches = dataset.map(data.view_function(view)).batch(4096)
    return tf.concat([x for x, _ in batches], axis=0).numpy()
