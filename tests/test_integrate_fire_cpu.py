"""integrate_fire of the C++ kernels on every SIMD path this CPU has (the ``simd_level`` fixture):
the forward bit for bit against the reference and against the generic loop, the backward against
the reference's closed form (bit for bit but for the sigmoid surrogate's exp), and the vector
backwards against the generic one (the AVX2 and AVX-512 sigmoids against each other: their exps
are the same operations).

The cases reach what the vector path handles on its own: sizes around multiples of 8 and 16 (a ymm
and a zmm of neurons), of a tile (32 neurons; 64 for 16-bit inputs from T = 16) and of the 1024-neuron work
item, T = 1, per-channel theta with the channel changing inside a vector and channel patterns
shorter and longer than the shared table, 16-bit spikes for both amplitudes (a negative one
stores -0 bits when the neuron is silent), stride-0 and strided steps, v_init tensors, both
resets, saved h and non-finite or subnormal thresholds.
"""

import dataclasses
import itertools
import os

import pytest
import torch

import na_kernels
from na_kernels import cpu
from na_kernels._spec import IntegrateFireArgs, Reset, Save, Surrogate
from na_kernels.ops.integrate_fire import cpu as cpu_backend
from na_kernels.ops.integrate_fire import reference as ref

pytestmark = pytest.mark.skipif(not cpu.available(), reason="C++ extension not built")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SIZES = (1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 63, 64, 65, 1023, 1024, 1025, 1040, 2048 + 47)
# What the public API refuses (<= 0, inf, NaN) still reaches the kernel through the op. Non-finite
# theta is compared between the two C++ paths only: the reference tests h - theta >= 0 (h >= theta
# for a finite theta only), and torch's vectorized bfloat16 conversion writes NaN as 0xffff.
ODD_THETA = (0.5, -0.25, 0.0, 1e-40, 3e38, 1e-30)
NON_FINITE_THETA = (float("inf"), -float("inf"), float("nan"))


def _x(gen, shape, dtype):
    return (torch.randn(shape, generator=gen) * 0.7 + 0.3).to(dtype)


def _cases(non_finite_theta=False):
    """(name, x_seq, threshold, keyword arguments), the same for every call (a fixed seed)."""
    gen = torch.Generator().manual_seed(1234)
    cases = []
    for dtype in DTYPES:
        tag = str(dtype).split(".")[1]
        for n in SIZES:
            for steps in (1, 8):
                cases.append((f"{tag}-n{n}-t{steps}", _x(gen, (steps, n), dtype), 0.75, {}))
        for n in (63, 64, 65, 127, 1040):  # from T = 16 on, 16-bit inputs take tiles of 64 neurons
            cases.append((f"{tag}-n{n}-t17", _x(gen, (17, n), dtype), 0.75, {}))
        # per channel along dim 2: inner 21 (the channel changes inside a vector), 1, 32, and steps of
        # more than one work item whose boundaries fall inside a channel's run (inner 100, inner 1)
        for shape in ((5, 2, 7, 3, 7), (6, 3, 37), (3, 2, 3, 32), (3, 4, 7, 100), (2, 40, 37)):
            theta = torch.rand(shape[2], generator=gen) + 0.25
            for reset in ("subtract", "zero"):
                for amplitude in ("threshold", 1.0, -0.5):  # -0.5: only through the op
                    name = f"{tag}-channels{shape}-{reset}-amp{amplitude}"
                    cases.append((name, _x(gen, shape, dtype), theta, dict(reset=reset, amplitude=amplitude)))
        # channel patterns longer than the kernel's shared table (2^15 neurons): tables per work item
        for shape in ((2, 2, 3, 11001), (2, 2, 40000)):
            theta = torch.rand(shape[2], generator=gen) + 0.25
            cases.append((f"{tag}-long-period{shape}", _x(gen, shape, dtype), theta, {}))
        v0 = torch.randn(4, 77, generator=gen)
        cases.append((f"{tag}-v0", _x(gen, (5, 4, 77), dtype), torch.rand(77, generator=gen) + 0.5, dict(v_init=v0)))
        cases.append((f"{tag}-vfrac", _x(gen, (5, 300), dtype), 1.5, dict(v_init=0.25, reset="zero")))
        repeated = _x(gen, (3, 5, 40), dtype)[0].expand(9, 5, 40)  # stride 0 between steps
        cases.append((f"{tag}-repeated", repeated, torch.rand(40, generator=gen) + 0.5, {}))
        strided = _x(gen, (10, 2, 3, 50), dtype)[::2]  # steps 2N apart, each dense
        cases.append((f"{tag}-strided", strided, torch.rand(3, generator=gen) + 0.5, dict(reset="zero")))
        odd = torch.tensor(ODD_THETA + (NON_FINITE_THETA if non_finite_theta else ()))
        for amplitude in ("threshold", 1.0):
            cases.append(
                (
                    f"{tag}-odd-theta-amp{amplitude}",
                    _x(gen, (4, 2, len(odd), 19), dtype),
                    odd,
                    dict(amplitude=amplitude),
                )
            )
    return cases


