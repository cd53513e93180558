"""Loading a saved classifier and scoring logits: what training, tuning and export share."""

from __future__ import annotations

import dataclasses
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

import kerasrnn.cells  # noqa: F401 - registers the package's layers, for load_model
from kerasrnn import data
from kerasrnn.config import VIEWS, DataConfig
from kerasrnn.errors import ConfigError, ModelFileError

# A .keras file is a zip of JSON and HDF5 weights, which compress little; a zip bomb
# inflates a thousandfold. Refuse archives that claim to inflate beyond this.
_MAX_INFLATION = 100
_MAX_SMALL_ARCHIVE = 1 << 24  # any archive may hold this much (16 MiB)


def _check_archive(path: str) -> None:
    """Checks a `.keras` zip's declared sizes before anything is decompressed.

    Raises:
        ModelFileError: the archive inflates to far more than a model's weights could.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a readable zip: Keras's own error says what is wrong with it
    limit = max(_MAX_INFLATION * os.path.getsize(path), _MAX_SMALL_ARCHIVE)
    if inflated > limit:
        raise ModelFileError(
            f"{path}: the archive inflates to {inflated:,} bytes from "
            f"{os.path.getsize(path):,} (more than {limit:,}): not a .keras model, "
            f"refused unread"
        )


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` classifier (the package's layers are registered on import).

    Raises:
        ModelFileError: the file is missing, inflates like a zip bomb, or is not a
            loadable `.keras` model.
    """
    if not os.path.isfile(path):
        raise ModelFileError(f"model file {path} does not exist")
    _check_archive(path)
    try:
        return keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ModelFileError(f"{path} is not a loadable .keras model: {e}") from None


def model_view(model: keras.Model, requested: str = "rows") -> str:
    """The view a classifier reads: the one it was built for (its input is named
    `sequence_{view}`), or, for a model saved before kerasrnn kept it, the one its input
    shape gives ((784, 1) is `pixels` unless `requested` says `permuted`).

    Args:
        model: a classifier from `build_classifier`.
        requested: the view asked for; "rows", the default, asks for nothing.

    Raises:
        ConfigError: another view than the model's was asked for.
        ModelFileError: no view gives sequences of the model's input shape.
    """
    stored = model.inputs[0].name.removeprefix("sequence_")
    if stored in VIEWS:
        if requested not in ("rows", stored):
            raise ConfigError(
                f"the model reads {stored} sequences, not {requested}: pass "
                f"view={stored!r} (--view {stored}), or none"
            )
        return stored
    shape = tuple(model.input_shape[1:])
    if shape == (28, 28):
        return "rows"
    if shape == (784, 1):
        return "permuted" if requested == "permuted" else "pixels"
    raise ModelFileError(
        f"model {model.name!r} reads sequences of shape {shape}, which no view gives"
    )


def scores(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Mean cross-entropy and accuracy of logits [n, classes] against labels [n].

    Returns:
        {"loss": float, "accuracy": float}.
    """
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    return {"loss": float(loss), "accuracy": float((logits.argmax(-1) == labels).mean())}


def predict_logits(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs the model over a dataset of (x, y) batches.

    Returns:
        (labels int32 [n], logits float32 [n, classes]).
    """
    labels, logits = [], []
    for x, y in dataset:  # one pass, so shuffled datasets keep labels and logits paired
        logits.append(model.predict_on_batch(x))  # Keras's cached, compiled predict step
        labels.append(y.numpy())
    return np.concatenate(labels), np.concatenate(logits)


def evaluate(model: keras.Model, dataset: tf.data.Dataset) -> dict[str, float]:
    """Mean cross-entropy and accuracy of a logits model over a dataset (see `scores`)."""
    return scores(*predict_logits(model, dataset))


def evaluate_file(model_path: str, data_config: DataConfig) -> dict:
    """Loads a saved classifier and scores it on the test split.

    The digits are read in the model's own view (see `model_view`).

    Returns:
        {"loss": float, "accuracy": float, "examples": int}.
    """
    model = load_model(model_path)
    view = model_view(model, data_config.view)
    labels, logits = predict_logits(
        model, data.pipeline(dataclasses.replace(data_config, view=view), "test")
    )
    return {**scores(labels, logits), "examples": len(labels)}
