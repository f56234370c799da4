"""Spike statistics, SOPs and energy of a SpikingNetwork (SynapseMeter, collect/format_statistics)."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import na_kernels
from na_kernels.nn import NoisyQuant, format_statistics, to_snn
from nn_models import SmallCNN, TinyResNet, prepared


def capture_if_inputs(snn):
    inputs = {}
    for layer in snn.if_layers.values():
        layer.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m.name, args[0].detach().clone()))
    return inputs


@pytest.mark.parametrize("model_class", [SmallCNN, TinyResNet])
def test_spike_totals_are_the_kernels_counts(model_class):
    model = prepared(model_class, per_channel=True)
    T, batch = 5, 3
    snn = to_snn(model, T=T)
    inputs = capture_if_inputs(snn)
    with torch.no_grad():
        snn(torch.randn(batch, 3, 16, 16))
    stats = snn.statistics()
    assert stats["samples"] == batch and stats["sample_steps"] == batch * T
    for row in stats["if_layers"]:
        layer = snn.if_layers[row["name"]]
        x = inputs[row["name"]]
        x_seq = x.unsqueeze(0).expand((T,) + tuple(x.shape)) if layer.input_is_constant else x.reshape((T, batch) + tuple(x.shape[1:]))
        spikes, counts = na_kernels.integrate_fire(x_seq, layer.threshold, v_init=0.5)
        assert row["spikes"] == int(counts.sum())
        assert row["neurons"] == counts[0].numel()
        assert row["firing_rate"] == pytest.approx(int(counts.sum()) / (counts.numel() * T))
        theta = layer.threshold.reshape((1, 1, -1) + (1,) * (x_seq.dim() - 3))
        torch.testing.assert_close((spikes / theta).sum(), counts.sum().float())
        torch.testing.assert_close(layer.channel_spikes, counts.transpose(0, 1).reshape(counts.shape[1], -1).sum(1).long())
    assert stats["total"]["spikes"] == sum(row["spikes"] for row in stats["if_layers"])


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
        nn.Conv2d(2, 4, 3, padding=1), NoisyQuant(3, lam=0.5, noise=None),
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
        windows = F.unfold(indicator[:, 2 * group: 2 * group + 2], 3, padding=1, stride=2)
        expected += float(windows.sum()) * 3
    synapse = {s["name"]: s for s in snn.statistics()["synapses"]}["2"]
    assert synapse["sops"] == pytest.approx(expected)
    assert synapse["macs_per_sample"] == 6 * 4 * 4 * 2 * 3 * 3


@pytest.mark.parametrize("calibrated", [False, True])
def test_sops_read_from_the_spike_counts_equal_the_spike_tensor_count(calibrated):
    from na_kernels.nn import SynapseMeter
    from na_kernels.app.models import digits_cnn
    from na_kernels.nn import replace_activations

    torch.manual_seed(0)
    model, _ = replace_activations(digits_cnn(), p=3, lam=1.0)
    snn = to_snn(model.eval(), T=4, chunk=3)
    if calibrated:  # spikes of amplitude λ from a threshold θ != λ
        for layer in snn.if_layers.values():
            layer.threshold = layer.threshold * 0.7
    meters = {m.name: m for m in snn.network.modules() if isinstance(m, SynapseMeter)}
    from_counts = {name for name, m in meters.items() if m.__dict__.get("_source")}
    # the convs right after an IF layer and the last linear; those after pooling count the spikes
    assert from_counts == {"features.3", "features.10", "classifier.3"}
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        snn(x)
    fast = {s["name"]: s["sops"] for s in snn.statistics()["synapses"]}
    for name in from_counts:
        del meters[name].__dict__["_source"]
    snn.reset_statistics()
    with torch.no_grad():
        snn(x)
    exact = {s["name"]: s["sops"] for s in snn.statistics()["synapses"]}
    assert fast == exact and sum(fast.values()) > 0
