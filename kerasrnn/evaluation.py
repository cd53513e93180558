"""Loading a saved classifier and scoring logits: what training, tuning and export share."""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

import kerasrnn.cells  # noqa: F401 - registers the package's layers, for load_model
from kerasrnn import data
from kerasrnn.config import DataConfig
from kerasrnn.errors import ModelFileError


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` classifier (the package's layers are registered on import).

    Raises:
        ModelFileError: the file is missing or is not a loadable `.keras` model.
    """
    if not os.path.isfile(path):
        raise ModelFileError(f"model file {path} does not exist")
    try:
        return keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ModelFileError(f"{path} is not a loadable .keras model: {e}") from None


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

    The sequence view follows the model's input shape ([28, 28]: rows) unless
    `data_config.view` asks for `permuted`.

    Returns:
        {"loss": float, "accuracy": float, "examples": int}.
    """
    model = load_model(model_path)
    view = data.view_for_shape(model.input_shape[1:], data_config.view)
    labels, logits = predict_logits(
        model, data.pipeline(dataclasses.replace(data_config, view=view), "test")
    )
    return {**scores(labels, logits), "examples": len(labels)}
