"""fold_batchnorm: the folded network computes the ANN's output; shared layers fold per call site."""
import pytest
import torch
from torch import nn

from na_kernels.nn import fold_batchnorm
from nn_models import SmallCNN, TinyResNet, randomize_batchnorm


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
