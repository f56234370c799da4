"""Triton kernels for batchnorm_noisy_quant: the elementwise passes of forward (z, the noise, y and
the straight-through mask) and of backward (dz, which is also the residual's gradient, and the
per-tile partial sums of dz, dz·(x - mean) and grad_y·dy/dλ). The batch statistics, the reductions
of the partial sums (float64) and grad_x run as torch ops on the same tensors, as the reference
computes them (``reference.statistics``, ``reference.backward``'s formula). The mask is packed into
bits (``reference.pack_mask``) from the kernel's one byte per element.

Tiles as ``noisy_quant``'s Triton kernels: x viewed as [N·C rows, inner columns], row r in channel
``r % C``; the noise is ``noisy_quant``'s (``_noise``) on the flat index, so y equals noisy_quant's.
"""

import torch
import triton
import triton.language as tl

from ...kernels._storage import FLOAT_OPTIONS, load_f32, store_rounded
from ..noisy_quant.triton import _launch_geometry, _noise, _tile, clamp_level, whole_blocks
from . import reference

_NO_NOISE = tl.constexpr(0)


@triton.jit
def _round_like(value, ptr):
    """float32 ``value`` rounded to ptr's dtype and back (as store_rounded, then load_f32)."""
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return tl.where((bits & 0x7FFFFFFF) > 0x7F800000, value, rounded.to(tl.float32, bitcast=True))
    elif ptr.dtype.element_ty == tl.float16:
        return value.to(tl.float16).to(tl.float32)
    else:
        return value


@triton.jit
def _normalized(
    x_ptr, residual_ptr, alpha_ptr, beta_ptr, row, rows, channel, offsets, mask, HAS_RESIDUAL: tl.constexpr
):
    alpha = tl.load(alpha_ptr + channel, mask=row < rows, other=1.0)[:, None]
    beta = tl.load(beta_ptr + channel, mask=row < rows, other=0.0)[:, None]
    z = _round_like(load_f32(x_ptr + offsets, mask, 0.0) * alpha + beta, x_ptr)
    if HAS_RESIDUAL:
        z = _round_like(z + load_f32(residual_ptr + offsets, mask, 0.0), x_ptr)
    return z


