"""Triton kernels for noisy_quant: forward, and the straight-through backward with the
per-block partial sums of grad_lam. Same arithmetic, in the same order, as
``na_kernels/ops/noisy_quant/reference.py``; the noise of flat element ``i`` is output ``i % 4`` of
``tl.rand4x``/``tl.randn4x`` for counter ``i // 4``, regenerated in backward instead of stored.

x is viewed as a [rows, channel_stride] matrix: row r belongs to channel ``r % channels`` (a
per-channel lam along dim 1; one row and one channel for a scalar lam; see ``na_kernels._layout``). Each program
handles a [BLOCK_R, BLOCK_C] tile: whole short rows (a per-channel lam after a Linear layer
or on a 4x4 feature map) or a slice of one long row. Backward writes one grad_lam partial
sum per (row, column block), so a sum never straddles two channels and the final reduction
is deterministic.

The noise: where every tile row starts at a multiple of 4 (``channel_stride % 4 == 0``, or a
single row) and BLOCK_C >= 4, a tile's elements are whole Philox blocks: the program runs one
block per four elements on a [BLOCK_R, BLOCK_C // 4] tile of counters and interleaves the four
outputs (``WHOLE_BLOCKS``). Otherwise (e.g. per-channel lam on 7x7 maps, 49 elements a row) a row
may start inside a block, and each element runs the block of its own counter ``i // 4`` and keeps
word ``i % 4``: exact, at four times the generator's work on those shapes.

``forward`` and ``backward`` at the end are this backend's adapter (the interface of
``na_kernels.ops.noisy_quant``).
"""

import torch
import triton
import triton.language as tl

from ..._layout import flat_channels
from ..._spec import Noise
from ...kernels._storage import FLOAT_OPTIONS, load_f32, store_rounded

_NONE = tl.constexpr(Noise.NONE.value)
_UNIFORM = tl.constexpr(Noise.UNIFORM.value)
_GAUSSIAN = tl.constexpr(Noise.GAUSSIAN.value)


