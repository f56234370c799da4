"""integrate_fire: the public function, its torch.library ops and their autograd.

Two opaque custom ops, ``na_kernels::integrate_fire`` and ``na_kernels::integrate_fire_backward``,
each with a CPU kernel (the C++ extension), a CUDA kernel (Triton) and the PyTorch reference
as the default for any other device, plus fake rules, so the op runs under
``torch.compile(fullgraph=True)`` and ``torch.export`` without graph breaks.

What the forward saves for backward: the float32 ``h = v + x[t]`` of every step ([T, ...],
the one tensor of T x N elements), the float32 threshold ([1] or [C]) and nothing else. It is
written only when a gradient is needed (``save_h``: grad mode on and x_seq or a v_init tensor
requiring grad); in inference the forward writes spikes, counts and v_final only. Backward
recomputes the spikes from h (``h >= theta``), so neither the spikes nor x_seq are kept.
"""
import numbers
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _backend, cpu
from .._validation import check_choice, check_float_tensor, check_real, positive_parameter_tensor
from ..reference import integrate_fire as reference

RESET_CODES = {"subtract": 0, "zero": 1}
SURROGATE_CODES = {"sigmoid": 0, "atan": 1, "triangle": 2, "rectangle": 3}
_RESET_NAMES = {code: name for name, code in RESET_CODES.items()}
_SURROGATE_NAMES = {code: name for name, code in SURROGATE_CODES.items()}


def _geometry(step_shape, channels: int) -> Tuple[int, int]:
    """(neurons per step, inner): neuron n of a step is in channel (n // inner) % channels."""
    neurons = 1
    for size in step_shape:
        neurons *= size
    if channels == 1:
        return neurons, max(neurons, 1)
    inner = 1
    for size in step_shape[2:]:
        inner *= size
    return neurons, max(inner, 1)


def _theta32(threshold: Tensor) -> Tensor:
    return threshold.detach().reshape(-1).to(torch.float32).contiguous()


def _reference_threshold(threshold: Tensor) -> Tensor:
    return threshold.detach().reshape(()) if threshold.numel() == 1 else threshold.detach().reshape(-1)


def _amplitude_name(amplitude: Optional[float]):
    return "threshold" if amplitude is None else amplitude


def _steps_contiguous(x_seq: Tensor) -> Tensor:
    """x_seq itself when each time step is contiguous, whatever the stride between steps (0 for an
    input repeated over T with ``expand``, 2N for ``x[::2]``): the kernels take that stride and
    read it in place. Otherwise a contiguous copy."""
    if x_seq.shape[0] == 1 or x_seq[0].is_contiguous():
        return x_seq
    return x_seq.contiguous()


def _empty_h(x_seq: Tensor) -> Tensor:
    return torch.empty(0, dtype=torch.float32, device=x_seq.device)


# ----------------------------------------------------------------------------- forward


def _forward_reference(x_seq, threshold, v_init, v_frac, reset, amplitude, save_h):
    with torch.no_grad():
        out = reference.integrate_fire(
            x_seq, _reference_threshold(threshold), v_init=v_frac if v_init is None else v_init,
            reset=_RESET_NAMES[reset], amplitude=_amplitude_name(amplitude), return_h=save_h,
        )
    spikes, counts, v_final = out[0].contiguous(), out[1].contiguous(), out[2].contiguous()
    h = out[3].contiguous() if save_h else _empty_h(x_seq)
    return spikes, counts, v_final, h


def _forward_triton(x_seq, threshold, v_init, v_frac, reset, amplitude, save_h):
    from ..kernels import integrate_fire as kernels

    theta = _theta32(threshold)
    neurons, inner = _geometry(x_seq.shape[1:], theta.numel())
    v0 = None if v_init is None else v_init.to(torch.float32).contiguous()
    return kernels.integrate_fire_forward(_steps_contiguous(x_seq), theta, v0, v_frac, reset, amplitude, save_h, neurons, inner)


_warned_stale = False


