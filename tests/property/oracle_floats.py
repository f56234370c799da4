"""Storage dtypes for the oracle: 16-bit and float32 tensors to numpy float32 exactly, float32 back
to a storage dtype with round-to-nearest-even, and bit-for-bit comparison (NaN equal to NaN).

numpy has no bfloat16: a bfloat16 is the high half of a float32, so widening is a 16-bit shift
and narrowing rounds the low half to nearest, ties to even, on the bits.
"""

import numpy as np
import torch

MANTISSA_BITS = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
# smallest positive subnormal of each storage dtype
TINY = {torch.float32: 2.0**-149, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}


def to_f32(t):
    """A float32/float16/bfloat16 tensor (any strides) as a C-ordered numpy float32 array, exactly."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        bits = t.contiguous().view(torch.int16).numpy().astype(np.uint16).astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32)
    if t.dtype == torch.float16:
        return np.ascontiguousarray(t.numpy()).astype(np.float32)
    if t.dtype == torch.float32:
        return np.array(t.numpy(), dtype=np.float32, order="C", copy=True)
    raise TypeError(f"storage dtype expected, got {t.dtype}")


def bf16_bits(f32):
    """float32 array -> uint16 bfloat16 bits, round to nearest even (NaN kept NaN, quiet)."""
    bits = np.asarray(f32, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(np.asarray(f32, dtype=np.float32))
    return np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded).astype(np.uint16)


def round_to(f32, dtype):
    """float32 numpy array -> numpy float32 array holding the value rounded to ``dtype`` (RNE)."""
    f32 = np.asarray(f32, dtype=np.float32)
    if dtype == torch.float32:
        return f32.copy()
    if dtype == torch.float16:
        with np.errstate(over="ignore"):
            return f32.astype(np.float16).astype(np.float32)
    if dtype == torch.bfloat16:
        return (bf16_bits(f32).astype(np.uint32) << np.uint32(16)).view(np.float32)
    raise TypeError(f"storage dtype expected, got {dtype}")


def mismatches(got, want):
    """Where two float32 arrays differ bit for bit; every NaN equals every NaN."""
    got = np.asarray(got, dtype=np.float32)
    want = np.asarray(want, dtype=np.float32)
    both_nan = np.isnan(got) & np.isnan(want)
    return (got.view(np.uint32) != want.view(np.uint32)) & ~both_nan


def assert_bitwise(name, got_tensor, want_f32):
    """``got_tensor`` (any storage dtype, any strides) equals the float32 array ``want_f32`` bit for bit."""
    got = to_f32(got_tensor)
    want = np.asarray(want_f32, dtype=np.float32)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    bad = mismatches(got, want)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        rows = ", ".join(f"{tuple(int(v) for v in i)}: got {got[tuple(i)]!r} want {want[tuple(i)]!r}" for i in idx)
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.size} elements differ bit for bit ({rows})")