def _args(
    *,
    v_frac=0.5,
    reset=Reset.SUBTRACT,
    amplitude=None,
    surrogate=Surrogate.SIGMOID,
    alpha=4.0,
    detach_reset=False,
    save=Save.NOTHING,
):
    return IntegrateFireArgs(
        v_frac=v_frac,
        reset=Reset(reset),
        amplitude=amplitude,
        surrogate=Surrogate(surrogate),
        alpha=alpha,
        detach_reset=detach_reset,
        save=save,
    )


def _forward(x, threshold, kwargs, save=Save.NOTHING, **outputs):
    """(spikes, counts, v_final, h) from the C++ backend, with the reference's keyword arguments;
    ``outputs`` (counts=False / v_final=False) leave those unwritten (the kernel gets a null address)."""
    v_init = kwargs.get("v_init", 0.5)
    v0, v_frac = (v_init, 0.0) if isinstance(v_init, torch.Tensor) else (None, v_init)
    amplitude = kwargs.get("amplitude", "threshold")
    args = _args(
        v_frac=v_frac,
        reset=Reset.parse("reset", kwargs.get("reset", "subtract")),
        amplitude=None if amplitude == "threshold" else amplitude,
        save=save,
    )
    theta = torch.as_tensor(threshold, dtype=torch.float32).reshape(-1)
    return cpu_backend.forward(x, theta, v0, args, **outputs)