@triton.jit
def _tile(rows, channel_stride, channels, blocks_per_row, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(row indices [BLOCK_R], first column, flat offsets [BLOCK_R, BLOCK_C], mask, channel of each row)."""
    pid = tl.program_id(0)
    row = (pid // blocks_per_row) * BLOCK_R + tl.arange(0, BLOCK_R)
    col_start = (pid % blocks_per_row).to(tl.int64) * BLOCK_C
    col = col_start + tl.arange(0, BLOCK_C)
    offsets = row.to(tl.int64)[:, None] * channel_stride + col[None, :]
    mask = (row < rows)[:, None] & (col < channel_stride)[None, :]
    return row, col_start, offsets, mask, row % channels


@triton.jit
def _box_muller(u1, u2):
    """Triton's pair_uniform_to_normal (tl.randn4x), the same float32 operations in the same order."""
    u1 = tl.maximum(1.0e-7, u1)
    theta = 6.283185307179586 * u2
    radius = tl.sqrt(-2.0 * tl.log(u1))
    return radius * tl.cos(theta), radius * tl.sin(theta)


@triton.jit
def _interleave(w0, w1, w2, w3, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """[BLOCK_R, BLOCK_C // 4] x 4 -> [BLOCK_R, BLOCK_C] with column 4k + j = w_j[:, k]."""
    pairs = tl.join(tl.join(w0, w2), tl.join(w1, w3))  # [..., k, 2, 2]: [a, b] = w_(2a + b)
    return tl.reshape(pairs, (BLOCK_R, BLOCK_C))


@triton.jit
def _noise(
    seed_ptr,
    row,
    col_start,
    offsets,
    channel_stride,
    NOISE: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """eps [BLOCK_R, BLOCK_C] of the tile: output offsets % 4 of the Philox block for counter offsets // 4."""
    seed = tl.load(seed_ptr)
    if WHOLE_BLOCKS:
        # every tile row starts at a multiple of 4: one block per four consecutive columns
        first = (row.to(tl.int64) * channel_stride + col_start) >> 2
        counters = first[:, None] + tl.arange(0, BLOCK_C // 4)[None, :]
        u0, u1, u2, u3 = tl.rand4x(seed, counters)
        if NOISE == _GAUSSIAN:
            n0, n1 = _box_muller(u0, u1)
            n2, n3 = _box_muller(u2, u3)
            eps = _interleave(n0, n1, n2, n3, BLOCK_R, BLOCK_C)
        else:
            eps = _interleave(u0, u1, u2, u3, BLOCK_R, BLOCK_C) - 0.5
    else:
        # a row may start inside a block: each element runs its own block and keeps word i % 4
        u0, u1, u2, u3 = tl.rand4x(seed, offsets >> 2)
        word = offsets & 3
        if NOISE == _GAUSSIAN:
            first_pair = word < 2
            cos_part, sin_part = _box_muller(tl.where(first_pair, u0, u2), tl.where(first_pair, u1, u3))
            eps = tl.where((word & 1) == 0, cos_part, sin_part)
        else:
            eps = tl.where(word == 0, u0, tl.where(word == 1, u1, tl.where(word == 2, u2, u3))) - 0.5
    return eps


@triton.jit
def _shifted_z(
    x,
    p,
    lam,
    seed_ptr,
    row,
    col_start,
    offsets,
    channel_stride,
    scale,
    shift,
    NOISE: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    z = tl.div_rn(x * p, lam)  # (x * p) / lam, not x * (p / lam): exact ties stay exact
    if NOISE != _NONE:
        z = z + scale * _noise(seed_ptr, row, col_start, offsets, channel_stride, NOISE, WHOLE_BLOCKS, BLOCK_R, BLOCK_C)
    return z + shift


@triton.jit
def _quantize_tile(
    x_ptr,
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
    WHOLE_BLOCKS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """This program's tile: (rows, offsets, mask, lam [BLOCK_R, 1], x float32, q_raw = floor(z + shift))."""
    row, col_start, offsets, mask, channel = _tile(rows, channel_stride, channels, blocks_per_row, BLOCK_R, BLOCK_C)
    lam = tl.load(lam_ptr + channel, mask=row < rows, other=1.0)[:, None]
    x = load_f32(x_ptr + offsets, mask, 0.0)
    q_raw = tl.floor(
        _shifted_z(
            x,
            p,
            lam,
            seed_ptr,
            row,
            col_start,
            offsets,
            channel_stride,
            scale,
            shift,
            NOISE,
            WHOLE_BLOCKS,
            BLOCK_R,
            BLOCK_C,
        )
    )
    return row, offsets, mask, lam, x, q_raw


@triton.jit
def clamp_level(q_raw, p):
    """q = clamp(q_raw, 0, p); a NaN q_raw stays NaN."""
    return tl.where(q_raw < 0.0, 0.0, tl.where(q_raw > p, p, q_raw))


@triton.jit
def _noisy_quant_forward_kernel(
    x_ptr,
    y_ptr,
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
    WHOLE_BLOCKS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row, offsets, mask, lam, x, q_raw = _quantize_tile(
        x_ptr,
        lam_ptr,
        seed_ptr,
        rows,
        channel_stride,
        channels,
        blocks_per_row,
        p,
        scale,
        shift,
        NOISE,
        WHOLE_BLOCKS,
        BLOCK_R,
        BLOCK_C,
    )
    q = clamp_level(q_raw, p)
    y = tl.div_rn(q, p) * lam
    store_rounded(y_ptr + offsets, y, mask)


@triton.jit
def _noisy_quant_backward_kernel(
    grad_y_ptr,
    x_ptr,
    grad_x_ptr,
    partial_ptr,
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
    NEED_GRAD_LAM: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row, offsets, mask, lam, x, q_raw = _quantize_tile(
        x_ptr,
        lam_ptr,
        seed_ptr,
        rows,
        channel_stride,
        channels,
        blocks_per_row,
        p,
        scale,
        shift,
        NOISE,
        WHOLE_BLOCKS,
        BLOCK_R,
        BLOCK_C,
    )
    grad_y = load_f32(grad_y_ptr + offsets, mask, 0.0)
    inside = (q_raw >= 0.0) & (q_raw <= p)
    store_rounded(grad_x_ptr + offsets, tl.where(inside, grad_y, 0.0), mask)
    if NEED_GRAD_LAM:
        g = tl.where(inside, tl.div_rn(q_raw, p) - tl.div_rn(x, lam), tl.where(q_raw > p, 1.0, 0.0))
        row_sums = tl.sum(tl.where(mask, grad_y * g, 0.0), axis=1)
        column_block = tl.program_id(0) % blocks_per_row
        tl.store(partial_ptr + row.to(tl.int64) * blocks_per_row + column_block, row_sums, mask=row < rows)


TILE = 1024  # elements per program


def _launch_geometry(rows, channel_stride):
    """(BLOCK_R, BLOCK_C, blocks per row, programs) for a [rows, channel_stride] view."""
    block_c = min(TILE, triton.next_power_of_2(channel_stride))
    block_r = min(TILE // block_c, triton.next_power_of_2(rows))
    blocks_per_row = triton.cdiv(channel_stride, block_c)
    return block_r, block_c, blocks_per_row, triton.cdiv(rows, block_r) * blocks_per_row


def whole_blocks(rows, channel_stride, block_c):
    """True when every tile row starts at a multiple of 4 and holds whole Philox blocks (the fast path)."""
    return block_c >= 4 and (channel_stride % 4 == 0 or rows == 1)


def noisy_quant_forward(x, lam, seed, p, noise, scale, shift, channel_stride):
    """y for contiguous x viewed as rows of ``channel_stride`` elements; lam: float32 [channels]."""
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    rows = x.numel() // channel_stride
    block_r, block_c, blocks_per_row, programs = _launch_geometry(rows, channel_stride)
    _noisy_quant_forward_kernel[(programs,)](
        x,
        y,
        lam,
        seed,
        rows,
        channel_stride,
        lam.numel(),
        blocks_per_row,
        float(p),
        scale,
        shift,
        NOISE=int(noise),
        WHOLE_BLOCKS=whole_blocks(rows, channel_stride, block_c),
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        num_warps=4,
        **FLOAT_OPTIONS,
    )
    return y


def noisy_quant_backward(grad_y, x, lam, seed, p, noise, scale, shift, channel_stride, need_grad_lam):
    """(grad_x, grad_lam partial sums [rows, blocks per row] float32; None when not needed or empty)."""
    grad_x = torch.empty_like(x)
    if x.numel() == 0:
        return grad_x, None
    rows = x.numel() // channel_stride
    block_r, block_c, blocks_per_row, programs = _launch_geometry(rows, channel_stride)
    partial = torch.empty((rows, blocks_per_row) if need_grad_lam else (1, 1), dtype=torch.float32, device=x.device)
    _noisy_quant_backward_kernel[(programs,)](
        grad_y,
        x,
        grad_x,
        partial,
        lam,
        seed,
        rows,
        channel_stride,
        lam.numel(),
        blocks_per_row,
        float(p),
        scale,
        shift,
        NOISE=int(noise),
        NEED_GRAD_LAM=need_grad_lam,
        WHOLE_BLOCKS=whole_blocks(rows, channel_stride, block_c),
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        num_warps=4,
        **FLOAT_OPTIONS,
    )
    return grad_x, (partial if need_grad_lam else None)


# ------------------------------------------------------------------------------ the adapter


def forward(x, lam, seed, args):
    x, lam32, channel_stride, _ = flat_channels(x, lam)
    return noisy_quant_forward(x, lam32, seed, args.p, args.noise, args.scale, args.shift, channel_stride)


def backward(grad_y, x, lam, seed, args, need_grad_lam):
    x, lam32, channel_stride, channels = flat_channels(x, lam)
    grad_x, partial = noisy_quant_backward(
        grad_y.contiguous(), x, lam32, seed, args.p, args.noise, args.scale, args.shift, channel_stride, need_grad_lam
    )
    if not need_grad_lam:
        return grad_x, x.new_zeros(0, dtype=torch.float32)
    if x.numel() == 0:
        return grad_x, x.new_zeros(channels, dtype=torch.float32)
    # partial sums [rows = outer * channels, blocks per row] -> per channel, in float64
    grad_lam = partial.to(torch.float64).reshape(-1, channels, partial.shape[1]).sum(dim=(0, 2))
    return grad_x, grad_lam.to(torch.float32)
