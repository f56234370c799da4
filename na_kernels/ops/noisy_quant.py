"""noisy_quant: the public function, its torch.library ops and their autograd.

Two opaque custom ops, ``na_kernels::noisy_quant`` and ``na_kernels::noisy_quant_backward``,
each with a CPU kernel (the C++ extension), a CUDA kernel (Triton) and the PyTorch
reference as the default for any other device, plus fake rules, so the op runs under
``torch.compile(fullgraph=True)`` and ``torch.export`` without graph breaks. Autograd saves
x, lam and the 1-element seed tensor: backward regenerates the noise from the seed.
"""
import numbers
from typing import Tuple

import torch
from torch import Tensor

from .. import _backend, cpu
from . import _eager
from .._validation import check_choice, check_float_tensor, check_real, positive_parameter_tensor
from ..reference import noisy_quant as reference

NOISE_CODES = {None: 0, "uniform": 1, "gaussian": 2}
_NOISE_NAMES = {code: name for name, code in NOISE_CODES.items()}


def _geometry(x: Tensor, lam: Tensor) -> Tuple[int, int]:
    """(inner, channels): x is rows of ``inner`` elements, row r in channel r % channels."""
    if lam.numel() == 1:
        return max(x.numel(), 1), 1
    inner = 1
    for size in x.shape[2:]:
        inner *= size
    return max(inner, 1), lam.numel()


def _lam32(lam: Tensor) -> Tensor:
    if lam.dtype == torch.float32 and lam.dim() == 1 and lam.is_contiguous():
        return lam.detach()  # what the line below gives for it, in one call instead of four
    return lam.detach().reshape(-1).to(torch.float32).contiguous()


def _reference_lam(lam: Tensor) -> Tensor:
    return lam.detach().reshape(()) if lam.numel() == 1 else lam.detach().reshape(-1)


def _cpu_seed(seed: Tensor) -> int:
    return int(seed.reshape(()).item()) & (2**64 - 1)


# ----------------------------------------------------------------------------- forward


def _forward_reference(x, lam, seed, p, noise_kind, scale, shift):
    y = reference.noisy_quant(x, p, _reference_lam(lam), noise=_NOISE_NAMES[noise_kind], scale=scale, shift=shift, seed=seed)
    return y.contiguous()


def _forward_triton(x, lam, seed, p, noise_kind, scale, shift):
    from ..kernels import noisy_quant as kernels

    lam32 = _lam32(lam)
    inner, _ = _geometry(x, lam32)
    return kernels.noisy_quant_forward(x.contiguous(), lam32, seed, p, noise_kind, scale, shift, inner)


def _forward_cpp(x, lam, seed, p, noise_kind, scale, shift):
    x = x.contiguous()
    y = torch.empty_like(x)
    lam32 = _lam32(lam)
    inner, channels = _geometry(x, lam32)
    cpu.extension().noisy_quant_forward(
        x=x.data_ptr(), y=y.data_ptr(), dtype=cpu.DTYPE_CODES[x.dtype], numel=x.numel(), channel_stride=inner,
        channels=channels, lam=lam32.data_ptr(), seed=_cpu_seed(seed), p=p, noise=noise_kind, scale=scale,
        shift=shift, threads=cpu.num_threads(x.numel()),
    )
    return y


_FORWARD = {"reference": _forward_reference, "triton": _forward_triton, "cpu": _forward_cpp}


@torch.library.custom_op("na_kernels::noisy_quant", mutates_args=())
def _noisy_quant_op(x: Tensor, lam: Tensor, seed: Tensor, p: int, noise_kind: int, scale: float, shift: float) -> Tensor:
    return _forward_reference(x, lam, seed, p, noise_kind, scale, shift)


@_noisy_quant_op.register_kernel(("cpu", "cuda"))
def _noisy_quant_device(x, lam, seed, p, noise_kind, scale, shift):
    return _FORWARD[_backend.resolve(x.device)](x, lam, seed, p, noise_kind, scale, shift)


@_noisy_quant_op.register_fake
def _noisy_quant_fake(x, lam, seed, p, noise_kind, scale, shift):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


# ---------------------------------------------------------------------------- backward


def _backward_reference(grad_y, x, lam, seed, p, noise_kind, scale, shift, need_grad_lam):
    grad_x, grad_lam = reference.noisy_quant_backward(
        grad_y, x, _reference_lam(lam), p, noise=_NOISE_NAMES[noise_kind], scale=scale, shift=shift, seed=seed
    )
    grad_lam = grad_lam.reshape(-1).to(torch.float32) if need_grad_lam else x.new_zeros(0, dtype=torch.float32)
    return grad_x.contiguous(), grad_lam


