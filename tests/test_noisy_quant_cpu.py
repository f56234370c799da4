"""The C++ noisy_quant kernels where the four-values-per-block noise meets their own structure:
channel runs starting and ending at every position in a Philox block and in a vector (the
AVX-512 kernel's 128/32-element noise steps, the AVX2 kernel's 64-element steps and staged
partial vectors), and the vector float64 log/sin/cos of the gaussian noise on a long stream."""

import pytest
import torch
from conftest import requires_cpp
from test_noisy_quant import assert_matches_reference, make_input, make_lam, poisoned_allocations  # noqa: F401

from na_kernels import cpu
from na_kernels._spec import Noise
from na_kernels.reference import philox


@requires_cpp
@pytest.mark.usefixtures("poisoned_allocations")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
@pytest.mark.parametrize("row", [64, 65, 66, 67, 127, 129, 130, 131, 193, 259])
def test_channel_runs_at_every_block_phase(row, noise, dtype, simd_level):
    # rows of `row` elements: run r starts at r * row, so every phase mod 4 (and mod 8, 16)
    x = make_input((2, 3, row), dtype)
    assert_matches_reference("cpu", x, 7, make_lam("per_channel", x), noise, seed=12345)


@requires_cpp
@pytest.mark.usefixtures("poisoned_allocations")
@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
@pytest.mark.parametrize("numel", [1, 3, 4, 5, 63, 64, 65, 127, 128, 129, 2**14 + 1, 3 * 2**14 - 5])
def test_scalar_lam_lengths(numel, noise, simd_level):
    x = make_input((numel,), torch.float32)
    assert_matches_reference("cpu", x, 3, make_lam("scalar", x), noise, seed=-77)


@requires_cpp
@pytest.mark.parametrize("first", [0, 1, 2, 3, 2**32 - 130])
def test_gaussian_stream_long(first, simd_level):
    # 2^21 values: the vector log/sin/cos must round to the reference's float32 everywhere
    count = 2**21 + 3
    seed = 2024
    got = torch.frombuffer(
        cpu.extension().noise_fill(
            seed=seed, first=first, count=count, noise=int(Noise.parse("noise", "gaussian")), scale=1.0
        ),
        dtype=torch.float32,
    )
    ref = philox.noise_range(torch.tensor(seed), first, count, "gaussian")
    assert torch.equal(got, ref), f"{(got != ref).sum()} of {count} differ"
