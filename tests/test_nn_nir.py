"""to_nir / from_nir: a converted network as a NIR graph, and back, exactly."""
import numpy as np
import pytest
import torch
from torch import nn

from na_kernels.nn import calibrate_thresholds, to_snn
from na_kernels.nn.nir_export import NIRExportError, NIRImportError, from_nir, to_nir

from nn_models import SmallCNN, TinyResNet, prepared

nir = pytest.importorskip("nir")


def _snn(model_class, calibrate, per_channel=False, T=4):
    torch.manual_seed(0)
    snn = to_snn(prepared(model_class, per_channel=per_channel), T=T, chunk=3)
    if calibrate:
        calibrate_thresholds(snn, [torch.randn(4, 3, 16, 16)], iterations=2)
    return snn


@pytest.mark.parametrize("model_class", [TinyResNet, SmallCNN])
@pytest.mark.parametrize("calibrate,per_channel", [(False, False), (False, True), (True, False)])
def test_round_trip_through_a_file_is_exact(tmp_path, model_class, calibrate, per_channel):
    snn = _snn(model_class, calibrate, per_channel)
    path = tmp_path / "net.nir"
    nir.write(path, to_nir(snn, (3, 16, 16)))
    graph = nir.read(path)  # type-checks the nodes' shapes along every edge
    assert graph.check_types()
    rebuilt = from_nir(path)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), snn(x))
        assert torch.equal(rebuilt.ann(x), snn.ann(x))
    assert (rebuilt.T, rebuilt.chunk) == (4, 3)
    assert list(rebuilt.if_layers) == list(snn.if_layers)
    assert rebuilt.statistics_table() == snn.statistics_table()  # the same spikes, layer by layer
    for name, layer in snn.if_layers.items():
        assert torch.equal(rebuilt.if_layers[name].threshold, layer.threshold)
        assert torch.equal(rebuilt.if_layers[name].amplitude, layer.amplitude)


def test_nodes_edges_and_metadata():
    snn = _snn(TinyResNet, calibrate=True)
    graph = to_nir(snn, (3, 16, 16))
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    assert set(kinds.values()) == {"Input", "Conv2d", "IF", "AvgPool2d", "Flatten", "Affine", "Output"}
    assert "BatchNorm" not in str(kinds)
    # a residual sum: two edges into the IF layer after it (conv2 and the identity shortcut's
    # amplitude, a 1x1 conv with the per-channel amplitudes on its diagonal: importers read no Scale)
    into = [src for src, dst in graph.edges if dst == "layer1_0_relu_1"]
    assert into == ["layer1_0_conv2", "relu_amplitude"]
    layer = snn.if_layers["relu"]
    scale = graph.nodes["relu_amplitude"]
    assert scale.metadata["role"] == "amplitude" and scale.weight.shape == (8, 8, 1, 1)
    amplitude = np.broadcast_to(layer.amplitude.double().reshape(-1).numpy(), (8,))
    assert np.array_equal(scale.weight[:, :, 0, 0], np.diag(amplitude))
    # IF: θ broadcast to (C, H, W), r = 1, v_reset = 0; our semantics in metadata
    node = graph.nodes["relu"]
    assert node.v_threshold.shape == (8, 16, 16)
    theta = layer.threshold.double().numpy().reshape(-1, 1, 1)
    assert np.array_equal(node.v_threshold, np.broadcast_to(theta, (8, 16, 16)))
    assert np.all(node.r == 1) and np.all(node.v_reset == 0)
    assert (node.metadata["reset"], node.metadata["v_init"], node.metadata["firing"]) == ("subtract", 0.5, ">=")
    meta = graph.metadata
    assert (meta["T"], meta["chunk"], meta["reset"], meta["firing"]) == (4, 3, "subtract", ">=")
    assert "mean" in meta["readout"]
    # the amplitude is folded into the consuming conv's weights, per input channel, exactly
    conv = snn.network.get_submodule("layer1.0.conv1")
    expected = conv.weight.detach().double() * layer.amplitude.double().reshape(1, -1, 1, 1)
    assert np.array_equal(graph.nodes["layer1_0_conv1"].weight, expected.numpy())


