"""noisy_quant forward and backward, emulated in numpy float32 one IEEE operation at a time.

The contract order (docs/design.md, with the lead's decision that the product comes first)::

    z     = (x * p) / lam[c]            # two float32 roundings: multiply, then divide
    z     = z + scale * eps             # only with noise: scale * eps rounded, then the sum
    t     = z + shift
    q_raw = floor(t)
    q     = clamp(q_raw, 0, p)          # NaN stays NaN
    y     = (q / p) * lam[c]            # two roundings, then rounded to x's dtype (nearest even)

    inside   = 0 <= q_raw <= p          # False for NaN
    grad_x   = grad_y where inside else 0
    g        = q_raw / p - x / lam[c] where inside, 1 where q_raw > p, else 0   (float32)
    grad_lam = sum over the channel of float32(grad_y * g), summed exactly (float64 here)

``x`` is widened to float32 exactly; ``p``, ``scale``, ``shift`` and ``lam`` are float32 values;
channel ``c`` of flat element ``i`` is ``(i // prod(shape[2:])) % shape[1]`` (dim 1), so a per-
channel lam broadcasts along dim 1; eps comes from ``oracle_philox`` for the flat row-major index.
"""

import numpy as np

from . import oracle_philox

F32 = np.float32


def lam_broadcast(lam, shape):
    """float32 lam as an array broadcastable against ``shape``: 1 element, or one per dim-1 channel."""
    lam = np.asarray(lam, dtype=np.float32).reshape(-1)
    if lam.size == 1:
        return lam.reshape(())
    return lam.reshape((1, -1) + (1,) * (len(shape) - 2))


def eps_of(shape, noise, seed):
    return None if noise is None else oracle_philox.noise(seed, shape, noise)


def pre_floor(x32, lam, p, noise, scale, shift, seed):
    """(t = z + shift, eps or None, lam broadcast): everything before the floor, float32."""
    lam_b = lam_broadcast(lam, x32.shape)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z = (x32 * F32(p)) / lam_b
        eps = eps_of(x32.shape, noise, seed)
        if eps is not None:
            z = z + F32(scale) * eps
        t = z + F32(shift)
    return t.astype(np.float32), eps, lam_b


def forward(x32, lam, p, noise=None, scale=1.0, shift=0.5, seed=0):
    """(y float32 before the storage rounding, q_raw): float32 arrays of x's shape."""
    t, _, lam_b = pre_floor(x32, lam, p, noise, scale, shift, seed)
    q_raw = np.floor(t)
    with np.errstate(invalid="ignore"):
        q = np.minimum(np.maximum(q_raw, F32(0)), F32(p))
        q = np.where(np.isnan(q_raw), q_raw, q)
        y = (q / F32(p)) * lam_b
    return y.astype(np.float32), q_raw


def backward(gy32, x32, lam, p, noise=None, scale=1.0, shift=0.5, seed=0, per_channel=False):
    """(grad_x float32 before the storage rounding, grad_lam float64 per channel (or [1]),
    sum of |contribution| per channel (for the summation-order tolerance), element count per channel)."""
    t, _, lam_b = pre_floor(x32, lam, p, noise, scale, shift, seed)
    q_raw = np.floor(t)
    with np.errstate(invalid="ignore"):
        inside = (q_raw >= 0) & (q_raw <= F32(p))
        grad_x = np.where(inside, gy32, F32(0)).astype(np.float32)
        with np.errstate(over="ignore", divide="ignore"):
            g_in = q_raw / F32(p) - x32 / lam_b
        g = np.where(inside, g_in, np.where(q_raw > F32(p), F32(1), F32(0))).astype(np.float32)
        contribution = (gy32 * g).astype(np.float32).astype(np.float64)
    if per_channel:
        axes = tuple(d for d in range(x32.ndim) if d != 1)
        return (
            grad_x,
            contribution.sum(axis=axes),
            np.abs(contribution).sum(axis=axes),
            np.full(x32.shape[1], x32.size // max(x32.shape[1], 1), dtype=np.int64),
        )
    return grad_x, np.array([contribution.sum()]), np.array([np.abs(contribution).sum()]), np.array([x32.size])


def float64_levels(x32, lam, p, noise=None, scale=1.0, shift=0.5, seed=0):
    """(level clamp(floor(x*p/lam + scale*eps + shift), 0, p) in float64 arithmetic, t in float64,
    a bound on |t32 - t64|): the same real formula with eps the oracle's float32 noise value."""
    lam64 = lam_broadcast(lam, x32.shape).astype(np.float64)
    x64 = x32.astype(np.float64)
    eps = eps_of(x32.shape, noise, seed)
    with np.errstate(over="ignore", invalid="ignore"):
        z = x64 * p / lam64
        noise_term = 0.0 if eps is None else float(np.float32(scale)) * eps.astype(np.float64)
        t = z + noise_term + float(np.float32(shift))
        # float32 rounds (x*p), (/lam), (scale*eps), (+ noise) and (+ shift), each within half an ulp
        # (2^-24 relative) of its exact result, plus float32's subnormal spacing per operation
        u = 2.0**-24
        bound = u * (2 * np.abs(z) + np.abs(noise_term) + np.abs(z + noise_term) + np.abs(t)) * 1.01 + 5 * 2.0**-149
        level = np.clip(np.floor(t), 0, p)
    return level, t, bound
