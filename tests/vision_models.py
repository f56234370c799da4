"""Miniature copies of torchvision's resnet18, vgg11_bn and mobilenet_v2 and timm's resnet10t.

The same module structure, layer kinds and call patterns as the libraries' definitions (written
from their published architecture; torchvision cannot be imported with the CPU torch these tests
use, and timm imports torchvision), with channel widths divided so they run in seconds:

- resnet18: 7x7/2 stem, BN, one ``self.relu`` called twice per BasicBlock, MaxPool2d(3, 2, 1),
  four stages of two BasicBlocks with 1x1/2 conv + BN downsample, AdaptiveAvgPool2d((1, 1)),
  ``torch.flatten(x, 1)``, fc;
- vgg11_bn: conv-BN-ReLU stacks with MaxPool2d(2, 2) (configuration "A"), AdaptiveAvgPool2d((7, 7)),
  classifier Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear;
- mobilenet_v2: Conv-BN-ReLU6 stem, InvertedResidual blocks (1x1 expand, 3x3 depthwise, 1x1
  linear projection, identity residual where shapes allow), 1x1 last conv, ``F.adaptive_avg_pool2d
  (x, (1, 1))``, ``torch.flatten(x, 1)``, Dropout + Linear;
- timm resnet10t: a three-conv "tiered" stem, MaxPool2d(3, 2, 1), one BasicBlock per stage with
  "avg-down" shortcuts (AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) + 1x1 conv + BN),
  global pooling as timm's SelectAdaptivePool2d (AdaptiveAvgPool2d(1) then Flatten(1)), fc.
"""

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def _stage(cin, cout, blocks, stride, avg_down=False):
    downsample = None
    if stride != 1 or cin != cout:
        if avg_down:
            downsample = nn.Sequential(
                nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    layers = [BasicBlock(cin, cout, stride, downsample)] + [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's structure, widths 64..512 divided by 16."""

    def __init__(self, num_classes=5, width=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(width, width, 2, 1)
        self.layer2 = _stage(width, 2 * width, 2, 2)
        self.layer3 = _stage(2 * width, 4 * width, 2, 2)
        self.layer4 = _stage(4 * width, 8 * width, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG11BN(nn.Module):
    """torchvision.models.vgg11_bn's structure (configuration "A"), widths divided by 16."""

    def __init__(self, num_classes=5, width=4, hidden=32):
        super().__init__()
        layers, cin = [], 3
        for v in (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v * width, 3, padding=1), nn.BatchNorm2d(v * width), nn.ReLU(inplace=True)]
                cin = v * width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(cin * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin, cout, kernel=3, stride=1, groups=1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers = [ConvBNReLU6(cin, hidden, 1)] if expand != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2's structure, fewer and narrower blocks."""

    def __init__(self, num_classes=5):
        super().__init__()
        settings = [(1, 8, 1, 1), (6, 8, 2, 2), (6, 16, 2, 2)]  # expand t, channels c, repeats n, stride s
        features, cin = [ConvBNReLU6(3, 8, stride=2)], 8
        for t, c, n, s in settings:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(ConvBNReLU6(cin, 32, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class SelectAdaptivePool2d(nn.Module):
    """timm's global pooling module for pool_type="avg", flatten=True."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x):
        return self.flatten(self.pool(x))


class ResNet10T(nn.Module):
    """timm's resnet10t: tiered deep stem, avg-down shortcuts, one BasicBlock per stage."""

    def __init__(self, num_classes=5, width=4):
        super().__init__()
        stem = (3 * width // 2, 2 * width)  # timm: 24, 32 then 64
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem[0]),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem[0], stem[1], 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem[1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem[1], 4 * width, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(4 * width)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(4 * width, 4 * width, 1, 1, avg_down=True)
        self.layer2 = _stage(4 * width, 8 * width, 1, 2, avg_down=True)
        self.layer3 = _stage(8 * width, 16 * width, 1, 2, avg_down=True)
        self.layer4 = _stage(16 * width, 32 * width, 1, 2, avg_down=True)
        self.global_pool = SelectAdaptivePool2d()
        self.fc = nn.Linear(32 * width, num_classes)

    def forward(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.global_pool(x))
