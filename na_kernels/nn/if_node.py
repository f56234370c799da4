"""IFNode: a SpikingJelly-style integrate-and-fire module on the fused ``integrate_fire`` kernel.

A drop-in for ``spikingjelly.activation_based.neuron.IFNode`` (SpikingJelly 2.0): the same
constructor arguments and defaults (``v_threshold=1.0, v_reset=0.0, surrogate_function=Sigmoid(),
detach_reset=False, step_mode="s", store_v_seq=False``), binary spikes, the membrane potential
carried from one call to the next until ``reset()`` (which
``spikingjelly.activation_based.functional.reset_net`` calls; ``functional.set_step_mode`` sets
``step_mode``), so an existing SpikingJelly model changes in one line::

    neuron.IFNode(v_threshold=1.0, surrogate_function=surrogate.ATan(), step_mode="m")
    na_kernels.nn.IFNode(v_threshold=1.0, surrogate_function=surrogate.ATan(), step_mode="m")

or all at once with ``na_kernels.nn.swap_spikingjelly_neurons(model)``.

Per neuron and step, as SpikingJelly defines it (state v starts at 0 for soft reset, at v_reset
for hard reset)::

    h = v + x[t];  s = [h >= θ];  v = h - s*θ            (v_reset=None: soft reset)
                                   v = (1 - s)*h + s*v_reset   (v_reset a float: hard reset)

The T steps run in one ``integrate_fire`` call (its surrogate-gradient backward is the BPTT),
with v in float32. For float16/bfloat16 input SpikingJelly keeps v in the input's dtype, rounding
after every operation; ``state_dtype="input"`` does the same (a step loop of PyTorch operations,
slower than the fused kernel), ``state_dtype="float32"`` (the default) keeps the kernel's float32
potential, which can differ from SpikingJelly's on a few spikes near θ.
"""

import math
import numbers
from typing import Optional

import torch
from torch import nn

from .._spec import SPIKINGJELLY_ALPHA, Surrogate
from .._validation import check_alpha, check_bool, check_real
from ..ops.integrate_fire import integrate_fire, integrate_fire_carried
from ..ops.integrate_fire.reference import surrogate_grad, threshold_view

# SpikingJelly's surrogate classes and what integrate_fire calls them (same formula in u = h - θ)
SPIKINGJELLY_SURROGATES = {"Sigmoid": "sigmoid", "ATan": "atan", "Rect": "rectangle"}
STEP_MODES = ("m", "s")
# where the potential lives between operations: the kernel's float32, or SpikingJelly's input dtype
STATE_DTYPES = ("float32", "input")


def parse_surrogate(surrogate_function, alpha=None):
    """``(name, alpha)`` for integrate_fire from a name (``"sigmoid"``, ``"atan"``, ``"rectangle"``,
    ``"triangle"``; alpha defaults to ``_spec.SPIKINGJELLY_ALPHA``) or a SpikingJelly surrogate object
    (``Sigmoid``, ``ATan``, ``Rect``, with its ``alpha``; it must have ``spiking=True``)."""
    if isinstance(surrogate_function, str):
        surrogate = Surrogate.parse("surrogate_function", surrogate_function)
        return surrogate.label, check_alpha(SPIKINGJELLY_ALPHA[surrogate] if alpha is None else alpha)
    kind = type(surrogate_function).__name__
    if kind not in SPIKINGJELLY_SURROGATES or not hasattr(surrogate_function, "alpha"):
        raise TypeError(
            f"surrogate_function must be one of {Surrogate.labels()} or a SpikingJelly surrogate "
            f"{tuple(SPIKINGJELLY_SURROGATES)} (the same formulas as integrate_fire's), got {kind}; other "
            "surrogates have no fused backward here: keep spikingjelly's IFNode for them"
        )
    if getattr(surrogate_function, "spiking", True) is not True:
        raise ValueError(f"surrogate_function {kind}(spiking=False) is not a spiking function; IFNode emits spikes")
    if alpha is not None:
        raise TypeError("alpha is given by the SpikingJelly surrogate object; pass only one of them")
    value = surrogate_function.alpha
    value = value.item() if isinstance(value, torch.Tensor) else value
    return SPIKINGJELLY_SURROGATES[kind], check_alpha(value, "surrogate_function.alpha")


