"""Keras Tuner searches: artefacts, resume after kill -9, chief/worker, bad spaces."""

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras_tuner as kt
import pytest

from kerasrnn import data, tuning
from kerasrnn.config import DataConfig, TuneConfig
from kerasrnn.errors import ConfigError, RunExistsError, RunFolderError, SearchSpaceError
from kerasrnn.hypermodel import RNNHyperModel, budget_score
from kerasrnn.search_space import Choice, Range, SearchSpace

SMALL = DataConfig(source="sample", max_examples=600)
SPACE = [
    "--set",
    "cell=elman",
    "--range",
    "units=16:32",
    "--set",
    "layers=1",
    "--set",
    "batch_size=64",
]


def _trials(folder: str) -> dict[str, dict]:
    """The trial records Keras Tuner keeps on disk: trial_id -> trial.json."""
    trials = {}
    search = os.path.join(folder, "search")
    for name in sorted(os.listdir(search)):
        path = os.path.join(search, name, "trial.json")
        if name.startswith("trial_") and os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            trials[record["trial_id"]] = record
    return trials


# Hyperband's own behaviour (continued trials) is the default run's
# test_hyperband_continues_trials_with_their_optimizer_state_and_no_warning.
@pytest.mark.parametrize("tuner", ["random", pytest.param("hyperband", marks=pytest.mark.slow)])
def test_search_writes_every_artefact_and_learns(tmp_path, tuner):
    space = SearchSpace.parse(["cell=elman", "batch_size=32"], ["units=16:32"])
    config = TuneConfig(tuner=tuner, max_trials=3, max_epochs=3, seed=1)
    outcome = tuning.tune(
        space, DataConfig(source="sample", max_examples=1000), config, str(tmp_path)
    )
    assert outcome.finished and outcome.rows
    assert all(r["status"] == "COMPLETED" for r in outcome.rows)
    for name in (
        "trials.csv",
        "best_hyperparameters.json",
        "best_model.keras",
        "score_by_trial.png",
    ):
        assert os.path.getsize(tmp_path / name) > 0, name
    # 3 epochs on 1,000 digits: measured 0.58 and 0.62 (seeds 0 and 1), chance is 0.1
    assert outcome.summary["test_accuracy"] > 0.45
    with open(tmp_path / "trials.csv") as f:
        assert len(f.read().strip().splitlines()) == len(outcome.rows) + 1


def test_size_budget_objective_prefers_models_that_fit(tmp_path):
    space = SearchSpace.parse(["cell=elman", "batch_size=64"], ["units=16,64"])
    # Seed 1 draws both sizes (seeded searches repeat their trials; seed 0 draws 16 twice).
    config = TuneConfig(max_trials=2, max_epochs=1, max_bytes=8 * 1024, seed=1)
    outcome = tuning.tune(space, SMALL, config, str(tmp_path), retrain=False)
    by_units = {r["units"]: r for r in outcome.rows}
    assert by_units[64]["model_bytes"] > 8 * 1024 >= by_units[16]["model_bytes"]
    assert by_units[64]["score"] < 0 <= by_units[16]["score"]
    assert outcome.summary["best"]["units"] == 16


def test_budget_score_orders_models():
    assert budget_score(0.9, 100, 200) == 0.9
    assert budget_score(0.99, 300, 200) < budget_score(0.1, 200, 200)
    assert budget_score(0.99, 300, 200) > budget_score(0.99, 900, 200)


def test_int8_tflite_size_measure_is_the_size_of_the_trials_int8_file(tmp_path):
    import numpy as np

    from kerasrnn.export.convert import to_tflite

    space = SearchSpace.parse(["cell=elman", "units=16", "batch_size=64"])
    config = TuneConfig(max_trials=1, max_epochs=1, size_measure="int8_tflite", max_bytes=64 * 1024)
    outcome = tuning.tune(space, SMALL, config, str(tmp_path), retrain=False)
    # the trial's own weights, exported again as the measure does
    [trial] = _trials(str(tmp_path)).values()
    hp = kt.HyperParameters.from_config(trial["hyperparameters"])
    model = RNNHyperModel(space, SMALL, config).build(hp)
    model.load_weights(
        str(tmp_path / "search" / f"trial_{trial['trial_id']}" / "checkpoint.weights.h5")
    )
    images = data.load_arrays(SMALL, "train")[0][:200].astype(np.float32) / 255.0
    size = to_tflite(
        model, str(tmp_path / "again.tflite"), "int8", images, target="micro"
    ).size_bytes
    assert outcome.rows[0]["model_bytes"] == size


