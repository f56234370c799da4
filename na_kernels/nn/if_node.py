"""IFNode: a SpikingJelly-style integrate-and-fire module on the fused ``integrate_fire`` kernel.

A drop-in for ``spikingjelly.activation_based.neuron.IFNode`` in multi-step mode: the same
constructor arguments, input ``[T, N, ...]``, binary spikes, the membrane potential carried from
one call to the next until ``reset()`` (which ``spikingjelly.activation_based.functional.reset_net``
calls), so an existing SpikingJelly model changes in one line::

    neuron.IFNode(v_threshold=1.0, surrogate_function=surrogate.ATan(), step_mode="m")
    na_kernels.nn.IFNode(v_threshold=1.0, surrogate_function=surrogate.ATan(), step_mode="m")

Per neuron and step, as SpikingJelly defines it (state v starts at 0 for soft reset, at v_reset
for hard reset)::

    h = v + x[t];  s = [h >= θ];  v = h - s*θ            (v_reset=None: soft reset)
                                   v = (1 - s)*h + s*v_reset   (v_reset a float: hard reset)

The T steps run in one ``integrate_fire`` call (its surrogate-gradient backward is the BPTT).
"""
import numbers
from typing import Optional

import torch
from torch import nn

from .._spec import SPIKINGJELLY_ALPHA, Surrogate
from .._validation import check_alpha, check_bool, check_real
from ..ops.integrate_fire import integrate_fire

# SpikingJelly's surrogate classes and what integrate_fire calls them (same formula in u = h - θ)
SPIKINGJELLY_SURROGATES = {"Sigmoid": "sigmoid", "ATan": "atan", "Rect": "rectangle"}
STEP_MODES = ("m", "s")


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


class IFNode(nn.Module):
    """Multi-step integrate-and-fire neurons (SpikingJelly's ``IFNode``) on the fused kernel.

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
        step_mode: ``"m"`` (the default here; SpikingJelly's is ``"s"``): x is ``[T, N, ...]``, all
            T steps in one kernel call; ``"s"``: x is one step ``[N, ...]`` (a kernel call with
            T = 1, the state carried as in "m"). ``functional.set_step_mode`` may set it.
        store_v_seq: also keep ``v_seq`` ``[T, N, ...]``, the potential after each step's reset
            (float32; recomputed from the spikes with the kernel's operations, bit for bit; in
            "s" mode appended step by step until ``reset()``).
        alpha: the surrogate's sharpness when ``surrogate_function`` is a name.

    ``forward(x)``: spikes (0/1) in x's dtype, x's shape. The potential ``v`` (float32, the
    shape of one step) carries over to the next call until ``reset()``; gradients flow
    through it across calls (``detach()`` cuts them, for truncated BPTT).
    """

    def __init__(self, v_threshold=1.0, v_reset: Optional[float] = 0.0, surrogate_function="sigmoid",
                 detach_reset: bool = False, step_mode: str = "m", store_v_seq: bool = False, *,
                 alpha: Optional[float] = None):
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
        self._v = None       # the kernel's state: v - v_reset for a hard reset to v_reset != 0
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
    def v(self):
        """The membrane potential: a float32 tensor of one step's shape after a call, the initial
        value (0.0 for soft reset, v_reset for hard) as a float before one."""
        if self._v is None:
            return 0.0 if self.v_reset is None else self.v_reset
        return self._v + self._offset if self._offset else self._v

    @v.setter
    def v(self, value):
        if isinstance(value, numbers.Real) and value == (0.0 if self.v_reset is None else self.v_reset):
            self._v = None
        elif isinstance(value, torch.Tensor):
            self._v = value.to(torch.float32) - self._offset if self._offset else value.to(torch.float32)
        else:
            raise TypeError(f"v must be a tensor of one step's shape (or the reset value), got {value!r}")

    def reset(self):
        """Forget the state: v back to its initial value, v_seq to None (``functional.reset_net``)."""
        self._v = None
        self.v_seq = None

    def detach(self):
        """Cut the gradient path through the carried potential (truncated BPTT)."""
        if self._v is not None:
            self._v = self._v.detach()
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
            raise ValueError(f"IFNode(step_mode='m') expects [T, N, ...] (rank >= 2), got shape {tuple(x.shape)}; "
                             "use step_mode='s' for one step [N, ...]")
        else:
            x_seq = x
        state = self._v
        if state is not None and state.shape != x_seq.shape[1:]:
            raise ValueError(
                f"IFNode carries a state of shape {tuple(state.shape)} but the input's steps have shape "
                f"{tuple(x_seq.shape[1:])}: call reset() (functional.reset_net) between batches"
            )
        threshold = self._kernel_threshold()
        spikes, _, v_final = integrate_fire(
            x_seq, threshold, v_init=0.0 if state is None else state,
            reset="subtract" if self.v_reset is None else "zero", amplitude=1.0, surrogate=self.surrogate,
            alpha=self.alpha, detach_reset=self.detach_reset, return_v=True,
        )
        if self.store_v_seq:
            v_seq = self._potentials(x_seq, spikes, state, threshold) + self._offset
            if self.step_mode == "s" and isinstance(self.v_seq, torch.Tensor):
                v_seq = torch.cat([self.v_seq, v_seq])
            self.v_seq = v_seq
        self._v = v_final
        return spikes[0] if self.step_mode == "s" else spikes

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
        return (f"v_threshold={threshold}, v_reset={self.v_reset}, surrogate={self.surrogate}(alpha={self.alpha}), "
                f"detach_reset={self.detach_reset}, step_mode={self.step_mode}, store_v_seq={self.store_v_seq}")
