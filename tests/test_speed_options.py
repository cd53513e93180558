"""The speed options of `models`, `cells` and `training`: the recurrent layers of short
sequences unroll over time, LSTM and GRU then run leaner steps, and training runs several
steps per graph call; none changes anything but the speed."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import relative_difference

from kerasrnn import data, models, training
from kerasrnn.cell_kinds import CELL_KINDS, CELLS
from kerasrnn.config import LOOPS, DataConfig, ModelConfig, TrainConfig
from kerasrnn.errors import ConfigError, DataError
from kerasrnn.export.graph import sequence_function
from kerasrnn.export.model_reader import read_model
from kerasrnn.models import build_classifier

# The layers of LSTM and GRU before `kerasrnn.cells` gave them leaner unrolled steps.
KERAS_LAYERS = {"lstm": "keras.layers:LSTM", "gru": "keras.layers:GRU"}


def _x(batch=4):
    return np.random.default_rng(1).random((batch, 28, 28)).astype("float32")


def _looped(monkeypatch, **options) -> keras.Model:
    """A classifier built as before unrolling: its layers run a while loop over time, and
    LSTM and GRU are Keras's own classes."""
    with monkeypatch.context() as patch:
        patch.setattr(models, "UNROLL_MAX_STEPS", 0)
        for cell, layer in KERAS_LAYERS.items():
            patch.setitem(CELL_KINDS, cell, dataclasses.replace(CELL_KINDS[cell], layer=layer))
        return build_classifier(**options)


def _recurrent_layers(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.RNN)]


def _logits_and_gradients(model: keras.Model, x) -> tuple[np.ndarray, list[np.ndarray]]:
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = loss_fn(np.arange(len(x)) % 10, logits)
    grads = tape.gradient(loss, model.trainable_variables)
    return logits.numpy(), [g.numpy() for g in grads]


# Equal up to float32 rounding, relative to the largest magnitude compared.
ROUNDING = 1e-5


@pytest.mark.parametrize(
    "cell,layers", [*((cell, 1) for cell in CELLS), ("elman", 2), ("lstm", 2), ("gru", 2)]
)
def test_unrolled_and_looped_layers_give_the_same_logits_and_gradients(monkeypatch, cell, layers):
    unrolled = build_classifier(cell=cell, units=8, layers=layers)
    looped = _looped(monkeypatch, cell=cell, units=8, layers=layers)
    assert all(layer.unroll for layer in _recurrent_layers(unrolled))
    assert not any(layer.unroll for layer in _recurrent_layers(looped))
    weights = [
        w + 0.1 * np.random.default_rng(2).standard_normal(w.shape).astype("float32")
        for w in unrolled.get_weights()
    ]  # a nonzero h0 and biases too
    unrolled.set_weights(weights)
    looped.set_weights(weights)
    logits, grads = _logits_and_gradients(unrolled, _x())
    looped_logits, looped_grads = _logits_and_gradients(looped, _x())
    assert relative_difference(logits, looped_logits) <= ROUNDING
    assert len(grads) == len(looped_grads)
    for variable, grad, looped_grad in zip(unrolled.trainable_variables, grads, looped_grads):
        assert np.abs(looped_grad).max() > 0, variable.path
        assert relative_difference(grad, looped_grad) <= ROUNDING, variable.path


@pytest.mark.parametrize("cell", CELLS)
def test_an_unrolled_model_round_trips_through_a_keras_file(tmp_path, cell):
    model = build_classifier(cell=cell, units=8)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert all(layer.unroll for layer in _recurrent_layers(loaded))
    np.testing.assert_array_equal(loaded(_x()).numpy(), model(_x()).numpy())


@pytest.mark.parametrize("cell", CELLS)
def test_a_model_saved_before_unrolling_still_loads_and_agrees(tmp_path, monkeypatch, cell):
    old = _looped(monkeypatch, cell=cell, units=8)
    path = str(tmp_path / "old.keras")
    old.save(path)
    loaded = keras.models.load_model(path)
    assert not any(layer.unroll for layer in _recurrent_layers(loaded))
    assert type(_recurrent_layers(loaded)[0]) is type(_recurrent_layers(old)[0])
    new = build_classifier(cell=cell, units=8)
    new.set_weights(loaded.get_weights())
    assert relative_difference(new(_x()).numpy(), loaded(_x()).numpy()) <= ROUNDING


@pytest.mark.parametrize("view", ["pixels", "permuted"])
@pytest.mark.parametrize("cell", CELLS)
def test_the_784_step_views_are_not_unrolled(cell, view):
    assert not models.unrolls(ModelConfig(cell=cell, view=view))
    model = build_classifier(cell=cell, units=4, view=view)
    assert not any(layer.unroll for layer in _recurrent_layers(model))