def test_linear_after_flatten_repeats_the_amplitude_per_position():
    """SmallCNN: IF -> AvgPool -> Flatten -> Linear: a_c is applied to each of the H*W columns of c."""
    snn = _snn(SmallCNN, calibrate=False, per_channel=True)
    graph = to_nir(snn, (3, 16, 16))
    last_if = snn.if_layers["features.9"]
    fc1 = snn.network.get_submodule("fc1")
    factor = last_if.amplitude.double().repeat_interleave(16)  # 16 channels x (4 x 4) positions
    assert np.array_equal(graph.nodes["fc1"].weight, (fc1.weight.detach().double() * factor).numpy())
    assert graph.nodes["flatten"].start_dim == -3  # from the end: the same with or without the batch


class _WithMaxPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = prepared(SmallCNN)
        self.pool = nn.MaxPool2d(1)

    def forward(self, x):
        return self.net(self.pool(x))


class _WithCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = prepared(SmallCNN)

    def forward(self, x):
        return torch.cat([self.net(x), self.net(x)], 1)


def test_unknown_operations_raise_naming_the_node():
    with pytest.raises(NIRExportError, match=r"fx node 'pool'.*MaxPool2d"):
        to_nir(to_snn(_WithMaxPool(), T=2, allow_maxpool=True), (3, 16, 16))
    with pytest.raises(NIRExportError, match=r"fx node 'cat'.*torch.cat"):
        to_nir(to_snn(_WithCat(), T=2), (3, 16, 16))
    with pytest.raises(NIRExportError, match=r"BatchNorm2d"):
        to_nir(to_snn(prepared(SmallCNN), T=2, fold_bn=False), (3, 16, 16))


def test_from_nir_refuses_foreign_graphs():
    graph = nir.NIRGraph.from_list(nir.Affine(weight=np.ones((2, 3)), bias=np.zeros(2)),
                                   nir.IF(r=np.ones(2), v_threshold=np.ones(2)))
    with pytest.raises(NIRExportError, match="written by na_kernels"):
        from_nir(graph)


