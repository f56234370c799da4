"""from_nir on NIR graphs that SpikingJelly, Norse, sinabs and snnTorch export from a small conv net,
compared with each tool's own run (same constant input at every step). Skipped where the peer is not
installed (``pip install --no-deps`` each, see the README's NIR section)."""

import pytest
import torch
from torch import nn

from na_kernels.io.nir_import import NIRImportError, from_nir

nir = pytest.importorskip("nir")
pytestmark = pytest.mark.peers

B = 4


def _input(seed=0):
    torch.manual_seed(seed)
    return torch.rand(B, 2, 8, 8)


def _scaled(net, gain=3.0):
    """Weights large enough that every layer fires at a few steps' input."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_(gain)
    return net


class _Counter:
    """Total spikes each neuron module of the peer emits (forward hooks), in call order."""

    def __init__(self, modules):
        self.counts = [0.0] * len(modules)
        for i, module in enumerate(modules):
            module.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def hook(module, inputs, output):
            spikes = output[0] if isinstance(output, tuple) else output
            self.counts[i] += float(spikes.sum())

        return hook


def spikingjelly_case(x, T):
    """conv -> IF (hard reset to 0) -> AvgPool2d -> Flatten -> Linear -> IF; exported with dt = 1e-4 (r = 1/dt)."""
    pytest.importorskip("spikingjelly")
    pytest.importorskip("spikingjelly.activation_based.nir_exchange")  # needs nirtorch (not in CI)
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    net = _scaled(
        nn.Sequential(
            layer.Conv2d(2, 4, 3, padding=1),
            neuron.IFNode(v_reset=0.0),
            layer.AvgPool2d(2),
            layer.Flatten(),
            layer.Linear(64, 5),
            neuron.IFNode(v_reset=0.0),
        )
    )
    with torch.no_grad():
        graph = export_to_nir(net, x, dt=1e-4)
        functional.reset_net(net)
        counter = _Counter([m for m in net if isinstance(m, neuron.IFNode)])
        own = torch.stack([net(x) for _ in range(T)])
    return graph, own, {"dt": 1e-4}, counter.counts


def norse_case(x, T):
    """conv -> IAF -> conv (stride 2) -> IAF (Norse writes None for pooling and Flatten, and the Input
    with the batch)."""
    pytest.importorskip("norse")
    import norse.torch as norse

    net = _scaled(
        norse.SequentialState(
            nn.Conv2d(2, 4, 3, padding=1), norse.IAFCell(), nn.Conv2d(4, 5, 3, stride=2, padding=1), norse.IAFCell()
        )
    )
    with torch.no_grad():
        graph = norse.to_nir(net, x)
        counter = _Counter([m for m in net if isinstance(m, norse.IAFCell)])
        state, own = None, []
        for _ in range(T):
            out, state = net(x, state)
            own.append(out)
    return graph, torch.stack(own), {"dt": 1.0, "input_shape": (2, 8, 8)}, counter.counts


def sinabs_case(x, T):
    """conv -> IAF (single spike, subtractive) -> SumPool2d -> Flatten -> Linear -> IAF: NIR's IF read as
    sinabs (and NIR < 1.0.6) define it, ``reset="subtract"``."""
    pytest.importorskip("sinabs")
    import sinabs
    import sinabs.layers as sl
    from sinabs.activation import SingleSpike

    net = _scaled(
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            sl.IAFSqueeze(batch_size=B, spike_fn=SingleSpike),
            sl.SumPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 5),
            sl.IAFSqueeze(batch_size=B, spike_fn=SingleSpike),
        ),
        gain=1.0,
    )
    steps = x.unsqueeze(1).expand((B, T) + tuple(x.shape[1:])).reshape((B * T,) + tuple(x.shape[1:]))
    with torch.no_grad():
        graph = sinabs.to_nir(net, steps)
        sinabs.reset_states(net)
        counter = _Counter([m for m in net if isinstance(m, sl.IAFSqueeze)])
        own = net(steps).reshape(B, T, -1).transpose(0, 1)
    return graph, own, {"dt": 1.0, "reset": "subtract"}, counter.counts


CASES = {"spikingjelly": spikingjelly_case, "norse": norse_case, "sinabs": sinabs_case}


def per_step(mean):
    """The Output at each step from the SpikingNetwork's running mean ``[T, B, ...]``."""
    t = torch.arange(1, mean.shape[0] + 1, dtype=torch.float64).reshape((-1,) + (1,) * (mean.dim() - 1))
    total = mean.double() * t
    return torch.cat([total[:1], total[1:] - total[:-1]])


def compare(peer, T, seed=0):
    """(max |ours - peer| of the Output over steps, fraction of equal output spikes, the peer's
    spike total per neuron layer, ours)."""
    x = _input(seed)
    graph, own, options, peer_layers = CASES[peer](x, T)
    snn = from_nir(graph, T=T, **options)
    with torch.no_grad():
        ours = per_step(snn(x)).round()
    own = own.reshape(ours.shape).double()
    our_layers = [float(layer.spikes) for layer in snn.if_layers.values()]
    return (ours - own).abs().max().item(), (ours == own).double().mean().item(), peer_layers, our_layers


@pytest.mark.parametrize("peer", sorted(CASES))
@pytest.mark.parametrize("T", [8, 32])
def test_peer_export_runs_as_the_peer_runs_it(peer, T):
    difference, agreement, peer_layers, our_layers = compare(peer, T)
    assert min(peer_layers) > 0  # every layer fires: the comparison sees spikes
    assert difference == 0 and agreement == 1.0
    assert our_layers == peer_layers  # the same number of spikes in every layer


def test_snntorch_export_is_refused_naming_the_leaky_neuron():
    """snnTorch writes every Leaky as a NIR LIF (its exporter fails in nir's type inference on a
    Conv2d, a Flatten, a batched sample or a scalar beta, so the net is fully connected)."""
    snn = pytest.importorskip("snntorch")
    from snntorch.export_nir import export_to_nir

    def leaky(n, **kw):
        return snn.Leaky(beta=torch.full((n,), 0.9), threshold=torch.ones(n), init_hidden=True, **kw)

    net = nn.Sequential(nn.Linear(128, 16), leaky(16), nn.Linear(16, 5), leaky(5, output=True))
    graph = export_to_nir(net, _input()[0].flatten())  # per-neuron beta, one sample: what its exporter types
    with pytest.raises(NIRImportError, match=r"is a NIR LIF, which a SpikingNetwork cannot run: it would need a leak"):
        from_nir(graph, T=4, dt=1e-4)


if __name__ == "__main__":  # the table in the README: python tests/test_nn_nir_import_peers.py
    for name in sorted(CASES):
        for steps in (1, 2, 4, 8, 16, 32, 64):
            try:
                d, a, theirs, ours = compare(name, steps)
                print(
                    f"{name:13s} T={steps:3d} max|diff|={d:.3g} output spike agreement={a:.4f} "
                    f"spikes per layer: peer {[int(c) for c in theirs]} ours {[int(c) for c in ours]}"
                )
            except Exception as error:  # noqa: BLE001 (a report)
                print(f"{name:13s} T={steps:3d} {type(error).__name__}: {str(error)[:200]}")
