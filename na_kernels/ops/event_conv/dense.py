"""The dense convolution event_conv falls back to, and the SNN runtime's dense convolutions: with a
``workspace`` active (``na_kernels.cpu.workspace``), the output takes a workspace buffer.

oneDNN's convolution with an add post-op writes in place (``_convolution_pointwise_.binary``):
the buffer is filled with -0.0 (or the residual) and the convolution adds its sum to it. x + (-0.0)
is x for every float32 x (a +0.0 stays +0.0, a NaN stays NaN), and the post-op adds the same
float32 sum ``conv2d`` returns, so the result is bitwise ``conv2d(x, w, b)`` (+ residual)."""

import math

import torch
import torch.nn.functional as F

from ...cpu import workspace as _workspace


def _output_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def _output_shape(x, weight, stride, padding):
    n, _, h, w = x.shape
    cout, _, kh, kw = weight.shape
    return (n, cout, _output_size(h, kh, stride[0], padding[0]), _output_size(w, kw, stride[1], padding[1]))


def _in_place_applies(x, weight, bias, residual) -> bool:
    tensors = [t for t in (x, weight, bias, residual) if t is not None]
    return (
        _workspace.current() is not None
        and x.dim() == 4
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.compiler.is_compiling()
        and torch.backends.mkldnn.is_available()
    )


def conv2d(x, weight, bias, stride, padding, residual=None):
    """``F.conv2d(x, weight, bias, stride, padding) (+ residual)`` (dilation 1, groups 1, stride and
    padding pairs of ints), written into the active workspace where it applies (CPU float32, no
    autograd; the output in channels-last order when x or weight is, as ``F.conv2d`` lays it out),
    else by ``F.conv2d``. Bitwise the same either way."""
    shape = _output_shape(x, weight, stride, padding) if _in_place_applies(x, weight, bias, residual) else None
    if (
        shape is None
        or math.prod(shape) * 4 < _workspace.FROM_BYTES
        or (residual is not None and residual.shape != shape)
    ):
        out = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        return out if residual is None else out + residual
    channels_last = any(
        t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in (x, weight)
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    n, c, h, w = shape
    strides = (c * h * w, 1, w * c, c) if channels_last else (c * h * w, h * w, w, 1)
    out = _workspace.current().empty_strided(shape, strides, torch.float32, math.prod(shape))
    if residual is None:
        out.fill_(-0.0)
    else:
        out.copy_(residual)
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        out,
        x.contiguous(memory_format=layout),
        weight,
        bias,
        list(padding),
        list(stride),
        [1, 1],
        1,
        "add",
        None,
        None,
        [],
        None,
    )
