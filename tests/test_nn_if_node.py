"""na_kernels.nn.IFNode: SpikingJelly's IFNode semantics on the fused integrate_fire kernel."""

import pytest
import torch
from torch import nn

from na_kernels.app.datasets import digits_split
from na_kernels.nn import IFNode

try:
    from spikingjelly.activation_based import functional as sj_functional
    from spikingjelly.activation_based import neuron as sj_neuron
    from spikingjelly.activation_based import surrogate as sj_surrogate
except Exception:  # not installed, or its optional dependencies missing
    sj_neuron = None

_PEERS = [pytest.mark.peers, pytest.mark.skipif(sj_neuron is None, reason="spikingjelly is not importable")]


def _spikingjelly(test):
    """An equivalence test against SpikingJelly: marked ``peers``, skipped where it is not installed."""
    for mark in _PEERS:
        test = mark(test)
    return test


def _dyadic(shape, seed, scale=0.7):
    """Inputs on a 2^-10 grid: every h = v + x is exact, so both implementations see the same h."""
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.randn(shape, generator=g) * scale * 1024) / 1024


def _run_two_calls(node, x, w):
    """Two calls (the state carried between them), a loss on the spikes and the final v; grads of x."""
    x = x.clone().requires_grad_()
    spikes = torch.cat([node(x[:3]), node(x[3:])])
    loss = (spikes * w).sum() + (node.v**2).sum()
    loss.backward()
    return spikes.detach(), node.v.detach(), x.grad


SURROGATES = [
    ("Sigmoid", {}),
    ("Sigmoid", {"alpha": 2.5}),
    ("ATan", {}),
    ("ATan", {"alpha": 3.0}),
    ("Rect", {"alpha": 0.8}),
]


@_spikingjelly
@pytest.mark.parametrize("surrogate,kwargs", SURROGATES)
@pytest.mark.parametrize("v_reset", [None, 0.0, -0.25])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_matches_spikingjelly(surrogate, kwargs, v_reset, detach_reset):
    """Same spikes and final v (bit for bit, on inputs where h is exact), same gradients."""
    sg = getattr(sj_surrogate, surrogate)(**kwargs)
    x = _dyadic((6, 3, 5), seed=1)
    w = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(2))
    args = dict(v_threshold=1.0, v_reset=v_reset, surrogate_function=sg, detach_reset=detach_reset, step_mode="m")
    ref_spikes, ref_v, ref_grad = _run_two_calls(sj_neuron.IFNode(**args), x, w)
    spikes, v, grad = _run_two_calls(IFNode(**args), x, w)
    assert ref_spikes.sum() > 0 and (ref_spikes == 0).any()
    assert torch.equal(spikes, ref_spikes)
    assert torch.equal(v, ref_v)
    # the gradients' float32 operations are grouped differently (and sigmoid's exp differs)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-6)


@_spikingjelly
def test_store_v_seq_and_single_step_match_spikingjelly():
    x = _dyadic((5, 2, 7), seed=3)
    ref = sj_neuron.IFNode(v_reset=None, step_mode="m", store_v_seq=True)
    node = IFNode(v_reset=None, step_mode="m", store_v_seq=True)
    assert torch.equal(node(x), ref(x))
    assert torch.equal(node.v_seq, ref.v_seq)
    single = IFNode(v_reset=None, step_mode="s", store_v_seq=True)
    steps = torch.stack([single(x[t]) for t in range(5)])
    node.reset()
    assert torch.equal(steps, node(x))
    assert torch.equal(single.v_seq, node.v_seq)
    assert torch.equal(single.v, node.v)


@_spikingjelly
def test_reset_net_and_one_line_swap():
    """A SpikingJelly model with neuron.IFNode swapped for ours: functional.reset_net resets it."""
    torch.manual_seed(0)

    def model(node_class):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Flatten(2), nn.Linear(16, 8), node_class(surrogate_function=sj_surrogate.ATan(), step_mode="m")
        )

    ours, theirs = model(IFNode), model(sj_neuron.IFNode)
    x = _dyadic((4, 3, 4, 4), seed=4, scale=2.0)
    first = ours(x)
    assert torch.equal(first, theirs(x))
    assert torch.equal(ours(x), theirs(x))  # the second call starts from the carried state
    assert not torch.equal(ours(x), first)
    sj_functional.reset_net(ours)
    assert ours[2].v == 0.0 and ours[2].v_seq is None
    assert torch.equal(ours(x), first)  # the same run again: the state was reset


@_spikingjelly
def test_defaults_are_spikingjellys():
    """Every argument SpikingJelly 2.0's IFNode takes, with its default, is ours too."""
    import inspect

    theirs = inspect.signature(sj_neuron.IFNode.__init__).parameters
    ours = inspect.signature(IFNode.__init__).parameters
    for name, parameter in theirs.items():
        if name == "self":
            continue
        assert name in ours, name
        if name == "surrogate_function":  # an object there, its name here: the same function
            assert type(parameter.default).__name__ == "Sigmoid" and parameter.default.alpha == 4.0
            assert IFNode().surrogate == "sigmoid" and IFNode().alpha == 4.0
        else:
            assert ours[name].default == parameter.default, name


