"""NoisyQuant: the noise-injected quantize-clip activation as a drop-in for ``nn.ReLU``.

``y = clamp(floor(x * p / λ + scale * ε + 0.5), 0, p) * λ / p``

with ``ε ~ U(-0.5, 0.5)`` (``noise="uniform"``), ``N(0, 1)`` (``"gaussian"``) or 0
(``None``, QCFS), and ε only in training mode. λ (the clip level, later the IF threshold) is
trainable and kept strictly positive by its parametrisation::

    λ = softplus(raw_lam) + min_lam

so no optimizer step can drive it to zero or below (the QCFS reference code's λ can go
negative, its issue #10). For λ of a few units and more softplus is the identity to float
precision and its slope is ~1, so training behaves as with a plain parameter there.
"""

import math
import numbers

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import (
    FUSED_MAX_LEVELS,
    check_clip_level,
    check_dense,
    check_int,
    check_levels,
    check_noise,
    check_positive,
    resolve_noise_scale,
)
from ..ops.batchnorm_noisy_quant import batchnorm_noisy_quant
from ..ops.noisy_quant import noisy_quant

AUTO_PERCENTILE = 99.9
# Where NoisyQuant fused with its BatchNorm runs the fused op: the dtypes the op takes, 16-bit
# (autocast) included, where its C++ kernels measured faster than BatchNorm + noisy_quant unfused
# (docs/notes.md); with p above the op's limit for the dtype (FUSED_MAX_LEVELS) it runs unfused.
FUSED_MODULE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_QUANTILE_ELEMENTS = 1 << 22  # torch.quantile refuses inputs above 2**24 elements


def _inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    # softplus(r) = log(1 + e^r)  =>  r = v + log(1 - e^-v) = v + log(-expm1(-v))
    value = value.to(torch.float64)
    raw = value + torch.log(-torch.expm1(-value))
    return raw.to(torch.float32)


def _percentile_per_row(rows: torch.Tensor, percentile: float) -> torch.Tensor:
    """The ``percentile`` of each row of a 2-D tensor (rows subsampled by a fixed stride)."""
    step = max(1, math.ceil(rows.numel() / _MAX_QUANTILE_ELEMENTS))
    rows = rows[:, ::step].to(torch.float32)
    return torch.quantile(rows, percentile / 100.0, dim=1)


