"""Philox4x32-10, the noise stream of every backend: the reference against the known answer, the
C++ generator and Triton's tl.rand / tl.randn against the reference, and the noise statistics."""
import math

import numpy as np
import pytest
import torch

from na_kernels import cpu
from na_kernels._spec import Noise
from na_kernels.reference import philox

from conftest import TRITON_DEVICE, requires_cpp, requires_triton


def test_reference_philox_matches_known_answer():
    # Philox4x32-10 known-answer vector (Random123: counter 0, key 0)
    words = philox.philox4x32(torch.tensor(0), torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@requires_cpp
@pytest.mark.parametrize("first", [0, 5, 2**31 - 7, 2**32 - 21, 3 * 2**32 + 1])
@pytest.mark.parametrize("seed", [0, 987654321, -3, 2**62 + 17])
def test_cpp_philox_matches_reference(first, seed, simd_level):
    count = 1003  # not a multiple of the vector width
    w0 = torch.empty(count, dtype=torch.int32)
    w1 = torch.empty(count, dtype=torch.int32)
    cpu.extension().philox_fill(seed=seed & (2**64 - 1), first=first, count=count, w0=w0.data_ptr(), w1=w1.data_ptr())
    offsets = torch.arange(first, first + count, dtype=torch.int64)
    ref = philox.philox4x32(torch.tensor(seed), offsets & 0xFFFFFFFF, offsets >> 32)
    assert torch.equal(w0.to(torch.int64) & 0xFFFFFFFF, ref[0])
    assert torch.equal(w1.to(torch.int64) & 0xFFFFFFFF, ref[1])


@requires_cpp
@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
@pytest.mark.parametrize("first, seed", [(0, 3), (2**32 - 1000, -9), (5 * 2**32 + 7, 2**50 + 1)])
def test_cpp_noise_matches_reference(kind, first, seed, simd_level):
    # the noise itself, not only outputs it moves across a rounding step: bit for bit, gaussian
    # included (its float64 log and cos round to the same float32 as torch's)
    count = 2**17 + 21
    got = torch.empty(count, dtype=torch.float32)
    cpu.extension().noise_fill(seed=seed & (2**64 - 1), first=first, count=count,
                               noise=Noise.parse("noise", kind), scale=1.0, out=got.data_ptr())
    offsets = torch.arange(first, first + count, dtype=torch.int64)
    ref = philox.uniform(torch.tensor(seed), offsets) - 0.5 if kind == "uniform" else philox.normal(torch.tensor(seed), offsets)
    assert torch.equal(got, ref), f"{(got != ref).sum()} of {count} differ"


@requires_triton
@pytest.mark.parametrize("first", [0, 2**32 - 100, 7 * 2**32 + 3])
@pytest.mark.parametrize("seed", [0, 12345, -5, 2**40 + 7])
def test_triton_rand_matches_reference(first, seed):
    import triton
    import triton.language as tl

    @triton.jit
    def noise_kernel(seed_ptr, uniform_ptr, normal_ptr, first, count, BLOCK: tl.constexpr):
        index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = index < count
        offsets = index + first
        seed = tl.load(seed_ptr)
        tl.store(uniform_ptr + index, tl.rand(seed, offsets), mask=mask)
        tl.store(normal_ptr + index, tl.randn(seed, offsets), mask=mask)

    count = 777
    seed_t = torch.tensor([seed], dtype=torch.int64, device=TRITON_DEVICE)
    uniform = torch.empty(count, device=TRITON_DEVICE)
    normal = torch.empty(count, device=TRITON_DEVICE)
    noise_kernel[(triton.cdiv(count, 256),)](seed_t, uniform, normal, torch.tensor(first).item(), count, BLOCK=256)
    offsets = torch.arange(first, first + count, dtype=torch.int64)
    assert torch.equal(uniform.cpu(), philox.uniform(torch.tensor(seed), offsets))
    ref_normal = philox.normal(torch.tensor(seed), offsets)
    # Triton's float32 log/cos against the reference's once-rounded float64 ones: a few ulp
    magnitude = ref_normal.abs()
    ulp = torch.nextafter(magnitude, torch.tensor(float("inf"))) - magnitude
    assert ((normal.cpu() - ref_normal).abs() <= 4 * ulp).all()


def test_uniform_noise_statistics():
    u = philox.uniform(torch.tensor(2024), torch.arange(400_000))
    assert u.min() >= 0 and u.max() < 1
    eps = u.double() - 0.5
    assert abs(eps.mean().item()) < 4 * math.sqrt(1 / 12 / eps.numel())
    assert abs(eps.var().item() - 1 / 12) < 0.002
    counts = torch.histc(u, bins=20, min=0, max=1)
    expected = u.numel() / 20
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 45.3  # 19 degrees of freedom, p = 0.999
    # neighbouring offsets are uncorrelated
    assert abs(np.corrcoef(eps[:-1].numpy(), eps[1:].numpy())[0, 1]) < 0.01


def test_gaussian_noise_statistics():
    n = philox.normal(torch.tensor(7), torch.arange(400_000)).double()
    assert abs(n.mean().item()) < 4 / math.sqrt(n.numel())
    assert abs(n.var().item() - 1.0) < 0.01
    assert abs((n.abs() < 1).double().mean().item() - 0.6827) < 0.005