def test_tune_shift_flag_is_the_shift_each_trial_trains_with(tmp_path, monkeypatch):
    trained_with = []
    epochs = data.epochs

    def recording_epochs(config, split):
        trained_with.append((split, config.shift))
        return epochs(config, split)

    monkeypatch.setattr(data, "epochs", recording_epochs)
    space = SearchSpace.parse(["cell=elman", "units=16", "batch_size=64"])
    config = TuneConfig(max_trials=1, max_epochs=1)
    outcome = tuning.tune(space, dataclasses.replace(SMALL, shift=2), config, str(tmp_path))
    assert [r["shift"] for r in outcome.rows] == [2]
    assert {split for split, _ in trained_with} == {"train", "train+validation"}
    assert {shift for _, shift in trained_with} == {2}  # the trial and the retrained model
    best = json.loads((tmp_path / "best_hyperparameters.json").read_text())["best"]
    assert best["shift"] == 2
    assert json.loads((tmp_path / "search.json").read_text())["data"]["shift"] == 2


def test_search_over_the_lmu_memory_completes_every_trial_with_its_values(tmp_path):
    space = SearchSpace.parse(
        ["cell=lmu", "units=16", "hidden=8", "batch_size=64"],
        ["memory_order=8,16", "theta=14:28"],
    )
    config = TuneConfig(max_trials=2, max_epochs=1, seed=1)
    outcome = tuning.tune(space, SMALL, config, str(tmp_path), retrain=False)
    assert len(outcome.rows) == 2 and all(r["status"] == "COMPLETED" for r in outcome.rows)
    for trial in _trials(str(tmp_path)).values():
        hp = kt.HyperParameters.from_config(trial["hyperparameters"])
        model = RNNHyperModel(space, SMALL, config).build(hp)
        cell = model.get_layer("lmu_0").cell
        assert (cell.order, cell.theta) == (hp.get("memory_order"), hp.get("theta"))
        assert 14 <= cell.theta <= 28 and model.get_layer("hidden").units == 8


def test_searched_shift_range_is_an_integer_hyperparameter():
    hp = kt.HyperParameters()
    values = SearchSpace.parse([], ["shift=0:2"]).define(hp)
    [shift] = [p for p in hp.space if p.name == "shift"]
    assert isinstance(shift, kt.engine.hyperparameters.Int)
    assert (shift.min_value, shift.max_value, shift.step) == (0, 2, 1)
    assert values["shift"] in (0, 1, 2)


def test_shift_given_as_data_and_in_the_space_is_refused_before_anything_is_written(tmp_path):
    space = SearchSpace.parse([], ["shift=0,1"])
    with pytest.raises(SearchSpaceError, match=r"shift is given twice: the data's shift=1"):
        tuning.tune(space, dataclasses.replace(SMALL, shift=1), TuneConfig(), str(tmp_path))
    assert os.listdir(tmp_path) == []


