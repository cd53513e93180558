"""What a search leaves behind when it cannot do what was asked: never a silent answer."""

import os

from kerasrnn import tuning
from kerasrnn.config import DataConfig, TuneConfig
from kerasrnn.search_space import SearchSpace
from kerasrnn.tuning_results import report

SMALL = DataConfig(source="sample", max_examples=256)


def test_impossible_size_budget_crowns_no_model_and_says_so(tmp_path, caplog):
    space = SearchSpace.parse(["cell=elman", "batch_size=64"], ["units=8,16"])
    config = TuneConfig(max_trials=2, max_epochs=1, max_bytes=100)  # below any model
    outcome = tuning.tune(space, SMALL, config, str(tmp_path))
    sizes = [row["model_bytes"] for row in outcome.rows]
    assert all(size > 100 for size in sizes)
    assert outcome.summary["best"] is None and outcome.summary["test_accuracy"] is None
    assert outcome.summary["smallest_bytes"] == min(sizes)
    assert not os.path.exists(tmp_path / "best_model.keras")
    text = report(outcome)
    assert (
        f"no trial met the size budget of 100 bytes: the smallest model reached {int(min(sizes)):,}"
        in text
    )
    assert "no trial met the size budget" in caplog.text
    assert os.path.getsize(tmp_path / "score_by_trial.png") > 0
    assert os.path.getsize(tmp_path / "accuracy_vs_size.png") > 0


def test_trials_table_shows_every_hyperparameter_and_integer_bytes():
    from kerasrnn.search_space import NAMES
    from kerasrnn.tuning_results import table

    row = {
        "trial": "00",
        "status": "COMPLETED",
        "score": 0.91,
        "val_accuracy": 0.91,
        "epochs": 3.0,
        "seconds": 4.2,
        "model_bytes": 10980.0,
    }
    row.update(
        {name: value for name, value in zip(NAMES, ("elman", 32, 1, 0.1, "relu", 0.002, 0.5, 64))}
    )
    header, line = table([row]).splitlines()
    for name in (*NAMES, "val_accuracy", "model_bytes"):
        assert name in header.split()
    assert "10,980" in line.split() and "1.098e+04" not in line
    assert {"relu", "0.1", "0.5"} <= set(line.split())


def test_pareto_front_keeps_the_trials_no_other_beats_on_size_and_accuracy():
    from kerasrnn.tuning_results import pareto_front

    def row(trial, size, accuracy):
        return {"trial": trial, "model_bytes": size, "val_accuracy": accuracy}

    rows = [
        row("0", 4000, 0.90),
        row("1", 1000, 0.80),
        row("2", 2000, 0.70),  # larger and worse than trial 1
        row("3", 8000, 0.85),  # larger and worse than trial 0
        row("4", 1000, 0.75),  # as small as trial 1, worse
        row("5", 9000, 0.95),
        row("6", None, 0.99),  # not measured
    ]
    assert [r["trial"] for r in pareto_front(rows)] == ["1", "0", "5"]
