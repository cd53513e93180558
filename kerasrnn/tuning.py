"""Hyperparameter tuning with Keras Tuner: the HyperModel, tuners, resumable and
distributed searches, an edge-aware objective, and the results of a search.

Distributed tuning is Keras Tuner's own chief/worker mode: every process runs the same
search with `KERASTUNER_ORACLE_IP`/`KERASTUNER_ORACLE_PORT` set, the chief with
`KERASTUNER_TUNER_ID=chief` (it only serves the oracle), each worker with its own id.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import keras
import keras_tuner as kt
import numpy as np

from kerasrnn import data
from kerasrnn.models import ModelConfig, build_classifier
from kerasrnn.search_space import SearchSpace
from kerasrnn.training import TrainConfig, compile_model, fit_bptt

log = logging.getLogger(__name__)
TUNERS = ("random", "bayesian", "hyperband")
SIZE_MEASURES = ("float32_params", "int8_params", "int8_tflite")
BUDGET_OBJECTIVE = "val_accuracy_within_budget"


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """How a search runs.

    Attributes:
        tuner: "random", "bayesian" (needs scipy and scikit-learn) or "hyperband".
        max_trials: trials to run (random, bayesian); Hyperband's budget follows max_epochs.
        max_epochs: the most epochs one trial trains (Hyperband: its max_epochs).
        patience: early stopping inside a trial (epochs without a lower val_loss).
        loop: train trials with the "bptt" loop or Keras "fit".
        max_bytes: a model-size budget: the objective becomes the best validation accuracy
            among models within it (None: plain val_accuracy).
        size_measure: what counts against max_bytes: float32 parameter bytes, int8
            parameter bytes, or the size of the real int8 .tflite file.
        time_budget_s: stop cleanly after the trial running when this many seconds passed.
        seed: the search's seed.
    """

    tuner: str = "random"
    max_trials: int = 10
    max_epochs: int = 10
    patience: int | None = 2
    loop: str = "bptt"
    max_bytes: int | None = None
    size_measure: str = "float32_params"
    time_budget_s: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.tuner not in TUNERS:
            raise ValueError(f"tuner must be one of {TUNERS}, got {self.tuner!r}")
        if self.size_measure not in SIZE_MEASURES:
            raise ValueError(f"size_measure must be one of {SIZE_MEASURES}, "
                             f"got {self.size_measure!r}")
        for name in ("max_trials", "max_epochs", "max_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s}")

    @property
    def objective(self) -> kt.Objective:
        name = BUDGET_OBJECTIVE if self.max_bytes else "val_accuracy"
        return kt.Objective(name, direction="max")


def model_bytes(model: keras.Model, measure: str, calibration: np.ndarray | None = None) -> int:
    """The size of a model as the edge budget counts it (see `TuneConfig.size_measure`)."""
    if measure == "float32_params":
        return 4 * model.count_params()
    if measure == "int8_params":
        return model.count_params()
    import tempfile

    from kerasrnn.export.convert import to_tflite

    with tempfile.TemporaryDirectory() as tmp:
        return to_tflite(model, os.path.join(tmp, "m.tflite"), "int8", calibration).size_bytes


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
        data_config: the data; trials train on `train` and score on `validation`.
        config: see `TuneConfig`.
    """

    def __init__(self, space: SearchSpace, data_config: data.DataConfig, config: TuneConfig):
        super().__init__(name="kerasrnn")
        self.space, self.data_config, self.config = space, data_config, config
        self._calibration = None

    def _values(self, hp) -> dict:
        return self.space.define(hp)

    def build(self, hp) -> keras.Model:
        v = self._values(hp)
        model_config = ModelConfig(cell=v["cell"], units=v["units"], layers=v["layers"],
                                   dropout=v["dropout"], activation=v["activation"],
                                   input_shape=data.input_shape(self.data_config.view))
        return compile_model(build_classifier(model_config), self.train_config(v, 1))

    def train_config(self, values: dict, epochs: int) -> TrainConfig:
        """The trainer's settings for a trial's hyperparameter values."""
        return TrainConfig(epochs=epochs, learning_rate=values["learning_rate"],
                           clipnorm=values["clipnorm"], loop=self.config.loop,
                           patience=None, seed=self.config.seed, verbose=0)

    def fit(self, hp, model, *args, callbacks=(), epochs=None, initial_epoch=0, **kwargs):
        """Trains one trial on the training split, scoring it on the validation split.

        Returns:
            Metrics for Keras Tuner: val_accuracy (best epoch), val_loss, epochs, seconds,
            model_bytes and, with a size budget, the budget objective.
        """
        values = self._values(hp)
        epochs = min(epochs or self.config.max_epochs, self.config.max_epochs)
        config = self.train_config(values, epochs)
        data_config = dataclasses.replace(self.data_config, batch_size=values["batch_size"],
                                          seed=self.config.seed)
        train_ds = data.pipeline(data_config, "train")
        val_ds = data.pipeline(data_config, "validation")
        history = keras.callbacks.History()
        callbacks = [history, *callbacks]
        if self.config.patience:
            callbacks.append(keras.callbacks.EarlyStopping(patience=self.config.patience))
        start = time.perf_counter()
        if config.loop == "bptt":
            fit_bptt(model, train_ds, val_ds, config, callbacks, initial_epoch)
        else:
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0,
                      initial_epoch=initial_epoch, callbacks=callbacks)
        accuracies = history.history["val_accuracy"]
        accuracy = max(accuracies)
        result = {"val_accuracy": accuracy, "val_loss": min(history.history["val_loss"]),
                  "epochs": float(initial_epoch + len(accuracies)),
                  "best_epoch": float(initial_epoch + 1 + int(np.argmax(accuracies))),
                  "seconds": time.perf_counter() - start}
        size = model_bytes(model, self.config.size_measure, self._calibration_images())
        result["model_bytes"] = float(size)
        if self.config.max_bytes:
            result[BUDGET_OBJECTIVE] = budget_score(accuracy, size, self.config.max_bytes)
        return result

    def _calibration_images(self):
        if self.config.size_measure != "int8_tflite":
            return None
        if self._calibration is None:
            images, _ = data.load_arrays(self.data_config, "train")
            x = images[:200].astype(np.float32) / 255.0
            self._calibration = x.reshape(len(x), *data.input_shape(self.data_config.view))
        return self._calibration


