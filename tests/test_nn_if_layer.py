"""IFLayer: spike counts, the kernel on every backend, per-channel thresholds, carried potentials."""

import pytest
import torch
from torch import nn

from na_kernels.nn import IFLayer, NoisyQuant, to_snn


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_identity_holds_on_every_backend(backend):
    from conftest import HAS_TRITON

    import na_kernels

    if backend == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), NoisyQuant(3, lam=1.0, noise=None), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).eval()
    x = torch.randn(2, 2, 4, 4)
    snn = to_snn(model, T=3, chunk=2)  # constant input to the IF layer, chunked: v_init as a tensor
    with na_kernels.use_backend(backend), torch.no_grad():
        out = snn(x)
        torch.testing.assert_close(out[-1], model(x), rtol=1e-5, atol=1e-5)


def run_constant(layer, x, T):
    layer.time_steps = T
    with torch.no_grad():
        return layer(x).reshape((T,) + tuple(x.shape))


@pytest.mark.parametrize("T", [1, 3, 8])
def test_constant_input_gives_the_rounded_rate(T):
    theta = torch.tensor(1.5)
    layer = IFLayer("a", theta, p=3, input_is_constant=True)
    x = torch.linspace(-1.0, 2.0, 31).reshape(1, 31)
    out = run_constant(layer, x, T)
    counts = (out / theta).sum(0)
    torch.testing.assert_close(counts, torch.clamp(torch.floor(x * T / theta + 0.5), 0, T))
    assert set(out.unique().tolist()) <= {0.0, 1.5}  # spikes of amplitude θ
    assert int(layer.spikes) == int(counts.sum()) and layer.neuron_steps == 31 * T


def test_per_channel_thresholds_apply_along_dim_1():
    theta = torch.tensor([0.5, 1.0, 2.0])
    layer = IFLayer("a", theta, p=3, input_is_constant=True)
    layer.record_channels = True
    x = torch.full((2, 3, 4), 0.9)
    counts = (run_constant(layer, x, 6) / theta.reshape(1, 1, 3, 1)).sum(0)
    expected = torch.clamp(torch.floor(0.9 * 6 / theta + 0.5), 0, 6).reshape(1, 3, 1).expand(2, 3, 4)
    torch.testing.assert_close(counts, expected)
    assert layer.per_channel and layer.channel_spikes.tolist() == expected.sum((0, 2)).long().tolist()


def test_carried_potential_continues_the_run_and_reset_state_forgets_it():
    x = torch.rand(4, 5) * 2
    whole = run_constant(IFLayer("a", torch.tensor(1.0), p=3, input_is_constant=True), x, 7)
    layer = IFLayer("a", torch.tensor(1.0), p=3, input_is_constant=True)
    layer.carry_state = True
    parts = torch.cat([run_constant(layer, x, 3), run_constant(layer, x, 4)])
    torch.testing.assert_close(parts, whole)
    layer.reset_state()
    assert layer.v is None and "v_init=0.5" in repr(layer)


def test_ann_mode_is_the_deterministic_quantizer():
    import na_kernels

    layer = IFLayer("a", torch.tensor(2.0), p=3)
    layer.mode = "ann"
    x = torch.randn(4, 6) * 2
    torch.testing.assert_close(layer(x), na_kernels.noisy_quant(x, 3, 2.0, noise=None))


def test_calibrated_follows_every_threshold_replacement_whatever_the_ids():
    # CPython reuses the id of a freed tensor: a cache keyed on id() and _version returned the
    # answer of an earlier threshold (the wrong spike amplitude, silently)
    layer = IFLayer("layer", torch.tensor(1.0), 3)
    x = torch.full((3, 1, 1), 0.9)  # [T*B, C, 1], T = 3, B = 1
    layer.time_steps = 3
    for _ in range(200):
        layer.threshold = torch.tensor(1.0)  # = the amplitude: not calibrated
        assert not layer.calibrated
        layer.threshold = torch.tensor(0.5)
        layer.threshold = torch.tensor(0.25)  # two replacements without a read in between
        assert layer.calibrated
        spikes = layer(x)
        assert set(spikes.unique().tolist()) <= {0.0, 1.0}  # amplitude λ = 1, not θ = 0.25
    layer.threshold.fill_(1.0)  # an in-place edit back to λ is seen (eager mode)
    assert not layer.calibrated


@pytest.mark.slow
def test_compiled_snn_compiles_once_per_shape():
    import torch._dynamo
    from nn_models import SmallCNN

    from na_kernels.nn import replace_activations, to_snn

    torch._dynamo.reset()
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model, _ = replace_activations(SmallCNN(width=4), p=3, lam=2.0)
    snn = to_snn(model.eval(), T=3)
    for layer in list(snn.if_layers.values())[:2]:
        layer.threshold = layer.threshold * 0.9  # calibrated layers too
    compiled = torch.compile(snn, backend=counting_backend)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = snn(x)
        first = compiled(x)
        after_first = len(compiles)
        for _ in range(3):
            out = compiled(x)
    assert after_first >= 1 and len(compiles) == after_first  # no recompilation for the same shape
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch._dynamo.reset()


def test_a_sparse_input_to_a_converted_network_is_refused_by_name():
    snn = to_snn(nn.Sequential(nn.Linear(4, 4), NoisyQuant(3, lam=1.0)).eval(), T=2)
    with pytest.raises(TypeError, match="must be a dense tensor.*to_dense"):
        snn(torch.randn(3, 4).to_sparse())
    layer = IFLayer("layer", torch.tensor(1.0), 3)
    with pytest.raises(TypeError, match="IF layer layer: x must be a dense tensor"):
        layer(torch.randn(2, 4).to_sparse())
