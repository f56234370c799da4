"""replace_activations: module and functional ReLUs, unconvertible activations, pooling."""

import copy

import pytest
import torch
from nn_models import SmallCNN, TinyResNet
from torch import fx, nn
from torch.nn import functional as F

from na_kernels.nn import NoisyQuant, UnconvertibleActivationError, replace_activations


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 2)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x).relu()


def count_noisy(model):
    return sum(isinstance(m, NoisyQuant) for m in model.modules())


def test_module_relus_are_swapped_in_place():
    model = TinyResNet()
    result, report = replace_activations(model, p=3, lam=4.0, noise="uniform")
    assert result is model
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert count_noisy(model) == 4  # the block's shared self.relu stays one module
    assert [name for name, _ in report.replaced] == ["relu", "layer1.0.relu", "layer1.1.relu", "layer2.0.relu"]
    assert model.layer1[0].relu.p == 3 and model.layer1[0].relu.noise == "uniform"
    assert "replaced 4" in str(report)


def test_functional_relus_are_caught_through_fx():
    model = FunctionalNet()
    x = torch.randn(5, 4)
    result, report = replace_activations(model, p=7, lam=2.0, noise=None)
    assert isinstance(result, fx.GraphModule)
    assert count_noisy(result) == 3
    kinds = sorted(kind for _, kind in report.replaced)
    assert kinds == ["F.relu()", "Tensor.relu()", "torch.relu()"]

    # the rewritten model computes the quantized network
    def reference(x):
        quant = lambda v: torch.clamp(torch.floor(v * 7 / 2.0 + 0.5), 0, 7) * 2.0 / 7  # noqa: E731
        h = quant(model.fc1(x))
        h = quant(model.fc2(h))
        return quant(model.fc3(h))

    result.eval()
    torch.testing.assert_close(result(x), reference(x), rtol=1e-5, atol=1e-5)


def test_mixed_model_module_and_functional():
    model = SmallCNN()
    result, report = replace_activations(model, p=3)
    assert count_noisy(result) == 4
    assert ("relu", "F.relu()") in report.replaced
    assert result(torch.randn(2, 3, 16, 16)).shape == (2, 5)


class WithUnconvertible(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.Hardtanh()  # [-1, 1]: not a clip activation
        self.head = nn.Sequential(nn.Linear(4, 4), nn.GELU())

    def forward(self, x):
        return self.head(self.act(self.fc(x)))


def test_unconvertible_modules_raise_with_their_names():
    with pytest.raises(UnconvertibleActivationError) as info:
        replace_activations(WithUnconvertible(), p=3)
    message = str(info.value)
    assert "act: Hardtanh" in message and "head.1: GELU" in message


def test_unconvertible_left_only_when_told():
    model, report = replace_activations(WithUnconvertible(), p=3, skip=["act", "head.*"])
    assert isinstance(model.act, nn.Hardtanh)
    assert {name for name, _, _ in report.left} == {"act", "head.1"}
    with pytest.warns(UserWarning, match="allow_unconvertible"):
        model, report = replace_activations(WithUnconvertible(), p=3, allow_unconvertible=True)
    assert len(report.left) == 2


class MyReLU(nn.ReLU):
    def forward(self, x):
        return super().forward(x) * 2


class LeakyFunctional(nn.Module):
    def forward(self, x):
        return F.leaky_relu(x) + F.hardtanh(x)


def test_relu_subclass_and_functional_unconvertibles_raise():
    with pytest.raises(UnconvertibleActivationError, match="ReLU subclass"):
        replace_activations(nn.Sequential(nn.Linear(2, 2), MyReLU()), p=3)
    with pytest.raises(UnconvertibleActivationError) as info:
        replace_activations(LeakyFunctional(), p=3)
    assert "F.leaky_relu()" in str(info.value) and "F.hardtanh()" in str(info.value)


def test_skip_leaves_a_relu():
    model, report = replace_activations(
        nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU()), p=3, skip=["3"]
    )
    assert isinstance(model[1], NoisyQuant) and isinstance(model[3], nn.ReLU)
    assert report.left == [("3", "ReLU", "skipped by the caller")]


def test_maxpool_to_avgpool():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, 2, padding=1))
    model, report = replace_activations(model, p=3, maxpool_to_avgpool=True)
    assert isinstance(model[2], nn.AvgPool2d) and model[2].kernel_size == 2 and model[2].padding == 1
    assert report.pooling == ["2"]
    untouched, _ = replace_activations(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)), p=3)
    assert isinstance(untouched[2], nn.MaxPool2d)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        if x.sum() > 0:
            return F.relu(self.fc(x))
        return self.fc(x)


def test_untraceable_forward_raises_unless_tracing_is_off():
    with pytest.raises(RuntimeError, match="could not trace"):
        replace_activations(Untraceable(), p=3)
    with pytest.warns(UserWarning, match="not looked for"):
        _, report = replace_activations(Untraceable(), p=3, trace_functional=False)
    assert not report.functional_checked and "NOT traced" in str(report)


