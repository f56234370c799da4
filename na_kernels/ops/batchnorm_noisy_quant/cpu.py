"""batchnorm_noisy_quant on the C++ extension: the raw-pointer calls behind ``forward`` and
``backward`` (the interface of ``na_kernels.ops.batchnorm_noisy_quant``). Channels-last float32
x (``reference.channels_last``) runs the channels-last kernels on its memory as it is; channels-last
16-bit x runs contiguous, and y and the mask are restrided to channels-last afterwards."""

import torch

from ... import cpu
from ..._spec import DType
from ...cpu.output_cache import empty_like_dense
from ..noisy_quant.cpu import _seed
from . import reference


def _float32(t, channels):
    """t as the float32 [C] the kernels read (t itself when it is one already)."""
    if t.dtype is torch.float32 and t.is_contiguous() and t.numel() == channels:
        return t
    return t.detach().to(torch.float32).expand(channels).contiguous()


def _address(t):
    return 0 if t is None else t.data_ptr()


def _shape(x):
    batch, channels = x.shape[0], x.shape[1]
    return batch, channels, (x.numel() // (batch * channels)) if batch * channels else 0


def _dense(t, dtype, layout):
    return t.to(dtype).contiguous(memory_format=layout)


def forward(x, residual, weight, bias, running_mean, running_var, lam, seed, args):
    in_channels_last = reference.channels_last(x)
    native = in_channels_last and x.dtype is torch.float32
    if in_channels_last and not native:
        y, mean, invstd, mask, new_mean, new_var = forward(
            x.contiguous(), residual, weight, bias, running_mean, running_var, lam, seed, args
        )
        mask = reference.op_mask(reference.unpack_mask(mask[:-1], x.shape), True)
        return y.contiguous(memory_format=torch.channels_last), mean, invstd, mask, new_mean, new_var
    layout = torch.channels_last if native else torch.contiguous_format
    x = x.contiguous(memory_format=layout)
    residual = _dense(residual, x.dtype, layout) if residual is not None else None
    batch, channels, inner = _shape(x)
    y = empty_like_dense(x)
    mask = torch.empty(reference.mask_bytes(x.numel()), dtype=torch.uint8)
    save_mean, save_invstd = torch.empty(channels), torch.empty(channels)
    has_running = running_mean is not None
    running_mean = _float32(running_mean, channels) if has_running else None
    running_var = _float32(running_var, channels) if has_running else None
    new_mean = torch.empty(channels if has_running else 0)
    new_var = torch.empty(channels if has_running else 0)
    weight, bias, lam = (_float32(t, channels) for t in (weight, bias, lam))
    cpu.extension().batchnorm_noisy_quant_forward(
        x=x.data_ptr(),
        residual=_address(residual),
        y=y.data_ptr(),
        mask=mask.data_ptr(),
        dtype=cpu.code(DType.of(x.dtype)),
        batch=batch,
        channels=channels,
        inner=inner,
        weight=weight.data_ptr(),
        bias=bias.data_ptr(),
        lam=lam.data_ptr(),
        running_mean=_address(running_mean),
        running_var=_address(running_var),
        new_running_mean=new_mean.data_ptr() if has_running else 0,
        new_running_var=new_var.data_ptr() if has_running else 0,
        save_mean=save_mean.data_ptr(),
        save_invstd=save_invstd.data_ptr(),
        batch_stats=args.batch_stats,
        momentum=args.momentum,
        eps=args.eps,
        seed=_seed(seed),
        p=args.p,
        noise=cpu.code(args.noise),
        scale=args.scale,
        shift=args.shift,
        threads=cpu.num_threads(x.numel()),
        channels_last=native,
    )
    mask[-1] = native  # the bits' order (reference.op_mask)
    return y, save_mean, save_invstd, mask, new_mean, new_var


def backward(grad_y, x, residual, y, mask, mean, invstd, weight, bias, lam, args, need_grad_residual):
    out_layout = reference.memory_format(y)  # the gradients' layout: that of the y given
    # computed in the mask's order (not y's strides: y may be a restrided copy), which float32 runs
    # as it is: converting y and the gradients costs less than reordering the bits
    in_channels_last = reference.mask_in_channels_last(mask)
    native = in_channels_last and y.dtype is torch.float32
    if in_channels_last and not native:  # 16-bit runs contiguous
        mask = reference.pack_mask(reference.unpack_mask(mask[:-1], y.shape, True))
    layout = torch.channels_last if native else torch.contiguous_format
    x = _dense(x, y.dtype, layout)
    grad_y = _dense(grad_y, x.dtype, layout)
    y = y.contiguous(memory_format=layout)
    residual = _dense(residual, x.dtype, layout) if residual is not None else None
    batch, channels, inner = _shape(x)
    grad_x = empty_like_dense(x)
    grad_residual = empty_like_dense(x) if need_grad_residual else x.new_zeros(0)
    grads = torch.empty(3, channels)
    weight32, bias32, lam32 = (_float32(t, channels) for t in (weight, bias, lam))
    cpu.extension().batchnorm_noisy_quant_backward(
        grad_y=grad_y.data_ptr(),
        x=x.data_ptr(),
        residual=_address(residual),
        y=y.data_ptr(),
        mask=mask.data_ptr(),
        dtype=cpu.code(DType.of(x.dtype)),
        batch=batch,
        channels=channels,
        inner=inner,
        save_mean=mean.data_ptr(),
        save_invstd=invstd.data_ptr(),
        weight=weight32.data_ptr(),
        bias=bias32.data_ptr(),
        lam=lam32.data_ptr(),
        p=args.p,
        batch_stats=args.batch_stats,
        grad_x=grad_x.data_ptr(),
        grad_residual=grad_residual.data_ptr() if need_grad_residual else 0,
        grads=grads.data_ptr(),
        threads=cpu.num_threads(x.numel()),
        channels_last=native,
    )
    if layout is not out_layout:
        grad_x = grad_x.contiguous(memory_format=out_layout)
        grad_residual = grad_residual.contiguous(memory_format=out_layout) if need_grad_residual else grad_residual
    return grad_x, grad_residual, grads[0], grads[1].clone(), grads[2].clone()  # outputs may not alias
