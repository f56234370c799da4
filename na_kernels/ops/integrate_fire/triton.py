"""Triton kernels for integrate_fire: the multi-step IF forward and its BPTT backward.

Same arithmetic, in the same order, as ``na_kernels/ops/integrate_fire/reference.py``. The data
is viewed as flat [T, N] arrays, N neurons per step; the adapter (``forward`` and ``backward``
at the end, the interface of ``na_kernels.ops.integrate_fire``) hands in outputs in the input's
per-step memory order (e.g. channels-last, see ``na_kernels._layout``) and the stride between
the input's steps (0 for an input repeated over T). Each program owns BLOCK neurons, keeps their
membrane potential (or, backward, the incoming grad of v) and spike count in registers and
walks all T steps in a runtime loop: one launch covers the whole sequence, the counts come out
of the same pass, and a new T does not recompile (``steps`` is not specialized). Offsets are
int64 (T x N may exceed 2^31). Neuron m is in channel (m // channel_stride) % channels.

What is read and written per element of [T, N]: forward reads x and writes the spikes (plus
h as float32 when the caller keeps h for backward); backward reads h and grad_spikes and
writes grad_x (or, when the caller kept x instead of h, first reads x and writes h to a
scratch buffer, in the same launch: ``_integrate``, the forward's own loop). The per-neuron
arrays (counts, v_final, v_init, grad_v) are touched once.
"""

import math

import torch
import triton
import triton.language as tl

from ... import _layout
from ..._spec import Reset, Save, Surrogate
from ...kernels._storage import FLOAT_OPTIONS, load_f32, store_rounded

_SIGMOID = tl.constexpr(Surrogate.SIGMOID.value)
_ATAN = tl.constexpr(Surrogate.ATAN.value)
_TRIANGLE = tl.constexpr(Surrogate.TRIANGLE.value)
_RECTANGLE = tl.constexpr(Surrogate.RECTANGLE.value)

_BLOCK = 512
_NUM_WARPS = 4


@triton.jit
def _initial_v(v0_ptr, n, mask, v_frac, theta, HAS_V0: tl.constexpr):
    """The potential before step 0: the v0 tensor, or v_frac * theta."""
    if HAS_V0:
        v = tl.load(v0_ptr + n, mask=mask, other=0.0)
    else:
        v = v_frac * theta
    return v


