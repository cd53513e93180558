"""What a search leaves behind: the trials table (CSV and text), best hyperparameters, the
best model retrained on train+validation, a plot of score by trial, and the report."""

from __future__ import annotations

import csv
import dataclasses
import io
import os

import keras
import keras_tuner as kt

from kerasrnn import data
from kerasrnn._io import atomic_write, write_json
from kerasrnn.config import DataConfig
from kerasrnn.evaluation import evaluate
from kerasrnn.plots import pyplot
from kerasrnn.search_space import NAMES

COLUMNS = ("trial", "status", *NAMES, "score", "val_accuracy", "epochs", "seconds", "model_bytes")


def trial_rows(tuner: kt.Tuner) -> list[dict]:
    """One row per trial, in trial order: hyperparameters, score, epochs, seconds, size."""
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        row = {"trial": trial_id, "status": trial.status, "score": trial.score}
        row.update({name: trial.hyperparameters.values.get(name) for name in NAMES})
        for metric in ("val_accuracy", "epochs", "seconds", "model_bytes"):
            row[metric] = (
                trial.metrics.get_best_value(metric) if trial.metrics.exists(metric) else None
            )
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The trials as aligned text."""
    shown = (
        "trial",
        "status",
        "cell",
        "units",
        "layers",
        "learning_rate",
        "batch_size",
        "score",
        "epochs",
        "seconds",
        "model_bytes",
    )

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    cells = [[cell(row.get(k)) for k in shown] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(shown)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(shown, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_results(
    tuner: kt.Tuner, data_config: DataConfig, out_dir: str, retrain: bool = True
) -> dict:
    """Writes trials.csv, best_hyperparameters.json, score_by_trial.png and (with
    `retrain`) best_model.keras trained on train+validation and scored on the test split.

    Returns:
        {"best": hyperparameters, "score": float, "trials": int, "test_accuracy": float|None}.
    """
    rows = trial_rows(tuner)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out_dir, "trials.csv"), buffer.getvalue())
    _plot(rows, os.path.join(out_dir, "score_by_trial.png"), tuner.oracle.objective.name)
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best = dict(best_trial.hyperparameters.values)
    summary = {
        "best": best,
        "score": best_trial.score,
        "trial": best_trial.trial_id,
        "trials": len(rows),
        "test_accuracy": None,
    }
    if retrain:
        summary["test_accuracy"] = _retrain(tuner, best_trial, data_config, out_dir)
    write_json(os.path.join(out_dir, "best_hyperparameters.json"), summary)
    return summary


def _retrain(tuner: kt.Tuner, trial, data_config: DataConfig, out_dir: str) -> float:
    """Trains the best hyperparameters afresh on train+validation for the best trial's
    number of epochs (through the HyperModel, with the loop the search used), saves
    best_model.keras and returns its test accuracy."""
    hypermodel, hp = tuner.hypermodel, trial.hyperparameters
    epochs = (
        int(trial.metrics.get_best_value("best_epoch"))
        if trial.metrics.exists("best_epoch")
        else hypermodel.config.max_epochs
    )
    keras.utils.set_random_seed(hypermodel.config.seed)
    model = hypermodel.build(hp)
    hypermodel.fit(hp, model, epochs=max(1, epochs), final=True)
    atomic_write(os.path.join(out_dir, "best_model.keras"), model.save)
    batches = dataclasses.replace(data_config, batch_size=hp.get("batch_size"))
    return evaluate(model, data.pipeline(batches, "test"))["accuracy"]


def report(outcome) -> str:
    """A `tuning.TuneOutcome` as text: the trials table and the best result."""
    if outcome.role not in ("single", "chief"):
        return f"worker {outcome.role}: the search is over; results are in the chief's folder"
    lines = [table(outcome.rows)]
    if not outcome.finished:
        lines.append("stopped for the time budget: run the same command to continue")
    if outcome.summary:
        summary = outcome.summary
        lines.append(
            f"best (trial {summary['trial']}, score {summary['score']:.4f}): {summary['best']}"
        )
        if summary["test_accuracy"] is not None:
            lines.append(
                f"best model retrained on train+validation: test accuracy "
                f"{summary['test_accuracy']:.2%}"
            )
    return "\n".join(lines)


def _plot(rows: list[dict], path: str, objective: str) -> None:
    plt = pyplot()
    done = [(i + 1, r["score"]) for i, r in enumerate(rows) if r["score"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if done:
        xs, ys = zip(*done)
        ax.plot(xs, ys, "o", label="trial")
        best, running = [], float("-inf")
        for y in ys:
            running = max(running, y)
            best.append(running)
        ax.plot(xs, best, "-", label="best so far")
        ax.legend()
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
