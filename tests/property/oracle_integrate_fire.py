"""integrate_fire forward as a float32 numpy loop over T, and its backward by float64 autograd.

Forward, per neuron, every line one float32 operation (docs/design.md)::

    v = float32(v_frac) * theta[c]        # or v = v_init (a tensor, widened to float32)
    for t in range(T):
        h = v + x[t]
        s = h >= theta[c]                 # ties fire; NaN never fires
        v = h - s * theta[c]              # subtract   (s * theta is theta or +0)
        v = h * (1 - s)                   # zero       (inf * 0 = NaN, as IEEE)
        spikes[t] = s * amplitude         # theta[c] or float32(amplitude), then rounded to x's dtype
        counts += s                       # int32

theta is per channel along dim 2 of x_seq (dim 1 of a step) or one value.

Backward: the surrogate-gradient BPTT is autograd of the same loop with ``ds/dh := sg(u)``. Here
the loop is rebuilt in float64 torch with every forward value pinned to the float32 forward's
(``h = h_graph + (h32 - h_graph).detach()``), so spikes, resets and the points where the surrogate
is evaluated are the kernels' own and only the backward's own rounding differs. ``sg`` is
evaluated in float64 at ``u = float32(h32 - theta32)`` (the float32 difference the kernels form):

    sigmoid    alpha * sig(alpha u) * (1 - sig(alpha u))
    atan       (alpha / 2) / (1 + (pi/2 * alpha * u)^2)
    triangle   alpha * max(0, 1 - alpha |u|)
    rectangle  alpha * [|u| < e],  e = the float32 nearest 1 / (2 alpha) (the kernels compare in float32)

``detach_reset`` detaches s in the reset term. ``magnitude_bound`` gives the same recursion on
absolute values, from which the tests derive their tolerance.
"""

import math

import numpy as np
import torch

F32 = np.float32


def theta_broadcast(theta, step_shape):
    theta = np.asarray(theta, dtype=np.float32).reshape(-1)
    if theta.size == 1:
        return theta.reshape(())
    return theta.reshape((1, -1) + (1,) * (len(step_shape) - 2))


def forward(x32, theta, v_init=0.5, reset="subtract", amplitude="threshold"):
    """(spikes float32 [T, ...] before the storage rounding, counts int32, v_final float32, h float32 [T, ...])."""
    step_shape = x32.shape[1:]
    th = theta_broadcast(theta, step_shape)
    amp = th if amplitude == "threshold" else F32(amplitude)
    with np.errstate(invalid="ignore", over="ignore"):
        if isinstance(v_init, np.ndarray):
            v = np.broadcast_to(v_init.astype(np.float32), step_shape).copy()
        else:
            v = np.broadcast_to(F32(v_init) * th, step_shape).astype(np.float32)
        counts = np.zeros(step_shape, dtype=np.int32)
        spikes = np.empty(x32.shape, dtype=np.float32)
        hs = np.empty(x32.shape, dtype=np.float32)
        for t in range(x32.shape[0]):
            h = (v + x32[t]).astype(np.float32)
            s = h >= th
            sf = s.astype(np.float32)
            if reset == "subtract":
                v = (h - sf * th).astype(np.float32)
            else:
                v = (h * (F32(1) - sf)).astype(np.float32)
            spikes[t] = np.broadcast_to(sf * amp, step_shape)
            counts += s.astype(np.int32)
            hs[t] = h
    return spikes, counts, v, hs


def surrogate64(u, surrogate, alpha):
    """sg(u) in float64 (u a float64 tensor)."""
    if surrogate == "sigmoid":
        sig = torch.sigmoid(alpha * u)
        return alpha * sig * (1.0 - sig)
    if surrogate == "atan":
        w = (math.pi / 2 * alpha) * u
        return (alpha / 2) / (1.0 + w * w)
    if surrogate == "triangle":
        return alpha * torch.clamp(1.0 - alpha * u.abs(), min=0.0)
    if surrogate == "rectangle":
        edge = float(np.float32(0.5 / alpha))
        return alpha * (u.abs() < edge).to(torch.float64)
    raise ValueError(surrogate)


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, s, sg):
        ctx.save_for_backward(sg)
        return s.clone()

    @staticmethod
    def backward(ctx, grad_s):
        (sg,) = ctx.saved_tensors
        return grad_s * sg, None, None


def _u32(hs, th):
    return torch.from_numpy((hs - th).astype(np.float32)).to(torch.float64)


