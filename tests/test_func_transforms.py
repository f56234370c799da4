"""torch.func transforms, double backward and torch.jit.trace on both ops (issue 12 item 8).

torch 2.13's ``register_autograd`` cannot run under torch.func ("must override setup_context",
pytorch/pytorch#170834): inside a transform the ops run through an autograd.Function with
setup_context, and both custom ops have a per-sample vmap rule (``ops/_registration.py``). The
gradients are compared with autograd through the reference (plain PyTorch, the float32 loop).
"""

import warnings

import pytest
import torch
from conftest import BACKENDS

import na_kernels
import na_kernels.nn
from na_kernels.ops.integrate_fire import reference as ref_if
from na_kernels.ops.noisy_quant import reference as ref_nq

NOISES = [None, "uniform"]


def _nq(backend, noise):
    def f(x, lam):
        with na_kernels.use_backend(backend):
            return na_kernels.noisy_quant(x, 3, lam, noise=noise, seed=5)

    return f


def _nq_reference(noise):
    return lambda x, lam: ref_nq.noisy_quant(x, 3, lam, noise=noise, seed=5)


def _inputs(device):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, device=device) * 1.5
    lam = torch.tensor([0.8, 1.3, 2.0], device=device)
    return x, lam


def _reference_grads(f, x, lam, cotangent):
    x, lam = x.clone().requires_grad_(), lam.clone().requires_grad_()
    return torch.autograd.grad(f(x, lam), (x, lam), cotangent)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("noise", NOISES)
