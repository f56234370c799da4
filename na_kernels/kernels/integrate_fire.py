"""Triton kernels for integrate_fire: the multi-step IF forward and its BPTT backward.

Same arithmetic, in the same order, as ``na_kernels/reference/integrate_fire.py``. The data
is viewed as flat [T, N] arrays, N neurons per step; the caller (``na_kernels/ops``) hands in
outputs in the input's per-step memory order (e.g. channels-last) and the stride between the
input's steps (0 for an input repeated over T). Each program owns BLOCK neurons, keeps their
membrane potential (or, backward, the incoming grad of v) and spike count in registers and
walks all T steps in a runtime loop: one launch covers the whole sequence, the counts come out
of the same pass, and a new T does not recompile (``steps`` is not specialized). Offsets are
int64 (T x N may exceed 2^31). Neuron n is in channel (n // inner) % channels.

What is read and written per element of [T, N]: forward reads x and writes the spikes (plus
h as float32 when the caller keeps h for backward); backward reads h and grad_spikes and
writes grad_x (or, when the caller kept x instead of h, first reads x and writes h to a
scratch buffer, in the same launch). The per-neuron arrays (counts, v_final, v_init, grad_v) are touched once.
"""
import math

import triton
import triton.language as tl

SIGMOID, ATAN, TRIANGLE, RECTANGLE = 0, 1, 2, 3  # surrogate codes (ops.SURROGATE_CODES)

_BLOCK = 512
_NUM_WARPS = 4