class _Functional(nn.Module):
    """F.avg_pool2d, x.view(x.size(0), -1), a Linear without bias, a conv without bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 5, bias=False)

    def forward(self, x):
        x = nn.functional.avg_pool2d(self.act(self.conv(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class _Gain(_Functional):
    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.avg_pool2d(self.act(self.conv(x)) * 2.0, 2), 1))


def test_functional_pool_view_and_no_bias_round_trip():
    torch.manual_seed(0)
    snn = to_snn(prepared(_Functional, p=3), T=3)
    graph = to_nir(snn, (3, 16, 16))
    kinds = sorted(type(n).__name__ for n in graph.nodes.values())
    assert kinds == ["AvgPool2d", "Conv2d", "Flatten", "IF", "Input", "Linear", "Output"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(from_nir(graph)(x), snn(x))


def test_multiplication_raises_naming_the_node():
    torch.manual_seed(0)
    with pytest.raises(NIRExportError, match=r"fx node 'mul' \(torch.mul\(\)\) has no NIR equivalent"):
        to_nir(to_snn(prepared(_Gain, p=3), T=2), (3, 16, 16))


def test_from_nir_refuses_other_if_semantics():
    graph = to_nir(_snn(SmallCNN, calibrate=False, T=2), (3, 16, 16))
    graph.nodes["features_2"].metadata["reset"] = "zero"
    with pytest.raises(NIRExportError, match=r"IF node 'features_2' has reset/v_init/firing \('zero'"):
        from_nir(graph)


# ---------------------------------------------------------------------------------- reading files from strangers


def test_import_error_is_an_export_error():
    assert issubclass(NIRImportError, NIRExportError) and issubclass(NIRImportError, ValueError)


def _hand_written(T=3, amplitude=0.5, threshold=0.5, weight=None):
    """A NIR graph written by hand (not by to_nir): Input(4) -> Affine -> IF -> Linear -> Output."""
    w1 = np.arange(12, dtype=np.float64).reshape(3, 4) / 10 if weight is None else weight
    meta_if = {"reset": "subtract", "v_init": 0.5, "firing": ">=", "p": 3, "threshold": np.array([threshold]),
               "amplitude": np.array([amplitude]), "threshold_dims": 0, "amplitude_dims": 0, "layer": "hidden"}
    return nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([4])),
               "fc1": nir.Affine(weight=w1, bias=np.zeros(3), metadata={"torch_target": "fc1", "index": 1}),
               "act": nir.IF(r=np.ones(3), v_threshold=np.full(3, 0.5), v_reset=np.zeros(3), metadata=meta_if),
               "fc2": nir.Linear(weight=np.ones((2, 3)), metadata={"torch_target": "fc2", "index": 3}),
               "output": nir.Output(output_type=np.array([2]))},
        edges=[("input", "fc1"), ("fc1", "act"), ("act", "fc2"), ("fc2", "output")],
        metadata={"format": "na_kernels.nir", "format_version": 1, "T": T, "chunk": 0})


def test_hand_written_graph_and_file(tmp_path):
    x = torch.randn(5, 4)
    expected = from_nir(_hand_written())
    assert expected.T == 3 and list(expected.if_layers) == ["hidden"]
    layer = expected.if_layers["hidden"]
    assert layer.threshold.item() == 0.5 and layer.p == 3
    path = tmp_path / "hand.nir"
    nir.write(path, _hand_written())
    with torch.no_grad():
        assert torch.equal(from_nir(path)(x), expected(x))
        # by hand: IF(fc1 x) through T = 3 steps, fc2 of the spikes, running mean
        h = x @ torch.from_numpy(_hand_written().nodes["fc1"].weight).float().T
        v, outs = 0.25 * torch.ones_like(h), []
        for _ in range(3):
            v = v + h
            s = (v >= 0.5).float()
            v = v - 0.5 * s
            outs.append((s * 0.5) @ torch.ones(3, 2))
        mean = torch.cumsum(torch.stack(outs), 0) / torch.arange(1, 4).reshape(3, 1, 1)
        torch.testing.assert_close(expected(x), mean)


@pytest.mark.parametrize("change,match", [
    (lambda g: g.metadata.__setitem__("T", 2.7), "graph metadata T must be an int, got 2.7"),
    (lambda g: g.metadata.__setitem__("T", 0), "T must be an int >= 1"),
    (lambda g: g.metadata.__setitem__("format_version", 2), "reads format_version 1, the graph has 2"),
    (lambda g: g.nodes["act"].metadata.__setitem__("amplitude", np.array([-1.0])), "amplitude must be > 0"),
    (lambda g: g.nodes["act"].metadata.__setitem__("amplitude", np.array([np.nan])), "NaN or infinite"),
    (lambda g: g.nodes["act"].metadata.__setitem__("threshold", np.array([0.0])), "threshold must be > 0"),
    (lambda g: g.nodes["act"].metadata.__setitem__("p", 2.5), "metadata p must be an int"),
    (lambda g: g.nodes["act"].metadata.pop("p"), "lacks na_kernels' metadata 'p'"),
    (lambda g: g.nodes["fc1"].weight.__setitem__((0, 0), np.inf), "fc1.*weight holds NaN or infinite"),
    (lambda g: g.nodes["fc1"].weight.__setitem__((0, 0), 1e300), "beyond float32"),
    (lambda g: g.edges.append(("fc2", "nowhere")), "names node 'nowhere', which the graph does not hold"),
    (lambda g: g.edges.append(("fc2", "fc1")), "the graph has a cycle"),
    (lambda g: g.nodes.__setitem__("input2", nir.Input(input_type=np.array([4]))), "one Input and one Output"),
    (lambda g: g.nodes.__setitem__("fc2", nir.Linear(weight=np.ones((2, 5)))), r"input has shape \(3,\).*needs \(5,\)"),
    (lambda g: g.nodes["act"].metadata.update(threshold=np.ones(2), threshold_dims=1), "2 per-channel thresholds"),
    (lambda g: g.nodes.__setitem__("fc1", nir.LI(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3))),
     "'fc1' is a LI, which to_nir does not write"),
])
def test_malformed_graphs_raise_naming_what_is_wrong(change, match):
    graph = _hand_written()
    change(graph)
    with pytest.raises(NIRImportError, match=match):
        from_nir(graph)


def test_damaged_and_oversized_files(tmp_path):
    import h5py

    path = tmp_path / "net.nir"
    nir.write(path, _hand_written())
    data = path.read_bytes()
    for name, content in (("empty", b""), ("truncated", data[: len(data) // 2]), ("text", b"not hdf5" * 20)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(NIRImportError, match="not a readable NIR"):
            from_nir(tmp_path / name)
    with pytest.raises(NIRImportError, match="more than max_bytes = 100"):
        from_nir(path, max_bytes=100)
    bomb = tmp_path / "bomb.nir"  # a few KiB declaring 2 GiB of (compressible) weights
    with h5py.File(bomb, "w") as f:
        f.create_dataset("node/type", data=b"NIRGraph")
        f.create_dataset("node/nodes/fc/weight", shape=(1 << 29,), dtype="f4", compression="gzip",
                         chunks=(1 << 16,))
    assert bomb.stat().st_size < 64 * 1024
    with pytest.raises(NIRImportError, match=r"declares more than max_bytes = 1073741824 bytes"):
        from_nir(bomb)
    with pytest.raises(NIRImportError, match=r"declares more than max_bytes = 1048576 bytes"):
        from_nir(bomb, max_bytes=1 << 20)


def test_attack_metadata_module_name(tmp_path):
    """The IF node's torch_target (a module name) and node names once reached a call_module target."""
    canary = tmp_path / "CANARY"
    touch = f"__import__('pathlib').Path({str(canary)!r}).touch()"
    for hostile in (touch, f"x.{touch}", "__class__", "forward", "training", "fc1", "a..b", "_modules"):
        graph = _hand_written()
        graph.nodes["act"].metadata["torch_target"] = hostile
        graph.nodes["fc2"].metadata["torch_target"] = hostile
        try:
            snn = from_nir(graph)
        except NIRImportError:
            continue
        names = [name for name, _ in snn.network.named_modules()]
        assert hostile not in names or hostile == "fc1"  # a plain, free name is only a name
        with torch.no_grad():
            snn(torch.randn(2, 4))
    for hostile in (touch, "__init__", "a.b"):
        graph = _hand_written()
        graph.nodes[hostile] = graph.nodes.pop("fc2")
        graph.edges[:] = [(hostile if s == "fc2" else s, hostile if d == "fc2" else d) for s, d in graph.edges]
        with pytest.raises(NIRImportError, match="not a plain identifier|not a module path"):
            from_nir(graph)
    graph = _hand_written()
    graph.metadata["format"] = touch
    with pytest.raises(NIRImportError, match="written by na_kernels"):
        from_nir(graph)
    assert not canary.exists()


