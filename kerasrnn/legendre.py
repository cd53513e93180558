"""The Legendre delay system of the Legendre Memory Unit, in NumPy (no TensorFlow).

Voelker, Kajić and Eliasmith (2019) derive a linear system of `order` states whose state
holds the last `theta` time units of its input u as the coefficients of shifted Legendre
polynomials (a Padé approximation of the delay e^{-theta s}):

    theta dm/dt = A m + B u,   A_ij = (2i + 1) * (-1 if i < j else (-1)^(i - j + 1)),
                               B_i  = (2i + 1) * (-1)^i

Discretised for steps of one time unit by zero-order hold (the input held constant over a
step), the step is exact for such inputs:

    m_t = Abar m_{t-1} + Bbar u_t,   [[Abar, Bbar], [0, 1]] = expm([[A, B], [0, 0]] / theta)

and, from m_0 = 0, the memory after T steps is a fixed linear map of the inputs (the
impulse response H_k = Abar^k Bbar), which is what lets a memory without feedback train in
parallel over time (Chilkuri and Eliasmith, 2021):

    m_T = sum_{t=1..T} H_{T-t} u_t

Arrays here are for row vectors, as in Keras (m is [batch, order]): `memory_step` returns
Abar^T and Bbar as a row, so that m_t = m_{t-1} @ a + u_t * b.
"""

from __future__ import annotations

import numpy as np

# expm's Taylor series runs on the matrix scaled to this norm, then squares back up.
_TAYLOR_NORM = 0.5
_TAYLOR_TERMS = 30


def _check(order: int, theta: float) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or order <= 0:
        raise ValueError(f"order must be a positive integer, got {order!r}")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < np.inf:
        raise ValueError(f"theta must be a positive number of steps, got {theta!r}")


def continuous_system(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """(A [order, order], B [order]) of theta dm/dt = A m + B u, divided by theta.

    Raises:
        ValueError: `order` is not a positive integer or `theta` not a positive number.
    """
    _check(order, theta)
    q = np.arange(order)
    i, j = np.meshgrid(q, q, indexing="ij")
    rate = (2 * q + 1)[:, None] / float(theta)
    a = np.where(i < j, -1.0, (-1.0) ** (i - j + 1)) * rate
    b = (-1.0) ** q * rate[:, 0]
    return a, b


def expm(matrix: np.ndarray) -> np.ndarray:
    """The matrix exponential by scaling and squaring a Taylor series (float64).

    Accurate to about 1e-13 relative for the Legendre systems here (scipy's Padé `expm`
    agrees to 4e-13 at order 256); kept in NumPy so the package needs no scipy.
    """
    matrix = np.asarray(matrix, np.float64)
    norm = np.abs(matrix).sum(axis=1).max()
    squarings = max(0, int(np.ceil(np.log2(norm / _TAYLOR_NORM)))) if norm > 0 else 0
    scaled = matrix / 2.0**squarings
    result = term = np.eye(len(matrix))
    for k in range(1, _TAYLOR_TERMS):
        term = term @ scaled / k
        result = result + term
    for _ in range(squarings):
        result = result @ result
    return result


def memory_step(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """The discrete step m_t = m_{t-1} @ a + u_t * b, by zero-order hold (float64).

    Returns:
        (a [order, order] = Abar^T, b [order] = Bbar).

    Raises:
        ValueError: see `continuous_system`.
    """
    a, b = continuous_system(order, theta)
    augmented = np.zeros((order + 1, order + 1))
    augmented[:order, :order] = a
    augmented[:order, order] = b
    exp = expm(augmented)
    return exp[:order, :order].T.copy(), exp[:order, order].copy()


def impulse_response(order: int, theta: float, steps: int) -> np.ndarray:
    """The memory's response to each input of a sequence of `steps` (float64).

    Returns:
        [steps, order]: row t (0-based) is H_{steps-1-t} = Abar^(steps-1-t) Bbar, so that
        from m_0 = 0 the memory after the sequence is m_T = u @ response for u [batch,
        steps].

    Raises:
        ValueError: see `continuous_system`, or `steps` not a positive integer.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    a, h = memory_step(order, theta)
    response = np.empty((steps, order))
    for k in range(steps - 1, -1, -1):  # H_0 = Bbar multiplies the last input
        response[k] = h
        h = h @ a
    return response


def state_transition(order: int, theta: float, steps: int) -> np.ndarray:
    """(Abar^T)^steps [order, order]: how m_0 reaches m_T after `steps` steps (float64)."""
    a, _ = memory_step(order, theta)
    return np.linalg.matrix_power(a, steps)
