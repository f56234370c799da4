"""batchnorm_noisy_quant in plain PyTorch: the contract of docs/design.md in code, and the unfused
composition it equals.

    alpha = invstd * weight,  beta = bias - mean * alpha          (per channel, float32)
    z     = x * alpha + beta  (+ residual)                          (each result rounded to x's dtype)
    y     = noisy_quant(z, p, lam, noise, scale, shift, seed)       (its reference, bit for bit)

mean and invstd = 1 / sqrt(var + eps) are this batch's (biased variance, in float64 as torch's CPU
BatchNorm computes them, then rounded; the
running statistics become ``momentum * batch + (1 - momentum) * running`` with the unbiased
variance) or the running ones. ``mask`` holds [0 <= q_raw <= p] one bit per element, in y's memory
order (``pack_mask``), and a last byte naming that order (``op_mask``): y is channels-last when x
is (``channels_last``), contiguous otherwise; backward takes the straight-through mask from it (in
the order it names, whatever y's strides are by then) and the level from y.

The last section is this backend's adapter: ``forward`` and ``backward`` as ``na_kernels.ops``
calls every backend.
"""

import torch
from torch.nn import functional as F

from ..noisy_quant import reference as nq


def _float(value):
    return torch.tensor(float(value), dtype=torch.float32)


def _channels_view(t, x):
    return t.reshape((1, -1) + (1,) * (x.dim() - 2))


def _channel_major(t):
    """[N, C, ...] -> [C, N * inner]"""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(0, 1).reshape(t.shape[1], -1)


def channels_last(t):
    """Whether the op keeps t's layout as channels-last: 4-D, channels-last strides and not also
    contiguous (then y, grad_x and grad_residual are channels-last and the mask is in that order)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def memory_format(t):
    """The memory format the op's outputs for input t have."""
    return torch.channels_last if channels_last(t) else torch.contiguous_format


