import keras
import numpy as np
import pytest

from kerasrnn.cell_kinds import CELLS
from kerasrnn.cells import LMU, ElmanCell, LearnableInitialState, LegendreMemoryCell
from kerasrnn.config import ModelConfig
from kerasrnn.errors import ConfigError
from kerasrnn.models import build_classifier


def _x(batch=4, shape=(28, 28)):
    return np.random.default_rng(0).random((batch, *shape)).astype("float32")


def test_elman_cell_matches_simple_rnn_with_copied_weights():
    simple = build_classifier(cell="simple", units=32)
    elman = build_classifier(cell="elman", units=32)
    kernel, recurrent, bias = simple.get_layer("simple_0").get_weights()
    cell = elman.get_layer("elman_0").cell
    cell.set_weights([kernel, recurrent, bias])
    elman.get_layer("h0_0").set_weights([np.zeros(32, "float32")])  # SimpleRNN starts at 0
    elman.get_layer("logits").set_weights(simple.get_layer("logits").get_weights())
    np.testing.assert_allclose(elman(_x()).numpy(), simple(_x()).numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "cell,params",
    [
        # W_xh 28x16 + W_hh 16x16 + b 16 (+ h0 16) + dense 16x10 + 10
        ("simple", 28 * 16 + 16 * 16 + 16 + 170),
        ("elman", 28 * 16 + 16 * 16 + 16 + 16 + 170),
        ("lstm", 4 * (28 * 16 + 16 * 16 + 16) + 170),
        ("gru", 3 * (28 * 16 + 16 * 16 + 2 * 16) + 170),  # reset_after: two biases
        # e_x 28x1 + b_u 1 + W_x 28x16 + W_m 256x16 + b 16 (A, B fixed) + dense 16x10 + 10
        ("lmu", 28 + 1 + 28 * 16 + 256 * 16 + 16 + 170),
    ],
)
def test_exact_parameter_counts(cell, params):
    assert build_classifier(cell=cell, units=16).count_params() == params


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_keras_file_round_trip_gives_identical_predictions(tmp_path, cell, layers):
    model = build_classifier(cell=cell, units=8, layers=layers, dropout=0.2)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(_x(), verbose=0), model.predict(_x(), verbose=0))


def test_pixel_view_model_shape():
    model = build_classifier(cell="elman", units=8, view="pixels")
    assert model(_x(2, (784, 1))).shape == (2, 10)


@pytest.mark.parametrize("cell", ["simple", "elman"])
def test_irnn_has_identity_recurrence_and_relu(cell):
    model = build_classifier(
        cell=cell, units=8, activation="relu", recurrent_initializer="identity"
    )
    layer_cell = model.get_layer(f"{cell}_0").cell
    w_hh = getattr(layer_cell, "w_hh" if cell == "elman" else "recurrent_kernel")
    np.testing.assert_array_equal(w_hh.numpy(), np.eye(8))
    z = np.array([[-2.0, 0.5]], "float32")
    np.testing.assert_array_equal(layer_cell.activation(z), [[0.0, 0.5]])  # relu, not tanh


def test_learnable_h0_receives_a_gradient_that_changes_the_output():
    import tensorflow as tf

    model = build_classifier(cell="elman", units=8)
    h0 = model.get_layer("h0_0").h0
    x, labels = _x(), np.arange(4)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, model(x))
    gradient = tape.gradient(loss, h0)
    assert gradient is not None and np.abs(gradient.numpy()).max() > 0
    before = model(x).numpy()
    h0.assign_sub(0.5 * gradient / tf.norm(gradient))  # a step down the gradient
    assert not np.allclose(model(x).numpy(), before)
    assert float(loss_fn(labels, model(x))) < float(loss)


@pytest.mark.parametrize(
    "layer",
    [
        ElmanCell(5, activation="relu"),
        LearnableInitialState(7),
        LegendreMemoryCell(5, order=12, theta=30.0),
        LMU(5, order=12, theta=30.0, activation="relu", return_sequences=True),
    ],
)
def test_layer_config_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"cell": "transformer"}, "cell must be one of"),
        ({"units": 0}, "units must be a positive integer, got 0"),
        ({"layers": -1}, "layers must be a positive integer"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ({"activation": "sigmoid"}, r"activation must be one of \('tanh', 'relu'\), got 'sigmoid'"),
        ({"view": "columns"}, r"view must be one of \('rows', 'pixels', 'permuted'\)"),
        ({"hidden": -1}, r"hidden must be a whole number of units \(0: none\), got -1"),
        ({"memory_order": 0}, "memory_order must be a positive integer, got 0"),
        ({"theta": -5.0}, "theta must be positive or None, got -5.0"),
    ],
)
def test_bad_model_config_is_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_kind_builds_its_own_layer(cell):
    from kerasrnn.cell_kinds import CELL_KINDS, kind_of

    model = build_classifier(cell=cell, units=4)
    assert kind_of(model.get_layer(f"{cell}_0").cell) is CELL_KINDS[cell]
    has_h0 = any(isinstance(layer, LearnableInitialState) for layer in model.layers)
    assert has_h0 == CELL_KINDS[cell].learnable_h0


