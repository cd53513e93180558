"""Export in one call: convert, verify against Keras and TFLM, write the C array."""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from kerasrnn import data
from kerasrnn.config import DataConfig
from kerasrnn.evaluation import load_model
from kerasrnn.export.config import MICRO_QUANTIZATIONS, ExportConfig
from kerasrnn.export.convert import TfliteFile, to_tflite
from kerasrnn.export.micro import write_c_array
from kerasrnn.export.verification import Report, verify

# int8 calibration: the training split, up to this many images. Measured on the sample,
# the whole 4,000-image split gave closer TFLM/LiteRT int8 agreement than 500 images.
CALIBRATION_IMAGES = 4000


def export_model(
    model_path: str, out_path: str, config: ExportConfig, data_config: DataConfig
) -> tuple[TfliteFile, Report, dict]:
    """Converts a saved classifier, verifies it and writes the extras.

    Calibration (int8) uses real training images; verification uses the test split.

    Args:
        model_path: the .keras file.
        out_path: the .tflite to write.
        config: see `ExportConfig`.
        data_config: where calibration and test digits come from (its view follows the model).

    Returns:
        (the written file, the verification report, {"stream": path, "c_array": [paths]}).
    """
    model = load_model(model_path)
    data_config = dataclasses.replace(
        data_config, view=data.view_for_shape(model.input_shape[1:], data_config.view)
    )
    calibration = None
    if config.quantization == "int8":
        images, _ = data.load_arrays(
            dataclasses.replace(data_config, max_examples=None), "train+validation"
        )
        calibration = _views(images[:CALIBRATION_IMAGES], data_config.view)
    written = to_tflite(
        model,
        out_path,
        config.quantization,
        calibration,
        config.batch_size,
        activations=config.activations,
    )
    images, labels = data.load_arrays(data_config, "test")
    report = verify(
        out_path,
        model,
        (_views(images, data_config.view), labels),
        micro=config.micro
        and config.batch_size == 1
        and config.quantization in MICRO_QUANTIZATIONS,
        json_path=os.path.splitext(out_path)[0] + ".verify.json",
    )
    extras = {}
    if config.stream:
        extras["stream"] = os.path.splitext(out_path)[0] + ".step.tflite"
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


def _views(images, view: str):
    """uint8 [n, 28, 28] -> float32 [n, steps, features] in the given view (as `data` makes it)."""
    dataset = tf.data.Dataset.from_tensor_slices((images, tf.zeros(len(images), tf.int32)))
    batches = dataset.map(data.view_function(view)).batch(4096)
    return tf.concat([x for x, _ in batches], axis=0).numpy()