@triton.jit(do_not_specialize=["steps"])
def _integrate_fire_forward_kernel(
    x_ptr, spikes_ptr, counts_ptr, v_final_ptr, h_ptr, theta_ptr, v0_ptr,
    steps, neurons, x_step, inner, channels, v_frac, amp,
    RESET_ZERO: tl.constexpr, AMP_IS_THETA: tl.constexpr, HAS_V0: tl.constexpr, SAVE_H: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < neurons
    theta = tl.load(theta_ptr + (n // inner) % channels, mask=mask, other=1.0)
    if HAS_V0:
        v = tl.load(v0_ptr + n, mask=mask, other=0.0)
    else:
        v = v_frac * theta
    if AMP_IS_THETA:
        a = theta
    else:
        a = tl.full([BLOCK], amp, tl.float32)
    count = tl.zeros([BLOCK], dtype=tl.int32)
    offsets = n
    x_offsets = n
    for _ in range(steps):
        h = v + tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
        fired = h >= theta
        s = tl.where(fired, 1.0, 0.0)
        if RESET_ZERO:
            v = h * (1.0 - s)
        else:
            v = h - s * theta
        tl.store(spikes_ptr + offsets, (s * a).to(spikes_ptr.dtype.element_ty), mask=mask)
        count += fired.to(tl.int32)
        if SAVE_H:
            tl.store(h_ptr + offsets, h, mask=mask)
        offsets += neurons
        x_offsets += x_step
    tl.store(counts_ptr + n, count, mask=mask)
    tl.store(v_final_ptr + n, v, mask=mask)


@triton.jit
def _surrogate(u, alpha, atan_scale, half_alpha, half_width, SURROGATE: tl.constexpr):
    if SURROGATE == 0:  # sigmoid: alpha * sig * (1 - sig), sig = sigmoid(alpha u)
        sig = tl.div_rn(1.0, 1.0 + tl.exp(-(u * alpha)))  # div_rn: IEEE division on GPUs too
        sg = alpha * sig * (1.0 - sig)
    elif SURROGATE == 1:  # atan: alpha / 2 / (1 + (pi/2 alpha u)^2)
        w = atan_scale * u
        sg = tl.div_rn(half_alpha, 1.0 + w * w)
    elif SURROGATE == 2:  # triangle: alpha * max(0, 1 - alpha |u|); NaN stays NaN
        r = 1.0 - alpha * tl.abs(u)
        sg = alpha * tl.where(r < 0.0, 0.0, r)
    else:  # rectangle: alpha * [|u| < 1 / (2 alpha)]
        sg = alpha * tl.where(tl.abs(u) < half_width, 1.0, 0.0)
    return sg


@triton.jit(do_not_specialize=["steps"])
def _integrate_fire_backward_kernel(
    grad_spikes_ptr, grad_v_ptr, h_ptr, grad_x_ptr, grad_v_init_ptr, theta_ptr, x_ptr, v0_ptr,
    steps, neurons, x_step, inner, channels, v_frac, amp, alpha, atan_scale, half_alpha, half_width,
    RESET_ZERO: tl.constexpr, AMP_IS_THETA: tl.constexpr, SURROGATE: tl.constexpr, DETACH: tl.constexpr,
    HAS_GRAD_S: tl.constexpr, HAS_GRAD_V: tl.constexpr, STORE_GRAD_X: tl.constexpr, STORE_GRAD_V0: tl.constexpr,
    RECOMPUTE: tl.constexpr, HAS_V0: tl.constexpr, BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < neurons
    theta = tl.load(theta_ptr + (n // inner) % channels, mask=mask, other=1.0)
    if RECOMPUTE:
        # the forward's h, recomputed from x and v_init (same operations, same bits) into the
        # scratch h_ptr, then read back below by the same threads
        if HAS_V0:
            v = tl.load(v0_ptr + n, mask=mask, other=0.0)
        else:
            v = v_frac * theta
        h_offsets = n
        x_offsets = n
        for _ in range(steps):
            h = v + tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
            s = tl.where(h >= theta, 1.0, 0.0)
            if RESET_ZERO:
                v = h * (1.0 - s)
            else:
                v = h - s * theta
            tl.store(h_ptr + h_offsets, h, mask=mask)
            h_offsets += neurons
            x_offsets += x_step
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
            g = tl.load(grad_spikes_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            if AMP_IS_THETA:
                gs = g * theta
            else:
                gs = g * amp
        else:
            gs = tl.zeros([BLOCK], dtype=tl.float32)
        if RESET_ZERO:
            not_fired = 1.0 - tl.where(u >= 0.0, 1.0, 0.0)
            if not DETACH:
                gs = gs - h * gv
            gh = gs * sg + gv * not_fired
        else:
            if not DETACH:
                gs = gs - theta * gv
            gh = gs * sg + gv
        if STORE_GRAD_X:
            tl.store(grad_x_ptr + offsets, gh.to(grad_x_ptr.dtype.element_ty), mask=mask)
        gv = gh
        offsets -= neurons
    if STORE_GRAD_V0:
        tl.store(grad_v_init_ptr + n, gv, mask=mask)


def _grid(neurons):
    return (triton.cdiv(neurons, _BLOCK),)


def integrate_fire_forward(x_seq, spikes, counts, v_final, h, theta, v0, v_frac, reset, amplitude, neurons, inner):
    """Fills spikes [T, N] (x's dtype), counts int32 [N], v_final float32 [N] and, unless h is None,
    h float32 [T, N]: flat arrays in one memory order, steps N elements apart. x_seq: each step
    dense in that same order, any stride between steps (0 for an input repeated over T);
    theta float32 [channels]; v0 float32 [N] or None (v starts at v_frac * theta); amplitude
    None (theta) or a float. Neuron m is in channel (m // inner) % channels."""
    if neurons == 0:
        return
    _integrate_fire_forward_kernel[_grid(neurons)](
        x_seq, spikes, counts, v_final, v_final if h is None else h, theta, v_final if v0 is None else v0,
        x_seq.shape[0], neurons, x_seq.stride(0), inner, theta.numel(), float(v_frac),
        0.0 if amplitude is None else float(amplitude),
        RESET_ZERO=reset == 1, AMP_IS_THETA=amplitude is None, HAS_V0=v0 is not None, SAVE_H=h is not None,
        BLOCK=_BLOCK, num_warps=_NUM_WARPS, enable_fp_fusion=False,
    )


def integrate_fire_backward(grad_spikes, grad_v, h, grad_x, grad_v_init, theta, reset, amplitude, surrogate, alpha,
                            detach_reset, neurons, inner, x_seq=None, v0=None, v_frac=0.0):
    """One reverse pass: fills grad_x [T, N] (x's dtype) unless None and grad_v_init float32 [N]
    unless None. grad_spikes [T, N] in x's dtype or None (zero); grad_v float32 [N] or None (zero);
    h: the forward's float32 [T, N], or, with x_seq given, a scratch [T, N] float32 that the
    same launch first fills with h recomputed from x_seq (steps x_seq.stride(0) apart) and v0
    (float32 [N], or None: v_frac * theta). All flat in one memory order."""
    if neurons == 0 or (grad_x is None and grad_v_init is None):
        return
    alpha = float(alpha)
    recompute = x_seq is not None
    _integrate_fire_backward_kernel[_grid(neurons)](
        h if grad_spikes is None else grad_spikes, h if grad_v is None else grad_v, h,
        h if grad_x is None else grad_x, h if grad_v_init is None else grad_v_init, theta,
        x_seq if recompute else h, h if v0 is None else v0,
        h.shape[0], neurons, x_seq.stride(0) if recompute else 0, inner, theta.numel(), float(v_frac),
        0.0 if amplitude is None else float(amplitude), alpha, math.pi / 2 * alpha, alpha * 0.5, 0.5 / alpha,
        RESET_ZERO=reset == 1, AMP_IS_THETA=amplitude is None, SURROGATE=surrogate, DETACH=detach_reset,
        HAS_GRAD_S=grad_spikes is not None, HAS_GRAD_V=grad_v is not None, STORE_GRAD_X=grad_x is not None,
        STORE_GRAD_V0=grad_v_init is not None, RECOMPUTE=recompute, HAS_V0=v0 is not None,
        BLOCK=_BLOCK, num_warps=_NUM_WARPS, enable_fp_fusion=False,
    )
