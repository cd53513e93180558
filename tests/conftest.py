"""Shared fixtures: seeding, quiet TensorFlow, the real-data folders beside the checkout,
and the models trained once per test session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(os.path.dirname(REPO), "shared", "mnist")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# The seed of every test; KERASRNN_TEST_SEED=1 pytest ... checks that no bound holds for
# one seed only (training is not bit-exact from machine to machine either).
SEED = int(os.environ.get("KERASRNN_TEST_SEED", "0"))
# The models the export, runtime and training tests share: name -> (cell, units, layers),
# each trained 10 epochs on the bundled sample, once per session.
KINDS = {
    "simple": ("simple", 64, 1),
    "elman": ("elman", 64, 1),
    "lstm": ("lstm", 32, 1),
    "gru": ("gru", 32, 1),
    "stacked": ("elman", 32, 2),
}


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
    if not os.path.exists(os.path.join(FASHION_MNIST, "train-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    return FASHION_MNIST


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
            TrainConfig(epochs=10, verbose=0, seed=SEED),
            str(tmp_path_factory.mktemp(name)),
        )
    return runs


@pytest.fixture(scope="session")
def trained_models(sample_runs):
    """name -> the trained `keras.Model` of each model in `KINDS`."""
    return {name: run.model for name, run in sample_runs.items()}


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
