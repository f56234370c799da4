"""save_snn / load_snn: a converted network as a file that loads without the model's code."""

import importlib
import io
import json
import operator
import os
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from nn_models import SmallCNN, TinyResNet, prepared
from torch import nn

from na_kernels.io.serialize import FORMAT, SerializationError, pack, snn_header, snn_to_bytes
from na_kernels.nn import calibrate_thresholds, load_snn, to_snn

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


CHILD = textwrap.dedent("""
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
""")


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
    subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(work / "net.snn"),
            str(work / "x.pt"),
            str(work / "out.pt"),
            str(torch.get_num_threads()),
        ],
        cwd=work,
        env=env,
        check=True,
        timeout=300,
    )
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
    # the IF layers that count their consumers' SOPs from their spike counts keep those routes
    routes = [layer.routes for layer in snn.if_layers.values()]
    assert any(routes) and [layer.routes for layer in loaded.if_layers.values()] == routes
    for net in (snn, loaded):
        net.reset_statistics()
        with torch.no_grad():
            net(x)
    assert loaded.statistics() == snn.statistics()
    header, _ = snn_header(snn)  # plain data: a JSON header and the tensors' bytes
    assert header["format"] == FORMAT


def test_statistics_and_switches_survive_the_round_trip():
    """Every counter is saved (spikes, neuron steps, route and meter SOPs, MACs, samples, the
    per-channel counts and ANN levels) and the record switches: the statistics after loading are
    those before, and later runs add to them as they do in the saved network."""
    torch.manual_seed(0)
    snn = to_snn(prepared(TinyResNet, per_channel=True), T=3)
    x = torch.randn(2, 3, 16, 16)
    layer = snn.if_layers["layer1.0.relu"]
    layer.record_channels = layer.record_ann_levels = True
    with torch.no_grad():
        snn(x)
        snn(x[:1], T=2, chunk=1)
        snn.ann(x)
    snn.synapses["layer1.1.conv1"].record = False  # a switch: later runs do not count there
    before = snn.statistics()
    assert before["samples"] == 3 and before["sample_steps"] == 8 and before["total"]["sops_per_sample"] > 0
    assert before["total"]["analog_macs_per_sample"] > 0 and layer.ann_channel_levels is not None
    loaded = load_snn(io.BytesIO(snn_to_bytes(snn)))
    assert loaded.statistics() == before
    loaded_layer = loaded.if_layers["layer1.0.relu"]
    assert loaded_layer.record_channels and loaded_layer.record_ann_levels
    assert torch.equal(loaded_layer.channel_spikes, layer.channel_spikes)
    assert torch.equal(loaded_layer.ann_channel_levels, layer.ann_channel_levels)
    assert not loaded.synapses["layer1.1.conv1"].record
    assert set(loaded.network.state_dict()) == set(snn.network.state_dict())  # counters stay non-persistent
    for net in (snn, loaded):
        with torch.no_grad():
            net(x)
    assert loaded.statistics() == snn.statistics()
    assert torch.equal(loaded_layer.channel_spikes, layer.channel_spikes)
    loaded.reset_statistics()
    assert loaded.statistics()["total"]["spikes"] == 0 and snn.statistics()["total"]["spikes"] > 0


# ---------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def small_snn():
    torch.manual_seed(0)
    return to_snn(prepared(SmallCNN, per_channel=True), T=2)


def _forged(snn, mutate):
    """The bytes of ``snn``'s file after ``mutate(header, payload)`` (it may return a new payload),
    with a valid checksum: a file a stranger crafted, not a damaged one."""
    header, payload = snn_header(snn)
    payload = bytearray(payload)
    result = mutate(header, payload)
    return pack(header, bytes(payload if result is None else result))


def _refused(data, match):
    with pytest.raises(SerializationError, match=match):
        load_snn(io.BytesIO(data))


def _module(header, name):
    return next(m for m in header["modules"] if m["name"] == name)


def _node(header, op):
    return next(n for n in header["graph"] if n["op"] == op)


# ---------------------------------------------------------------------------------- exact and in eval mode


