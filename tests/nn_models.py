"""Small test networks and helpers for the model-layer tests (torchvision is not a test dependency)."""

import copy

import torch
from torch import nn
from torch.nn import functional as F

from na_kernels.nn import NoisyQuant, replace_activations
from na_kernels.nn.fx_utils import trace


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one ``self.relu`` module called twice."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, num_classes=5, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SmallCNN(nn.Module):
    """conv-bn-relu x3 with average pooling, F.relu in the classifier head."""

    def __init__(self, num_classes=5, width=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.fc1 = nn.Linear(2 * width * 4 * 4, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        return self.fc2(F.relu(self.fc1(x)))


def randomize_batchnorm(model, generator=None):
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


class Clip(nn.Module):
    """clamp(x, 0, λ): the function an IF neuron's rate computes as T grows."""

    def __init__(self, lam):
        super().__init__()
        self.register_buffer("lam", lam.detach().clone())

    def forward(self, x):
        lam = self.lam.reshape((1, -1) + (1,) * (x.dim() - 2)) if self.lam.dim() else self.lam
        return torch.minimum(x.clamp_min(0), lam)


def clipped_ann(model):
    gm = trace(copy.deepcopy(model))
    for name, module in list(gm.named_modules()):
        if isinstance(module, NoisyQuant):
            gm.add_submodule(name, Clip(module.lam))
    return gm.eval()


def prepared(model_class, p=4, noise=None, per_channel=False, batch=None):
    model = randomize_batchnorm(model_class())
    model, _ = replace_activations(model, p=p, noise=noise, lam="auto", per_channel=per_channel)
    model.train()(batch if batch is not None else torch.randn(16, 3, 16, 16))  # "auto" λ from this batch
    return model.eval()


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


class InvertedResidual(nn.Module):
    """MobileNetV2's block as torchvision writes it: 1x1 expand, 3x3 depthwise, 1x1 project, ReLU6."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class TinyMobileNet(nn.Module):
    """A MobileNetV2 in miniature: ReLU6 modules, a Hardtanh(0, 4), and F.relu6 in the head."""

    def __init__(self, num_classes=5, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(width, width, 1, 2), InvertedResidual(width, 2 * width, 2, 2))
        self.last = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 1), nn.Hardtanh(0.0, 4.0))
        self.fc1 = nn.Linear(4 * width, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.last(self.blocks(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc2(F.relu6(self.fc1(x)))


def equal_by_position(a, b):
    """Bit-for-bit equality with NaNs compared by position (torch.equal says NaN != NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a.isnan(), b.isnan()):
        return False
    return torch.equal(torch.where(a.isnan(), 0.0, a), torch.where(b.isnan(), 0.0, b))


def poisoned(x, seed=0):
    """A copy of x with NaN, +inf and -inf at a few random positions (one kind per sample 1, 2, 3)."""
    g = torch.Generator().manual_seed(seed)
    x = x.clone()
    for sample, value in zip((1, 2, 3), (float("nan"), float("inf"), -float("inf"))):
        flat = x[sample % x.shape[0]].view(-1)
        flat[torch.randint(0, flat.numel(), (3,), generator=g)] = value
    return x