def _bits(t):
    """The tensor's bits as integers: equal means identical, NaN payloads and signed zeros included."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.contiguous().view(torch.int16)
    if t.dtype == torch.float32:
        return t.contiguous().view(torch.int32)
    return t


def _assert_bits_equal(got, want, name):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(_bits(g), _bits(w)), name


def test_forward_matches_reference_bit_for_bit(simd_level):
    for name, x, threshold, kwargs in _cases():
        want = ref.integrate_fire(x, threshold, **kwargs)
        _assert_bits_equal(_forward(x, threshold, kwargs)[:3], want, name)


# spikes of 4 MiB or more, rows 64-byte aligned: the vector forwards store whole tiles with
# non-temporal stores (csrc/integrate_fire/integrate_fire.cpp, kStreamFromBytes); n = 2^19 + 16 also
# leaves neurons past the last whole tile of a work item to the ordinary stores
@pytest.mark.parametrize("dtype, steps", [(torch.float32, 8), (torch.bfloat16, 16), (torch.float16, 16)])
@pytest.mark.parametrize("n", [1 << 19, (1 << 19) + 16])
def test_streamed_spikes_match_reference(dtype, steps, n, simd_level):
    gen = torch.Generator().manual_seed(11)
    x = _x(gen, (steps, n), dtype)
    got = _forward(x, 0.75, {})
    assert got[0].numel() * got[0].element_size() >= 4 << 20 and got[0].data_ptr() % 64 == 0
    _assert_bits_equal(got[:3], ref.integrate_fire(x, 0.75), f"{dtype} T={steps} n={n}")


@pytest.mark.parametrize("reset", [0, 1])
@pytest.mark.parametrize("n", [17, 21, 1040])
def test_saved_h_matches_reference(reset, n, simd_level):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, 3, n, generator=gen)
    theta = torch.rand(3, generator=gen) + 0.5
    *_, h = _forward(x, theta, dict(reset=Reset(reset).label), save=Save.H)
    want = ref.integrate_fire(x, theta, reset=Reset(reset), return_h=True)[3]
    _assert_bits_equal((h,), (want,), f"h reset={reset} n={n}")


def test_public_api_takes_the_same_path(simd_level):
    gen = torch.Generator().manual_seed(7)
    for dtype in DTYPES:
        x = _x(gen, (8, 2, 5, 33), dtype)
        theta = torch.rand(5, generator=gen) + 0.5
        with na_kernels.use_backend("cpu"):
            got = na_kernels.integrate_fire(x, theta, reset="zero", amplitude=1.0, return_v=True)
        _assert_bits_equal(got, ref.integrate_fire(x, theta, reset="zero", amplitude=1.0), str(dtype))


def test_empty_step(simd_level):
    for dtype in DTYPES:
        spikes, counts, v, _ = _forward(torch.empty(3, 0, dtype=dtype), 1.0, {})
        assert spikes.shape == (3, 0) and counts.shape == (0,) and v.shape == (0,)


def test_vector_paths_equal_generic_loop(simd_level):
    if simd_level == "generic":
        pytest.skip("the generic loop itself")
    cases = _cases(non_finite_theta=True)
    with cpu.limit_simd("generic"):
        generic = [_forward(x, threshold, kwargs)[:3] for _, x, threshold, kwargs in cases]
    for (name, x, threshold, kwargs), want in zip(cases, generic):
        _assert_bits_equal(_forward(x, threshold, kwargs)[:3], want, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_closed_form_reference(dtype, simd_level):
    """Sizes around a vector, a tile and a work item; per-channel theta; saved h and h recomputed
    from x (the same bits); every surrogate, reset, detach_reset and both amplitudes."""
    gen = torch.Generator().manual_seed(11)
    for n in (1, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 1025, 2048 + 47):
        x = _x(gen, (5, 2, 3, n), dtype)
        theta = torch.rand(3, generator=gen) + 0.5
        v0 = torch.randn(2, 3, n, generator=gen)
        grad_spikes = torch.randn(x.shape, generator=gen).to(dtype)
        grad_v = torch.randn(x.shape[1:], generator=gen)
        for reset in (0, 1):
            h = ref.integrate_fire(x, theta, v_init=v0, reset=Reset(reset), return_h=True)[3]
            for surrogate, detach, amplitude in itertools.product(Surrogate, (False, True), (None, 0.75)):
                saved = _args(
                    v_frac=0.0,
                    reset=reset,
                    amplitude=amplitude,
                    surrogate=surrogate,
                    alpha=3.0,
                    detach_reset=detach,
                    save=Save.H,
                )
                kept_x = dataclasses.replace(saved, save=Save.X)
                want = ref.backward(grad_spikes, grad_v, h, None, None, theta, saved, dtype, True, True)
                got = cpu_backend.backward(grad_spikes, grad_v, h, None, None, theta, saved, dtype, True, True)
                recomputed = cpu_backend.backward(grad_spikes, grad_v, None, x, v0, theta, kept_x, dtype, True, True)
                case = f"n={n} reset={reset} surrogate={surrogate} detach={detach} amplitude={amplitude}"
                for g, r, w in zip(got, recomputed, want, strict=True):
                    _assert_bits_equal((g,), (r,), case)
                    if surrogate == 0:  # exp: within an ulp of the C library's
                        tol = 1e-5 if dtype == torch.float32 else 1e-2
                        torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=case)
                    else:
                        _assert_bits_equal((g,), (w,), case)


def test_zero_reset_backward_with_infinite_input_at_the_last_step(simd_level):
    """+-inf at the last step, zero reset, no v_final gradient: the reset path h * gv is skipped where
    gv is 0 (issue 12 item 3), so no inf * 0 = NaN; the same bits as the reference's closed form, on
    vector tiles and the generic remainder alike."""
    gen = torch.Generator().manual_seed(5)
    for n in (7, 17, 33, 1025):
        x = _x(gen, (4, 1, n), torch.float32)
        x[-1, 0, ::3] = float("inf")
        x[-1, 0, 1::3] = -float("inf")
        grad_spikes = torch.randn(x.shape, generator=gen)
        h = ref.integrate_fire(x, 1.0, reset="zero", return_h=True)[3]
        for surrogate in (Surrogate.ATAN, Surrogate.TRIANGLE, Surrogate.RECTANGLE, Surrogate.SIGMOID):
            args = _args(reset=Reset.ZERO, surrogate=surrogate, save=Save.H)
            theta = torch.ones(1)
            want = ref.backward(grad_spikes, None, h, None, None, theta, args, torch.float32, True, True)
            got = cpu_backend.backward(grad_spikes, None, h, None, None, theta, args, torch.float32, True, True)
            assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all(), (n, surrogate)
            if surrogate == Surrogate.SIGMOID:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            else:
                _assert_bits_equal(got, want, f"n={n} surrogate={surrogate}")


_BACKWARD_VARIANTS = tuple(itertools.product(Surrogate, (False, True)))


def _backward_cases():
    """(name, x, theta, kwargs, surrogate, detach, grad_spikes, grad_v) over _cases() (non-finite
    thresholds included), each case with one surrogate and detach_reset in turn."""
    gen = torch.Generator().manual_seed(21)
    out = []
    for i, (name, x, threshold, kwargs) in enumerate(_cases(non_finite_theta=True)):
        surrogate, detach = _BACKWARD_VARIANTS[i % len(_BACKWARD_VARIANTS)]
        grad_spikes = torch.randn(x.shape, generator=gen).to(x.dtype)
        grad_v = torch.randn(x.shape[1:], generator=gen)
        out.append((name, x, threshold, kwargs, surrogate, detach, grad_spikes, grad_v))
    return out


def _backward(case):
    """(grad_x, grad_v_init) with saved h, then with h recomputed from x, on the current SIMD level."""
    name, x, threshold, kwargs, surrogate, detach, grad_spikes, grad_v = case
    *_, h = _forward(x, threshold, kwargs, save=Save.H)
    v_init = kwargs.get("v_init", 0.5)
    v0, v_frac = (v_init, 0.0) if isinstance(v_init, torch.Tensor) else (None, v_init)
    amplitude = kwargs.get("amplitude", "threshold")
    saved = _args(
        v_frac=v_frac,
        reset=Reset.parse("reset", kwargs.get("reset", "subtract")),
        amplitude=None if amplitude == "threshold" else amplitude,
        surrogate=surrogate,
        alpha=3.0,
        detach_reset=detach,
        save=Save.H,
    )
    theta = torch.as_tensor(threshold, dtype=torch.float32).reshape(-1)
    got = cpu_backend.backward(grad_spikes, grad_v, h, None, None, theta, saved, x.dtype, True, True)
    kept_x = dataclasses.replace(saved, save=Save.X)
    recomputed = cpu_backend.backward(grad_spikes, grad_v, None, x, v0, theta, kept_x, x.dtype, True, True)
    return (*got, *recomputed)


def test_vector_backwards_equal_generic_backward(simd_level):
    """Bit for bit on a wide case set (sizes around 8, 16, a tile and a work item, channels, v0,
    stride-0 and strided steps, odd and non-finite thresholds, every surrogate and detach_reset),
    but for the sigmoid, whose vector exp is not the C library's: within an ulp there."""
    if simd_level == "generic":
        pytest.skip("the generic backward itself")
    cases = _backward_cases()
    with cpu.limit_simd("generic"):
        generic = [_backward(case) for case in cases]
    for case, want in zip(cases, generic):
        got = _backward(case)
        name = f"{case[0]} surrogate={case[4]} detach={case[5]}"
        if case[4] == Surrogate.SIGMOID:
            tol = 1e-5 if case[1].dtype == torch.float32 else 1e-2
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=tol, atol=tol, equal_nan=True, msg=name)
        else:
            _assert_bits_equal(got, want, name)