def _kerasrnn(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "kerasrnn", "tune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_search_killed_mid_trial_resumes_without_training_a_trial_twice(tmp_path):
    out = str(tmp_path / "search")
    args = [
        "--data",
        "sample",
        "--max-examples",
        "600",
        *SPACE,
        "--max-trials",
        "4",
        "--max-epochs",
        "3",
        "--patience",
        "0",
        "--no-retrain",
        "--out",
        out,
    ]
    first = _kerasrnn(*args)
    deadline = time.time() + 300
    # Wait until two trials are recorded as finished, then kill -9 during the next one.
    while time.time() < deadline and first.poll() is None:
        if os.path.isdir(os.path.join(out, "search")):
            done = [t for t in _trials(out).values() if t["status"] == "COMPLETED"]
            if len(done) >= 2:
                break
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)  # reaps it and closes its pipes
    before = {tid: t for tid, t in _trials(out).items() if t["status"] == "COMPLETED"}
    assert len(before) >= 2
    second = _kerasrnn(*args)
    _, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr
    after = _trials(out)
    assert len(after) == 4 and all(t["status"] == "COMPLETED" for t in after.values())
    for tid, trial in before.items():  # finished trials were not trained again
        assert after[tid]["metrics"] == trial["metrics"]
    assert (
        len({json.dumps(t["hyperparameters"]["values"], sort_keys=True) for t in after.values()})
        == 4
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chief_and_two_workers_share_one_search(tmp_path):
    oracle = f"127.0.0.1:{_free_port()}"
    common = [
        "--data",
        "sample",
        "--max-examples",
        "300",
        *SPACE,
        "--max-trials",
        "4",
        "--max-epochs",
        "1",
        "--no-retrain",
        "--oracle",
        oracle,
    ]
    chief = _kerasrnn(*common, "--role", "chief", "--out", str(tmp_path / "chief"))
    workers = [
        _kerasrnn(
            *common, "--role", "worker", "--worker-id", f"w{i}", "--out", str(tmp_path / f"w{i}")
        )
        for i in range(2)
    ]
    processes = [chief, *workers]
    try:
        outputs = [p.communicate(timeout=600) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr
    trials = _trials(str(tmp_path / "chief"))
    assert len(trials) == 4 and all(t["status"] == "COMPLETED" for t in trials.values())
    assert (
        len({json.dumps(t["hyperparameters"]["values"], sort_keys=True) for t in trials.values()})
        == 4
    )
    # each worker trained its own trials (its folder holds their checkpoints), none twice
    trained = [
        {
            name.removeprefix("trial_")
            for name in os.listdir(tmp_path / f"w{i}" / "search")
            if name.startswith("trial_")
        }
        for i in range(2)
    ]
    assert trained[0] and trained[1] and not trained[0] & trained[1]
    assert trained[0] | trained[1] == set(trials)
    assert os.path.exists(tmp_path / "chief" / "trials.csv")


def test_space_narrowing_is_respected():
    hp = kt.HyperParameters()
    values = SearchSpace.parse(
        ["cell=gru"], ["units=32:256", "learning_rate=1e-4:1e-2", "batch_size=16,256"]
    ).define(hp)
    domains = {p.name: p for p in hp.space}
    assert values["cell"] == "gru" and isinstance(domains["cell"], kt.engine.hyperparameters.Fixed)
    assert (domains["units"].min_value, domains["units"].max_value) == (32, 256)
    assert domains["learning_rate"].sampling == "log"
    assert domains["batch_size"].values == [16, 256]


def test_parsed_domains():
    space = SearchSpace.parse(["dropout=0.1"], ["units=32:64", "cell=lstm,gru"])
    domains = dict(space.domains)
    assert domains == {
        "dropout": 0.1,
        "units": Range(32, 64, step=16),
        "cell": Choice(("lstm", "gru")),
    }


@pytest.mark.parametrize(
    "assignments,ranges,message",
    [
        (["speed=3"], [], "unknown hyperparameter 'speed'"),
        (["units"], [], "expected NAME=VALUE"),
        (["units=abc"], [], "units='abc': expected int"),
        (["units=0"], [], "units=0: units must be >= 1"),
        ([], ["units=256:32"], "empty range, low 256 > high 32"),
        ([], ["cell=elman:gru"], "a range needs numbers"),
        (["cell=transformer"], [], "must be one of"),
        ([], ["dropout=0.5:1.5"], r"dropout=1.5: dropout must be in \[0, 1\)"),
        (["learning_rate=nan"], [], "expected a finite number"),
        (["units=32"], ["units=16:64"], "units is given twice"),
        ([], ["batch_size=,"], "batch_size: empty choice"),
        ([], ["shift=0:28"], r"shift=28: shift must be a whole number of pixels in \[0, 27\]"),
        (["theta=-1"], [], r"theta=-1.0: theta must be >= 0 steps \(0: the whole sequence\)"),
        (["memory_order=0"], [], "memory_order=0: memory_order must be >= 1"),
    ],
)
def test_bad_space_gives_a_clear_error(assignments, ranges, message):
    with pytest.raises(SearchSpaceError, match=message):
        SearchSpace.parse(assignments, ranges)


def test_bad_space_is_one_line_on_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kerasrnn", "tune", "--range", "units=64:8", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == ("kerasrnn: error: units=64:8: empty range, low 64 > high 8")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"tuner": "grid"}, "tuner must be one of"),
        ({"max_trials": 0}, "max_trials must be a positive integer, got 0"),
        ({"size_measure": "flops"}, "size_measure must be one of"),
        ({"time_budget_s": -1}, "time_budget_s must be positive"),
    ],
)
def test_bad_tune_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TuneConfig(**kwargs)


