"""Philox4x32-10 in plain PyTorch: the noise stream of every backend.

It reproduces Triton's (3.x) ``tl.randint4x``, ``tl.rand4x`` and ``tl.randn4x`` for int64
offsets: counter ``(lo32(offset), hi32(offset), 0, 0)``, key ``(lo32(seed), hi32(seed))``, ten
rounds, then each of the four words mapped to float32 (``rand4x``), and Box-Muller on the pairs
(u1, u2) and (u3, u4) (``randn4x``). The noise of flat element ``i`` is output ``i % 4`` of the
block for counter ``i // 4`` (``element_noise``, ``noise_range``).
uint32 arithmetic is emulated in int64 tensors so it runs on any device.
"""

import torch

from .._spec import Noise

MASK32 = 0xFFFFFFFF
KEY_A = 0x9E3779B9
KEY_B = 0xBB67AE85
ROUND_A = 0xD2511F53
ROUND_B = 0xCD9E8D57
ROUNDS = 10
# Triton's uint_to_uniform_float scale: the largest float32 with (2**31 - 1) * scale < 1
UNIFORM_SCALE = 4.6566127342e-10


def _mul_hi_lo(a, constant):
    """(hi32, lo32) of the 64-bit product of uint32 tensor ``a`` and a uint32 constant.

    The constant is split in 16-bit halves so no intermediate leaves int64's range.
    """
    c_hi, c_lo = constant >> 16, constant & 0xFFFF
    p_lo = a * c_lo  # < 2**48
    p_hi = a * c_hi  # < 2**48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    return hi & MASK32, lo


def philox4x32(seed, counter_lo, counter_hi, rounds=ROUNDS):
    """Four uint32 words (as int64 tensors) for each counter ``(counter_lo, counter_hi, 0, 0)``.

    ``seed``: int64 tensor with one element (or a Python int); the key is its 64 bits.
    """
    seed = torch.as_tensor(seed, dtype=torch.int64, device=counter_lo.device).reshape(())
    k0 = seed & MASK32
    k1 = (seed >> 32) & MASK32
    c0, c1 = counter_lo, counter_hi
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(c2, ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + KEY_A) & MASK32
        k1 = (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3


def _uint_to_uniform_float(word):
    signed = torch.where(word >= 2**31, word - 2**32, word)
    non_negative = torch.where(signed < 0, -signed - 1, signed)
    return non_negative.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=word.device)


def _counters(offsets):
    offsets = offsets.to(torch.int64)
    return offsets & MASK32, (offsets >> 32) & MASK32


def randint4x(seed, offsets):
    """``tl.randint4x(seed, offsets)``: the four Philox words (uint32 values in int64 tensors)."""
    return philox4x32(seed, *_counters(offsets))


def rand4x(seed, offsets):
    """``tl.rand4x(seed, offsets)``: four float32 tensors in [0, 1), one value each per int64 offset."""
    return tuple(_uint_to_uniform_float(w) for w in randint4x(seed, offsets))


def _box_muller(u1, u2):
    """Triton's ``pair_uniform_to_normal`` in float32, with log, cos and sin evaluated in float64
    and rounded once, so the result does not depend on a float32 math library (the C++ kernel does
    the same and agrees bit for bit; Triton's own float32 log/cos/sin differ by at most a few ulp)."""
    f32 = dict(dtype=torch.float32, device=u1.device)
    u1 = torch.clamp_min(u1, torch.tensor(1.0e-7, **f32))
    theta = torch.tensor(6.283185307179586, **f32) * u2
    log_u1 = torch.log(u1.to(torch.float64)).to(torch.float32)
    # float32 sqrt, correctly rounded: through float64, since torch's float32 sqrt on CPU is not
    # always (its AVX-512 kernel is within 0.5001 ulp: 0.6 % of these results differ by one ulp)
    radius = torch.sqrt((torch.tensor(-2.0, **f32) * log_u1).to(torch.float64)).to(torch.float32)
    theta64 = theta.to(torch.float64)
    return radius * torch.cos(theta64).to(torch.float32), radius * torch.sin(theta64).to(torch.float32)


def randn4x(seed, offsets):
    """``tl.randn4x(seed, offsets)``: four float32 N(0, 1) tensors, in Triton's order
    (r12 cos θ12, r12 sin θ12, r34 cos θ34, r34 sin θ34)."""
    u1, u2, u3, u4 = rand4x(seed, offsets)
    n0, n1 = _box_muller(u1, u2)
    n2, n3 = _box_muller(u3, u4)
    return n0, n1, n2, n3


def _noise_blocks(kind):
    """(Noise, the block function) for a noise kind (a Noise or its label), NONE refused."""
    kind = Noise.parse("kind", kind)
    if kind is Noise.NONE:
        raise ValueError(f"kind must be 'uniform' or 'gaussian', got {kind.label!r}")
    return kind, rand4x if kind is Noise.UNIFORM else randn4x


def _finish(kind, values):
    # float32 - 0.5, one rounding (the scalar is exact in float32)
    return values - 0.5 if kind is Noise.UNIFORM else values


def element_noise(seed, indices, kind):
    """eps of each flat element index (any int64 tensor, any order): output ``i % 4`` of the block
    for counter ``i // 4``; ``U(-0.5, 0.5)`` as ``rand4x - 0.5`` or ``N(0, 1)`` as ``randn4x``."""
    kind, blocks = _noise_blocks(kind)
    indices = torch.as_tensor(indices).to(torch.int64)
    words = torch.stack(blocks(seed, indices >> 2), dim=-1)
    values = torch.gather(words, -1, (indices & 3).unsqueeze(-1)).squeeze(-1)
    return _finish(kind, values)


def noise_range(seed, first, count, kind, device="cpu"):
    """eps for the element indices ``first .. first + count - 1`` (float32 [count]): each block
    computed once; the same values as ``element_noise`` on those indices."""
    kind, blocks = _noise_blocks(kind)
    first, count = int(first), int(count)
    if count == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    block_first = first // 4
    block_last = (first + count - 1) // 4
    counters = torch.arange(block_first, block_last + 1, dtype=torch.int64, device=device)
    values = torch.stack(blocks(seed, counters), dim=-1).reshape(-1)
    start = first - 4 * block_first
    return _finish(kind, values[start : start + count])