def pack_mask(inside, in_channels_last=False):
    """A bool tensor as bits: uint8 [ceil(numel / 8)], element i in bit i % 8 of byte i // 8, i the
    flat index in memory order: row-major, or [N, H, W, C] with ``in_channels_last``."""
    if in_channels_last:
        inside = inside.permute(0, 2, 3, 1)
    bits = F.pad(inside.reshape(-1).to(torch.uint8), (0, (-inside.numel()) % 8)).reshape(-1, 8)
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8, device=inside.device)
    return (bits * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_mask(mask, shape, in_channels_last=False):
    """``pack_mask``'s bits as a bool tensor of (logical) ``shape``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    bits = ((mask.unsqueeze(-1) >> shifts) & 1).reshape(-1)[: torch.Size(shape).numel()]
    if in_channels_last:
        n, c, h, w = shape
        return bits.reshape(n, h, w, c).permute(0, 3, 1, 2).bool()
    return bits.reshape(shape).bool()


# The op's mask: pack_mask's bits, then one byte naming their order (1: [N, H, W, C], 0: row-major).
# The order travels with the bits because y's strides may not: torch.compile may hand backward a
# restrided copy of the y that forward returned.


def mask_bytes(numel):
    """The op mask's size for ``numel`` elements: the bits' bytes and the order byte."""
    return (numel + 7) // 8 + 1


def op_mask(inside, in_channels_last=False):
    """A bool tensor as the op's mask: ``pack_mask``'s bits in that order, then the order byte."""
    bits = pack_mask(inside, in_channels_last)
    return torch.cat((bits, bits.new_full((1,), int(in_channels_last))))


def mask_in_channels_last(mask):
    """Whether the op mask's bits are in channels-last order (a host read of its last byte)."""
    return bool(mask[-1])


def unpack_op_mask(mask, shape):
    """The op mask's bits as a bool tensor of (logical) ``shape``, in the order its last byte names
    (chosen on the device: no host read)."""
    inside = unpack_mask(mask[:-1], shape)
    if len(shape) != 4:
        return inside
    return torch.where(mask[-1:].bool().reshape(1, 1, 1, 1), unpack_mask(mask[:-1], shape, True), inside)


def statistics(x, weight, bias, running_mean, running_var, args):
    """(mean, invstd, new running mean, new running var, alpha, beta), float32 [C] each (the
    running ones empty without running statistics)."""
    channels = x.shape[1]
    empty = x.new_zeros(0, dtype=torch.float32)
    if args.batch_stats:
        rows = _channel_major(x).to(torch.float64)
        n = rows.shape[1]
        mean64 = rows.sum(1) / n
        mean = mean64.to(torch.float32)
        var_sum = ((rows - mean64[:, None]) ** 2).sum(1)
        var = (var_sum / n).to(torch.float32)  # as torch: rounded, then invstd from it in float64
        invstd = (1.0 / torch.sqrt(var.to(torch.float64) + args.eps)).to(torch.float32)
        if running_mean is not None:  # in float32, as F.batch_norm
            m, keep = _float(args.momentum), _float(1.0 - args.momentum)
            unbiased = (var.to(torch.float64) * n / (n - 1)).to(torch.float32)
            new_mean = m * mean + keep * running_mean.to(torch.float32).reshape(channels)
            new_var = m * unbiased + keep * running_var.to(torch.float32).reshape(channels)
        else:
            new_mean, new_var = empty, empty.clone()
    else:
        mean = running_mean.to(torch.float32).reshape(channels).clone()
        var = running_var.to(torch.float32).reshape(channels) + torch.tensor(args.eps, dtype=torch.float32)
        # correctly rounded float32 sqrt and division, as std::sqrt and '/' (torch's float32 sqrt on
        # the CPU is not always, and 1.0 / t is a reciprocal op)
        std = torch.sqrt(var.to(torch.float64)).to(torch.float32)
        invstd = torch.ones_like(std) / std
        new_mean, new_var = mean.clone(), running_var.to(torch.float32).reshape(channels).clone()
    alpha = invstd * weight.to(torch.float32)
    beta = bias.to(torch.float32) - mean * alpha
    return mean, invstd, new_mean, new_var, alpha, beta


def normalized(x, residual, alpha, beta):
    """z = x * alpha + beta (+ residual), each result rounded to x's dtype; float32."""
    z = (x.to(torch.float32) * _channels_view(alpha, x) + _channels_view(beta, x)).to(x.dtype).to(torch.float32)
    if residual is not None:
        z = (z + residual.to(torch.float32)).to(x.dtype).to(torch.float32)
    return z


def unfused(
    x,
    weight,
    bias,
    running_mean,
    running_var,
    p,
    lam,
    *,
    batch_stats=True,
    momentum=0.1,
    eps=1e-5,
    residual=None,
    noise="uniform",
    scale=None,
    shift=0.5,
    seed=0,
):
    """What the op replaces: ``noisy_quant(F.batch_norm(x) (+ residual))`` with torch's BatchNorm
    and the noisy_quant reference, differentiable by autograd (straight-through); updates the
    running statistics in place as F.batch_norm does."""
    z = F.batch_norm(x, running_mean, running_var, weight, bias, batch_stats, momentum, eps)
    if residual is not None:
        z = z + residual
    return nq.noisy_quant(z, p, lam, noise=noise, scale=scale, shift=shift, seed=seed)


# ------------------------------------------------------------ the backend interface (na_kernels.ops)


def forward(x, residual, weight, bias, running_mean, running_var, lam, seed, args):
    with torch.no_grad():
        mean, invstd, new_mean, new_var, alpha, beta = statistics(x, weight, bias, running_mean, running_var, args)
        z = normalized(x, residual, alpha, beta)
        lam32 = lam.detach().to(torch.float32).expand(x.shape[1]).contiguous()
        z_shifted, lam_b = nq.quantize_raw(
            z, lam32, args.p, noise_kind=args.noise, scale=args.scale, shift=args.shift, seed=seed
        )
        q_raw = torch.floor(z_shifted)
        y = ((torch.clamp(q_raw, 0, args.p) / nq._float(args.p, x.device)) * lam_b).to(x.dtype)
        mask = op_mask((q_raw >= 0) & (q_raw <= args.p), channels_last(x))
    return y.contiguous(memory_format=memory_format(x)), mean, invstd, mask, new_mean, new_var


def backward(grad_y, x, residual, y, mask, mean, invstd, weight, bias, lam, args, need_grad_residual):
    """(grad_x, grad_residual or empty, grad_weight, grad_bias, grad_lam per channel), the last three
    float32 [C]."""
    with torch.no_grad():
        channels = x.shape[1]
        alpha = invstd * weight.to(torch.float32)
        beta = bias.to(torch.float32) - mean * alpha
        z = normalized(x, residual, alpha, beta)
        lam32 = _channels_view(lam.to(torch.float32).expand(channels), x)
        p = nq._float(args.p, x.device)
        layout = memory_format(y)
        inside = unpack_op_mask(mask, x.shape)
        dy = grad_y.to(torch.float32)
        dz = torch.where(inside, dy, torch.zeros_like(dy))
        level = torch.floor((y.to(torch.float32) * p) / lam32 + 0.5)
        g = torch.where(inside, level / p - z / lam32, (level == p).to(torch.float32))
        dims = [d for d in range(x.dim()) if d != 1]
        xc = x.to(torch.float32) - _channels_view(mean, x)
        sum_dz = dz.to(torch.float64).sum(dims)
        sum_dz_xc = (dz * xc).to(torch.float64).sum(dims)
        grad_lam = (dy * g).to(torch.float64).sum(dims).to(torch.float32)
        n = x.numel() // channels
        w_invstd = _channels_view(invstd * weight.to(torch.float32), x)
        if args.batch_stats:
            mean_dz = _channels_view((sum_dz / n).to(torch.float32), x)
            k = _channels_view((sum_dz_xc / n * invstd.double() * invstd.double()).to(torch.float32), x)
            grad_x = ((dz - mean_dz) - xc * k) * w_invstd
        else:
            grad_x = dz * w_invstd
        grad_residual = dz.to(x.dtype).contiguous(memory_format=layout) if need_grad_residual else x.new_zeros(0)
        grad_weight = (sum_dz_xc * invstd.double()).to(torch.float32)
        grad_x = grad_x.to(x.dtype).contiguous(memory_format=layout)
        return grad_x, grad_residual, grad_weight, sum_dz.to(torch.float32), grad_lam
