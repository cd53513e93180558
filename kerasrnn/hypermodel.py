"""The Keras Tuner HyperModel: builds classifiers from a `SearchSpace` and trains them
with `training.fit`, scoring each trial (optionally against a model-size budget)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import keras
import keras_tuner as kt
import numpy as np

from kerasrnn import data
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig, TuneConfig
from kerasrnn.errors import SearchSpaceError
from kerasrnn.models import build_classifier
from kerasrnn.search_space import SearchSpace
from kerasrnn.training import compile_model, fit, steps_per_epoch

BUDGET_OBJECTIVE = "val_accuracy_within_budget"
# int8 .tflite size measure: calibrate on this many training images.
_CALIBRATION_IMAGES = 200


def objective(config: TuneConfig) -> kt.Objective:
    """The search objective: val_accuracy, or within a size budget `BUDGET_OBJECTIVE`."""
    return kt.Objective(BUDGET_OBJECTIVE if config.max_bytes else "val_accuracy", "max")


def model_bytes(model: keras.Model, measure: str, calibration: np.ndarray | None = None) -> int:
    """The size of a model as the edge budget counts it (see `TuneConfig.size_measure`)."""
    if measure == "float32_params":
        return 4 * model.count_params()
    if measure == "int8_params":
        return model.count_params()
    # Tuning may run where the export extras are missing; only this measure needs them.
    from kerasrnn.export.convert import to_tflite

    with tempfile.TemporaryDirectory() as tmp:
        # the file for microcontrollers, where a size budget binds; min_agreement 0: a
        # measure of size, and an untrained trial's agreement says nothing
        return to_tflite(
            model,
            os.path.join(tmp, "m.tflite"),
            "int8",
            calibration,
            min_agreement=0.0,
            target="micro",
        ).size_bytes


def budget_score(val_accuracy: float, size: int, max_bytes: int) -> float:
    """val_accuracy within the budget; below every in-budget score (negative) outside it,
    less so the nearer the model is to fitting, so that the search is steered back."""
    if size <= max_bytes:
        return val_accuracy
    return -size / max_bytes


class RNNHyperModel(kt.HyperModel):
    """Builds and trains `build_classifier` models from a `SearchSpace`.

    Args:
        space: the search space.
        data_config: the data; trials train on `train` and score on `validation`. Its
            shift, if any, becomes the space's (trials read their augmentation there).
        config: see `TuneConfig`.

    Raises:
        SearchSpaceError: `data_config` and `space` both set the shift, or the space sets
            one for a .npz's sequences.
        DataError: the .npz's labels fail `data.labelled_sequences`.
    """

    def __init__(self, space: SearchSpace, data_config: DataConfig, config: TuneConfig):
        super().__init__(name="kerasrnn")
        self.space = space.with_data_shift(data_config.shift)
        if data_config.npz is not None and "shift" in dict(self.space.domains):
            raise SearchSpaceError(
                f"shift: augmentation moves MNIST images' pixels; the sequences of "
                f"{data_config.npz} are read as they are"
            )
        self.data_config = dataclasses.replace(data_config, shift=0)
        self.model_shape = data.model_shape(data_config)
        self.config = config
        self._calibration = None

    def build(self, hp) -> keras.Model:
        values = self.space.define(hp)
        model_config = ModelConfig(
            cell=values["cell"],
            units=values["units"],
            layers=values["layers"],
            dropout=values["dropout"],
            activation=values["activation"],
            hidden=values["hidden"],
            memory_order=values["memory_order"],
            theta=values["theta"] or None,  # 0: the whole sequence
            view=self.data_config.view,
            **self.model_shape,
        )
        config = self.train_config(values, self.config.max_epochs)
        # A learning-rate schedule spans the most epochs a trial may train.
        model = compile_model(
            build_classifier(model_config), config, self._steps_per_epoch(config, values, "train")
        )
        # Hyperband continues trials from checkpoints that hold the optimizer's state: the
        # optimizer must have its variables to load them.
        model.optimizer.build(model.trainable_variables)
        return model

    def train_config(self, values: dict, epochs: int) -> TrainConfig:
        """The trainer's settings for a trial's hyperparameter values."""
        return TrainConfig(
            epochs=epochs,
            learning_rate=values["learning_rate"],
            clipnorm=values["clipnorm"],
            schedule=values["schedule"],
            weight_decay=values["weight_decay"],
            loop=self.config.loop,
            patience=None,
            seed=self.config.seed,
            verbose=0,
        )

    def fit(
        self, hp, model, *args, callbacks=(), epochs=None, initial_epoch=0, final=False, **kwargs
    ):
        """Trains one trial on the training split, scoring it on the validation split; or,
        with `final`, the chosen model on train+validation for `epochs` epochs.

        Returns:
            Metrics for Keras Tuner: val_accuracy (best epoch), val_loss, epochs,
            best_epoch, seconds, model_bytes and, with a size budget, the budget
            objective. With `final`: {"seconds": ...}.
        """
        values = self.space.define(hp)
        epochs = min(epochs or self.config.max_epochs, self.config.max_epochs)
        config = self.train_config(values, epochs)
        data_config = dataclasses.replace(
            self.data_config,
            batch_size=values["batch_size"],
            shift=values["shift"],
            seed=self.config.seed,
        )
        start = time.perf_counter()
        if final:  # a fresh model: compiled again, for a schedule spanning these epochs
            compile_model(model, config, self._steps_per_epoch(config, values, "train+validation"))
            fit(model, data.epochs(data_config, "train+validation"), None, config)
            return {"seconds": time.perf_counter() - start}
        history = keras.callbacks.History()
        callbacks = [history, *callbacks]
        if self.config.patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    "val_accuracy", mode="max", patience=self.config.patience
                )
            )
        fit(
            model,
            data.epochs(data_config, "train"),
            data.pipeline(data_config, "validation"),
            config,
            callbacks,
            initial_epoch,
        )
        accuracies = history.history["val_accuracy"]
        accuracy = max(accuracies)
        result = {
            "val_accuracy": accuracy,
            "val_loss": min(history.history["val_loss"]),
            "epochs": float(initial_epoch + len(accuracies)),
            "best_epoch": float(initial_epoch + 1 + int(np.argmax(accuracies))),
            "seconds": time.perf_counter() - start,
        }
        size = model_bytes(model, self.config.size_measure, self._calibration_images())
        result["model_bytes"] = float(size)
        if self.config.max_bytes:
            result[BUDGET_OBJECTIVE] = budget_score(accuracy, size, self.config.max_bytes)
        return result

    def _steps_per_epoch(self, config: TrainConfig, values: dict, split: str) -> int | None:
        """Batches per epoch of `split` at the trial's batch size, when a learning-rate
        schedule needs them (None otherwise)."""
        if config.schedule == "constant":
            return None
        batches = dataclasses.replace(self.data_config, batch_size=values["batch_size"])
        return steps_per_epoch(data.epochs(batches, split))

    def _calibration_images(self) -> np.ndarray | None:
        if self.config.size_measure != "int8_tflite":
            return None
        if self._calibration is None:
            first = dataclasses.replace(self.data_config, max_examples=_CALIBRATION_IMAGES)
            self._calibration, _ = data.load_sequences(first, "train")
        return self._calibration
