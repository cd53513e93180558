"""The one table of recurrent cell kinds: each name, how its layer is built, and how
export reads its weights. `models`, `search_space`, the CLI and `export.graph` all read it.

The table names Keras classes as "module:Class" strings, resolved on use, so that reading
the vocabulary (the CLI's choices, a config's validation) never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class CellKind:
    """One kind of recurrent cell.

    Attributes:
        name: the name users pass (`ModelConfig.cell`, `--cell`).
        description: one line for help texts.
        layer: the Keras layer class, "module:Class"; "keras.layers:RNN" wraps `cell`.
        cell: the Keras cell class inside the layer (`layer.cell`), "module:Class".
        recurrence: the equations export writes: "elman" (h = act(x W_x + h W_h + b)),
            "lstm", "gru" or "lmu" (a Legendre memory m = m A + u B read out by
            h = act(x W_x + m W_m + b), see `cells.LegendreMemoryCell`).
        weights: the cell's attributes holding (input kernel [features, gates * units],
            recurrent kernel [units, gates * units], bias); for "lmu", (W_x, W_m, b).
        learnable_h0: each layer starts from a trained h0 (`LearnableInitialState`).
        takes_activation: `activation` and `recurrent_initializer` apply to it.
        memory: its layer takes a memory's `order` and `theta` (`ModelConfig.memory_order`,
            `ModelConfig.theta`) and `activation`.
    """

    name: str
    description: str
    layer: str
    cell: str
    recurrence: str
    weights: tuple[str, str, str]
    learnable_h0: bool = False
    takes_activation: bool = False
    memory: bool = False

    def layer_class(self) -> type:
        """The Keras layer class (imports Keras)."""
        return _resolve(self.layer)

    def cell_class(self) -> type:
        """The Keras cell class (imports Keras)."""
        return _resolve(self.cell)


def _resolve(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


_KERAS_WEIGHTS = ("kernel", "recurrent_kernel", "bias")

CELL_KINDS: dict[str, CellKind] = {
    kind.name: kind
    for kind in (
        CellKind(
            "simple",
            "Keras SimpleRNN",
            "keras.layers:SimpleRNN",
            "keras.layers:SimpleRNNCell",
            "elman",
            _KERAS_WEIGHTS,
            takes_activation=True,
        ),
        CellKind(
            "elman",
            "the custom Elman cell with a learnable h0",
            "keras.layers:RNN",
            "kerasrnn.cells:ElmanCell",
            "elman",
            ("w_xh", "w_hh", "b"),
            learnable_h0=True,
            takes_activation=True,
        ),
        CellKind(
            "lstm",
            "Keras LSTM",
            "kerasrnn.cells:LSTM",  # Keras's, with a leaner unrolled step
            "keras.layers:LSTMCell",
            "lstm",
            _KERAS_WEIGHTS,
        ),
        CellKind(
            "gru",
            "Keras GRU (reset_after)",
            "kerasrnn.cells:GRU",  # Keras's, with a leaner unrolled step
            "keras.layers:GRUCell",
            "gru",
            _KERAS_WEIGHTS,
        ),
        CellKind(
            "lmu",
            "a Legendre Memory Unit, trained in parallel over time (long sequences)",
            "kerasrnn.cells:LMU",
            "kerasrnn.cells:LegendreMemoryCell",
            "lmu",
            ("w_x", "w_m", "b"),
            memory=True,
        ),
    )
}
CELLS = tuple(CELL_KINDS)


def kind_of(cell) -> CellKind:
    """The kind of a Keras cell object (`layer.cell` of a classifier's recurrent layer).

    Raises:
        TypeError: the cell is of no kind in the table.
    """
    for kind in CELL_KINDS.values():
        if isinstance(cell, kind.cell_class()):
            return kind
    raise TypeError(f"recurrent cell {type(cell).__name__} is none of {', '.join(CELLS)}")
