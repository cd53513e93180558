"""The user's own sequence data, for models of any input shape: arrays or a `.npz` file.

    x       float [n, steps, features]     the sequences
    y       int [n] labels, or float [n] / [n, outputs] regression targets
    x_test  (optional) held-out sequences, and y_test their labels or targets

Every array is checked where it enters (rank, finite values, matching lengths, labels in
range), and each defect is named in one line.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from kerasrnn.errors import DataError


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Checked sequence data (see `sequences`).

    Attributes:
        x: float32 [n, steps, features].
        y: int64 labels [n], or float32 targets [n] or [n, outputs].
        x_test, y_test: held-out data of the same shapes, or None.
    """

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        """(x_test, y_test), or (x, y) when the data holds no test split."""
        return (self.x, self.y) if self.x_test is None else (self.x_test, self.y_test)

    def check_model(self, input_shape: tuple, outputs: int) -> None:
        """Checks that a model of this input shape and output width reads this data.

        Raises:
            DataError: the steps and features differ, or labels lie outside the classes.
        """
        if tuple(self.x.shape[1:]) != tuple(input_shape):
            raise DataError(
                f"the data's sequences are [{', '.join(map(str, self.x.shape[1:]))}] but the "
                f"model reads [{', '.join(map(str, input_shape))}]"
            )
        for name, y in (("y", self.y), ("y_test", self.y_test)):
            if y is not None and y.dtype.kind == "i" and outputs > 1 and y.max() >= outputs:
                raise DataError(
                    f"{name} holds label {int(y.max())} but the model has {outputs} classes "
                    f"(labels 0-{outputs - 1})"
                )


def _features(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or 0 in x.shape:
        raise DataError(
            f"{name} must be [n, steps, features] with none of them 0, got shape {list(x.shape)}"
        )
    if x.dtype.kind not in "fiu":
        raise DataError(f"{name} must hold numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{name} holds NaN or infinite values ({int((~np.isfinite(x)).sum())})")
    return x


def _targets(name: str, y, n: int, x_name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim not in (1, 2) or len(y) != n:
        raise DataError(
            f"{name} must be [{n}] labels or targets, one per sequence of {x_name}, got shape "
            f"{list(y.shape)}"
        )
    if y.dtype.kind in "iu":
        if y.ndim != 1:
            raise DataError(f"integer {name} must be labels [n], got shape {list(y.shape)}")
        if y.min() < 0:
            raise DataError(f"{name} holds a negative label ({int(y.min())}); labels are 0, 1, ...")
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        raise DataError(f"{name} must hold int labels or float targets, got dtype {y.dtype}")
    if not np.isfinite(y).all():
        raise DataError(f"{name} holds NaN or infinite values")
    return y.astype(np.float32)


def sequences(x, y, x_test=None, y_test=None) -> Sequences:
    """Checks and holds the user's sequence data (NumPy arrays or anything array-like).

    Raises:
        DataError: an array of the wrong rank or dtype, NaN or infinite values, lengths that
            differ, negative labels, or test data of another shape than the training data.
    """
    x = _features("x", x)
    y = _targets("y", y, len(x), "x")
    if (x_test is None) != (y_test is None):
        raise DataError("x_test and y_test come together: give both or neither")
    if x_test is not None:
        x_test = _features("x_test", x_test)
        y_test = _targets("y_test", y_test, len(x_test), "x_test")
        if x_test.shape[1:] != x.shape[1:] or (y_test.dtype.kind == "i") != (y.dtype.kind == "i"):
            raise DataError(
                f"x_test/y_test must be like x/y: sequences {list(x.shape[1:])} and "
                f"{'labels' if y.dtype.kind == 'i' else 'targets'}, got {list(x_test.shape[1:])}"
                f" and {y_test.dtype}"
            )
    return Sequences(x, y, x_test, y_test)


def load_npz(path: str) -> Sequences:
    """Reads `x`, `y` (and optionally `x_test`, `y_test`) from a `.npz` file.

    Raises:
        DataError: the file is missing, not a .npz archive, lacks `x` or `y`, holds other
            arrays too, or its arrays fail `sequences`' checks (the message names them).
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            missing = {"x", "y"} - names
            unknown = names - {"x", "y", "x_test", "y_test"}
            if missing or unknown:
                raise DataError(
                    f"{path}: a sequence .npz holds x, y and optionally x_test, y_test; "
                    + (f"missing {sorted(missing)}" if missing else f"unknown {sorted(unknown)}")
                )
            arrays = {name: archive[name] for name in names}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    try:
        return sequences(**arrays)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
