"""NeuroBench 2.x on a converted SNN through na_kernels.io.neurobench: its accuracy, activation
sparsity and synaptic operations agree with snn.statistics(); membrane updates are counted."""

import pytest
import torch
from nn_models import SmallCNN, TinyMobileNet, TinyResNet, prepared
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from na_kernels.nn import NoisyQuant, to_snn

pytest.importorskip("snntorch")
pytest.importorskip("neurobench")
from neurobench.benchmarks import Benchmark  # noqa: E402
from neurobench.metrics.workload import ActivationSparsity, ClassificationAccuracy, MembraneUpdates, SynapticOperations  # noqa: E402

from na_kernels.io.neurobench import NeuroBenchError, NeuroBenchIF, argmax_postprocessor, neurobench_model  # noqa: E402

pytestmark = pytest.mark.peers
T = 4


def _membrane_updates(inputs, snn, batch):
    """NeuroBench's definition, counted here from the IF layers' inputs: every neuron at step 1,
    then each neuron whose potential changed in the step."""
    updates = 0
    for name, layer in snn.if_layers.items():
        x = inputs[name]
        x = x.expand((T,) + tuple(x.shape)) if layer.input_is_constant else x.reshape((T, batch) + tuple(x.shape[1:]))
        theta = layer.threshold.reshape((-1,) + (1,) * (x.dim() - 3)) if layer.per_channel else layer.threshold
        v = torch.full_like(x[0], 0.0) + layer.v_init * theta
        for t in range(T):
            h = v + x[t]
            new = h - (h >= theta).to(h.dtype) * theta
            updates += new.numel() if t == 0 else int((new != v).sum())
            v = new
    return updates


def _stem_macs(snn, x, names):
    """MACs of the analog layers on the nonzero inputs and in-bounds taps, per sample (what NeuroBench counts)."""
    total = 0
    for name in names:
        conv = snn.network.get_submodule(name)
        ones = torch.ones_like(conv.weight)
        total += F.conv2d((x != 0).float(), ones, None, conv.stride, conv.padding, conv.dilation, conv.groups).sum()
    return int(total) / x.shape[0]


@pytest.mark.parametrize(
    "model_class,per_channel,calibrated",
    [
        (SmallCNN, False, False),
        (SmallCNN, True, False),
        (SmallCNN, False, True),
        (TinyResNet, False, False),
        (TinyMobileNet, True, False),
    ],
)
def test_neurobench_counts_agree_with_the_statistics(model_class, per_channel, calibrated):
    torch.manual_seed(0)
    snn = to_snn(prepared(model_class, per_channel=per_channel), T=T)
    if calibrated:  # θ != amplitude: the kernel fires at θ, the spikes carry λ
        for layer in snn.if_layers.values():
            layer.threshold = layer.threshold * 0.8
    x, labels = torch.randn(12, 3, 16, 16), torch.randint(0, 5, (12,))
    model = neurobench_model(snn, x[:3])
    inputs = {}
    for layer in snn.if_layers.values():
        layer.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m.name, a[0].detach().clone()))
    snn.reset_statistics()
    with torch.no_grad():
        out = snn(x)
    stats = snn.statistics()
    results = Benchmark(
        model,
        DataLoader(TensorDataset(x, labels), batch_size=12),
        [],
        [argmax_postprocessor],
        [[], [ClassificationAccuracy, ActivationSparsity, SynapticOperations, MembraneUpdates]],
    ).run(quiet=True)
    ops = results["SynapticOperations"]
    assert results["ClassificationAccuracy"] == (out[-1].argmax(-1) == labels).float().mean().item()
    assert results["ActivationSparsity"] == pytest.approx(1 - stats["total"]["firing_rate"], rel=1e-12)
    assert 0 < stats["total"]["sops_per_sample"]
    assert model.folding["mac_layers"] == [s["name"] for s in stats["synapses"] if not s["spike_driven"]]
    mixed = model.folding["mixed_layers"]
    assert bool(mixed) == (model_class is TinyMobileNet)  # its residual sums add analog values to spikes
    routed = sum(s["sops"] for s in stats["synapses"] if s["name"] not in mixed) / x.shape[0]
    assert ops["Effective_ACs"] == pytest.approx(routed, rel=1e-12)
    if not mixed:
        assert ops["Effective_ACs"] == pytest.approx(stats["total"]["sops_per_sample"], rel=1e-12)
        # the stem: na_kernels counts every tap of the padded conv, NeuroBench the in-bounds taps on nonzero inputs
        assert ops["Effective_MACs"] == _stem_macs(snn, x, model.folding["mac_layers"])
        assert ops["Effective_MACs"] <= stats["total"]["analog_macs_per_sample"]
    assert results["MembraneUpdates"] == _membrane_updates(inputs, snn, x.shape[0]) / x.shape[0]


def test_spikes_are_events_and_potentials_are_new_tensors():
    torch.manual_seed(0)
    snn = to_snn(prepared(SmallCNN), T=T)
    x = torch.randn(2, 3, 16, 16)
    model = neurobench_model(snn, x)
    neurons = [m for m in model.__net__().modules() if isinstance(m, NeuroBenchIF)]
    assert [n.name for n in neurons] == list(snn.if_layers)
    seen = []
    neurons[1].register_forward_hook(lambda m, a, out: seen.append((out.clone(), m.mem)))
    model(x)
    assert len(seen) == T and all(set(s.unique().tolist()) <= {0.0, 1.0} for s, _ in seen)
    assert sum(s.sum() for s, _ in seen) > 0 and seen[0][1] is not seen[1][1]


class _OverlappingPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 4, 3, padding=1), NoisyQuant(p=4, lam=2.0)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.conv2, self.act2 = nn.Conv2d(4, 4, 3), NoisyQuant(p=4, lam=2.0)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        x = self.pool(self.act1(self.conv1(x)))
        return self.fc(torch.flatten(self.act2(self.conv2(x)), 1))


def test_an_overlapping_pool_before_a_conv_is_refused_by_name():
    snn = to_snn(_OverlappingPool().eval(), T=T)
    with pytest.raises(NeuroBenchError, match="conv2.*not non-overlapping"):
        neurobench_model(snn, torch.randn(2, 3, 16, 16))


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="SpikingNetwork"):
        neurobench_model(nn.Linear(2, 2), torch.randn(1, 2))
    snn = to_snn(prepared(SmallCNN), T=T)
    with pytest.raises(TypeError, match="example"):
        neurobench_model(snn, [1.0])
    with pytest.raises(ValueError, match="T"):
        neurobench_model(snn, torch.randn(1, 3, 16, 16), T=0)
