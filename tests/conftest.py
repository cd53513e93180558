"""Shared fixtures: seeding, quiet TensorFlow, the real-data folders beside the checkout,
and the models trained once per test session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import struct
import zlib

import numpy as np
import pytest

from kerasrnn.config import FASHION_MNIST_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(os.path.dirname(REPO), "shared", "mnist")
# The seed of every test; KERASRNN_TEST_SEED=1 pytest ... checks that no bound holds for
# one seed only (training is not bit-exact from machine to machine either).
SEED = int(os.environ.get("KERASRNN_TEST_SEED", "0"))


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| over max |expected|: a bound that scales with the values
    compared, so that it holds however large a retrained model's outputs come out."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def previous_export() -> bytes:
    """A file that an export may replace (see `_io.check_replaceable`): the smallest
    TFLite model that carries a kerasrnn digest."""
    from ai_edge_litert import schema_py_generated as schema

    from kerasrnn.export import flatbuffer

    model = schema.ModelT()
    model.version, model.subgraphs, model.operatorCodes = 3, [], []
    model.buffers, model.metadata = [schema.BufferT()], []
    return flatbuffer.seal(flatbuffer.pack(model))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels and holds none (no IDAT): opened,
    it has a size; decoded, it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


# The models the export, runtime and training tests share: name -> (cell, units, layers),
# each trained 10 epochs on the bundled sample, once per session.
KINDS = {
    "simple": ("simple", 64, 1),
    "elman": ("elman", 64, 1),
    "lstm": ("lstm", 32, 1),
    "gru": ("gru", 32, 1),
    "stacked": ("elman", 32, 2),
}


# The session fixtures that train and convert: the tests using them run in one
# pytest-xdist worker (`make test` runs two), so that they are made once per run.
SESSION_MODELS = {"sample_runs", "trained_models", "exported"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups in the same hook
def pytest_collection_modifyitems(config, items):
    """Groups the tests for `pytest -n 2 --dist loadgroup`: the tests that use the trained
    session models share one worker (the models are made once per run), and each module's
    other tests stay together (their module fixtures are made once)."""
    for item in items:
        uses_models = SESSION_MODELS & set(item.fixturenames)
        group = "session-models" if uses_models else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)  # after xdist has named the groups
def pytest_collection_finish(session):
    """Refuses a run whose groups did not take (pytest-xdist reads the group from each
    test's id): it would train and convert the session models in both workers."""
    if session.config.getoption("loadgroup", False) and any(
        "@" not in item.nodeid for item in session.items
    ):
        raise pytest.UsageError(
            "pytest-xdist did not group the tests (--dist loadgroup): this pytest-xdist "
            "does not work with this pytest; install the versions setup.cfg's dev extra names"
        )


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(SEED)


@pytest.fixture(scope="session")
def mnist_dir():
    """The complete original MNIST in ../shared/mnist (skips where it is absent)."""
    if not os.path.exists(os.path.join(SHARED_MNIST, "t10k-images-idx3-ubyte.gz")):
        pytest.skip(
            f"full MNIST not found in {SHARED_MNIST} (the shared folder beside the checkout)"
        )
    return SHARED_MNIST


@pytest.fixture(scope="session")
def fashion_dir():
    """Debian's dataset-fashion-mnist files (skips where the package is not installed)."""
    if not os.path.exists(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    return FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def sample_runs(tmp_path_factory):
    """name -> `TrainResult` of each model in `KINDS`, trained 10 epochs on the sample."""
    import keras

    from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
    from kerasrnn.training_run import train

    runs = {}
    for name, (cell, units, layers) in KINDS.items():
        keras.utils.set_random_seed(SEED)
        runs[name] = train(
            ModelConfig(cell=cell, units=units, layers=layers),
            DataConfig(source="sample", seed=SEED),
            # a constant rate: 10 epochs of it train the sample's models further than the
            # recipe's cosine schedule spread over 10 epochs (the stacked Elman: 79.6%)
            TrainConfig(epochs=10, schedule="constant", patience=3, verbose=0, seed=SEED),
            str(tmp_path_factory.mktemp(name)),
        )
    return runs


@pytest.fixture(scope="session")
def trained_models(sample_runs):
    """name -> the trained `keras.Model` of each model in `KINDS`."""
    return {name: run.model for name, run in sample_runs.items()}


# Files converted once per session besides every (kind, quantization) pair:
# (kind, name) -> the `to_tflite` options ("int8" ones are calibrated on the sample). The
# pairs and streams are made for TFLM (target "micro": the WHILE loop, int16 activations,
# the fused LSTM), which the firmware and C-array tests build and LiteRT matches byte for
# byte; LiteRT's defaults (target "litert") have their own tests in test_export.py.
EXTRA_EXPORTS = {
    **{(kind, "stream"): {"stream": True, "target": "micro"} for kind in KINDS},
    ("elman", "int8 stream"): {"quantization": "int8", "stream": True, "target": "micro"},
    ("elman", "int8 activations"): {"quantization": "int8", "activations": "int8"},
    ("stacked", "int8 activations"): {"quantization": "int8", "activations": "int8"},
    ("elman", "dynamic batch"): {"batch_size": None, "target": "micro"},
    ("gru", "dynamic batch"): {"batch_size": None, "target": "micro"},
}


@pytest.fixture(scope="session")
def exported(trained_models, calibration, tmp_path_factory):
    """(kind, quantization) -> `TfliteFile` for every model in `KINDS` and quantization, and
    the `EXTRA_EXPORTS` (streaming, int8 streaming and dynamic-batch files). Converted once
    per session, two at a time: each conversion is a child process, much of it spent
    importing TensorFlow, and this machine has two cores."""
    from concurrent.futures import ThreadPoolExecutor

    from kerasrnn.export.config import QUANTIZATIONS
    from kerasrnn.export.convert import to_tflite

    folder = tmp_path_factory.mktemp("tflite")
    jobs = {
        (kind, q): {"quantization": q, "target": "micro"} for kind in KINDS for q in QUANTIZATIONS
    }
    jobs.update(EXTRA_EXPORTS)

    def convert(key):
        kind, name = key
        options = jobs[key]
        representative = calibration if options.get("quantization") == "int8" else None
        path = str(folder / f"{kind}_{name.replace(' ', '-')}.tflite")
        return to_tflite(trained_models[kind], path, representative_data=representative, **options)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(jobs, pool.map(convert, jobs)))


@pytest.fixture(scope="session")
def test_digits():
    """The sample's 1,000 test digits: (float32 [n, 28, 28] in [0, 1], int32 labels)."""
    from kerasrnn.config import DataConfig
    from kerasrnn.data import load_arrays

    images, labels = load_arrays(DataConfig(source="sample"), "test")
    return images.astype(np.float32) / 255.0, labels


@pytest.fixture(scope="session")
def calibration():
    """All 4,000 training digits of the sample, float32 in [0, 1], as `export` uses them."""
    from kerasrnn.config import DataConfig
    from kerasrnn.data import load_arrays

    images, _ = load_arrays(DataConfig(source="sample"), "train+validation")
    return images.astype(np.float32) / 255.0


_HOLD_LOCK = """
import sys
from kerasrnn._lock import folder_lock
with folder_lock(sys.argv[1], "folder"):
    print("locked", flush=True)
    sys.stdin.read()  # held until the test kills this process
"""


@pytest.fixture
def lock_holder():
    """Starts a process that holds the lock of a folder (see `kerasrnn._lock`) until it is
    killed: `holder = lock_holder(folder)`, then `holder.kill(); holder.wait()`."""
    import subprocess
    import sys

    holders = []

    def hold(folder: str) -> subprocess.Popen:
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, folder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(holder)
        assert holder.stdout.readline() == "locked\n"
        return holder

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
