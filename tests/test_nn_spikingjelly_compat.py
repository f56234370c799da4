"""swap_spikingjelly_neurons / from_spikingjelly: SpikingJelly IF neurons swapped for IFNode in a model."""

import pytest
import torch
from torch import nn

from na_kernels.nn import IFNode, from_spikingjelly, swap_spikingjelly_neurons

sj = pytest.importorskip("spikingjelly.activation_based", reason="spikingjelly is not importable")
from spikingjelly.activation_based import functional, neuron, surrogate  # noqa: E402

pytestmark = pytest.mark.peers


class _CSNN(nn.Module):
    """conv-BN-IF x2, pooling, linear-IF: SpikingJelly's CSNN shape, its neurons in single-step mode."""

    def __init__(self, **neuron_args):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1, bias=False),
            nn.BatchNorm2d(6),
            neuron.IFNode(**neuron_args),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            neuron.IFNode(**neuron_args),
            nn.Flatten(),
        )
        self.fc = nn.Linear(8 * 4 * 4, 5)
        self.out = neuron.IFNode(**neuron_args)

    def forward(self, x):
        return self.out(self.fc(self.features(x)))


def _pair(**neuron_args):
    torch.manual_seed(0)
    theirs = _CSNN(**neuron_args)
    ours = _CSNN(**neuron_args)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _inputs(steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 2, 8, 8, generator=g) * 3 for _ in range(steps)]


@pytest.mark.parametrize(
    "neuron_args",
    [
        {},
        {"v_reset": None, "surrogate_function": surrogate.ATan()},
        {"v_threshold": 0.5, "v_reset": -0.25, "detach_reset": True},
    ],
)
def test_swapped_model_gives_the_same_spikes_and_gradients(neuron_args):
    theirs, ours = _pair(**neuron_args)
    names = swap_spikingjelly_neurons(ours)
    assert names == ["features.2", "features.6", "out"]
    assert all(isinstance(ours.get_submodule(n), IFNode) for n in names)
    assert not any(isinstance(m, neuron.IFNode) for m in ours.modules())
    for model in (theirs, ours):
        model.train()
    losses = []
    for model in (theirs, ours):
        functional.reset_net(model)
        out = torch.stack([model(x) for x in _inputs()])
        loss = (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum()
        loss.backward()
        losses.append(out.detach())
    assert losses[0].sum() > 0
    assert torch.equal(losses[0], losses[1])
    for (name, p_theirs), p_ours in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p_ours.grad, p_theirs.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_swap_keeps_arguments_and_state_mid_sequence():
    """Swapped after two steps: v, v_seq and the arguments come along, the next steps agree."""
    theirs, ours = _pair(v_reset=None, surrogate_function=surrogate.Sigmoid(alpha=3.0), store_v_seq=True)
    xs = _inputs(4, seed=1)
    with torch.no_grad():
        for x in xs[:2]:
            theirs(x)
            ours(x)
        swap_spikingjelly_neurons(ours)
        node, reference = ours.features[2], theirs.features[2]
        assert (
            node.v_threshold,
            node.v_reset,
            node.surrogate,
            node.alpha,
            node.detach_reset,
            node.step_mode,
            node.store_v_seq,
        ) == (1.0, None, "sigmoid", 3.0, False, "s", True)
        assert torch.equal(node.v, reference.v) and torch.equal(node.v_seq, reference.v_seq)
        for x in xs[2:]:
            assert torch.equal(ours(x), theirs(x))
        assert torch.equal(node.v_seq, reference.v_seq)


def test_reset_net_after_a_cached_reset_resets_the_new_neurons():
    """reset_net caches the resettable modules of a model: the swap clears that cache."""
    _, ours = _pair()
    functional.reset_net(ours)  # fills SpikingJelly's cache with the old neurons
    old = [m for m in ours.modules() if isinstance(m, neuron.IFNode)]  # alive: the cache stays valid
    swap_spikingjelly_neurons(ours)
    assert len(old) == 3
    x = _inputs(1)[0]
    with torch.no_grad():
        first = ours(x)
        functional.reset_net(ours)
        assert isinstance(ours.out.v, float)
        assert torch.equal(ours(x), first)


def test_set_step_mode_multi_step_after_the_swap():
    """functional.set_step_mode(model, 'm') reaches the new neurons: [T, N, ...] runs in one kernel call."""
    theirs, ours = _pair()
    swap_spikingjelly_neurons(ours)
    node, reference = ours.features[2], theirs.features[2]
    for model in (node, reference):
        functional.set_step_mode(model, "m")
    x = torch.stack(_inputs(4, seed=2))[:, :, :1].expand(4, 3, 6, 8, 8).contiguous()
    with torch.no_grad():
        assert torch.equal(node(x), reference(x))


def test_hooks_shared_modules_and_16_bit_state():
    torch.manual_seed(0)
    shared = neuron.IFNode(v_reset=None, step_mode="m")
    model = nn.Sequential(nn.Linear(4, 4), shared, nn.Linear(4, 4), shared)
    seen = []
    handle = shared.register_forward_hook(lambda module, args, out: seen.append(out.sum().item()))
    names = swap_spikingjelly_neurons(model, state_dtype="input")
    assert names == ["1", "3"] and model[1] is model[3] and model[1].state_dtype == "input"
    model[1](torch.ones(2, 3, 4).bfloat16())
    assert len(seen) == 1 and model[1].v.dtype == torch.bfloat16
    handle.remove()
    model[1](torch.ones(2, 3, 4).bfloat16())
    assert len(seen) == 1


def test_what_cannot_be_swapped_is_named():
    class Custom(neuron.IFNode):
        pass

    with pytest.raises(TypeError, match=r"blocks\.1: expected spikingjelly's neuron.IFNode, got .*Custom"):
        swap_spikingjelly_neurons(nn.ModuleDict({"blocks": nn.Sequential(nn.Linear(2, 2), Custom())}))
    with pytest.raises(TypeError, match=r"0: surrogate_function PiecewiseQuadratic has no fused backward"):
        swap_spikingjelly_neurons(nn.Sequential(neuron.IFNode(surrogate_function=surrogate.PiecewiseQuadratic())))
    with pytest.raises(ValueError, match="no spikingjelly neuron.IFNode in Sequential"):
        swap_spikingjelly_neurons(nn.Sequential(nn.Linear(2, 2), neuron.LIFNode()))
    with pytest.raises(TypeError, match="use na_kernels.nn.from_spikingjelly"):
        swap_spikingjelly_neurons(neuron.IFNode())
    model = nn.Sequential(neuron.IFNode(), neuron.IFNode(surrogate_function=surrogate.SoftSign()))
    with pytest.raises(TypeError, match="1: surrogate_function SoftSign"):
        swap_spikingjelly_neurons(model)
    assert isinstance(model[0], neuron.IFNode)  # nothing changed: the checks run before any swap
    assert isinstance(from_spikingjelly(neuron.IFNode(v_threshold=2.0)), IFNode)
