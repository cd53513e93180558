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