@_spikingjelly
def test_a_plain_batch_is_one_step_as_in_spikingjelly():
    """The default step_mode 's': a [N, C, H, W] batch is one step, not T = N steps."""
    x = _dyadic((4, 3, 5, 5), seed=11, scale=2.0)
    ours, theirs = IFNode(), sj_neuron.IFNode()
    for _ in range(3):
        assert torch.equal(ours(x), theirs(x))
    assert torch.equal(ours.v, theirs.v)


def test_default_step_mode_is_single_step():
    x = _dyadic((4, 6), seed=12, scale=2.0)
    node = IFNode()
    assert node.step_mode == "s"
    assert torch.equal(node(x), (x >= 1.0).float())  # every row integrates from v = 0, none from another row
    assert node.v.shape == (4, 6)


STATE_CASES = [
    (dtype, v_reset, mode, sg, thr)
    for dtype in ("bfloat16", "float16")
    for v_reset in (None, 0.0, -0.3)
    for mode in ("s", "m")
    for sg in ("Sigmoid", "ATan", "Rect")
    for thr in (1.0, 0.3)
]


@_spikingjelly
@pytest.mark.parametrize("dtype,v_reset,mode,sg,thr", STATE_CASES)
def test_state_dtype_input_matches_spikingjelly_in_16_bit(dtype, v_reset, mode, sg, thr):
    """state_dtype='input': v kept in the 16-bit dtype as SpikingJelly keeps it: identical spikes,
    v, v_seq and gradients, in both step modes, across calls."""
    dtype = getattr(torch, dtype)
    x = (torch.randn(6, 4, 40, generator=torch.Generator().manual_seed(13)) * 0.8).to(dtype)
    w = torch.randn(6, 4, 40, generator=torch.Generator().manual_seed(14))
    results = []
    for node in (
        sj_neuron.IFNode(
            v_threshold=thr,
            v_reset=v_reset,
            surrogate_function=getattr(sj_surrogate, sg)(),
            step_mode=mode,
            store_v_seq=True,
        ),
        IFNode(
            v_threshold=thr,
            v_reset=v_reset,
            surrogate_function=getattr(sj_surrogate, sg)(),
            step_mode=mode,
            store_v_seq=True,
            state_dtype="input",
        ),
    ):
        xx = x.clone().requires_grad_()
        out = torch.stack([node(xx[t]) for t in range(6)]) if mode == "s" else torch.cat([node(xx[:2]), node(xx[2:])])
        (out.float() * w).sum().backward()
        results.append((out, node.v, node.v_seq[-4:] if mode == "m" else node.v_seq, xx.grad))
    (spikes, v, v_seq, grad), (spikes2, v2, v_seq2, grad2) = results
    assert spikes.sum() > 0 and (spikes == 0).any()
    assert v2.dtype == dtype and spikes2.dtype == dtype
    assert torch.equal(spikes2, spikes) and torch.equal(v2, v) and torch.equal(v_seq2, v_seq)
    assert torch.equal(grad2, grad)


def test_state_dtype_input_keeps_v_in_the_input_dtype():
    """bfloat16: v stays bfloat16 and every h = v + x rounds; on float32 input the kernel runs (the same
    spikes as the default); a 16-bit state goes on in float32 when float32 input follows."""
    x = _dyadic((5, 3, 8), seed=15)
    node = IFNode(v_reset=None, step_mode="m", state_dtype="input")
    spikes = node(x.bfloat16())
    assert node.v.dtype == torch.bfloat16 and spikes.dtype == torch.bfloat16
    v = torch.zeros(3, 8, dtype=torch.bfloat16)
    for t in range(5):  # the definition, one bfloat16 rounding per operation
        h = v + x[t].bfloat16()
        s = ((h - 1.0) >= 0).to(torch.bfloat16)
        v = h - s * 1.0
        assert torch.equal(spikes[t], s)
    assert torch.equal(node.v, v)
    node.reset()
    assert torch.equal(node(x), IFNode(v_reset=None, step_mode="m")(x))
    node.reset()
    node(x[:2].bfloat16())
    carried = node.v.float()
    rest = node(x[2:])
    assert node.v.dtype == torch.float32
    reference = IFNode(v_reset=None, step_mode="m")
    reference.v = carried
    assert torch.equal(rest, reference(x[2:]))


