"""The residual add fused into the convolution before it (``na_kernels.snn.fused``): which adds
are fused, that the fused run equals the plain graph (bitwise in float32, one rounding fewer
in bfloat16), and that autograd, other devices' paths and the saved graph are untouched."""

import copy

import pytest
import torch
from nn_models import TinyResNet, prepared
from torch import nn

from na_kernels.nn import to_snn
from na_kernels.snn import fused
from na_kernels.snn.fused import conv_add, fuse_residual_adds

CL = torch.channels_last


@pytest.fixture(scope="module")
def snn():
    torch.manual_seed(0)
    return to_snn(prepared(TinyResNet, p=3), T=4)


def _run_unfused(snn, x):
    """snn(x) with the plain graph's code in place of the fused one."""
    plain = copy.deepcopy(snn)
    fused._FORWARDS[plain.network] = (plain.network.code, lambda network, *inputs: network(*inputs))
    with torch.no_grad():
        return plain(x)


def test_the_unfused_run_is_unfused(snn, monkeypatch):
    calls = []
    monkeypatch.setattr(fused, "_fusable", lambda *a: calls.append(1))  # conv_add asks it first
    _run_unfused(snn, torch.randn(1, 3, 16, 16))
    assert calls == []
    with torch.no_grad():
        snn(torch.randn(1, 3, 16, 16))
    assert len(calls) == 3


