"""Philox4x32-10 in plain PyTorch: the noise stream of every backend.

It reproduces ``tl.rand(seed, i)`` and ``tl.randn(seed, i)`` of Triton (3.x) for int64
offsets ``i``: counter ``(lo32(i), hi32(i), 0, 0)``, key ``(lo32(seed), hi32(seed))``,
ten rounds, then the first word (and the second, for randn's Box-Muller) mapped to
float32. uint32 arithmetic is emulated in int64 tensors so it runs on any device.
"""
import torch

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
    return non_negative.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def _counters(offsets):
    offsets = offsets.to(torch.int64)
    return offsets & MASK32, (offsets >> 32) & MASK32


def uniform(seed, offsets):
    """``tl.rand(seed, offsets)``: float32 in [0, 1), one per int64 offset."""
    c0, _, _, _ = philox4x32(seed, *_counters(offsets))
    return _uint_to_uniform_float(c0)


def normal(seed, offsets):
    """``tl.randn(seed, offsets)``: float32 N(0, 1) by Box-Muller on the first two words."""
    c0, c1, _, _ = philox4x32(seed, *_counters(offsets))
    u1 = torch.clamp_min(_uint_to_uniform_float(c0), 1.0e-7)
    u2 = _uint_to_uniform_float(c1)
    theta = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    # log and cos are evaluated in float64 and rounded once, so the result does not depend on
    # the float32 math library (the C++ kernel does the same and agrees bit for bit);
    # Triton's own log/cos differ from these by at most a few ulp.
    log_u1 = torch.log(u1.to(torch.float64)).to(torch.float32)
    # float32 sqrt, correctly rounded: through float64, since torch's float32 sqrt on CPU is not
    # always (its AVX-512 kernel is within 0.5001 ulp: 0.6 % of these results differ by one ulp)
    radius = torch.sqrt((torch.tensor(-2.0, dtype=torch.float32) * log_u1).to(torch.float64)).to(torch.float32)
    return radius * torch.cos(theta.to(torch.float64)).to(torch.float32)
