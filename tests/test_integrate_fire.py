"""integrate_fire's contract on every backend: each against the reference loop, gradients against
autograd through the reference loop and the closed-form BPTT, the conversion identity, chunking,
sizes, layouts, what the forward saves, bad input. (compile, export, opcheck and the fast path:
test_torch_integration.py.)

The Triton kernels run natively on CUDA where there is a GPU, else through Triton's interpreter
on CPU tensors (small sizes, fp32/fp16 here; bf16 through the interpreter: test_exactness_bf16.py).
"""

import types
from fractions import Fraction

import pytest
import torch
from conftest import (
    BACKENDS,
    TRITON_DEVICE,
    assert_same_forward,
    channels_last_seq,
    compile_triton_for_sm90,
    float_dtypes,
    interpreted,
    requires_triton,
)

import na_kernels
from na_kernels import _backend, _layout
from na_kernels._spec import IntegrateFireArgs, Reset, Save, Surrogate
from na_kernels.ops import integrate_fire as ops
from na_kernels.ops.integrate_fire import reference as ref

SURROGATES = Surrogate.labels()
RESETS = Reset.labels()


def _small(backend, device, big, small):
    """A size for the interpreter (slow) or a real one elsewhere."""
    return small if interpreted(backend, device) else big


def _implementation(backend, device):
    """The backend's integrate_fire module (forward, backward), as the op picks it."""
    with na_kernels.use_backend(backend):
        return _backend.implementation("integrate_fire", torch.device(device))


