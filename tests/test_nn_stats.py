"""Spike statistics, SOPs and energy of a SpikingNetwork (SynapseMeter, collect/format_statistics)."""

import itertools

import pytest
import torch
from nn_models import SmallCNN, TinyResNet, prepared
from torch import nn
from torch.nn import functional as F

import na_kernels
from na_kernels.nn import NoisyQuant, format_statistics, to_snn


def capture_if_inputs(snn):
    inputs = {}
    for layer in snn.if_layers.values():
        layer.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m.name, args[0].detach().clone()))
    return inputs


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("model_class", [SmallCNN, TinyResNet])
def test_spike_totals_are_the_kernels_counts(model_class, layout):
    model = prepared(model_class, per_channel=True)
    T, batch = 5, 3
    snn = to_snn(model, T=T).to(memory_format=layout)
    for layer in snn.if_layers.values():
        layer.record_channels = True  # per-channel counts (calibrate_thresholds reads them)
    inputs = capture_if_inputs(snn)
    with torch.no_grad():
        snn(torch.randn(batch, 3, 16, 16).contiguous(memory_format=layout))
    stats = snn.statistics()
    assert stats["samples"] == batch and stats["sample_steps"] == batch * T
    for row in stats["if_layers"]:
        layer = snn.if_layers[row["name"]]
        x = inputs[row["name"]]
        x_seq = (
            x.unsqueeze(0).expand((T,) + tuple(x.shape))
            if layer.input_is_constant
            else x.reshape((T, batch) + tuple(x.shape[1:]))
        )
        spikes, counts = na_kernels.integrate_fire(x_seq, layer.threshold, v_init=0.5)
        assert row["spikes"] == int(counts.sum())
        assert row["neurons"] == counts[0].numel()
        assert row["firing_rate"] == pytest.approx(int(counts.sum()) / (counts.numel() * T))
        theta = layer.threshold.reshape((1, 1, -1) + (1,) * (x_seq.dim() - 3))
        torch.testing.assert_close((spikes / theta).sum(), counts.sum().float())
        torch.testing.assert_close(
            layer.channel_spikes, counts.transpose(0, 1).reshape(counts.shape[1], -1).sum(1).long()
        )
    assert stats["total"]["spikes"] == sum(row["spikes"] for row in stats["if_layers"])


