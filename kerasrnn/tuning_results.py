"""What a search leaves behind: the trials table (CSV and text), best hyperparameters, the
best model retrained on train+validation, plots of score by trial and of accuracy against
size (the Pareto front), and the report."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os

import keras
import keras_tuner as kt
from matplotlib.ticker import MaxNLocator

from kerasrnn import data
from kerasrnn._io import atomic_write, write_json
from kerasrnn.config import DataConfig
from kerasrnn.evaluation import evaluate
from kerasrnn.plots import figure
from kerasrnn.search_space import NAMES

log = logging.getLogger(__name__)
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
    """The trials as aligned text: every hyperparameter, the score, validation accuracy,
    epochs, seconds and model bytes (as integers)."""
    shown = ("trial", "status", *NAMES, "score", "val_accuracy", "epochs", "seconds", "model_bytes")

    def cell(key, value):
        if value is None:
            return "-"
        if key in ("model_bytes", "epochs"):
            return f"{int(value):,}"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(k, row.get(k)) for k in shown] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(shown)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(shown, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_results(
    tuner: kt.Tuner, data_config: DataConfig, out_dir: str, retrain: bool = True
) -> dict:
    """Writes trials.csv, best_hyperparameters.json, score_by_trial.png,
    accuracy_vs_size.png and (with `retrain`) best_model.keras trained on train+validation
    and scored on the test split.

    With a size budget that no trial met, nothing is crowned: "best" is None, and the
    summary names the smallest size reached (a warning says so too).

    Returns:
        {"best": hyperparameters or None, "score": float or None, "trial": id or None,
        "trials": int, "test_accuracy": float or None, "max_bytes": int or None, and,
        when no trial met the budget, "smallest_bytes" and "smallest_trial"}.
    """
    rows = trial_rows(tuner)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out_dir, "trials.csv"), buffer.getvalue())
    max_bytes = tuner.hypermodel.config.max_bytes
    _plot(rows, os.path.join(out_dir, "score_by_trial.png"), max_bytes)
    _plot_sizes(rows, os.path.join(out_dir, "accuracy_vs_size.png"), max_bytes)
    summary = {"trials": len(rows), "test_accuracy": None, "max_bytes": max_bytes}
    sized = [r for r in rows if r["model_bytes"] is not None]
    if max_bytes and sized and all(r["model_bytes"] > max_bytes for r in sized):
        smallest = min(sized, key=lambda r: r["model_bytes"])
        summary.update(
            best=None,
            score=None,
            trial=None,
            smallest_bytes=int(smallest["model_bytes"]),
            smallest_trial=smallest["trial"],
        )
        log.warning(
            "no trial met the size budget of %d bytes (the smallest reached %d bytes, "
            "trial %s): no best model was chosen",
            max_bytes,
            summary["smallest_bytes"],
            smallest["trial"],
        )
    else:
        best_trial = tuner.oracle.get_best_trials(1)[0]
        summary.update(
            best=dict(best_trial.hyperparameters.values),
            score=best_trial.score,
            trial=best_trial.trial_id,
        )
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
    summary = outcome.summary
    if summary and summary["best"] is None:
        lines.append(
            f"no trial met the size budget of {summary['max_bytes']:,} bytes: the smallest "
            f"model reached {summary['smallest_bytes']:,} bytes (trial "
            f"{summary['smallest_trial']}), so no best model was chosen; raise --max-bytes "
            f"or narrow the space to smaller models"
        )
    elif summary:
        lines.append(
            f"best (trial {summary['trial']}, score {summary['score']:.4f}): {summary['best']}"
        )
        if summary["test_accuracy"] is not None:
            lines.append(
                f"best model retrained on train+validation: test accuracy "
                f"{summary['test_accuracy']:.2%}"
            )
    return "\n".join(lines)


def _plot(rows: list[dict], path: str, max_bytes: int | None) -> None:
    """Validation accuracy by trial (numbered as in trials.csv), the best so far, and the
    trials over the size budget marked."""
    done = [r for r in rows if r["val_accuracy"] is not None]
    fig, ax = figure()
    if done:
        numbers = [int(r["trial"]) for r in done]
        accuracies = [r["val_accuracy"] for r in done]
        over = [bool(max_bytes and r["model_bytes"] and r["model_bytes"] > max_bytes) for r in done]
        ax.plot(numbers, accuracies, "o", label="trial")
        if any(over):
            ax.plot(
                [n for n, o in zip(numbers, over) if o],
                [a for a, o in zip(accuracies, over) if o],
                "x",
                color="red",
                markersize=10,
                label=f"over {max_bytes:,} bytes",
            )
        best, running = [], float("-inf")
        for accuracy, too_big in zip(accuracies, over):
            running = running if too_big else max(running, accuracy)
            best.append(running if running > float("-inf") else None)
        ax.plot(numbers, best, "-", label="best so far" + (" within budget" if max_bytes else ""))
        ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def pareto_front(rows: list[dict]) -> list[dict]:
    """The trials no other trial beats on both size and validation accuracy.

    Args:
        rows: `trial_rows`; trials without a size or an accuracy are left out.

    Returns:
        The front from the smallest model to the most accurate: each row is larger and
        more accurate than the one before.
    """
    measured = [r for r in rows if r["model_bytes"] is not None and r["val_accuracy"] is not None]
    front: list[dict] = []
    for row in sorted(measured, key=lambda r: (r["model_bytes"], -r["val_accuracy"])):
        if not front or row["val_accuracy"] > front[-1]["val_accuracy"]:
            front.append(row)
    return front


def _plot_sizes(rows: list[dict], path: str, max_bytes: int | None) -> None:
    """Validation accuracy against model bytes: every trial, the Pareto front (the best
    accuracy each size buys) and the size budget."""
    measured = [r for r in rows if r["model_bytes"] is not None and r["val_accuracy"] is not None]
    fig, ax = figure()
    if measured:
        ax.plot(
            [r["model_bytes"] for r in measured],
            [r["val_accuracy"] for r in measured],
            "o",
            alpha=0.5,
            label="trial",
        )
        front = pareto_front(rows)
        ax.step(
            [r["model_bytes"] for r in front],
            [r["val_accuracy"] for r in front],
            "-",
            where="post",
            label="Pareto front",
        )
        for r in front:
            ax.annotate(str(int(r["trial"])), (r["model_bytes"], r["val_accuracy"]), fontsize=8)
        if max_bytes:
            ax.axvline(max_bytes, color="red", linestyle="--", label=f"budget {max_bytes:,} bytes")
        ax.legend()
    ax.set_xlabel("model bytes")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
