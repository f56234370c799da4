"""to_snn: conversion identity, convergence with T, call sites, time repetition, errors."""

import copy

import pytest
import torch
from nn_models import BasicBlock, SmallCNN, TinyResNet, clipped_ann, prepared, randomize_batchnorm, relative_error
from torch import nn

import na_kernels
from na_kernels.nn import NoisyQuant, replace_activations, to_snn


@pytest.mark.parametrize("p", [3, 7, 15])
@pytest.mark.parametrize("per_channel", [False, True])
def test_one_hidden_layer_converts_exactly_at_T_equal_p(p, per_channel):
    model = nn.Sequential(
        nn.Linear(10, 32),
        NoisyQuant(p, lam=1.5, noise=None, per_channel=per_channel, channels=32 if per_channel else None),
        nn.Linear(32, 4),
    )
    if per_channel:
        model[1].lam = torch.rand(32) * 2 + 0.5
    model.eval()
    x = torch.randn(64, 10)
    snn = to_snn(model, T=p)
    with torch.no_grad():
        out = snn(x)
        ann = model(x)
    assert out.shape == (p, 64, 4)
    torch.testing.assert_close(out[-1], ann, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(snn.ann(x), ann, rtol=1e-6, atol=1e-6)
    # the hidden layer's spike counts are the quantized levels q = clamp(floor(x*p/λ + 0.5), 0, p)
    layer = snn.if_layers["1"]
    h = model[0](x)
    lam = model[1].lam.detach()
    q = torch.clamp(torch.floor(h * p / lam + 0.5), 0, p)
    assert int(layer.spikes) == int(q.sum())


@pytest.mark.parametrize("model_class", [SmallCNN, TinyResNet])
@pytest.mark.parametrize("per_channel", [False, True])
def test_error_against_the_ann_falls_as_T_grows(model_class, per_channel):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    model = prepared(model_class, p=4, per_channel=per_channel)
    snn = to_snn(model, T=64)
    with torch.no_grad():
        out = snn(x)
        reference = clipped_ann(model)(x)
    errors = [relative_error(out[T - 1], reference) for T in (2, 8, 64)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.05, errors


@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
def test_noise_trained_models_convert(noise):
    model = prepared(SmallCNN, p=3, noise=noise)
    snn = to_snn(model, T=32)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        out = snn(x)
    assert out.shape == (32, 4, 5) and torch.isfinite(out).all()
    assert relative_error(out[-1], clipped_ann(model)(x)) < 0.15


def test_single_step_gaussian_p1_converts():
    model = nn.Sequential(nn.Linear(6, 16), NoisyQuant(1, lam=1.0, noise="gaussian"), nn.Linear(16, 3)).eval()
    snn = to_snn(model, T=1)
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(snn(x)[0], model(x), rtol=1e-5, atol=1e-5)


def test_a_module_called_twice_gives_two_if_layers():
    block = BasicBlock(4, 4)
    block, _ = replace_activations(block, p=3, lam=2.0)
    snn = to_snn(block.eval(), T=4)
    assert list(snn.if_layers) == ["relu", "relu_call2"]
    first, second = snn.if_layers.values()
    assert first is not second
    with torch.no_grad():
        snn(torch.randn(2, 4, 6, 6))
    stats = snn.statistics()
    assert [layer["name"] for layer in stats["if_layers"]] == ["relu", "relu_call2"]
    assert all(layer["neurons"] == 4 * 6 * 6 for layer in stats["if_layers"])
    assert stats["if_layers"][0]["feeds"] == ["conv2"]


def test_resnet_has_one_if_layer_per_call_site():
    snn = to_snn(prepared(TinyResNet), T=2)
    assert len(snn.if_layers) == 7  # stem + 2 per block x 3 blocks
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in snn.modules()) == 0


def test_stem_runs_once_and_later_layers_see_T_times_B():
    model = prepared(SmallCNN)
    snn = to_snn(model, T=6)
    seen = {}
    for name, module in snn.network.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_pre_hook(lambda m, i, name=name: seen.__setitem__(name, i[0].shape[0]))
    with torch.no_grad():
        snn(torch.randn(3, 3, 16, 16))
    assert seen["features.0"] == 3  # the input is the same at every step
    assert seen["features.3"] == 18 and seen["fc1"] == 18 and seen["fc2"] == 18


class BatchSizeView(nn.Module):
    """Uses the input's batch size after the first IF layer: the runner must repeat the input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.act = NoisyQuant(3, lam=1.0, noise=None)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        batch = x.shape[0]
        return self.fc(self.act(self.conv(x)).reshape(batch, -1))


def test_batch_size_arithmetic_on_the_input_still_works():
    model = BatchSizeView().eval()
    snn = to_snn(model, T=3)
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        out = snn(x)
    assert out.shape == (3, 5, 3)
    torch.testing.assert_close(out[-1], model(x), rtol=1e-5, atol=1e-5)  # one IF layer, T = p: exact


def test_conversion_errors_are_clear():
    relu_model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match="replace_activations"):
        to_snn(relu_model, T=4)
    with pytest.raises(ValueError, match="no NoisyQuant"):
        to_snn(nn.Sequential(nn.Linear(2, 2)), T=4)
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), NoisyQuant(3), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match="max pooling"):
        to_snn(pooled, T=4)
    assert to_snn(pooled, T=4, allow_maxpool=True)(torch.randn(1, 1, 6, 6)).shape == (4, 1, 2, 2, 2)
    model = nn.Sequential(nn.Linear(2, 2), NoisyQuant(3))
    for bad in (0, -1):
        with pytest.raises(ValueError, match="T must"):
            to_snn(model, T=bad)
    with pytest.raises(ValueError, match="T must"):  # the shared rule: an integral number >= 1
        to_snn(model, T=2.5)
    with pytest.raises(TypeError, match="T must"):
        to_snn(model, T="4")
    assert to_snn(model, T=4.0).T == 4
    with pytest.raises(ValueError, match="chunk must"):
        to_snn(model, T=4, chunk=0)
    with pytest.raises(ValueError, match="T must"):
        to_snn(model, T=4)(torch.randn(1, 2), T=0)
    with pytest.raises(ValueError, match="never initialised"):
        to_snn(nn.Sequential(nn.Linear(2, 2), NoisyQuant(3, lam="auto")), T=4)


def test_original_model_is_not_modified():
    model = prepared(SmallCNN)
    before = copy.deepcopy(model.state_dict())
    to_snn(model, T=4)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("arch, shape", [("digits_cnn", (2, 1, 8, 8)), ("resnet20", (2, 3, 32, 32))])
def test_package_models_convert(arch, shape):
    models = pytest.importorskip("na_kernels.app.models")
    model = randomize_batchnorm(models.build_model(arch, 10, in_channels=shape[1]))
    model, report = replace_activations(model, p=3, lam=2.0)
    snn = to_snn(model.eval(), T=4)
    assert len(snn.if_layers) == len(report.replaced)  # one activation module per site
    assert not snn.conversion_report["unfolded_batchnorm"] and snn.conversion_report["stem_runs_once"]
    with torch.no_grad():
        out = snn(torch.randn(*shape))
    assert out.shape == (4, shape[0], 10) and torch.isfinite(out).all()


class FunctionalQuantNet(nn.Module):
    """The package's functional drop-in used in a forward: ``noisy_quant(self.c1(x), p, self.lam)``."""

    def __init__(self, lam, p=3):
        super().__init__()
        self.p = p
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        if isinstance(lam, torch.Tensor):
            self.lam = nn.Parameter(lam.clone())
        else:
            self.lam = lam
        self.fc = nn.Linear(4 * 16, 3)

    def forward(self, x):
        y = na_kernels.noisy_quant(self.c1(x), self.p, self.lam, training=self.training)
        return self.fc(torch.flatten(y, 1))


@pytest.mark.parametrize(
    "lam", [1.25, torch.tensor(1.3), torch.tensor([1.0, 2.0, 1.5, 0.5])], ids=["float", "scalar", "per_channel"]
)
def test_functional_noisy_quant_is_an_activation_site(lam):
    torch.manual_seed(0)
    model = FunctionalQuantNet(lam)
    gm = torch.fx.symbolic_trace(model)  # the op's input check does not reject fx Proxies
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"].count(na_kernels.noisy_quant) == 1
    _, report = replace_activations(copy.deepcopy(model), p=3)
    assert report.kept == [("noisy_quant", "noisy_quant()")] and not report.replaced
    snn = to_snn(model, T=3)
    (layer,) = snn.if_layers.values()
    expected = lam if isinstance(lam, torch.Tensor) else torch.tensor(lam)
    torch.testing.assert_close(layer.threshold, expected, rtol=0, atol=0)
    assert layer.p == 3
    x = torch.randn(16, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(snn.ann(x), model.eval()(x), rtol=0, atol=0)
        # one hidden layer: lossless at T = p
        torch.testing.assert_close(snn(x)[-1], model.eval()(x), rtol=1e-5, atol=1e-5)


def test_functional_noisy_quant_lam_from_the_input_is_refused_by_name():
    class Net(nn.Module):
        def forward(self, x):
            return na_kernels.noisy_quant(x, 3, x.abs().amax() + 1, training=self.training)

    with pytest.raises(ValueError, match=r"noisy_quant\(\) lam: the value depends on the model's input"):
        to_snn(Net(), T=3)


class AfterSpikes(nn.Module):
    """One IF site, then ``op`` on its spikes."""

    def __init__(self, op):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.act = NoisyQuant(3, lam=1.0, noise=None)
        self.op = op
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        s = self.act(self.fc(x))
        if self.op == "amax":
            return s.amax(dim=1)
        if self.op == "softmax":
            return torch.softmax(self.head(s), dim=1)
        if self.op == "product":
            return self.head(s * s)
        if self.op == "layernorm":
            return self.head(self.norm(s))
        if self.op == "linear":  # scaled, shifted, concatenated, averaged: all linear in time
            y = torch.cat([s * 0.5, s / 2.0 - 1.0, 3 * s], dim=1)
            return self.head(y.reshape(y.shape[0], 3, 8).mean(1) + x.sum(1, keepdim=True))
        raise AssertionError(self.op)


@pytest.mark.parametrize(
    "op, named",
    [("amax", "Tensor.amax()"), ("softmax", "torch.softmax()"), ("product", "mul"), ("layernorm", "norm: LayerNorm")],
)
def test_an_operation_not_linear_in_time_after_spikes_raises_naming_the_node(op, named):
    model = AfterSpikes(op).eval()
    with pytest.raises(ValueError, match="not linear in time") as info:
        to_snn(model, T=3)
    assert named in str(info.value) and "allow_nonlinear_after_spikes=True" in str(info.value)


def test_amax_after_spikes_converts_only_when_the_caller_opts_in():
    torch.manual_seed(0)
    model = AfterSpikes("amax").eval()
    x = torch.randn(64, 6)
    snn = to_snn(model, T=3, allow_nonlinear_after_spikes=True)
    with torch.no_grad():
        # the time average of a max is not the max of the quantized activation: what the check prevents
        assert not torch.allclose(snn(x)[-1], model(x))


def test_operations_linear_in_time_after_spikes_convert_exactly_at_T_equal_p():
    torch.manual_seed(0)
    model = AfterSpikes("linear").eval()
    x = torch.randn(64, 6)
    snn = to_snn(model, T=3)
    with torch.no_grad():
        torch.testing.assert_close(snn(x)[-1], model(x), rtol=1e-5, atol=1e-5)


class TwoSpikingOperands(nn.Module):
    """Two IF sites whose spikes meet in a functional linear / conv as input and weight (or bias)."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.fc = nn.Linear(6, 16)
        self.h = NoisyQuant(3, lam=1.0, noise=None)
        self.g = NoisyQuant(3, lam=1.0, noise=None)

    def forward(self, x):
        h = self.h(self.fc(x))
        g = self.g(self.fc(x) * 2.0)
        if self.op == "linear":
            return torch.nn.functional.linear(h, g.reshape(-1, 16)[:4])
        if self.op == "linear_kw":
            return torch.nn.functional.linear(input=h, weight=g.reshape(-1, 16)[:4])
        if self.op == "conv1d":
            return torch.nn.functional.conv1d(h.reshape(-1, 4, 4), g.reshape(-1, 4, 4)[:2])
        if self.op == "conv2d":
            return torch.nn.functional.conv2d(h.reshape(-1, 1, 4, 4), g.reshape(-1, 1, 4, 4)[:2])
        if self.op == "bias":  # input and bias spiking: W h_t + g_t is linear in time
            return torch.nn.functional.linear(h, torch.ones(16, 16), g)
        raise AssertionError(self.op)


@pytest.mark.parametrize("op", ["linear", "linear_kw", "conv1d", "conv2d"])
def test_a_functional_linear_or_conv_of_two_spiking_operands_is_refused_naming_the_site(op):
    # as h * g: the time average of a product of two spike trains is not the product of their rates
    with pytest.raises(ValueError, match="not linear in time") as info:
        to_snn(TwoSpikingOperands(op).eval(), T=3)
    assert ("F.linear()" if op.startswith("linear") else f"F.{op}()") in str(info.value)


def test_a_functional_linear_with_spiking_input_and_bias_converts():
    to_snn(TwoSpikingOperands("bias").eval(), T=3)
