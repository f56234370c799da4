"""integrate_fire: the public function, its torch.library ops and their autograd.

Two opaque custom ops, ``na_kernels::integrate_fire`` and ``na_kernels::integrate_fire_backward``,
each with a CPU kernel (the C++ extension), a CUDA kernel (Triton) and the PyTorch reference
as the default for any other device, plus fake rules, so the op runs under
``torch.compile(fullgraph=True)`` and ``torch.export`` without graph breaks.

What the forward saves for backward (the op's ``save`` argument, chosen by ``integrate_fire``):
nothing unless grad mode is on and x_seq or a v_init tensor requires grad (inference writes
spikes, counts and v_final only). Otherwise (``_choose_save``) either
  * h = v + x[t] of every step, float32 [T, ...] (``SAVE_H``; fp32 x_seq on CUDA), the one
    T x N tensor the forward writes beyond its outputs; backward reads it back; or
  * x_seq itself and the v_init tensor (``SAVE_X``; CPU tensors, 16-bit x_seq, x_seq repeated
    over T with stride 0): never more bytes than h, nothing extra is written, and backward
    first recomputes h, bit for bit, in the same launch (C++: in a per-thread scratch of
    T x 1024 floats; Triton: in a float32 [T, ...] buffer that lives for that launch only);
plus the float32 threshold. The spikes are recomputed from h (``h >= theta``) in backward.
"""
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend, cpu
from . import _eager
from .._validation import check_choice, check_float_tensor, positive_parameter_tensor
from ..reference import integrate_fire as reference

RESET_CODES = {"subtract": 0, "zero": 1}
SURROGATE_CODES = {"sigmoid": 0, "atan": 1, "triangle": 2, "rectangle": 3}
_RESET_NAMES = {code: name for name, code in RESET_CODES.items()}
# what the forward keeps for backward (the op's ``save`` argument)
SAVE_NOTHING, SAVE_H, SAVE_X = 0, 1, 2
_SURROGATE_NAMES = {code: name for name, code in SURROGATE_CODES.items()}


class _Layout:
    """Memory layout shared by x_seq (as the kernels read it) and every output.

    Each time step is read in place when it is dense in memory in *some* dim order (contiguous,
    channels-last, ...), whatever the stride between steps (0 for an input repeated over T with
    ``expand``, 2N for ``x[::2]``); the outputs (spikes, h, counts, v_final and, in backward,
    grad_x, grad_v_init) then get the same per-step strides, so a channels-last network stays
    channels-last with no copy. Any other x_seq is copied to contiguous first. The kernels see
    flat [T, N] arrays: neuron m of a step is memory position m, in channel (m // inner) % channels
    with inner the channel dim's stride (the elements of one channel of a dense layout are
    the runs of ``inner`` elements). The fake rules use the same layout, so the strides they
    promise are the strides the kernels deliver.
    """

    def __init__(self, step_shape, step_strides, channels: int):
        self.step_shape = tuple(step_shape)
        self.step_strides = tuple(step_strides)
        neurons = 1
        for size in self.step_shape:
            neurons *= size
        self.neurons = neurons
        if channels == 1 or len(self.step_shape) < 2:
            self.inner = max(neurons, 1)
        else:
            self.inner = max(self.step_strides[1], 1)

    @staticmethod
    def of_input(x_seq: Tensor, channels: int):
        """(layout, read_in_place) for x_seq."""
        step_shape = tuple(x_seq.shape[1:])
        step_strides = tuple(x_seq.stride()[1:])
        if _is_contiguous(step_shape, step_strides):  # x_seq[0].is_contiguous(), without making the view
            return _Layout(step_shape, _contiguous_strides(step_shape), channels), True
        if _is_dense(step_shape, step_strides):
            return _Layout(step_shape, step_strides, channels), True
        return _Layout(step_shape, _contiguous_strides(step_shape), channels), False

    @staticmethod
    def of_h(h: Tensor, channels: int):
        return _Layout(h.shape[1:], h.stride()[1:], channels)

    def seq_strides(self):
        return (max(self.neurons, 1),) + self.step_strides

    def empty_seq(self, steps, dtype, device):
        return torch.empty_strided((steps,) + self.step_shape, self.seq_strides(), dtype=dtype, device=device)

    def empty_step(self, dtype, device):
        return torch.empty_strided(self.step_shape, self.step_strides, dtype=dtype, device=device)

    def as_seq(self, t: Tensor) -> Tensor:
        return _restride(t, self.seq_strides())

    def as_step(self, t: Tensor) -> Tensor:
        return _restride(t, self.step_strides)


