"""noisy_quant: the public function and its registration (``na_kernels::noisy_quant`` and
``na_kernels::noisy_quant_backward``, see ``_registration``).

Autograd keeps x, lam and the 1-element seed tensor: backward regenerates the noise from the seed.
Every backend module (``na_kernels.ops.noisy_quant.{triton,cpu,reference}``) has

    forward(x, lam, seed, args)                          -> y, x's shape and dtype, contiguous
    backward(grad_y, x, lam, seed, args, need_grad_lam)  -> (grad_x, grad_lam float32 [lam.numel()],
                                                             empty when not needed)

with ``lam`` a float32 or 16-bit tensor of one element or one per channel (dim 1 of x) and
``args`` a ``_spec.NoisyQuantArgs``.
"""

import torch
from torch import fx

from ..._spec import Noise, NoisyQuantArgs
from ..._validation import (
    check_bool,
    check_float_tensor,
    check_levels,
    check_noise,
    check_real,
    check_seed,
    positive_parameter_tensor,
    resolve_noise_scale,
)
from .._registration import Op


def _fake(x, lam, seed, args):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fake_backward(grad_y, x, lam, seed, args, need_grad_lam):
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return grad_x, torch.empty(lam.numel() if need_grad_lam else 0, dtype=torch.float32, device=x.device)


def _save(ctx, tensors, args, output):
    ctx.save_for_backward(*tensors)  # x, lam, seed


def _backward(ctx, run, grad_y):
    x, lam, seed = ctx.saved_tensors
    need_grad_lam = ctx.needs_input_grad[1]
    grad_x, grad_lam = run(grad_y.to(x.dtype), x, lam, seed, need_grad_lam)
    grad_lam = grad_lam.reshape(lam.shape).to(lam.dtype) if need_grad_lam else None
    return (grad_x if ctx.needs_input_grad[0] else None), grad_lam, None


OP = Op(
    "noisy_quant",
    NoisyQuantArgs,
    inputs="Tensor x, Tensor lam, Tensor seed",
    outputs="Tensor",
    backward_inputs="Tensor grad_y, Tensor x, Tensor lam, Tensor seed",
    backward_extras="bool need_grad_lam",
    backward_outputs="(Tensor, Tensor)",
    fake=_fake,
    fake_backward=_fake_backward,
    save=_save,
    backward=_backward,
)


def _seed_tensor(seed, device):
    """The noise seed as a 1-element int64 tensor on ``device`` (``seed`` checked by check_seed)."""
    if seed is None:
        # drawn from torch's generator for this device: torch.manual_seed reproduces runs
        return torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1).to(device)
    return torch.full((1,), seed, dtype=torch.int64, device=device)


def noisy_quant(x, p, lam=1.0, *, noise="uniform", scale=None, shift=0.5, seed=None, training=True):
    """Noise-injected quantize-clip activation with a straight-through backward.

    ``y = clamp(floor(x * p / lam + scale * eps + shift), 0, p) * lam / p``, with
    ``eps ~ U(-0.5, 0.5)`` (``noise="uniform"``), ``N(0, 1)`` (``"gaussian"``) or 0
    (``None`` or ``"none"``: QCFS exactly, and always when ``training`` is False).
    ``eps`` is a pure function of (seed, flat index).

    Train/eval: as ``F.dropout``, the functional form adds its noise only while ``training``
    is True, and that is its default; in a module's forward pass ``training=self.training``
    so evaluation is the deterministic quantizer (``NoisyQuant`` does this itself).

    A call inside a module's forward is an activation site like ``NoisyQuant``: torch.fx
    records it as one node (fx Proxies are not checked), ``to_snn`` turns it into an IF layer
    with θ = its λ (a float, or a scalar / per-channel parameter or buffer of the model).

    Args:
        x: float32/float16/bfloat16 tensor of any shape (dim 1 is the channel dim).
        p: quantization levels, an int >= 1 (3, 7, 15 for 2, 3, 4 bits).
        lam: clip level λ > 0: a float, a scalar tensor or a per-channel tensor [x.shape[1]];
            a tensor that requires grad receives ``sum(grad_y * g)`` with ``g = q/p - x/λ`` where
            ``0 <= q_raw <= p``, 1 above p and 0 below 0 (``q_raw`` the floor before the clamp).
        noise: "uniform", "gaussian", or None / "none".
        scale: noise amplitude in quantization steps, >= 0; None: the noise kind's default
            (``_spec.DEFAULT_NOISE_SCALE``: uniform 1.0, gaussian 0.3; docs/design.md).
        shift: added before the floor (0.5 makes E[y] = clamp(x, 0, λ) with uniform noise).
        seed: None (drawn from torch's generator for x's device), an int, or a
            1-element int64 tensor.
        training: True (default) adds the noise, False is the deterministic quantizer.
    Returns:
        y, a tensor with x's shape, dtype and device. grad_x = grad_y * [0 <= q_raw <= p].
    See docs/design.md for the design.
    """
    if any(isinstance(value, fx.Proxy) for value in (x, p, lam, scale, shift, seed, training)):
        # symbolic tracing: one graph node, checked when the traced graph runs
        return _traced_call(x, p, lam, noise=noise, scale=scale, shift=shift, seed=seed, training=training)
    check_float_tensor("x", x)
    p = check_levels(p)
    lam = positive_parameter_tensor("lam", lam, x, 1, "x.shape[1]")
    noise = check_noise(noise)
    if not check_bool("training", training):
        noise = Noise.NONE  # as F.dropout: the noise belongs to training only
    args = NoisyQuantArgs(p=p, noise=noise, scale=resolve_noise_scale(scale, noise), shift=check_real("shift", shift))
    if isinstance(lam, float):
        lam = torch.full((1,), lam, dtype=torch.float32, device=x.device)
    seed = check_seed(seed)  # also without noise: a bad seed is an error whatever the noise
    if args.noise is Noise.NONE:
        seed_t = torch.zeros(1, dtype=torch.int64, device=x.device)
    else:
        seed_t = _seed_tensor(seed, x.device)
    return OP(x, lam, seed_t, args)


def _traced_call(x, p, lam, **kwargs):
    """The ``call_function`` node of a traced ``noisy_quant`` call (on the tracer of its Proxies)."""
    proxy = next(v for v in (x, p, lam, *kwargs.values()) if isinstance(v, fx.Proxy))
    return proxy.tracer.create_proxy("call_function", noisy_quant, (x, p, lam), kwargs)
