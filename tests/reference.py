"""NumPy references written from the formulas (keras-semantics.md sections 1.2-1.11).

Deliberately naive and independent of bnkit's implementation: ghost batches are gathered
by explicit strided indexing (sample b -> group b mod G), not by a reshape; statistics are
computed in float64.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class BNState:
    mean: np.ndarray
    var: np.ndarray
    stddev: np.ndarray | None = None  # renorm only
    renorm_mean: np.ndarray | None = None
    renorm_stddev: np.ndarray | None = None

    def copy(self) -> "BNState":
        return BNState(*(None if v is None else np.array(v, dtype=np.float64) for v in
                         (self.mean, self.var, self.stddev, self.renorm_mean, self.renorm_stddev)))


@dataclass
class BNConfig:
    axes: list[int]
    momentum: float = 0.99
    epsilon: float = 1e-3
    unbiased: bool = False  # tf.keras' fused path
    renorm: bool = False
    renorm_momentum: float = 0.99
    clipping: dict = field(default_factory=dict)
    virtual_batch_size: int | None = None


def param_shape(x_shape: tuple[int, ...], axes: list[int]) -> list[int]:
    return [x_shape[d] if d in axes else 1 for d in range(len(x_shape))]


def _ema(old: np.ndarray, new: np.ndarray, momentum: float) -> np.ndarray:
    return old * momentum + new * (1.0 - momentum)


def _moments(x: np.ndarray, reduce: tuple[int, ...], weights: np.ndarray | None):
    if weights is None:
        mean = x.mean(axis=reduce, keepdims=True)
        return mean, ((x - mean) ** 2).mean(axis=reduce, keepdims=True)
    w = np.broadcast_to(weights, x.shape)
    total = w.sum(axis=reduce, keepdims=True)
    inv = np.where(total > 0, 1.0 / np.where(total > 0, total, 1.0), 0.0)
    mean = (w * x).sum(axis=reduce, keepdims=True) * inv
    return mean, (w * (x - mean) ** 2).sum(axis=reduce, keepdims=True) * inv


def batch_norm_train(
    x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, state: BNState,
    cfg: BNConfig, adjustment: tuple[np.ndarray, np.ndarray] | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, BNState]:
    """One training step: output and the updated state (gamma/beta/state are flat (C,))."""
    x = x.astype(np.float64)
    shape = param_shape(x.shape, cfg.axes)
    reduce = tuple(d for d in range(x.ndim) if d not in cfg.axes)
    g = np.ones(shape) if gamma is None else gamma.reshape(shape).astype(np.float64)
    b = np.zeros(shape) if beta is None else beta.reshape(shape).astype(np.float64)
    if cfg.virtual_batch_size:
        groups = x.shape[0] // cfg.virtual_batch_size
        xhat = np.empty_like(x)
        means, variances = [], []
        for j in range(groups):
            part = x[j::groups]  # Keras' strided grouping
            m, v = _moments(part, reduce, None)
            xhat[j::groups] = (part - m) / np.sqrt(v + cfg.epsilon)
            means.append(m)
            variances.append(v)
        mean, var = np.mean(means, axis=0), np.mean(variances, axis=0)
        n = int(np.prod([x[0::groups].shape[d] for d in reduce]))  # elements behind each variance
    else:
        weights = None if mask is None else mask.astype(np.float64)[..., None]
        mean, var = _moments(x, reduce, weights)
        xhat = (x - mean) / np.sqrt(var + cfg.epsilon)
        n = int(np.prod([x.shape[d] for d in reduce]))
    new = state.copy()
    mean_f, var_f = mean.reshape(-1), var.reshape(-1)
    if cfg.renorm:
        s = np.sqrt(var_f + cfg.epsilon)
        sr = np.maximum(state.renorm_stddev, np.sqrt(cfg.epsilon))
        r = s / sr
        d = (mean_f - state.renorm_mean) / sr
        if cfg.clipping.get("rmin") is not None:
            r = np.maximum(r, cfg.clipping["rmin"])
        if cfg.clipping.get("rmax") is not None:
            r = np.minimum(r, cfg.clipping["rmax"])
        if cfg.clipping.get("dmax") is not None:
            d = np.clip(d, -cfg.clipping["dmax"], cfg.clipping["dmax"])
        xhat = xhat * r.reshape(shape) + d.reshape(shape)
        # the moving statistics follow the variance rule (PyTorch's family: unbiased)
        s = np.sqrt(var_f * (n / (n - 1)) + cfg.epsilon) if cfg.unbiased and n and n > 1 else s
        new.renorm_mean = _ema(state.renorm_mean, mean_f, cfg.renorm_momentum)
        new.renorm_stddev = _ema(state.renorm_stddev, s, cfg.renorm_momentum)
        new.mean = _ema(state.mean, mean_f, cfg.momentum)
        new.stddev = _ema(state.stddev, s, cfg.momentum)
        new.var = np.maximum(new.stddev ** 2 - cfg.epsilon, 0.0)
    else:
        feed = var_f * (n / (n - 1)) if cfg.unbiased and n and n > 1 else var_f
        new.mean = _ema(state.mean, mean_f, cfg.momentum)
        new.var = _ema(state.var, feed, cfg.momentum)
    if adjustment is not None:
        xhat = xhat * adjustment[0] + adjustment[1]
    return xhat * g + b, new


def batch_norm_infer(
    x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, state: BNState, cfg: BNConfig
) -> np.ndarray:
    shape = param_shape(x.shape, cfg.axes)
    g = 1.0 if gamma is None else gamma.reshape(shape)
    b = 0.0 if beta is None else beta.reshape(shape)
    xhat = (x.astype(np.float64) - state.mean.reshape(shape)) / np.sqrt(state.var.reshape(shape) + cfg.epsilon)
    return xhat * g + b


def flatten(x: np.ndarray, data_format: str) -> np.ndarray:
    if x.ndim == 1:
        return x[:, None]
    if data_format == "channels_first" and x.ndim > 2:
        x = np.moveaxis(x, 1, -1)
    return x.reshape(x.shape[0], -1)


# Keras regularizers and constraints (tf_keras/src/regularizers.py, constraints.py).
def l1(x: np.ndarray, c: float = 0.01) -> float:
    return float(c * np.abs(x).sum())


def l2(x: np.ndarray, c: float = 0.01) -> float:
    return float(c * (x ** 2).sum())


def non_neg(x: np.ndarray) -> np.ndarray:
    return x * (x >= 0)


def max_norm(x: np.ndarray, max_value: float = 2.0, axis: int = 0) -> np.ndarray:
    norms = np.sqrt((x ** 2).sum(axis=axis, keepdims=True))
    return x * np.clip(norms, 0, max_value) / (1e-7 + norms)