class _Heaviside16(torch.autograd.Function):
    """s = [u >= 0] in u's dtype; backward: grad * sg(u) with SpikingJelly's operations, each
    rounded to u's dtype (sigmoid: ``g (1 - σ(αu)) σ(αu) α``; atan: ``α/2 / (1 + (π α/2 u)²) g``;
    rectangle: ``α [|u| < 1/(2α)] g``; triangle, which SpikingJelly lacks: sg in float32)."""

    @staticmethod
    def forward(ctx, u, surrogate, alpha):
        ctx.save_for_backward(u)
        ctx.surrogate, ctx.alpha = surrogate, alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_s):
        (u,) = ctx.saved_tensors
        alpha = ctx.alpha
        if ctx.surrogate == "sigmoid":
            sg = (u * alpha).sigmoid()
            return grad_s * (1.0 - sg) * sg * alpha, None, None
        if ctx.surrogate == "atan":
            au = math.pi * (alpha / 2) * u
            return (alpha / 2) / (1 + au * au) * grad_s, None, None
        if ctx.surrogate == "rectangle":
            return alpha * (u.abs() < 0.5 / alpha).to(u) * grad_s, None, None
        return grad_s * surrogate_grad(u.to(torch.float32), ctx.surrogate, alpha).to(u.dtype), None, None


