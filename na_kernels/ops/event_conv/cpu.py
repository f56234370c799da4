"""event_conv on the C++ extension (csrc/event_conv/): weights packed once per weight version,
the output allocated channels-last, the raw-pointer call."""

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from ... import cpu
from ...cpu.output_cache import empty_strided

COUT_ALIGN = 16  # csrc/event_conv/event_conv.h kCoutAlign
_PACKED = WeakIdKeyDictionary()  # weight -> (its version, bias, bias version, packed weight, packed bias)
_RAN_DENSE = WeakIdKeyDictionary()  # weight -> whether its last call found x above max_nonzeros


def _padded_cout(cout):
    return (cout + COUT_ALIGN - 1) // COUT_ALIGN * COUT_ALIGN


def pack(weight, bias):
    """weight ``[Cout, Cin, KH, KW]`` -> ``[KH, KW, Cin, CoutP]`` and bias -> ``[CoutP]`` (zeros
    past Cout, and for no bias), float32 contiguous; CoutP = Cout rounded up to 16."""
    cout = weight.shape[0]
    pad = _padded_cout(cout) - cout
    packed = F.pad(weight.detach().permute(2, 3, 1, 0).to(torch.float32), (0, pad)).contiguous()
    if bias is None:
        packed_bias = torch.zeros(cout + pad, dtype=torch.float32)
    else:
        packed_bias = F.pad(bias.detach().to(torch.float32), (0, pad)).contiguous()
    return packed, packed_bias


def packed(weight, bias):
    """``pack(weight, bias)``, kept per weight tensor until it or the bias changes (in place or
    replaced)."""
    key = (weight._version, None if bias is None else id(bias), None if bias is None else bias._version)
    cached = _PACKED.get(weight)
    if cached is None or cached[0] != key:
        cached = _PACKED[weight] = (key, *pack(weight, bias))
    return cached[1], cached[2]


def forward(x, weight, bias, stride, padding, residual, max_nonzeros, count_first=None):
    """The event convolution of channels-last float32 x ``[N, Cin, H, W]``, or None when x has
    more than ``max_nonzeros`` nonzeros. Returns ``[N, Cout, OH, OW]`` in channels-last memory
    order.

    The decision is exact; ``count_first`` only chooses how it is made: count x's nonzeros in a
    pass of their own first (True), or while convolving, stopping once past the limit (False:
    one read of x fewer where x stays under it). None: count first where this weight's last call
    went dense, as a layer's density changes little from one pass to the next."""
    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    oh = (h + 2 * padding[0] - kh) // stride[0] + 1
    ow = (w + 2 * padding[1] - kw) // stride[1] + 1
    packed_weight, packed_bias = packed(weight, bias)
    out = empty_strided((n, oh, ow, cout), (oh * ow * cout, ow * cout, cout, 1), dtype=torch.float32)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    nonzeros = cpu.extension().event_conv_forward(
        x=x.data_ptr(),
        weight=packed_weight.data_ptr(),
        bias=packed_bias.data_ptr(),
        residual=0 if residual is None else residual.data_ptr(),
        out=out.data_ptr(),
        n=n,
        h=h,
        w=w,
        cin=cin,
        cout=cout,
        kh=kh,
        kw=kw,
        stride_h=stride[0],
        stride_w=stride[1],
        pad_h=padding[0],
        pad_w=padding[1],
        max_nonzeros=max_nonzeros,
        count_first=_RAN_DENSE.get(weight, False) if count_first is None else bool(count_first),
        threads=cpu.num_threads(max(x.numel(), out.numel())),
    )
    _RAN_DENSE[weight] = nonzeros > max_nonzeros
    if nonzeros > max_nonzeros:
        return None
    return out.permute(0, 3, 1, 2)
