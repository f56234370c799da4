"""integrate_fire in plain PyTorch: the contract of docs/design.md in code.

Multi-step integrate-and-fire over ``x_seq`` of shape ``[T, ...]`` (time first), membrane
potential in float32 whatever the input dtype::

    v = v_init * theta                       # or a tensor of potentials
    for t in range(T):
        h = v + x_seq[t]                     # float32
        s = heaviside(h - theta)             # fires when h >= theta (ties fire), SpikingJelly's IFNode
        v = h - s * theta                    # reset="subtract";  reset="zero": v = h * (1 - s)
        spikes[t] = s * amplitude            # theta (amplitude="threshold") or a number
        counts += s                          # int32

``theta`` is a scalar or a per-channel vector along dim 2 of ``x_seq`` (dim 1 of a step).
``(h - theta >= 0)`` and ``(h >= theta)`` are the same predicate in IEEE arithmetic (the
difference of two finite floats is 0 only when they are equal), so the kernels test
``h >= theta``.

Backward is the surrogate gradient of SpikingJelly: ``d s / d h := sg(h - theta)`` with

    sigmoid    sg(u) = alpha * sigmoid(alpha u) * (1 - sigmoid(alpha u))      (alpha = 4: SpikingJelly's Sigmoid)
    atan       sg(u) = alpha / 2 / (1 + (pi/2 * alpha * u)^2)                  (SpikingJelly's ATan, default alpha 2)
    triangle   sg(u) = alpha * max(0, 1 - alpha |u|)                           (QCFS's ZIF with gamma = 1/alpha;
                                                                                 SpikingJelly's PiecewiseQuadratic)
    rectangle  sg(u) = alpha * [|u| < 1 / (2 alpha)]                           (SpikingJelly's Rect)

and ``detach_reset`` treats ``s`` in the reset term as a constant. ``integrate_fire`` below
is differentiable (autograd gives BPTT); ``integrate_fire_backward`` is the same BPTT in
closed form, one reverse pass over the saved ``h``, which the kernels follow operation by
operation. ``reset`` and ``surrogate`` are ``_spec`` members or their spellings.

The last section is this backend's adapter: ``forward`` and ``backward`` as ``na_kernels.ops``
calls every backend.
"""

import math

import torch

from ... import _layout
from ..._spec import DEFAULT_V_INIT, Reset, Save, Surrogate

SURROGATES = Surrogate.labels()
RESETS = Reset.labels()


def _float(value, device):
    return torch.tensor(float(value), dtype=torch.float32, device=device)


def surrogate_grad(u, surrogate, alpha):
    """sg(u): the surrogate derivative of heaviside at u (float32 tensor)."""
    surrogate = Surrogate.parse("surrogate", surrogate)
    alpha_t = _float(alpha, u.device)
    if surrogate is Surrogate.SIGMOID:
        sig = torch.sigmoid(u * alpha_t)
        return alpha_t * sig * (1.0 - sig)
    if surrogate is Surrogate.ATAN:
        w = _float(math.pi / 2 * alpha, u.device) * u
        return (alpha_t * 0.5) / (1.0 + w * w)
    if surrogate is Surrogate.TRIANGLE:
        return alpha_t * torch.clamp(1.0 - alpha_t * u.abs(), min=0.0)
    return alpha_t * (u.abs() < _float(0.5 / alpha, u.device)).to(torch.float32)  # RECTANGLE


class _Heaviside(torch.autograd.Function):
    """s = (u >= 0) forward; grad_u = grad_s * sg(u) backward."""

    @staticmethod
    def forward(ctx, u, surrogate, alpha):
        ctx.save_for_backward(u)
        ctx.surrogate, ctx.alpha = surrogate, alpha
        return (u >= 0).to(torch.float32)

    @staticmethod
    def backward(ctx, grad_s):
        (u,) = ctx.saved_tensors
        return grad_s * surrogate_grad(u, ctx.surrogate, ctx.alpha), None, None


def threshold_view(threshold, step_shape, device):
    """theta as float32, broadcastable against one time step (per-channel along dim 1 of a step)."""
    theta = torch.as_tensor(threshold, dtype=torch.float32, device=device).to(torch.float32)
    if theta.numel() == 1:
        return theta.reshape(())
    return theta.reshape((1, -1) + (1,) * (len(step_shape) - 2))


def initial_potential(v_init, theta_b, step_shape, device):
    """v_init as float32 potentials of the step shape: a tensor as is, a number times theta."""
    if isinstance(v_init, torch.Tensor):
        return v_init.to(torch.float32).expand(step_shape)
    return torch.full(step_shape, float(v_init), dtype=torch.float32, device=device) * theta_b