def test_role_without_oracle_is_rejected():
    with pytest.raises(ConfigError, match="--role worker needs --oracle HOST:PORT"):
        tuning.distributed_environment("worker", None, None)


def test_time_budget_stops_after_the_running_trial(tmp_path):
    space = SearchSpace.parse(
        ["cell=elman", "units=16", "batch_size=64"], ["learning_rate=1e-3:1e-2"]
    )
    config = TuneConfig(max_trials=5, max_epochs=1, time_budget_s=0.001)
    outcome = tuning.tune(space, SMALL, config, str(tmp_path), retrain=False)
    assert not outcome.finished
    assert [r["status"] for r in outcome.rows] == ["COMPLETED"]
    resumed = tuning.tune(
        space, SMALL, TuneConfig(max_trials=2, max_epochs=1), str(tmp_path), retrain=False
    )
    assert resumed.finished and len(resumed.rows) == 2


def test_worker_id_that_is_a_path_is_rejected():
    with pytest.raises(ConfigError, match="--worker-id must be letters, digits.*got '/abs/path'"):
        tuning.distributed_environment("worker", "127.0.0.1:8000", "/abs/path")


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    """A finished one-trial search: (folder, space, config)."""
    space = SearchSpace.parse(["cell=elman", "units=16", "batch_size=64"])
    config = TuneConfig(max_trials=1, max_epochs=1)
    out = tmp_path_factory.mktemp("search")
    outcome = tuning.tune(space, SMALL, config, str(out), retrain=False)
    assert [r["status"] for r in outcome.rows] == ["COMPLETED"]
    return out, space, config


@pytest.mark.parametrize(
    "sets,ranges,changes,message",
    [
        (["cell=elman", "units=32", "batch_size=64"], [], {}, "space.units 16 -> 32"),
        (
            ["cell=elman", "batch_size=64"],
            ["units=16:32"],
            {},
            "space.units 16 -> {'low': 16, 'high': 32",
        ),
        (["cell=gru", "units=16", "batch_size=64"], [], {}, "space.cell 'elman' -> 'gru'"),
        (["cell=elman", "units=16", "batch_size=64"], [], {"max_epochs": 2}, "max_epochs 1 -> 2"),
        (["cell=elman", "units=16", "batch_size=64"], [], {"tuner": "hyperband"}, "tune.tuner"),
    ],
)
def test_resuming_a_search_with_other_settings_is_refused(
    finished_search, sets, ranges, changes, message
):
    out, _, config = finished_search
    before = sorted(os.listdir(out / "search"))
    changed = dataclasses.replace(config, **changes)
    with pytest.raises(
        RunExistsError, match=f"holds a search with other settings .*{re.escape(message)}"
    ):
        tuning.tune(SearchSpace.parse(sets, ranges), SMALL, changed, str(out), retrain=False)
    assert sorted(os.listdir(out / "search")) == before


