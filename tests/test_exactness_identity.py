"""The conversion identity, stated precisely (docs/design.md, "The conversion identity"), on every
backend: for a constant input x, integrate_fire with theta = lam, v_init = 0.5, soft reset and T
steps fires as many spikes as noisy_quant(x, p=T, lam, noise=None)'s level q.

- Bit for bit, half-step ties included, wherever the IF partial sums theta/2 + t*x (t <= T) and
  x*T are exact in float32 (x and theta dyadic with few significant bits): then IF runs the
  rational recursion, and noisy_quant's z = (x*T)/lam rounds the exact quotient once, which is
  exact at a tie (z + 1/2 is then an integer).
- For arbitrary float32 inputs the two differ by at most one, and only where T*x/theta + 1/2
  lies within the float32 rounding error bound (derived in ``_rounding_bound``) of an integer.
"""

from fractions import Fraction

import pytest
import torch
from conftest import BACKENDS, interpreted

import na_kernels

# dyadic thetas that are not powers of two (T / theta is then inexact for most T, which broke
# ties before noisy_quant computed (x*T)/lam), and 1.0
DYADIC_THETAS = [0.75, 1.25, 1.1875, 1.4375, 1.6875, 1.8125, 1.0]


def _steps(backend, device):
    if interpreted(backend, device):  # including a T where x * (T / theta) broke a tie for each theta
        return [1, 2, 3, 7, 10, 12, 14, 15, 20, 24, 42, 56, 64]
    return list(range(1, 65))


def _exact_counts(x, theta, steps):
    """clamp(floor(T x / theta + 1/2), 0, T) in rational arithmetic."""
    theta = Fraction(theta)
    return torch.tensor(
        [min(max((steps * Fraction(v) / theta + Fraction(1, 2)).__floor__(), 0), steps) for v in x.tolist()],
        dtype=torch.int32,
    )


def _dyadic_ties(theta, steps, limit):
    """Every x = (2k - 1) theta / (2T), k = 0..T+1, that is a multiple of 2^-limit: exact half steps."""
    ties = []
    for k in range(0, steps + 2):
        x = (2 * k - 1) * Fraction(theta) / (2 * steps)
        if (x * 2**limit).denominator == 1:
            ties.append(float(x))
    return ties


def _levels(y, steps, theta):
    """noisy_quant's level q from y = (q / p) * lam (exact: y is within an ulp of q lam / p, p <= 64)."""
    return torch.round(y.double() * steps / theta).to(torch.int32)


def _count_and_level(backend, device, x, theta, steps):
    with na_kernels.use_backend(backend):
        _, counts = na_kernels.integrate_fire(x.to(device).expand(steps, x.numel()), theta, v_init=0.5)
        y = na_kernels.noisy_quant(x.to(device), steps, theta, noise=None)
    return counts.cpu(), y.cpu()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("theta", DYADIC_THETAS)
def test_identity_is_exact_on_dyadic_inputs_ties_included(backend, device, theta):
    """x = k / 4096 (|x| < 3) and theta = m / 16: every theta/2 + t*x, h - theta and x*T (T <= 64) is a
    multiple of 2^-12 below 2^8 (20 significant bits), exact in float32; so counts == level == the
    rational formula, at every exact half step (T x / theta + 1/2 an integer) too."""
    torch.manual_seed(5)
    n = 300 if interpreted(backend, device) else 3000
    random_x = torch.randint(-800, int(theta * 4096 * 1.2), (n,)).to(torch.float32) / 4096
    for steps in _steps(backend, device):
        ties = torch.tensor(_dyadic_ties(theta, steps, 12) + [0.0, theta, -1 / 4096], dtype=torch.float32)
        x = torch.cat([ties, random_x])
        counts, y = _count_and_level(backend, device, x, theta, steps)
        want = _exact_counts(x, theta, steps)
        assert torch.equal(counts, want), (steps, x[counts != want], counts[counts != want], want[counts != want])
        levels = _levels(y, steps, theta)
        assert torch.equal(levels, want), (steps, x[levels != want], levels[levels != want], want[levels != want])
        # y is the level through the contract's float32 y = (q / p) * lam, bit for bit
        assert torch.equal(y, (want.to(torch.float32) / steps) * torch.tensor(theta))


def test_dyadic_ties_are_present():
    """The tie inputs above exist at T that are not powers of two (else the test checks little)."""
    for theta in (0.75, 1.25):
        for steps in (3, 5, 6, 20, 40):
            assert _dyadic_ties(theta, steps, 12), (theta, steps)


def _rounding_bound(x, theta, steps):
    """How far from a half step float32 rounding can move either side, in units of one step (float64).

    IF: v0 = theta/2 is exact; for 0 <= x < theta every v lies in [0, theta), so each of the T
    additions h = v + x rounds a value below theta + |x| by at most 2^-24 of it, and each reset
    h - theta (theta <= h < 2 theta) is exact (Sterbenz). The count is floor((theta/2 + T x + E)/theta)
    with |E| <= T 2^-24 (theta + |x|). (x < 0 never fires, x >= theta fires every step: both exact.)
    noisy_quant: z = (x*T)/theta rounds twice (relative 2^-24 each) and z + 1/2 once, so
    |z + 1/2 - (a + 1/2)| <= 2^-24 (2|a| + |a + 1/2|) (1 + 2^-22) with a = T x / theta.
    """
    u = 2.0**-24
    x = x.double()
    a = steps * x / theta
    if_error = steps * u * (theta + x.abs()) / theta
    z_error = u * (2 * a.abs() + (a + 0.5).abs()) * (1 + 4 * u)
    return if_error + z_error + 2.0**-50 * (a.abs() + 1)  # and the float64 evaluation of a


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("theta", [0.7, 1.0, 2.3, 0.1])
def test_identity_on_float32_inputs_differs_only_within_the_rounding_bound(backend, device, theta):
    torch.manual_seed(11)
    n = 400 if interpreted(backend, device) else 20000
    theta = float(torch.tensor(theta))  # the float32 theta both ops see
    near_ties_seen = 0
    for steps in [1, 3, 7, 20, 64] if interpreted(backend, device) else [1, 2, 3, 4, 7, 8, 16, 20, 32, 64]:
        random_x = (torch.rand(n) * 1.4 - 0.2) * theta
        # the float32 nearest each half step (k - 1/2) theta / T, and 1 and 2 ulp either side
        ties = torch.tensor([(k - 0.5) * theta / steps for k in range(1, steps + 1)], dtype=torch.float32)
        up = torch.full_like(ties, float("inf"))
        up1, down1 = torch.nextafter(ties, up), torch.nextafter(ties, -up)
        x = torch.cat([ties, up1, torch.nextafter(up1, up), down1, torch.nextafter(down1, -up), random_x])
        counts, y = _count_and_level(backend, device, x, theta, steps)
        levels = _levels(y, steps, theta)
        r = steps * x.double() / theta + 0.5
        distance = (r - torch.round(r)).abs()
        bound = _rounding_bound(x, theta, steps)
        assert bool(((counts - levels).abs() <= 1).all())
        differ = counts != levels
        assert bool((distance[differ] <= bound[differ]).all()), (steps, x[differ & (distance > bound)])
        near_ties_seen += int((distance <= bound).sum())
    assert near_ties_seen > 0  # the inputs reach the region where the two may differ