class _OutOfTime(Exception):
    """Raised between trials when the wall-clock budget is spent."""


def _with_deadline(base: type[kt.Tuner]) -> type[kt.Tuner]:
    class Tuner(base):
        deadline: float | None = None

        def on_trial_end(self, trial):
            super().on_trial_end(trial)  # records and saves the finished trial first
            if self.deadline is not None and time.time() >= self.deadline:
                raise _OutOfTime

    Tuner.__name__ = base.__name__
    return Tuner


def make_tuner(hypermodel: RNNHyperModel, config: TuneConfig, directory: str,
               project_name: str = "search") -> kt.Tuner:
    """A Keras Tuner tuner that resumes the search stored in `directory` when there is one.

    Args:
        hypermodel: see `RNNHyperModel`.
        config: see `TuneConfig`.
        directory: the search folder (trials, oracle state, checkpoints).
    """
    common = {"objective": config.objective, "directory": directory,
              "project_name": project_name, "overwrite": False, "seed": config.seed,
              "max_consecutive_failed_trials": 1}
    if config.tuner == "hyperband":
        return _with_deadline(kt.Hyperband)(hypermodel, max_epochs=config.max_epochs, factor=3,
                                            **common)
    if config.tuner == "bayesian":
        try:
            import scipy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError as e:
            raise ImportError(f"the bayesian tuner needs scipy and scikit-learn "
                              f"(pip install 'kerasrnn[tuning]'): {e}") from None
        return _with_deadline(kt.BayesianOptimization)(hypermodel, max_trials=config.max_trials,
                                                       **common)
    return _with_deadline(kt.RandomSearch)(hypermodel, max_trials=config.max_trials, **common)


