"""event_conv in plain PyTorch float64: the contract the kernel is tested against.

``out = conv2d(x, weight, bias, stride, padding) (+ residual)``, every operand in float64.
"""

import torch.nn.functional as F


def forward(x, weight, bias=None, *, stride=1, padding=0, residual=None):
    """float64 ``conv2d(x, weight, bias) (+ residual)``: x ``[N, Cin, H, W]``, weight
    ``[Cout, Cin, KH, KW]`` -> ``[N, Cout, OH, OW]``."""
    out = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), stride=stride, padding=padding)
    return out if residual is None else out + residual.double()


def magnitude(x, weight, bias=None, *, stride=1, padding=0, residual=None):
    """``|bias| + sum |x * w| (+ |residual|)`` per output, float64: the scale of each output's
    rounding error."""
    return forward(
        x.abs(),
        weight.abs(),
        None if bias is None else bias.abs(),
        stride=stride,
        padding=padding,
        residual=None if residual is None else residual.abs(),
    )