def test_lstm_and_gru_keep_cudnn_where_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    assert {cell: models.unrolls(ModelConfig(cell=cell)) for cell in CELLS} == {
        "simple": True,
        "elman": True,
        "lstm": False,
        "gru": False,
        "lmu": True,
    }


@pytest.mark.parametrize("cell", CELLS)
def test_export_graph_agrees_with_an_unrolled_model(cell):
    model = build_classifier(cell=cell, units=8)
    model.set_weights(
        [
            w + 0.1 * np.random.default_rng(3).standard_normal(w.shape).astype("float32")
            for w in model.get_weights()
        ]
    )
    assert all(layer.unroll for layer in _recurrent_layers(model))
    classify = sequence_function(read_model(model), batch_size=None)
    assert relative_difference(classify(tf.constant(_x())).numpy(), model(_x()).numpy()) <= ROUNDING


class _GroupEnds(keras.callbacks.Callback):
    """Records the batch index each `on_train_batch_end` reports (the progress bar's)."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(batch)


@pytest.mark.parametrize("loop", LOOPS)
def test_steps_per_execution_trains_the_same_weights_and_reports_every_step(loop):
    batches = data.epochs(DataConfig(source="sample", max_examples=256), "train")  # 4 a epoch
    weights, ends = {}, {}
    for count in (1, 3):
        config = TrainConfig(
            epochs=2, loop=loop, schedule="constant", steps_per_execution=count, verbose=0
        )
        training.make_reproducible(config)
        model = training.compile_model(
            build_classifier(units=8), config, training.steps_per_epoch(batches)
        )
        seen = _GroupEnds()
        training.fit(model, batches, None, config, callbacks=[seen])
        weights[count], ends[count] = model.get_weights(), seen.ends
    for grouped, single in zip(weights[3], weights[1]):
        assert relative_difference(grouped, single) < 1e-5
    assert ends[1] == [0, 1, 2, 3] * 2
    # BPTT: groups of 3 and the rest; Keras fit: 2, the most steps that divide 4
    assert ends[3] == ([2, 3] if loop == "bptt" else [1, 3]) * 2


class _StopAfter(_GroupEnds):
    """Sets `model.stop_training` at the end of batch `last`, as a time budget does."""

    def __init__(self, last: int):
        super().__init__()
        self.last, self.epochs = last, []

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if batch >= self.last:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.mark.parametrize("loop", LOOPS)
def test_stop_training_within_an_epoch_ends_it_after_that_group_as_keras_fit(loop):
    batches = data.epochs(DataConfig(source="sample", max_examples=256), "train")  # 4 a epoch
    config = TrainConfig(epochs=3, loop=loop, schedule="constant", steps_per_execution=1, verbose=0)
    model = training.compile_model(build_classifier(units=8), config, 4)
    stop = _StopAfter(1)
    training.fit(model, batches, None, config, callbacks=[stop])
    assert stop.ends == [0, 1] and stop.epochs == [0]


def test_bad_steps_per_execution_is_rejected():
    with pytest.raises(ConfigError, match="steps_per_execution must be a positive integer, got 0"):
        TrainConfig(steps_per_execution=0)


def _partial_last_batch_epochs():
    """Epochs of 3 batches of 64, 64 and 44 sample digits (whose size the trace knows:
    64; the last runs in a call of its own)."""
    batches = data.epochs(DataConfig(source="sample", max_examples=172), "train")
    assert [len(y) for _, y in batches(0)] == [64, 64, 44]
    return batches


@pytest.mark.parametrize("cell", ["elman", "lstm"])
def test_steps_traced_for_the_batch_size_train_the_weights_of_an_unknown_size(monkeypatch, cell):
    batches = _partial_last_batch_epochs()
    config = TrainConfig(epochs=2, schedule="constant", steps_per_execution=2, verbose=0)
    weights = {}
    for known in (True, False):
        with monkeypatch.context() as patch:
            if not known:  # as before: one trace for batches of any size
                patch.setattr(training, "_steps_of_one_batch_size", training._steps_in_one_call)
            training.make_reproducible(config)
            model = training.compile_model(build_classifier(cell=cell, units=8), config, 3)
            training.fit(model, batches, None, config)
        weights[known] = model.get_weights()
    for known, unknown in zip(weights[True], weights[False]):
        assert relative_difference(known, unknown) < 1e-5


def test_batches_of_uneven_sizes_are_refused_naming_the_expected_size():
    x = np.zeros((10, 28, 28), "float32")
    y = np.zeros(10, "int32")
    uneven = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(4)
        .concatenate(tf.data.Dataset.from_tensor_slices((x[:6], y[:6])).batch(6))
    )  # 4, 4, 2, 6
    config = TrainConfig(epochs=1, schedule="constant", verbose=0)
    model = training.compile_model(build_classifier(units=4), config, 4)
    with pytest.raises(DataError, match=r"uneven sizes.*the first batch.s size \(4\)"):
        training.fit(model, uneven, None, config)
