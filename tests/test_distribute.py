"""Training under `tf.distribute`: two replicas compute what one device computes, workers on
127.0.0.1 train one run and resume it after kill -9, and bad options are refused.

A strategy sets up TensorFlow's devices before they start (logical CPU devices, collective
ops), and this test process has started them: each distributed run is a child process,
on the CPU (CUDA_VISIBLE_DEVICES is emptied) split into two logical devices.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import SEED

from kerasrnn import distribute
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
from kerasrnn.errors import ConfigError
from kerasrnn.training_run import train

_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _child(script: str, *args: str, timeout: int = 300) -> dict:
    """Runs `script` in a new Python process; returns the JSON its last line prints."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=_ENV,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


_GRADIENTS = """
import json, sys
import keras, numpy as np, tensorflow as tf
from kerasrnn import distribute, training
from kerasrnn.config import TrainConfig
from kerasrnn.models import build_classifier

strategy = distribute.make_strategy(TrainConfig(strategy="mirrored", devices=2))
seed, batch = int(sys.argv[1]), 51
rng = np.random.default_rng(seed)
x = rng.random((batch, 28, 28), np.float32)
y = rng.integers(0, 10, batch).astype(np.int32)
keras.utils.set_random_seed(seed)
one = build_classifier(cell="elman", units=16)
with strategy.scope():
    two = build_classifier(cell="elman", units=16)
two.set_weights(one.get_weights())
split = next(iter(strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((x, y)).batch(batch))))
out = {"shares": [len(part) for part in strategy.experimental_local_results(split[1])]}

# One device: the BPTT loop's step (the batch's mean cross-entropy, clipped by global norm).
with tf.GradientTape() as tape:
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, one(x, training=True))
grads = tape.gradient(loss, one.trainable_variables)
norm = float(tf.linalg.global_norm(grads))
for name, clipnorm in (("unclipped", None), ("clipped", norm / 2)):
    expected = grads if clipnorm is None else tf.clip_by_global_norm(grads, clipnorm)[0]

    @tf.function
    def step(x, y):  # two replicas: the loss and gradients the optimizer sums
        shares = strategy.run(training.replica_gradients, args=(two, x, y, clipnorm))
        total = lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
        return total(shares[0]), [total(g) for g in shares[3]]

    got_loss, got = step(*split)
    out[name] = {
        "clipnorm": clipnorm,
        "loss": [float(loss), float(got_loss)],
        "grads": [[e.numpy().tolist(), g.numpy().tolist()] for e, g in zip(expected, got)],
    }
print(json.dumps(out))
"""


def test_two_replicas_compute_the_first_step_loss_and_gradients_of_one_device():
    """The loss and gradients of one step on a batch of 51 sequences (shares of 26 and 25),
    summed over two logical CPU devices, against one device's on the whole batch.

    In float32 the two computations differ in the order of their sums only: the
    replicas sum 26 and 25 examples and then the two partial sums, one device sums 51.
    Measured (elman, simple, LSTM, GRU with 16 units, seeds 0-2, clipped or not): the loss
    differs by at most 1.8e-7 relative (1 ulp), each variable's gradient by at most
    3.9e-7 of its largest component (elementwise relative errors are larger where
    components nearly cancel, hence the per-variable scale). The bounds, 1e-6 and 1e-5,
    are 5 and 25 times those; the mistakes they guard against are of order 1 (dividing
    by the replica's batch instead of the global one doubles the gradient, and so does
    summing the replicas twice; clipping each share instead of the sum changes its norm).
    """
    out = _child(_GRADIENTS, str(SEED))
    assert out.pop("shares") == [26, 25]
    for name, values in out.items():
        one, two = values["loss"]
        assert two == pytest.approx(one, rel=1e-6), name
        for expected, got in values["grads"]:
            expected, got = np.asarray(expected), np.asarray(got)
            scale = np.abs(expected).max()
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale, err_msg=name)
        if values["clipnorm"] is not None:  # the sum of the shares is clipped
            norm = np.sqrt(sum((np.asarray(g) ** 2).sum() for _, g in values["grads"]))
            assert norm == pytest.approx(values["clipnorm"], rel=1e-5)


# 301 training digits: 4 batches of 64 and one of 45, which splits 23 + 22.
_SMALL = {"source": "sample", "max_examples": 301}
_MODEL = {"cell": "elman", "units": 8}
_EPOCH = {"epochs": 1, "patience": None, "verbose": 0}