@triton.jit
def _integrate(
    x_ptr,
    spikes_ptr,
    h_ptr,
    n,
    mask,
    theta,
    v,
    a,
    steps,
    neurons,
    x_step,
    RESET_ZERO: tl.constexpr,
    STORE_SPIKES: tl.constexpr,
    STORE_H: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The IF loop over all steps (charge, fire, reset), storing the spikes (s * a) and the spike
    count and/or h = v + x[t]; returns (v after the last step, count)."""
    count = tl.zeros([BLOCK], dtype=tl.int32)
    offsets = n
    x_offsets = n
    for _ in range(steps):
        h = v + load_f32(x_ptr + x_offsets, mask, 0.0)
        fired = h >= theta  # ties fire
        s = tl.where(fired, 1.0, 0.0)
        if RESET_ZERO:
            v = h * (1.0 - s)
        else:
            v = h - s * theta
        if STORE_SPIKES:
            store_rounded(spikes_ptr + offsets, s * a, mask)
            count += fired.to(tl.int32)
        if STORE_H:
            tl.store(h_ptr + offsets, h, mask=mask)
        offsets += neurons
        x_offsets += x_step
    return v, count


@triton.jit(do_not_specialize=["steps"])
def _integrate_fire_forward_kernel(
    x_ptr,
    spikes_ptr,
    counts_ptr,
    v_final_ptr,
    h_ptr,
    theta_ptr,
    v0_ptr,
    steps,
    neurons,
    x_step,
    channel_stride,
    channels,
    v_frac,
    amp,
    RESET_ZERO: tl.constexpr,
    AMP_IS_THETA: tl.constexpr,
    HAS_V0: tl.constexpr,
    SAVE_H: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < neurons
    theta = tl.load(theta_ptr + (n // channel_stride) % channels, mask=mask, other=1.0)
    v = _initial_v(v0_ptr, n, mask, v_frac, theta, HAS_V0)
    if AMP_IS_THETA:
        a = theta
    else:
        a = tl.full([BLOCK], amp, tl.float32)
    v, count = _integrate(
        x_ptr, spikes_ptr, h_ptr, n, mask, theta, v, a, steps, neurons, x_step, RESET_ZERO, True, SAVE_H, BLOCK
    )
    tl.store(counts_ptr + n, count, mask=mask)
    tl.store(v_final_ptr + n, v, mask=mask)


@triton.jit
def _surrogate(u, alpha, atan_scale, half_alpha, half_width, SURROGATE: tl.constexpr):
    if SURROGATE == _SIGMOID:  # alpha * sig * (1 - sig), sig = sigmoid(alpha u)
        sig = tl.div_rn(1.0, 1.0 + tl.exp(-(u * alpha)))  # div_rn: IEEE division on GPUs too
        sg = alpha * sig * (1.0 - sig)
    elif SURROGATE == _ATAN:  # alpha / 2 / (1 + (pi/2 alpha u)^2)
        w = atan_scale * u
        sg = tl.div_rn(half_alpha, 1.0 + w * w)
    elif SURROGATE == _TRIANGLE:  # alpha * max(0, 1 - alpha |u|); NaN stays NaN
        r = 1.0 - alpha * tl.abs(u)
        sg = alpha * tl.where(r < 0.0, 0.0, r)
    else:  # _RECTANGLE: alpha * [|u| < 1 / (2 alpha)]
        sg = alpha * tl.where(tl.abs(u) < half_width, 1.0, 0.0)
    return sg


@triton.jit(do_not_specialize=["steps"])
def _integrate_fire_backward_kernel(
    grad_spikes_ptr,
    grad_v_ptr,
    h_ptr,
    grad_x_ptr,
    grad_v_init_ptr,
    theta_ptr,
    x_ptr,
    v0_ptr,
    steps,
    neurons,
    x_step,
    channel_stride,
    channels,
    v_frac,
    amp,
    alpha,
    atan_scale,
    half_alpha,
    half_width,
    RESET_ZERO: tl.constexpr,
    AMP_IS_THETA: tl.constexpr,
    SURROGATE: tl.constexpr,
    DETACH: tl.constexpr,
    HAS_GRAD_S: tl.constexpr,
    HAS_GRAD_V: tl.constexpr,
    STORE_GRAD_X: tl.constexpr,
    STORE_GRAD_V0: tl.constexpr,
    RECOMPUTE: tl.constexpr,
    HAS_V0: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < neurons
    theta = tl.load(theta_ptr + (n // channel_stride) % channels, mask=mask, other=1.0)
    if RECOMPUTE:
        # the forward's h, recomputed from x and v_init by the forward's own loop (same operations,
        # same bits) into the scratch h_ptr, then read back below by the same threads
        v = _initial_v(v0_ptr, n, mask, v_frac, theta, HAS_V0)
        _integrate(
            x_ptr, h_ptr, h_ptr, n, mask, theta, v, theta, steps, neurons, x_step, RESET_ZERO, False, True, BLOCK
        )
    if HAS_GRAD_V:
        gv = tl.load(grad_v_ptr + n, mask=mask, other=0.0)
    else:
        gv = tl.zeros([BLOCK], dtype=tl.float32)
    offsets = n + (steps - 1).to(tl.int64) * neurons
    for _ in range(steps):
        h = tl.load(h_ptr + offsets, mask=mask, other=0.0)
        u = h - theta
        sg = _surrogate(u, alpha, atan_scale, half_alpha, half_width, SURROGATE)
        if HAS_GRAD_S:
            g = load_f32(grad_spikes_ptr + offsets, mask, 0.0)
            if AMP_IS_THETA:
                gs = g * theta
            else:
                gs = g * amp
        else:
            gs = tl.zeros([BLOCK], dtype=tl.float32)
        if RESET_ZERO:
            not_fired = 1.0 - tl.where(u >= 0.0, 1.0, 0.0)
            if not DETACH:
                gs = tl.where(gv == 0.0, gs, gs - h * gv)  # no reset path where gv is 0 (h may be inf)
            gh = gs * sg + gv * not_fired
        else:
            if not DETACH:
                gs = gs - theta * gv
            gh = gs * sg + gv
        if STORE_GRAD_X:
            store_rounded(grad_x_ptr + offsets, gh, mask)
        gv = gh
        offsets -= neurons
    if STORE_GRAD_V0:
        tl.store(grad_v_init_ptr + n, gv, mask=mask)


def _grid(neurons):
    return (triton.cdiv(neurons, _BLOCK),)


def _amp(args):
    return 0.0 if args.amplitude is None else float(args.amplitude)


# ------------------------------------------------------------------------------ the adapter


def forward(x_seq, threshold, v_init, args):
    """(spikes, counts, v_final, h): flat arrays in x_seq's per-step memory order, h float32 [T, N]
    only with args.save == Save.H (else empty). x_seq's steps are read in place when dense, any
    stride between them; v_init None means v_frac * theta."""
    x_seq, theta, v0, layout = _layout.forward_operands(x_seq, threshold, v_init)
    save_h = args.save == Save.H
    spikes, counts, v_final, h = _layout.forward_outputs(layout, x_seq, save_h)
    if layout.neurons == 0:
        return spikes, counts, v_final, h
    _integrate_fire_forward_kernel[_grid(layout.neurons)](
        x_seq,
        spikes,
        counts,
        v_final,
        h if save_h else v_final,
        theta,
        v_final if v0 is None else v0,
        x_seq.shape[0],
        layout.neurons,
        x_seq.stride(0),
        layout.channel_stride,
        theta.numel(),
        float(args.v_frac),
        _amp(args),
        RESET_ZERO=args.reset == Reset.ZERO,
        AMP_IS_THETA=args.amplitude is None,
        HAS_V0=v0 is not None,
        SAVE_H=save_h,
        BLOCK=_BLOCK,
        num_warps=_NUM_WARPS,
        **FLOAT_OPTIONS,
    )
    return spikes, counts, v_final, h


def backward(grad_spikes, grad_v, h, x_seq, v_init, threshold, args, x_dtype, need_grad_x, need_grad_v_init):
    """One reverse pass: (grad_x [T, N] in x's dtype, grad_v_init float32 [N]), each empty when not
    needed. grad_spikes / grad_v None mean zero. From the forward's h or, h None, from x_seq and
    v_init (None: v_frac * theta): the same launch then first recomputes h into a float32 [T, N]
    scratch that lives for this launch only."""
    grad_spikes, grad_v, h, x_seq, v0, theta, layout = _layout.backward_operands(
        grad_spikes, grad_v, h, x_seq, v_init, threshold, x_dtype
    )
    recompute = h is None
    source = x_seq if recompute else h
    steps, neurons = source.shape[0], layout.neurons
    grad_x, grad_v_init = _layout.backward_outputs(layout, steps, x_dtype, source.device, need_grad_x, need_grad_v_init)
    if neurons == 0 or not (need_grad_x or need_grad_v_init):
        return grad_x, grad_v_init
    if recompute:
        h = layout.empty_seq(steps, torch.float32, source.device)
    alpha = float(args.alpha)
    _integrate_fire_backward_kernel[_grid(neurons)](
        h if grad_spikes is None else grad_spikes,
        h if grad_v is None else grad_v,
        h,
        grad_x if need_grad_x else h,
        grad_v_init if need_grad_v_init else h,
        theta,
        x_seq if recompute else h,
        h if v0 is None else v0,
        steps,
        neurons,
        x_seq.stride(0) if recompute else 0,
        layout.channel_stride,
        theta.numel(),
        float(args.v_frac),
        _amp(args),
        alpha,
        math.pi / 2 * alpha,
        alpha * 0.5,
        0.5 / alpha,
        RESET_ZERO=args.reset == Reset.ZERO,
        AMP_IS_THETA=args.amplitude is None,
        SURROGATE=int(args.surrogate),
        DETACH=args.detach_reset,
        HAS_GRAD_S=grad_spikes is not None,
        HAS_GRAD_V=grad_v is not None,
        STORE_GRAD_X=need_grad_x,
        STORE_GRAD_V0=need_grad_v_init,
        RECOMPUTE=recompute,
        HAS_V0=v0 is not None,
        BLOCK=_BLOCK,
        num_warps=_NUM_WARPS,
        **FLOAT_OPTIONS,
    )
    return grad_x, grad_v_init