def test_noisy_quant_func_grad_vjp_jacrev(backend, device, noise):
    x, lam = _inputs(device)
    f, reference = _nq(backend, noise), _nq_reference(noise)
    cotangent = torch.randn(x.shape, device=device)
    want_x, want_lam = _reference_grads(reference, x, lam, cotangent)

    got_x, got_lam = torch.func.grad(lambda x, lam: (f(x, lam) * cotangent).sum(), argnums=(0, 1))(x, lam)
    torch.testing.assert_close(got_x, want_x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_lam, want_lam, rtol=1e-5, atol=1e-5)

    y, pullback = torch.func.vjp(f, x, lam)
    assert torch.equal(y, f(x, lam))
    got_x, got_lam = pullback(cotangent)
    torch.testing.assert_close(got_x, want_x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_lam, want_lam, rtol=1e-5, atol=1e-5)

    small_x = x[:1, :, :2]  # a 6 x 6 Jacobian: the straight-through mask on the diagonal
    jacobian = torch.func.jacrev(lambda x: f(x, lam))(small_x).reshape(6, 6)
    want = torch.autograd.functional.jacobian(lambda x: reference(x, lam), small_x).reshape(6, 6)
    torch.testing.assert_close(jacobian, want, rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(jacobian - torch.diag(torch.diagonal(jacobian))) == 0


def _if(backend, **kwargs):
    def f(x_seq, v0):
        with na_kernels.use_backend(backend):
            spikes, _, v = na_kernels.integrate_fire(x_seq, 0.9, v_init=v0, return_v=True, **kwargs)
        return spikes, v

    return f


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_integrate_fire_func_grad_vjp_jacrev(backend, device, reset):
    torch.manual_seed(1)
    x_seq = torch.rand(4, 2, 3, device=device)
    v0 = torch.rand(2, 3, device=device) * 0.5
    kwargs = dict(reset=reset, surrogate="atan", alpha=2.0)
    f = _if(backend, **kwargs)
    gs, gv = torch.randn(x_seq.shape, device=device), torch.randn(v0.shape, device=device)

    def reference(x_seq, v0):
        spikes, _, v = ref_if.integrate_fire(x_seq, 0.9, v_init=v0, **kwargs)
        return spikes, v

    xr, vr = x_seq.clone().requires_grad_(), v0.clone().requires_grad_()
    spikes, v = reference(xr, vr)
    want = torch.autograd.grad((spikes * gs).sum() + (v * gv).sum(), (xr, vr))

    def loss(x_seq, v0):
        spikes, v = f(x_seq, v0)
        return (spikes * gs).sum() + (v * gv).sum()

    got = torch.func.grad(loss, argnums=(0, 1))(x_seq, v0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    _, pullback = torch.func.vjp(f, x_seq, v0)
    for g, w in zip(pullback((gs, gv)), want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)

    jacobian = torch.func.jacrev(lambda x: f(x, v0)[1])(x_seq)  # d v_final / d x_seq: [2, 3, 4, 2, 3]
    want_jacobian = torch.autograd.functional.jacobian(lambda x: reference(x, v0)[1], x_seq)
    torch.testing.assert_close(jacobian, want_jacobian, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id != "triton"])
def test_vmap_is_the_per_sample_call(backend, device):
    x = torch.randn(3, 2, 5, device=device)
    with na_kernels.use_backend(backend):
        y = torch.func.vmap(lambda x: na_kernels.noisy_quant(x, 3, 1.0, seed=7))(x)
        assert torch.equal(y, torch.stack([na_kernels.noisy_quant(x[i], 3, 1.0, seed=7) for i in range(3)]))
        spikes = torch.func.vmap(lambda x: na_kernels.integrate_fire(x, 0.7)[0])(x.abs())
        assert torch.equal(spikes, torch.stack([na_kernels.integrate_fire(x[i].abs(), 0.7)[0] for i in range(3)]))


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id != "triton"])
def test_double_backward_raises_a_clear_error(backend, device):
    x = torch.randn(2, 3, device=device, requires_grad=True)
    lam = torch.tensor(1.0, device=device, requires_grad=True)
    with na_kernels.use_backend(backend):
        (grad_lam,) = torch.autograd.grad(na_kernels.noisy_quant(x, 3, lam).sum(), lam, create_graph=True)
        with pytest.raises(NotImplementedError, match="na_kernels.noisy_quant: double backward .* not supported"):
            grad_lam.backward()
        spikes, _ = na_kernels.integrate_fire(x.reshape(2, 3, 1), 1.0)
        (grad_x,) = torch.autograd.grad(spikes.sum(), x, create_graph=True)
        with pytest.raises(NotImplementedError, match="na_kernels.integrate_fire: double backward"):
            grad_x.sum().backward()
        second = torch.func.grad(lambda x: torch.func.grad(lambda x: na_kernels.noisy_quant(x, 3, 1.0).sum())(x).sum())
        with pytest.raises(NotImplementedError, match="na_kernels.noisy_quant: double backward"):
            second(x.detach())
        with pytest.raises(NotImplementedError, match="na_kernels.integrate_fire: forward-mode AD"):
            torch.func.jvp(lambda x: na_kernels.integrate_fire(x, 1.0)[0], (x.detach(),), (torch.ones(2, 3),))


class _Small(torch.nn.Module):
    """Linear -> NoisyQuant -> IF over 4 steps, the output the spike rate."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 5)
        self.quant = na_kernels.nn.NoisyQuant(3, lam=1.0)

    def forward(self, x):
        y = self.quant(self.fc(x))
        spikes, _ = na_kernels.integrate_fire(y.unsqueeze(0).expand(4, -1, -1), 1.0)
        return spikes.mean(0)


def test_jit_trace_of_a_model_in_eval():
    """What a user does: torch.jit.trace(model.eval(), example). Its sanity check traces again
    under no_grad, where integrate_fire used to record save=NOTHING instead of X: the graphs
    differed. The traced module equals the model on new inputs, forward and backward."""
    torch.manual_seed(3)
    model = _Small().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, torch.randn(2, 6))
    x = torch.randn(7, 6, requires_grad=True)
    assert torch.equal(traced(x), model(x))
    got = torch.autograd.grad(traced(x).sum(), (x, model.fc.weight))
    want = torch.autograd.grad(model(x).sum(), (x, model.fc.weight))
    for g, w in zip(got, want):
        assert torch.equal(g, w)