class _PoisonedTorch(types.SimpleNamespace):
    """Stands in for the ``torch`` module in ``_layout`` (where every backend allocates the outputs
    and their fake rules too): fresh outputs come back
    filled with NaN (float) or -7 (int), so an element a kernel forgets to write shows up."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)

    def empty(self, *args, **kwargs):
        return self._poison(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(torch.empty_like(*args, **kwargs))

    def empty_strided(self, *args, **kwargs):
        return self._poison(torch.empty_strided(*args, **kwargs))


@pytest.fixture
def poisoned(monkeypatch):
    monkeypatch.setattr(_layout, "torch", _PoisonedTorch())  # every output is allocated there


def _threshold(kind, channels, device):
    if kind == "float":
        return 0.75
    if kind == "scalar":
        return torch.tensor(1.25, device=device)
    return torch.rand(channels, device=device) + 0.25


# ------------------------------------------------------------------ the reference on its own


def test_reference_hand_example():
    # x = 0.375 (exact), theta = 1, v0 = 0.5: h = 0.875, 1.25 (fires, v 0.25), 0.625, 1.0 (tie fires, v 0)
    x = torch.full((4, 1), 0.375)
    spikes, counts, v = na_kernels.integrate_fire(x, 1.0, return_v=True)
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert counts.tolist() == [2] and v.tolist() == [0.0]
    spikes, counts, v = na_kernels.integrate_fire(x * 2, 2.0, reset="zero", v_init=0.0, amplitude=1.0, return_v=True)
    # theta 2, x 0.75, v0 0: 0.75, 1.5, 2.25 (fires, v -> 0), 0.75
    assert spikes.flatten().tolist() == [0.0, 0.0, 1.0, 0.0] and counts.tolist() == [1] and v.tolist() == [0.75]


@pytest.mark.parametrize("alpha", [0.5, 4.0])
def test_surrogate_formulas(alpha):
    u = torch.tensor([0.0, 0.1, -0.3, 1.0 / alpha, -0.5 / alpha, 2.0])
    a = alpha
    sig = torch.sigmoid(a * u)
    want = {
        "sigmoid": a * sig * (1 - sig),
        "atan": a / 2 / (1 + (torch.pi / 2 * a * u) ** 2),
        "triangle": a * torch.clamp(1 - a * u.abs(), min=0),
        "rectangle": a * (u.abs() < 0.5 / a).float(),
    }
    for name, expected in want.items():
        torch.testing.assert_close(ref.surrogate_grad(u, name, alpha), expected, rtol=1e-6, atol=1e-7)
    assert ref.surrogate_grad(torch.zeros(1), "sigmoid", alpha).item() == pytest.approx(alpha / 4)
    assert ref.surrogate_grad(torch.zeros(1), "atan", alpha).item() == pytest.approx(alpha / 2)
    assert ref.surrogate_grad(torch.zeros(1), "triangle", alpha).item() == pytest.approx(alpha)
    assert ref.surrogate_grad(torch.tensor([0.5 / alpha]), "rectangle", alpha).item() == 0.0


# ------------------------------------------------------------------------ forward, exact


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("threshold_kind", ["float", "scalar", "channel"])
def test_forward_matches_reference_loop(backend, device, reset, threshold_kind, poisoned):
    steps = _small(backend, device, 9, 5)
    for dtype in float_dtypes(backend, device):
        x = (torch.randn(steps, 2, 3, 5, 7, device=device) * 0.8 + 0.3).to(dtype)
        threshold = _threshold(threshold_kind, 3, device)
        for v_init, amplitude in ((0.5, "threshold"), (torch.randn(2, 3, 5, 7, device=device), 1.0)):
            want = ref.integrate_fire(x, threshold, v_init=v_init, reset=reset, amplitude=amplitude)
            with na_kernels.use_backend(backend):
                got = na_kernels.integrate_fire(
                    x, threshold, v_init=v_init, reset=reset, amplitude=amplitude, return_v=True
                )
            assert_same_forward(got, want)
            assert got[1].dtype == torch.int32 and got[2].dtype == torch.float32 and got[0].dtype == dtype


def test_low_precision_state_is_float32():
    # fp16 input: the membrane is float32, so 2048 steps of 1/4096 add up exactly (an fp16 state
    # would stall at 0.5 + ... once the increment is below half an ulp).
    x = torch.full((2048, 1), 1.0 / 4096, dtype=torch.float16)
    _, counts, v = na_kernels.integrate_fire(x, 1.0, v_init=0.5, return_v=True)
    assert counts.item() == 1 and v.item() == 0.0


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sizes_and_steps(backend, device, poisoned):
    cases = [(1, (1,)), (257, (1,)), (1, (1023,)), (3, (1023,)), (257, (3, 5))]
    if not (backend == "triton" and device == "cpu"):
        cases += [(257, (1023,)), (3, (2**20 + 3,))]
    for steps, step_shape in cases:
        x = torch.randn((steps,) + step_shape, device=device) * 0.7 + 0.2
        want = ref.integrate_fire(x, 1.0)
        with na_kernels.use_backend(backend):
            got = na_kernels.integrate_fire(x, 1.0, return_v=True)
        assert_same_forward(got, want)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_and_non_contiguous(backend, device):
    with na_kernels.use_backend(backend):
        for shape in [(4, 0), (3, 2, 0, 5)]:
            x = torch.randn(shape, device=device, requires_grad=True)
            spikes, counts, v = na_kernels.integrate_fire(x, 1.0, return_v=True)
            assert spikes.shape == shape and counts.shape == shape[1:] and v.shape == shape[1:]
            (spikes.sum() + v.sum()).backward()
            assert x.grad.shape == shape
        base = torch.randn(6, 5, 8, 4, device=device)
        # read in place (dense steps, stride 0 or 2N between them) or copied (the others)
        views = [
            base[::2],
            base[0].expand(7, 5, 8, 4),
            base.transpose(1, 3),
            base[:, 1:, ::3],
            base[:1].transpose(1, 3),
            base[:1, :, ::2],
        ]
        for x in views:
            assert not x.is_contiguous()
            threshold = torch.rand(x.shape[2], device=device) + 0.5
            got = na_kernels.integrate_fire(x, threshold, return_v=True)
            want = na_kernels.integrate_fire(x.contiguous(), threshold, return_v=True)
            assert_same_forward(got, want)
            assert_same_forward(got, ref.integrate_fire(x, threshold))
        # an input repeated over T (what a converted network's first layer sees): gradient sums over T
        x0 = torch.randn(5, 8, 4, device=device, requires_grad=True)
        spikes, _, v = na_kernels.integrate_fire(x0.expand(6, 5, 8, 4), 1.0, return_v=True)
        (got,) = torch.autograd.grad(spikes.sum() + v.sum(), (x0,))
    spikes, _, v = ref.integrate_fire(x0.expand(6, 5, 8, 4), 1.0)
    (want,) = torch.autograd.grad(spikes.sum() + v.sum(), (x0,))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_channels_last_in_place(backend, device, poisoned):
    """Channels-last steps are read in place and every output keeps their memory order."""
    x = channels_last_seq(_small(backend, device, 6, 3), 2, 5, 3, 4, device)
    assert not x[0].is_contiguous()
    threshold = torch.rand(5, device=device) + 0.5
    v0 = torch.randn(2, 5, 3, 4, device=device)  # contiguous: put in the layout by the op
    want = ref.integrate_fire(x, threshold, v_init=v0)
    with na_kernels.use_backend(backend):
        got = na_kernels.integrate_fire(x, threshold, v_init=v0, return_v=True)
    assert_same_forward(got, want)
    assert got[0].stride()[1:] == x.stride()[1:] and got[0].stride(0) == x[0].numel()
    assert got[1].stride() == x.stride()[1:] and got[2].stride() == x.stride()[1:]
    assert got[0].reshape(-1, 5, 3, 4).is_contiguous(memory_format=torch.channels_last)
    # gradients through the same layout
    xg = x.detach().requires_grad_()
    v0g = v0.clone().requires_grad_()
    grad_spikes = torch.randn(x.shape, device=device)
    spikes, _, v = ref.integrate_fire(xg, threshold, v_init=v0g)
    want = torch.autograd.grad((spikes * grad_spikes).sum() + v.sum(), (xg, v0g))
    with na_kernels.use_backend(backend):
        spikes, _, v = na_kernels.integrate_fire(xg, threshold, v_init=v0g, return_v=True)
    got = torch.autograd.grad((spikes * grad_spikes).sum() + v.sum(), (xg, v0g))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("reset", RESETS)
def test_non_finite_input(backend, device, reset):
    """NaN never fires and stays in v; +inf fires; the same bits (NaN included) on every backend."""
    x = torch.randn(6, 2, 8, device=device)
    x[1, 0, 0] = float("nan")
    x[2, 0, 1] = float("inf")
    x[0, 1, 2] = float("-inf")
    x[3, 1, 3] = float("inf")
    x[4, 1, 3] = float("-inf")
    want = ref.integrate_fire(x, 1.0, reset=reset)
    with na_kernels.use_backend(backend):
        got = na_kernels.integrate_fire(x, 1.0, reset=reset, return_v=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(got[2][0, 0]) and got[1][0, 0] == 0


def test_zero_reset_gradient_with_inf_input_is_finite_as_autograd():
    """Issue 12 item 3: +inf at the last step of a zero reset made h * gv = inf * 0 = NaN in the
    closed form, and the NaN spread to every earlier step; autograd through the loop gives [0.961, 0]."""
    for backend in ("reference", "cpu"):
        x = torch.tensor([[0.6], [float("inf")]], requires_grad=True)
        with na_kernels.use_backend(backend):
            (grad,) = torch.autograd.grad(na_kernels.integrate_fire(x, 1.0, reset="zero")[0].sum(), (x,))
        want_x = x.detach().clone().requires_grad_()
        (want,) = torch.autograd.grad(ref.integrate_fire(want_x, 1.0, reset="zero")[0].sum(), (want_x,))
        assert torch.isfinite(want).all() and want[0, 0] > 0.9
        torch.testing.assert_close(grad, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("save", ["h", "x"])
def test_gradients_with_infinite_inputs_equal_autograd_where_finite(
    backend, device, reset, detach_reset, save, monkeypatch
):
    """+-inf and NaN inputs at the last, a middle and the first step: wherever autograd through the
    float32 loop gives a finite gradient, the kernels give the same; loss on the spikes alone
    (v_final's gradient absent) and on spikes and v_final."""
    monkeypatch.setattr(ops, "_choose_save", lambda x_seq: Save.H if save == "h" else Save.X)
    steps = 5
    torch.manual_seed(3)
    x = torch.rand(steps, 2, 12, device=device) * 0.9
    for neuron, (step, value) in enumerate(
        [
            (steps - 1, "inf"),
            (steps - 1, "-inf"),
            (2, "inf"),
            (2, "-inf"),
            (0, "inf"),
            (0, "-inf"),
            (steps - 1, "nan"),
            (1, "nan"),
        ]
    ):
        x[step, neuron % 2, neuron] = float(value)
    grad_spikes = torch.randn(x.shape, device=device)
    grad_v = torch.randn(x.shape[1:], device=device)
    for surrogate in SURROGATES:
        for with_v in (False, True):

            def loss(spikes, v):
                return (spikes * grad_spikes).sum() + ((v * grad_v).sum() if with_v else 0)

            kwargs = dict(reset=reset, surrogate=surrogate, detach_reset=detach_reset)
            want_x = x.clone().requires_grad_()
            spikes, _, v = ref.integrate_fire(want_x, 1.0, **kwargs)
            (want,) = torch.autograd.grad(loss(spikes, v), (want_x,))
            got_x = x.clone().requires_grad_()
            with na_kernels.use_backend(backend):
                spikes, _, v = na_kernels.integrate_fire(got_x, 1.0, return_v=True, **kwargs)
            (got,) = torch.autograd.grad(loss(spikes, v), (got_x,))
            finite = torch.isfinite(want)
            assert finite.sum() >= x.numel() // 2, (surrogate, with_v)
            torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-6)
            if not with_v:  # +inf at the last step (neuron 0, the case): finite at every step
                assert torch.isfinite(got[:, 0, 0]).all() and torch.isfinite(want[:, 0, 0]).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_chunks_carrying_v_equal_one_call(backend, device):
    x = torch.randn(_small(backend, device, 33, 10), 4, 6, device=device) * 0.6 + 0.2
    threshold = torch.rand(6, device=device) + 0.5
    with na_kernels.use_backend(backend):
        for reset in RESETS:
            whole = na_kernels.integrate_fire(x, threshold, reset=reset, return_v=True)
            for split in (1, x.shape[0] // 2, x.shape[0] - 1):
                s1, c1, v1 = na_kernels.integrate_fire(x[:split], threshold, reset=reset, return_v=True)
                s2, c2, v2 = na_kernels.integrate_fire(x[split:], threshold, v_init=v1, reset=reset, return_v=True)
                assert_same_forward((torch.cat([s1, s2]), c1 + c2, v2), whole)
        # and the gradient: v_final of the first chunk carries it back (grad_v in, grad_v_init out)
        x = x.clone().requires_grad_()
        grad_spikes = torch.randn(x.shape, device=device)
        spikes, _, v = na_kernels.integrate_fire(x, threshold, surrogate="atan", return_v=True)
        (want,) = torch.autograd.grad((spikes * grad_spikes).sum() + v.sum(), (x,))
        split = x.shape[0] // 3
        s1, _, v1 = na_kernels.integrate_fire(x[:split], threshold, surrogate="atan", return_v=True)
        s2, _, v2 = na_kernels.integrate_fire(x[split:], threshold, v_init=v1, surrogate="atan", return_v=True)
        (got,) = torch.autograd.grad((torch.cat([s1, s2]) * grad_spikes).sum() + v2.sum(), (x,))
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_a_carried_nan_or_inf_potential_continues_as_one_call(backend, device):
    # integrate_fire_carried takes a v_final this op returned, NaN / inf included (an input with
    # NaN or inf leaves them there), while the public v_init refuses them
    from na_kernels.ops.integrate_fire import integrate_fire_carried

    x = torch.randn(_small(backend, device, 33, 10), 4, 6) * 0.6 + 0.2
    x[1, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x[4, 2, 2:5] = torch.tensor([float("inf"), float("nan"), -float("inf")])
    x = x.to(device)
    threshold = torch.rand(6, device=device) + 0.5
    with na_kernels.use_backend(backend):
        for reset in RESETS:
            whole = na_kernels.integrate_fire(x, threshold, reset=reset, return_v=True)
            assert whole[2].isnan().any()
            for split in (1, 3, x.shape[0] - 1):
                s1, c1, v1 = na_kernels.integrate_fire(x[:split], threshold, reset=reset, return_v=True)
                s2, c2, v2 = integrate_fire_carried(x[split:], threshold, v1, reset=reset, return_v=True)
                got = (torch.cat([s1, s2]), c1 + c2, v2)
                for g, w in zip(got, whole):
                    assert g.dtype == w.dtype and torch.equal(g.isnan(), w.isnan())
                    assert torch.equal(torch.where(g.isnan(), 0, g), torch.where(w.isnan(), 0, w))
            if device == "cpu":  # values of CPU tensors are checked
                with pytest.raises(ValueError, match="v_init potentials must be finite"):
                    na_kernels.integrate_fire(x[1:], threshold, v_init=v1, reset=reset)


# ---------------------------------------------------------------------- conversion identity


def _expected_counts(x, threshold, steps):
    """clamp(floor(T x / theta + 1/2), 0, T), in exact rational arithmetic."""
    theta = Fraction(threshold)
    out = []
    for value in x.tolist():
        q = (steps * Fraction(value) / theta + Fraction(1, 2)).__floor__()
        out.append(min(max(q, 0), steps))
    return torch.tensor(out, dtype=torch.int32)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("threshold", [1.0, 0.75, 2.0])
def test_conversion_identity(backend, device, threshold):
    """Constant input x, theta, v0 = theta/2, soft reset: counts = clamp(floor(T x/theta + 1/2), 0, T).

    x and theta are multiples of 2^-10 of magnitude < 2, so every v + x and h - theta of the
    float32 loop is exact (they are multiples of 2^-11 below 2^8): the loop computes the
    rational recursion, and the identity must hold bit for bit, ties (T x/theta + 1/2 an
    integer) included: ties fire, i.e. floor(. + 1/2), not round-half-even.
    """
    n = _small(backend, device, 2048, 512)
    k = torch.randint(-300, int(threshold * 1024) + 300, (n,))
    x = k.to(torch.float32) / 1024
    # exact ties at T = 1, 2, 4, 8 (T x / theta = 1/2), both ends of the clamp
    x[:8] = torch.tensor(
        [0.0, threshold, threshold / 2, threshold / 4, threshold / 8, threshold / 16, -1 / 1024, threshold + 1 / 1024]
    )
    max_steps = _small(backend, device, 64, 24)
    with na_kernels.use_backend(backend):
        for steps in range(1, max_steps + 1):
            x_seq = x.to(device).expand(steps, n)
            _, counts = na_kernels.integrate_fire(x_seq, threshold, v_init=0.5)
            torch.testing.assert_close(counts.cpu(), _expected_counts(x, threshold, steps), rtol=0, atol=0)
            rounded = torch.round(steps * x / threshold).clamp(0, steps).to(torch.int32)
            if steps in (2, 4, 8):  # ties exist among these inputs: round-half-even differs somewhere
                assert not torch.equal(counts.cpu(), rounded)


def test_conversion_identity_matches_noisy_quant():
    """docs/design.md: IF with theta = lam, v0 = theta/2, T steps fires noisy_quant(x, T, lam, noise=None) * T / lam."""
    x = torch.randint(-200, 1300, (1000,)).to(torch.float32) / 1024
    for steps in (1, 2, 3, 4, 7, 8, 15, 16):
        _, counts = na_kernels.integrate_fire(x.expand(steps, -1), 1.0)
        y = na_kernels.noisy_quant(x, steps, 1.0, noise=None)
        assert torch.equal(counts, (y * steps).round().to(torch.int32))


# ----------------------------------------------------------------------------- gradients


def _grad_case(backend, device, dtype, reset, surrogate, detach_reset, amplitude, threshold_kind="channel"):
    steps = _small(backend, device, 8, 5)
    torch.manual_seed(7)
    x = (torch.randn(steps, 2, 3, 11, device=device) * 0.8 + 0.3).to(dtype).requires_grad_()
    v0 = (torch.randn(2, 3, 11, device=device) * 0.5).requires_grad_()
    threshold = _threshold(threshold_kind, 3, device)
    grad_spikes = torch.randn(x.shape, device=device).to(dtype)
    grad_v = torch.randn(v0.shape, device=device)
    kwargs = dict(
        v_init=v0,
        reset=reset,
        surrogate=surrogate,
        alpha=2.5 if surrogate == "atan" else 4.0,
        detach_reset=detach_reset,
        amplitude=amplitude,
    )
    spikes, _, v = ref.integrate_fire(x, threshold, **kwargs)
    want = torch.autograd.grad((spikes * grad_spikes).float().sum() + (v * grad_v).sum(), (x, v0))
    with na_kernels.use_backend(backend):
        spikes, counts, v = na_kernels.integrate_fire(x, threshold, return_v=True, **kwargs)
    got = torch.autograd.grad((spikes * grad_spikes).float().sum() + (v * grad_v).sum(), (x, v0))
    return got, want


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("save", ["h", "x"])
def test_gradients_match_autograd_through_reference(backend, device, reset, detach_reset, surrogate, save, monkeypatch):
    monkeypatch.setattr(ops, "_choose_save", lambda x_seq: Save.H if save == "h" else Save.X)
    got, want = _grad_case(backend, device, torch.float32, reset, surrogate, detach_reset, "threshold")
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert want[0].abs().sum() > 0 and want[1].abs().sum() > 0


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradients_low_precision_and_binary_amplitude(backend, device):
    for dtype in float_dtypes(backend, device):
        for reset, surrogate in (("subtract", "sigmoid"), ("zero", "triangle")):
            got, want = _grad_case(backend, device, dtype, reset, surrogate, False, 1.0, "scalar")
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            for g, w in zip(got, want):
                assert g.dtype == w.dtype
                torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradient_paths(backend, device):
    """Only spikes, only v_final, only v_init: each grad path alone."""
    x = (torch.randn(6, 4, 5, device=device) + 0.3).requires_grad_()
    v0 = torch.randn(4, 5, device=device).requires_grad_()
    with na_kernels.use_backend(backend):
        # loss on v_final only (no grad reaches the spikes)
        _, _, v = na_kernels.integrate_fire(x, 1.0, v_init=v0, return_v=True)
        got = torch.autograd.grad(v.sum(), (x, v0))
        # loss on spikes only, x not requiring grad: gradient to v_init alone
        spikes, _ = na_kernels.integrate_fire(x.detach(), 1.0, v_init=v0)
        (got_v0,) = torch.autograd.grad(spikes.sum(), (v0,))
    _, _, v = ref.integrate_fire(x, 1.0, v_init=v0)
    want = torch.autograd.grad(v.sum(), (x, v0))
    spikes, _, _ = ref.integrate_fire(x.detach(), 1.0, v_init=v0)
    (want_v0,) = torch.autograd.grad(spikes.sum(), (v0,))
    for g, w in zip(got + (got_v0,), want + (want_v0,)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_backward_matches_closed_form_reference(backend, device):
    """The kernels' backward against the closed-form BPTT of the reference (tighter than autograd),
    from a saved h and from x_seq with h recomputed (which must give the same bits)."""
    x = torch.randn(_small(backend, device, 16, 6), 3, 4, 9, device=device) + 0.2
    threshold = torch.rand(4, device=device) + 0.5
    v0 = torch.randn(3, 4, 9, device=device)
    grad_spikes = torch.randn(x.shape, device=device)
    grad_v = torch.randn(x.shape[1:], device=device)
    theta32 = threshold.to(torch.float32)
    implementation = _implementation(backend, device)
    reference = _implementation("reference", "cpu")
    for reset in Reset:
        _, _, _, h = ref.integrate_fire(x, threshold, v_init=v0, reset=reset, return_h=True)
        for surrogate in Surrogate:
            for detach in (False, True):

                def args(save):
                    return IntegrateFireArgs(
                        v_frac=0.0,
                        reset=reset,
                        amplitude=None,
                        surrogate=surrogate,
                        alpha=3.0,
                        detach_reset=detach,
                        save=save,
                    )

                options = (torch.float32, True, True)
                want = reference.backward(grad_spikes, grad_v, h, None, None, theta32, args(Save.H), *options)
                got = implementation.backward(grad_spikes, grad_v, h, None, None, theta32, args(Save.H), *options)
                recomputed = implementation.backward(grad_spikes, grad_v, None, x, v0, theta32, args(Save.X), *options)
                for g, r, w in zip(got, recomputed, want):
                    assert torch.equal(g, r), (reset, surrogate, detach, (g - r).abs().max())
                    if surrogate == Surrogate.SIGMOID:  # exp differs by an ulp across math libraries
                        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
                    else:
                        assert torch.equal(g, w), (reset, surrogate, detach, (g - w).abs().max())


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_recompute_equals_saved_h(backend, device):
    """16-bit and stride-0 inputs keep x instead of h: the same gradient, bit for bit, as keeping h."""
    steps = _small(backend, device, 12, 5)
    cases = [
        torch.randn(steps, 3, 4, 7, device=device).to(torch.float16),
        torch.randn(3, 4, 7, device=device).expand(steps, 3, 4, 7),
        channels_last_seq(steps, 2, 4, 3, 5, device, torch.float16),
    ]
    if not (backend == "triton" and device == "cpu"):
        cases.append(torch.randn(steps, 3, 4, 7, device=device).to(torch.bfloat16))
    threshold = torch.rand(4, device=device) + 0.5
    for x in cases:
        theta32 = threshold.to(torch.float32)
        v0 = torch.randn(x.shape[1:], device=device)
        grad_spikes = torch.randn(x.shape, device=device).to(x.dtype)
        grad_v = torch.randn(x.shape[1:], device=device)
        forward_op, backward_op = ops.OP.forward_op, ops.OP.backward_op
        with na_kernels.use_backend(backend):
            _, _, _, h = forward_op(x, threshold, v0, 0.0, 0, None, 0, 4.0, False, Save.H)
            # backward op: grad_spikes, grad_v, h, x_seq, v_init, threshold, the record's fields, x_dtype, needs
            options = (0, None, 1, 2.0, False)
            extras = (x.dtype, True, True)
            want = backward_op(grad_spikes, grad_v, h, None, None, theta32, 0.0, *options, Save.H, *extras)
            got = backward_op(grad_spikes, grad_v, None, x, v0, theta32, 0.0, *options, Save.X, *extras)
            got_frac = backward_op(grad_spikes, grad_v, None, x, None, theta32, 0.25, *options, Save.X, *extras)
            _, _, _, h_frac = forward_op(x, threshold, None, 0.25, 0, None, 0, 4.0, False, Save.H)
            want_frac = backward_op(grad_spikes, grad_v, h_frac, None, None, theta32, 0.0, *options, Save.H, *extras)
        for g, w in zip(got + got_frac, want + want_frac):
            assert g.stride() == w.stride() and torch.equal(g, w)


def test_forward_saves_only_what_backward_needs(monkeypatch):
    """Nothing in inference; x_seq (no extra write) on CPU, for 16-bit and for stride-0 input;
    h for fp32 input on CUDA."""
    seen = []

    def spy(original):
        def call(*args, **options):
            seen.append(args[-1].save if isinstance(args[-1], IntegrateFireArgs) else args[-1])
            return original(*args, **options)

        return call

    # the op (compile, modes, ...: the record flattened, save last) and the eager fast path that
    # bypasses it (the record itself) get the same `save`
    monkeypatch.setattr(ops.OP, "forward_op", spy(ops.OP.forward_op))
    monkeypatch.setattr(ops.OP, "eager", spy(ops.OP.eager))
    x = torch.randn(4, 3)
    v0 = torch.zeros(3, requires_grad=True)
    na_kernels.integrate_fire(x, 1.0)
    na_kernels.integrate_fire(x.requires_grad_(), 1.0)
    with torch.no_grad():
        na_kernels.integrate_fire(x, 1.0)
    na_kernels.integrate_fire(x.detach(), 1.0, v_init=v0)
    na_kernels.integrate_fire(x.detach().bfloat16().requires_grad_(), 1.0)
    na_kernels.integrate_fire(x[0].detach().requires_grad_().expand(4, 3), 1.0)
    na_kernels.integrate_fire(x[:1].detach().requires_grad_(), 1.0)  # T = 1: stride 0 is no saving
    # CPU tensors keep x (see _choose_save); CUDA fp32 keeps h, checked below without a GPU
    assert seen == [Save.NOTHING, Save.X, Save.NOTHING, Save.X, Save.X, Save.X, Save.X]
    cuda_like = dict(device=torch.device("cuda"), shape=(4, 3), element_size=lambda: 4, stride=lambda dim: 3)
    assert ops._choose_save(types.SimpleNamespace(**cuda_like)) == Save.H
    assert ops._choose_save(types.SimpleNamespace(**{**cuda_like, "element_size": lambda: 2})) == Save.X
    assert ops._choose_save(types.SimpleNamespace(**{**cuda_like, "stride": lambda dim: 0})) == Save.X
    # and in inference the forward writes no h
    with torch.no_grad():
        *_, h = ops.OP.forward_op(x, torch.ones(1), None, 0.5, 0, None, 0, 4.0, False, Save.NOTHING)
    assert h.numel() == 0


class _CountingKernel:
    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            return self.kernel[grid](*args, **kwargs)

        return launch


@requires_triton
def test_triton_one_launch_each_way(monkeypatch):
    """All T steps in one forward launch and one backward launch (h saved or recomputed)."""
    from na_kernels.ops.integrate_fire import triton as triton_kernels

    forward = _CountingKernel(triton_kernels._integrate_fire_forward_kernel)
    backward = _CountingKernel(triton_kernels._integrate_fire_backward_kernel)
    monkeypatch.setattr(triton_kernels, "_integrate_fire_forward_kernel", forward)
    monkeypatch.setattr(triton_kernels, "_integrate_fire_backward_kernel", backward)
    with na_kernels.use_backend("triton"):
        for dtype in (torch.float32, torch.float16):  # saves h / saves x and recomputes
            x = torch.randn(7, 2, 600, device=TRITON_DEVICE).to(dtype).requires_grad_()
            spikes, counts, v = na_kernels.integrate_fire(x, 1.0, return_v=True)
            torch.autograd.grad(spikes.float().sum() + v.sum(), (x,))
    assert forward.launches == 2 and backward.launches == 2


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id != "triton"])
def test_big_backward(backend, device):
    x = (torch.randn(3, 2**20 + 3) + 0.3).requires_grad_()
    with na_kernels.use_backend(backend):
        spikes, _ = na_kernels.integrate_fire(x, 1.0, surrogate="atan", alpha=2.0)
        (got,) = torch.autograd.grad(spikes.sum(), (x,))
    spikes, _, _ = ref.integrate_fire(x, 1.0, surrogate="atan", alpha=2.0)
    (want,) = torch.autograd.grad(spikes.sum(), (x,))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


_AOT_SCRIPT = r"""
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from na_kernels._spec import Surrogate
from na_kernels.ops.integrate_fire import triton as k

target = GPUTarget("cuda", 90, 32)
for dt in ("fp32", "bf16"):
    for reset_zero in (False, True):
        sig = {"x_ptr": f"*{dt}", "spikes_ptr": f"*{dt}", "counts_ptr": "*i32", "v_final_ptr": "*fp32",
               "h_ptr": "*fp32", "theta_ptr": "*fp32", "v0_ptr": "*fp32", "steps": "i32", "neurons": "i64",
               "x_step": "i64", "channel_stride": "i64", "channels": "i32", "v_frac": "fp32", "amp": "fp32",
               "RESET_ZERO": "constexpr", "AMP_IS_THETA": "constexpr", "HAS_V0": "constexpr",
               "SAVE_H": "constexpr", "BLOCK": "constexpr"}
        constexprs = {"RESET_ZERO": reset_zero, "AMP_IS_THETA": reset_zero, "HAS_V0": reset_zero,
                      "SAVE_H": not reset_zero, "BLOCK": 512}
        triton.compile(ASTSource(k._integrate_fire_forward_kernel, sig, constexprs), target=target)
        for surrogate in map(int, Surrogate):
            sig = {"grad_spikes_ptr": f"*{dt}", "grad_v_ptr": "*fp32", "h_ptr": "*fp32", "grad_x_ptr": f"*{dt}",
                   "grad_v_init_ptr": "*fp32", "theta_ptr": "*fp32", "x_ptr": f"*{dt}", "v0_ptr": "*fp32",
                   "steps": "i32", "neurons": "i64", "x_step": "i64", "channel_stride": "i64", "channels": "i32",
                   "v_frac": "fp32", "amp": "fp32", "alpha": "fp32", "atan_scale": "fp32",
                   "half_alpha": "fp32", "half_width": "fp32", "RESET_ZERO": "constexpr",
                   "AMP_IS_THETA": "constexpr", "SURROGATE": "constexpr", "DETACH": "constexpr",
                   "HAS_GRAD_S": "constexpr", "HAS_GRAD_V": "constexpr", "STORE_GRAD_X": "constexpr",
                   "STORE_GRAD_V0": "constexpr", "RECOMPUTE": "constexpr", "HAS_V0": "constexpr",
                   "BLOCK": "constexpr"}
            constexprs = {"RESET_ZERO": reset_zero, "AMP_IS_THETA": not reset_zero, "SURROGATE": surrogate,
                          "DETACH": surrogate % 2 == 1, "HAS_GRAD_S": True, "HAS_GRAD_V": reset_zero,
                          "STORE_GRAD_X": True, "STORE_GRAD_V0": not reset_zero, "RECOMPUTE": surrogate >= 2,
                          "HAS_V0": surrogate == 3, "BLOCK": 512}
            triton.compile(ASTSource(k._integrate_fire_backward_kernel, sig, constexprs), target=target)
print("compiled")
"""


@requires_triton
@pytest.mark.slow
def test_triton_kernels_compile_for_cuda():
    """Without a GPU the interpreter runs the kernels as Python; this compiles them for sm_90
    (Triton's own PTX and cubin path, bundled ptxas) so GPU-only type errors show up anyway."""
    compile_triton_for_sm90(_AOT_SCRIPT)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(threshold=1e-50), "threshold must be > 0 in float32"),
        (dict(threshold=1e-39), "threshold must be in \\[1.17549435e-38, 3.40282347e\\+38\\] as float32"),
        (dict(threshold=1e39), "threshold must be finite in float32"),
        (dict(threshold=torch.tensor(1e-39, dtype=torch.float64)), "threshold must be in"),
        (dict(threshold=torch.tensor([1.0, 1e-39, 1.0])), "threshold must be in"),
        (dict(threshold=torch.tensor(1e39, dtype=torch.float64)), "threshold must be finite and > 0 as float32"),
        (dict(amplitude=1e39), "amplitude must be finite in float32"),
        (dict(amplitude=1e-50), "amplitude must be > 0 in float32"),
        (dict(alpha=1e39), "alpha must be finite in float32"),
        (dict(alpha=1e-50), "alpha must be > 0 in float32"),
        (dict(v_init=1e39), "v_init must be finite in float32"),
        (dict(v_init=-1e39), "v_init must be finite in float32"),
        (dict(alpha=3e38, surrogate="atan"), "alpha must be <= 2.16"),  # pi/2 * alpha overflowed
        (dict(v_init=torch.full((2, 3), 1e39, dtype=torch.float64)), "v_init potentials must be finite in float32"),
        (dict(v_init=torch.tensor([[0.0, float("nan"), 0.0]] * 2)), "v_init potentials must be finite"),
        (dict(amplitude=1e5, dtype=torch.float16), "amplitude 100000 does not fit the spikes' dtype torch.float16"),
        (dict(threshold=7e4, dtype=torch.float16), "threshold 70000 does not fit the spikes' dtype torch.float16"),
        (dict(threshold=torch.tensor([1.0, 7e4, 1.0]), dtype=torch.float16), "threshold 70000 does not fit"),
    ],
)
def test_values_float32_cannot_represent_are_refused_on_every_backend(backend, device, kwargs, match):
    """Issue 12 item 5: threshold 1e-50 became 0 (every neuron fired every step), amplitude 1e39
    inf spikes, alpha 1e39 NaN gradients, v_init 1e39 inf on two backends and an error on the third:
    one named ValueError, before dispatch, on every backend."""
    kwargs = dict(kwargs)
    x = torch.rand(3, 2, 3, device=device, dtype=kwargs.pop("dtype", torch.float32))
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    threshold = kwargs.pop("threshold", 1.0)
    with na_kernels.use_backend(backend), pytest.raises(ValueError, match=match):
        na_kernels.integrate_fire(x, threshold, **kwargs)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_thresholds_at_the_ends_of_the_float32_range(backend, device):
    """The smallest normal and the largest float32 threshold are accepted and fire as the loop says."""
    for theta in (2.0**-126, float(torch.finfo(torch.float32).max)):
        x = torch.tensor([0.0, 0.5, 1.0, -1.0]).expand(3, 4) * theta
        want = ref.integrate_fire(x, theta)
        with na_kernels.use_backend(backend):
            got = na_kernels.integrate_fire(x.to(device), theta, return_v=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.cpu(), w, rtol=0, atol=0)
        assert got[1].tolist() == [0, 2, 3, 0]


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda x: na_kernels.integrate_fire(x[:0]), ValueError, "T >= 1"),
        (lambda x: na_kernels.integrate_fire(x[0, 0, 0]), ValueError, "rank >= 2"),
        (lambda x: na_kernels.integrate_fire(x.to(torch.int32)), TypeError, "x_seq"),
        (lambda x: na_kernels.integrate_fire(x.double()), TypeError, "x_seq"),
        (lambda x: na_kernels.integrate_fire(x.tolist()), TypeError, "x_seq"),
        (lambda x: na_kernels.integrate_fire(x, 0.0), ValueError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x, -1.0), ValueError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x, float("inf")), ValueError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x, float("nan")), ValueError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x, torch.tensor(0.0)), ValueError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x, torch.tensor([1.0, float("nan"), 1.0])), ValueError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x, torch.ones(4)), ValueError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x, torch.ones(2, 3)), ValueError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x, torch.ones(3, dtype=torch.int64)), TypeError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x, "1"), TypeError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x[:, 0, 0], torch.ones(3)), ValueError, "threshold"),
        (lambda x: na_kernels.integrate_fire(x, v_init=torch.zeros(2, 3)), ValueError, "v_init"),
        (lambda x: na_kernels.integrate_fire(x, v_init=torch.zeros(5, 2, 3, 4)), ValueError, "v_init"),
        (lambda x: na_kernels.integrate_fire(x, v_init=torch.zeros(2, 3, 4, dtype=torch.int32)), TypeError, "v_init"),
        (lambda x: na_kernels.integrate_fire(x, v_init=float("nan")), ValueError, "v_init"),
        (lambda x: na_kernels.integrate_fire(x, v_init="half"), TypeError, "v_init"),
        (lambda x: na_kernels.integrate_fire(x, reset="hard"), ValueError, "reset"),
        (lambda x: na_kernels.integrate_fire(x, surrogate="erf"), ValueError, "surrogate"),
        (lambda x: na_kernels.integrate_fire(x, amplitude="one"), ValueError, "amplitude"),
        (lambda x: na_kernels.integrate_fire(x, amplitude=0.0), ValueError, "amplitude"),
        (lambda x: na_kernels.integrate_fire(x, amplitude=None), TypeError, "amplitude"),
        (lambda x: na_kernels.integrate_fire(x, alpha=0.0), ValueError, "alpha"),
        (lambda x: na_kernels.integrate_fire(x, alpha=-2.0), ValueError, "alpha"),
        (lambda x: na_kernels.integrate_fire(x, alpha=float("inf")), ValueError, "alpha"),
        (lambda x: na_kernels.integrate_fire(x, detach_reset=1), TypeError, "detach_reset"),
        (lambda x: na_kernels.integrate_fire(x, return_v="yes"), TypeError, "return_v"),
        (lambda x: na_kernels.integrate_fire(x.to_sparse()), TypeError, "x_seq must be a dense tensor"),
        (
            lambda x: na_kernels.integrate_fire(x, v_init=torch.zeros(2, 3, 4).to_sparse()),
            TypeError,
            "v_init must be a dense",
        ),
        (lambda x: na_kernels.integrate_fire(x, torch.ones(3).to_sparse()), TypeError, "threshold must be a dense"),
    ],
)
def test_bad_input(call, error, words):
    x = torch.randn(5, 2, 3, 4)
    with pytest.raises(error, match=words):
        call(x)


