"""Triton kernels for noisy_quant: forward, and the straight-through backward with the
per-block partial sums of grad_lam. Same arithmetic, in the same order, as
``na_kernels/reference/noisy_quant.py``; the noise is ``tl.rand``/``tl.randn`` of
(seed, flat index), regenerated in backward instead of stored.

x is viewed as rows of ``inner`` elements: row r belongs to channel ``r % channels``
(a per-channel lam along dim 1; one row and one channel for a scalar lam). Each program
handles BLOCK elements of one row, so the channel is a per-program scalar and the
grad_lam partial sums never straddle two channels.
"""
import torch
import triton
import triton.language as tl

NO_NOISE, UNIFORM, GAUSSIAN = 0, 1, 2


@triton.jit
def _block_offsets(inner, blocks_per_row, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    row = pid // blocks_per_row
    col = (pid % blocks_per_row).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return row, row.to(tl.int64) * inner + col, col < inner


@triton.jit
def _shifted_z(x, inv_step, seed_ptr, offsets, scale, shift, NOISE: tl.constexpr):
    z = x * inv_step
    if NOISE == 1:
        z = z + scale * (tl.rand(tl.load(seed_ptr), offsets) - 0.5)
    elif NOISE == 2:
        z = z + scale * tl.randn(tl.load(seed_ptr), offsets)
    return z + shift


@triton.jit
def _noisy_quant_forward_kernel(
    x_ptr, y_ptr, lam_ptr, seed_ptr, inner, channels, blocks_per_row, p, scale, shift,
    NOISE: tl.constexpr, BLOCK: tl.constexpr,
):
    row, offsets, mask = _block_offsets(inner, blocks_per_row, BLOCK)
    lam = tl.load(lam_ptr + row % channels)
    inv_step = tl.div_rn(p, lam)
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    q_raw = tl.floor(_shifted_z(x, inv_step, seed_ptr, offsets, scale, shift, NOISE))
    q = tl.where(q_raw < 0.0, 0.0, tl.where(q_raw > p, p, q_raw))  # NaN stays NaN
    y = tl.div_rn(q, p) * lam
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _noisy_quant_backward_kernel(
    grad_y_ptr, x_ptr, grad_x_ptr, partial_ptr, lam_ptr, seed_ptr, inner, channels, blocks_per_row,
    p, scale, shift, NOISE: tl.constexpr, NEED_GRAD_LAM: tl.constexpr, BLOCK: tl.constexpr,
):
    row, offsets, mask = _block_offsets(inner, blocks_per_row, BLOCK)
    lam = tl.load(lam_ptr + row % channels)
    inv_step = tl.div_rn(p, lam)
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    grad_y = tl.load(grad_y_ptr + offsets, mask=mask).to(tl.float32)
    q_raw = tl.floor(_shifted_z(x, inv_step, seed_ptr, offsets, scale, shift, NOISE))
    inside = (q_raw >= 0.0) & (q_raw <= p)
    tl.store(grad_x_ptr + offsets, tl.where(inside, grad_y, 0.0).to(grad_x_ptr.dtype.element_ty), mask=mask)
    if NEED_GRAD_LAM:
        g = tl.where(inside, tl.div_rn(q_raw, p) - tl.div_rn(x, lam), tl.where(q_raw > p, 1.0, 0.0))
        contribution = tl.where(mask, grad_y * g, 0.0)
        tl.store(partial_ptr + tl.program_id(0), tl.sum(contribution, axis=0))


def _launch_geometry(numel, inner):
    block = min(1024, triton.next_power_of_2(max(inner, 16)))
    blocks_per_row = triton.cdiv(inner, block)
    rows = numel // inner
    return block, blocks_per_row, rows * blocks_per_row


def noisy_quant_forward(x, lam, seed, p, noise_kind, scale, shift, inner):
    """y for contiguous x viewed as rows of ``inner`` elements; lam: float32 [channels]."""
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    block, blocks_per_row, programs = _launch_geometry(x.numel(), inner)
    _noisy_quant_forward_kernel[(programs,)](
        x, y, lam, seed, inner, lam.numel(), blocks_per_row, float(p), scale, shift,
        NOISE=noise_kind, BLOCK=block, num_warps=4, enable_fp_fusion=False,
    )
    return y


def noisy_quant_backward(grad_y, x, lam, seed, p, noise_kind, scale, shift, inner, need_grad_lam):
    """(grad_x, per-program partial sums of grad_lam [programs] float32, or None)."""
    grad_x = torch.empty_like(x)
    if x.numel() == 0:
        return grad_x, (x.new_zeros(0, dtype=torch.float32) if need_grad_lam else None)
    block, blocks_per_row, programs = _launch_geometry(x.numel(), inner)
    partial = torch.empty(programs if need_grad_lam else 1, dtype=torch.float32, device=x.device)
    _noisy_quant_backward_kernel[(programs,)](
        grad_y, x, grad_x, partial, lam, seed, inner, lam.numel(), blocks_per_row, float(p), scale, shift,
        NOISE=noise_kind, NEED_GRAD_LAM=need_grad_lam, BLOCK=block, num_warps=4, enable_fp_fusion=False,
    )
    return grad_x, (partial if need_grad_lam else None)