def test_bad_arguments_raise_before_touching_the_model():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match="p must"):
        replace_activations(model, p=0)
    assert isinstance(model[1], nn.ReLU)
    with pytest.raises(TypeError, match="nn.Module"):
        replace_activations(lambda x: x, p=3)


def test_transformer_layer_with_a_functional_activation_raises():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16)
    with pytest.raises(UnconvertibleActivationError, match="calls relu internally"):
        replace_activations(nn.Sequential(layer), p=3)


def test_clip_activations_become_noisy_quant_with_lam_at_the_clip_level():
    from nn_models import TinyMobileNet, randomize_batchnorm

    torch.manual_seed(0)
    model = TinyMobileNet()
    randomize_batchnorm(model)
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    reference = model(x)
    converted, report = replace_activations(model, p=255, noise=None, lam=1.0)
    kinds = dict(report.replaced)
    assert kinds["stem.2"] == "ReLU6 (λ = 6)" and kinds["last.1"] == "Hardtanh (λ = 4)"
    assert any(kind == "F.relu6() (λ = 6)" for kind in kinds.values())
    assert len(report.replaced) == 7 and not report.left
    lams = {name: float(m.lam.detach()) for name, m in converted.named_modules() if isinstance(m, NoisyQuant)}
    assert sorted(set(round(v, 4) for v in lams.values())) == [4.0, 6.0]
    # at p = 255 the quantized network is the clipped one to within half a step per layer
    torch.testing.assert_close(converted.eval()(x), reference, rtol=0, atol=0.1)
    from na_kernels.nn import to_snn

    snn = to_snn(converted, T=4)
    assert len(snn.if_layers) == 7
    assert sorted({round(float(layer.threshold), 4) for layer in snn.if_layers.values()}) == [4.0, 6.0]


def test_hardtanh_not_starting_at_zero_stays_unconvertible():
    with pytest.raises(UnconvertibleActivationError, match=r"0: Hardtanh"):
        replace_activations(nn.Sequential(nn.Hardtanh(-0.5, 2.0)), p=3)


def test_allow_unconvertible_does_not_lead_back_to_replace_activations():
    from na_kernels.nn import to_snn

    with pytest.warns(UserWarning):
        model, _ = replace_activations(WithUnconvertible(), p=3, allow_unconvertible=True)
    with pytest.raises(ValueError) as info:
        to_snn(model, T=3)
    message = str(info.value)
    assert "act: Hardtanh" in message and "head.1: GELU" in message
    assert "run replace_activations first" not in message and "retrain" in message


@pytest.mark.peers
def test_mobilenet_v2_from_torchvision_converts():
    torchvision = pytest.importorskip("torchvision")
    from na_kernels.nn import to_snn

    model, report = replace_activations(torchvision.models.mobilenet_v2(num_classes=10), p=3)
    assert len(report.replaced) == 35 and all("λ = 6" in kind for _, kind in report.replaced)
    snn = to_snn(model.eval(), T=2)
    assert len(snn.if_layers) == 35


def test_report_counts_call_sites_and_per_call_site_gives_each_its_own_lam():
    from na_kernels.nn import to_snn

    torch.manual_seed(0)
    model, report = replace_activations(TinyResNet(), p=3)
    assert "replaced 4 activation(s) at 7 call site(s)" in str(report)
    assert report.call_sites == {"relu": 1, "layer1.0.relu": 2, "layer1.1.relu": 2, "layer2.0.relu": 2}
    assert "layer1.0.relu: ReLU (called at 2 sites, one λ)" in str(report)

    torch.manual_seed(0)
    reference = TinyResNet().eval()
    per_site, report = replace_activations(copy.deepcopy(reference), p=3, per_call_site=True)
    assert isinstance(per_site, fx.GraphModule)
    assert "replaced 7 activation(s) at 7 call site(s)" in str(report)
    assert set(report.call_sites) == {
        "relu",
        "layer1.0.relu",
        "layer1.0.relu_call2",
        "layer1.1.relu",
        "layer1.1.relu_call2",
        "layer2.0.relu",
        "layer2.0.relu_call2",
    }
    assert count_noisy(per_site) == 7
    per_site.eval()
    x = torch.randn(2, 3, 8, 8)
    shared_out = replace_activations(reference, p=3)[0](x)
    torch.testing.assert_close(per_site(x), shared_out, rtol=0, atol=0)  # same λ everywhere to begin with
    # the two sites of one ReLU now have two λ: changing one leaves the other
    per_site.get_submodule("layer1.0.relu_call2").lam = 2.5
    assert abs(float(per_site.get_submodule("layer1.0.relu").lam.detach()) - 8.0) < 1e-5
    snn = to_snn(per_site, T=3)
    thresholds = {name: float(layer.threshold) for name, layer in snn.if_layers.items()}
    assert len(thresholds) == 7 and abs(thresholds["layer1.0.relu_call2"] - 2.5) < 1e-5
    assert abs(thresholds["layer1.0.relu"] - 8.0) < 1e-5
