"""A converted SNN in channels-last memory order (``snn.to(memory_format=torch.channels_last)``
and a channels-last input): the IF layers take and return channels-last steps (no reorder back
to NCHW between the convolutions), and the outputs are the default layout's up to the rounding
of the convolutions (oneDNN may sum input channels in another order in channels-last)."""

import copy

import pytest
import torch
from nn_models import TinyResNet, prepared

from na_kernels.nn import to_snn

CL = torch.channels_last


def _layouts(snn, x):
    """(output, {IF layer name: (input channels-last?, output channels-last?)}) of one run."""
    seen = {}
    hooks = [
        layer.register_forward_hook(
            lambda module, args, out: seen.__setitem__(
                module.name, (args[0].is_contiguous(memory_format=CL), out.is_contiguous(memory_format=CL))
            )
        )
        for layer in snn.if_layers.values()
    ]
    try:
        with torch.no_grad():
            return snn(x), seen
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_channels_last_snn_keeps_the_layout_and_the_outputs(dtype):
    torch.manual_seed(0)
    snn = to_snn(prepared(TinyResNet), T=4).to(dtype)
    x = torch.randn(3, 3, 16, 16).to(dtype)
    want, default_layouts = _layouts(snn, x)
    assert not any(inp for inp, _ in default_layouts.values())  # the default stays NCHW

    snn_cl = copy.deepcopy(snn).to(memory_format=CL)
    snn_cl.reset_statistics()
    got, layouts = _layouts(snn_cl, x.contiguous(memory_format=CL))
    four_d = [name for name, layer in snn_cl.if_layers.items() if name in layouts]
    assert four_d and all(layouts[name] == (True, True) for name in four_d), layouts
    for name in four_d:  # the same spikes, layer by layer, up to a flip where h lies within rounding of θ
        spikes, spikes_cl = int(snn.if_layers[name].spikes), int(snn_cl.if_layers[name].spikes)
        assert spikes > 0 and abs(spikes_cl - spikes) <= 0.01 * spikes, name
    tolerance = {} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(got, want, **tolerance)


def test_channels_last_statistics_match():
    torch.manual_seed(1)
    model = prepared(TinyResNet)
    x = torch.randn(2, 3, 16, 16)
    snn, snn_cl = to_snn(model, T=4), to_snn(model, T=4).to(memory_format=CL)
    with torch.no_grad():
        snn(x)
        snn_cl(x.contiguous(memory_format=CL))
    a, b = snn.statistics()["total"], snn_cl.statistics()["total"]
    assert a["spikes"] > 0
    assert b["spikes"] == pytest.approx(a["spikes"], rel=1e-2)
    assert b["sops_per_sample"] == pytest.approx(a["sops_per_sample"], rel=1e-2)