@pytest.mark.parametrize(
    "shape, layout",
    [
        ((6, 5, 4, 3), torch.contiguous_format),
        ((6, 5, 4, 3), torch.channels_last),
        ((0, 5, 4, 3), torch.channels_last),
        ((4, 3, 2, 5, 3), torch.channels_last_3d),
        ((7, 9), torch.contiguous_format),
        ((2, 3, 4), "transposed"),
        ((2, 3, 4), "batch inside"),
    ],
)
def test_sum_over_batch_reads_any_layout(shape, layout):
    """An IF layer's per-neuron spike totals over the batch, from counts in any memory order."""
    from na_kernels.nn.if_layer import sum_over_batch

    counts = torch.randint(0, 50, shape, dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    if layout == "transposed":
        counts = counts.transpose(1, 2)
    elif layout == "batch inside":  # dim 0 not outermost in memory: torch's own reduction
        counts = counts.transpose(0, 2).contiguous().transpose(0, 2)
    else:
        counts = counts.contiguous(memory_format=layout)
    summed = sum_over_batch(counts)
    assert summed.dtype == torch.int32
    assert torch.equal(summed, counts.sum(0, dtype=torch.int32))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_an_empty_batch_counts_nothing(layout):
    snn = to_snn(prepared(TinyResNet), T=4).to(memory_format=layout)
    with torch.no_grad():
        out = snn(torch.empty(0, 3, 16, 16).contiguous(memory_format=layout))
    assert out.shape == (4, 0, 5)
    assert snn.statistics()["total"]["spikes"] == 0


def test_sops_are_exact_for_conv_and_linear():
    model = prepared(SmallCNN)
    T, batch = 4, 2
    snn = to_snn(model, T=T)
    captured = {}
    for name in ("features.3", "fc2"):
        snn.network.get_submodule(name).register_forward_pre_hook(
            lambda m, args, name=name: captured.__setitem__(name, args[0].detach().clone())
        )
    with torch.no_grad():
        snn(torch.randn(batch, 3, 16, 16))
    synapses = {s["name"]: s for s in snn.statistics()["synapses"]}
    conv = snn.network.get_submodule("features.3")
    indicator = (captured["features.3"] != 0).float()
    windows = F.unfold(indicator, conv.kernel_size, padding=conv.padding, stride=conv.stride)
    assert synapses["features.3"]["sops"] == pytest.approx(float(windows.sum()) * conv.out_channels)
    assert synapses["features.3"]["spike_driven"] and synapses["features.3"]["sources"] == ["features.2"]
    assert synapses["fc2"]["sops"] == pytest.approx(float((captured["fc2"] != 0).sum()) * 5)
    # the stem is analog: MACs of one pass per sample (its input is the same at every step)
    stem = synapses["features.0"]
    assert not stem["spike_driven"] and stem["macs"] == batch * stem["macs_per_sample"]
    assert stem["macs_per_sample"] == 8 * 16 * 16 * 3 * 3 * 3


def test_energy_estimate_and_custom_constants():
    model = nn.Sequential(nn.Linear(6, 16), NoisyQuant(3, lam=1.0, noise=None), nn.Linear(16, 3)).eval()
    snn = to_snn(model, T=3)
    x = torch.randn(10, 6)
    with torch.no_grad():
        snn(x)
    stats = snn.statistics()
    spikes = stats["if_layers"][0]["spikes"]
    assert stats["total"]["ann_macs_per_sample"] == 6 * 16 + 16 * 3
    assert stats["if_layers"][0]["sops"] == pytest.approx(spikes * 3)
    energy = stats["energy"]
    assert energy["ann_j_per_sample"] == pytest.approx(144 * 4.6e-12)
    assert energy["snn_j_per_sample"] == pytest.approx((spikes * 3 * 0.9e-12 + 10 * 96 * 4.6e-12) / 10)
    custom = snn.statistics(energy_per_ac=1e-12, energy_per_mac=2e-12)["energy"]
    assert custom["ann_j_per_sample"] == pytest.approx(144 * 2e-12)
    with pytest.raises(ValueError, match="energy_per_ac"):
        snn.statistics(energy_per_ac=-1.0)


def test_table_reset_and_switch():
    snn = to_snn(prepared(TinyResNet), T=3)
    with torch.no_grad():
        snn(torch.randn(2, 3, 16, 16))
    table = snn.statistics_table()
    assert "layer1.0.relu_call2" in table and "total" in table and "SNN/ANN" in table
    assert table == format_statistics(snn.statistics())
    snn.reset_statistics()
    assert snn.statistics()["total"]["spikes"] == 0 and snn.statistics()["samples"] == 0
    snn.record_statistics(False)
    with torch.no_grad():
        snn(torch.randn(2, 3, 16, 16))
    assert snn.statistics()["total"]["spikes"] == 0
    snn.record_statistics(True)
    with torch.no_grad():
        snn(torch.randn(2, 3, 16, 16))
    assert snn.statistics()["total"]["spikes"] > 0


def test_sops_of_a_grouped_strided_conv():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        NoisyQuant(3, lam=0.5, noise=None),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
    ).eval()
    snn = to_snn(model, T=3)
    captured = {}
    snn.network.get_submodule("2").register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0].clone()))
    with torch.no_grad():
        snn(torch.randn(2, 2, 7, 7))
    indicator = (captured["x"] != 0).float()
    expected = 0.0
    for group in range(2):  # each input spike reaches the 3 output channels of its group
        windows = F.unfold(indicator[:, 2 * group : 2 * group + 2], 3, padding=1, stride=2)
        expected += float(windows.sum()) * 3
    synapse = {s["name"]: s for s in snn.statistics()["synapses"]}["2"]
    assert synapse["sops"] == pytest.approx(expected)
    assert synapse["macs_per_sample"] == 6 * 4 * 4 * 2 * 3 * 3


def _paths(events, synapse_layer, pools):
    """Brute force: every (spike, pooling window, conv output, tap) path, with torch's own pooling
    (divisor 1: window sums) and a conv of ones (the fan-out of each input channel)."""
    dims = events.dim() - 2
    x = events.to(torch.float64)
    for pool in pools:
        x = pool(x)
    if isinstance(synapse_layer, nn.Linear):
        return float(x.sum()) * synapse_layer.out_features
    ones = torch.ones(synapse_layer.weight.shape, dtype=torch.float64)
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return float(
        conv(
            x, ones, None, synapse_layer.stride, synapse_layer.padding, synapse_layer.dilation, synapse_layer.groups
        ).sum()
    )


def _sum_pool(dims, kernel, stride, padding, ceil_mode):
    if dims == 1:  # avg_pool1d has no divisor_override: a 2-d pool over a dim of 1
        return lambda x: F.avg_pool2d(
            x.unsqueeze(2), (1, kernel), (1, stride), (0, padding), ceil_mode, divisor_override=1
        ).squeeze(2)
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    return lambda x: pool(x, kernel, stride, padding, ceil_mode, divisor_override=1)


