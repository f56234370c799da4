"""Architectures used by the papers, with CIFAR-size stems, plus the demo's small CNN.

Every activation is a separate ``nn.ReLU`` module by default (so
``na_kernels.nn.replace_activations`` swaps each one for its own NoisyQuant with its own
λ), or whatever the ``act`` factory builds, e.g. ``act=lambda: NoisyQuant(p=3)``.
Pooling is average pooling (max pooling has no rate-coded SNN equivalent).

    build_model("resnet20", num_classes=10)           # plain ReLU
    build_model("vgg16", 100, act=lambda: NoisyQuant(7))
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Type, Union

import torch
from torch import nn

__all__ = [
    "MODELS",
    "build_model",
    "DigitsCNN",
    "VGG",
    "ResNet",
    "CifarResNet",
    "BasicBlock",
    "Bottleneck",
    "vgg16",
    "resnet18",
    "resnet20",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "digits_cnn",
    "MnistCNN",
    "mnist_cnn",
    "IMAGE_SIZES",
    "check_image_size",
]

ActFactory = Callable[[], nn.Module]


def _conv_bn_act(cin: int, cout: int, act: ActFactory) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), act()]


class DigitsCNN(nn.Module):
    """The demo's small CNN for 8x8 digits: four 3x3 conv layers (32, 32, 64, 64) with two
    2x2 average pools, then 256 -> 128 -> classes — five activations, ~100k parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, act: ActFactory = nn.ReLU):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_act(in_channels, width, act),
            *_conv_bn_act(width, width, act),
            nn.AvgPool2d(2),
            *_conv_bn_act(width, 2 * width, act),
            *_conv_bn_act(2 * width, 2 * width, act),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4, 128), act(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MnistCNN(nn.Module):
    """The demo's small CNN for 28x28 digits: a 5x5 stride-2 conv (16 channels, 28 -> 14), a 3x3
    stride-2 conv (32, 14 -> 7), a 3x3 conv (32), then 1568 -> 128 -> classes — four activations,
    ~220k parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, act: ActFactory = nn.ReLU):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(width),
            act(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            act(),
            *_conv_bn_act(2 * width, 2 * width, act),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 49, 128), act(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


_VGG_CFG: Dict[str, Sequence[Union[int, str]]] = {
    "vgg11": [64, "A", 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A"],
    "vgg16": [64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A"],
}


class VGG(nn.Module):
    """VGG with batch norm and average pooling for 32x32 inputs, classifier
    512 -> 4096 -> 4096 -> classes with dropout (the CIFAR VGG-16 of QCFS / Noise Adaptor)."""

    def __init__(
        self,
        cfg: Sequence[Union[int, str]],
        num_classes: int = 10,
        in_channels: int = 3,
        act: ActFactory = nn.ReLU,
        hidden: int = 4096,
        dropout: float = 0.5,
    ):
        super().__init__()
        layers: List[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "A":
                layers.append(nn.AvgPool2d(2))
            else:
                layers += _conv_bn_act(c, int(v), act)
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c, hidden),
            act(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            act(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual: ``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, act: ActFactory = nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = act()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = act()
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


def _shortcut(cin: int, cout: int, stride: int) -> Optional[nn.Module]:
    """The residual branch's projection (1x1 conv + BN) where the shape changes, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
    """1x1, 3x3, 1x1 conv-BN layers (planes, planes, 4 * planes) with a residual, as in ResNet-50+."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, act: ActFactory = nn.ReLU):
        super().__init__()
        out_c = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = act()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = act()
        self.conv3 = nn.Conv2d(planes, out_c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_c)
        self.relu3 = act()
        self.downsample = _shortcut(cin, out_c, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ResNet(nn.Module):
    """ResNet-18/34/50/101/152 with a CIFAR stem: one 3x3 stride-1 convolution, no max pool;
    four stages (64, 128, 256, 512 planes), global average pool, linear classifier."""

    def __init__(
        self,
        block: Type[nn.Module],
        layers: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        act: ActFactory = nn.ReLU,
        widths: Sequence[int] = (64, 128, 256, 512),
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = act()
        c = widths[0]
        stages = []
        for i, (w, n) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(c, w, stride, act))
                c = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages[0], stages[1], stages[2]
        self.layer4 = stages[3] if len(stages) > 3 else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


class CifarResNet(ResNet):
    """ResNet-20 (He et al. 2016, CIFAR): three stages of 3 basic blocks, 16/32/64 planes."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, act: ActFactory = nn.ReLU):
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        super().__init__(BasicBlock, [n, n, n], num_classes, in_channels, act, widths=(16, 32, 64))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def digits_cnn(num_classes=10, in_channels=1, act=nn.ReLU):
    """The demo's :class:`DigitsCNN` for 8x8 images."""
    return DigitsCNN(num_classes, in_channels, act=act)


def mnist_cnn(num_classes=10, in_channels=1, act=nn.ReLU):
    """The demo's :class:`MnistCNN` for 28x28 images."""
    return MnistCNN(num_classes, in_channels, act=act)


def vgg16(num_classes=10, in_channels=3, act=nn.ReLU):
    """VGG-16 for 32x32 inputs (13 conv layers, 3 linear)."""
    return VGG(_VGG_CFG["vgg16"], num_classes, in_channels, act)


def resnet18(num_classes=10, in_channels=3, act=nn.ReLU):
    """Resnet-18 with a CIFAR stem: [2, 2, 2, 2] basic blocks per stage."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, act)


def resnet20(num_classes=10, in_channels=3, act=nn.ReLU):
    """The CIFAR ResNet-20 (:class:`CifarResNet`)."""
    return CifarResNet(20, num_classes, in_channels, act)


def resnet34(num_classes=10, in_channels=3, act=nn.ReLU):
    """Resnet-34 with a CIFAR stem: [3, 4, 6, 3] basic blocks per stage."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, act)


def resnet50(num_classes=10, in_channels=3, act=nn.ReLU):
    """Resnet-50 with a CIFAR stem: [3, 4, 6, 3] bottleneck blocks per stage."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, act)


def resnet101(num_classes=10, in_channels=3, act=nn.ReLU):
    """Resnet-101 with a CIFAR stem: [3, 4, 23, 3] bottleneck blocks per stage."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels, act)


def resnet152(num_classes=10, in_channels=3, act=nn.ReLU):
    """Resnet-152 with a CIFAR stem: [3, 8, 36, 3] bottleneck blocks per stage."""
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, in_channels, act)


