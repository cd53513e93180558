"""Shared fixtures: seeding, quiet TensorFlow, and the real-data folders beside the checkout."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(os.path.dirname(REPO), "shared", "mnist")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def mnist_dir():
    """The complete original MNIST in ../shared/mnist (skips where it is absent)."""
    if not os.path.exists(os.path.join(SHARED_MNIST, "t10k-images-idx3-ubyte.gz")):
        pytest.skip(f"full MNIST not found in {SHARED_MNIST} (the shared folder beside the checkout)")
    return SHARED_MNIST


@pytest.fixture(scope="session")
def fashion_dir():
    """Debian's dataset-fashion-mnist files (skips where the package is not installed)."""
    if not os.path.exists(os.path.join(FASHION_MNIST, "train-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    return FASHION_MNIST
