"""The vocabulary of na_kernels, stated once: enums and the ops' argument records.

Every layer (the public functions, the torch.library ops, the Triton launchers, the C++
adapter, the reference, the modules, the CLI) takes its names and codes from here. The C++
kernels mirror the integer values in ``csrc/common/spec.h``; ``_C.vocabulary()`` exports
them and ``tests/test_spec.py`` checks that both agree.

A user spells a member by its lower-case name (``noise="uniform"``, ``reset="zero"``);
``Enum.parse(argument, value)`` turns that spelling into the member or raises a
``ValueError`` naming the argument and the accepted spellings.
"""

import enum
from dataclasses import dataclass, replace
from typing import Optional

import torch

_LABELS = {}  # enum class -> {label: member}, filled on first parse


class Vocabulary(enum.IntEnum):
    """An enum whose members users spell as their lower-case names."""

    @property
    def label(self) -> str:
        """The member as users spell it (``Noise.UNIFORM.label == "uniform"``)."""
        return self.name.lower()

    @classmethod
    def labels(cls):
        return tuple(member.label for member in cls)

    @classmethod
    def parse(cls, argument: str, value):
        """The member named by ``value`` (a member or its label); ValueError otherwise."""
        if isinstance(value, cls):
            return value
        table = _LABELS.get(cls)
        if table is None:
            table = _LABELS[cls] = {member.label: member for member in cls}
        member = table.get(value) if isinstance(value, str) else None
        if member is None:
            raise ValueError(f"{argument} must be one of {cls._accepted()}, got {value!r}")
        return member

    @classmethod
    def _accepted(cls):
        return cls.labels()


class Noise(Vocabulary):
    """The noise inside noisy_quant's quantizer. ``None`` and ``"none"`` both mean NONE (QCFS)."""

    NONE = 0
    UNIFORM = 1  # eps ~ U(-0.5, 0.5): Triton's tl.rand4x - 0.5, four elements per Philox block
    GAUSSIAN = 2  # eps ~ N(0, 1): Triton's tl.randn4x

    @classmethod
    def parse(cls, argument: str, value):
        if value is None:
            return cls.NONE
        return super().parse(argument, value)

    @classmethod
    def _accepted(cls):
        return (None,) + cls.labels()

    @property
    def public(self):
        """The value the public API uses for this kind: None for NONE, else the label."""
        return None if self is Noise.NONE else self.label

    @property
    def default_scale(self) -> float:
        """The noise amplitude in quantization steps that ``scale=None`` means (``DEFAULT_NOISE_SCALE``)."""
        return DEFAULT_NOISE_SCALE[self]


# scale=None per noise kind, in quantization steps, chosen by measurement (docs/design.md,
# "The default noise scale"): uniform 1.0 is U(-0.5, 0.5) of a step, E[noisy_quant] = clamp
# (Theorem 1); gaussian 0.3 is about the uniform noise's standard deviation (1/sqrt(12)).
DEFAULT_NOISE_SCALE = {Noise.NONE: 0.0, Noise.UNIFORM: 1.0, Noise.GAUSSIAN: 0.3}


class Reset(Vocabulary):
    """integrate_fire's reset after a spike."""

    SUBTRACT = 0  # soft: v = h - s * theta
    ZERO = 1  # hard: v = h * (1 - s)


class Surrogate(Vocabulary):
    """integrate_fire's surrogate derivative of the spike, evaluated at u = h - theta."""

    SIGMOID = 0  # alpha * sig(alpha u) * (1 - sig(alpha u))
    ATAN = 1  # alpha / 2 / (1 + (pi/2 * alpha * u)^2)
    TRIANGLE = 2  # alpha * max(0, 1 - alpha |u|)
    RECTANGLE = 3  # alpha * [|u| < 1 / (2 alpha)]


# SpikingJelly's default sharpness of each of its surrogates (Sigmoid 4, ATan 2, Rect 1), which
# IFNode takes for a surrogate given by name; integrate_fire's own default is alpha=4.0 for all.
SPIKINGJELLY_ALPHA = {Surrogate.SIGMOID: 4.0, Surrogate.ATAN: 2.0, Surrogate.RECTANGLE: 1.0, Surrogate.TRIANGLE: 1.0}

# integrate_fire's initial potential as a fraction of θ: half a threshold, so the rate after T steps
# rounds x/θ to the nearest step instead of flooring it (docs/design.md, "Identity and limit").
DEFAULT_V_INIT = 0.5


class Save(Vocabulary):
    """What integrate_fire's forward keeps for backward."""

    NOTHING = 0  # no gradient needed
    H = 1  # h = v + x[t] of every step, float32 [T, ...]
    X = 2  # x_seq itself (and a v_init tensor): backward recomputes h


class DType(Vocabulary):
    """The storage types the kernels read and write (their arithmetic is float32)."""

    FLOAT32 = 0
    FLOAT16 = 1
    BFLOAT16 = 2

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self]

    @classmethod
    def of(cls, dtype: torch.dtype) -> "DType":
        return _DTYPE_CODES[dtype]


_TORCH_DTYPES = {DType.FLOAT32: torch.float32, DType.FLOAT16: torch.float16, DType.BFLOAT16: torch.bfloat16}
_DTYPE_CODES = {dtype: code for code, dtype in _TORCH_DTYPES.items()}
FLOAT_DTYPES = tuple(_TORCH_DTYPES.values())


class SimdLevel(Vocabulary):
    """The explicit-SIMD kernels the C++ extension runs (detected at run time, capped by tests)."""

    GENERIC = 0
    AVX2 = 1
    AVX512 = 2


VOCABULARY = (Noise, Reset, Surrogate, DType, SimdLevel)  # the enums C++ mirrors (Save is Python's)


# ------------------------------------------------------------------------- argument records


@dataclass(frozen=True)
class NoisyQuantArgs:
    """noisy_quant's non-tensor arguments, checked: ``y = clamp(floor(x*p/λ + scale*eps + shift), 0, p) * λ/p``."""

    p: int  # quantization levels, >= 1
    noise: Noise
    scale: float  # noise amplitude in quantization steps, >= 0
    shift: float  # added before the floor

    def for_trace(self):
        """The record a torch.jit trace records (nothing in it depends on grad mode)."""
        return self


@dataclass(frozen=True)
class BatchNormNoisyQuantArgs:
    """batchnorm_noisy_quant's non-tensor arguments, checked: noisy_quant's (``NoisyQuantArgs``) on
    ``batch_norm(x) (+ residual)``, and BatchNorm's."""

    p: int
    noise: Noise
    scale: float
    shift: float
    batch_stats: bool  # this batch's statistics (running ones updated) or the running ones
    momentum: float  # weight of the batch in the running statistics
    eps: float  # added to the variance

    def for_trace(self):
        """The record a torch.jit trace records (nothing in it depends on grad mode)."""
        return self


@dataclass(frozen=True)
class IntegrateFireArgs:
    """integrate_fire's non-tensor arguments, checked (see ``na_kernels.integrate_fire``)."""

    v_frac: float  # initial potential as a fraction of theta (unused with a v_init tensor)
    reset: Reset
    amplitude: Optional[float]  # spike amplitude; None: the threshold
    surrogate: Surrogate
    alpha: float  # the surrogate's sharpness, > 0
    detach_reset: bool
    save: Save  # what forward keeps for backward

    def for_trace(self):
        """The record a torch.jit trace records: ``save`` X whatever the grad mode (jit.trace checks a
        trace by tracing again under no_grad, where save would be NOTHING; X computes the same
        forward, and a backward from it recomputes h)."""
        return self if self.save is Save.X else replace(self, save=Save.X)