@pytest.mark.skipif(cpu.available() and cpu.detected_simd_level() != "avx512", reason="needs AVX-512 to compare")
def test_avx2_backward_equals_avx512_backward():
    """The AVX2 backward is the AVX-512 one on 8 lanes, its exp the twin of exp_ps_avx512: the same
    bits for every case, the sigmoid's included but for the last N % 8 neurons (the generic step's
    exp, from the C library); and the sigmoid's exp is not the generic one's on
    this set, so the avx2 level is seen to take the vector kernel."""
    cases = [case for case in _backward_cases() if case[4] == Surrogate.SIGMOID] + _backward_cases()[:40]
    results = {}
    for level in ("generic", "avx2", "avx512"):
        with cpu.limit_simd(level):
            results[level] = [_backward(case) for case in cases]
    differs_from_generic = False
    for case, avx2, avx512, generic in zip(cases, results["avx2"], results["avx512"], results["generic"]):
        name = f"{case[0]} surrogate={case[4]} detach={case[5]}"
        if case[4] != Surrogate.SIGMOID:
            _assert_bits_equal(avx2, avx512, name)
            continue
        # the last N % 8 neurons take the generic step (the C library's exp): within an ulp there
        neurons = case[1][0].numel()
        vectors = neurons - neurons % 8
        for a, b in zip(avx2, avx512, strict=True):
            a, b = a.reshape(-1, neurons), b.reshape(-1, neurons)
            _assert_bits_equal((a[:, :vectors],), (b[:, :vectors],), name)
            tol = 1e-5 if a.dtype == torch.float32 else 1e-2
            torch.testing.assert_close(a[:, vectors:], b[:, vectors:], rtol=tol, atol=tol, equal_nan=True, msg=name)
        differs_from_generic |= any(not torch.equal(_bits(a), _bits(g)) for a, g in zip(avx2, generic))
    assert differs_from_generic, "the avx2 level gave the generic backward's bits everywhere"


