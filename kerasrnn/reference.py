"""NumPy reference of the Elman RNN classifier (and of the Legendre Memory Unit
classifier, `lmu_forward`): forward pass, cross-entropy, hand BPTT.

The equations, with row vectors as in Keras (x_t is [batch, features]):

    h_0 = h0                                    (learnable, tiled over the batch)
    h_t = tanh(x_t @ W_xh + h_{t-1} @ W_hh + b)  t = 1..T
    logits = h_T @ W_hy + b_y

This module depends on NumPy only; the tests hold it against finite differences and
against `tf.GradientTape` on the Keras model with the same weights.
"""

from __future__ import annotations

import numpy as np


def _check_finite(name: str, array: np.ndarray) -> None:
    """Raises ValueError when `array` holds NaN or an infinity."""
    if not np.isfinite(array).all():
        bad = "NaN" if np.isnan(array).any() else "an infinity"
        raise ValueError(f"{name} contains {bad}")


def _check_labels(labels: np.ndarray, batch: int, classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= classes:
        raise ValueError(
            f"labels must be in [0, {classes}), got range [{labels.min()}, {labels.max()}]"
        )
    return labels


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (log-sum-exp trick)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of integer labels under softmax(logits), stable for any logits.

    Args:
        logits: [batch, classes] float array.
        labels: [batch] integer class ids.

    Returns:
        The mean over the batch of -log softmax(logits)[label].
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {logits.shape}")
    _check_finite("logits", logits)
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def cross_entropy(probs: np.ndarray, one_hot: np.ndarray, eps: float = 1e-12) -> float:
    """Textbook cross-entropy: mean over the batch of -sum(y * log(p + eps)).

    Args:
        probs: [batch, classes] probabilities.
        one_hot: [batch, classes] targets (one-hot or soft labels).
        eps: added inside the log so that p = 0 gives a finite loss.

    Returns:
        The mean loss as a float.
    """
    probs, one_hot = np.asarray(probs), np.asarray(one_hot)
    if probs.ndim != 2 or probs.shape != one_hot.shape:
        raise ValueError(
            f"probs and one_hot must both be [batch, classes], got {probs.shape} and "
            f"{one_hot.shape}"
        )
    _check_finite("probs", probs)
    _check_finite("one_hot", one_hot)
    return float(-(one_hot * np.log(probs + eps)).sum(axis=1).mean())


def init_params(
    input_size: int, units: int, classes: int = 10, seed: int = 0, dtype=np.float64
) -> dict[str, np.ndarray]:
    """Small random parameters with the shapes `rnn_forward` expects."""
    rng = np.random.default_rng(seed)
    shapes = {
        "w_xh": (input_size, units),
        "w_hh": (units, units),
        "b": (units,),
        "h0": (units,),
        "w_hy": (units, classes),
        "b_y": (classes,),
    }
    return {k: (0.3 * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


def rnn_forward(params: dict[str, np.ndarray], x: np.ndarray):
    """Runs the RNN over a batch of sequences.

    Args:
        params: arrays w_xh, w_hh, b, h0, w_hy, b_y (see `init_params`).
        x: [batch, steps, features] inputs.

    Returns:
        (logits [batch, classes], hs [steps + 1, batch, units]) where hs[0] is h0 tiled.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be [batch, steps, features], got shape {x.shape}")
    _check_finite("x", x)
    batch, steps, _ = x.shape
    h = np.broadcast_to(params["h0"], (batch, params["h0"].shape[0]))
    hs = [h]
    for t in range(steps):
        h = np.tanh(x[:, t] @ params["w_xh"] + h @ params["w_hh"] + params["b"])
        hs.append(h)
    return hs[-1] @ params["w_hy"] + params["b_y"], np.stack(hs)


def rnn_bptt(params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray):
    """Loss and hand-written backpropagation through time.

    Args:
        params: arrays w_xh, w_hh, b, h0, w_hy, b_y (see `init_params`).
        x: [batch, steps, features] inputs.
        labels: [batch] integer class ids.

    Returns:
        (mean softmax cross-entropy, dict of gradients with the keys and shapes of params).
    """
    logits, hs = rnn_forward(params, x)
    batch, steps = x.shape[0], x.shape[1]
    loss = softmax_cross_entropy(logits, labels)
    dlogits = np.exp(log_softmax(logits))
    dlogits[np.arange(batch), labels] -= 1.0
    dlogits /= batch  # d loss / d logits
    grads = {"w_hy": hs[-1].T @ dlogits, "b_y": dlogits.sum(0)}
    grads.update({k: np.zeros_like(params[k]) for k in ("w_xh", "w_hh", "b")})
    dh = dlogits @ params["w_hy"].T  # d loss / d h_T
    for t in range(steps, 0, -1):
        dz = dh * (1.0 - hs[t] ** 2)  # through tanh
        grads["w_xh"] += x[:, t - 1].T @ dz
        grads["w_hh"] += hs[t - 1].T @ dz
        grads["b"] += dz.sum(0)
        dh = dz @ params["w_hh"].T  # to h_{t-1}
    grads["h0"] = dh.sum(0)  # h0 is shared by every example
    return loss, grads


def init_lmu_params(
    input_size: int,
    units: int,
    order: int,
    classes: int = 10,
    seed: int = 0,
    dtype=np.float64,
) -> dict[str, np.ndarray]:
    """Small random parameters with the shapes `lmu_forward` expects."""
    rng = np.random.default_rng(seed)
    shapes = {
        "e_x": (input_size, 1),
        "b_u": (1,),
        "w_x": (input_size, units),
        "w_m": (order, units),
        "b": (units,),
        "w_hy": (units, classes),
        "b_y": (classes,),
    }
    return {k: (0.3 * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


def lmu_forward(params: dict[str, np.ndarray], a: np.ndarray, b_m: np.ndarray, x: np.ndarray):
    """Runs the Legendre Memory Unit classifier over a batch of sequences, step by step.

    The equations (`cells.LegendreMemoryCell`), from m_0 = 0:

        u_t = x_t @ e_x + b_u
        m_t = m_{t-1} @ a + u_t * b_m
        h_T = tanh(x_T @ w_x + m_T @ w_m + b)
        logits = h_T @ w_hy + b_y

    Args:
        params: arrays e_x, b_u, w_x, w_m, b, w_hy, b_y (see `init_lmu_params`).
        a: [order, order] the memory's fixed step matrix (`legendre.memory_step`).
        b_m: [order] the memory's fixed input vector.
        x: [batch, steps, features] inputs.

    Returns:
        (logits [batch, classes], ms [steps + 1, batch, order] where ms[0] is m_0 = 0,
        h_T [batch, units]).
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be [batch, steps, features], got shape {x.shape}")
    _check_finite("x", x)
    batch, steps, _ = x.shape
    m = np.zeros((batch, len(b_m)))
    ms = [m]
    for t in range(steps):
        u = x[:, t] @ params["e_x"] + params["b_u"]  # [batch, 1]
        m = m @ a + u * b_m
        ms.append(m)
    h = np.tanh(x[:, -1] @ params["w_x"] + m @ params["w_m"] + params["b"])
    return h @ params["w_hy"] + params["b_y"], np.stack(ms), h


def lmu_bptt(params: dict[str, np.ndarray], a: np.ndarray, b_m: np.ndarray, x: np.ndarray, labels):
    """Loss and hand-written backpropagation through time of `lmu_forward`.

    The memory is linear and fixed: the loss reaches each step's u_t only through
    m_T, as d m_t = d m_{t+1} @ a^T, and d u_t = d m_t . b_m.

    Returns:
        (mean softmax cross-entropy, dict of gradients with the keys and shapes of params).
    """
    logits, ms, h = lmu_forward(params, a, b_m, x)
    batch, steps = x.shape[0], x.shape[1]
    loss = softmax_cross_entropy(logits, labels)
    dlogits = np.exp(log_softmax(logits))
    dlogits[np.arange(batch), labels] -= 1.0
    dlogits /= batch  # d loss / d logits
    dz = dlogits @ params["w_hy"].T * (1.0 - h**2)  # through tanh
    grads = {
        "w_hy": h.T @ dlogits,
        "b_y": dlogits.sum(0),
        "w_x": x[:, -1].T @ dz,
        "w_m": ms[-1].T @ dz,
        "b": dz.sum(0),
        "e_x": np.zeros_like(params["e_x"]),
        "b_u": np.zeros_like(params["b_u"]),
    }
    dm = dz @ params["w_m"].T  # d loss / d m_T
    for t in range(steps, 0, -1):
        du = dm @ b_m[:, None]  # [batch, 1]
        grads["e_x"] += x[:, t - 1].T @ du
        grads["b_u"] += du.sum(0)
        dm = dm @ a.T  # to m_{t-1}
    return loss, grads
