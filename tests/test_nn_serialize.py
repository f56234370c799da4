"""save_snn / load_snn: a converted network as a file that loads without the model's code."""
import importlib
import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from na_kernels.nn import calibrate_thresholds, load_snn, to_snn
from na_kernels.nn.serialize import FORMAT, SerializationError, snn_record

from nn_models import SmallCNN, TinyResNet, prepared

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class ShipNet(nn.Module):
        """A residual CNN with a directly used parameter, a functional pool and x.view(x.size(0), -1)."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(6)
            self.act1 = nn.ReLU()
            self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(6)
            self.act2 = nn.ReLU()
            self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 6).reshape(1, 6, 1, 1))
            self.fc = nn.Linear(6 * 4 * 4, 5)

        def forward(self, x):
            x = self.act1(self.bn1(self.conv1(x)))
            x = self.act2(self.bn2(self.conv2(x)) * self.gain + x)
            x = torch.nn.functional.avg_pool2d(x, 2)
            return self.fc(x.view(x.size(0), -1))
''')


def _ship_net(tmp_path):
    tmp_path.mkdir()
    (tmp_path / "shipnet_model.py").write_text(MODEL_SOURCE)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("shipnet_model")
        torch.manual_seed(3)
        model = prepared(module.ShipNet, p=3, batch=torch.randn(16, 3, 8, 8))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("shipnet_model", None)
    return model


CHILD = textwrap.dedent('''
    import importlib.util, sys, torch
    assert importlib.util.find_spec("shipnet_model") is None, "the model's module must not be importable here"
    assert importlib.util.find_spec("nn_models") is None
    torch.set_num_threads(int(sys.argv[4]))
    from na_kernels.nn import load_snn
    snn = load_snn(sys.argv[1])
    x = torch.load(sys.argv[2], weights_only=True)
    with torch.no_grad():
        out = dict(snn=snn(x), ann=snn.ann(x), T=snn.T, chunk=snn.chunk,
                   thresholds={k: v.threshold for k, v in snn.if_layers.items()},
                   amplitudes={k: v.amplitude for k, v in snn.if_layers.items()},
                   report=snn.conversion_report)
    torch.save(out, sys.argv[3])
''')


@pytest.mark.slow
def test_fresh_process_bit_identical(tmp_path):
    """Saved, then loaded in a new Python process where the model's class cannot be imported:
    the same outputs bit for bit, the calibrated per-channel thresholds, T and chunk."""
    model = _ship_net(tmp_path / "model")
    snn = to_snn(model, T=5, chunk=2)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    calibrate_thresholds(snn, [x], iterations=2)
    assert any(layer.calibrated for layer in snn.if_layers.values())
    with torch.no_grad():
        expected, expected_ann = snn(x), snn.ann(x)
    work = tmp_path / "elsewhere"
    work.mkdir()
    snn.save(work / "net.snn")
    torch.save(x, work / "x.pt")
    env = dict(os.environ, PYTHONPATH=REPO)
    subprocess.run([sys.executable, "-c", CHILD, str(work / "net.snn"), str(work / "x.pt"), str(work / "out.pt"),
                    str(torch.get_num_threads())], cwd=work, env=env, check=True, timeout=300)
    out = torch.load(work / "out.pt", weights_only=True)
    assert torch.equal(out["snn"], expected)
    assert torch.equal(out["ann"], expected_ann)
    assert (out["T"], out["chunk"]) == (5, 2)
    assert out["report"] == snn.conversion_report
    for name, layer in snn.if_layers.items():
        assert torch.equal(out["thresholds"][name], layer.threshold)
        assert torch.equal(out["amplitudes"][name], layer.amplitude)


@pytest.mark.parametrize("model_class", [TinyResNet, SmallCNN])
def test_round_trip_in_process(model_class):
    torch.manual_seed(0)
    snn = to_snn(prepared(model_class, per_channel=True), T=3)
    buffer = io.BytesIO()
    snn.save(buffer)
    buffer.seek(0)
    loaded = load_snn(buffer)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), snn(x))
        assert torch.equal(loaded(x, T=4, chunk=3), snn(x, T=4, chunk=3))
    assert list(loaded.if_layers) == list(snn.if_layers)
    assert list(loaded.synapses) == list(snn.synapses)
    assert "BatchNorm" not in str(loaded.network)  # folded weights were saved
    # the meters that count from an IF layer's spike counts still point at the loaded layer
    sources = {name: meter.__dict__.get("_source") for name, meter in loaded.network.named_modules()
               if type(meter).__name__ == "SynapseMeter"}
    assert any(sources.values())
    for name, source in sources.items():
        if source:
            assert any(source[0] is layer for layer in loaded.network.modules()), name
    for net in (snn, loaded):
        net.reset_statistics()
        with torch.no_grad():
            net(x)
    assert loaded.statistics() == snn.statistics()
    buffer.seek(0)
    record = torch.load(buffer, weights_only=True)  # plain data: readable without na_kernels' code
    assert record["format"] == FORMAT


def test_not_a_network_file(tmp_path):
    garbage = tmp_path / "garbage.snn"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(SerializationError, match="not a na_kernels SpikingNetwork file"):
        load_snn(garbage)
    other = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(SerializationError, match="not a na_kernels SpikingNetwork file"):
        load_snn(other)


def test_pickled_object_refused(tmp_path):
    """torch.save(snn) pickles classes; load_snn reads weights_only and refuses it clearly."""
    snn = to_snn(prepared(SmallCNN), T=2)
    path = tmp_path / "pickled.pt"
    torch.save(snn, path)
    with pytest.raises(SerializationError, match="not a na_kernels SpikingNetwork file"):
        load_snn(path)


def _assert_load_refuses(record, path, match):
    """record saved to path, as a forged or future file would be, and load_snn refusing it."""
    torch.save(record, path)
    with pytest.raises(SerializationError, match=match):
        load_snn(path)


def test_incompatible_version(tmp_path):
    record = snn_record(to_snn(prepared(SmallCNN), T=2))
    record["version"] = 99
    _assert_load_refuses(record, tmp_path / "future.snn", "format version 99")


class _Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = prepared(SmallCNN)

    def forward(self, x):
        return torch.cumsum(self.model(x), 1)


def test_unsupported_function_names_the_node():
    snn = to_snn(_Cumsum(), T=2, allow_nonlinear_after_spikes=True)  # cumsum: outside the converter's list too
    with pytest.raises(SerializationError, match=r"fx node 'cumsum'.*torch.cumsum"):
        snn.save(io.BytesIO())


def test_hook_refused():
    snn = to_snn(prepared(SmallCNN), T=2)
    snn.network.fc1.register_forward_hook(lambda *args: None)
    with pytest.raises(SerializationError, match="module fc1 has _forward_hooks"):
        snn.save(io.BytesIO())


def test_forged_function_refused(tmp_path):
    """A file whose graph names a function outside the allow-list is refused, not called."""
    record = snn_record(to_snn(prepared(SmallCNN), T=2))
    flatten = next(n for n in record["graph"] if n["op"] == "call_function")
    flatten["target"] = "torch:load"
    _assert_load_refuses(record, tmp_path / "forged.snn", "'torch:load'")


def test_forged_references_refused(tmp_path):
    """get_attr may only read saved tensors, getattr only tensor metadata: nothing else of the module."""
    record = snn_record(to_snn(prepared(SmallCNN), T=2))
    placeholder = record["graph"][0]["name"]
    record["graph"].insert(1, dict(op="get_attr", name="code", target="_code", args=(), kwargs={"__dict__": []}))
    path = tmp_path / "forged.snn"
    _assert_load_refuses(record, path, "'_code', not a saved parameter or buffer")
    record["graph"][1] = dict(op="call_function", name="peek", target="builtins:getattr",
                              args=({"__node__": placeholder}, "__class__"), kwargs={"__dict__": []})
    _assert_load_refuses(record, path, "reads an attribute outside")