def backward(
    x32,
    theta,
    grad_spikes32,
    grad_v32,
    v_init=0.5,
    reset="subtract",
    amplitude="threshold",
    surrogate="sigmoid",
    alpha=4.0,
    detach_reset=False,
):
    """(grad_x float64 [T, ...], grad_v_init float64 [...] or None when v_init is a number)."""
    spikes, _, _, hs = forward(x32, theta, v_init, reset, amplitude)
    step_shape = x32.shape[1:]
    th_np = theta_broadcast(theta, step_shape)
    th = torch.from_numpy(np.asarray(th_np, dtype=np.float64))
    amp = th if amplitude == "threshold" else torch.tensor(float(F32(amplitude)), dtype=torch.float64)
    sg_all = surrogate64(_u32(hs, th_np), surrogate, alpha)
    s_all = torch.from_numpy((hs >= th_np).astype(np.float64))
    h_all = torch.from_numpy(hs.astype(np.float64))
    x = torch.from_numpy(x32.astype(np.float64)).requires_grad_()
    if isinstance(v_init, np.ndarray):
        v0 = torch.from_numpy(np.broadcast_to(v_init.astype(np.float64), step_shape).copy()).requires_grad_()
        v = v0
    else:
        v0 = None
        v = torch.from_numpy(np.broadcast_to(F32(v_init) * th_np, step_shape).astype(np.float64))
    out_spikes = []
    for t in range(x32.shape[0]):
        h_graph = v + x[t]
        h = h_graph + (h_all[t] - h_graph).detach()
        s = _Spike.apply(h, s_all[t], sg_all[t])
        s_reset = s.detach() if detach_reset else s
        v = h - s_reset * th if reset == "subtract" else h * (1.0 - s_reset)
        out_spikes.append(s * amp)
    spikes64 = torch.stack(out_spikes)
    inputs = [x] + ([v0] if v0 is not None else [])
    grads = torch.autograd.grad(
        [spikes64, v],
        inputs,
        [torch.from_numpy(grad_spikes32.astype(np.float64)), torch.from_numpy(grad_v32.astype(np.float64))],
        allow_unused=True,
    )
    grad_x = grads[0] if grads[0] is not None else torch.zeros_like(x)
    grad_v = None
    if v0 is not None:
        grad_v = grads[1] if grads[1] is not None else torch.zeros_like(v0)
    return grad_x.detach().numpy(), (None if grad_v is None else grad_v.detach().numpy())


def magnitude_bound(
    x32,
    theta,
    grad_spikes32,
    grad_v32,
    v_init=0.5,
    reset="subtract",
    amplitude="threshold",
    surrogate="sigmoid",
    alpha=4.0,
    detach_reset=False,
):
    """The reverse recursion on absolute values, M[t] >= |every term that forms grad_h[t]|, with
    the sigmoid's and the triangle's sg widened by alpha (their float32 ``1 - sig`` and
    ``1 - alpha |u|`` lose up to an ulp of 1 absolutely, which near the triangle's kink is far more
    than an ulp of the small result):
    (M_x [T, ...], M_v [...], the largest |grad_s| bound of any step) as float64 arrays and a float."""
    _, _, _, hs = forward(x32, theta, v_init, reset, amplitude)
    step_shape = x32.shape[1:]
    th_np = theta_broadcast(theta, step_shape)
    th = np.abs(np.asarray(th_np, dtype=np.float64))
    amp = th if amplitude == "threshold" else float(F32(amplitude))
    sg = surrogate64(_u32(hs, th_np), surrogate, alpha).numpy()
    if surrogate in ("sigmoid", "triangle"):
        sg = sg + alpha
    m_v = np.broadcast_to(np.abs(grad_v32.astype(np.float64)), step_shape).copy()
    m_x = np.empty(x32.shape, dtype=np.float64)
    largest_gs = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # an inf bound accepts any result
        for t in range(x32.shape[0] - 1, -1, -1):
            gs = np.abs(grad_spikes32[t].astype(np.float64)) * amp
            if not detach_reset:
                gs = gs + (th if reset == "subtract" else np.abs(hs[t].astype(np.float64))) * m_v
            if gs.size:
                largest_gs = max(largest_gs, float(np.max(gs)))
            m = gs * sg[t] + m_v
            m_x[t] = m
            m_v = m
    return m_x, m_v, largest_gs