MODELS: Dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": digits_cnn,
    "mnist_cnn": mnist_cnn,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
}


# The image side each architecture takes: a classifier sized for one input (DigitsCNN's
# 256 -> 128 linear layer after two pools of 8x8, MnistCNN's 1568 -> 128 after two strides of
# 28x28, VGG's 512 -> 4096 after five pools of 32x32);
# None: any size (the ResNets end in a global average pool).
IMAGE_SIZES: Dict[str, Optional[int]] = {
    "digits_cnn": 8,
    "mnist_cnn": 28,
    "vgg16": 32,
    "resnet18": None,
    "resnet20": None,
    "resnet34": None,
    "resnet50": None,
    "resnet101": None,
    "resnet152": None,
}


def check_image_size(arch: str, size: int, dataset: str = "") -> None:
    """ValueError unless ``arch`` takes square images of side ``size`` (see :data:`IMAGE_SIZES`)."""
    arch = _known(arch)
    need = IMAGE_SIZES[arch]
    if need is not None and need != size:
        fits = sorted(a for a, s in IMAGE_SIZES.items() if s is None or s == size)
        data = f"dataset {dataset!r} has" if dataset else "the images are"
        raise ValueError(
            f"arch {arch!r} takes {need}x{need} images but {data} {size}x{size}; "
            f"choose an arch for {size}x{size} images: {', '.join(fits)}"
        )


def _known(arch: str) -> str:
    if not isinstance(arch, str) or arch.lower() not in MODELS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(MODELS)}")
    return arch.lower()


def build_model(arch: str, num_classes: int = 10, in_channels: int = 3, act: ActFactory = nn.ReLU) -> nn.Module:
    """Build ``arch`` (one of :data:`MODELS`) with ``act()`` as every activation."""
    return MODELS[_known(arch)](num_classes=num_classes, in_channels=in_channels, act=act)
