import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasrnn import reference
from kerasrnn.models import build_classifier


def _batch(seed=1, batch=4, steps=5, features=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, steps, features)), rng.integers(0, 10, batch)


def _assert_matches_finite_differences(params, grads, logits_of, labels):
    """Each gradient against central differences of the loss of `logits_of(params)`."""
    eps = 1e-6
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            saved = value[i]
            value[i] = saved + eps
            up = reference.softmax_cross_entropy(logits_of(params), labels)
            value[i] = saved - eps
            down = reference.softmax_cross_entropy(logits_of(params), labels)
            value[i] = saved
            numeric[i] = (up - down) / (2 * eps)
        rel = np.abs(grads[name] - numeric).max() / max(np.abs(numeric).max(), 1e-12)
        assert rel < 1e-6, f"{name}: relative error {rel:.2e}"


def test_hand_bptt_matches_finite_differences():
    x, y = _batch()
    params = reference.init_params(3, 6, seed=2)
    _, grads = reference.rnn_bptt(params, x, y)
    _assert_matches_finite_differences(params, grads, lambda p: reference.rnn_forward(p, x)[0], y)


@pytest.fixture
def float64():
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def _copy_into_keras(model, params):
    rnn = model.get_layer("elman_0").cell
    rnn.w_xh.assign(params["w_xh"])
    rnn.w_hh.assign(params["w_hh"])
    rnn.b.assign(params["b"])
    model.get_layer("h0_0").h0.assign(params["h0"])
    model.get_layer("logits").kernel.assign(params["w_hy"])
    model.get_layer("logits").bias.assign(params["b_y"])
    return {
        "w_xh": rnn.w_xh,
        "w_hh": rnn.w_hh,
        "b": rnn.b,
        "h0": model.get_layer("h0_0").h0,
        "w_hy": model.get_layer("logits").kernel,
        "b_y": model.get_layer("logits").bias,
    }


def test_hand_bptt_matches_gradient_tape_on_the_keras_model(float64):
    x, y = _batch(batch=8, steps=28, features=28)
    params = reference.init_params(28, 16, seed=3)
    model = build_classifier(cell="elman", units=16)
    variables = _copy_into_keras(model, params)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        logits = model(x)
        loss = loss_fn(y, logits)
    tape_grads = dict(zip(variables, tape.gradient(loss, list(variables.values()))))
    ref_loss, ref_grads = reference.rnn_bptt(params, x, y)
    ref_logits, _ = reference.rnn_forward(params, x)
    np.testing.assert_allclose(logits.numpy(), ref_logits, rtol=1e-10)
    assert abs(float(loss) - ref_loss) < 1e-10
    for name, grad in ref_grads.items():
        rel = np.abs(tape_grads[name].numpy() - grad).max() / np.abs(grad).max()
        assert rel < 1e-5, f"{name}: relative error {rel:.2e}"


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss = reference.softmax_cross_entropy(logits, np.array([0, 2]))
    assert np.isfinite(loss) and loss == pytest.approx(np.log(3) / 2)


def test_cross_entropy_textbook_value_and_eps():
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    one_hot = np.eye(3)[[0, 0]]
    assert reference.cross_entropy(probs, one_hot, eps=1e-12) == pytest.approx(
        (-np.log(0.7 + 1e-12) - np.log(1e-12)) / 2
    )


def test_the_two_losses_agree():
    logits = np.random.default_rng(0).standard_normal((6, 10))
    labels = np.arange(6)
    probs = np.exp(reference.log_softmax(logits))
    assert reference.softmax_cross_entropy(logits, labels) == pytest.approx(
        reference.cross_entropy(probs, np.eye(10)[labels], eps=0.0)
    )


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda: reference.softmax_cross_entropy(np.zeros(3), np.zeros(3, int)),
            r"\[batch, classes\]",
        ),
        (
            lambda: reference.softmax_cross_entropy(np.full((2, 3), np.nan), np.zeros(2, int)),
            "logits contains NaN",
        ),
        (
            lambda: reference.softmax_cross_entropy(np.zeros((2, 3)), np.zeros(3, int)),
            r"labels must have shape \(2,\)",
        ),
        (
            lambda: reference.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])),
            r"labels must be in \[0, 3\)",
        ),
        (lambda: reference.cross_entropy(np.zeros((2, 3)), np.zeros((2, 4))), "must both be"),
        (
            lambda: reference.cross_entropy(np.full((1, 2), np.nan), np.zeros((1, 2))),
            "probs contains NaN",
        ),
        (
            lambda: reference.rnn_forward(reference.init_params(3, 4), np.zeros((2, 3))),
            r"\[batch, steps, features\]",
        ),
    ],
)
def test_bad_inputs_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _lmu_memory(order=5, theta=7.0):
    from kerasrnn import legendre

    return legendre.memory_step(order, theta)


def test_lmu_hand_bptt_matches_finite_differences():
    x, y = _batch(steps=9, features=2)
    a, b_m = _lmu_memory()
    params = reference.init_lmu_params(2, 6, 5, seed=2)
    _, grads = reference.lmu_bptt(params, a, b_m, x, y)
    _assert_matches_finite_differences(
        params, grads, lambda p: reference.lmu_forward(p, a, b_m, x)[0], y
    )


def test_lmu_hand_bptt_matches_gradient_tape_on_the_keras_model(float64):
    """The Keras model trains in its parallel form; the reference steps one input at a time."""
    x, y = _batch(batch=8, steps=40, features=3)
    params = reference.init_lmu_params(3, 16, 12, seed=3)
    model = build_classifier(cell="lmu", units=16, memory_order=12, steps=40, features=3)
    cell = model.get_layer("lmu_0").cell
    for name in ("e_x", "b_u", "w_x", "w_m", "b"):
        getattr(cell, name).assign(params[name])
    model.get_layer("logits").kernel.assign(params["w_hy"])
    model.get_layer("logits").bias.assign(params["b_y"])
    variables = {name: getattr(cell, name) for name in ("e_x", "b_u", "w_x", "w_m", "b")}
    variables.update(w_hy=model.get_layer("logits").kernel, b_y=model.get_layer("logits").bias)
    with tf.GradientTape() as tape:
        logits = model(x)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    tape_grads = dict(zip(variables, tape.gradient(loss, list(variables.values()))))
    ref_loss, ref_grads = reference.lmu_bptt(params, cell.a, cell.b_m, x, y)
    ref_logits = reference.lmu_forward(params, cell.a, cell.b_m, x)[0]
    np.testing.assert_allclose(logits.numpy(), ref_logits, rtol=1e-10)
    assert abs(float(loss) - ref_loss) < 1e-10
    for name, grad in ref_grads.items():
        rel = np.abs(tape_grads[name].numpy() - grad).max() / np.abs(grad).max()
        assert rel < 1e-8, f"{name}: relative error {rel:.2e}"