def _contiguous_strides(shape):
    strides, running = [], 1
    for size in reversed(tuple(shape)):
        strides.append(running)
        running *= max(size, 1)
    return tuple(reversed(strides))


def _is_contiguous(shape, strides) -> bool:
    """Tensor.is_contiguous() of a tensor of (shape, strides): row-major, ignoring size-1 dims."""
    if 0 in shape:
        return True
    expected = 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def _is_dense(shape, strides) -> bool:
    """True when the elements of a tensor of (shape, strides) fill a block of memory without gaps
    or overlap, in some order of the dims."""
    running = 1
    for stride, size in sorted((st, sz) for sz, st in zip(shape, strides) if sz != 1):
        if stride != running:
            return False
        running *= size
    return True


def _restride(t: Tensor, strides) -> Tensor:
    """t with exactly these strides (a copy only where they differ)."""
    if tuple(t.stride()) == tuple(strides):
        return t
    out = torch.empty_strided(t.shape, tuple(strides), dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


def _theta32(threshold: Tensor) -> Tensor:
    if threshold.dtype == torch.float32 and threshold.dim() == 1 and threshold.is_contiguous():
        return threshold.detach()  # what the line below gives for it, in one call instead of four
    return threshold.detach().reshape(-1).to(torch.float32).contiguous()


def _reference_threshold(threshold: Tensor) -> Tensor:
    return threshold.detach().reshape(()) if threshold.numel() == 1 else threshold.detach().reshape(-1)


def _amplitude_name(amplitude: Optional[float]):
    return "threshold" if amplitude is None else amplitude


def _empty_h(x_seq: Tensor) -> Tensor:
    return torch.empty(0, dtype=torch.float32, device=x_seq.device)


def _prepare(x_seq, threshold, v_init):
    """(x_seq as the kernels read it, theta float32 [C], v0 float32 in the layout or None, layout)."""
    theta = _theta32(threshold)
    layout, in_place = _Layout.of_input(x_seq, theta.numel())
    if not in_place:
        x_seq = x_seq.contiguous()
    v0 = None if v_init is None else layout.as_step(v_init.to(torch.float32))
    return x_seq, theta, v0, layout


# ----------------------------------------------------------------------------- forward


def _forward_reference(x_seq, threshold, v_init, v_frac, reset, amplitude, save_h):
    """save_h: whether to return h (else an empty tensor); the same for every backend."""
    layout, _ = _Layout.of_input(x_seq, threshold.numel())
    with torch.no_grad():
        out = reference.integrate_fire(
            x_seq, _reference_threshold(threshold), v_init=v_frac if v_init is None else v_init,
            reset=_RESET_NAMES[reset], amplitude=_amplitude_name(amplitude), return_h=save_h,
        )
    spikes, counts, v_final = layout.as_seq(out[0]), layout.as_step(out[1]), layout.as_step(out[2])
    h = layout.as_seq(out[3]) if save_h else _empty_h(x_seq)
    return spikes, counts, v_final, h


def _forward_triton(x_seq, threshold, v_init, v_frac, reset, amplitude, save_h):
    from ..kernels import integrate_fire as kernels

    x_seq, theta, v0, layout = _prepare(x_seq, threshold, v_init)
    spikes = layout.empty_seq(x_seq.shape[0], x_seq.dtype, x_seq.device)
    counts = layout.empty_step(torch.int32, x_seq.device)
    v_final = layout.empty_step(torch.float32, x_seq.device)
    h = layout.empty_seq(x_seq.shape[0], torch.float32, x_seq.device) if save_h else _empty_h(x_seq)
    kernels.integrate_fire_forward(x_seq, spikes, counts, v_final, h if save_h else None, theta, v0, v_frac, reset,
                                   amplitude, layout.neurons, layout.inner)
    return spikes, counts, v_final, h


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
    x_seq, theta, v0, layout = _prepare(x_seq, threshold, v_init)
    steps = x_seq.shape[0]
    spikes = layout.empty_seq(steps, x_seq.dtype, x_seq.device)
    counts = layout.empty_step(torch.int32, x_seq.device)
    v_final = layout.empty_step(torch.float32, x_seq.device)
    h = layout.empty_seq(steps, torch.float32, x_seq.device) if save_h else _empty_h(x_seq)
    cpu.extension().integrate_fire_forward(
        x=x_seq.data_ptr(), x_step=x_seq.stride(0), spikes=spikes.data_ptr(), counts=counts.data_ptr(),
        v_final=v_final.data_ptr(), h=h.data_ptr() if save_h else 0, dtype=cpu.DTYPE_CODES[x_seq.dtype], steps=steps,
        neurons=layout.neurons, channel_stride=layout.inner, channels=theta.numel(), theta=theta.data_ptr(),
        v0=0 if v0 is None else v0.data_ptr(), v_frac=v_frac, reset=reset, amp_is_theta=amplitude is None,
        amp=0.0 if amplitude is None else amplitude, threads=cpu.num_threads(steps * layout.neurons),
    )
    return spikes, counts, v_final, h


_FORWARD = {"reference": _forward_reference, "triton": _forward_triton, "cpu": _forward_cpp}


@torch.library.custom_op("na_kernels::integrate_fire", mutates_args=())
def _integrate_fire_op(
    x_seq: Tensor, threshold: Tensor, v_init: Optional[Tensor], v_frac: float, reset: int,
    amplitude: Optional[float], surrogate: int, alpha: float, detach_reset: bool, save: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward_reference(x_seq, threshold, v_init, v_frac, reset, amplitude, save == SAVE_H)


@_integrate_fire_op.register_kernel(("cpu", "cuda"))
def _integrate_fire_device(x_seq, threshold, v_init, v_frac, reset, amplitude, surrogate, alpha, detach_reset, save):
    forward = _FORWARD[_backend.resolve(x_seq.device)]
    return forward(x_seq, threshold, v_init, v_frac, reset, amplitude, save == SAVE_H)


@_integrate_fire_op.register_fake
def _integrate_fire_fake(x_seq, threshold, v_init, v_frac, reset, amplitude, surrogate, alpha, detach_reset, save):
    layout, _ = _Layout.of_input(x_seq, threshold.numel())
    steps, device = x_seq.shape[0], x_seq.device
    spikes = layout.empty_seq(steps, x_seq.dtype, device)
    counts = layout.empty_step(torch.int32, device)
    v_final = layout.empty_step(torch.float32, device)
    h = layout.empty_seq(steps, torch.float32, device) if save == SAVE_H else _empty_h(x_seq)
    return spikes, counts, v_final, h


# ---------------------------------------------------------------------------- backward


def _prepare_backward(grad_spikes, grad_v, h, x_seq, v_init, threshold, x_dtype):
    """Everything in one layout (see _Layout): h's, or, without h, x_seq's (h is then recomputed
    from x_seq and v_init). Returns (grad_spikes, grad_v, h, x_seq, v0, theta, layout)."""
    theta = _theta32(threshold)
    v0 = None
    if h is not None:
        layout, _ = _Layout.of_input(h, theta.numel())
        h = layout.as_seq(h)
    else:
        layout, in_place = _Layout.of_input(x_seq, theta.numel())
        if not in_place:
            x_seq = x_seq.contiguous()
        if v_init is not None:
            v0 = layout.as_step(v_init.to(torch.float32))
    if grad_spikes is not None:
        grad_spikes = layout.as_seq(grad_spikes.to(x_dtype))
    if grad_v is not None:
        grad_v = layout.as_step(grad_v.to(torch.float32))
    return grad_spikes, grad_v, h, x_seq, v0, theta, layout


def _backward_layout(h, x_seq, threshold):
    return _Layout.of_input(h if h is not None else x_seq, threshold.numel())[0]


def _empty_grads(steps, layout, x_dtype, device, need_grad_x, need_grad_v_init):
    grad_x = layout.empty_seq(steps, x_dtype, device) if need_grad_x else torch.empty(0, dtype=x_dtype, device=device)
    grad_v_init = (layout.empty_step(torch.float32, device) if need_grad_v_init
                   else torch.empty(0, dtype=torch.float32, device=device))
    return grad_x, grad_v_init


def _backward_reference(grad_spikes, grad_v, h, x_seq, v_init, v_frac, threshold, reset, amplitude, surrogate, alpha,
                        detach_reset, x_dtype, need_grad_x, need_grad_v_init):
    layout = _backward_layout(h, x_seq, threshold)
    if h is None:
        with torch.no_grad():
            h = reference.integrate_fire(
                x_seq, _reference_threshold(threshold), v_init=v_frac if v_init is None else v_init,
                reset=_RESET_NAMES[reset], return_h=True,
            )[3]
    grad_x, grad_v_init = reference.integrate_fire_backward(
        grad_spikes, grad_v, h, _reference_threshold(threshold), reset=_RESET_NAMES[reset],
        amplitude=_amplitude_name(amplitude), surrogate=_SURROGATE_NAMES[surrogate], alpha=alpha,
        detach_reset=detach_reset,
    )
    empty_x, empty_v = _empty_grads(h.shape[0], layout, x_dtype, h.device, False, False)
    grad_x = layout.as_seq(grad_x.to(x_dtype)) if need_grad_x else empty_x
    grad_v_init = layout.as_step(grad_v_init) if need_grad_v_init else empty_v
    return grad_x, grad_v_init


def _backward_triton(grad_spikes, grad_v, h, x_seq, v_init, v_frac, threshold, reset, amplitude, surrogate, alpha,
                     detach_reset, x_dtype, need_grad_x, need_grad_v_init):
    from ..kernels import integrate_fire as kernels

    grad_spikes, grad_v, h, x_seq, v0, theta, layout = _prepare_backward(
        grad_spikes, grad_v, h, x_seq, v_init, threshold, x_dtype)
    recompute = h is None
    source = x_seq if recompute else h
    grad_x, grad_v_init = _empty_grads(source.shape[0], layout, x_dtype, source.device, need_grad_x, need_grad_v_init)
    if recompute:  # scratch for the recomputed h, alive for this launch only
        h = layout.empty_seq(x_seq.shape[0], torch.float32, x_seq.device) if need_grad_x or need_grad_v_init else None
    kernels.integrate_fire_backward(
        grad_spikes, grad_v, h, grad_x if need_grad_x else None, grad_v_init if need_grad_v_init else None, theta,
        reset, amplitude, surrogate, alpha, detach_reset, layout.neurons, layout.inner,
        x_seq=x_seq if recompute else None, v0=v0, v_frac=v_frac,
    )
    return grad_x, grad_v_init


def _backward_cpp(grad_spikes, grad_v, h, x_seq, v_init, v_frac, threshold, reset, amplitude, surrogate, alpha,
                  detach_reset, x_dtype, need_grad_x, need_grad_v_init):
    if not _has_cpp("integrate_fire_backward"):
        return _backward_reference(grad_spikes, grad_v, h, x_seq, v_init, v_frac, threshold, reset, amplitude,
                                   surrogate, alpha, detach_reset, x_dtype, need_grad_x, need_grad_v_init)
    grad_spikes, grad_v, h, x_seq, v0, theta, layout = _prepare_backward(
        grad_spikes, grad_v, h, x_seq, v_init, threshold, x_dtype)
    source = x_seq if h is None else h
    grad_x, grad_v_init = _empty_grads(source.shape[0], layout, x_dtype, source.device, need_grad_x, need_grad_v_init)
    if layout.neurons == 0 or not (need_grad_x or need_grad_v_init):
        return grad_x, grad_v_init
    cpu.extension().integrate_fire_backward(
        grad_spikes=0 if grad_spikes is None else grad_spikes.data_ptr(),
        grad_v=0 if grad_v is None else grad_v.data_ptr(), h=0 if h is None else h.data_ptr(),
        x=0 if h is not None else x_seq.data_ptr(), x_step=0 if h is not None else x_seq.stride(0),
        v0=0 if v0 is None else v0.data_ptr(), v_frac=v_frac, grad_x=grad_x.data_ptr() if need_grad_x else 0,
        grad_v_init=grad_v_init.data_ptr() if need_grad_v_init else 0, dtype=cpu.DTYPE_CODES[x_dtype],
        steps=source.shape[0], neurons=layout.neurons, channel_stride=layout.inner, channels=theta.numel(),
        theta=theta.data_ptr(), reset=reset, amp_is_theta=amplitude is None,
        amp=0.0 if amplitude is None else amplitude, surrogate=surrogate, alpha=alpha, detach_reset=detach_reset,
        threads=cpu.num_threads(source.shape[0] * layout.neurons),
    )
    return grad_x, grad_v_init


_BACKWARD = {"reference": _backward_reference, "triton": _backward_triton, "cpu": _backward_cpp}


@torch.library.custom_op("na_kernels::integrate_fire_backward", mutates_args=())
def _integrate_fire_backward_op(
    grad_spikes: Optional[Tensor], grad_v: Optional[Tensor], h: Optional[Tensor], x_seq: Optional[Tensor],
    v_init: Optional[Tensor], v_frac: float, threshold: Tensor, reset: int, amplitude: Optional[float], surrogate: int,
    alpha: float, detach_reset: bool, x_dtype: torch.dtype, need_grad_x: bool, need_grad_v_init: bool,
) -> Tuple[Tensor, Tensor]:
    """BPTT from the saved h, or (h None) from x_seq and v_init / v_frac, h recomputed."""
    return _backward_reference(grad_spikes, grad_v, h, x_seq, v_init, v_frac, threshold, reset, amplitude, surrogate,
                               alpha, detach_reset, x_dtype, need_grad_x, need_grad_v_init)


@_integrate_fire_backward_op.register_kernel(("cpu", "cuda"))
def _integrate_fire_backward_device(grad_spikes, grad_v, h, x_seq, v_init, v_frac, threshold, reset, amplitude,
                                    surrogate, alpha, detach_reset, x_dtype, need_grad_x, need_grad_v_init):
    source = x_seq if h is None else h
    backward = _BACKWARD[_backend.resolve(source.device)]
    return backward(grad_spikes, grad_v, h, x_seq, v_init, v_frac, threshold, reset, amplitude, surrogate, alpha,
                    detach_reset, x_dtype, need_grad_x, need_grad_v_init)


@_integrate_fire_backward_op.register_fake
def _integrate_fire_backward_fake(grad_spikes, grad_v, h, x_seq, v_init, v_frac, threshold, reset, amplitude,
                                  surrogate, alpha, detach_reset, x_dtype, need_grad_x, need_grad_v_init):
    source = x_seq if h is None else h
    layout = _backward_layout(h, x_seq, threshold)
    return _empty_grads(source.shape[0], layout, x_dtype, source.device, need_grad_x, need_grad_v_init)


# ---------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output):
    x_seq, threshold, v_init, v_frac, reset, amplitude, surrogate, alpha, detach_reset, save = inputs
    spikes, counts, v_final, h = output
    ctx.mark_non_differentiable(counts, h)
    ctx.set_materialize_grads(False)
    if save == SAVE_X:  # keep x_seq (and v_init): backward recomputes h
        ctx.save_for_backward(None, x_seq, v_init, threshold)
    else:
        ctx.save_for_backward(h, None, None, threshold)
    ctx.save = save
    ctx.v_frac = v_frac
    ctx.x_dtype = x_seq.dtype
    ctx.options = (reset, amplitude, surrogate, alpha, detach_reset)


def _backward(ctx, grad_spikes, grad_counts, grad_v, grad_h):
    h, x_seq, v_init, threshold = ctx.saved_tensors
    need_grad_x = ctx.needs_input_grad[0]
    need_grad_v_init = ctx.needs_input_grad[2]
    if not (need_grad_x or need_grad_v_init) or (grad_spikes is None and grad_v is None):
        return None, None, None, None, None, None, None, None, None, None
    if ctx.save == SAVE_NOTHING:
        raise RuntimeError(
            "integrate_fire: backward needs what the forward saves only when called with grad mode on "
            "and an input that requires grad (save != 0)"
        )
    args = (grad_spikes, grad_v, h, x_seq, v_init, ctx.v_frac, threshold, *ctx.options, ctx.x_dtype, need_grad_x,
            need_grad_v_init)
    if _eager.backward_ok(ctx, grad_spikes, grad_v):  # the forward bypassed the op (_IntegrateFireEager)
        source = x_seq if h is None else h
        grad_x, grad_v_init = _BACKWARD[_backend.resolve(source.device)](*args)
    else:
        grad_x, grad_v_init = _integrate_fire_backward_op(*args)
    return (grad_x if need_grad_x else None, None, grad_v_init if need_grad_v_init else None,
            None, None, None, None, None, None, None)


torch.library.register_autograd("na_kernels::integrate_fire", _backward, setup_context=_setup_context)


class _IntegrateFireEager(torch.autograd.Function):
    """The op's autograd in plain eager mode without the dispatcher: the same kernels, the same
    setup_context and backward (which then calls the backward kernels directly as well)."""

    @staticmethod
    def forward(ctx, x_seq, threshold, v_init, v_frac, reset, amplitude, surrogate, alpha, detach_reset, save):
        inputs = (x_seq, threshold, v_init, v_frac, reset, amplitude, surrogate, alpha, detach_reset, save)
        output = _integrate_fire_device(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.eager_fast = True
        return output

    @staticmethod
    def backward(ctx, grad_spikes, grad_counts, grad_v, grad_h):
        return _backward(ctx, grad_spikes, grad_counts, grad_v, grad_h)


def _integrate_fire_eager(x_seq, threshold, v_init, v_frac, reset, amplitude, surrogate, alpha, detach_reset, save):
    """_integrate_fire_op for plain eager calls (see _eager): the kernel directly, or through
    _IntegrateFireEager when a gradient is needed."""
    args = (x_seq, threshold, v_init, v_frac, reset, amplitude, surrogate, alpha, detach_reset, save)
    if torch.is_grad_enabled() and (x_seq.requires_grad or (v_init is not None and v_init.requires_grad)):
        return _IntegrateFireEager.apply(*args)
    return _integrate_fire_device(*args)


# ------------------------------------------------------------------------ public function


def _real(name, value, *, strictly_positive=False, accepted="a real number"):
    """check_real of _validation, written so that torch.compile(dynamic=True) can trace it:
    there, math.isfinite on a float argument of an inlined function is a graph break
    ("torch.* op returned non-Tensor"); ``v - v == 0`` is the same test (False for inf, NaN)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {accepted}, got {value!r}")
    value = float(value)
    if not (value - value == 0):
        raise ValueError(f"{name} must be finite, got {value}")
    if strictly_positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_amplitude(amplitude):
    if isinstance(amplitude, str):
        if amplitude != "threshold":
            raise ValueError(f"amplitude must be 'threshold' or a positive finite number, got {amplitude!r}")
        return None
    return _real("amplitude", amplitude, strictly_positive=True, accepted="'threshold' or a positive finite number")


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
    return _real("v_init", v_init, accepted="a number (a fraction of the threshold) or a tensor of potentials")


def _choose_save(x_seq):
    """What the forward keeps for backward when a gradient is needed.

    x_seq (SAVE_X) never costs more memory than h (float32 [T, ...]): as many bytes for fp32,
    half for 16-bit, N elements for a step repeated over T (stride 0), nothing new at all when
    x_seq is kept alive anyway. Backward then recomputes h: on the CPU in a cache-sized
    per-thread scratch, which measured as fast as reading a saved h or faster (1 thread,
    T = 8 and 64, 8M elements: 71-79 ms against 94-100 ms per forward + backward). On CUDA the
    recompute goes through a [T, ...] float32 scratch in global memory, 8 extra bytes per element
    of traffic in backward against 4 saved in forward, so fp32 inputs there keep h (SAVE_H).
    """
    if x_seq.device.type != "cuda" or x_seq.element_size() < 4:
        return SAVE_X
    if x_seq.shape[0] > 1 and x_seq.stride(0) == 0:
        return SAVE_X
    return SAVE_H


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
    v_init tensor, from spikes and from v_final. For it the forward keeps, only when grad mode
    is on and x_seq or v_init requires grad, either h = v + x[t] (float32, [T, ...]; fp32 input on
    CUDA) or x_seq itself (CPU, 16-bit x_seq, or one step repeated over T with ``expand``), from
    which backward recomputes h exactly. Outputs keep x_seq's per-step memory layout (e.g. channels-last).
    """
    check_float_tensor("x_seq", x_seq)
    if x_seq.dim() < 2:
        raise ValueError(f"x_seq must be [T, ...] with rank >= 2 (time first), got shape {tuple(x_seq.shape)}")
    if x_seq.shape[0] == 0:
        raise ValueError(f"x_seq must have T >= 1 time steps (dim 0), got shape {tuple(x_seq.shape)}")
    if isinstance(threshold, torch.Tensor):
        threshold = positive_parameter_tensor("threshold", threshold, x_seq, 2, "x_seq.shape[2]").detach()
    else:
        threshold = _real("threshold", threshold, strictly_positive=True, accepted="a positive number or a tensor")
        threshold = torch.full((1,), threshold, dtype=torch.float32, device=x_seq.device)
    v_init = _check_v_init(v_init, x_seq)
    reset = check_choice("reset", reset, tuple(RESET_CODES))
    amplitude = _check_amplitude(amplitude)
    surrogate = check_choice("surrogate", surrogate, tuple(SURROGATE_CODES))
    alpha = _real("alpha", alpha, strictly_positive=True)
    detach_reset = _check_bool("detach_reset", detach_reset)
    return_v = _check_bool("return_v", return_v)

    if isinstance(v_init, torch.Tensor):
        v_tensor, v_frac = v_init.to(torch.float32), 0.0
    else:
        v_tensor, v_frac = None, v_init
    save = SAVE_NOTHING
    if torch.is_grad_enabled() and (x_seq.requires_grad or (v_tensor is not None and v_tensor.requires_grad)):
        save = _choose_save(x_seq)
    op = _integrate_fire_eager if _eager.forward_ok(x_seq, threshold, v_tensor) else _integrate_fire_op
    spikes, counts, v_final, _ = op(
        x_seq, threshold, v_tensor, v_frac, RESET_CODES[reset], amplitude, SURROGATE_CODES[surrogate], alpha,
        detach_reset, save,
    )
    if return_v:
        return spikes, counts, v_final
    return spikes, counts