_INTERRUPTED_MIRRORED_RUN = f"""
import json, sys, keras
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
from kerasrnn.training_run import train

class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt  # once the epoch is recorded, before the model is saved

model, data = ModelConfig(**{_MODEL!r}), DataConfig(**{_SMALL!r})
config = TrainConfig(**json.loads(sys.argv[2]), strategy="mirrored", devices=2)
try:
    train(model, data, config, sys.argv[1], callbacks=[Interrupt()])
except KeyboardInterrupt:
    pass
# Resumed: the checkpoint is restored into the mirrored variables, the model saved and scored.
result = train(model, data, config, sys.argv[1], resume=True)
rows = result.model.predict_on_batch(keras.ops.zeros((5, 28, 28))).shape[0]
print(json.dumps({{"history": result.history, "test": result.test, "rows": rows}}))
"""


@pytest.mark.parametrize(
    "loop,rtol",
    [
        ("bptt", 1e-5),
        # Keras's loss is each replica's mean over its share, divided by the replicas: the
        # last batch's 23 + 22 digits weigh 1/46 and 1/44 instead of 1/45 (measured over
        # two epochs: 1.1e-5 relative at most, on the second epoch's validation loss).
        pytest.param("fit", 1e-4, marks=pytest.mark.slow),
    ],
)
def test_mirrored_run_on_two_devices_records_what_one_device_records(tmp_path, loop, rtol):
    """An epoch on two logical CPU devices, interrupted before the model is saved and
    resumed, against one device: the same batches and steps, so the metrics agree to
    float32 round-off (measured with the BPTT loop: identical; over two epochs, the
    second epoch's loss 1.2e-7 relative apart, the validation and test scores identical).
    """
    options = {**_EPOCH, "loop": loop, "clipnorm": 1.0 if loop == "bptt" else None}
    run = str(tmp_path / "mirrored")
    two = _child(_INTERRUPTED_MIRRORED_RUN, run, json.dumps(options))
    one = train(ModelConfig(**_MODEL), DataConfig(**_SMALL), TrainConfig(**options), str(tmp_path))
    assert [row["epoch"] for row in two["history"]] == [1]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(
            [row[key] for row in two["history"]], [row[key] for row in one.history], rtol=rtol
        )
    for key in ("accuracy", "val_accuracy"):  # one digit may flip on a near tie
        np.testing.assert_allclose(
            [row[key] for row in two["history"]], [row[key] for row in one.history], atol=1.5 / 301
        )
    assert two["test"]["test_examples"] == one.test["test_examples"] == 301
    assert two["test"]["test_loss"] == pytest.approx(one.test["test_loss"], rel=rtol)
    assert two["rows"] == 5  # the model returned is a one-device copy (see local_copy)
    for name in ("model.keras", "summary.json", "best", "checkpoints"):
        assert os.path.exists(os.path.join(run, name)), name
    with open(os.path.join(run, "config.json")) as f:
        assert "strategy" not in json.load(f)["train"]  # resumable on other devices


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held open together, so that they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


_WORKER = f"""
import json, os, signal, sys, keras
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
from kerasrnn.training_run import train

class KillAfter(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9, once the epoch is recorded

result = train(ModelConfig(**{_MODEL!r}), DataConfig(source="sample", max_examples=256),
               TrainConfig(epochs=3, patience=None, verbose=0, strategy="multi-worker"),
               sys.argv[1], resume=True, callbacks=[KillAfter()])
print(json.dumps({{"history": result.history, "test": result.test}}))
"""
# The same run from the command line (the workers resume with it).
_WORKER_CLI = [
    *("-m", "kerasrnn", "train", "--strategy", "multi-worker", "--data", "sample"),
    *("--max-examples", "256", "--units", "8", "--epochs", "3", "--patience", "0", "--quiet"),
]


