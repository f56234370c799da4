"""The C++ kernels' float16/bfloat16 conversions against torch's, exhaustively where possible."""

import pytest
import torch

from na_kernels import _spec, cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason=f"C++ extension not built: {cpu.load_error()}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_value_to_float(dtype):
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    out = torch.empty(values.shape, dtype=torch.float32)
    cpu.extension().convert_to_float(
        dtype=cpu.code(_spec.DType.of(dtype)), src=values.data_ptr(), dst=out.data_ptr(), count=values.numel()
    )
    expected = values.to(torch.float32)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(out), nan)
    assert torch.equal(out[~nan].view(torch.int32), expected[~nan].view(torch.int32))  # bitwise, -0.0 included


def float_samples():
    generator = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-(2**31), 2**31, (2_000_000,), generator=generator, dtype=torch.int64).to(torch.int32)
    # every float near the float16 range edges and rounding ties: consecutive bit patterns
    edges = [0x33000000, 0x33800000, 0x38800000, 0x387FF000, 0x477FE000, 0x477FF000, 0x47800000, 0x7F800000, 0x3F800000]
    neighbourhoods = [torch.arange(e - 4096, e + 4096, dtype=torch.int64).to(torch.int32) for e in edges]
    # every float16 value and the midpoints between neighbours (the ties)
    halves = torch.arange(0, 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    finite = halves[torch.isfinite(halves)]
    ties = (finite[:-1].double() + finite[1:].double()) / 2
    bits = torch.cat([random_bits, *neighbourhoods, finite.view(torch.int32), ties.float().view(torch.int32)])
    return torch.cat([bits, bits | torch.tensor(-(2**31), dtype=torch.int32)]).view(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float_to_16_bit_rounds_like_torch(dtype):
    values = float_samples()
    out = torch.empty(values.shape, dtype=dtype)
    cpu.extension().convert_from_float(
        dtype=cpu.code(_spec.DType.of(dtype)), src=values.data_ptr(), dst=out.data_ptr(), count=values.numel()
    )
    expected = values.to(dtype)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(out), nan)
    assert torch.equal(out[~nan].view(torch.int16), expected[~nan].view(torch.int16))
