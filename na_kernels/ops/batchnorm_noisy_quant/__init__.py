"""batchnorm_noisy_quant: BatchNorm and noisy_quant in one op, its public function and its
registration (``na_kernels::batchnorm_noisy_quant`` and ``..._backward``, see ``_registration``).

Autograd keeps x, the residual (the block's input, which its convolution keeps anyway), y (the
next layer's input, kept by it anyway), the straight-through mask as one bit per element, and
[C]-sized tensors (mean, invstd, weight, bias, lam); backward regenerates no noise. Every backend
module (``na_kernels.ops.batchnorm_noisy_quant.{cpu,reference}``) has

    forward(x, residual, weight, bias, running_mean, running_var, lam, seed, args)
        -> (y, save_mean, save_invstd, mask, new_running_mean, new_running_var)
    backward(grad_y, x, residual, y, mask, save_mean, save_invstd, weight, bias, lam, args,
             need_grad_residual)
        -> (grad_x, grad_residual or empty, grad_weight, grad_bias, grad_lam), the last three float32 [C]

with ``residual``, ``running_mean`` and ``running_var`` possibly None, ``lam`` one element or one
per channel, ``args`` a ``_spec.BatchNormNoisyQuantArgs``; y is channels-last when x is (4-D, channels-last
strides and not contiguous: ``reference.channels_last``), else contiguous; the statistics float32
[C], the mask uint8 [ceil(numel / 8) + 1]: the bits in y's memory order (``reference.pack_mask``)
and a last byte naming that order (``reference.op_mask``). Backward reads the bits in the order
their byte names (torch.compile may pass it a restrided copy of y) and returns grad_x and
grad_residual in the layout of the y it is given.
"""

import torch

from ..._spec import BatchNormNoisyQuantArgs, Noise
from ..._validation import (
    check_bool,
    check_float_tensor,
    check_fused_levels,
    check_levels,
    check_noise,
    check_real,
    check_seed,
    positive_parameter_tensor,
    resolve_noise_scale,
)
from .._registration import Op
from ..noisy_quant import _seed_tensor
from .reference import mask_bytes, memory_format

_FIELDS = "Tensor x, Tensor? residual, Tensor weight, Tensor bias, Tensor? running_mean, Tensor? running_var"


def _fake(x, residual, weight, bias, running_mean, running_var, lam, seed, args):
    channels = x.shape[1]
    stats = [torch.empty(channels, dtype=torch.float32, device=x.device) for _ in range(2)]
    running = channels if running_mean is not None else 0
    mask = torch.empty(mask_bytes(x.numel()), dtype=torch.uint8, device=x.device)
    new = [torch.empty(running, dtype=torch.float32, device=x.device) for _ in range(2)]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format(x))
    return y, *stats, mask, *new


def _fake_backward(grad_y, x, residual, y, mask, mean, invstd, weight, bias, lam, args, need_grad_residual):
    layout = memory_format(y)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout)
    if need_grad_residual:
        grad_residual = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout)
    else:
        grad_residual = torch.empty((0,), dtype=x.dtype, device=x.device)
    per_channel = [torch.empty(x.shape[1], dtype=torch.float32, device=x.device) for _ in range(3)]
    return grad_x, grad_residual, *per_channel


def _save(ctx, tensors, args, output):
    x, residual, weight, bias, _, _, lam, _ = tensors
    y, mean, invstd, mask = output[:4]
    ctx.mark_non_differentiable(*output[1:])
    ctx.has_residual = residual is not None
    ctx.save_for_backward(x, residual, y, mask, mean, invstd, weight, bias, lam)


def _backward(ctx, run, grad_y, *unused):
    x, residual, y, mask, mean, invstd, weight, bias, lam = ctx.saved_tensors
    need = ctx.needs_input_grad
    grad_x, grad_residual, grad_weight, grad_bias, grad_lam = run(
        grad_y, x, residual, y, mask, mean, invstd, weight, bias, lam, bool(ctx.has_residual and need[1])
    )
    grad_lam = grad_lam.sum() if lam.numel() == 1 else grad_lam
    return (
        grad_x if need[0] else None,
        grad_residual if ctx.has_residual and need[1] else None,
        grad_weight.to(weight.dtype) if need[2] else None,
        grad_bias.to(bias.dtype) if need[3] else None,
        None,
        None,
        grad_lam.reshape(lam.shape).to(lam.dtype) if need[6] else None,
        None,
    )