def test_bad_cell_units_are_rejected():
    with pytest.raises(ValueError, match="units must be a positive integer, got -2"):
        ElmanCell(-2)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"units": 0}, "units must be a positive integer, got 0"),
        ({"units": 4, "order": 2.5}, "order must be a positive integer, got 2.5"),
        ({"units": 4, "theta": 0}, "theta must be a positive number of steps, got 0"),
    ],
)
def test_bad_legendre_memory_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LegendreMemoryCell(**kwargs)


def _lmu_logits_and_gradients(model, x):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            np.arange(len(x)) % 10, logits
        )
    grads = tape.gradient(loss, model.trainable_variables)
    return logits.numpy(), [g.numpy() for g in grads]


def test_lmu_parallel_form_equals_its_steps_over_784_pixels():
    """Training computes the memory after the sequence as one product with the impulse
    response; the cell's step, one pixel at a time, must give the same logits and
    gradients, up to float32 rounding relative to the values compared."""
    from conftest import relative_difference

    parallel = build_classifier(cell="lmu", units=16, memory_order=32, hidden=8, view="pixels")
    lmu = parallel.get_layer("lmu_0")
    assert lmu.parallel_applies(mask=None)
    inputs = keras.Input((784, 1))
    steps = keras.layers.RNN(lmu.cell)(inputs)  # the same cell (weights), Keras's loop
    for name in ("hidden", "logits"):
        steps = parallel.get_layer(name)(steps)
    stepped = keras.Model(inputs, steps)
    rng = np.random.default_rng(4)
    for w in lmu.cell.weights:  # a nonzero b_u and a varied e_x too
        w.assign(w.numpy() + 0.1 * rng.standard_normal(w.shape).astype("float32"))
    x = _x(4, (784, 1))
    logits, grads = _lmu_logits_and_gradients(parallel, x)
    step_logits, step_grads = _lmu_logits_and_gradients(stepped, x)
    assert relative_difference(logits, step_logits) <= 1e-5
    for variable, grad, step_grad in zip(parallel.trainable_variables, grads, step_grads):
        assert np.abs(step_grad).max() > 0, variable.path
        assert relative_difference(grad, step_grad) <= 1e-4, variable.path


def test_lmu_hidden_layer_and_memory_options_reach_the_model():
    model = build_classifier(
        cell="lmu", units=8, memory_order=20, theta=400.0, hidden=6, view="pixels"
    )
    cell = model.get_layer("lmu_0").cell
    assert (cell.order, cell.theta, cell.w_m.shape) == (20, 400.0, (20, 8))
    assert model.get_layer("hidden").units == 6
    default = build_classifier(cell="lmu", units=8, memory_order=20, view="permuted")
    assert default.get_layer("lmu_0").cell.theta == 784.0  # the whole sequence


def test_import_kerasrnn_lets_keras_load_its_models_without_importing_keras_itself(tmp_path):
    import subprocess
    import sys

    path = str(tmp_path / "elman.keras")
    build_classifier(cell="elman", units=4).save(path)
    code = (
        "import sys\n"
        "import kerasrnn\n"
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules\n"
        "import keras\n"
        f"print(keras.models.load_model({path!r}).name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "elman_classifier"


@pytest.mark.parametrize("view", ["rows", "pixels", "permuted"])
def test_a_saved_model_keeps_its_view(tmp_path, view):
    from kerasrnn.evaluation import load_model, model_view

    path = str(tmp_path / "m.keras")
    build_classifier(cell="elman", units=4, view=view).save(path)
    loaded = load_model(path)
    assert model_view(loaded) == view  # the default request, "rows", asks for nothing
    assert model_view(loaded, view) == view
    other = "permuted" if view != "permuted" else "pixels"
    with pytest.raises(ConfigError, match=f"the model reads {view} sequences, not {other}"):
        model_view(loaded, other)