def _backward_triton(grad_y, x, lam, seed, p, noise_kind, scale, shift, need_grad_lam):
    from ..kernels import noisy_quant as kernels

    lam32 = _lam32(lam)
    inner, channels = _geometry(x, lam32)
    grad_x, partial = kernels.noisy_quant_backward(
        grad_y.contiguous(), x.contiguous(), lam32, seed, p, noise_kind, scale, shift, inner, need_grad_lam
    )
    if not need_grad_lam:
        return grad_x, x.new_zeros(0, dtype=torch.float32)
    if x.numel() == 0:
        return grad_x, x.new_zeros(channels, dtype=torch.float32)
    # partial sums [rows = outer * channels, blocks per row] -> per channel, in float64
    grad_lam = partial.to(torch.float64).reshape(-1, channels, partial.shape[1]).sum(dim=(0, 2))
    return grad_x, grad_lam.to(torch.float32)


def _backward_cpp(grad_y, x, lam, seed, p, noise_kind, scale, shift, need_grad_lam):
    x = x.contiguous()
    grad_y = grad_y.contiguous()
    grad_x = torch.empty_like(x)
    lam32 = _lam32(lam)
    inner, channels = _geometry(x, lam32)
    grad_lam = torch.zeros(channels if need_grad_lam else 0, dtype=torch.float64)
    cpu.extension().noisy_quant_backward(
        grad_y=grad_y.data_ptr(), x=x.data_ptr(), grad_x=grad_x.data_ptr(), dtype=cpu.DTYPE_CODES[x.dtype],
        numel=x.numel(), channel_stride=inner, channels=channels, lam=lam32.data_ptr(), seed=_cpu_seed(seed), p=p,
        noise=noise_kind, scale=scale, shift=shift, grad_lam=grad_lam.data_ptr() if need_grad_lam else 0,
        threads=cpu.num_threads(x.numel()),
    )
    return grad_x, grad_lam.to(torch.float32)


_BACKWARD = {"reference": _backward_reference, "triton": _backward_triton, "cpu": _backward_cpp}


@torch.library.custom_op("na_kernels::noisy_quant_backward", mutates_args=())
def _noisy_quant_backward_op(
    grad_y: Tensor, x: Tensor, lam: Tensor, seed: Tensor, p: int, noise_kind: int, scale: float, shift: float,
    need_grad_lam: bool,
) -> Tuple[Tensor, Tensor]:
    return _backward_reference(grad_y, x, lam, seed, p, noise_kind, scale, shift, need_grad_lam)


@_noisy_quant_backward_op.register_kernel(("cpu", "cuda"))
def _noisy_quant_backward_device(grad_y, x, lam, seed, p, noise_kind, scale, shift, need_grad_lam):
    backward = _BACKWARD[_backend.resolve(x.device)]
    return backward(grad_y, x, lam, seed, p, noise_kind, scale, shift, need_grad_lam)


@_noisy_quant_backward_op.register_fake
def _noisy_quant_backward_fake(grad_y, x, lam, seed, p, noise_kind, scale, shift, need_grad_lam):
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    channels = lam.numel() if need_grad_lam else 0
    return grad_x, torch.empty(channels, dtype=torch.float32, device=x.device)


# ---------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output):
    x, lam, seed, p, noise_kind, scale, shift = inputs
    ctx.save_for_backward(x, lam, seed)
    ctx.options = (p, noise_kind, scale, shift)


def _backward(ctx, grad_y):
    x, lam, seed = ctx.saved_tensors
    need_grad_lam = ctx.needs_input_grad[1]
    args = (grad_y.to(x.dtype), x, lam, seed, *ctx.options, need_grad_lam)
    if _eager.backward_ok(ctx, grad_y):  # the forward bypassed the op (_NoisyQuantEager): so may this
        grad_x, grad_lam = _BACKWARD[_backend.resolve(x.device)](*args)
    else:
        grad_x, grad_lam = _noisy_quant_backward_op(*args)
    grad_lam = grad_lam.reshape(lam.shape).to(lam.dtype) if need_grad_lam else None
    return (grad_x if ctx.needs_input_grad[0] else None), grad_lam, None, None, None, None, None


