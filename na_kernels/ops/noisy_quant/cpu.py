"""noisy_quant on the C++ extension: the raw-pointer calls behind ``forward`` and ``backward``
(the interface of ``na_kernels.ops.noisy_quant``)."""

import torch

from ... import cpu
from ..._layout import flat_channels
from ..._spec import DType
from ...cpu.output_cache import empty_like_dense


def _seed(seed):
    return int(seed.reshape(()).item()) & (2**64 - 1)


def forward(x, lam, seed, args):
    x, lam32, channel_stride, channels = flat_channels(x, lam)
    y = empty_like_dense(x)
    cpu.extension().noisy_quant_forward(
        x=x.data_ptr(),
        y=y.data_ptr(),
        dtype=cpu.code(DType.of(x.dtype)),
        numel=x.numel(),
        channel_stride=channel_stride,
        channels=channels,
        lam=lam32.data_ptr(),
        seed=_seed(seed),
        p=args.p,
        noise=cpu.code(args.noise),
        scale=args.scale,
        shift=args.shift,
        threads=cpu.num_threads(x.numel()),
    )
    return y


def backward(grad_y, x, lam, seed, args, need_grad_lam):
    x, lam32, channel_stride, channels = flat_channels(x, lam)
    grad_y = grad_y.contiguous()
    grad_x = empty_like_dense(x)
    grad_lam = torch.zeros(channels if need_grad_lam else 0, dtype=torch.float64)
    cpu.extension().noisy_quant_backward(
        grad_y=grad_y.data_ptr(),
        x=x.data_ptr(),
        grad_x=grad_x.data_ptr(),
        dtype=cpu.code(DType.of(x.dtype)),
        numel=x.numel(),
        channel_stride=channel_stride,
        channels=channels,
        lam=lam32.data_ptr(),
        seed=_seed(seed),
        p=args.p,
        noise=cpu.code(args.noise),
        scale=args.scale,
        shift=args.shift,
        grad_lam=grad_lam.data_ptr() if need_grad_lam else 0,
        threads=cpu.num_threads(x.numel()),
    )
    return grad_x, grad_lam.to(torch.float32)