@triton.jit
def _forward_kernel(
    x_ptr,
    residual_ptr,
    y_ptr,
    inside_ptr,
    alpha_ptr,
    beta_ptr,
    lam_ptr,
    seed_ptr,
    rows,
    channel_stride,
    channels,
    blocks_per_row,
    p,
    scale,
    shift,
    NOISE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row, col_start, offsets, mask, channel = _tile(rows, channel_stride, channels, blocks_per_row, BLOCK_R, BLOCK_C)
    z = _normalized(x_ptr, residual_ptr, alpha_ptr, beta_ptr, row, rows, channel, offsets, mask, HAS_RESIDUAL)
    lam = tl.load(lam_ptr + channel, mask=row < rows, other=1.0)[:, None]
    z = tl.div_rn(z * p, lam)  # noisy_quant's order
    if NOISE != _NO_NOISE:
        z = z + scale * _noise(seed_ptr, row, col_start, offsets, channel_stride, NOISE, WHOLE_BLOCKS, BLOCK_R, BLOCK_C)
    q_raw = tl.floor(z + shift)
    q = clamp_level(q_raw, p)
    store_rounded(y_ptr + offsets, tl.div_rn(q, p) * lam, mask)
    inside = (q_raw >= 0.0) & (q_raw <= p)
    tl.store(inside_ptr + offsets, inside.to(tl.uint8), mask=mask)


@triton.jit
def _backward_kernel(
    grad_y_ptr,
    x_ptr,
    residual_ptr,
    y_ptr,
    inside_ptr,
    dz_ptr,
    partial_ptr,
    mean_ptr,
    alpha_ptr,
    beta_ptr,
    lam_ptr,
    rows,
    channel_stride,
    channels,
    blocks_per_row,
    p,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row, col_start, offsets, mask, channel = _tile(rows, channel_stride, channels, blocks_per_row, BLOCK_R, BLOCK_C)
    z = _normalized(x_ptr, residual_ptr, alpha_ptr, beta_ptr, row, rows, channel, offsets, mask, HAS_RESIDUAL)
    lam = tl.load(lam_ptr + channel, mask=row < rows, other=1.0)[:, None]
    mean = tl.load(mean_ptr + channel, mask=row < rows, other=0.0)[:, None]
    inside = tl.load(inside_ptr + offsets, mask=mask, other=0) != 0
    grad_y = load_f32(grad_y_ptr + offsets, mask, 0.0)
    dz = tl.where(inside, grad_y, 0.0)
    store_rounded(dz_ptr + offsets, dz, mask)
    level = tl.floor(load_f32(y_ptr + offsets, mask, 0.0) * (p / lam) + 0.5)
    g = tl.where(inside, level * (1.0 / p) - z * (1.0 / lam), tl.where(level == p, 1.0, 0.0))
    xc = load_f32(x_ptr + offsets, mask, 0.0) - mean
    column_block = tl.program_id(0) % blocks_per_row
    at = partial_ptr + (row.to(tl.int64) * blocks_per_row + column_block) * 3
    tl.store(at, tl.sum(tl.where(mask, dz, 0.0), axis=1), mask=row < rows)
    tl.store(at + 1, tl.sum(tl.where(mask, dz * xc, 0.0), axis=1), mask=row < rows)
    tl.store(at + 2, tl.sum(tl.where(mask, grad_y * g, 0.0), axis=1), mask=row < rows)


def _geometry(x):
    batch, channels = x.shape[0], x.shape[1]
    inner = x.numel() // (batch * channels)
    rows = batch * channels
    block_r, block_c, blocks_per_row, programs = _launch_geometry(rows, inner)
    return rows, inner, channels, block_r, block_c, blocks_per_row, programs


# ------------------------------------------------------------------------------ the adapter


def forward(x, residual, weight, bias, running_mean, running_var, lam, seed, args):
    layout = reference.memory_format(x)  # computed contiguous, y and the mask restrided to x's layout
    x = x.contiguous()
    residual = residual.to(x.dtype).contiguous() if residual is not None else None
    with torch.no_grad():
        mean, invstd, new_mean, new_var, alpha, beta = reference.statistics(
            x, weight.detach(), bias.detach(), running_mean, running_var, args
        )
        y = torch.empty_like(x)
        inside = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
        if x.numel():
            rows, inner, channels, block_r, block_c, blocks_per_row, programs = _geometry(x)
            lam32 = lam.detach().to(torch.float32).expand(channels).contiguous()
            _forward_kernel[(programs,)](
                x,
                residual if residual is not None else x,
                y,
                inside,
                alpha.contiguous(),
                beta.contiguous(),
                lam32,
                seed,
                rows,
                inner,
                channels,
                blocks_per_row,
                float(args.p),
                args.scale,
                args.shift,
                NOISE=int(args.noise),
                HAS_RESIDUAL=residual is not None,
                WHOLE_BLOCKS=whole_blocks(rows, inner, block_c),
                BLOCK_R=block_r,
                BLOCK_C=block_c,
                num_warps=4,
                **FLOAT_OPTIONS,
            )
        mask = reference.op_mask(inside.bool(), layout is torch.channels_last)
        return y.contiguous(memory_format=layout), mean, invstd, mask, new_mean, new_var


def backward(grad_y, x, residual, y, mask, mean, invstd, weight, bias, lam, args, need_grad_residual):
    layout = reference.memory_format(y)  # the gradients in y's layout (the mask names its own order)
    x = x.contiguous()
    grad_y = grad_y.to(x.dtype).contiguous()
    residual = residual.to(x.dtype).contiguous() if residual is not None else None
    channels = x.shape[1]
    with torch.no_grad():
        weight32 = weight.detach().to(torch.float32)
        alpha = (invstd * weight32).contiguous()
        beta = (bias.detach().to(torch.float32) - mean * alpha).contiguous()
        dz = torch.empty_like(x)
        sums = torch.zeros(channels, 3, dtype=torch.float64, device=x.device)
        if x.numel():
            rows, inner, channels, block_r, block_c, blocks_per_row, programs = _geometry(x)
            partial = torch.empty(rows, blocks_per_row, 3, dtype=torch.float32, device=x.device)
            inside = reference.unpack_op_mask(mask, x.shape).to(torch.uint8).contiguous()
            _backward_kernel[(programs,)](
                grad_y,
                x,
                residual if residual is not None else x,
                y.contiguous(),
                inside,
                dz,
                partial,
                mean.contiguous(),
                alpha,
                beta,
                lam.detach().to(torch.float32).expand(channels).contiguous(),
                rows,
                inner,
                channels,
                blocks_per_row,
                float(args.p),
                HAS_RESIDUAL=residual is not None,
                BLOCK_R=block_r,
                BLOCK_C=block_c,
                num_warps=4,
                **FLOAT_OPTIONS,
            )
            sums = partial.to(torch.float64).reshape(x.shape[0], channels, blocks_per_row, 3).sum(dim=(0, 2))
        n = max(x.numel() // max(channels, 1), 1)
        view = (1, channels) + (1,) * (x.dim() - 2)
        xc = x.to(torch.float32) - mean.reshape(view)
        w_invstd = (invstd * weight32).reshape(view)
        dz32 = dz.to(torch.float32)
        if args.batch_stats:
            mean_dz = (sums[:, 0] / n).to(torch.float32).reshape(view)
            k = (sums[:, 1] / n * invstd.double() * invstd.double()).to(torch.float32).reshape(view)
            grad_x = ((dz32 - mean_dz) - xc * k) * w_invstd
        else:
            grad_x = dz32 * w_invstd
        grad_residual = dz.contiguous(memory_format=layout) if need_grad_residual else x.new_zeros(0)
        grad_weight = (sums[:, 1] * invstd.double()).to(torch.float32)
        return (
            grad_x.to(x.dtype).contiguous(memory_format=layout),
            grad_residual,
            grad_weight,
            sums[:, 0].to(torch.float32),
            sums[:, 2].to(torch.float32),
        )
