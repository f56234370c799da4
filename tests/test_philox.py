"""Philox4x32-10, the noise stream of every backend: four noise values per block (element i takes
output i % 4 of the block for counter i // 4). The reference against the known answer and against an
independent plain-integer / float64 computation, the C++ generator and Triton's tl.rand4x /
tl.randn4x against the reference, and the noise statistics."""

import math

import numpy as np
import pytest
import torch
from conftest import TRITON_DEVICE, requires_cpp, requires_triton

from na_kernels import cpu
from na_kernels._spec import Noise
from na_kernels.reference import philox

M32 = 2**32 - 1
SEEDS = [0, 987654321, -3, 2**62 + 17, 2**63 - 1]
# block counters across 2^31 and 2^32 (and far beyond): their words go to element indices 4 * counter
COUNTERS = [0, 5, 2**31 - 7, 2**32 - 21, 3 * 2**32 + 1, 2**61 + 3]


def plain_philox(seed, counter):
    """Philox4x32-10 on Python ints: the four words for counter (lo, hi, 0, 0), key (lo, hi) of seed."""
    seed &= 2**64 - 1
    c = [counter & M32, (counter >> 32) & M32, 0, 0]
    k = [seed & M32, seed >> 32]
    for _ in range(10):
        p0, p2 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p2 >> 32) ^ c[1] ^ k[0], p2 & M32, (p0 >> 32) ^ c[3] ^ k[1], p0 & M32]
        k = [(k[0] + 0x9E3779B9) & M32, (k[1] + 0xBB67AE85) & M32]
    return c


def plain_uniform(words):
    """uint_to_uniform_float in numpy float32: the word as int32, ~w where negative, times the scale."""
    signed = np.array(words, dtype=np.uint32).view(np.int32).astype(np.int64)
    return (np.where(signed < 0, ~signed, signed).astype(np.float32) * np.float32(4.6566127342e-10)).astype(np.float32)


def plain_normal(u):
    """Box-Muller on the pairs (u1, u2), (u3, u4) of u [n, 4], entirely in float64 (no float32 steps)."""
    u = u.astype(np.float64)
    out = np.empty_like(u)
    for pair in (0, 2):
        r = np.sqrt(-2.0 * np.log(np.maximum(u[:, pair], 1e-7)))
        theta = 2 * np.pi * u[:, pair + 1]
        out[:, pair], out[:, pair + 1] = r * np.cos(theta), r * np.sin(theta)
    return out


def ulp(values):
    magnitude = values.abs()
    return torch.nextafter(magnitude, torch.tensor(float("inf"))) - magnitude


def reference_words(seed, counters):
    return torch.stack(philox.randint4x(torch.tensor(seed), counters), dim=-1)


# ------------------------------------------------------------------------ the reference