# ------------------------------------------------------------------------ SpikingJelly peer


_SJ_SURROGATES = {
    "sigmoid": ("Sigmoid", 4.0),
    "atan": ("ATan", 2.0),
    "triangle": ("PiecewiseQuadratic", 1.5),
    "rectangle": ("Rect", 1.0),
}


@pytest.mark.peers
@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id != "triton"])
@pytest.mark.parametrize("surrogate_name", SURROGATES)
@pytest.mark.parametrize("reset", RESETS)
def test_matches_spikingjelly_ifnode(backend, device, surrogate_name, reset):
    """Same spikes, final v and surrogate gradients as SpikingJelly's multi-step IFNode (when installed).

    SpikingJelly's PiecewiseQuadratic, alpha (1 - alpha |u|) on |u| <= 1/alpha, is our "triangle".
    """
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")
    class_name, alpha = _SJ_SURROGATES[surrogate_name]
    if not hasattr(surrogate, class_name):
        pytest.skip(f"this SpikingJelly has no surrogate.{class_name}")
    threshold = 1.5
    x = (torch.randn(8, 4, 16) * 1.2 + 0.5).requires_grad_()
    for detach_reset in (False, True):
        node = neuron.IFNode(
            v_threshold=threshold,
            v_reset=None if reset == "subtract" else 0.0,
            surrogate_function=getattr(surrogate, class_name)(alpha=alpha),
            detach_reset=detach_reset,
            step_mode="m",
        )
        node.v = 0.5 * threshold
        want = node(x)
        (want_grad,) = torch.autograd.grad((want * torch.arange(16.0)).sum() + node.v.sum(), (x,))
        with na_kernels.use_backend(backend):
            got, _, got_v = na_kernels.integrate_fire(
                x,
                threshold,
                reset=reset,
                surrogate=surrogate_name,
                alpha=alpha,
                amplitude=1.0,
                detach_reset=detach_reset,
                return_v=True,
            )
        (got_grad,) = torch.autograd.grad((got * torch.arange(16.0)).sum() + got_v.sum(), (x,))
        assert torch.equal(got, want) and torch.equal(got_v, node.v)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_float64_threshold_is_read_as_float32(backend, device):
    """The same rule as noisy_quant's lam (and v_init): a float64 threshold is read as float32."""
    x = torch.randn(6, 2, 3, 5, device=device)
    theta = torch.tensor([0.5, 1.25, 2.0], dtype=torch.float64, device=device)
    with na_kernels.use_backend(backend):
        got = na_kernels.integrate_fire(x, theta, return_v=True)
        want = na_kernels.integrate_fire(x, theta.float(), return_v=True)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