OP = Op(
    "batchnorm_noisy_quant",
    BatchNormNoisyQuantArgs,
    inputs=f"{_FIELDS}, Tensor lam, Tensor seed",
    outputs="(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    backward_inputs="Tensor grad_y, Tensor x, Tensor? residual, Tensor y, Tensor mask, Tensor mean, Tensor invstd, "
    "Tensor weight, Tensor bias, Tensor lam",
    backward_extras="bool need_grad_residual",
    backward_outputs="(Tensor, Tensor, Tensor, Tensor, Tensor)",
    fake=_fake,
    fake_backward=_fake_backward,
    save=_save,
    backward=_backward,
    # channels-last tensors (Inductor's layout next to convolutions) pass without a conversion
    tags=(torch.Tag.flexible_layout,),
)


def batchnorm_noisy_quant(
    x,
    weight,
    bias,
    running_mean,
    running_var,
    p,
    lam=1.0,
    *,
    training=True,
    batch_stats=None,
    momentum=0.1,
    eps=1e-5,
    residual=None,
    noise="uniform",
    scale=None,
    shift=0.5,
    seed=None,
):
    """BatchNorm, an optional residual add and ``noisy_quant`` in one op, x ``[N, C, ...]``.

    ``z = (x - mean[c]) * weight[c] / sqrt(var[c] + eps) + bias[c] (+ residual)`` and
    ``y = clamp(floor(z * p / lam + scale * eps + shift), 0, p) * lam / p``: the same y, noise
    included, as ``noisy_quant(F.batch_norm(x, ...) + residual, p, lam, seed=seed)`` up to
    BatchNorm's rounding (docs/design.md). With ``batch_stats`` (default: ``training``) mean and
    var are this batch's and the running statistics, when given, are updated in place as
    ``F.batch_norm`` updates them (``momentum``, unbiased variance); else the running ones are
    used. The noise is on only while ``training``.

    Backward: ``dz = grad_y * [0 <= q_raw <= p]`` (noisy_quant's straight-through), BatchNorm's
    backward from dz for x, weight and bias, ``grad_residual = dz``, and lam's gradient as
    noisy_quant's. It needs no noise: forward keeps the mask as one bit per element.

    Args:
        x: float32/float16/bfloat16, at least 2 dims (dim 1 the channels).
        weight, bias: [C] tensors or None (1 and 0); running_mean, running_var: [C] float tensors,
            or both None (then batch statistics always).
        p, lam, noise, scale, shift, seed: as ``na_kernels.noisy_quant``; ``p`` with levels that
            x's dtype tells apart (``check_fused_levels``: any p in float32 and float16, p <= 64
            in bfloat16).
        training: batch statistics and noise (True), or running statistics and no noise.
        batch_stats: override the statistics only (BatchNorm without running statistics in eval).
        momentum, eps: BatchNorm's.
        residual: None or a tensor of x's shape added after the normalisation (a ResNet block).
    Returns:
        y, x's shape and dtype; channels-last when x is (4-D, channels-last strides), else contiguous.
        The values do not depend on x's layout (the noise is that of the logical index).
    """
    check_float_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must have a channel dim 1 (at least 2 dims), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    training = check_bool("training", training)
    batch_stats = training if batch_stats is None else check_bool("batch_stats", batch_stats)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if running_mean is None:
        batch_stats = True
    if batch_stats and x.numel() // max(channels, 1) <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.numel() != channels):
            raise ValueError(f"{name} must be None or a tensor of {channels} elements (x.shape[1])")
    if residual is not None:
        check_float_tensor("residual", residual)
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    p = check_levels(p)
    check_fused_levels(p, x.dtype)
    lam = positive_parameter_tensor("lam", lam, x, 1, "x.shape[1]")
    noise = check_noise(noise) if training else Noise.NONE
    args = BatchNormNoisyQuantArgs(
        p=p,
        noise=noise,
        scale=resolve_noise_scale(scale, noise),
        shift=check_real("shift", shift),
        batch_stats=batch_stats,
        momentum=check_real("momentum", momentum),
        eps=check_real("eps", eps, minimum=0.0),
    )
    if isinstance(lam, float):
        lam = torch.full((1,), lam, dtype=torch.float32, device=x.device)
    if weight is None:
        weight = torch.ones(channels, dtype=torch.float32, device=x.device)
    if bias is None:
        bias = torch.zeros(channels, dtype=torch.float32, device=x.device)
    seed = check_seed(seed)
    seed_t = torch.zeros(1, dtype=torch.int64, device=x.device) if noise is Noise.NONE else _seed_tensor(seed, x.device)
    y, _, _, _, new_mean, new_var = OP(x, residual, weight, bias, running_mean, running_var, lam, seed_t, args)
    if running_mean is not None and batch_stats:
        with torch.no_grad():
            running_mean.copy_(new_mean)
            running_var.copy_(new_var)
    return y