def _has_cpp(name):
    """False (with a warning, once) when the built extension predates this op: rebuild it."""
    global _warned_stale
    if hasattr(cpu.extension(), name):
        return True
    if not _warned_stale:
        _warned_stale = True
        import warnings

        warnings.warn(
            "na_kernels: the built C++ extension has no integrate_fire kernels (built before they were "
            "added); using the PyTorch reference. Rebuild with `pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def _forward_cpp(x_seq, threshold, v_init, v_frac, reset, amplitude, save_h):
    if not _has_cpp("integrate_fire_forward"):
        return _forward_reference(x_seq, threshold, v_init, v_frac, reset, amplitude, save_h)
    x_seq = _steps_contiguous(x_seq)
    steps = x_seq.shape[0]
    step_shape = x_seq.shape[1:]
    theta = _theta32(threshold)
    neurons, inner = _geometry(step_shape, theta.numel())
    spikes = torch.empty(x_seq.shape, dtype=x_seq.dtype)
    counts = torch.empty(step_shape, dtype=torch.int32)
    v_final = torch.empty(step_shape, dtype=torch.float32)
    h = torch.empty(x_seq.shape, dtype=torch.float32) if save_h else _empty_h(x_seq)
    v0 = None if v_init is None else v_init.to(torch.float32).contiguous()
    cpu.extension().integrate_fire_forward(
        x_seq.data_ptr(), x_seq.stride(0), spikes.data_ptr(), counts.data_ptr(), v_final.data_ptr(), h.data_ptr() if save_h else 0,
        cpu.DTYPE_CODES[x_seq.dtype], steps, neurons, inner, theta.numel(), theta.data_ptr(),
        0 if v0 is None else v0.data_ptr(), v_frac, reset, amplitude is None,
        0.0 if amplitude is None else amplitude, cpu.num_threads(),
    )
    return spikes, counts, v_final, h


_FORWARD = {"reference": _forward_reference, "triton": _forward_triton, "cpu": _forward_cpp}


@torch.library.custom_op("na_kernels::integrate_fire", mutates_args=())
def _integrate_fire_op(
    x_seq: Tensor, threshold: Tensor, v_init: Optional[Tensor], v_frac: float, reset: int,
    amplitude: Optional[float], surrogate: int, alpha: float, detach_reset: bool, save_h: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward_reference(x_seq, threshold, v_init, v_frac, reset, amplitude, save_h)


@_integrate_fire_op.register_kernel(("cpu", "cuda"))
def _integrate_fire_device(x_seq, threshold, v_init, v_frac, reset, amplitude, surrogate, alpha, detach_reset, save_h):
    forward = _FORWARD[_backend.resolve(x_seq.device)]
    return forward(x_seq, threshold, v_init, v_frac, reset, amplitude, save_h)


@_integrate_fire_op.register_fake
def _integrate_fire_fake(x_seq, threshold, v_init, v_frac, reset, amplitude, surrogate, alpha, detach_reset, save_h):
    step_shape = x_seq.shape[1:]
    spikes = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=x_seq.device)
    counts = torch.empty(step_shape, dtype=torch.int32, device=x_seq.device)
    v_final = torch.empty(step_shape, dtype=torch.float32, device=x_seq.device)
    h = torch.empty(x_seq.shape if save_h else (0,), dtype=torch.float32, device=x_seq.device)
    return spikes, counts, v_final, h


# ---------------------------------------------------------------------------- backward


def _backward_reference(grad_spikes, grad_v, h, threshold, reset, amplitude, surrogate, alpha, detach_reset,
                        x_dtype, need_grad_x, need_grad_v_init):
    grad_x, grad_v_init = reference.integrate_fire_backward(
        grad_spikes, grad_v, h, _reference_threshold(threshold), reset=_RESET_NAMES[reset],
        amplitude=_amplitude_name(amplitude), surrogate=_SURROGATE_NAMES[surrogate], alpha=alpha,
        detach_reset=detach_reset,
    )
    grad_x = grad_x.to(x_dtype).contiguous() if need_grad_x else torch.empty(0, dtype=x_dtype, device=h.device)
    grad_v_init = grad_v_init.contiguous() if need_grad_v_init else torch.empty(0, dtype=torch.float32, device=h.device)
    return grad_x, grad_v_init


def _backward_triton(grad_spikes, grad_v, h, threshold, reset, amplitude, surrogate, alpha, detach_reset,
                     x_dtype, need_grad_x, need_grad_v_init):
    from ..kernels import integrate_fire as kernels

    theta = _theta32(threshold)
    neurons, inner = _geometry(h.shape[1:], theta.numel())
    return kernels.integrate_fire_backward(
        None if grad_spikes is None else grad_spikes.to(x_dtype).contiguous(),
        None if grad_v is None else grad_v.to(torch.float32).contiguous(),
        h.contiguous(), theta, reset, amplitude, surrogate, alpha, detach_reset, x_dtype, need_grad_x,
        need_grad_v_init, neurons, inner,
    )


def _backward_cpp(grad_spikes, grad_v, h, threshold, reset, amplitude, surrogate, alpha, detach_reset,
                  x_dtype, need_grad_x, need_grad_v_init):
    if not _has_cpp("integrate_fire_backward"):
        return _backward_reference(grad_spikes, grad_v, h, threshold, reset, amplitude, surrogate, alpha,
                                   detach_reset, x_dtype, need_grad_x, need_grad_v_init)
    h = h.contiguous()
    theta = _theta32(threshold)
    steps = h.shape[0]
    step_shape = h.shape[1:]
    neurons, inner = _geometry(step_shape, theta.numel())
    if grad_spikes is not None:
        grad_spikes = grad_spikes.to(x_dtype).contiguous()
    if grad_v is not None:
        grad_v = grad_v.to(torch.float32).contiguous()
    grad_x = torch.empty(h.shape if need_grad_x else (0,), dtype=x_dtype)
    grad_v_init = torch.empty(step_shape if need_grad_v_init else (0,), dtype=torch.float32)
    cpu.extension().integrate_fire_backward(
        0 if grad_spikes is None else grad_spikes.data_ptr(), 0 if grad_v is None else grad_v.data_ptr(),
        h.data_ptr(), grad_x.data_ptr() if need_grad_x else 0, grad_v_init.data_ptr() if need_grad_v_init else 0,
        cpu.DTYPE_CODES[x_dtype], steps, neurons, inner, theta.numel(), theta.data_ptr(), reset,
        amplitude is None, 0.0 if amplitude is None else amplitude, surrogate, alpha, detach_reset,
        cpu.num_threads(),
    )
    return grad_x, grad_v_init


_BACKWARD = {"reference": _backward_reference, "triton": _backward_triton, "cpu": _backward_cpp}


@torch.library.custom_op("na_kernels::integrate_fire_backward", mutates_args=())
def _integrate_fire_backward_op(
    grad_spikes: Optional[Tensor], grad_v: Optional[Tensor], h: Tensor, threshold: Tensor, reset: int,
    amplitude: Optional[float], surrogate: int, alpha: float, detach_reset: bool, x_dtype: torch.dtype,
    need_grad_x: bool, need_grad_v_init: bool,
) -> Tuple[Tensor, Tensor]:
    return _backward_reference(grad_spikes, grad_v, h, threshold, reset, amplitude, surrogate, alpha, detach_reset,
                               x_dtype, need_grad_x, need_grad_v_init)


@_integrate_fire_backward_op.register_kernel(("cpu", "cuda"))
def _integrate_fire_backward_device(grad_spikes, grad_v, h, threshold, reset, amplitude, surrogate, alpha,
                                    detach_reset, x_dtype, need_grad_x, need_grad_v_init):
    backward = _BACKWARD[_backend.resolve(h.device)]
    return backward(grad_spikes, grad_v, h, threshold, reset, amplitude, surrogate, alpha, detach_reset,
                    x_dtype, need_grad_x, need_grad_v_init)


@_integrate_fire_backward_op.register_fake
def _integrate_fire_backward_fake(grad_spikes, grad_v, h, threshold, reset, amplitude, surrogate, alpha,
                                  detach_reset, x_dtype, need_grad_x, need_grad_v_init):
    grad_x = torch.empty(h.shape if need_grad_x else (0,), dtype=x_dtype, device=h.device)
    grad_v_init = torch.empty(h.shape[1:] if need_grad_v_init else (0,), dtype=torch.float32, device=h.device)
    return grad_x, grad_v_init


# ---------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output):
    x_seq, threshold, v_init, v_frac, reset, amplitude, surrogate, alpha, detach_reset, save_h = inputs
    spikes, counts, v_final, h = output
    ctx.mark_non_differentiable(counts, h)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h, threshold)
    ctx.save_h = save_h
    ctx.x_dtype = x_seq.dtype
    ctx.options = (reset, amplitude, surrogate, alpha, detach_reset)


