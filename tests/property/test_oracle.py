"""The oracle checked on its own, against facts that do not come from na_kernels: Philox4x32-10's
published known-answer vectors (Random123), uint_to_uniform_float's end points, Box-Muller in plain
float64, torch's own round-to-nearest-even casts, exact rational arithmetic for noisy_quant and for the
integrate-and-fire loop on dyadic inputs, and float64 autograd against a hand-derived gradient."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from . import oracle_integrate_fire as oif
from . import oracle_noisy_quant as onq
from . import oracle_philox as philox
from .oracle_floats import bf16_bits, round_to, to_f32

# Random123's kat_vectors for philox4x32_10: (counter, key, result)
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, result", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, result):
    assert tuple(int(w) for w in philox.block(counter, key)) == result


def test_counter_and_key_words():
    """The block counter's and the seed's 64 bits split as (lo, hi); -1 and 2**64 - 1 are one seed."""
    assert philox.seed_key(-1) == philox.seed_key(2**64 - 1) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert philox.seed_key(2**32 + 5) == (5, 1)
    counter = 3 * 2**32 + 7
    direct = philox.block((7, 3, 0, 0), philox.seed_key(11))
    assert [int(a[0]) for a in philox.words(11, [counter])] == [int(a) for a in direct]


def test_uniform_end_points():
    """int32 0 and ~(-1) give 0; 2**31 - 1 gives the largest float32 below 1; results in [0, 1)."""
    u = philox.uniform(np.array([0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 1], dtype=np.uint64))
    assert u[0] == 0 and u[1] == 0
    assert u[2] == u[3] == np.nextafter(np.float32(1), np.float32(0))
    assert u[4] == np.float32(4.6566127342e-10)
    words = np.concatenate(philox.words(5, np.arange(4096)))
    values = philox.uniform(words)
    assert values.dtype == np.float32 and values.min() >= 0 and values.max() < 1


def test_gaussian_is_box_muller():
    """Element i's gaussian is Box-Muller on its pair of uniforms, as float64 computes it from the same
    uniforms, within the float32 error of theta = float32(2 pi) * u2 (under 2^-23 theta: the constant and
    the product each within 2^-24) times r, and a few ulp."""
    indices = np.arange(8192, dtype=np.int64)
    eps = philox.element_noise(123, indices, "gaussian").astype(np.float64)
    w = np.stack(philox.words(123, indices >> 2), axis=-1)
    u = philox.uniform(w).astype(np.float64)
    pair = indices & 2
    u1 = np.maximum(u[np.arange(len(indices)), pair], 1e-7)
    u2 = u[np.arange(len(indices)), pair + 1]
    r = np.sqrt(-2 * np.log(u1))
    want = np.where(indices & 1, r * np.sin(2 * np.pi * u2), r * np.cos(2 * np.pi * u2))
    tol = 4 * np.spacing(np.abs(want).astype(np.float32)) + r * (2 * np.pi * u2) * 2.0**-23
    assert np.all(np.abs(eps - want) <= tol)
    uniform = philox.element_noise(123, indices, "uniform")
    assert np.array_equal(uniform, u[np.arange(len(indices)), indices & 3].astype(np.float32) - np.float32(0.5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rounding_matches_torch_casts(dtype):
    """round_to is torch's float32 -> 16-bit cast (round to nearest even) on random bit patterns."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = values[~np.isnan(values)]
    want = torch.from_numpy(values).to(dtype).to(torch.float32).numpy()
    got = round_to(values, dtype)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    back = torch.from_numpy(want).to(dtype)
    assert np.array_equal(to_f32(back).view(np.uint32), want.view(np.uint32))
    if dtype == torch.bfloat16:
        assert np.isnan(round_to(np.array([np.nan], dtype=np.float32), dtype)).all()
        assert bf16_bits(np.array([1.0], dtype=np.float32))[0] == 0x3F80


def test_noisy_quant_oracle_against_rationals():
    """Where every float32 step is exact (dyadic x, p and lam powers of two), the oracle's y is the
    rational formula's, ties included."""
    rng = np.random.default_rng(1)
    x = (rng.integers(-2048, 4096, 4000) / 1024).astype(np.float32)
    for p, lam in [(4, 2.0), (8, 0.5), (1, 1.0), (16, 4.0)]:
        y, _ = onq.forward(x, np.float32(lam), p)
        for xi, yi in zip(x[:500], y[:500]):
            q = min(max((Fraction(float(xi)) * p / Fraction(lam) + Fraction(1, 2)).__floor__(), 0), p)
            assert Fraction(float(yi)) == Fraction(q, p) * Fraction(lam)


def test_noisy_quant_oracle_order_is_multiply_then_divide():
    """z = (x * p) / lam: at x = 1.2499999 (float32), p = 1, lam = 2.5 that is 0.49999997 (level 0),
    where x * (p / lam) would round to 0.5 (level 1)."""
    x = np.array([np.nextafter(np.float32(1.25), np.float32(0))], dtype=np.float32)
    y, _ = onq.forward(x, np.float32(2.5), 1)
    assert y[0] == 0
    assert np.float32(x[0] * (np.float32(1) / np.float32(2.5))) + np.float32(0.5) == np.float32(1.0)


def test_integrate_fire_oracle_against_rationals():
    """On dyadic inputs every float32 addition of the loop is exact: spikes and v_final are the
    rational recursion's, ties firing."""
    rng = np.random.default_rng(2)
    x = (rng.integers(-256, 1024, (12, 300)) / 1024).astype(np.float32)
    x[:, :10] = 0.25  # h reaches θ = 1 exactly: ties fire
    spikes, counts, v, _ = oif.forward(x, np.float32(1.0), 0.5, "subtract")
    for n in range(x.shape[1]):
        vq = Fraction(1, 2)
        for t in range(x.shape[0]):
            h = vq + Fraction(float(x[t, n]))
            s = h >= 1
            vq = h - 1 if s else h
            assert spikes[t, n] == (1.0 if s else 0.0)
        assert Fraction(float(v[n])) == vq
    assert np.array_equal(counts, spikes.sum(axis=0).astype(np.int32))
    assert (spikes[1, :10] == 1).all()  # 0.5 + 0.25 + 0.25 = 1 = θ: the tie fires


def test_integrate_fire_backward_oracle_one_step():
    """T = 1: grad_x = grad_spike * amplitude * sg(u) + grad_v * (1 - theta * sg(u)) (subtract reset),
    checked by hand for the triangle surrogate."""
    x = np.array([[0.6, 0.2, 1.4]], dtype=np.float32)
    gs = np.array([[1.0, 2.0, -1.0]], dtype=np.float32)
    gv = np.array([0.5, 0.25, 1.0], dtype=np.float32)
    gx, _ = oif.backward(x, np.float32(1.0), gs, gv, 0.5, "subtract", "threshold", "triangle", 2.0, False)
    h = 0.5 + x[0].astype(np.float64)
    sg = 2.0 * np.maximum(0.0, 1 - 2.0 * np.abs(h.astype(np.float32) - 1).astype(np.float64))
    want = gs[0] * 1.0 * sg + gv * (1 - 1.0 * sg)
    assert np.allclose(gx[0], want, rtol=0, atol=1e-12)