torch.library.register_autograd("na_kernels::noisy_quant", _backward, setup_context=_setup_context)


class _NoisyQuantEager(torch.autograd.Function):
    """The op's autograd in plain eager mode without the dispatcher: the same kernels, the same
    setup_context and backward (which then calls the backward kernels directly as well)."""

    @staticmethod
    def forward(ctx, x, lam, seed, p, noise_kind, scale, shift):
        y = _FORWARD[_backend.resolve(x.device)](x, lam, seed, p, noise_kind, scale, shift)
        _setup_context(ctx, (x, lam, seed, p, noise_kind, scale, shift), y)
        ctx.eager_fast = True
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return _backward(ctx, grad_y)


def _noisy_quant_eager(x, lam, seed, p, noise_kind, scale, shift):
    """_noisy_quant_op for plain eager calls (see _eager): the kernel directly, or through
    _NoisyQuantEager when a gradient is needed."""
    if torch.is_grad_enabled() and (x.requires_grad or lam.requires_grad):
        return _NoisyQuantEager.apply(x, lam, seed, p, noise_kind, scale, shift)
    return _FORWARD[_backend.resolve(x.device)](x, lam, seed, p, noise_kind, scale, shift)


# ------------------------------------------------------------------------ public function


def _seed_tensor(seed, device):
    if seed is None:
        # drawn from torch's generator for this device: torch.manual_seed reproduces runs
        return torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise TypeError(f"seed must be None, an int or a 1-element int64 tensor, got {seed.dtype} of shape {tuple(seed.shape)}")
        return seed.reshape(1).to(device)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None, an int or a 1-element int64 tensor, got {seed!r}")
    if not -(2**63) <= int(seed) < 2**64:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    seed = int(seed)
    return torch.full((1,), seed - 2**64 if seed >= 2**63 else seed, dtype=torch.int64, device=device)


def _check_p(p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be an int >= 1 (the number of quantization levels), got {p!r}")
    if isinstance(p, numbers.Integral) or float(p).is_integer():
        if p < 1:
            raise ValueError(f"p must be an int >= 1 (the number of quantization levels), got {p}")
        return int(p)
    raise ValueError(f"p must be an int >= 1 (the number of quantization levels), got {p}")


def noisy_quant(x, p, lam=1.0, *, noise="uniform", scale=1.0, shift=0.5, seed=None):
    """Noise-injected quantize-clip activation with a straight-through backward.

    ``y = clamp(floor(x * p / lam + scale * eps + shift), 0, p) * lam / p``, with
    ``eps ~ U(-0.5, 0.5)`` (``noise="uniform"``), ``N(0, 1)`` (``"gaussian"``) or 0
    (``None``: QCFS exactly). ``eps`` is a pure function of (seed, flat index).

    Args:
        x: float32/float16/bfloat16 tensor of any shape (dim 1 is the channel dim).
        p: quantization levels, an int >= 1 (3, 7, 15 for 2, 3, 4 bits).
        lam: clip level λ > 0: a float, a scalar tensor or a per-channel tensor [x.shape[1]];
            a tensor that requires grad receives ``sum(grad_y * g)`` (DESIGN.md).
        noise: "uniform", "gaussian" or None.
        scale: noise amplitude in quantization steps, >= 0.
        shift: added before the floor (0.5 makes E[y] = clamp(x, 0, λ) with uniform noise).
        seed: None (drawn from torch's generator for x's device), an int, or a
            1-element int64 tensor.
    Returns:
        y, a tensor with x's shape, dtype and device. grad_x = grad_y * [0 <= q_raw <= p].
    """
    check_float_tensor("x", x)
    p = _check_p(p)
    lam = positive_parameter_tensor("lam", lam, x, 1, "x.shape[1]")
    noise = check_choice("noise", noise, tuple(NOISE_CODES))
    scale = check_real("scale", scale, minimum=0.0)
    shift = check_real("shift", shift)
    if isinstance(lam, float):
        lam = torch.full((1,), lam, dtype=torch.float32, device=x.device)
    noise_kind = NOISE_CODES[noise]
    seed_t = _seed_tensor(seed, x.device) if noise_kind else torch.zeros(1, dtype=torch.int64, device=x.device)
    if _eager.forward_ok(x, lam, seed_t):
        return _noisy_quant_eager(x, lam, seed_t, p, noise_kind, scale, shift)
    return _noisy_quant_op(x, lam, seed_t, p, noise_kind, scale, shift)