def _backward(ctx, grad_spikes, grad_counts, grad_v, grad_h):
    h, threshold = ctx.saved_tensors
    need_grad_x = ctx.needs_input_grad[0]
    need_grad_v_init = ctx.needs_input_grad[2]
    if not (need_grad_x or need_grad_v_init) or (grad_spikes is None and grad_v is None):
        return None, None, None, None, None, None, None, None, None, None
    if not ctx.save_h:
        raise RuntimeError(
            "integrate_fire: backward needs h, which the forward saves only when called with grad mode on "
            "and an input that requires grad (save_h=True)"
        )
    grad_x, grad_v_init = _integrate_fire_backward_op(
        grad_spikes, grad_v, h, threshold, *ctx.options, ctx.x_dtype, need_grad_x, need_grad_v_init
    )
    return (grad_x if need_grad_x else None, None, grad_v_init if need_grad_v_init else None,
            None, None, None, None, None, None, None)


torch.library.register_autograd("na_kernels::integrate_fire", _backward, setup_context=_setup_context)


# ------------------------------------------------------------------------ public function


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_amplitude(amplitude):
    if isinstance(amplitude, str):
        if amplitude != "threshold":
            raise ValueError(f"amplitude must be 'threshold' or a positive finite number, got {amplitude!r}")
        return None
    if isinstance(amplitude, bool) or not isinstance(amplitude, numbers.Real):
        raise TypeError(f"amplitude must be 'threshold' or a positive finite number, got {amplitude!r}")
    return check_real("amplitude", amplitude, strictly_positive=True)