def test_every_block_add_is_fused_and_the_graph_is_kept(snn):
    forward, count = fuse_residual_adds(snn.network)
    adds = [n for n in snn.network.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert count == len(adds) == 3  # TinyResNet: three BasicBlocks, each ends in conv + shortcut
    assert all("conv_add" not in str(n.target) for n in snn.network.graph.nodes)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_run_is_bitwise_the_plain_graph_in_float32(snn, layout, monkeypatch):
    calls = []
    fusable = fused._fusable
    monkeypatch.setattr(fused, "_fusable", lambda *a: calls.append(fusable(*a)) or calls[-1])
    network = copy.deepcopy(snn)
    x = torch.randn(3, 3, 16, 16)
    if layout == "channels_last":
        network, x = network.to(memory_format=CL), x.contiguous(memory_format=CL)
    with torch.no_grad():
        got = network(x)
    assert calls == [True] * 3  # the oneDNN path ran for every block
    assert torch.equal(got, _run_unfused(network, x))


def test_bf16_channels_last_within_one_rounding(snn):
    network = copy.deepcopy(snn).to(torch.bfloat16).to(memory_format=CL)
    x = torch.randn(3, 3, 16, 16).to(torch.bfloat16).contiguous(memory_format=CL)
    conv = next(m for m in network.network.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 8)
    inp = (torch.rand(4, 8, 16, 16) < 0.3).to(torch.bfloat16).contiguous(memory_format=CL)
    other = torch.randn(4, conv.out_channels, 16, 16).to(torch.bfloat16).contiguous(memory_format=CL)
    with torch.no_grad():
        exact = conv.float()(inp.float()) + other.float()
        conv.to(torch.bfloat16)
        got = conv_add(conv, inp, other)
        two = conv(inp) + other
    # one rounding of the float32 sum instead of two (the conv's output, then the add)
    error_fused, error_two = (float((y.float() - exact).abs().max()) for y in (got, two))
    assert 0 < error_fused < error_two
    with torch.no_grad():
        out = network(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_autograd_and_mismatched_operands_take_the_plain_path(snn):
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    other = torch.randn(2, 6, 8, 8)
    assert not fused._fusable(conv, x, other)  # autograd: two ops, gradients as usual
    y = conv_add(conv, x, other)
    y.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    with torch.no_grad():
        assert fused._fusable(conv, x, other)
        assert not fused._fusable(conv, x, torch.randn(2, 6, 1, 1))  # broadcasting: two ops
        assert not fused._fusable(conv, x, other.contiguous(memory_format=CL))  # another layout
        assert not fused._fusable(conv, x.half(), other.half())
        torch.testing.assert_close(conv_add(conv, x, torch.randn(6, 1, 1) * 0 + other), conv(x) + other)


def test_compiled_network_runs_the_plain_adds(snn):
    network = copy.deepcopy(snn)
    network.record_statistics(False)
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(network, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), _run_unfused(network, x))


def test_early_exit_runs_its_chunks_fused_and_matches_the_fixed_run(snn, monkeypatch):
    calls = []
    fusable = fused._fusable
    monkeypatch.setattr(fused, "_fusable", lambda *a: calls.append(fusable(*a)) or calls[-1])
    x = torch.randn(3, 3, 16, 16)
    result = snn.run_early_exit(x, 1.0, chunk=2)  # never confident: every sample runs T = 4
    assert calls and all(calls) and len(calls) == 3 * 2  # three blocks, two chunks
    torch.testing.assert_close(result.outputs, _run_unfused(snn, x)[-1])


def test_a_hooked_conv_is_called(snn):
    network = copy.deepcopy(snn)
    conv = next(m for m in network.network.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 16)
    seen = []
    handle = conv.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = network(x)
    handle.remove()
    assert seen  # the hook ran: that conv was not fused away
    assert torch.equal(got, _run_unfused(network, x))


def _spy_overwrites(monkeypatch):
    """[(overwrite asked, spikes in the input's memory)] of every IF layer call."""
    from na_kernels.nn import if_layer

    calls, original = [], if_layer.integrate_fire

    def spy(x_seq, *args, overwrite=False, **kwargs):
        out = original(x_seq, *args, overwrite=overwrite, **kwargs)
        calls.append((overwrite, out[0].data_ptr() == x_seq.data_ptr()))
        return out

    monkeypatch.setattr(if_layer, "integrate_fire", spy)
    return calls


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_if_layers_take_their_inputs_memory_with_the_same_outputs(snn, layout, monkeypatch):
    network = copy.deepcopy(snn)
    x = torch.randn(3, 3, 16, 16)
    if layout == "channels_last":
        network, x = network.to(memory_format=CL), x.contiguous(memory_format=CL)
    want = _run_unfused(network, x)
    network.reset_statistics()
    calls = _spy_overwrites(monkeypatch)
    with torch.no_grad():
        got = network(x)
    # the stem's IF layer reads a [B] conv output repeated over T (stride 0: asked, not taken);
    # every other TinyResNet IF layer reads a conv's or a fused add's output nothing else reads
    assert calls[0] == (True, False) and calls[1:] and all(c == (True, True) for c in calls[1:]), calls
    assert torch.equal(got, want)
    plain = copy.deepcopy(network)
    fused._FORWARDS[plain.network] = (plain.network.code, lambda net, *inputs: net(*inputs))
    plain.reset_statistics()
    with torch.no_grad():
        plain(x)
    assert network.statistics()["total"] == plain.statistics()["total"]


def test_a_hooked_if_layer_or_a_shared_input_is_not_overwritten(snn, monkeypatch):
    network = copy.deepcopy(snn)
    layer = list(network.if_layers.values())[1]
    seen = []
    layer.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    calls = _spy_overwrites(monkeypatch)
    with torch.no_grad():
        network(torch.randn(2, 3, 16, 16))
    assert calls[1] == (False, False) and seen
    assert not bool(((seen[0] == 0) | (seen[0] == layer.amplitude)).all())  # the hook saw x, not spikes

    graph_module = copy.deepcopy(snn).network
    if_node = next(
        n
        for n in graph_module.graph.nodes
        if n.op == "call_module"
        and n.args
        and getattr(n.args[0], "op", "") == "call_module"
        and isinstance(graph_module.get_submodule(n.args[0].target), nn.Conv2d)
    )
    assert fused._overwritable_input(graph_module, if_node)
    with graph_module.graph.inserting_after(if_node.args[0]):  # a second reader of the conv's output
        graph_module.graph.call_function(torch.mul, (if_node.args[0], 1.0))
    assert not fused._overwritable_input(graph_module, if_node)


def test_bf16_if_layers_keep_a_fresh_output(snn, monkeypatch):
    network = copy.deepcopy(snn).to(torch.bfloat16).to(memory_format=CL)
    calls = _spy_overwrites(monkeypatch)
    with torch.no_grad():
        network(torch.randn(2, 3, 16, 16).to(torch.bfloat16).contiguous(memory_format=CL))
    assert calls and all(c == (False, False) for c in calls)  # measured slower in bf16: not asked


def test_an_if_layer_with_its_own_forward_is_called_plainly(snn):
    network = copy.deepcopy(snn)
    layer = list(network.if_layers.values())[1]
    layer.forward = lambda x, _forward=layer.forward: _forward(x)  # takes no overwrite
    with torch.no_grad():
        got = network(torch.ones(1, 3, 16, 16))
    assert torch.equal(got, _run_unfused(network, torch.ones(1, 3, 16, 16)))