class IFNode(nn.Module):
    """Integrate-and-fire neurons (SpikingJelly's ``IFNode``) on the fused kernel.

    Args:
        v_threshold: θ > 0, a number (or a 1-element / per-channel tensor, channel = dim 1 of
            a step ``[N, C, ...]``).
        v_reset: None for soft reset (``v = h - s*θ``, v starts at 0), or a float for hard
            reset (``v = (1-s)*h + s*v_reset``, v starts at v_reset; it must be < θ). SpikingJelly's
            default, 0.0, is the kernel's ``reset="zero"``. Another v_reset runs the kernel on
            ``v - v_reset`` with threshold ``θ - v_reset``: the same dynamics and gradients in
            exact arithmetic; in float32 ``(v - v_reset) + x`` can round differently from
            ``v + x``, so a neuron within rounding of θ may fire where SpikingJelly does not.
        surrogate_function: a name (``"sigmoid"``, ``"atan"``, ``"rectangle"``, ``"triangle"``)
            with ``alpha`` (default SpikingJelly's: 4, 2, 1, 1), or a SpikingJelly surrogate object
            ``Sigmoid``/``ATan``/``Rect`` (its ``alpha`` is used).
        detach_reset: treat the spike in the reset term as a constant in backward.
        step_mode: ``"s"`` (the default, as SpikingJelly's): x is one step ``[N, ...]`` (a kernel
            call with T = 1); ``"m"``: x is ``[T, N, ...]``, all T steps in one kernel call (the
            fast mode: set it, or ``functional.set_step_mode(model, "m")``). The state carries
            over between calls in both.
        store_v_seq: also keep ``v_seq`` ``[T, N, ...]``, the potential after each step's reset
            (recomputed from the spikes with the kernel's operations, bit for bit; in "s" mode
            appended step by step until ``reset()``).
        alpha: the surrogate's sharpness when ``surrogate_function`` is a name.
        state_dtype: ``"float32"`` (default): v is float32 whatever x's dtype (the fused kernel);
            ``"input"``: for float16/bfloat16 x, v is kept in x's dtype and every operation
            (``h = v + x``, ``h - θ``, the reset) rounds to it, as SpikingJelly 2.0 does: the same
            spikes and v as SpikingJelly, through a loop of PyTorch operations (slower). For
            float32 x both are the fused kernel.

    ``forward(x)``: spikes (0/1) in x's dtype, x's shape. The potential ``v`` (the shape of
    one step) carries over to the next call until ``reset()``; gradients flow through it
    across calls (``detach()`` cuts them, for truncated BPTT).
    """

    def __init__(
        self,
        v_threshold=1.0,
        v_reset: Optional[float] = 0.0,
        surrogate_function="sigmoid",
        detach_reset: bool = False,
        step_mode: str = "s",
        store_v_seq: bool = False,
        *,
        alpha: Optional[float] = None,
        state_dtype: str = "float32",
    ):
        super().__init__()
        if isinstance(v_threshold, torch.Tensor):
            threshold = v_threshold.detach().to(torch.float32)
        else:
            threshold = check_real("v_threshold", v_threshold, strictly_positive=True, accepted="a real > 0")
        if v_reset is not None:
            v_reset = check_real("v_reset", v_reset, accepted="None (soft reset) or a real (hard reset)")
            low = float(threshold.min()) if isinstance(threshold, torch.Tensor) else threshold
            if not v_reset < low:
                raise ValueError(f"v_reset must be below v_threshold ({low}) for a hard reset, got {v_reset}")
        if isinstance(threshold, torch.Tensor):
            self.register_buffer("v_threshold", threshold.clone())
        else:
            self.v_threshold = threshold
        self.v_reset = v_reset
        self.surrogate, self.alpha = parse_surrogate(surrogate_function, alpha)
        self.surrogate_function = surrogate_function
        self.detach_reset = check_bool("detach_reset", detach_reset)
        self.step_mode = step_mode
        self.store_v_seq = check_bool("store_v_seq", store_v_seq)
        if state_dtype not in STATE_DTYPES:
            raise ValueError(
                f"state_dtype must be 'float32' (the fused kernel's float32 potential) or 'input' "
                f"(SpikingJelly's: v in a 16-bit input's dtype), got {state_dtype!r}"
            )
        self.state_dtype = state_dtype
        self._v = None  # the kernel's state: v - v_reset for a hard reset to v_reset != 0
        self._v16 = None  # or v itself in a 16-bit input's dtype (state_dtype="input")
        self.v_seq = None

    @property
    def step_mode(self) -> str:
        """``"m"`` (input ``[T, N, ...]``) or ``"s"`` (one step ``[N, ...]``)."""
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value):
        if value not in STEP_MODES:
            raise ValueError(f"step_mode must be 'm' (multi-step, [T, N, ...]) or 's' (single step), got {value!r}")
        self._step_mode = value

    @property
    def _offset(self) -> float:
        return self.v_reset if self.v_reset not in (None, 0.0) else 0.0

    @property
    def _initial(self) -> float:
        return 0.0 if self.v_reset is None else self.v_reset

    @property
    def v(self):
        """The membrane potential: a tensor of one step's shape after a call (float32, or the
        16-bit input's dtype with ``state_dtype="input"``), the initial value (0.0 for soft reset,
        v_reset for hard) as a float before one."""
        if self._v16 is not None:
            return self._v16
        if self._v is None:
            return self._initial
        return self._v + self._offset if self._offset else self._v

    @v.setter
    def v(self, value):
        self._v = self._v16 = None
        if isinstance(value, numbers.Real) and value == self._initial:
            return
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"v must be a tensor of one step's shape (or the reset value), got {value!r}")
        if self.state_dtype == "input" and value.dtype in (torch.float16, torch.bfloat16):
            self._v16 = value
        else:
            self._v = value.to(torch.float32) - self._offset if self._offset else value.to(torch.float32)

    def reset(self):
        """Forget the state: v back to its initial value, v_seq to None (``functional.reset_net``)."""
        self._v = self._v16 = None
        self.v_seq = None

    def detach(self):
        """Cut the gradient path through the carried potential (truncated BPTT)."""
        if self._v is not None:
            self._v = self._v.detach()
        if self._v16 is not None:
            self._v16 = self._v16.detach()
        if isinstance(self.v_seq, torch.Tensor):
            self.v_seq = self.v_seq.detach()

    def _kernel_threshold(self):
        return self.v_threshold - self._offset if self._offset else self.v_threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, N, ...]`` ("m") or ``[N, ...]`` ("s") -> spikes of the same shape and dtype."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"IFNode input must be a torch.Tensor, got {type(x).__name__}")
        if self.step_mode == "s":
            x_seq = x.unsqueeze(0)
        elif x.dim() < 2:
            raise ValueError(
                f"IFNode(step_mode='m') expects [T, N, ...] (rank >= 2), got shape {tuple(x.shape)}; "
                "use step_mode='s' for one step [N, ...]"
            )
        else:
            x_seq = x
        carried = self._v16 if self._v16 is not None else self._v
        if carried is not None and carried.shape != x_seq.shape[1:]:
            raise ValueError(
                f"IFNode carries a state of shape {tuple(carried.shape)} but the input's steps have shape "
                f"{tuple(x_seq.shape[1:])}: call reset() (functional.reset_net) between batches"
            )
        if self.state_dtype == "input" and x_seq.dtype in (torch.float16, torch.bfloat16):
            spikes = self._forward_in_input_dtype(x_seq)
            return spikes[0] if self.step_mode == "s" else spikes
        if self._v16 is not None:  # a 16-bit state met a float32 input: continue in float32
            self.v = self._v16.to(torch.float32)
        state = self._v
        threshold = self._kernel_threshold()
        options = dict(
            reset="subtract" if self.v_reset is None else "zero",
            amplitude=1.0,
            surrogate=self.surrogate,
            alpha=self.alpha,
            detach_reset=self.detach_reset,
            return_v=True,
            return_counts=False,
        )
        if state is None:
            spikes, v_final = integrate_fire(x_seq, threshold, v_init=0.0, **options)
        else:  # the carried potential: NaN / inf where an earlier input had them
            spikes, v_final = integrate_fire_carried(x_seq, threshold, state, **options)
        if self.store_v_seq:
            v_seq = self._potentials(x_seq, spikes, state, threshold) + self._offset
            if self.step_mode == "s" and isinstance(self.v_seq, torch.Tensor):
                v_seq = torch.cat([self.v_seq, v_seq])
            self.v_seq = v_seq
        self._v = v_final
        return spikes[0] if self.step_mode == "s" else spikes

    def _forward_in_input_dtype(self, x_seq):
        """SpikingJelly 2.0's step loop in x's 16-bit dtype: ``h = v + x``, ``s = [h - θ >= 0]``,
        ``v = h - s*θ`` or ``v = s*v_reset + (1 - s)*h``, each operation rounded to the dtype
        (a per-channel θ: each expression with θ in float32, rounded once)."""
        dtype = x_seq.dtype
        theta = self.v_threshold
        if isinstance(theta, torch.Tensor):
            theta = float(theta) if theta.numel() == 1 else threshold_view(theta, x_seq.shape[1:], x_seq.device)
        v = self.v
        if not isinstance(v, torch.Tensor):
            v = torch.full(x_seq.shape[1:], float(v), dtype=dtype, device=x_seq.device)
        v = v.to(dtype)
        spikes, potentials = [], []
        for t in range(x_seq.shape[0]):
            h = v + x_seq[t]
            s = _Heaviside16.apply((h - theta).to(dtype), self.surrogate, self.alpha)
            r = s.detach() if self.detach_reset else s
            v = (h - r * theta) if self.v_reset is None else (r * self.v_reset + (1.0 - r) * h)
            v = v.to(dtype)
            spikes.append(s)
            potentials.append(v)
        self._v, self._v16 = None, v
        if self.store_v_seq:
            v_seq = torch.stack(potentials)
            if self.step_mode == "s" and isinstance(self.v_seq, torch.Tensor) and self.v_seq.dtype == dtype:
                v_seq = torch.cat([self.v_seq, v_seq])
            self.v_seq = v_seq
        return torch.stack(spikes)

    def _potentials(self, x_seq, spikes, state, threshold):
        """The post-reset potential of every step, with the kernel's float32 operations in its order."""
        theta = torch.as_tensor(threshold, dtype=torch.float32, device=x_seq.device)
        if theta.dim() == 1 and theta.numel() > 1:
            theta = theta.reshape((-1,) + (1,) * (x_seq.dim() - 3))
        v = torch.zeros(x_seq.shape[1:], dtype=torch.float32, device=x_seq.device) if state is None else state
        out = []
        for t in range(x_seq.shape[0]):
            h = v + x_seq[t].to(torch.float32)
            s = spikes[t].to(torch.float32)
            s = s.detach() if self.detach_reset else s
            v = h - s * theta if self.v_reset is None else h * (1 - s)
            out.append(v)
        return torch.stack(out)

    def extra_repr(self):
        threshold = self.v_threshold if not isinstance(self.v_threshold, torch.Tensor) else "tensor"
        return (
            f"v_threshold={threshold}, v_reset={self.v_reset}, surrogate={self.surrogate}(alpha={self.alpha}), "
            f"detach_reset={self.detach_reset}, step_mode={self.step_mode}, store_v_seq={self.store_v_seq}"
            + (f", state_dtype={self.state_dtype}" if self.state_dtype != "float32" else "")
        )
