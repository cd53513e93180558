"""The Legendre delay system: its discretisation against TensorFlow's matrix exponential,
its impulse response against its own steps, and that its memory holds the recent input."""

import numpy as np
import pytest

from kerasrnn import legendre


@pytest.mark.parametrize("order", [1, 8, 256])
def test_zero_order_hold_matches_tensorflow_expm(order):
    import tensorflow as tf

    a, b = legendre.continuous_system(order, 784.0)
    augmented = np.zeros((order + 1, order + 1))
    augmented[:order, :order], augmented[:order, order] = a, b
    expected = tf.linalg.expm(tf.constant(augmented)).numpy()
    step_a, step_b = legendre.memory_step(order, 784.0)
    assert np.abs(step_a - expected[:order, :order].T).max() <= 1e-12
    assert np.abs(step_b - expected[:order, order]).max() <= 1e-12 * np.abs(step_b).max()


def test_impulse_response_and_transition_are_the_steps_summed():
    order, theta, steps = 6, 20.0, 30
    a, b = legendre.memory_step(order, theta)
    u = np.random.default_rng(0).standard_normal((3, steps))
    m0 = np.random.default_rng(1).standard_normal((3, order))
    m = m0
    for t in range(steps):
        m = m @ a + u[:, t : t + 1] * b
    parallel = m0 @ legendre.state_transition(order, theta, steps) + u @ legendre.impulse_response(
        order, theta, steps
    )
    assert np.abs(parallel - m).max() <= 1e-12 * np.abs(m).max()


def _shifted_legendre(order: int, r: float) -> np.ndarray:
    """P~_i(r), i < order: the shifted Legendre polynomials on [0, 1] at r."""
    return np.array(
        [np.polynomial.legendre.legval(2 * r - 1, np.eye(order)[i]) for i in range(order)]
    )


def test_the_memory_holds_the_input_of_the_last_theta_steps():
    """Decoded with the Legendre polynomials, m_t gives back u(t - delay) for any delay in
    the window: the delay line that the cell's name promises (Voelker et al., 2019)."""
    order, theta, steps = 12, 100.0, 400
    a, b = legendre.memory_step(order, theta)
    t = np.arange(steps)
    u = np.sin(2 * np.pi * t / 150.0) + 0.5 * np.cos(2 * np.pi * t / 70.0)
    m = np.zeros(order)
    for value in u:
        m = m @ a + value * b
    for delay in (0, 25, 50, 99):
        decoded = m @ _shifted_legendre(order, delay / theta)  # u(t - theta r) = m . P~(r)
        assert abs(decoded - u[steps - 1 - delay]) <= 0.05, delay


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: legendre.memory_step(0, 10.0), "order must be a positive integer, got 0"),
        (lambda: legendre.memory_step(4, -1.0), "theta must be a positive number of steps"),
        (lambda: legendre.memory_step(4, float("inf")), "theta must be a positive number"),
        (lambda: legendre.impulse_response(4, 10.0, 0), "steps must be a positive integer"),
    ],
)
def test_bad_arguments_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
