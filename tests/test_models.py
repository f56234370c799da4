"""Architectures: shapes, parameter counts, activation sites, conversion to SNNs."""

import pytest
import torch
from torch import nn

from na_kernels.app.models import build_model
from na_kernels.nn import NoisyQuant, replace_activations, to_snn

# parameters with 10 classes (CIFAR stems); ReLU modules = activation sites
EXPECTED = {
    "resnet18": (11_173_962, 17),
    "resnet20": (272_474, 19),
    "resnet34": (21_282_122, 33),
    "resnet50": (23_520_842, 49),
    "resnet101": (42_512_970, 100),
    "resnet152": (58_156_618, 151),
    "vgg16": (33_642_442, 15),
    "mnist_cnn": (217_306, 4),  # with build_model's default 3 input channels
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_sizes_and_activation_sites(arch):
    torch.manual_seed(0)
    model = build_model(arch, 10)
    params, relus = EXPECTED[arch]
    assert sum(p.numel() for p in model.parameters()) == params
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == relus
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())  # avg pooling only


@pytest.mark.parametrize(
    "arch,in_ch,size",
    [("resnet20", 3, 32), ("resnet18", 1, 32), ("vgg16", 3, 32), ("digits_cnn", 1, 8), ("mnist_cnn", 1, 28)],
)
def test_forward_shapes(arch, in_ch, size):
    model = build_model(arch, 100, in_channels=in_ch).eval()
    assert model(torch.randn(2, in_ch, size, size)).shape == (2, 100)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet99")


def test_act_factory_builds_noisyquant_everywhere():
    model = build_model("resnet20", 10, act=lambda: NoisyQuant(3, lam=4.0))
    quants = [m for m in model.modules() if isinstance(m, NoisyQuant)]
    assert len(quants) == 19 and not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert len({id(q) for q in quants}) == 19  # one λ per site


@pytest.mark.parametrize("arch", ["resnet20", "digits_cnn", "mnist_cnn"])
def test_replace_activations_then_convert(arch):
    torch.manual_seed(0)
    in_ch, size = {"digits_cnn": (1, 8), "mnist_cnn": (1, 28)}.get(arch, (3, 16))
    model = build_model(arch, 10, in_channels=in_ch)
    relus = sum(isinstance(m, nn.ReLU) for m in model.modules())
    model, report = replace_activations(model, p=3, noise="uniform", lam=4.0)
    assert sum(isinstance(m, NoisyQuant) for m in model.modules()) == relus
    model.train()
    x = torch.randn(6, in_ch, size, size)
    with torch.no_grad():
        model(x)  # BN statistics
    model.eval()
    snn = to_snn(model, T=16)
    with torch.no_grad():
        out = snn(x[:2])
        ann = model(x[:2])
    assert out.shape == (16, 2, 10)
    assert len(snn.if_layers) == relus
    # after 16 steps the SNN's mean output is close to the quantized ANN's logits
    assert float((out[-1] - ann).abs().mean()) <= 0.5 * float(ann.abs().mean()) + 1e-6


def test_image_size_rules_match_what_each_arch_can_run():
    from na_kernels.app.models import IMAGE_SIZES, MODELS, check_image_size

    assert set(IMAGE_SIZES) == set(MODELS)
    for arch in ("digits_cnn", "mnist_cnn", "vgg16", "resnet20"):
        model = build_model(arch, 10, in_channels=1).eval()
        for size in (8, 28, 32):
            fits = IMAGE_SIZES[arch] in (None, size)
            try:
                model(torch.zeros(1, 1, size, size))
                ran = True
            except RuntimeError:
                ran = False
            assert ran == fits, (arch, size)
            if fits:
                check_image_size(arch, size)
            else:
                with pytest.raises(ValueError, match=f"arch '{arch}' takes {IMAGE_SIZES[arch]}x"):
                    check_image_size(arch, size, "mnist")
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        check_image_size("nope", 32)
