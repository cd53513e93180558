"""Hyperparameter searches with Keras Tuner: the tuner, resuming, the time budget, and
Keras Tuner's own chief/worker mode for searches across processes and machines.

Distributed tuning: every process runs the same search with `KERASTUNER_ORACLE_IP` and
`KERASTUNER_ORACLE_PORT` set, the chief with `KERASTUNER_TUNER_ID=chief` (it serves the
oracle and writes the results), each worker with its own id.

A search folder survives kills: OUT/search.json records what defines the search (a rerun
with other settings is refused), Keras Tuner's state files are written atomically, and a
kill between its two writes for one trial (trial.json, then oracle.json) is completed on
the next run (`_reconcile`). A single search or a chief holds OUT/.lock while it runs
(see `kerasrnn._lock`), so that a second search of OUT is refused; workers share OUT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import time

import keras_tuner as kt
from keras_tuner.src import utils as kt_utils

from kerasrnn import data, tuning_results
from kerasrnn._io import atomic_write, remove_temporaries, write_json
from kerasrnn._lock import folder_lock
from kerasrnn.config import DataConfig, TuneConfig
from kerasrnn.errors import ConfigError, KerasRnnError, RunExistsError, SearchSpaceError
from kerasrnn.hypermodel import RNNHyperModel, objective
from kerasrnn.rundir import differences, with_defaults
from kerasrnn.search_space import NAMES, SearchSpace

log = logging.getLogger(__name__)
_TUNERS = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
}
PROJECT = "search"  # the sub-folder of the search folder that Keras Tuner keeps its state in
_WORKER_ID = re.compile(r"[A-Za-z0-9._-]+")


class _OutOfTime(Exception):
    """Raised between trials when the wall-clock budget is spent."""


def _resumable(base: type[kt.Tuner]) -> type[kt.Tuner]:
    """`base` with a line logged per finished trial, a wall-clock deadline and a reload
    that completes interrupted writes."""

    class Tuner(base):
        deadline: float | None = None

        def on_trial_end(self, trial):
            super().on_trial_end(trial)  # records and saves the finished trial first
            _log_trial(self.oracle.get_trial(trial.trial_id), self.hypermodel.config)
            if self.deadline is not None and time.time() >= self.deadline:
                raise _OutOfTime

        def reload(self):
            super().reload()
            if not self._is_worker():  # a worker's oracle is the chief's
                _reconcile(self.oracle)

    Tuner.__name__ = base.__name__
    return Tuner


# What `model_bytes` counts, in the per-trial line (see `TuneConfig.size_measure`).
_SIZE_LABELS = {
    "float32_params": "bytes of float32 parameters",
    "int8_params": "bytes of int8 parameters",
    "int8_tflite": "bytes of int8 .tflite",
}


def _log_trial(trial: kt.engine.trial.Trial, config: TuneConfig) -> None:
    """Logs one line for a finished trial (numbered as in trials.csv): the hyperparameters
    searched (those not fixed), validation accuracy, size, epochs and seconds."""
    hp = trial.hyperparameters
    searched = " ".join(
        f"{p.name}={_format(hp.get(p.name))}"
        for p in hp.space
        if p.name in NAMES and not isinstance(p, kt.engine.hyperparameters.Fixed)
    )
    if trial.status != "COMPLETED":
        message = (trial.message or "").strip().splitlines()
        log.warning(
            "trial %s %s: %s%s",
            trial.trial_id,
            str(trial.status).lower(),
            searched,
            f": {message[-1]}" if message else "",
        )
        return

    def metric(name):
        return trial.metrics.get_best_value(name) if trial.metrics.exists(name) else None

    formats = {
        "val_accuracy": lambda v: f"val_accuracy {v:.4f}",
        "model_bytes": lambda v: f"{v:,.0f} {_SIZE_LABELS[config.size_measure]}",
        "epochs": lambda v: f"{v:.0f} epoch{'' if v == 1 else 's'}",
        "seconds": lambda v: f"{v:.1f} s",
    }
    results = [text(metric(name)) for name, text in formats.items() if metric(name) is not None]
    if "tuner/trial_id" in hp.values:  # Hyperband trains on from an earlier trial
        results.append(f"continued from trial {hp.values['tuner/trial_id']}")
    log.info("trial %s: %s -> %s", trial.trial_id, searched or "-", ", ".join(results))


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _reconcile(oracle: kt.Oracle) -> None:
    """Completes the record of a trial that a kill left between Keras Tuner's writes.

    The oracle writes a trial's trial.json first and oracle.json second, so oracle.json
    says what happened: a trial it has not seen start was never run (its folder is
    removed; the same trial is created again). A trial it holds as running was killed:
    it is run again, unless its results were recorded (training had finished), in which
    case it is ended with them instead of being trained twice.
    """
    for trial_id in [t for t in oracle.trials if t not in oracle.start_order]:
        del oracle.trials[trial_id]
        shutil.rmtree(os.path.join(oracle._project_dir, f"trial_{trial_id}"))
    # Keras Tuner keeps the trials to run again in private fields; reload filled them.
    for trial_id in list(oracle._retry_queue):
        trial = oracle.trials[trial_id]
        if trial.metrics.exists(oracle.objective.name):
            oracle._retry_queue.remove(trial_id)
            trial.status = "COMPLETED"
            oracle.score_trial(trial)
            oracle.end_order.append(trial_id)
            oracle._run_times[trial_id] += 1
            oracle._save_trial(trial)


@contextlib.contextmanager
def _atomic_state_writes():
    """Makes Keras Tuner write its state files (oracle.json, trial.json, tuner0.json)
    atomically within a block: it writes them in place, so a kill could leave an empty
    oracle.json that no rerun can read."""

    def save_json(path, obj):
        text = json.dumps(obj)
        atomic_write(path, text)
        return text

    saved = kt_utils.save_json
    kt_utils.save_json = save_json
    try:
        yield
    finally:
        kt_utils.save_json = saved


def _check_state_files(directory: str, project_name: str) -> None:
    """Reads Keras Tuner's state files before it does, to name a damaged one.

    Raises:
        SearchSpaceError: a state file is not valid JSON (names it and what to do).
    """
    project = os.path.join(directory, project_name)
    for path in sorted(
        glob.glob(os.path.join(project, "*.json"))
        + glob.glob(os.path.join(project, "trial_*", "trial.json"))
    ):
        try:
            with open(path) as f:
                json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise SearchSpaceError(
                f"{path}: damaged search state ({e}): restore it from a backup, or start "
                f"the search again in another folder (or after deleting {directory})"
            ) from None


def oracle_seed(seed: int) -> int:
    """The seed the oracle gets for the search's `seed`: Keras Tuner reads 0 as "no seed"
    (`seed or random.randint(...)`), so a search with seed 0 would differ from run to run.
    0 becomes 2**32 - 1 (the largest seed NumPy takes), every other seed is itself."""
    return seed if seed else 2**32 - 1


def make_tuner(
    hypermodel: RNNHyperModel, config: TuneConfig, directory: str, project_name: str = PROJECT
) -> kt.Tuner:
    """A Keras Tuner tuner that resumes the search stored in `directory` when there is one.

    Args:
        hypermodel: see `RNNHyperModel`.
        config: see `TuneConfig`.
        directory: the search folder (trials, oracle state, checkpoints).
        project_name: the sub-folder Keras Tuner keeps its state in.

    Raises:
        ImportError: the bayesian tuner without scipy and scikit-learn.
        SearchSpaceError: a state file of the stored search is damaged.
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
    _check_state_files(directory, project_name)
    tuner = _resumable(_TUNERS[config.tuner])(
        hypermodel,
        objective=objective(config),
        directory=directory,
        project_name=project_name,
        overwrite=False,
        seed=oracle_seed(config.seed),
        max_consecutive_failed_trials=1,
        **budget,
    )
    # Keras Tuner writes its own state first at the end of the first trial, and reloads a
    # search only when that state exists: record the search from its start.
    tuner.save()
    return tuner


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