def _adaptive_sum_pool(dims, out):
    def pool(x):  # window sums of torch's adaptive windows: a loop over the output positions
        sizes = x.shape[2:]
        outs = (out,) * dims
        result = torch.zeros(x.shape[:2] + outs, dtype=x.dtype)
        for index in itertools.product(*(range(o) for o in outs)):
            window = tuple(slice(i * n // o, -(-(i + 1) * n // o)) for i, n, o in zip(index, sizes, outs))
            result[(slice(None), slice(None)) + index] = x[(slice(None), slice(None)) + window].sum(
                tuple(range(2, 2 + dims))
            )
        return result

    return pool


GEOMETRIES = [  # (dims, spatial size, pools as (kind, args), conv kwargs or None for a linear)
    (2, 9, [], dict(kernel_size=3, padding=1)),
    (2, 9, [("avg", (2, 2, 0, False))], dict(kernel_size=3, padding=1)),
    (2, 9, [("avg", (3, 2, 1, True))], dict(kernel_size=3, stride=2, padding=2, dilation=2, groups=2)),
    (2, 8, [("avg", (2, 2, 0, False)), ("avg", (2, 1, 1, False))], dict(kernel_size=2)),
    (2, 7, [("adaptive", 3)], dict(kernel_size=1)),
    (2, 7, [("adaptive", 1)], None),
    (2, 10, [("avg", (2, 2, 0, True))], None),
    (2, 6, [], dict(kernel_size=3, padding="same", dilation=2)),
    (1, 11, [("avg", (3, 2, 1, True))], dict(kernel_size=3, stride=2, padding=1)),
    (3, 5, [("avg", (2, 2, 0, True))], dict(kernel_size=2, padding=1)),
    (1, 7, [("adaptive", 4)], dict(kernel_size=2, padding="valid")),
]


@pytest.mark.parametrize("dims, size, pools, conv", GEOMETRIES)
def test_event_driven_sops_count_every_path_exactly(dims, size, pools, conv):
    from na_kernels.nn.synapses import pool_spec, synapse_spec, synaptic_ops

    g = torch.Generator().manual_seed(size)
    events = (torch.rand((3, 4) + (size,) * dims, generator=g) < 0.3).to(torch.int32) * torch.randint(
        1, 4, (3, 4) + (size,) * dims, generator=g, dtype=torch.int32
    )  # counts: several spikes per neuron
    torch_pools, specs = [], []
    for kind, args in pools:
        if kind == "avg":
            torch_pools.append(_sum_pool(dims, *args))
            specs.append(pool_spec("avg", dims, kernel=args[0], stride=args[1], padding=args[2], ceil_mode=args[3]))
        else:
            torch_pools.append(_adaptive_sum_pool(dims, args))
            specs.append(pool_spec("adaptive", dims, output_size=args))
    pooled = events.to(torch.float64)
    for pool in torch_pools:
        pooled = pool(pooled)
    if conv is None:
        layer = nn.Linear(pooled[0].numel(), 5)
    else:
        layer = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](4, 6, **conv)
    positions = events.sum(dim=(0, 1))
    got = float(synaptic_ops(positions, synapse_spec(layer), tuple(specs)))
    assert got == _paths(events, layer, torch_pools) and got > 0


def test_sops_behind_pooling_come_from_the_spike_counts_and_are_exact():
    # conv -> IF -> avg-pool -> conv -> IF -> avg-pool -> linear: both layers behind pooling are
    # counted by the IF layers from their counts (no pass over the spikes), every path exactly
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        NoisyQuant(3, lam=1.0, noise=None),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        NoisyQuant(3, lam=1.0, noise=None),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    ).eval()
    snn = to_snn(model, T=4, chunk=3)
    meters = snn.synapses
    assert [m.routed for m in meters.values()] == [False, True, True]
    spikes = {}
    for name, layer in snn.if_layers.items():
        layer.register_forward_hook(lambda m, args, out, name=name: spikes.setdefault(name, []).append(out != 0))
    x = torch.randn(5, 1, 14, 14)
    with torch.no_grad():
        snn(x)
    events = {name: torch.cat(parts) for name, parts in spikes.items()}
    sops = {s["name"]: s["sops"] for s in snn.statistics()["synapses"]}
    assert sops["3"] == _paths(events["1"], model[3], [_sum_pool(2, 2, 2, 0, False)]) > 0
    assert sops["7"] == _paths(events["4"], model[7], [_sum_pool(2, 2, 2, 0, True)]) > 0
    layers = {row["name"]: row["sops"] for row in snn.statistics()["if_layers"]}
    assert layers == {"1": sops["3"], "4": sops["7"]}


def test_sops_of_a_sum_of_spikes_count_each_source_and_others_count_nonzero_inputs():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.a = NoisyQuant(3, lam=1.0, noise=None)
            self.b = NoisyQuant(3, lam=0.5, noise=None)
            self.head = nn.Conv2d(3, 2, 3, padding=1)
            self.tail = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            h = self.conv(x)
            s, r = self.a(h), self.b(-h)
            return self.head(s + r).mean((2, 3)) + self.tail(s * 0.5 - r).mean((2, 3))

    torch.manual_seed(1)
    model = Residual().eval()
    snn = to_snn(model, T=3)
    assert snn.synapses["head"].routed and not snn.synapses["tail"].routed
    outputs, inputs = {}, {}
    for name, layer in snn.if_layers.items():
        layer.register_forward_hook(lambda m, args, out, name=name: outputs.__setitem__(name, out != 0))
    snn.network.get_submodule("tail").register_forward_pre_hook(lambda m, args: inputs.__setitem__("tail", args[0]))
    with torch.no_grad():
        snn(torch.randn(4, 2, 6, 6))
    sops = {s["name"]: s["sops"] for s in snn.statistics()["synapses"]}
    assert sops["head"] == _paths(outputs["a"], model.head, []) + _paths(outputs["b"], model.head, [])
    assert sops["tail"] == _paths(inputs["tail"] != 0, model.tail, [])
