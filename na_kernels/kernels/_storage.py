"""Loads and stores of the kernels' storage dtypes with the C++ kernels' rounding, written out.

float32 and float16 convert with ``.to`` (exact widening, round-to-nearest-even narrowing on a GPU
and in the interpreter alike). bfloat16 is converted here with integer operations on the float32
bits, as ``csrc/common/float_convert.h`` does: widening is ``bits << 16`` (exact, subnormals
kept), narrowing rounds to nearest even (``bits + 0x7fff + lsb >> 16``) and writes NaN as the
quiet NaN 0x7fc0. Compiled for a GPU, ``.to`` would do the same (``cvt.f32.bf16`` and
``cvt.rn.bf16.f32``, NaN aside); Triton's interpreter (3.9) truncates fp32 -> bf16 instead and
flushes or garbles subnormal bf16 inputs, so without this the interpreter tests would not see what
the GPU computes. A handful of integer operations per element in memory-bound kernels.
"""

import triton
import triton.language as tl

# Every launch: no FMA contraction (each operation rounds as in the reference) and libdevice
# without flush-to-zero (Triton's default compiles tl.floor to cvt.rmi.ftz.f32, which floors a
# negative subnormal to -0 instead of -1, unlike the C++ kernels and the interpreter).
FLOAT_OPTIONS = {"enable_fp_fusion": False, "enable_reflect_ftz": False}


@triton.jit
def load_f32(ptr, mask, other):
    """ptr's elements as float32 (``other`` where ``mask`` is False)."""
    if ptr.dtype.element_ty == tl.bfloat16:
        raw = tl.load(ptr, mask=mask, other=other).to(tl.uint16, bitcast=True)
        return (raw.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptr, mask=mask, other=other).to(tl.float32)


@triton.jit
def store_rounded(ptr, value, mask):
    """float32 ``value`` rounded to nearest even into ptr's dtype."""
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, rounded)  # NaN: quiet NaN
        tl.store(ptr, rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)
