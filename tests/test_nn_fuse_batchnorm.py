"""replace_activations(fuse_batchnorm=True): the same model (state-dict keys, numbers up to
BatchNorm's rounding, running statistics, num_batches_tracked) with BatchNorm and NoisyQuant in
one op, and to_snn giving the same SNN as from the unfused model."""

import copy
from unittest import mock

import pytest
import torch
from torch import nn

from na_kernels.app.models import build_model
from na_kernels.convert.convert import to_snn
from na_kernels.convert.replace import replace_activations
from na_kernels.nn.noisy_quant import NoisyQuant
from na_kernels.ops.batchnorm_noisy_quant import batchnorm_noisy_quant


def pair(model, **kwargs):
    unfused, _ = replace_activations(copy.deepcopy(model), 3, **kwargs)
    fused, report = replace_activations(copy.deepcopy(model), 3, fuse_batchnorm=True, **kwargs)
    fused.load_state_dict(unfused.state_dict())
    return unfused, fused, report


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=10)


def step(model, x, seed=1):
    torch.manual_seed(seed)
    out = model(x)
    out.square().mean().backward()
    return out.detach()


def test_resnet20_fuses_every_site_with_the_same_state_dict(resnet20):
    unfused, fused, report = pair(resnet20)
    assert len(report.fused) == 19  # 10 BatchNorm -> NoisyQuant, 9 BatchNorm -> add -> NoisyQuant
    assert ("layer1.0.relu2", "layer1.0.bn2") in report.fused
    assert set(fused.state_dict()) == set(unfused.state_dict())
    unfused.load_state_dict(fused.state_dict())  # and back
    assert "fused 19 activation(s)" in str(report)


def test_training_step_equals_the_unfused_model(resnet20):
    unfused, fused, _ = pair(resnet20)
    x = torch.randn(4, 3, 8, 8)
    for _ in range(2):
        a, b = step(unfused, x), step(fused, x)
        assert torch.equal(a, b)  # same noise, same levels
    state_a, state_b = unfused.state_dict(), fused.state_dict()
    for key in state_a:
        if key.endswith("num_batches_tracked"):
            assert torch.equal(state_a[key], state_b[key]) and int(state_b[key]) == 2
        else:
            torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-5, atol=1e-6)
    grads_a = dict(unfused.named_parameters())
    for name, parameter in fused.named_parameters():
        torch.testing.assert_close(parameter.grad, grads_a[name].grad, rtol=1e-3, atol=1e-5, msg=name)
    unfused.eval(), fused.eval()
    assert torch.equal(unfused(x), fused(x))


def test_to_snn_of_the_fused_model_is_the_unfused_models_snn(resnet20):
    unfused, fused, _ = pair(resnet20)
    x = torch.randn(4, 3, 8, 8)
    step(unfused, x), step(fused, x)
    fused.load_state_dict(unfused.state_dict())
    snn_a, snn_b = to_snn(unfused, 4), to_snn(fused, 4)
    assert set(snn_a.state_dict()) == set(snn_b.state_dict())
    for key, value in snn_a.state_dict().items():
        assert torch.equal(value, snn_b.state_dict()[key]), key
    assert torch.equal(snn_a(x), snn_b(x))
    assert fused.get_submodule("layer1.0.relu1").fused_batchnorm is not None  # the model itself stays fused


class ConvBnAct(nn.Module):
    def __init__(self, momentum=0.1, affine=True):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, momentum=momentum, affine=affine)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.act(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("momentum, affine", [(0.1, True), (None, True), (0.3, False)])
def test_batchnorm_options_match(momentum, affine):
    torch.manual_seed(0)
    unfused, fused, report = pair(ConvBnAct(momentum, affine))
    assert report.fused == [("act", "bn")]
    x = torch.randn(5, 2, 6, 6)
    for _ in range(3):
        torch.testing.assert_close(step(unfused, x), step(fused, x))
    for key, value in unfused.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_fallbacks_run_the_unfused_composition():
    torch.manual_seed(0)
    model = ConvBnAct()
    unfused, _ = replace_activations(copy.deepcopy(model), 100, lam="auto")
    fused, _ = replace_activations(copy.deepcopy(model), 100, lam="auto", fuse_batchnorm=True)
    x = torch.randn(5, 2, 6, 6)
    torch.testing.assert_close(step(unfused, x), step(fused, x))  # λ from the first batch
    with torch.autocast("cpu", dtype=torch.bfloat16):  # p = 100 levels are not apart in bfloat16
        a, b = step(unfused, x), step(fused, x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_the_fused_op(dtype):
    """16-bit (autocast) inputs take the fused op, with the unfused model's numbers up to BatchNorm's
    16-bit statistics in training and bit for bit in eval (running statistics)."""
    torch.manual_seed(0)
    unfused, fused, _ = pair(ConvBnAct())
    x = torch.randn(5, 2, 6, 6)
    with mock.patch("na_kernels.nn.noisy_quant.batchnorm_noisy_quant", wraps=batchnorm_noisy_quant) as op:
        with torch.autocast("cpu", dtype=dtype):
            for _ in range(2):
                torch.testing.assert_close(step(unfused, x), step(fused, x), rtol=2e-2, atol=2e-2)
            assert op.call_count == 2 and op.call_args.args[0].dtype is dtype
            unfused.eval(), fused.eval()
            assert torch.equal(unfused(x), fused(x))
    assert op.call_count == 3


def test_shared_or_reused_modules_are_not_fused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(2)
            self.act = nn.ReLU()

        def forward(self, x):
            z = self.bn(x)
            return self.act(z) + z  # bn's output used twice

    _, report = replace_activations(Shared(), 3, fuse_batchnorm=True)
    assert report.fused == []


def test_residual_only_with_a_fused_batchnorm():
    with pytest.raises(TypeError, match="residual"):
        NoisyQuant(3)(torch.randn(2, 3), torch.randn(2, 3))


def test_compiled_fused_model_matches_eager():
    torch.manual_seed(0)
    _, fused, _ = pair(ConvBnAct())
    eager = copy.deepcopy(fused)
    x = torch.randn(5, 2, 6, 6)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    out = compiled(x)
    out.sum().backward()
    torch.manual_seed(3)
    want = eager(x)
    want.sum().backward()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(fused.conv.weight.grad, eager.conv.weight.grad)
    assert torch.equal(fused.bn.running_mean, eager.bn.running_mean)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_fused_model_exports(mode):
    torch.manual_seed(0)
    _, fused, _ = pair(ConvBnAct())
    getattr(fused, mode)()
    x = torch.randn(3, 2, 6, 6)
    exported = torch.export.export(copy.deepcopy(fused), (x,)).module()
    torch.manual_seed(1)
    got = exported(x)
    torch.manual_seed(1)
    assert torch.equal(got, fused(x))
