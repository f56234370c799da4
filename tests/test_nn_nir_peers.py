"""Other tools' NIR importers on to_nir's files, as written (no hand edits): each loads and runs
the file in the pooling form it reads, and computes NIR's IF (hard reset, v from 0) exactly."""

import pytest
import torch
from nn_models import SmallCNN, TinyResNet, prepared

from na_kernels.io.nir_export import to_nir
from na_kernels.nn import to_snn

nir = pytest.importorskip("nir")
from nir_interpreter import run_nir  # noqa: E402  (needs nir)

pytestmark = pytest.mark.peers
T = 6


def _export(tmp_path, model_class, pooling):
    torch.manual_seed(0)
    snn = to_snn(prepared(model_class), T=T)
    path = tmp_path / f"net_{pooling}.nir"
    nir.write(path, to_nir(snn, (3, 16, 16), pooling=pooling))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = run_nir(nir.read(path), x, T, semantics="nir")
    return path, x, expected


def _mean(per_step):
    return per_step.float().mean(0)


@pytest.mark.parametrize("model_class", [SmallCNN, TinyResNet])
def test_spikingjelly_runs_the_file_as_nir_defines_it(tmp_path, model_class):
    exchange = pytest.importorskip("spikingjelly.activation_based.nir_exchange")
    path, x, expected = _export(tmp_path, model_class, "avg")
    net = exchange.import_from_nir(str(path), dt=1.0, step_mode="m")
    with torch.no_grad():
        out, _ = net(x.unsqueeze(0).expand(T, *x.shape).contiguous())
    torch.testing.assert_close(_mean(out), expected, rtol=1e-5, atol=1e-5)


def test_norse_runs_the_sum_pooling_file_as_nir_defines_it(tmp_path):
    """Norse 1.1 on a feed-forward CNN (on a graph with residual sums it returns an inner node's output)."""
    norse = pytest.importorskip("norse.torch")
    path, x, expected = _export(tmp_path, SmallCNN, "sum")
    net = norse.from_nir(nir.read(path))
    outputs, state = [], None
    with torch.no_grad():
        for _ in range(T):
            out, state = net(x, state)
            outputs.append(out)
    torch.testing.assert_close(_mean(torch.stack(outputs)), expected, rtol=1e-5, atol=1e-5)


def test_sinabs_loads_and_runs_the_sum_pooling_file(tmp_path):
    """sinabs builds multi-spike subtractive neurons (not NIR's IF): it runs, with the output's shape."""
    sinabs = pytest.importorskip("sinabs")
    path, x, expected = _export(tmp_path, SmallCNN, "sum")
    net = sinabs.from_nir(nir.read(path), batch_size=x.shape[0])
    with torch.no_grad():
        out = net(x.unsqueeze(1).expand(x.shape[0], T, *x.shape[1:]).reshape(-1, *x.shape[1:]))
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == (x.shape[0] * T, expected.shape[1]) and torch.isfinite(out).all()
