"""noisy_quant in plain PyTorch: the contract of docs/design.md in code.

    z     = (x * p) / lam  (+ scale * eps)
    q_raw = floor(z + shift)
    q     = clamp(q_raw, 0, p)
    y     = (q / p) * lam

All arithmetic is float32, one IEEE-rounded operation at a time and in this order, so
the C++ and Triton kernels (which do the same) agree with it bit for bit. ``lam`` is a
scalar or a per-channel vector along dim 1. ``eps`` is a pure function of (seed, flat
row-major element index) ``i``: output ``i % 4`` of the Philox block for counter
``i // 4``, ``U(-0.5, 0.5)`` as ``tl.rand4x - 0.5`` or ``N(0, 1)`` as ``tl.randn4x`` (see
``philox.py``). The noise kind is a ``_spec.Noise`` or its spelling.

The last section is this backend's adapter: ``forward`` and ``backward`` as ``na_kernels.ops``
calls every backend.
"""

import torch

from ..._layout import numel
from ..._spec import Noise
from ...reference import philox


def _noise_kind(kind):
    return Noise(kind) if type(kind) is int else Noise.parse("noise", kind)


def _float(value, device):
    # A 0-d tensor on the input's device: CUDA turns division by a *CPU* scalar into a
    # multiplication by its reciprocal, which rounds differently from the kernels.
    return torch.tensor(float(value), dtype=torch.float32, device=device)


def lam_view(lam, x):
    """``lam`` as float32, broadcastable against x (per-channel along dim 1)."""
    lam = torch.as_tensor(lam, dtype=torch.float32, device=x.device).to(torch.float32)
    if lam.numel() == 1:
        return lam.reshape(())
    return lam.reshape((1, -1) + (1,) * (x.dim() - 2))


def noise(x_shape, seed, kind, device):
    """eps for every element of a tensor of ``x_shape`` (float32, same shape)."""
    kind = _noise_kind(kind)
    if kind is Noise.NONE:
        raise ValueError(f"noise must be 'uniform' or 'gaussian' to draw noise, got {kind!r}")
    eps = philox.noise_range(seed, 0, numel(x_shape), kind, device)
    return eps.reshape(x_shape)


def quantize_raw(x, lam, p, *, noise_kind=1, scale=None, shift=0.5, seed=0):
    """(z + shift, lam as broadcast view): everything before the floor, in float32. ``scale=None``
    is the noise kind's default (``_spec.DEFAULT_NOISE_SCALE``), as in ``na_kernels.noisy_quant``."""
    device = x.device
    lam_b = lam_view(lam, x)
    # (x * p) / lam, not x * (p / lam): exact half-step ties stay exact wherever x * p is
    z = torch.div(x.to(torch.float32) * _float(p, device), lam_b)
    kind = _noise_kind(noise_kind)
    if kind is not Noise.NONE:
        eps = noise(x.shape, seed, kind, device)
        z = z + _float(kind.default_scale if scale is None else scale, device) * eps
    return z + _float(shift, device), lam_b


def noisy_quant(x, p, lam=1.0, *, noise="uniform", scale=None, shift=0.5, seed=0):
    """Forward of the contract, differentiable: autograd gives the straight-through
    estimator of docs/design.md (d floor/dz := 1, clamp passes the gradient on [0, p]).

    x: any shape, float dtype; lam: float, scalar tensor or [C] (dim 1 of x); scale: None (the
    noise kind's default, ``_spec.DEFAULT_NOISE_SCALE``) or a number; seed: int or 1-element
    int64 tensor (unlike the op, never drawn: the reference is a pure function of its arguments). Returns y with x's
    shape and dtype.
    """
    z_shifted, lam_b = quantize_raw(x, lam, p, noise_kind=noise, scale=scale, shift=shift, seed=seed)
    # floor with d/dz := 1; infinities are saturated first so floor(z) - z is never inf - inf
    finite_z = torch.where(torch.isinf(z_shifted), z_shifted.detach().clamp(-1.0, p + 1.0), z_shifted)
    q_raw = finite_z + (torch.floor(finite_z) - finite_z).detach()
    q = torch.clamp(q_raw, 0, p)
    y = (q / _float(p, x.device)) * lam_b
    return y.to(x.dtype)


def noisy_quant_backward(grad_y, x, lam, p, *, noise="uniform", scale=None, shift=0.5, seed=0):
    """The straight-through backward in closed form: (grad_x, grad_lam).

    grad_x   = grad_y * [0 <= q_raw <= p]
    grad_lam = sum(grad_y * g),  g = q/p - x/lam on [0, p], 1 above p, 0 below 0,
    summed to lam's shape (all dims but 1 for a per-channel lam); accumulated in float64.
    """
    with torch.no_grad():
        z_shifted, lam_b = quantize_raw(x, lam, p, noise_kind=noise, scale=scale, shift=shift, seed=seed)
        q_raw = torch.floor(z_shifted)
        inside = (q_raw >= 0) & (q_raw <= p)
        grad_y32 = grad_y.to(torch.float32)
        grad_x = torch.where(inside, grad_y32, torch.zeros_like(grad_y32)).to(x.dtype)
        x32 = x.to(torch.float32)
        g = torch.where(inside, q_raw / _float(p, x.device) - x32 / lam_b, (q_raw > p).to(torch.float32))
        contribution = (grad_y32 * g).to(torch.float64)
        lam_t = torch.as_tensor(lam)
        if lam_t.numel() == 1:
            grad_lam = contribution.sum().reshape(lam_t.shape)
        else:
            dims = [d for d in range(x.dim()) if d != 1]
            grad_lam = contribution.sum(dim=dims) if dims else contribution
        return grad_x, grad_lam.to(lam_t.dtype if lam_t.is_floating_point() else torch.float32)


# ------------------------------------------------------------ the backend interface (na_kernels.ops)


def forward(x, lam, seed, args):
    y = noisy_quant(x, args.p, lam.detach(), noise=args.noise, scale=args.scale, shift=args.shift, seed=seed)
    return y.contiguous()


def backward(grad_y, x, lam, seed, args, need_grad_lam):
    grad_x, grad_lam = noisy_quant_backward(
        grad_y, x, lam.detach(), args.p, noise=args.noise, scale=args.scale, shift=args.shift, seed=seed
    )
    grad_lam = grad_lam.reshape(-1).to(torch.float32) if need_grad_lam else x.new_zeros(0, dtype=torch.float32)
    return grad_x.contiguous(), grad_lam
