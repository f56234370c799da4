"""IF layers that leave unwritten what nobody reads (``if_layer.SKIP_UNREAD_OUTPUTS``): the spike
counts without statistics, the final potential without a chunk or early exit to carry it to.
Every pass is bitwise the pass that writes both, at every SIMD level, and every reader of counts
or v still gets them (statistics on, chunked runs, early exit)."""

import copy

import pytest
import torch
from nn_models import TinyResNet, prepared

from na_kernels import cpu
from na_kernels.nn import if_layer, to_snn
from na_kernels.ops import event_conv
from na_kernels.ops.integrate_fire import cpu as cpu_backend

CL = torch.channels_last
pytestmark = pytest.mark.skipif(not cpu.available(), reason="the C++ extension is not built")


@pytest.fixture(scope="module")
def snn():
    torch.manual_seed(0)
    return to_snn(prepared(TinyResNet, p=3), T=4)


@pytest.fixture
def event_everywhere(monkeypatch):
    """The event kernel at every density."""
    monkeypatch.setattr(event_conv, "DEFAULT_MAX_DENSITY", 1.0)
    monkeypatch.setattr(event_conv, "TILED_MAX_DENSITY", 1.0)


@pytest.fixture
def written(monkeypatch):
    """The (counts, v_final) each C++ IF forward was asked to write, in call order."""
    calls = []
    forward = cpu_backend.forward

    def spy(*args, counts=True, v_final=True, **kwargs):
        calls.append((counts, v_final))
        return forward(*args, counts=counts, v_final=v_final, **kwargs)

    monkeypatch.setattr(cpu_backend, "forward", spy)
    return calls


def _input(seed, mode):
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return x if mode == "contiguous" else x.contiguous(memory_format=CL)


def _runs(snn, mode, run, monkeypatch):
    """run(network) with the unread outputs skipped, then written: (skipped, written)."""
    results = []
    for skip in (True, False):
        monkeypatch.setattr(if_layer, "SKIP_UNREAD_OUTPUTS", skip)
        network = copy.deepcopy(snn)
        if mode != "contiguous":
            network = network.to(memory_format=CL)
        network.event_driven(mode == "event")
        results.append(run(network))
    return results


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("mode", ["contiguous", "channels_last", "event"])
def test_a_plain_pass_writes_spikes_only_and_is_bitwise(snn, mode, simd_level, event_everywhere, written, monkeypatch):
    def run(network):
        network.record_statistics(False)
        with torch.no_grad():
            return [network(_input(seed, mode)) for seed in (1, 2)]

    skipped, full = _runs(snn, mode, run, monkeypatch)
    assert _equal(skipped, full)
    layers = len(snn.if_layers)
    assert written[: 2 * layers] == [(False, False)] * (2 * layers)
    assert written[2 * layers :] == [(True, True)] * (2 * layers)


def test_statistics_still_get_the_counts(snn, event_everywhere, written, monkeypatch):
    def run(network):
        network.record_statistics(True)
        network.reset_statistics()
        with torch.no_grad():
            outs = [network(_input(seed, "event")) for seed in (1, 2)]
        return outs, network.statistics()

    (outs, stats), (want_outs, want_stats) = _runs(snn, "event", run, monkeypatch)
    assert _equal(outs, want_outs) and stats == want_stats and stats["if_layers"]
    assert all(counts for counts, _ in written)
    assert (True, False) in written  # the final potentials still skipped


def test_chunks_and_early_exit_still_get_the_potentials(snn, event_everywhere, written, monkeypatch):
    def run(network):
        network.record_statistics(False)
        with torch.no_grad():
            chunked = [network(_input(1, "event"), chunk=chunk) for chunk in (3, 1)]
        exit = network.run_early_exit(_input(2, "event"), 0.5, chunk=2)
        return chunked, exit.outputs, exit.exit_steps

    skipped, full = _runs(snn, "event", run, monkeypatch)
    assert _equal(skipped, full)
    assert (False, True) in written  # counts skipped, v written for the next chunk
