"""torch.compile of a converted network: one graph with no break, statistics on or off, no
recompilation per IF layer; a new batch size goes dynamic, a new T compiles once more."""

import pytest
import torch
import torch._dynamo
from torch import nn

from na_kernels.nn import NoisyQuant, to_snn

pytestmark = pytest.mark.slow  # dynamo traces 16 IF layers several times: tens of seconds on a loaded CPU

LAYERS = 16


def deep_snn(T=3):
    """LAYERS IF layers: past torch._dynamo's recompile limit (8) if each were its own frame."""
    torch.manual_seed(0)
    blocks = []
    for index in range(LAYERS):
        blocks += [nn.Linear(6, 6), NoisyQuant(3, lam=1.0 + index / LAYERS, noise=None)]
    snn = to_snn(nn.Sequential(nn.Linear(4, 6), *blocks[1:], nn.Linear(6, 3)).eval(), T=T)
    assert len(snn.if_layers) == LAYERS
    return snn


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("record", [True, False])
def test_one_graph_without_a_break(record):
    snn = deep_snn()
    snn.record_statistics(record)
    with torch.no_grad():
        explained = torch._dynamo.explain(snn)(torch.randn(5, 4))
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1


def test_compiles_once_per_setting_and_counts_as_eager_does():
    snn = deep_snn()
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(len(gm.graph.nodes))
        return gm.forward

    compiled = torch.compile(snn, backend=backend)
    x = torch.randn(5, 4)
    with torch.no_grad():
        want = snn(x)
        eager_stats = snn.statistics()
        snn.reset_statistics()
        for _ in range(3):
            assert torch.equal(compiled(x), want)
        assert len(compiles) == 1
        compiled_stats = snn.statistics()
        # three compiled runs count three times what one eager run counted
        assert compiled_stats["samples"] == 3 * eager_stats["samples"]
        assert compiled_stats["total"]["spikes"] == 3 * eager_stats["total"]["spikes"] > 0
        assert compiled_stats["total"]["sops_per_sample"] == pytest.approx(eager_stats["total"]["sops_per_sample"])

        snn.record_statistics(False)  # another setting: one more graph, then none
        compiled(x)
        compiled(x)
        assert len(compiles) == 2
        snn.record_statistics(True)
        compiled(x)
        assert len(compiles) == 2  # the first graph is still cached

        for batch in (7, 9, 11):  # a new batch size: one graph with a dynamic batch, then no more
            assert compiled(torch.randn(batch, 4)).shape == (3, batch, 3)
        assert len(compiles) == 3

        out = compiled(x, T=5)  # a new T: one more graph (T is a Python int; see docs/design.md)
        assert out.shape[0] == 5 and len(compiles) == 4
        compiled(x, T=5)
        assert len(compiles) == 4


def test_chunked_compiled_run_equals_eager():
    snn = deep_snn(T=4)
    compiled = torch.compile(snn, backend="eager", fullgraph=True)
    x = torch.randn(5, 4)
    x[1, 2] = float("nan")
    with torch.no_grad():
        want = snn(x, chunk=3)
        got = compiled(x, chunk=3)
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
