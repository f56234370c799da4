"""integrate_fire against the independent oracle (``oracle_integrate_fire``), forward and backward, on
every backend of tests/conftest.py and every SIMD level of the C++ kernels this CPU has.

Each example draws x_seq [T, ...] (rank 2-5, T 1-17, zero-size step dims, one step dim around 1024 or
32768 in one example in BIG_EVERY), a dtype, a memory layout (contiguous, permuted, channels-last steps,
expanded — dim 0 expanded is one step repeated over T with stride 0 —, sliced, offset storage), a
scalar or per-channel threshold (a float or a tensor), v_init (a fraction of θ or a tensor of
potentials, with or without grad), reset, amplitude, surrogate, alpha and detach_reset, and inputs
mixing normal values, the conversion identity's ties (k - 1/2) θ / T and their neighbours, a dyadic
grid and special values. Checked:

- spikes, counts and v_final bit for bit (the float32 loop is the contract);
- grad_x and grad_v_init against float64 autograd of the same loop (forward values pinned to the
  float32 loop's), within ``8 (T + 1) 2^-24 M`` where M is the same reverse recursion on absolute
  values (``oracle_integrate_fire.magnitude_bound``): each step of the float32 backward rounds at
  most about 8 times (the surrogate's few operations, grad_s, the reset term, grad_h), each
  rounding is within 2^-24 of its result, and every intermediate is bounded by M; the sigmoid's
  float32 ``1 - sigmoid`` loses up to an ulp of 1 absolutely, so its sg is widened by alpha in M.
  The result is then rounded to x's dtype: the stored gradient must lie between the dtype roundings
  of want - tol and want + tol.
  The backward is checked on examples whose every h is finite and whose bounds (M and that of every
  grad_s) stay below 2^100, so that no float32 intermediate can overflow: most examples, not those
  with huge or infinite inputs (infinite inputs against autograd: tests/test_integrate_fire.py,
  test_gradients_with_infinite_inputs_equal_autograd_where_finite).

Examples per backend in the "ci" profile: 1250 for each backend (the backward checked on about 1100
of them); each C++ example runs at every SIMD level. Triton through the interpreter gets T <= 4 and
at most 64 elements; on a GPU the full shapes.
"""

import contextlib

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from conftest import BACKENDS, interpreted  # noqa: E402
from hypothesis import event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import na_kernels  # noqa: E402
from na_kernels import cpu  # noqa: E402

from . import oracle_integrate_fire as oracle  # noqa: E402
from . import strategies as S  # noqa: E402
from .oracle_floats import assert_bitwise, round_to, to_f32  # noqa: E402

# one example in BIG_EVERY has a dim around 1024 or 32768 (the reference, torch op by op with its int64
# Philox, is slow on those: one in 32 there)
# every storage dtype on every backend, bfloat16 in Triton's interpreter too (issue 12, item 4)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BIG_EVERY = {"reference": 32, "cpu": 8, "triton": 8}
ROUNDINGS_PER_STEP = 8


@st.composite
def cases(draw, backend, tiny, dtypes):
    t_sizes = [1, 2, 3, 4] if tiny else [1, 2, 3, 4, 5, 8, 16, 17]
    shape = draw(S.shapes(2, 5, 64 if tiny else 4096, big=0 if tiny else BIG_EVERY[backend], first_dims=t_sizes))
    per_channel = len(shape) >= 3 and shape[2] > 0 and draw(st.booleans())
    channels = shape[2] if per_channel else 1
    pool = draw(
        st.lists(
            st.one_of(st.sampled_from([1.0, 0.7, 0.5, 2.5, 4.0, 1e-2, 1e2]), st.floats(1e-2, 1e2)),
            min_size=1,
            max_size=min(channels, 8),
        )
    )
    v_init = draw(st.one_of(st.sampled_from([0.5, 0.0, 0.25, 1.0, -0.5, 0.999]), st.just("tensor")))
    return dict(
        shape=shape,
        dtype=draw(st.sampled_from(dtypes)),
        layout=draw(S.layouts(len(shape))),
        theta=np.array([pool[c % len(pool)] for c in range(channels)], dtype=np.float32),
        theta_form="tensor" if per_channel else draw(st.sampled_from(["float", "tensor"])),
        v_init=v_init,
        v_grad=v_init == "tensor" and draw(st.booleans()),
        reset=draw(st.sampled_from(["subtract", "zero"])),
        amplitude=draw(st.sampled_from(["threshold", 1.0, 0.5, 2.0, 0.3])),
        surrogate=draw(st.sampled_from(["sigmoid", "atan", "triangle", "rectangle"])),
        alpha=draw(st.sampled_from([4.0, 2.0, 1.0, 0.5, 7.3])),
        detach_reset=draw(st.booleans()),
        recipe=draw(S.recipes()),
    )


def tie_inputs(case):
    """float32 (k - 1/2) θ / T for every k and θ: the inputs where the conversion identity is at a tie."""
    steps = case["shape"][0]
    ks = np.arange(0, steps + 2, dtype=np.float64)
    return ((ks[None, :] - 0.5) * case["theta"].astype(np.float64)[:, None] / steps).astype(np.float32).reshape(-1)


