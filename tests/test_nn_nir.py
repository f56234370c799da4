"""to_nir / from_nir: a converted network as a NIR graph, and back, exactly."""
import numpy as np
import pytest
import torch
from torch import nn

from na_kernels.nn import calibrate_thresholds, to_snn
from na_kernels.io.nir_export import NIRExportError, from_nir, to_nir

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
    assert set(kinds.values()) == {"Input", "Conv2d", "IF", "Scale", "AvgPool2d", "Flatten", "Affine", "Output"}
    assert "BatchNorm" not in str(kinds)
    # a residual sum: two edges into the IF layer after it (conv2 and the identity shortcut's Scale)
    into = [src for src, dst in graph.edges if dst == "layer1_0_relu_1"]
    assert into == ["layer1_0_conv2", "relu_amplitude"]
    layer = snn.if_layers["relu"]
    scale = graph.nodes["relu_amplitude"]
    assert np.array_equal(scale.scale, np.broadcast_to(layer.amplitude.double().numpy(), (8, 16, 16)))
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
    assert graph.nodes["flatten"].start_dim == 0  # NIR dims exclude the batch


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
