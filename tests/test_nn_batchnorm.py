"""fold_batchnorm: the folded network computes the ANN's output; shared layers fold per call site."""

import pytest
import torch
from nn_models import SmallCNN, TinyResNet, randomize_batchnorm
from torch import nn

from na_kernels.nn import fold_batchnorm


@pytest.mark.parametrize("model_class", [SmallCNN, TinyResNet])
def test_batchnorm_folding_keeps_the_ann_output(model_class):
    model = randomize_batchnorm(model_class()).eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_batchnorm_after_a_shared_conv_folds_per_call_site():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.bn_a = nn.BatchNorm2d(2)
            self.bn_b = nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn_a(self.conv(x)) + self.bn_b(self.conv(x))

    model = randomize_batchnorm(Shared()).eval()
    folded = fold_batchnorm(model)
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    assert folded.get_submodule("conv_bnfold") is not None  # the second call site got its own folded copy


def _folding_bound(folded, bn, conv, a):
    """(2n + 16) u (|W'||a| + |b'| + |β| + |(b - μ)γ/σ|): the guarantee of na_kernels.convert.batchnorm."""
    u = 2.0**-24
    n = conv.weight[0].numel()
    magnitude = nn.functional.conv2d(
        a.abs(), folded.weight.abs(), None, conv.stride, conv.padding, conv.dilation, conv.groups
    )
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = folded.bias.abs() + bn.bias.abs() + ((bias - bn.running_mean) * scale).abs()
    return (2 * n + 16) * u * (magnitude + shift.reshape(1, -1, 1, 1))


@pytest.mark.parametrize("seed", range(4))
def test_folding_guarantee_pre_activations_within_the_bound_levels_equal_away_from_boundaries(seed):
    torch.manual_seed(seed)
    p, lam = 7, 0.8
    # large, badly scaled BatchNorms make the rounding visible
    model = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=4),
        nn.BatchNorm2d(32),
        nn.ReLU(),
    )
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-3, 3)
            bn.running_var.uniform_(1e-3, 50)
            bn.weight.uniform_(-4, 4)
            bn.bias.uniform_(-2, 2)
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(16, 16, 12, 12) * 3
    flips = 0
    with torch.no_grad():
        a = x
        for conv_index in (0, 3):
            conv, bn = model[conv_index], model[conv_index + 1]
            z = bn(conv(a))
            layer = folded.get_submodule(str(conv_index))
            z_folded = layer(a)
            bound = _folding_bound(layer, bn, conv, a)
            assert bool(((z_folded - z).abs() <= bound).all())
            assert (z_folded != z).any()  # not equal: the bound is what is promised, not equality
            # levels: equal wherever z p/λ + 1/2 is farther than (p/λ)·bound from an integer
            level = lambda v: torch.clamp(torch.floor(v * p / lam + 0.5), 0, p)  # noqa: E731
            differ = level(z) != level(z_folded)
            t = z * p / lam + 0.5
            distance = (t - torch.round(t)).abs()
            assert bool((distance[differ] <= (bound * p / lam)[differ]).all())
            flips += int(differ.sum())
            a = torch.relu(z)  # the same input for the next layer on both sides