def make_inputs(case, device):
    """(x_seq, threshold argument, v_init argument, v_init as float32 numpy or the number, grad_spikes, grad_v)."""
    shape, dtype = case["shape"], case["dtype"]
    theta_max = float(case["theta"].max())
    values = S.fill(shape, case["recipe"], theta_max / max(shape[0], 1) * 2, tie_inputs(case))
    values = S.expand_values(values, case["layout"])
    x = S.make_tensor(values, dtype, case["layout"], device).requires_grad_()
    threshold = float(case["theta"][0]) if case["theta_form"] == "float" else torch.tensor(case["theta"], device=device)
    rng = np.random.default_rng(case["recipe"]["seed"] + 1)
    if case["v_init"] == "tensor":
        v_np = (rng.standard_normal(shape[1:]) * 0.5 * theta_max).astype(np.float32)
        v_init = torch.from_numpy(v_np).to(device).requires_grad_(case["v_grad"])
    else:
        v_np = v_init = case["v_init"]
    grad_spikes = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype).to(device)
    grad_v = torch.from_numpy(rng.standard_normal(shape[1:]).astype(np.float32)).to(device)
    return x, threshold, v_init, v_np, grad_spikes, grad_v


def run_op(case, x, threshold, v_init, grad_spikes, grad_v, backward):
    spikes, counts, v_final = na_kernels.integrate_fire(
        x,
        threshold,
        v_init=v_init,
        reset=case["reset"],
        amplitude=case["amplitude"],
        surrogate=case["surrogate"],
        alpha=case["alpha"],
        detach_reset=case["detach_reset"],
        return_v=True,
    )
    grads = (None, None)
    if backward:
        inputs = [x] + ([v_init] if case["v_grad"] else [])
        got = torch.autograd.grad([spikes, v_final], inputs, [grad_spikes, grad_v])
        grads = (got[0], got[1] if case["v_grad"] else None)
    return spikes, counts, v_final, grads


def check_gradient(name, got, want, bound, steps, dtype):
    """got (stored in ``dtype``) lies in [round(want - tol), round(want + tol)], tol = 8 (T + 1) 2^-24 M:
    the float32 result within tol of the exact one, then rounded to the dtype (a monotonic map, so
    overflow to inf in float16 is accepted exactly where the exact value rounds there)."""
    got = to_f32(got)
    tol = ROUNDINGS_PER_STEP * (steps + 1) * 2.0**-24 * bound
    with np.errstate(over="ignore"):
        low = np.nextafter((want - tol).astype(np.float32), np.float32(-np.inf))
        high = np.nextafter((want + tol).astype(np.float32), np.float32(np.inf))
    low, high = round_to(low, dtype), round_to(high, dtype)
    bad = ~((low <= got) & (got <= high))
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.size} outside the tolerance, e.g. at {i}: got "
            f"{got[i]!r}, want {want[i]!r} +- {tol[i]!r}"
        )


def run_and_check(backend, device, case):
    x, threshold, v_init, v_np, grad_spikes, grad_v = make_inputs(case, device)
    x32 = to_f32(x)
    v_arg = to_f32(v_init) if isinstance(v_init, torch.Tensor) else v_np
    kw = dict(v_init=v_arg, reset=case["reset"], amplitude=case["amplitude"])
    want_spikes, want_counts, want_v, hs = oracle.forward(x32, case["theta"], **kw)
    want_spikes = round_to(want_spikes, case["dtype"])
    backward = bool(np.isfinite(hs).all())  # an infinite h: see the module docstring
    if backward:
        bkw = dict(kw, surrogate=case["surrogate"], alpha=case["alpha"], detach_reset=case["detach_reset"])
        gs32, gv32 = to_f32(grad_spikes), to_f32(grad_v)
        want_gx, want_gv = oracle.backward(x32, case["theta"], gs32, gv32, **bkw)
        bound_x, bound_v, largest_gs = oracle.magnitude_bound(x32, case["theta"], gs32, gv32, **bkw)
        # near float32's range an intermediate (e.g. grad_s = grad_spike * amp - h * grad_v) overflows
        # in float32, and inf * sg(u) = inf * 0 is NaN where float64 stays finite: float32's range, as
        # autograd of the float32 loop gives too, not the rounding checked here
        backward = bool(np.all(bound_x < 2.0**100) and np.all(bound_v < 2.0**100) and largest_gs < 2.0**100)
    event("backward checked" if backward else "forward only")
    steps = case["shape"][0]
    with na_kernels.use_backend(backend):
        for level in S.simd_levels(backend):
            with cpu.limit_simd(level) if level else contextlib.nullcontext():
                spikes, counts, v_final, (gx, gv) = run_op(case, x, threshold, v_init, grad_spikes, grad_v, backward)
            assert spikes.dtype == case["dtype"] and tuple(spikes.shape) == case["shape"]
            assert counts.dtype == torch.int32 and v_final.dtype == torch.float32
            assert_bitwise("spikes", spikes, want_spikes)
            assert np.array_equal(counts.cpu().numpy(), want_counts), "counts differ"
            assert_bitwise("v_final", v_final, want_v)
            if backward:
                check_gradient("grad_x", gx, want_gx, bound_x, steps, case["dtype"])
                if case["v_grad"]:
                    check_gradient("grad_v_init", gv, want_gv, bound_v, steps, torch.float32)


# a quarter more examples than the profile's count: the backward is skipped on the examples with an
# infinite h or near-overflow bounds (about one in eight), and still gets at least the profile's count
EXAMPLES = settings.default.max_examples * 5 // 4


@pytest.mark.parametrize("backend, device", BACKENDS)
@settings(deadline=None, max_examples=EXAMPLES)
@given(data=st.data())
def test_integrate_fire_matches_oracle(backend, device, data):
    case = data.draw(cases(backend, tiny=interpreted(backend, device), dtypes=DTYPES), label="case")
    run_and_check(backend, device, case)
