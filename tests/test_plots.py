"""Plots: written to files without touching the caller's matplotlib state."""

import matplotlib
import numpy as np

from kerasrnn import plots


def test_plots_leave_the_callers_backend_as_it_was(tmp_path):
    # A notebook's inline backend must survive kerasrnn.train (which draws its curves).
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        history = [
            {"epoch": e, "loss": 1 / e, "accuracy": e / 3, "val_loss": 1 / e, "val_accuracy": e / 4}
            for e in (1, 2, 3)
        ]
        plots.training_curves(history, str(tmp_path / "curves.png"), best_epoch=2)
        plots.confusion_matrix_png(np.eye(10, dtype=np.int64), str(tmp_path / "confusion.png"))
        assert matplotlib.get_backend() == "svg"
        with open(tmp_path / "curves.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)