def _check_v_init(v_init, x_seq):
    if isinstance(v_init, torch.Tensor):
        if v_init.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"v_init must be a number or a float tensor of potentials, got {v_init.dtype}")
        if v_init.device != x_seq.device:
            raise ValueError(f"v_init must be on {x_seq.device} like x_seq, got {v_init.device}")
        if tuple(v_init.shape) != tuple(x_seq.shape[1:]):
            raise ValueError(
                f"v_init tensor must have the per-step shape x_seq.shape[1:] = {tuple(x_seq.shape[1:])}, "
                f"got {tuple(v_init.shape)}"
            )
        return v_init
    if isinstance(v_init, bool) or not isinstance(v_init, numbers.Real):
        raise TypeError(f"v_init must be a number (a fraction of the threshold) or a tensor of potentials, got {v_init!r}")
    return check_real("v_init", v_init)


def integrate_fire(x_seq, threshold=1.0, *, v_init=0.5, reset="subtract", amplitude="threshold",
                   surrogate="sigmoid", alpha=4.0, detach_reset=False, return_v=False):
    """Multi-step integrate-and-fire over all T steps in one fused pass, with spike counts.

    Per neuron, membrane potential in float32 (SpikingJelly's multi-step ``IFNode``)::

        v = v_init * threshold
        for t in range(T):
            h = v + x_seq[t]
            s = h >= threshold                    # ties fire
            v = h - s * threshold                 # reset="subtract";  "zero": v = h * (1 - s)
            spikes[t] = s * amplitude;  counts += s

    Args:
        x_seq: [T, ...] float32/float16/bfloat16 input currents, time first (T >= 1, rank >= 2).
        threshold: θ > 0: a float, a scalar tensor, or a per-channel tensor [x_seq.shape[2]]
            (channels along dim 2 of x_seq, dim 1 of a step). Receives no gradient.
        v_init: a number, read as a fraction of θ (0.5 gives θ/2, the QCFS choice), or a
            float tensor of potentials with the per-step shape x_seq.shape[1:] (e.g. the v_final
            of a previous chunk); a tensor that requires grad receives one.
        reset: "subtract" (soft reset) or "zero" (hard reset to 0).
        amplitude: "threshold" (spikes are θ) or a positive number (1.0: binary spikes).
        surrogate: backward's d s / d h, evaluated at u = h - θ (SpikingJelly's forms):
            "sigmoid"   α σ(αu)(1 - σ(αu))             (SpikingJelly Sigmoid, α = 4 default)
            "atan"      α / 2 / (1 + (π/2 α u)²)        (SpikingJelly ATan; its default α is 2)
            "triangle"  α max(0, 1 - α|u|)             (QCFS's ZIF with γ = 1/α)
            "rectangle" α [|u| < 1/(2α)]               (SpikingJelly Rect)
        alpha: the surrogate's sharpness α > 0.
        detach_reset: treat s as a constant in the reset (SpikingJelly's detach_reset).
        return_v: also return v_final, to continue the sequence in another call.
    Returns:
        (spikes, counts) or (spikes, counts, v_final): spikes [T, ...] in x_seq's dtype,
        counts int32 and v_final float32 of shape x_seq.shape[1:].

    Backward is BPTT over all T steps in one reverse pass; gradients flow to x_seq, to a
    v_init tensor, from spikes and from v_final. The forward keeps h = v + x[t] (float32,
    [T, ...]) for it, and only when grad mode is on and x_seq or v_init requires grad.
    """
    check_float_tensor("x_seq", x_seq)
    if x_seq.dim() < 2:
        raise ValueError(f"x_seq must be [T, ...] with rank >= 2 (time first), got shape {tuple(x_seq.shape)}")
    if x_seq.shape[0] == 0:
        raise ValueError(f"x_seq must have T >= 1 time steps (dim 0), got shape {tuple(x_seq.shape)}")
    threshold = positive_parameter_tensor("threshold", threshold, x_seq, 2, "x_seq.shape[2]")
    if isinstance(threshold, float):
        threshold = torch.full((1,), threshold, dtype=torch.float32, device=x_seq.device)
    else:
        threshold = threshold.detach()
    v_init = _check_v_init(v_init, x_seq)
    reset = check_choice("reset", reset, tuple(RESET_CODES))
    amplitude = _check_amplitude(amplitude)
    surrogate = check_choice("surrogate", surrogate, tuple(SURROGATE_CODES))
    alpha = check_real("alpha", alpha, strictly_positive=True)
    detach_reset = _check_bool("detach_reset", detach_reset)
    return_v = _check_bool("return_v", return_v)

    if isinstance(v_init, torch.Tensor):
        v_tensor, v_frac = v_init.to(torch.float32), 0.0
    else:
        v_tensor, v_frac = None, v_init
    save_h = torch.is_grad_enabled() and (
        x_seq.requires_grad or (v_tensor is not None and v_tensor.requires_grad)
    )
    spikes, counts, v_final, _ = _integrate_fire_op(
        x_seq, threshold, v_tensor, v_frac, RESET_CODES[reset], amplitude, SURROGATE_CODES[surrogate], alpha,
        detach_reset, save_h,
    )
    if return_v:
        return spikes, counts, v_final
    return spikes, counts