@pytest.mark.parametrize("steps", [1, 3, 64])
@pytest.mark.parametrize("n", [1, 2, 7, 9, 40])
def test_backward_few_neurons_many_steps(steps, n, simd_level):
    """Recompute scratch sized by the neurons (not T x a work item): small N, every level, the
    generic tail of the AVX2 path included, against the closed form."""
    gen = torch.Generator().manual_seed(n * 100 + steps)
    x = _x(gen, (steps, n), torch.float32)
    grad_spikes = torch.randn(x.shape, generator=gen)
    grad_v = torch.randn(n, generator=gen)
    h = ref.integrate_fire(x, 0.75, return_h=True)[3]
    args = _args(surrogate=Surrogate.ATAN, save=Save.X)
    theta = torch.tensor([0.75])
    want = ref.backward(
        grad_spikes, grad_v, h, None, None, theta, dataclasses.replace(args, save=Save.H), torch.float32, True, True
    )
    got = cpu_backend.backward(grad_spikes, grad_v, None, x, None, theta, args, torch.float32, True, True)
    _assert_bits_equal(got, want, f"n={n} steps={steps}")


_SCRATCH_SCRIPT = r"""
import resource, sys, torch, na_kernels
from na_kernels import cpu
level = sys.argv[1]
T, N = 200_000, 2
x = torch.rand(T, N, requires_grad=True)
with cpu.limit_simd(level):
    spikes, _ = na_kernels.integrate_fire(x, 1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spikes.sum().backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


@pytest.mark.parametrize(
    "level", cpu.SIMD_LEVELS[: cpu.SIMD_LEVELS.index(cpu.detected_simd_level()) + 1] if cpu.available() else []
)
@pytest.mark.slow
def test_backward_scratch_is_bounded_by_the_work(level, tmp_path):
    """Issue 12 item 7: the recompute scratch is T x the neurons a pass holds, not T x 1024 per
    thread whatever N (at T = 2*10^5, N = 2 that was 800 MB per thread; the work is 1.6 MB)."""
    import subprocess
    import sys

    # from another folder: in a source checkout `import na_kernels` would find the unbuilt tree
    out = subprocess.run(
        [sys.executable, "-c", _SCRATCH_SCRIPT, level],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    grown = int(out.stdout.split()[-1])
    assert grown < 64 << 20, f"backward at {level} grew the peak memory by {grown >> 20} MiB"


def _assert_only_wanted(got, want, counts, v_final, name):
    _assert_bits_equal(got[:1], want[:1], name)
    for wanted, g, w in ((counts, got[1], want[1]), (v_final, got[2], want[2])):
        if wanted:
            _assert_bits_equal((g,), (w,), name)
        else:
            assert g.numel() == 0, name


@pytest.mark.parametrize("counts, v_final", [(False, False), (True, False), (False, True)])
def test_unwanted_outputs_are_left_unwritten(counts, v_final, simd_level):
    # spikes and what is asked for bit for bit those of a full forward (a store through the null
    # address of an output not wanted would crash)
    for name, x, threshold, kwargs in _cases(non_finite_theta=True):
        want = _forward(x, threshold, kwargs)
        _assert_only_wanted(_forward(x, threshold, kwargs, counts=counts, v_final=v_final), want, counts, v_final, name)


@pytest.mark.parametrize("n", [1 << 19, (1 << 19) + 16])
def test_unwanted_outputs_with_streamed_spikes(n, simd_level):
    x = _x(torch.Generator().manual_seed(12), (8, n), torch.float32)
    want = _forward(x, 0.75, {})
    for counts, v_final in ((False, False), (True, False), (False, True)):
        got = _forward(x, 0.75, {}, counts=counts, v_final=v_final)
        _assert_only_wanted(got, want, counts, v_final, f"n={n} counts={counts} v={v_final}")


def test_public_api_returns_what_is_asked(simd_level):
    gen = torch.Generator().manual_seed(8)
    x = _x(gen, (8, 3, 5, 33), torch.float32)
    theta = torch.rand(5, generator=gen) + 0.5
    for backend in ("cpu", "reference"):
        with na_kernels.use_backend(backend):
            spikes, counts, v = na_kernels.integrate_fire(x, theta, return_v=True)
            alone = na_kernels.integrate_fire(x, theta, return_counts=False)
            with_v = na_kernels.integrate_fire(x, theta, return_counts=False, return_v=True)
            pair = na_kernels.integrate_fire(x, theta)
        assert isinstance(alone, torch.Tensor) and torch.equal(alone, spikes), backend
        assert len(with_v) == 2 and torch.equal(with_v[0], spikes) and torch.equal(with_v[1], v), backend
        assert len(pair) == 2 and torch.equal(pair[0], spikes) and torch.equal(pair[1], counts), backend
    # with a gradient the op runs whole; v_final not returned still receives none
    xg = x.clone().requires_grad_()
    alone = na_kernels.integrate_fire(xg, theta, return_counts=False)
    assert torch.equal(alone.detach(), spikes)
    alone.sum().backward()
    xr = x.clone().requires_grad_()
    na_kernels.integrate_fire(xr, theta)[0].sum().backward()
    assert torch.equal(xg.grad, xr.grad)