class _DropoutNet(nn.Module):
    """Conv-BN-ReLU, Dropout, a BatchNorm1d left unfolded, Dropout: what torchvision's VGG and
    MobileNetV2 hold after conversion."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, 6)
        self.bn1d = nn.BatchNorm1d(6)
        self.drop2 = nn.Dropout(0.3)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        x = self.drop(self.act(self.bn(self.conv(x))))
        return self.out(self.drop2(self.bn1d(self.fc(torch.flatten(x, 1)))))


@pytest.mark.parametrize("fold_bn", [True, False])
def test_dropout_and_batchnorm_load_in_eval_mode_bit_for_bit(fold_bn):
    torch.manual_seed(1)
    model = prepared(_DropoutNet, p=3, batch=torch.randn(16, 3, 8, 8))
    snn = to_snn(model, T=3, fold_bn=fold_bn)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = snn(x)
    snn.train()  # saved in training mode: still loads in eval mode
    buffer = io.BytesIO()
    snn.save(buffer)
    loaded = load_snn(io.BytesIO(buffer.getvalue()))
    assert not any(m.training for m in loaded.modules())
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
        assert torch.equal(loaded(x), expected)  # no dropout mask: the same twice
    kinds = {type(m).__name__ for m in loaded.network.modules()}
    assert "Dropout" in kinds and ("BatchNorm1d" in kinds) == (not fold_bn)
    for name, tensor in snn.network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[name], tensor), name


# ---------------------------------------------------------------------------------- damaged files


def test_empty_truncated_and_foreign_files(tmp_path, small_snn):
    buffer = io.BytesIO()
    small_snn.save(buffer)
    data = buffer.getvalue()
    _refused(b"", "is empty")
    _refused(data[:10], "truncated")
    for cut in (40, 60, len(data) // 2, len(data) - 1):
        _refused(data[:cut], "truncated|damaged")
    _refused(b"this is not a network file", "not a na_kernels SpikingNetwork file")
    other = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(SerializationError, match="torch.save file: .* format version 1"):
        load_snn(other)
    torch.save(small_snn, tmp_path / "pickled.pt")  # a pickle: never unpickled
    with pytest.raises(SerializationError, match="not a na_kernels SpikingNetwork file"):
        load_snn(tmp_path / "pickled.pt")


def test_other_format_versions_are_refused(small_snn):
    data = bytearray(_forged(small_snn, lambda h, p: None))
    for version in (1, 3, 2**32 - 1):
        data[8:12] = version.to_bytes(4, "little")
        _refused(bytes(data), f"format version {version}; this na_kernels .* reads version 2 only")


def test_flipped_bit_is_a_checksum_error(small_snn):
    data = bytearray(_forged(small_snn, lambda h, p: None))
    for position in (60, len(data) // 2, len(data) - 3):  # in the header, a weight, the last tensor
        flipped = bytearray(data)
        flipped[position] ^= 0x10
        _refused(bytes(flipped), "sha256 checksum does not match")
    _refused(bytes(data) + b"\0", "sha256 checksum does not match")


def test_size_limit_is_checked_before_reading(tmp_path, small_snn):
    path = tmp_path / "net.snn"
    small_snn.save(path)
    size = path.stat().st_size
    with pytest.raises(SerializationError, match=f"is {size} bytes, more than max_bytes = 1000"):
        load_snn(path, max_bytes=1000)
    with pytest.raises(SerializationError, match="more than max_bytes"):
        load_snn(io.BytesIO(path.read_bytes()), max_bytes=1000)
    assert load_snn(path, max_bytes=size).T == 2


def test_declared_shapes_must_be_stored_in_full(small_snn):
    """A small file cannot declare a large tensor: the shape's bytes must be in the payload, and
    that is checked before anything is allocated."""

    def huge(header, payload):
        header["tensors"][0]["shape"] = [1 << 27]  # 512 MiB of float32 in a file of a few KiB
        header["tensors"][0]["nbytes"] = 1 << 29

    _refused(_forged(small_snn, huge), r"tensor 0: .*need 536870912 bytes|past the end")

    def shorter(header, payload):
        header["tensors"][0]["shape"] = [1]

    _refused(_forged(small_snn, shorter), "tensor 0: its shape")


# ---------------------------------------------------------------------------------- values


def _tensor_index(header, module, key, kind="buffers"):
    value = _module(header, module)[kind][key]
    return value[0] if kind == "parameters" else value


def _set_floats(header, payload, index, value):
    entry = header["tensors"][index]
    count = entry["nbytes"] // 4
    payload[entry["offset"] : entry["offset"] + entry["nbytes"]] = struct.pack(f"<{count}f", *[value] * count)


@pytest.mark.parametrize(
    "module,key,kind,value,match",
    [
        ("fc1", "weight", "parameters", float("nan"), "holds NaN or infinite values"),
        ("fc1", "bias", "parameters", float("inf"), "holds NaN or infinite values"),
        ("features.2", "threshold", "buffers", 0.0, "threshold must be a float32 .* > 0"),
        ("features.2", "amplitude", "buffers", -1.0, "amplitude must be a float32 .* > 0"),
        ("features.2", "amplitude", "buffers", float("nan"), "NaN or infinite"),
    ],
)
def test_bad_weights_thresholds_and_amplitudes(small_snn, module, key, kind, value, match):
    _refused(_forged(small_snn, lambda h, p: _set_floats(h, p, _tensor_index(h, module, key, kind), value)), match)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("T", 2.7, "network.T must be an int >= 1, got 2.7"),
        ("T", 0, "T must be an int >= 1"),
        ("T", True, "network.T must be an int"),
        ("chunk", -1, "chunk must be an int >= 1"),
        ("samples", -5, "samples must be an int >= 0"),
    ],
)
def test_bad_network_values(small_snn, key, value, match):
    _refused(_forged(small_snn, lambda h, p: h["network"].__setitem__(key, value)), match)


def _set_values(header, payload, index, value):
    entry = header["tensors"][index]
    code = {"int64": "q", "float64": "d", "float32": "f"}[entry["dtype"]]
    count = entry["nbytes"] // struct.calcsize(code)
    payload[entry["offset"] : entry["offset"] + entry["nbytes"]] = struct.pack(f"<{count}{code}", *[value] * count)


def _route(header, layer="features.5"):  # ["features.7", ["conv", ...], [["avg", [2, 2], [2, 2], [0, 0], false]]]
    return _module(header, layer)["config"]["routes"][0]


def _config(header, module):
    return _module(header, module)["config"]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda h: _route(h).__setitem__(0, "nowhere"), "route 0 leads to 'nowhere', which is not a routed meter"),
        (lambda h: _route(h).__setitem__(0, "fc2"), "leads to 'fc2', which is not .* with the route's synapse spec"),
        (lambda h: _route(h).__setitem__(0, 7), "meter name must be printable text"),
        (lambda h: _route(h).append([]), r"routes\[0\]: .* is not \(meter name, synapse spec, pool specs\)"),
        (lambda h: _route(h)[1].__setitem__(2, [0, 1]), r"synapse: stride: \(0, 1\) is not a tuple of 2 ints in 1"),
        (lambda h: _route(h)[1].__setitem__(1, [3, 3, 3]), "stride: .* is not a tuple of 3 ints"),
        (lambda h: _route(h)[1].__setitem__(1, [2**31, 3]), "kernel: .* ints in 1 .. 2"),
        (lambda h: _route(h)[1].__setitem__(5, True), r"out_channels // groups True is not an int >= 1"),
        (lambda h: _route(h)[1].__setitem__(5, 2.0), "out_channels // groups 2.0"),
        (lambda h: (_route(h)[1].__setitem__(3, "same"), _route(h)[1].__setitem__(2, [2, 2])), "'same' needs stride 1"),
        (lambda h: _route(h)[1].__setitem__(3, "full"), "padding: 'full' is not a tuple"),
        (lambda h: _route(h)[1].append(1), "is not a synapse spec"),
        (lambda h: _route(h)[1].__setitem__(1, {"size": [3, 3]}), "is not a synapse spec"),  # a torch.Size
        (lambda h: _route(h)[1].__setitem__(2, {"list": [1, 1]}), "stride: .* is not a tuple"),
        (
            lambda h: _config(h, "synapse_meter_2").__setitem__("weight_shape", {"size": [16, 8, 3, 3]}),
            "weight_shape: .* is not a tuple",
        ),
        (lambda h: _route(h)[1].__setitem__(0, "deconv"), "is not a synapse spec"),
        (lambda h: _route(h).__setitem__(1, {"list": ["linear", 5]}), "is not a synapse spec"),
        (lambda h: _route(h)[2][0].__setitem__(4, 0), "pool 0: .* is not a pool spec"),
        (lambda h: _route(h)[2][0].__setitem__(3, [2, 1]), "padding .* is more than half the kernel"),
        (lambda h: _route(h)[2][0].__setitem__(2, [2, -1]), "pool 0: stride: .* ints in 1"),
        (lambda h: _route(h)[2].__setitem__(0, ["adaptive", [0, 1]]), "is not a pool spec"),
        (lambda h: _route(h)[2].__setitem__(0, ["adaptive", [1]]), r"its pools \(\[1\]\) and synapse \(2\)"),
        (lambda h: _route(h, "features.9")[2].append(["adaptive", [1]]), "different spatial dims"),
        (lambda h: _route(h).__setitem__(2, [["adaptive", [1, None]]] * 17), "at most 16 pools"),
        (lambda h: _config(h, "features.5").__setitem__("routes", [_route(h)] * 1025), "at most 1024 routes"),
        (lambda h: _config(h, "features.5").__setitem__("routes", {"list": []}), "routes must be a list"),
        (lambda h: _config(h, "synapse_meter_2").__setitem__("routed", False), "leads to 'features.7', which is not a"),
        (lambda h: _config(h, "synapse_meter_0").__setitem__("routed", True), "a routed meter is spike-driven"),
        (
            lambda h: (
                _config(h, "synapse_meter_0").__setitem__("routed", True),
                _config(h, "synapse_meter_0").__setitem__("spike_driven", True),
            ),
            "meter 'features.0' is routed .* but no IF layer has a route to it",
        ),
        (lambda h: _config(h, "synapse_meter_2").__setitem__("name", "fc1"), "meter name 'fc1' is another meter's"),
        (lambda h: _config(h, "synapse_meter_2")["weight_shape"].__setitem__(2, 5), "does not fit the synapse spec"),
        (lambda h: _config(h, "synapse_meter_2")["weight_shape"].__setitem__(0, 12), "does not fit the synapse spec"),
        (lambda h: _config(h, "synapse_meter_3")["weight_shape"].__setitem__(0, 31), "does not fit the synapse spec"),
        (
            lambda h: _config(h, "synapse_meter_2").__setitem__("layer_type", "Conv1d"),
            "Conv1d has 1 spatial dims, not 2",
        ),
        (lambda h: _config(h, "synapse_meter_2").__setitem__("layer_type", "ConvTranspose2d"), "not a synaptic layer"),
        (lambda h: _config(h, "synapse_meter_3").__setitem__("synapse", ["linear", -1]), "is not a synapse spec"),
        (lambda h: _config(h, "synapse_meter_2").__setitem__("spike_driven", 1), "spike_driven must be a bool"),
        (lambda h: _config(h, "synapse_meter_2").__setitem__("extra", 1), "a SynapseMeter record holds"),
        (lambda h: _module(h, "synapse_meter_2")["state"].__setitem__("record", 1), "1 is not a valid bool"),
        (lambda h: _module(h, "synapse_meter_2").__setitem__("count_from", "features.5"), "module record .* holds"),
        (lambda h: _module(h, "fc1").__setitem__("state", {"record": True}), "a Linear record holds no state"),
    ],
)
def test_bad_routes_and_meters(small_snn, mutate, match):
    """Routes and meters: every field checked by type, range and structure (that of
    stats.synapse_spec / pool_spec), and each route leads to a routed meter of the file."""

    def forge(header, payload):
        mutate(header)

    _refused(_forged(small_snn, forge), match)


def _point(header, module, key, other, other_key, kind="buffers"):
    _module(header, module)[kind][key] = _module(header, other)["buffers"][other_key]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (
            lambda h, p: _set_values(h, p, _tensor_index(h, "features.2", "spikes"), -1),
            "spikes must be torch.int64 .* >= 0",
        ),
        (
            lambda h, p: _set_values(h, p, _tensor_index(h, "synapse_meter_1", "sops"), -0.5),
            "sops must be torch.float64",
        ),
        (lambda h, p: _set_values(h, p, _tensor_index(h, "features.5", "route_sops"), -2.0), "route_sops must be"),
        (lambda h, p: _set_values(h, p, _tensor_index(h, "features.2", "spikes"), 5), "5 spikes in 0 neuron steps"),
        (lambda h, p: _point(h, "features.2", "spikes", "features.2", "threshold"), "spikes must be torch.int64"),
        (
            lambda h, p: _point(h, "features.5", "route_sops", "synapse_meter_1", "sops"),
            r"route_sops must be torch.float64 of shape \(1,\)",
        ),
        (lambda h, p: _point(h, "synapse_meter_1", "macs", "synapse_meter_1", "sops"), "macs must be torch.int64"),
        (
            lambda h, p: _point(h, "features.2", "channel_spikes", "features.2", "spikes", "state"),
            "channel_spikes: .* is not a valid count vector",
        ),
        (
            lambda h, p: _point(h, "features.2", "ann_channel_levels", "features.2", "threshold", "state"),
            "not a valid level vector",
        ),
        (
            lambda h, p: _point(h, "features.2", "ann_channel_levels", "features.5", "route_sops", "state"),
            r"per-channel statistics of \[1\] channels, thresholds of 8",
        ),
        (lambda h, p: h["network"].__setitem__("samples", 2**63), "samples must be an int >= 0 \\(int64\\)"),
        (lambda h, p: h["network"].__setitem__("samples", 3), "sample_steps .* is less than network.samples"),
    ],
)
def test_bad_counters(small_snn, mutate, match):
    _refused(_forged(small_snn, mutate), match)


def test_loaded_counters_are_never_shared():
    """Counters are updated in place: a file whose records share one counter tensor loads them
    as separate tensors, so one layer's runs never show in another's counts."""
    torch.manual_seed(0)
    snn = to_snn(prepared(SmallCNN, per_channel=True), T=2)
    data = _forged(snn, lambda h, p: _point(h, "features.5", "spikes", "features.2", "spikes"))
    loaded = load_snn(io.BytesIO(data))
    with torch.no_grad():
        loaded(torch.randn(2, 3, 16, 16))
        snn(torch.randn(2, 3, 16, 16))
    layers = loaded.if_layers
    assert layers["features.5"].spikes.data_ptr() != layers["features.2"].spikes.data_ptr()
    assert int(layers["features.5"].spikes) <= int(layers["features.5"].neuron_steps)


def test_save_refuses_routes_load_would_refuse():
    torch.manual_seed(0)
    snn = to_snn(prepared(SmallCNN), T=2)
    layer = snn.if_layers["features.2"]
    layer.add_route("ghost", ("linear", 3))
    with pytest.raises(
        SerializationError, match="save_snn cannot write it: module features.2: route 1 leads to 'ghost'"
    ):
        snn.save(io.BytesIO())
    layer.routes = layer.routes[:1] + (("features.3", ("conv", (3, 3), (0, 1), (1, 1), (1, 1), 8), ()),)
    with pytest.raises(
        SerializationError,
        match=r"save_snn cannot write it: module features.2.routes\[1\]: "
        "synapse: stride",
    ):
        snn.save(io.BytesIO())


def test_shape_disagreement_with_the_constructor(small_snn):
    def wider(header, payload):
        _module(header, "fc1")["config"]["in_features"] = 17  # the weight is [.., 256]

    _refused(_forged(small_snn, wider), r"module fc1.weight: shape \(\d+, 256\).*needs \(\d+, 17\)")

    def unknown_argument(header, payload):
        _module(header, "fc1")["config"]["device"] = "cuda"

    _refused(_forged(small_snn, unknown_argument), "Linear takes no argument 'device'")


def test_wrong_record_types(small_snn):
    _refused(_forged(small_snn, lambda h, p: h.__setitem__("modules", "all of them")), "'modules' is not")
    _refused(_forged(small_snn, lambda h, p: h["modules"].append(["not", "a", "record"])), "not a record")
    _refused(
        _forged(small_snn, lambda h, p: _module(h, "fc1").__setitem__("type", "os.system")),
        "type 'os.system' is not one load_snn rebuilds",
    )
    _refused(_forged(small_snn, lambda h, p: h["graph"].__setitem__(1, 42)), "graph node 1 is not a record")
    _refused(
        _forged(small_snn, lambda h, p: h["tensors"][0].__setitem__("dtype", "object")), "dtype 'object' is not one of"
    )
    _refused(_forged(small_snn, lambda h, p: h.__setitem__("version", "2")), "not a .* version 2 record")


def test_graph_structure_errors(small_snn):
    def missing_edge(header, payload):
        header["graph"][2]["args"] = [{"node": "nowhere"}]

    _refused(_forged(small_snn, missing_edge), "refers to fx node 'nowhere', which is not defined before it")

    def cycle(header, payload):  # a node reading a later node's value
        header["graph"][1]["args"] = [{"node": header["graph"][3]["name"]}]

    _refused(_forged(small_snn, cycle), "which is not defined before it")

    def two_inputs(header, payload):
        header["graph"].insert(1, dict(_node(header, "placeholder"), name="x2"))

    _refused(_forged(small_snn, two_inputs), "two inputs named 'x'")

    def twice(header, payload):
        header["graph"].insert(1, dict(header["graph"][1]))

    _refused(_forged(small_snn, twice), "is defined twice")

    def no_output(header, payload):
        header["graph"].pop()

    _refused(_forged(small_snn, no_output), "no output node")


# ---------------------------------------------------------------------------------- attacks

CANARY_MODULE = "na_kernels_canary_module"


def _hostile(canary):
    """Strings that run code (touching ``canary`` or importing CANARY_MODULE) wherever they would
    reach generated source, getattr, an import or a call."""
    touch = f"__import__('pathlib').Path({str(canary)!r}).touch()"
    return [
        touch,
        f"x=({touch})",
        f"x): {touch}\n    return (x",
        f"{touch} or x",
        f"__import__({CANARY_MODULE!r})",
        CANARY_MODULE,
        "__class__",
        "_modules",
        "forward",
        "self",
        "training",
        "graph",
        "a.__dict__",
        "..",
        "0x",
        "",
        "é",
        "x\x00",
        "torch.load",
        "os.system",
        "builtins.eval",
        "untyped_storage",
        "type",
    ]


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A file that must never be created and a module that must never be imported."""
    path = tmp_path / "CANARY"
    (tmp_path / f"{CANARY_MODULE}.py").write_text(f"open({str(path)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    assert not path.exists(), "a string from a file ran as code"
    assert CANARY_MODULE not in sys.modules, "a string from a file imported a module"


def _assert_refused_or_inert(data, x=None):
    """load_snn raises SerializationError or gives a network (whose forward may fail, but runs no
    file string); nothing else."""
    try:
        snn = load_snn(io.BytesIO(data))
    except SerializationError:
        return False
    if x is not None:
        try:
            with torch.no_grad():
                snn(x)
        except Exception:  # a forged but valid file may compute nonsense; the canary tells code from data
            pass
    return True


def test_attack_placeholder_default(small_snn, canary):
    """A default value in the input's record would land in ``def forward(self, x=...)`` and run
    inside load_snn."""
    for payload in _hostile(canary):
        _refused(
            _forged(small_snn, lambda h, p: _node(h, "placeholder").__setitem__("args", [payload])),
            "an input takes no default value",
        )
        renamed = _forged(small_snn, lambda h, p: _node(h, "placeholder").__setitem__("target", payload))
        if not (payload.isidentifier() and payload.isascii() and not payload.startswith("_")) or payload == "self":
            _refused(renamed, "input name|not a plain identifier")
        else:
            _assert_refused_or_inert(renamed, torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize(
    "field",
    [
        "module name",
        "call_module target",
        "parameter name",
        "buffer name",
        "kwargs key",
        "node name",
        "node reference",
        "constructor argument",
        "class name",
        "get_attr target",
        "function target",
        "method target",
        "module type",
        "IF layer name",
        "synapse source",
        "route meter",
        "report entry",
        "dtype",
        "constant",
    ],
)
def test_attack_names(small_snn, canary, field):
    """Every field that holds a name: a hostile string is refused and never runs."""
    x = torch.randn(2, 3, 16, 16)
    for payload in _hostile(canary):

        def mutate(h, p):
            call = next(n for n in h["graph"] if n["op"] == "call_module" and n["target"] == "fc1")
            if field == "module name":
                _module(h, "fc1")["name"] = payload
            elif field == "call_module target":
                call["target"] = payload
            elif field == "parameter name":
                params = _module(h, "fc1")["parameters"]
                params[payload] = params.pop("bias")
            elif field == "kwargs key":
                call["kwargs"] = {"dict": [[payload, 1]]}
            elif field == "node name":
                call["name"] = payload
            elif field == "constructor argument":
                _module(h, "fc1")["config"][payload] = 1
            elif field == "class name":
                h["class_name"] = payload
            elif field == "buffer name":
                buffers = _module(h, "features.2")["buffers"]
                buffers[payload] = buffers.pop("amplitude")
            elif field == "node reference":
                call["args"] = [{"node": payload}]
            elif field == "function target":
                next(n for n in h["graph"] if n["op"] == "call_function")["target"] = payload
            elif field == "method target":
                h["graph"].insert(
                    1, dict(op="call_method", name="m", target=payload, args=[{"node": "x"}], kwargs={"dict": []})
                )
            elif field == "module type":
                _module(h, "fc1")["type"] = payload
            elif field == "IF layer name":
                _module(h, "features.2")["config"]["name"] = payload
            elif field == "synapse source":
                _module(h, "synapse_meter_1")["config"]["sources"] = [payload]
            elif field == "route meter":  # a label, but it must name a routed meter of the file
                _module(h, "features.2")["config"]["routes"][0][0] = payload
            elif field == "report entry":
                h["network"]["conversion_report"] = {"dict": [["if_layers", {"list": [payload]}]]}
            elif field == "dtype":
                h["tensors"][0]["dtype"] = payload
            elif field == "constant":
                next(n for n in h["graph"] if n["op"] == "call_function")["args"][1] = payload
            else:
                h["graph"].insert(1, dict(op="get_attr", name="peek", target=payload, args=[], kwargs={"dict": []}))

        runs_code = "touch" in payload or CANARY_MODULE in payload  # forward too, where it could fire late
        loaded = _assert_refused_or_inert(_forged(small_snn, mutate), x if runs_code else None)
        plain = payload.isidentifier() and payload.isascii() and not payload.startswith("_")
        if field not in ("IF layer name", "synapse source", "report entry", "constant"):  # labels and data
            assert plain or not loaded, payload  # anything but a plain identifier is refused
        if field == "route meter":
            assert not loaded, payload


def test_attack_storage_type_import(small_snn, canary):
    """``x.untyped_storage().type("some.module")`` imports that module: untyped_storage and type
    are not in METHODS, and no method may be called on a constant."""

    def storage(h, p):
        h["graph"][1:1] = [
            dict(op="call_method", name="storage", target="untyped_storage", args=[{"node": "x"}], kwargs={"dict": []}),
            dict(
                op="call_method",
                name="imported",
                target="type",
                args=[{"node": "storage"}, CANARY_MODULE],
                kwargs={"dict": []},
            ),
        ]

    _refused(_forged(small_snn, storage), "Tensor.untyped_storage, which is not one of")

    def on_a_constant(h, p):
        h["graph"].insert(1, dict(op="call_method", name="m", target="view", args=["text", 1], kwargs={"dict": []}))

    _refused(_forged(small_snn, on_a_constant), "must be called on a tensor the graph computed")

    def on_an_int(h, p):
        h["graph"][1:1] = [
            dict(op="call_method", name="n", target="size", args=[{"node": "x"}], kwargs={"dict": []}),
            dict(op="call_method", name="m", target="view", args=[{"node": "n"}], kwargs={"dict": []}),
        ]

    _refused(_forged(small_snn, on_an_int), "must be called on a tensor the graph computed")


def test_attack_functions_and_attributes(small_snn, canary):
    """A function outside FUNCTIONS, getattr of anything but tensor metadata, a private get_attr."""

    def function(h, p):
        next(n for n in h["graph"] if n["op"] == "call_function")["target"] = "torch.load"

    _refused(_forged(small_snn, function), "calls 'torch.load', which is not one of")

    def peek(h, p):
        h["graph"].insert(
            1,
            dict(
                op="call_function",
                name="peek",
                target="builtins.getattr",
                args=[{"node": "x"}, "__class__"],
                kwargs={"dict": []},
            ),
        )

    _refused(_forged(small_snn, peek), "getattr may read")

    def code(h, p):
        h["graph"].insert(1, dict(op="get_attr", name="code", target="_code", args=[], kwargs={"dict": []}))

    _refused(_forged(small_snn, code), "not a plain identifier")

    def method_name(h, p):
        h["graph"].insert(1, dict(op="get_attr", name="w", target="fc1.forward", args=[], kwargs={"dict": []}))

    _refused(_forged(small_snn, method_name), "not a saved parameter or buffer")


def _mutations(header, rng, hostile):
    """One random change of a copy of ``header``: a leaf replaced, a key renamed or dropped."""
    header = json.loads(json.dumps(header))
    containers = []

    def walk(value):
        if isinstance(value, dict):
            containers.append(value)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            containers.append(value)
            for v in value:
                walk(v)

    walk(header)
    pool = hostile + [None, True, -1, 0, 1, 2.7, 1e308, 2**63, [], {}, {"node": "x"}, "x" * 300, [1, 2]]
    for _ in range(rng.randint(1, 3)):
        target = rng.choice(containers)
        if not target:
            continue
        if isinstance(target, dict):
            key = rng.choice(list(target))
            action = rng.random()
            if action < 0.6:
                target[key] = rng.choice(pool)
            elif action < 0.8:
                target[rng.choice(hostile)] = target.pop(key)
            else:
                del target[key]
        else:
            index = rng.randrange(len(target))
            if rng.random() < 0.8:
                target[index] = rng.choice(pool)
            else:
                target.insert(index, target[index])
    return header


def _fuzz_snn(snn, canary, rounds):
    import random

    rng = random.Random(1234)
    hostile = _hostile(canary)
    header, payload = snn_header(snn)
    valid = pack(header, payload)
    x = torch.randn(2, 3, 16, 16)
    for _ in range(rounds):
        choice = rng.random()
        if choice < 0.2:  # damaged: bits flipped, cut or extended
            data = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            assert not _assert_refused_or_inert(bytes(data))
        elif choice < 0.3:
            assert not _assert_refused_or_inert(valid[: rng.randrange(len(valid))])
        else:  # crafted: a valid checksum over a changed header
            _assert_refused_or_inert(pack(_mutations(header, rng, hostile), payload), x)


def test_fuzz_snn_files(small_snn, canary):
    """Mutated valid files: only SerializationError, and no file string ever runs."""
    _fuzz_snn(small_snn, canary, rounds=60)


@pytest.mark.slow
def test_fuzz_snn_files_long(canary):
    torch.manual_seed(0)
    _fuzz_snn(to_snn(prepared(TinyResNet, per_channel=True), T=2), canary, rounds=1000)


def test_sequential_round_trip_and_map_location():
    """A traced nn.Sequential: its input is named 'input' and its nodes _0, _1, ..."""
    from na_kernels.nn import replace_activations

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    model, _ = replace_activations(model, p=3, noise=None, lam=2.0)
    snn = to_snn(model.eval(), T=2)
    buffer = io.BytesIO()
    snn.save(buffer)
    loaded = load_snn(io.BytesIO(buffer.getvalue()), map_location="cpu")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), snn(x))
    with pytest.raises(TypeError, match="map_location must be a device"):
        load_snn(io.BytesIO(buffer.getvalue()), map_location=lambda storage, location: storage)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.act(self.conv(x))
        return self.conv(y).view(-1, 3, 8, 8) + self.conv(y)