def test_a_search_from_before_augmentation_resumes_without_it_and_refuses_it(
    finished_search, tmp_path
):
    out, space, config = finished_search
    out = shutil.copytree(out, tmp_path / "search")
    definition = json.loads((out / "search.json").read_text())
    del definition["data"]["shift"], definition["data"]["flip"]  # as an older kerasrnn wrote
    (out / "search.json").write_text(json.dumps(definition))
    outcome = tuning.tune(space, SMALL, config, str(out), retrain=False)
    assert [r["status"] for r in outcome.rows] == ["COMPLETED"]
    with pytest.raises(RunExistsError, match=re.escape("data.shift 0 -> 2")):
        tuning.tune(space, dataclasses.replace(SMALL, shift=2), config, str(out), retrain=False)


def test_resuming_a_search_with_more_trials_runs_only_the_new_ones(finished_search, tmp_path):
    out, space, config = finished_search
    out = shutil.copytree(out, tmp_path / "search")
    [(trial_id, first)] = _trials(str(out)).items()
    grown = dataclasses.replace(config, max_trials=2)
    outcome = tuning.tune(space, SMALL, grown, str(out), retrain=False)
    assert [r["status"] for r in outcome.rows] == ["COMPLETED"] * 2
    assert _trials(str(out))[trial_id]["metrics"] == first["metrics"]


def test_a_second_search_in_a_search_folder_is_refused_until_the_first_ends(
    finished_search, tmp_path, lock_holder
):
    out, space, config = finished_search
    out = str(shutil.copytree(out, tmp_path / "search"))
    first = lock_holder(out)
    before = sorted(os.listdir(os.path.join(out, "search")))
    with pytest.raises(
        RunFolderError,
        match=rf"the search folder {re.escape(out)} is in use by process {first.pid}; wait",
    ):
        tuning.tune(space, SMALL, config, out, retrain=False)
    assert sorted(os.listdir(os.path.join(out, "search"))) == before
    first.kill()  # kill -9: the kernel drops its lock, none is left stale
    first.wait()
    outcome = tuning.tune(space, SMALL, config, out, retrain=False)
    assert [r["status"] for r in outcome.rows] == ["COMPLETED"]


def test_damaged_search_state_names_the_file_and_what_to_do(finished_search, tmp_path):
    out, space, config = finished_search
    out = shutil.copytree(out, tmp_path / "search")
    (out / "search" / "oracle.json").write_bytes(b"")  # what a kill left before the fix
    with pytest.raises(
        SearchSpaceError,
        match=r"search/oracle.json: damaged search state \(Expecting value.*\): restore it",
    ):
        tuning.tune(space, SMALL, config, str(out), retrain=False)


def test_hyperband_continues_trials_with_their_optimizer_state_and_no_warning(
    tmp_path, recwarn, caplog
):
    # Hyperband trains a promising trial on from an earlier bracket's checkpoint, which
    # holds the optimizer's variables too: Keras skips them, with a warning, when the
    # optimizer it loads into is not built yet.
    space = SearchSpace.parse(["cell=elman", "units=8", "batch_size=64"], ["dropout=0.0,0.1"])
    config = TuneConfig(tuner="hyperband", max_epochs=3, seed=1)
    tiny = DataConfig(source="sample", max_examples=64)
    outcome = tuning.tune(space, tiny, config, str(tmp_path), retrain=False)
    assert {r["status"] for r in outcome.rows} == {"COMPLETED"}
    tuner = tuning.make_tuner(RNNHyperModel(space, tiny, config), config, str(tmp_path))
    continued = [
        trial
        for trial in tuner.oracle.trials.values()
        if "tuner/trial_id" in trial.hyperparameters.values
    ]
    assert continued  # a trial went on from an earlier one
    model = tuner.load_model(continued[0])  # loads the earlier trial's, then its own
    assert int(model.optimizer.iterations) > 0  # the optimizer's state was loaded
    messages = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Skipping variable loading" in m]
