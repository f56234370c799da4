"""The fast mode of a converted SNN: ``snn.to(torch.bfloat16).to(memory_format=torch.channels_last)``
and a bf16 channels-last input. What holds exactly: θ, amplitudes and statistics counters keep
their dtypes, every IF layer's spikes are those of the float32 kernel on its (bf16) input, the
spikes are 0 or the amplitude rounded to bf16, and every 4-d value stays channels-last. What
holds within a bound: the outputs against the float32 network (weights and sums in bf16)."""

import copy

import pytest
import torch
from nn_models import TinyResNet, prepared

import na_kernels
from na_kernels.nn import to_snn

CL = torch.channels_last


def _fast(snn):
    return copy.deepcopy(snn).to(torch.bfloat16).to(memory_format=CL)


def _fast_input(x):
    return x.to(torch.bfloat16).contiguous(memory_format=CL)


@pytest.fixture(scope="module")
def snn():
    torch.manual_seed(0)
    return to_snn(prepared(TinyResNet, p=3), T=8)


def test_casting_keeps_thresholds_and_counter_dtypes(snn):
    fast = _fast(snn)
    for name, layer in fast.if_layers.items():
        reference = snn.if_layers[name]
        assert layer.threshold.dtype == torch.float32 and torch.equal(layer.threshold, reference.threshold)
        assert layer.amplitude.dtype == torch.float32 and torch.equal(layer.amplitude, reference.amplitude)
        assert layer.route_sops.dtype == torch.float64
    assert all(meter.sops.dtype == torch.float64 for meter in fast.synapses.values())
    conv = next(m for m in fast.network.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.dtype == torch.bfloat16 and conv.weight.is_contiguous(memory_format=CL)
    back = copy.deepcopy(fast).float()  # and back: the values were never rounded
    assert all(torch.equal(back.if_layers[n].threshold, snn.if_layers[n].threshold) for n in snn.if_layers)


def _run_recording(snn, x):
    """(output, {IF layer: (input, spikes)}, [(module type, 4-d output channels-last?)])."""
    seen, layouts, hooks = {}, [], []
    for module in snn.network.modules():
        if module is snn.network:
            continue

        def hook(module, args, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                layouts.append((type(module).__name__, out.is_contiguous(memory_format=CL)))
            if module in names:
                seen[names[module]] = (args[0], out)

        hooks.append(module.register_forward_hook(hook))
    names = {layer: name for name, layer in snn.if_layers.items()}
    try:
        with torch.no_grad():
            return snn(x), seen, layouts
    finally:
        for h in hooks:
            h.remove()


def test_fast_mode_spikes_are_the_float32_kernels_and_the_layout_stays(snn):
    fast = _fast(snn)
    x = torch.randn(4, 3, 16, 16)
    out, seen, layouts = _run_recording(fast, _fast_input(x))
    assert out.dtype == torch.bfloat16 and out.shape == (8, 4, 5)
    assert layouts and all(cl for _, cl in layouts), [t for t, cl in layouts if not cl]
    spiking = 0
    for name, (inp, spikes) in seen.items():
        layer = fast.if_layers[name]
        assert spikes.dtype == torch.bfloat16 and spikes.is_contiguous(memory_format=CL), name
        amplitude = layer.amplitude.to(torch.bfloat16)
        assert bool(((spikes == 0) | (spikes == amplitude)).all()), name  # binary: 0 or bf16(a)
        spiking += int((spikes != 0).sum())
        # the float32 reference on the same (bf16) input: the same spikes, bit for bit
        x_seq = inp.float().reshape((8, -1) + tuple(inp.shape[1:])) if not layer.input_is_constant else None
        if x_seq is None:
            x_seq = inp.float().unsqueeze(0).expand((8,) + tuple(inp.shape))
        with na_kernels.use_backend("reference"):
            want, _ = na_kernels.integrate_fire(x_seq.contiguous(), layer.threshold, amplitude="threshold")
        assert torch.equal(spikes.float().reshape(want.shape), want.to(torch.bfloat16).float()), name
    assert spiking > 0


def test_fast_mode_statistics_count_like_float32(snn):
    fast, reference = _fast(snn), copy.deepcopy(snn)
    x = torch.randn(6, 3, 16, 16)
    for network, inp in ((reference, x), (fast, _fast_input(x))):
        network.reset_statistics()
        with torch.no_grad():
            network(inp)
    a, b = reference.statistics()["total"], fast.statistics()["total"]
    b_synapses = fast.statistics()["synapses"]
    assert a["spikes"] > 0
    # spikes flip where bf16 moves h across θ: a few percent of them on this network
    assert b["spikes"] == pytest.approx(a["spikes"], rel=0.05)
    assert b["sops_per_sample"] == pytest.approx(a["sops_per_sample"], rel=0.05)
    # float64 counters: 8 more identical runs add exactly 8 times the SOPs (a bf16 sum would round)
    with torch.no_grad():
        for _ in range(8):
            fast(_fast_input(x))
    again = fast.statistics()
    assert again["samples"] == 54
    for layer, first in zip(again["synapses"], b_synapses):
        assert layer["sops"] == 9 * first["sops"], layer["name"]


def test_fast_mode_outputs_within_the_stated_bound(snn):
    """Mean over steps and samples of max |logit difference| / max |logit| below 5 % at T = 8
    (bf16 weights: a pre-activation moves by ~2^-8 relative, flipping spikes near θ)."""
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        want = snn(x)
        got = _fast(snn)(_fast_input(x)).float()
    scale = want.abs().amax()
    assert 0 < float((got - want).abs().amax(-1).mean()) <= 0.05 * float(scale)
    assert float((got[-1].argmax(-1) == want[-1].argmax(-1)).float().mean()) >= 0.75


def test_fast_mode_chunked_and_early_exit_run(snn):
    fast = _fast(snn)
    x = _fast_input(torch.randn(4, 3, 16, 16))
    with torch.no_grad():
        whole = fast(x)
        chunked = fast(x, chunk=3)
    assert chunked.dtype == torch.bfloat16
    torch.testing.assert_close(chunked, whole, rtol=0.02, atol=0.02)
    result = fast.run_early_exit(x, 1.0)  # never confident enough: every sample runs T_max = 8
    assert result.exit_steps.tolist() == [8, 8, 8, 8]
    torch.testing.assert_close(result.outputs.float(), whole[-1].float(), rtol=0.02, atol=0.02)