def _search_definition(space: SearchSpace, data_config: DataConfig, config: TuneConfig) -> dict:
    """What defines a search, as JSON: its space, data and settings, less its budgets
    (max_trials, time_budget_s), which a rerun may change to search longer or shorter."""
    settings = dataclasses.asdict(config)
    del settings["max_trials"], settings["time_budget_s"]
    domains = {
        name: dataclasses.asdict(domain) if dataclasses.is_dataclass(domain) else domain
        for name, domain in space.domains
    }
    return {"space": domains, "data": data.recorded_settings(data_config), "tune": settings}


def _begin_search(out_dir: str, definition: dict) -> None:
    """Records the search's definition in OUT/search.json, or checks it against the stored
    one when the search is resumed.

    Raises:
        RunExistsError: the stored search was defined otherwise.
    """
    path = os.path.join(out_dir, "search.json")
    definition = json.loads(json.dumps(definition))  # compare as stored
    if os.path.exists(path):
        with open(path) as f:
            # A data setting that a search made by an older kerasrnn lacks had its default;
            # one made before digests were recorded resumes on the .npz as it is now.
            old = data.recorded_settings(DataConfig(), definition["data"]["npz_sha256"])
            saved = with_defaults(json.load(f), {"data": old})
        changed = differences(saved, definition)
        if changed:
            raise RunExistsError(
                f"{out_dir} holds a search with other settings ({', '.join(changed)}): rerun "
                f"it with the same settings (only max_trials/--max-trials and "
                f"time_budget_s/--time-budget may change), or choose another output folder"
            )
    else:
        write_json(path, definition)


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
        ConfigError: a role without an oracle address, a malformed address, or a worker
            id that is not a plain name (Keras Tuner makes a file name of it).
    """
    if role is None:
        return {}
    if not oracle or oracle.count(":") != 1 or not oracle.split(":")[1].isdigit():
        raise ConfigError(f"--role {role} needs --oracle HOST:PORT, got {oracle!r}")
    if worker_id is not None and not _WORKER_ID.fullmatch(worker_id):
        raise ConfigError(
            f"--worker-id must be letters, digits, '-', '_' or '.' (it names the worker's "
            f"state file), got {worker_id!r}"
        )
    host, port = oracle.split(":")
    tuner_id = "chief" if role == "chief" else (worker_id or f"worker-{os.getpid()}")
    return {
        "KERASTUNER_TUNER_ID": tuner_id,
        "KERASTUNER_ORACLE_IP": host,
        "KERASTUNER_ORACLE_PORT": port,
    }


def _is_worker(variables: dict[str, str]) -> bool:
    """Whether the process is a distributed search's worker, by `variables` or as the
    environment says."""
    environment = {**os.environ, **variables}
    return (
        "KERASTUNER_ORACLE_IP" in environment and environment.get("KERASTUNER_TUNER_ID") != "chief"
    )


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
        RunExistsError: `out_dir` holds a search with other settings.
        RunFolderError: another search (not a worker of this one) runs in `out_dir`.
        SearchSpaceError: the stored search's state is damaged, or the data and the
            space both set the shift.
        KerasRnnError: a trial failed (Keras Tuner records failures and goes on).
    """
    data_config = dataclasses.replace(data_config, source=data.resolve_source(data_config))
    if retrain and data.lacks_test_split(data_config):
        log.warning(
            "%s holds no x_test/y_test: the retrained best model's test accuracy is on the "
            "validation split, which it trains on (not a test score)",
            data_config.npz,
        )
    variables = distributed_environment(role, oracle, worker_id)
    hypermodel = RNNHyperModel(space, data_config, config)
    # A worker shares the folder with its running chief; a single search or a chief holds
    # it for the whole search: a second one in the same folder is refused.
    worker = _is_worker(variables)
    with contextlib.nullcontext() if worker else folder_lock(out_dir, "search folder"):
        _begin_search(out_dir, _search_definition(space, data_config, config))
        if not worker:
            project = os.path.join(out_dir, PROJECT)
            remove_temporaries(out_dir, project, *glob.glob(os.path.join(project, "trial_*")))
        with _environment(variables), _atomic_state_writes():
            tuner = make_tuner(hypermodel, config, out_dir)
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