def test_state_carried_until_reset():
    x = _dyadic((8, 4, 3), seed=5)
    node = IFNode(v_reset=None, step_mode="m")
    whole = node(x)
    v_whole = node.v
    node.reset()
    parts = torch.cat([node(x[:5]), node(x[5:])])
    assert torch.equal(parts, whole) and torch.equal(node.v, v_whole)
    with pytest.raises(ValueError, match="call reset"):
        node(torch.zeros(2, 5, 3))


def test_hard_reset_nonzero_matches_definition():
    """v_reset = 0.5: spikes and v of the definition (v = (1-s)h + s*v_reset) on exact inputs."""
    x = _dyadic((6, 50), seed=6, scale=0.6)
    node = IFNode(v_threshold=1.0, v_reset=0.5, step_mode="m")
    spikes = node(x)
    v = torch.full((50,), 0.5)
    expected = []
    for t in range(6):
        h = v + x[t]
        s = (h >= 1.0).float()
        v = (1 - s) * h + s * 0.5
        expected.append(s)
    assert torch.equal(spikes, torch.stack(expected))
    assert torch.equal(node.v, v)
    assert spikes.sum() > 0


def test_argument_errors():
    with pytest.raises(ValueError, match="v_reset must be below v_threshold"):
        IFNode(v_threshold=1.0, v_reset=1.0)
    with pytest.raises(ValueError, match="step_mode must be 'm'"):
        IFNode(step_mode="x")
    with pytest.raises(ValueError, match="surrogate_function must be one of"):
        IFNode(surrogate_function="erf")
    with pytest.raises(ValueError, match=r"expects \[T, N, \.\.\.\]"):
        IFNode(step_mode="m")(torch.zeros(4))
    with pytest.raises(ValueError, match="state_dtype must be"):
        IFNode(state_dtype="float16")
    if sj_neuron is not None:
        with pytest.raises(TypeError, match="PiecewiseQuadratic"):
            IFNode(surrogate_function=sj_surrogate.PiecewiseQuadratic())
        with pytest.raises(ValueError, match="spiking=False"):
            IFNode(surrogate_function=sj_surrogate.ATan(spiking=False))


def test_named_surrogate_uses_spikingjelly_defaults():
    assert IFNode(surrogate_function="atan").alpha == 2.0
    assert IFNode(surrogate_function="sigmoid").alpha == 4.0
    assert IFNode(surrogate_function="rectangle", alpha=0.5).alpha == 0.5


class _DigitSNN(nn.Module):
    """linear -> IF -> linear -> IF -> linear -> IF -> linear, multi-step [T, N, ...], the input
    current the same at every step."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.if1 = IFNode(v_reset=None, surrogate_function="atan", step_mode="m")
        self.fc2 = nn.Linear(128, 64)
        self.if2 = IFNode(v_reset=None, surrogate_function="atan", step_mode="m")
        self.fc3 = nn.Linear(64, 64)
        self.if3 = IFNode(v_reset=None, surrogate_function="atan", step_mode="m")
        self.fc4 = nn.Linear(64, 10)

    def forward(self, x, T):
        for module in self.modules():
            if isinstance(module, IFNode):
                module.reset()
        y = self.if1(self.fc1(x.flatten(1)).unsqueeze(0).expand(T, -1, -1))
        y = self.if3(self.fc3(self.if2(self.fc2(y))))
        return self.fc4(y).mean(0)


@pytest.mark.slow
def test_direct_training_learns_digits():
    """BPTT through three IF layers on the bundled digits: the loss falls, accuracy far above chance."""
    torch.manual_seed(0)
    train, test = digits_split()
    mean, std = train.mean[0], train.std[0]
    x_train, y_train = (train.images.float() - mean) / std, train.labels
    x_test, y_test = (test.images.float() - mean) / std, test.labels
    net = _DigitSNN()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    T, losses = 4, []
    g = torch.Generator().manual_seed(0)
    for _epoch in range(2):
        order = torch.randperm(len(y_train), generator=g)
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            loss = nn.functional.cross_entropy(net(x_train[index], T), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    with torch.no_grad():
        accuracy = (net(x_test, T).argmax(1) == y_test).float().mean().item()
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert accuracy > 0.8, accuracy  # chance is 0.1


@pytest.mark.parametrize("v_reset", [None, 0.0, -0.25])
def test_a_second_call_continues_from_a_nan_or_inf_potential(v_reset):
    # NaN / +-inf inputs leave NaN / inf in the carried potential: the second call continues from
    # it exactly as one call over both parts does
    from nn_models import equal_by_position

    x = _dyadic((8, 4, 5), seed=7)
    x[1, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x[2, 3, 1:4] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    node = IFNode(v_reset=v_reset, step_mode="m")
    whole = node(x)
    v_whole = node.v
    node.reset()
    parts = torch.cat([node(x[:3]), node(x[3:])])
    assert not torch.isfinite(v_whole).all()
    assert equal_by_position(parts, whole) and equal_by_position(node.v, v_whole)