def _workers(commands: list[list[str]], tmp_path) -> list[subprocess.CompletedProcess]:
    """Runs the two workers of a cluster on 127.0.0.1, each its command (worker 0 is the
    chief); their temporary folders go in tmp_path/tmp."""
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    os.makedirs(tmp_path / "tmp", exist_ok=True)
    processes = []
    for index, command in enumerate(commands):
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        env = {**_ENV, "TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(tmp_path / "tmp")}
        processes.append(
            subprocess.Popen(
                [sys.executable, *command],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=400) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [
        subprocess.CompletedProcess(p.args, p.returncode, out, err)
        for p, (out, err) in zip(processes, outputs)
    ]


# Three pairs of workers, each starting TensorFlow (20-55 s): in the default run, so that
# every run checks multi-worker training, its kill and its resume.
def test_two_workers_train_one_run_the_chief_writes_and_it_resumes_after_kill(tmp_path):
    run = str(tmp_path / "run")
    killed = _workers([["-c", _WORKER, run, "1"]] * 2, tmp_path)
    assert [w.returncode for w in killed] == [-signal.SIGKILL] * 2, [w.stderr for w in killed]
    with open(os.path.join(run, "metrics.json")) as f:
        assert [row["epoch"] for row in json.load(f)] == [1]
    assert os.path.exists(os.path.join(run, "checkpoints", "ckpt-1.index"))
    assert not os.path.exists(os.path.join(run, "model.keras"))
    leftovers = glob.glob(str(tmp_path / "tmp" / "kerasrnn-worker-*"))
    assert len(leftovers) == 1  # worker 1's folder: a kill -9 leaves it

    # A worker that does not see the chief's run folder would start over: both refuse.
    elsewhere = str(tmp_path / "elsewhere")
    refused = _workers([["-c", _WORKER, path, "0"] for path in (run, elsewhere)], tmp_path)
    for worker in refused:
        assert worker.returncode == 1
        assert "RunFolderError: the workers resume" in worker.stderr
        assert "from different epochs ([0, 1])" in worker.stderr

    chief, worker = _workers([[*_WORKER_CLI, "--resume", "--out", run]] * 2, tmp_path)
    assert chief.returncode == worker.returncode == 0, chief.stderr + worker.stderr
    assert "test accuracy" in chief.stdout
    assert f"the chief writes the run folder {run}" in worker.stdout
    with open(os.path.join(run, "metrics.csv")) as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["1", "2", "3"]
    for name in ("model.keras", "summary.json", "curves.png", "confusion.png"):
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    assert glob.glob(str(tmp_path / "tmp" / "kerasrnn-worker-*")) == leftovers  # deleted

    # The two workers trained what one device trains on the same batches.
    one = train(
        ModelConfig(**_MODEL),
        DataConfig(source="sample", max_examples=256),
        TrainConfig(epochs=3, patience=None, verbose=0),
        str(tmp_path / "one"),
    )
    with open(os.path.join(run, "metrics.json")) as f:
        two = json.load(f)
    np.testing.assert_allclose(
        [row["loss"] for row in two], [row["loss"] for row in one.history], rtol=1e-5
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"strategy": "horovod"}, "strategy must be one of"),
        ({"strategy": "mirrored", "devices": 0}, "devices must be a positive integer or None"),
        ({"devices": 2}, r"devices \(--devices\) sets the replicas of strategy='mirrored'"),
        ({"strategy": "multi-worker", "devices": 2}, "got devices=2 with strategy='multi-worker'"),
        ({"strategy": "mirrored", "jit_compile": True}, r"jit_compile \(--xla\) does not run"),
        (
            {"strategy": "mirrored", "loop": "fit"},
            "loop='fit' under strategy='mirrored' clips each replica's share",
        ),
    ],
)
def test_bad_strategy_options_are_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_keras_fit_under_a_strategy_without_clipping_is_allowed():
    assert TrainConfig(strategy="mirrored", loop="fit", clipnorm=None).loop == "fit"


_CLUSTER = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}


@pytest.mark.parametrize(
    "tf_config,message",
    [
        (None, "reads its cluster from the TF_CONFIG environment variable, which is not set"),
        ("{not json", "TF_CONFIG is not a cluster and task"),
        (json.dumps(_CLUSTER), r"TF_CONFIG is not a cluster and task \(KeyError: 'task'\)"),
        (
            json.dumps({**_CLUSTER, "task": {"type": "worker", "index": 2}}),
            "TF_CONFIG's task is worker 2, but its cluster lists 2 worker",
        ),
        (
            json.dumps({**_CLUSTER, "task": {"type": "evaluator", "index": 0}}),
            "TF_CONFIG's task must be a 'worker' or the 'chief'",
        ),
        (
            json.dumps({"cluster": {"ps": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}),
            "TF_CONFIG's cluster must list workers",
        ),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(tmp_path, monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=message):  # before anything is made or written
        train(
            ModelConfig(units=8),
            DataConfig(source="sample", max_examples=64),
            TrainConfig(epochs=1, verbose=0, strategy="multi-worker"),
            str(tmp_path / "run"),
        )
    assert not (tmp_path / "run").exists()


def test_splitting_the_cpu_after_tensorflow_started_is_a_clear_error():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: mirrored replicas are GPUs here")
    started = len(tf.config.list_logical_devices("CPU"))  # starts TensorFlow's devices
    with pytest.raises(
        ConfigError,
        match=f"TensorFlow has already started in this process with {started} CPU device",
    ):
        distribute.make_strategy(TrainConfig(strategy="mirrored", devices=started + 1))


def test_command_line_names_the_missing_tf_config(tmp_path):
    env = {key: value for key, value in _ENV.items() if key != "TF_CONFIG"}
    done = subprocess.run(
        [sys.executable, *_WORKER_CLI, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("kerasrnn: error: strategy 'multi-worker' (--strategy multi-worker)")
    assert not (tmp_path / "run").exists()