def _with_in_place(first_op):
    """The converted _Residual with its addition made in place (``out += y``, as a graph may hold),
    on the value made by ``first_op`` (call_module: a fresh conv output; call_method: a view)."""
    torch.manual_seed(0)
    snn = to_snn(prepared(_Residual, p=3, batch=torch.randn(8, 3, 8, 8)), T=2)
    add = next(n for n in snn.network.graph.nodes if n.target is operator.add)
    if first_op == "call_module":
        add.args = (add.args[1], add.args[0])
    assert add.args[0].op == first_op
    add.target = operator.iadd
    snn.network.recompile()
    return snn


def test_in_place_addition_on_a_fresh_value_is_written_as_add():
    snn = _with_in_place("call_module")
    loaded = load_snn(io.BytesIO(_forged(snn, lambda h, p: None)))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = snn(x)
        assert torch.equal(loaded(x), expected)
    graph = json.dumps(snn_header(snn)[0]["graph"])
    assert "iadd" not in graph and "operator.add" in graph


def test_in_place_addition_on_a_view_is_refused():
    with pytest.raises(SerializationError, match="in-place iadd on a value that is read elsewhere or may share"):
        _with_in_place("call_method").save(io.BytesIO())


@pytest.mark.filterwarnings("ignore:Attempted to insert a get_attr Node")
def test_save_refuses_what_load_would_refuse():
    """A tensor constant (a plain attribute, not a parameter or buffer) is refused when saving."""
    snn = to_snn(prepared(SmallCNN), T=2)
    snn.network.const = torch.ones(1)  # what fx makes of a torch.tensor(...) constant in forward
    with snn.network.graph.inserting_after(next(iter(snn.network.graph.nodes))):
        snn.network.graph.get_attr("const")
    with pytest.raises(SerializationError, match="'const', which is not a parameter or buffer"):
        snn.save(io.BytesIO())
