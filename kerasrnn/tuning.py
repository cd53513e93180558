"""Hyperparameter searches with Keras Tuner: the tuner, resuming, the time budget, and
Keras Tuner's own chief/worker mode for searches across processes and machines.

Distributed tuning: every process runs the same search with `KERASTUNER_ORACLE_IP` and
`KERASTUNER_ORACLE_PORT` set, the chief with `KERASTUNER_TUNER_ID=chief` (it serves the
oracle and writes the results), each worker with its own id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time

import keras_tuner as kt

from kerasrnn import data, tuning_results
from kerasrnn.config import DataConfig, TuneConfig
from kerasrnn.errors import ConfigError, KerasRnnError
from kerasrnn.hypermodel import RNNHyperModel, objective
from kerasrnn.search_space import SearchSpace

log = logging.getLogger(__name__)
_TUNERS = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
}


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


def make_tuner(
    hypermodel: RNNHyperModel, config: TuneConfig, directory: str, project_name: str = "search"
) -> kt.Tuner:
    """A Keras Tuner tuner that resumes the search stored in `directory` when there is one.

    Args:
        hypermodel: see `RNNHyperModel`.
        config: see `TuneConfig`.
        directory: the search folder (trials, oracle state, checkpoints).
        project_name: the sub-folder Keras Tuner keeps its state in.

    Raises:
        ImportError: the bayesian tuner without scipy and scikit-learn.
    """
    budget = (
        {"max_epochs": config.max_epochs, "factor": 3}
        if config.tuner == "hyperband"
        else {"max_trials": config.max_trials}
    )
    if config.tuner == "bayesian":
        try:
            import scipy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"the bayesian tuner needs scipy and scikit-learn "
                f"(pip install 'kerasrnn[tuning]'): {e}"
            ) from None
    return _with_deadline(_TUNERS[config.tuner])(
        hypermodel,
        objective=objective(config),
        directory=directory,
        project_name=project_name,
        overwrite=False,
        seed=config.seed,
        max_consecutive_failed_trials=1,
        **budget,
    )


def search(tuner: kt.Tuner, config: TuneConfig) -> bool:
    """Runs (or resumes) the search until it is done or the time budget is spent.

    Returns:
        True if the search finished, False if it stopped for the time budget.
    """
    tuner.deadline = time.time() + config.time_budget_s if config.time_budget_s else None
    try:
        tuner.search(verbose=0)
    except _OutOfTime:
        log.warning(
            "time budget of %.0f s spent: stopped after the running trial", config.time_budget_s
        )
        return False
    return True


@dataclasses.dataclass
class TuneOutcome:
    """What `tune` did.

    Attributes:
        finished: the search ran to its end (False: stopped for the time budget).
        role: "single", "chief", or a worker's id.
        rows: one row per trial (see `tuning_results.trial_rows`); empty for workers.
        summary: the best trial and the retrained model's test accuracy (see
            `tuning_results.write_results`), or None.
    """

    finished: bool
    role: str
    rows: list
    summary: dict | None


def distributed_environment(
    role: str | None, oracle: str | None, worker_id: str | None
) -> dict[str, str]:
    """The KERASTUNER_* variables for a chief or worker (empty when not distributed).

    Raises:
        ConfigError: a role without an oracle address, or a malformed address.
    """
    if role is None:
        return {}
    if not oracle or oracle.count(":") != 1 or not oracle.split(":")[1].isdigit():
        raise ConfigError(f"--role {role} needs --oracle HOST:PORT, got {oracle!r}")
    host, port = oracle.split(":")
    tuner_id = "chief" if role == "chief" else (worker_id or f"worker-{os.getpid()}")
    return {
        "KERASTUNER_TUNER_ID": tuner_id,
        "KERASTUNER_ORACLE_IP": host,
        "KERASTUNER_ORACLE_PORT": port,
    }


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    """Sets environment variables for the duration of a block, then restores them."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def tune(
    space: SearchSpace,
    data_config: DataConfig,
    config: TuneConfig,
    out_dir: str,
    role: str | None = None,
    oracle: str | None = None,
    worker_id: str | None = None,
    retrain: bool = True,
) -> TuneOutcome:
    """Runs or resumes a search into `out_dir` and writes its results.

    Args:
        space, data_config, config: see `SearchSpace`, `DataConfig`, `TuneConfig`.
        out_dir: the search folder; re-running with the same folder resumes.
        role: None (one process, or as KERASTUNER_* variables say), "chief" (serves the
            oracle) or "worker".
        oracle: the chief's HOST:PORT for distributed tuning.
        worker_id: this worker's id (distinct per worker).
        retrain: retrain the best hyperparameters on train+validation at the end.

    Returns:
        A `TuneOutcome`. Workers return once the chief says the search is over; the
        results (and the retrained best model) are written by a single process or by the
        chief, whose oracle holds every worker's trials.

    Raises:
        KerasRnnError: a trial failed (Keras Tuner records failures and goes on).
    """
    data_config = dataclasses.replace(data_config, source=data.resolve_source(data_config))
    with _environment(distributed_environment(role, oracle, worker_id)):
        tuner = make_tuner(RNNHyperModel(space, data_config, config), config, out_dir)
        finished = search(tuner, config)
        distributed = "KERASTUNER_ORACLE_IP" in os.environ
        role = os.environ.get("KERASTUNER_TUNER_ID", "single") if distributed else "single"
        if role not in ("single", "chief"):  # a worker's oracle is a client of the chief's
            return TuneOutcome(finished, role, [], None)
        rows = tuning_results.trial_rows(tuner)
        failed = [r["trial"] for r in rows if r["status"] in ("FAILED", "INVALID")]
        if failed:
            raise KerasRnnError(f"trials {failed} failed; see the logs in {out_dir}")
        summary = None
        if any(r["score"] is not None for r in rows):
            summary = tuning_results.write_results(tuner, data_config, out_dir, retrain=retrain)
    return TuneOutcome(finished, role, rows, summary)