def test_reference_philox_matches_known_answer():
    # Philox4x32-10 known-answer vector (Random123: counter 0, key 0)
    words = philox.philox4x32(torch.tensor(0), torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("seed", SEEDS)
def test_reference_words_match_plain_integers(seed):
    counters = torch.tensor([c + d for c in COUNTERS for d in range(3)], dtype=torch.int64)
    got = reference_words(seed, counters)
    expected = torch.tensor([plain_philox(seed, int(c)) for c in counters], dtype=torch.int64)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("seed", [0, -3, 2**62 + 17])
def test_reference_rand4x_randn4x_match_independent_computation(seed):
    counters = torch.cat([torch.arange(c, c + 300, dtype=torch.int64) for c in COUNTERS[:5]])
    words = [plain_philox(seed, int(c)) for c in counters]
    expected_u = plain_uniform(words).reshape(-1, 4)
    got_u = torch.stack(philox.rand4x(torch.tensor(seed), counters), dim=-1)
    assert torch.equal(got_u, torch.from_numpy(expected_u))
    assert got_u.min() >= 0 and got_u.max() < 1
    # gaussian: the reference's float32 steps (theta, -2 log u1, r * cos) against float64 throughout
    got_n = torch.stack(philox.randn4x(torch.tensor(seed), counters), dim=-1)
    expected_n = torch.from_numpy(plain_normal(expected_u))
    # float32 theta is off by up to ~4e-7 rad, which moves r cos(theta) by up to r * 4e-7
    radius = torch.sqrt(expected_n[:, 0::2] ** 2 + expected_n[:, 1::2] ** 2).repeat_interleave(2, dim=1)
    assert ((got_n.double() - expected_n).abs() <= 3 * ulp(got_n).double() + 5e-7 * radius).all()
    # word order: (r12 cos, r12 sin, r34 cos, r34 sin)
    assert (torch.sign(got_n[:, 1]) == torch.sign(expected_n[:, 1])).float().mean() > 0.999


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
@pytest.mark.parametrize("first", [0, 1, 2, 3, 4 * 2**31 - 3, 4 * 2**32 - 2, 4 * 2**32 + 1, 4 * 2**60 + 7])
def test_element_noise_takes_word_i_mod_4_of_block_i_div_4(kind, first):
    count = 37
    seed = torch.tensor(2**40 + 9)
    indices = torch.arange(first, first + count, dtype=torch.int64)
    per_element = philox.element_noise(seed, indices, kind)
    blocks = philox.rand4x if kind == "uniform" else philox.randn4x
    words = torch.stack(blocks(seed, indices // 4), dim=-1)
    expected = words[torch.arange(count), indices % 4]
    assert torch.equal(per_element, expected - 0.5 if kind == "uniform" else expected)
    # the range form (each block once) gives the same values, whatever the first index
    assert torch.equal(philox.noise_range(seed, first, count, kind), per_element)
    # and an element's noise does not depend on the range it is drawn in
    assert torch.equal(philox.noise_range(seed, first + 5, 3, kind), per_element[5:8])
    # indices in any order
    shuffled = torch.randperm(count, generator=torch.Generator().manual_seed(1))
    assert torch.equal(philox.element_noise(seed, indices[shuffled], kind), per_element[shuffled])


# ------------------------------------------------------------------------------- C++


@requires_cpp
@pytest.mark.parametrize("first", [0, 5, 2**31 - 7, 2**32 - 21, 3 * 2**32 + 1])
@pytest.mark.parametrize("seed", [0, 987654321, -3, 2**62 + 17])
def test_cpp_philox_matches_reference(first, seed, simd_level):
    count = 1003  # not a multiple of the vector width
    out = torch.frombuffer(
        cpu.extension().philox_fill(seed=seed & (2**64 - 1), first=first, count=count), dtype=torch.int32
    ).reshape(count, 4)
    counters = torch.arange(first, first + count, dtype=torch.int64)
    assert torch.equal(out.to(torch.int64) & 0xFFFFFFFF, reference_words(seed, counters))


@requires_cpp
@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
@pytest.mark.parametrize(
    "first, seed",
    [
        (0, 3),
        (1, 3),
        (4 * 2**31 - 1001, 11),
        (2**32 - 1000, -9),
        (4 * 2**32 - 998, 2**63 - 1),
        (5 * 2**32 + 7, 2**50 + 1),
    ],
)
@pytest.mark.slow
def test_cpp_noise_matches_reference(kind, first, seed, simd_level):
    # the noise itself, not only outputs it moves across a rounding step: bit for bit, gaussian
    # included (its float64 log, sin and cos round to the same float32 as torch's)
    count = 2**17 + 21
    got = torch.frombuffer(
        cpu.extension().noise_fill(
            seed=seed & (2**64 - 1), first=first, count=count, noise=Noise.parse("noise", kind), scale=1.0
        ),
        dtype=torch.float32,
    )
    ref = philox.noise_range(torch.tensor(seed), first, count, kind)
    assert torch.equal(got, ref), f"{(got != ref).sum()} of {count} differ"


@requires_cpp
@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_cpp_noise_scale_and_short_unaligned_ranges(kind, simd_level):
    seed = 2**33 + 5
    for first in (0, 1, 2, 3, 4 * 2**32 - 3):
        for count in (1, 2, 3, 5, 17, 33):
            got = torch.frombuffer(
                cpu.extension().noise_fill(
                    seed=seed, first=first, count=count, noise=Noise.parse("noise", kind), scale=0.75
                ),
                dtype=torch.float32,
            )
            expected = torch.tensor(0.75) * philox.noise_range(torch.tensor(seed), first, count, kind)
            assert torch.equal(got, expected), (first, count)


# ------------------------------------------------------------------------------ Triton


@requires_triton
@pytest.mark.parametrize("first", [0, 2**31 - 100, 2**32 - 100, 7 * 2**32 + 3])
@pytest.mark.parametrize("seed", [0, 12345, -5, 2**40 + 7, 2**63 - 1])
def test_triton_rand4x_randn4x_match_reference(first, seed):
    import triton
    import triton.language as tl

    @triton.jit
    def blocks_kernel(seed_ptr, uniform_ptr, normal_ptr, first, count, BLOCK: tl.constexpr):
        index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = index < count
        offsets = index + first
        seed = tl.load(seed_ptr)
        u0, u1, u2, u3 = tl.rand4x(seed, offsets)
        n0, n1, n2, n3 = tl.randn4x(seed, offsets)
        tl.store(uniform_ptr + 4 * index, u0, mask=mask)
        tl.store(uniform_ptr + 4 * index + 1, u1, mask=mask)
        tl.store(uniform_ptr + 4 * index + 2, u2, mask=mask)
        tl.store(uniform_ptr + 4 * index + 3, u3, mask=mask)
        tl.store(normal_ptr + 4 * index, n0, mask=mask)
        tl.store(normal_ptr + 4 * index + 1, n1, mask=mask)
        tl.store(normal_ptr + 4 * index + 2, n2, mask=mask)
        tl.store(normal_ptr + 4 * index + 3, n3, mask=mask)

    count = 333
    seed_t = torch.tensor([seed], dtype=torch.int64, device=TRITON_DEVICE)
    uniform = torch.empty(count, 4, device=TRITON_DEVICE)
    normal = torch.empty(count, 4, device=TRITON_DEVICE)
    blocks_kernel[(triton.cdiv(count, 128),)](seed_t, uniform, normal, first, count, BLOCK=128)
    counters = torch.arange(first, first + count, dtype=torch.int64)
    assert torch.equal(uniform.cpu(), torch.stack(philox.rand4x(torch.tensor(seed), counters), dim=-1))
    ref_normal = torch.stack(philox.randn4x(torch.tensor(seed), counters), dim=-1)
    # Triton's float32 log/cos/sin against the reference's once-rounded float64 ones: a few ulp
    assert ((normal.cpu() - ref_normal).abs() <= 4 * ulp(ref_normal)).all()


# -------------------------------------------------------------------------- statistics


@pytest.mark.slow
def test_uniform_noise_statistics():
    eps = philox.noise_range(torch.tensor(2024), 0, 400_000, "uniform")
    assert eps.min() >= -0.5 and eps.max() < 0.5
    u = eps + 0.5
    eps = eps.double()
    assert abs(eps.mean().item()) < 4 * math.sqrt(1 / 12 / eps.numel())
    assert abs(eps.var().item() - 1 / 12) < 0.002
    counts = torch.histc(u, bins=20, min=0, max=1)
    expected = u.numel() / 20
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 45.3  # 19 degrees of freedom, p = 0.999
    # neighbouring elements are uncorrelated, within a block (i, i + 1) and across blocks (i, i + 4)
    for lag in (1, 2, 3, 4):
        assert abs(np.corrcoef(eps[:-lag].numpy(), eps[lag:].numpy())[0, 1]) < 0.01
    # each of the four words on its own is uniform
    for word in range(4):
        assert abs(eps[word::4].mean().item()) < 4 * math.sqrt(1 / 12 / eps[word::4].numel())


@pytest.mark.slow
def test_gaussian_noise_statistics():
    n = philox.noise_range(torch.tensor(7), 0, 400_000, "gaussian").double()
    assert abs(n.mean().item()) < 4 / math.sqrt(n.numel())
    assert abs(n.var().item() - 1.0) < 0.01
    assert abs((n.abs() < 1).double().mean().item() - 0.6827) < 0.005
    # the cos and sin of one Box-Muller pair are uncorrelated (independent, for a true pair)
    for lag in (1, 2, 4):
        assert abs(np.corrcoef(n[:-lag].numpy(), n[lag:].numpy())[0, 1]) < 0.01
    for word in range(4):
        assert abs(n[word::4].var().item() - 1.0) < 0.02


@requires_cpp
def test_the_fill_bindings_take_no_address_from_python():
    # they return a new buffer: a bad address (out=8) used to be written to and crash the process
    ext = cpu.extension()
    with pytest.raises(TypeError):
        ext.noise_fill(seed=0, first=0, count=4, noise=int(Noise.parse("noise", "uniform")), scale=1.0, out=8)
    with pytest.raises(TypeError):
        ext.philox_fill(seed=0, first=0, count=4, out=8)
    with pytest.raises(ValueError, match="count must be >= 0"):
        ext.noise_fill(seed=0, first=0, count=-1, noise=int(Noise.parse("noise", "uniform")), scale=1.0)
    with pytest.raises(ValueError, match="count must be at most"):
        ext.philox_fill(seed=0, first=0, count=2**40)
