"""SIGKILL inside the file writes of training and tuning, injected with strace, and the
resume that must follow: every epoch and every trial exactly once, nothing lost.

strace stops the process at the chosen system call on the chosen file (`-P`), the Nth
time it is made, and kills it there (`inject=SYSCALL:signal=SIGKILL:when=N`): `openat`
before a file is created, `write` with the file created and empty, `rename` with it
complete but not yet in place. The slow variants kill inside every file a run writes.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import tensorflow as tf
from test_tuning import _trials

from kerasrnn import tuning
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig, TuneConfig
from kerasrnn.models import build_classifier
from kerasrnn.search_space import SearchSpace
from kerasrnn.training_run import train


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "true"], check=False)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _strace_works(),
    reason="strace is missing or may not trace here (apt-get install strace; ptrace allowed): "
    "the kills are injected with it",
)

# The killed process and the test build their configs from the same arguments.
_DATA = {"source": "sample", "max_examples": 256}
_MODEL = {"cell": "elman", "units": 8}
_TRAIN = {"epochs": 3, "learning_rate": 0.05, "patience": None, "verbose": 0}
_SPACE = (["cell=elman", "batch_size=64", "layers=1"], ["units=8:32"])
_TUNE = {"max_trials": 3, "max_epochs": 2, "patience": None}
SMALL, MODEL, TRAIN = DataConfig(**_DATA), ModelConfig(**_MODEL), TrainConfig(**_TRAIN)
SPACE, TUNE = SearchSpace.parse(*_SPACE), TuneConfig(**_TUNE)

TRAINING = f"""
import sys
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
from kerasrnn.training_run import train
train(ModelConfig(**{_MODEL!r}), DataConfig(**{_DATA!r}), TrainConfig(**{_TRAIN!r}),
      sys.argv[1], resume=True)
"""
TUNING = f"""
import sys
from kerasrnn.config import DataConfig, TuneConfig
from kerasrnn.search_space import SearchSpace
from kerasrnn.tuning import tune
tune(SearchSpace.parse(*{_SPACE!r}), DataConfig(**{_DATA!r}), TuneConfig(**{_TUNE!r}),
     sys.argv[1], retrain=False)
"""


def _kill_inside(script: str, out: str, path: str, syscall: str, when: int) -> None:
    """Runs `script` on `out` under strace, which kills it at the `when`-th `syscall` on
    `out/path`; asserts that the kill happened."""
    command = [
        "strace",
        "-f",
        "-qq",
        "-o",
        os.devnull,
        "-e",
        f"trace={syscall}",
        "-e",
        f"inject={syscall}:signal=SIGKILL:when={when}",
        "-P",
        os.path.join(out, path),
        sys.executable,
        "-c",
        script,
        out,
    ]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), (
        f"no kill at {syscall} #{when} on {path} (exit {killed.returncode}):\n"
        f"{killed.stderr[-3000:]}"
    )


def _best_weights_are_whole(out: str) -> None:
    """Reads RUN/best/ when it is there (a torn checkpoint fails its checksums)."""
    if os.path.isdir(os.path.join(out, "best")):
        model = build_classifier(MODEL)
        tf.train.Checkpoint(model=model).read(os.path.join(out, "best", "weights")).expect_partial()


def _resume_training_completes(out: str) -> None:
    result = train(MODEL, SMALL, TRAIN, out, resume=True)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    with open(os.path.join(out, "metrics.json")) as f:
        assert [row["epoch"] for row in json.load(f)] == [1, 2, 3]
    assert os.path.getsize(os.path.join(out, "model.keras")) > 0
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]


SLOW = pytest.mark.slow
# (file under the run folder, system call, which call): the write of each file a run makes.
_TRAINING_WRITES = [
    pytest.param(".tmp-best/weights.index", "openat", 2, id="best-index"),
    # tests/test_training.py covers a kill between the renames in the default run
    pytest.param(".tmp-best", "rename", 2, id="best-between-renames", marks=SLOW),
    pytest.param(".tmp-best/weights.index", "write", 2, id="best-index-written", marks=SLOW),
    pytest.param(".tmp-config.json", "write", 1, id="config", marks=SLOW),
    pytest.param(".tmp-metrics.json", "write", 2, id="metrics-json", marks=SLOW),
    pytest.param(".tmp-metrics.csv", "rename", 2, id="metrics-csv", marks=SLOW),
    pytest.param("checkpoints/ckpt-2.index", "openat", 1, id="checkpoint", marks=SLOW),
    pytest.param(".tmp-model.keras", "rename", 1, id="model", marks=SLOW),
    pytest.param(".tmp-summary.json", "write", 1, id="summary", marks=SLOW),
    pytest.param(".tmp-curves.png", "rename", 1, id="curves", marks=SLOW),
    pytest.param(".tmp-confusion.png", "rename", 1, id="confusion", marks=SLOW),
]


@pytest.mark.parametrize("path,syscall,when", _TRAINING_WRITES)
def test_training_killed_inside_a_write_resumes_with_every_epoch_once(
    tmp_path, path, syscall, when
):
    out = str(tmp_path / "run")
    _kill_inside(TRAINING, out, path, syscall, when)
    _best_weights_are_whole(out)
    _resume_training_completes(out)


# Keras Tuner's oracle.json writes: 1 when the search starts, then per trial one when it
# is created, one when it ends and one with the tuner's state.
_TUNING_WRITES = [
    pytest.param("search/.tmp-oracle.json", "write", 3, id="oracle-trial-end"),
    *[
        pytest.param("search/.tmp-oracle.json", "write", n, id=f"oracle-{n}", marks=SLOW)
        for n in (1, 2, 4, 5, 6, 8)
    ],
    pytest.param("search/.tmp-tuner0.json", "rename", 2, id="tuner", marks=SLOW),
    pytest.param("search/trial_1/.tmp-trial.json", "write", 1, id="trial-created", marks=SLOW),
    pytest.param("search/trial_1/.tmp-trial.json", "rename", 3, id="trial-ended", marks=SLOW),
    pytest.param(
        "search/trial_1/checkpoint.weights.h5",
        "openat",
        1,
        id="trial-weights",
        marks=SLOW,
    ),
    pytest.param(".tmp-search.json", "write", 1, id="definition", marks=SLOW),
    pytest.param(".tmp-trials.csv", "rename", 1, id="trials-csv", marks=SLOW),
]


@pytest.mark.parametrize("path,syscall,when", _TUNING_WRITES)
def test_search_killed_inside_a_write_resumes_with_every_trial_once(tmp_path, path, syscall, when):
    out = str(tmp_path / "search")
    _kill_inside(TUNING, out, path, syscall, when)
    started = _trials(out) if os.path.isdir(os.path.join(out, tuning.PROJECT)) else {}
    finished = {tid: trial for tid, trial in started.items() if trial["status"] == "COMPLETED"}
    outcome = tuning.tune(SPACE, SMALL, TUNE, out, retrain=False)
    after = _trials(out)
    assert sorted(after) == ["0", "1", "2"]
    assert [row["status"] for row in outcome.rows] == ["COMPLETED"] * 3
    for trial_id, trial in finished.items():  # finished before the kill: not trained again
        assert after[trial_id]["metrics"] == trial["metrics"]
    values = {json.dumps(t["hyperparameters"]["values"], sort_keys=True) for t in after.values()}
    assert len(values) == 3
    left = [name for _, dirs, files in os.walk(out) for name in dirs + files]
    assert not [name for name in left if name.startswith(".tmp-")]