def _fuzz_nir(rounds, tmp_path, seed=7):
    import copy
    import random

    rng = random.Random(seed)
    canary = tmp_path / "CANARY"
    touch = f"__import__('pathlib').Path({str(canary)!r}).touch()"
    pool = [touch, "__class__", "forward", "", "x" * 2000, None, -1, 0, 2.7, np.nan, np.inf, 1e300, True,
            np.array([]), np.array([-1.0]), np.array([np.nan]), np.ones((2, 2)), b"\xff\xfe", {"a": 1}]
    base = to_nir(_snn(SmallCNN, calibrate=True, T=2), (3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    for _ in range(rounds):
        graph = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            action = rng.random()
            name = rng.choice(list(graph.nodes))
            node = graph.nodes[name]
            if action < 0.4 and node.metadata:
                node.metadata[rng.choice(list(node.metadata))] = rng.choice(pool)
            elif action < 0.55:
                graph.metadata[rng.choice(["T", "chunk", "format_version", "format"])] = rng.choice(pool)
            elif action < 0.7:
                fields = [k for k, v in vars(node).items() if isinstance(v, np.ndarray)]
                if fields:
                    setattr(node, rng.choice(fields), rng.choice(pool))
            elif action < 0.85 and graph.edges:
                graph.edges[rng.randrange(len(graph.edges))] = (name, rng.choice(list(graph.nodes) + [touch]))
            else:
                graph.nodes[rng.choice([touch, "__class__", "forward", "a.b", "x"])] = graph.nodes.pop(name)
        try:
            snn = from_nir(graph)
        except NIRImportError:
            continue
        try:
            with torch.no_grad():
                snn(x)
        except Exception:  # a crafted but consistent graph may compute nonsense; the canary tells code from data
            pass
    path = tmp_path / "net.nir"
    nir.write(path, base)
    valid = path.read_bytes()
    for _ in range(max(rounds // 10, 3)):  # damaged files: bits flipped, cut
        data = bytearray(valid)
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            data = data[:rng.randrange(len(data))]
        path.write_bytes(bytes(data))
        try:
            from_nir(path)
        except NIRImportError:
            pass
    assert not canary.exists(), "a string from a NIR graph ran as code"


def test_fuzz_nir_graphs(tmp_path):
    """Mutated graphs and damaged files: only NIRImportError, and no string from them runs."""
    _fuzz_nir(40, tmp_path)


@pytest.mark.slow
def test_fuzz_nir_graphs_long(tmp_path):
    _fuzz_nir(1500, tmp_path, seed=11)