def integrate_fire(
    x_seq,
    threshold=1.0,
    *,
    v_init=DEFAULT_V_INIT,
    reset="subtract",
    amplitude="threshold",
    surrogate="sigmoid",
    alpha=4.0,
    detach_reset=False,
    return_h=False,
):
    """The reference loop, differentiable through autograd.

    Returns ``(spikes, counts, v_final)`` (and ``h`` [T, ...] float32 with ``return_h``):
    spikes in x_seq's dtype, counts int32 and v_final float32 of the step shape.
    """
    reset = Reset.parse("reset", reset)
    step_shape = tuple(x_seq.shape[1:])
    device = x_seq.device
    theta_b = threshold_view(threshold, step_shape, device)
    amp = theta_b if amplitude == "threshold" else _float(amplitude, device)
    v = initial_potential(v_init, theta_b, step_shape, device)
    counts = torch.zeros(step_shape, dtype=torch.int32, device=device)
    spikes, hs = [], []
    for t in range(x_seq.shape[0]):
        h = v + x_seq[t].to(torch.float32)
        s = _Heaviside.apply(h - theta_b, surrogate, alpha)
        s_reset = s.detach() if detach_reset else s
        if reset is Reset.SUBTRACT:
            v = h - s_reset * theta_b
        else:
            v = h * (1.0 - s_reset)
        spikes.append((s * amp).to(x_seq.dtype))
        counts = counts + s.detach().to(torch.int32)
        if return_h:
            hs.append(h.detach())
    out = (torch.stack(spikes), counts, v)
    if return_h:
        out = out + (torch.stack(hs),)
    return out


def integrate_fire_backward(
    grad_spikes,
    grad_v,
    h_seq,
    threshold,
    *,
    reset="subtract",
    amplitude="threshold",
    surrogate="sigmoid",
    alpha=4.0,
    detach_reset=False,
):
    """Closed-form BPTT in one reverse pass: (grad_x float32 [T, ...], grad_v_init float32 [...]).

    grad_spikes: [T, ...] or None (zero); grad_v: incoming gradient of v_final or None (zero);
    h_seq: the float32 h of every step saved by the forward. Per step, from t = T-1 down to 0:

        sg     = surrogate(h - theta)
        grad_s = grad_spikes[t] * amplitude                  (+ reset path, unless detach_reset:
                 - theta * grad_v   (subtract)  or  - h * grad_v where grad_v != 0   (zero))
        grad_h = grad_s * sg + grad_v * (1  (subtract)  or  1 - s  (zero))
        grad_x[t] = grad_h;  grad_v = grad_h                 (h[t] = v[t-1] + x[t])

    grad_v_init is the grad_v left after step 0.
    """
    reset = Reset.parse("reset", reset)
    with torch.no_grad():
        step_shape = tuple(h_seq.shape[1:])
        device = h_seq.device
        theta_b = threshold_view(threshold, step_shape, device)
        amp = theta_b if amplitude == "threshold" else _float(amplitude, device)
        gv = torch.zeros(step_shape, dtype=torch.float32, device=device) if grad_v is None else grad_v.to(torch.float32)
        grad_x = torch.empty(h_seq.shape, dtype=torch.float32, device=device)
        for t in range(h_seq.shape[0] - 1, -1, -1):
            h = h_seq[t]
            u = h - theta_b
            sg = surrogate_grad(u, surrogate, alpha)
            if grad_spikes is None:
                gs = torch.zeros(step_shape, dtype=torch.float32, device=device)
            else:
                gs = grad_spikes[t].to(torch.float32) * amp
            if reset is Reset.SUBTRACT:
                if not detach_reset:
                    gs = gs - theta_b * gv
                gh = gs * sg + gv
            else:
                not_fired = 1.0 - (u >= 0).to(torch.float32)
                if not detach_reset:  # where gv is 0 there is no reset path (and h = +-inf must not give inf * 0)
                    gs = torch.where(gv == 0, gs, gs - h * gv)
                gh = gs * sg + gv * not_fired
            grad_x[t] = gh
            gv = gh
        return grad_x, gv


# ------------------------------------------------------------ the backend interface (na_kernels.ops)


def _amplitude(args):
    return "threshold" if args.amplitude is None else args.amplitude


def forward(x_seq, threshold, v_init, args):
    """(spikes, counts, v_final, h) in the kernels' layout (``_layout.Layout``); h only with Save.H."""
    layout = _layout.Layout.of_input(x_seq, threshold.numel())
    save_h = args.save == Save.H
    with torch.no_grad():
        out = integrate_fire(
            x_seq,
            threshold.detach(),
            v_init=args.v_frac if v_init is None else v_init,
            reset=args.reset,
            amplitude=_amplitude(args),
            return_h=save_h,
        )
    h = layout.as_seq(out[3]) if save_h else torch.empty(0, dtype=torch.float32, device=x_seq.device)
    return layout.as_seq(out[0]), layout.as_step(out[1]), layout.as_step(out[2]), h


def backward(grad_spikes, grad_v, h, x_seq, v_init, threshold, args, x_dtype, need_grad_x, need_grad_v_init):
    """(grad_x, grad_v_init) in the layout, from the saved h or from h recomputed from x_seq."""
    layout = _layout.backward_layout(h, x_seq, threshold)
    if h is None:
        with torch.no_grad():
            h = integrate_fire(
                x_seq,
                threshold.detach(),
                v_init=args.v_frac if v_init is None else v_init,
                reset=args.reset,
                return_h=True,
            )[3]
    grad_x, grad_v_init = integrate_fire_backward(
        grad_spikes,
        grad_v,
        h,
        threshold.detach(),
        reset=args.reset,
        amplitude=_amplitude(args),
        surrogate=args.surrogate,
        alpha=args.alpha,
        detach_reset=args.detach_reset,
    )
    empty_x, empty_v = _layout.backward_outputs(layout, h.shape[0], x_dtype, h.device, False, False)
    return (
        layout.as_seq(grad_x.to(x_dtype)) if need_grad_x else empty_x,
        layout.as_step(grad_v_init) if need_grad_v_init else empty_v,
    )
