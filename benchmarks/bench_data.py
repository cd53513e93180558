"""The data the benchmarks read: the bundled sample, or full MNIST or Fashion-MNIST from a
folder of the four IDX files.

By default MNIST comes from `shared/mnist` beside the checkout (where the tests find it)
and Fashion-MNIST from Debian's `dataset-fashion-mnist` package.
"""

from __future__ import annotations

import os

from kerasrnn.config import FASHION_MNIST_DIR, DataConfig

CHOICES = ("sample", "mnist", "fashion")
MNIST_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "mnist"
)
FOLDERS = {"mnist": MNIST_DIR, "fashion": FASHION_MNIST_DIR}


def data_config(data: str, data_dir: str | None = None, **fields) -> DataConfig:
    """The `DataConfig` of a benchmark's `--data DATA [--data-dir DIR]`.

    Args:
        data: one of `CHOICES`.
        data_dir: the IDX folder (default: `FOLDERS[data]`); not for the sample.
        **fields: other `DataConfig` fields (batch_size, view, ...).

    Raises:
        SystemExit: the folder holds no t10k image file, gzipped or not; names the folder.
    """
    if data == "sample":
        return DataConfig(source="sample", **fields)
    folder = data_dir or FOLDERS[data]
    if not any(
        os.path.exists(os.path.join(folder, f"t10k-images-idx3-ubyte{ending}"))
        for ending in ("", ".gz")
    ):
        raise SystemExit(
            f"--data {data}: no IDX files in {folder} (pass --data-dir, or --quick for the sample)"
        )
    dataset = "fashion_mnist" if data == "fashion" else "mnist"
    return DataConfig(source="idx", dataset=dataset, data_dir=folder, **fields)
