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
