"""SpikingNetwork: chunked runs, state dicts, gradients, dtypes, pickling."""

import io

import pytest
import torch
from nn_models import SmallCNN, TinyResNet, equal_by_position, poisoned, prepared, randomize_batchnorm
from torch import nn

from na_kernels.nn import NoisyQuant, replace_activations, to_snn


@pytest.mark.slow
def test_chunked_equals_unchunked():
    model = prepared(TinyResNet)
    x = torch.randn(4, 3, 16, 16)
    whole = to_snn(model, T=12)
    chunked = to_snn(model, T=12, chunk=5)
    with torch.no_grad():
        a = whole(x)
        b = chunked(x)
        c = whole(x, chunk=4)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)
    for name, layer in whole.if_layers.items():
        assert int(layer.spikes) == 2 * int(chunked.if_layers[name].spikes)  # whole ran twice


def test_chunks_equal_one_call_for_inputs_with_nan_and_inf():
    # snn(x) accepts NaN and +-inf (integrate_fire's documented semantics); the potential a chunk
    # carries then holds them, and the next chunk must continue from it as one call would
    model = prepared(SmallCNN)
    x = poisoned(torch.randn(4, 3, 16, 16))
    snn = to_snn(model, T=6)
    with torch.no_grad():
        whole = snn(x)
        for chunk in (1, 4):
            part = snn(x, chunk=chunk)
            assert torch.equal(part.isnan(), whole.isnan())
            torch.testing.assert_close(part, whole, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_chunks_equal_one_call_bit_for_bit_with_nan_and_inf_on_an_exact_network():
    # dyadic weights and inputs: every linear sum is exact whatever the batch size or summation
    # order (a conv may pick an inexact algorithm, e.g. Winograd, by batch size), so a chunked run
    # must equal one call bit for bit, NaN positions included
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(2 * 8 * 8, 16),
        NoisyQuant(3, lam=1.0, noise=None),
        nn.Linear(16, 16),
        NoisyQuant(3, lam=2.0, noise=None),
        nn.Linear(16, 3),
    ).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.round(parameter * 8) / 8)
    x = poisoned(torch.round(torch.randn(4, 2, 8, 8) * 16) / 16)
    snn = to_snn(model, T=7)
    seen = []
    snn.if_layers["2"].register_forward_pre_hook(lambda m, args: seen.append(bool(args[0].isnan().any())))
    with torch.no_grad():
        whole = snn(x)
        assert seen == [True]  # NaN reaches the IF layer, so the potential it carries holds NaN
        for chunk in (1, 3, 6):
            assert equal_by_position(snn(x, chunk=chunk), whole), chunk


def test_snn_state_dict_round_trip():
    model = prepared(SmallCNN, per_channel=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh, _ = replace_activations(randomize_batchnorm(SmallCNN()), p=4, noise=None, lam="auto", per_channel=True)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(2, 3, 16, 16)
    a, b = to_snn(model, T=4), to_snn(fresh.eval(), T=4)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x))
    c = to_snn(fresh.eval(), T=4)
    c.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(c(x), a(x))


def test_gradients_flow_through_the_snn():
    model = nn.Sequential(nn.Linear(4, 8), NoisyQuant(3, lam=1.0), nn.Linear(8, 2)).eval()
    snn = to_snn(model, T=4)
    snn(torch.randn(3, 4))[-1].sum().backward()
    assert snn.network.get_submodule("0").weight.grad is not None


def test_bf16_snn_runs():
    model = prepared(SmallCNN)
    snn = to_snn(model, T=4).to(torch.bfloat16)
    with torch.no_grad():
        out = snn(torch.randn(2, 3, 16, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_chunked_gradients_equal_unchunked():
    model = nn.Sequential(
        nn.Linear(4, 8), NoisyQuant(3, lam=1.0), nn.Linear(8, 8), NoisyQuant(3, lam=1.0), nn.Linear(8, 2)
    ).eval()
    x = torch.randn(3, 4)
    grads = []
    for chunk in (None, 2):
        snn = to_snn(model, T=6, chunk=chunk)
        snn(x)[-1].square().sum().backward()
        grads.append(snn.network.get_submodule("0").weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_pickled_snn_loads_and_runs(tmp_path):
    snn = to_snn(prepared(SmallCNN), T=4)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = snn(x)
    path = tmp_path / "snn.pt"
    torch.save(snn, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded.statistics()["total"]["spikes"] == snn.statistics()["total"]["spikes"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)
    assert loaded.statistics()["total"]["spikes"] == 2 * snn.statistics()["total"]["spikes"]