class NoisyQuant(nn.Module):
    """Drop-in replacement for ``nn.ReLU``: noise-injected, p-level quantize-clip activation.

    Forward (x of any shape, dim 1 the channel dim where ``per_channel``):
    ``y = clamp(floor(x*p/λ + scale*ε + 0.5), 0, p) * λ/p``; ``y`` has x's shape and dtype.
    Backward: straight-through (docs/design.md): ``grad_x = grad_y * [0 <= q_raw <= p]``, and λ
    receives ``sum(grad_y * g)`` through ``λ = softplus(raw_lam) + min_lam``.

    Args:
        p: quantization levels, an integral number >= 1 (3, 7, 15 for 2, 3, 4 bits; 1 for the
            single-step T = 1 strategy with ``noise="gaussian"``). After conversion an SNN with
            T = p steps reproduces a one-layer quantized net exactly.
        lam: initial clip level λ > 0 (float), or ``"auto"``: λ is set on the first forward in
            training mode to the 99.9th percentile of relu(x) (per channel where
            ``per_channel``), averaged over ranks under ``torch.distributed``.
        noise: ``"uniform"`` (Noise Adaptor), ``"gaussian"`` or ``None``/``"none"`` (QCFS), kept
            as ``None``, ``"uniform"`` or ``"gaussian"``. Applied only in training mode; eval
            mode is always the deterministic quantizer.
        scale: noise amplitude in quantization steps, >= 0; None: the noise kind's default
            (uniform 1.0, gaussian 0.3: ``_spec.DEFAULT_NOISE_SCALE``, docs/design.md).
        per_channel: one λ per channel (dim 1 of x) instead of one per layer.
        channels: number of channels when ``per_channel``; if None it is taken from the first
            input (then create the optimizer / DDP wrapper after one forward, or pass it).
        min_lam: the floor λ can approach but never reach, > 0.

    Attributes:
        lam: the current λ (a tensor: shape [] or [channels]), differentiable w.r.t. raw_lam.
        raw_lam: the trainable parameter.
    """

    def __init__(self, p, lam=8.0, noise="uniform", scale=None, per_channel=False, channels=None, *, min_lam=1e-3):
        super().__init__()
        self.p = check_levels(p)
        self.noise = check_noise(noise).public  # None (QCFS), "uniform" or "gaussian"
        self.scale = resolve_noise_scale(scale, check_noise(noise))
        self.min_lam = check_positive("min_lam", min_lam, accepted="a real > 0")
        if channels is not None:
            if not per_channel:
                raise ValueError("channels is only meaningful with per_channel=True")
            channels = check_int("channels", channels, minimum=1)
        lam = check_clip_level(lam, min_lam=self.min_lam)
        auto = lam == "auto"
        self.per_channel = bool(per_channel)
        initial = 8.0 if auto else lam
        shape = () if not per_channel else ((channels,) if channels is not None else (0,))
        raw = _inverse_softplus(torch.full(shape, initial - self.min_lam))
        self.raw_lam = nn.Parameter(raw)
        # persistent so a loaded state dict carries whether "auto" has happened
        self.register_buffer("lam_initialized", torch.tensor(not auto))
        self._initial_lam = initial
        self._auto_pending = auto  # python mirror of the buffer: no host sync, no graph break

    # ------------------------------------------------------------------ λ access
    @property
    def lam(self) -> torch.Tensor:
        """λ = softplus(raw_lam) + min_lam, shape [] or [channels]; strictly positive."""
        return F.softplus(self.raw_lam) + self.min_lam

    @lam.setter
    def lam(self, value):
        if isinstance(value, str) or not isinstance(value, (numbers.Real, torch.Tensor, list, tuple)):
            raise TypeError(
                f"lam must be a positive number, a tensor or (per channel) a list of numbers, got {value!r}"
            )
        try:
            value = torch.as_tensor(value, dtype=torch.float32, device=self.raw_lam.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"lam must be a positive number, a tensor or (per channel) a list of numbers, got {value!r} ({error})"
            ) from error
        if value.dim() > 1 or (not self.per_channel and value.numel() != 1):
            what = (
                "one number or a 1-D tensor, one per channel"
                if self.per_channel
                else "one number on a per-layer NoisyQuant (create it with per_channel=True for one λ per channel)"
            )
            raise ValueError(f"lam must be {what}, got shape {tuple(value.shape)}")
        if not bool(torch.all(torch.isfinite(value) & (value > self.min_lam))):
            raise ValueError(f"lam must be finite and > min_lam ({self.min_lam}), got {value}")
        with torch.no_grad():
            if self.per_channel and self.raw_lam.numel() == 0 and value.numel() == 1:
                self._initial_lam = float(value)  # channels not known yet: fills every channel when they are
            else:
                if self.per_channel and value.dim() == 1 and value.numel() != self.raw_lam.numel():
                    self.raw_lam.data = torch.empty_like(value)
                self.raw_lam.copy_(
                    _inverse_softplus(value - self.min_lam).reshape(()).expand_as(self.raw_lam)
                    if value.numel() == 1
                    else _inverse_softplus(value - self.min_lam)
                )
            self.lam_initialized.fill_(True)
        self._auto_pending = False

    @property
    def auto_pending(self) -> bool:
        """True while ``lam="auto"`` waits for its first training batch."""
        return self._auto_pending

    def _materialize_channels(self, channels):
        # Same Parameter object, new storage: an optimizer created before the first batch
        # still holds it (its state is created lazily on the first step).
        with torch.no_grad():
            fill = _inverse_softplus(torch.tensor(self._initial_lam - self.min_lam))
            self.raw_lam.data = fill.to(self.raw_lam.device).expand(channels).clone()

    @torch.no_grad()
    def _auto_initialize(self, x):
        if getattr(self, "_is_replica", False):
            raise RuntimeError(
                'NoisyQuant(lam="auto") must see its first training batch before the model is wrapped '
                "in nn.DataParallel (replicas cannot write λ back): run one forward first"
            )
        if x.numel() == 0:
            raise ValueError(
                f'NoisyQuant(lam="auto") sets λ from its first training batch, which is empty (shape '
                f"{tuple(x.shape)}): run a non-empty batch first, or set .lam"
            )
        activations = x.detach().clamp_min(0)
        if self.per_channel:
            rows = activations.transpose(0, 1).reshape(activations.shape[1], -1)
            lam = _percentile_per_row(rows, AUTO_PERCENTILE)
            fallback = _percentile_per_row(rows.reshape(1, -1), AUTO_PERCENTILE)[0]
            lam = torch.where(lam > self.min_lam * 2, lam, fallback)
        else:
            lam = _percentile_per_row(activations.reshape(1, -1), AUTO_PERCENTILE)[0]
        lam = torch.where(lam > self.min_lam * 2, lam, torch.ones_like(lam))  # all-negative input: λ = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(lam)
            lam /= torch.distributed.get_world_size()
        self.raw_lam.copy_(_inverse_softplus(lam - self.min_lam).to(self.raw_lam.device))
        self.lam_initialized.fill_(True)
        self._auto_pending = False

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, residual=None) -> torch.Tensor:
        """``clamp(floor(x*p/λ + scale*ε + 0.5), 0, p) * λ/p``, x's shape and dtype (ε only in training).

        Fused with a BatchNorm (``fuse_batchnorm``), x is the BatchNorm's input and the activation
        applies to ``bn(x) (+ residual)``, computed by one ``batchnorm_noisy_quant``."""
        bn = self.fused_batchnorm
        if bn is not None:
            return self._fused_forward(x, bn, residual)
        if residual is not None:
            raise TypeError("NoisyQuant takes a residual only when fused with its BatchNorm (fuse_batchnorm)")
        return self._activation(x)

    # ------------------------------------------------------------------ fused with a BatchNorm
    @property
    def fused_batchnorm(self):
        """The BatchNorm this activation computes in one op with itself, or None."""
        return self.__dict__.get("_fused_batchnorm")

    def fuse_batchnorm(self, bn):
        """From now on ``forward(x, residual)`` computes ``self(bn(x) (+ residual))`` in one op. ``bn``
        (a BatchNorm1d/2d/3d) is referenced, not registered: it stays where it is in the model, so the
        state dict keeps its keys. ``fuse_batchnorm(None)`` undoes it."""
        if bn is not None and type(bn) not in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            raise TypeError(f"fuse_batchnorm takes a BatchNorm1d/2d/3d, got {type(bn).__name__}")
        object.__setattr__(self, "_fused_batchnorm", bn)  # not a submodule

    def _fused_forward(self, x, bn, residual):
        check_dense("x", x, "NoisyQuant")
        bn._check_input_dim(x)
        per_channel_pending = self.per_channel and self.raw_lam.numel() == 0
        fusable = x.dtype in FUSED_MODULE_DTYPES and self.p <= FUSED_MAX_LEVELS[x.dtype]
        if self._auto_pending or per_channel_pending or not fusable:
            # λ from data, or a dtype or p the fused op does not take: unfused
            z = bn(x)
            return self._activation(z if residual is None else z + residual)
        # BatchNorm's own bookkeeping (torch.nn.modules.batchnorm._BatchNorm.forward)
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        tracked = not bn.training or bn.track_running_stats
        return batchnorm_noisy_quant(
            x,
            bn.weight,
            bn.bias,
            bn.running_mean if tracked else None,
            bn.running_var if tracked else None,
            self.p,
            self.lam,
            training=self.training,
            batch_stats=batch_stats,
            momentum=momentum,
            eps=bn.eps,
            residual=residual,
            noise=self.noise,
            scale=self.scale,
        )

    def _activation(self, x):
        check_dense("x", x, "NoisyQuant")
        if self.per_channel:
            if x.dim() < 2:
                raise ValueError(
                    f"per_channel NoisyQuant needs an input with a channel dim 1, got shape {tuple(x.shape)}"
                )
            if self.raw_lam.numel() == 0:
                self._materialize_channels(x.shape[1])
            elif self.raw_lam.numel() != x.shape[1]:
                raise ValueError(
                    f"per_channel NoisyQuant has {self.raw_lam.numel()} channels but the input has "
                    f"{x.shape[1]} along dim 1 (shape {tuple(x.shape)})"
                )
        if self._auto_pending:
            if not self.training:
                raise RuntimeError(
                    'NoisyQuant(lam="auto") has not been initialised: run one batch in training mode '
                    "(or set .lam) before evaluating or converting"
                )
            self._auto_initialize(x)
        return noisy_quant(x, self.p, self.lam, noise=self.noise, scale=self.scale, training=self.training)

    # ------------------------------------------------------------------ state dict
    def _load_from_state_dict(self, state_dict, prefix, *args):
        key = prefix + "raw_lam"
        if self.per_channel and key in state_dict and state_dict[key].shape != self.raw_lam.shape:
            if self.raw_lam.numel() == 0:  # channels not known yet: take them from the checkpoint
                self.raw_lam.data = torch.empty_like(state_dict[key], device=self.raw_lam.device)
        super()._load_from_state_dict(state_dict, prefix, *args)
        flag = prefix + "lam_initialized"
        if flag in state_dict:
            self._auto_pending = not bool(self.lam_initialized)

    def extra_repr(self) -> str:
        if self._auto_pending:
            lam = "auto (set by the first training batch)"
        else:
            values = self.lam.detach()
            if values.dim() == 0:
                lam = f"{values.item():.4g}"
            elif values.numel() == 0:
                lam = "per-channel (channels from the first input)"
            else:
                lam = (
                    f"per-channel[{values.numel()}] min={values.min().item():.4g} "
                    f"mean={values.mean().item():.4g} max={values.max().item():.4g}"
                )
        noise = "None (QCFS)" if self.noise is None else f"{self.noise!r}, scale={self.scale:g}"
        return f"p={self.p}, lam={lam}, noise={noise}"