def search(tuner: kt.Tuner, config: TuneConfig) -> bool:
    """Runs (or resumes) the search until it is done or the time budget is spent.

    Returns:
        True if the search finished, False if it stopped for the time budget.
    """
    tuner.deadline = time.time() + config.time_budget_s if config.time_budget_s else None
    try:
        tuner.search(verbose=0)
    except _OutOfTime:
        log.warning("time budget of %.0f s spent: stopped after the running trial",
                    config.time_budget_s)
        return False
    return True


@dataclasses.dataclass
class TuneOutcome:
    """What `tune` did: whether the search finished, the trials and the best result."""

    finished: bool
    role: str
    rows: list
    summary: dict | None

    def report(self) -> str:
        from kerasrnn.tuning_results import table

        if self.role not in ("single", "chief"):
            return f"worker {self.role}: the search is over; results are in the chief's folder"
        lines = [table(self.rows)]
        if not self.finished:
            lines.append("stopped for the time budget: run the same command to continue")
        if self.summary:
            lines.append(f"best (trial {self.summary['trial']}, score "
                         f"{self.summary['score']:.4f}): {self.summary['best']}")
            if self.summary["test_accuracy"] is not None:
                lines.append(f"best model retrained on train+validation: test accuracy "
                             f"{self.summary['test_accuracy']:.2%}")
        return "\n".join(lines)


def distributed_environment(role: str | None, oracle: str | None,
                            worker_id: str | None) -> dict[str, str]:
    """The KERASTUNER_* variables for a chief or worker (empty when not distributed).

    Raises:
        ValueError: a role without an oracle address, or a malformed address.
    """
    if role is None:
        return {}
    if not oracle or oracle.count(":") != 1 or not oracle.split(":")[1].isdigit():
        raise ValueError(f"--role {role} needs --oracle HOST:PORT, got {oracle!r}")
    host, port = oracle.split(":")
    tuner_id = "chief" if role == "chief" else (worker_id or f"worker-{os.getpid()}")
    return {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": host,
            "KERASTUNER_ORACLE_PORT": port}


def tune(space: SearchSpace, data_config: data.DataConfig, config: TuneConfig, out_dir: str,
         role: str | None = None, oracle: str | None = None, worker_id: str | None = None,
         retrain: bool = True) -> TuneOutcome:
    """Runs or resumes a search into `out_dir` and writes its results.

    Args:
        space, data_config, config: see `SearchSpace`, `DataConfig`, `TuneConfig`.
        out_dir: the search folder; re-running with the same folder resumes.
        role: None (one process), "chief" (serves the oracle) or "worker".
        oracle: the chief's HOST:PORT for distributed tuning.
        worker_id: this worker's id (distinct per worker).
        retrain: retrain the best hyperparameters on train+validation at the end.

    Returns:
        A `TuneOutcome`. Workers return once the chief says the search is over; the
        results (and the retrained best model) are written by a single process or by the
        chief, whose oracle holds every worker's trials.
    """
    from kerasrnn import tuning_results

    os.environ.update(distributed_environment(role, oracle, worker_id))
    data_config = dataclasses.replace(data_config, source=data.resolve_source(data_config))
    tuner = make_tuner(RNNHyperModel(space, data_config, config), config, out_dir)
    finished = search(tuner, config)
    distributed = "KERASTUNER_ORACLE_IP" in os.environ
    role = os.environ.get("KERASTUNER_TUNER_ID", "single") if distributed else "single"
    if role not in ("single", "chief"):  # a worker's oracle is a client of the chief's
        return TuneOutcome(finished, role, [], None)
    rows = tuning_results.trial_rows(tuner)
    failed = [r["trial"] for r in rows if r["status"] in ("FAILED", "INVALID")]
    if failed:  # Keras Tuner swallows trial failures; do not
        raise RuntimeError(f"trials {failed} failed; see the logs in {out_dir}")
    summary = None
    if any(r["score"] is not None for r in rows):
        # the chief's oracle holds every worker's trials
        summary = tuning_results.write_results(tuner, data_config, out_dir, retrain=retrain)
    return TuneOutcome(finished, role, rows, summary)
