"""Every argument check of na_kernels, with one set of rules.

The ops, the modules, the converter and the CLI all check through these functions, so an
argument means the same everywhere (``p`` is an integral number >= 1 wherever it appears,
``noise`` accepts None and "none" alike, T is an int >= 1, ...). Each error is a TypeError
(wrong kind of value) or a ValueError (right kind, bad value) that names the argument and
what it accepts.

The scalar checks are written so that ``torch.compile(dynamic=True)`` traces them without a
graph break: ``v - v == 0`` tests finiteness where ``math.isfinite`` on a traced float would
break the graph ("torch.* op returned non-Tensor").
"""
import math
import numbers

import torch

from ._spec import FLOAT_DTYPES, Noise, Reset, Surrogate


def check_float_tensor(name, tensor):
    """A float32/float16/bfloat16 torch.Tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
    return tensor


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_real(name, value, *, minimum=None, strictly_positive=False, maximum=None, accepted="a real number"):
    """A finite real number (not a bool) as a float, optionally bounded."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {accepted}, got {value!r}")
    value = float(value)
    if not (value - value == 0):
        raise ValueError(f"{name} must be finite, got {value}")
    if strictly_positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_int(name, value, *, minimum, meaning=""):
    """An integral number (an int, or a float such as 3.0 with an integral value; not a bool) >= minimum."""
    what = f"an int >= {minimum}" + (f" ({meaning})" if meaning else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if not isinstance(value, numbers.Integral) and not (value - value == 0 and float(value).is_integer()):
        raise ValueError(f"{name} must be {what}, got {value}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value}")
    return int(value)


def check_optional_int(name, value, *, minimum, meaning=""):
    return None if value is None else check_int(name, value, minimum=minimum, meaning=meaning)


def check_levels(p, name="p"):
    """The number of quantization levels p: an int >= 1 (3, 7, 15 for 2, 3, 4 bits)."""
    return check_int(name, p, minimum=1, meaning="the number of quantization levels")


def check_time_steps(name, value, *, allow_none=False):
    """A number of time steps: an int >= 1 (or None where allowed)."""
    if value is None and allow_none:
        return None
    return check_int(name, value, minimum=1, meaning="time steps")


def check_noise(noise, name="noise"):
    """A noise kind: None or "none" (QCFS), "uniform" or "gaussian" -> Noise."""
    return Noise.parse(name, noise)


def check_reset(reset, name="reset"):
    return Reset.parse(name, reset)


def check_surrogate(surrogate, name="surrogate"):
    return Surrogate.parse(name, surrogate)


def check_noise_scale(scale, name="scale"):
    """The noise amplitude in quantization steps: a finite real >= 0."""
    return check_real(name, scale, minimum=0.0, accepted="a finite real >= 0 (noise amplitude in quantization steps)")


def check_positive(name, value, accepted="a positive finite number"):
    return check_real(name, value, strictly_positive=True, accepted=accepted)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def positive_parameter_tensor(name, value, like, channel_dim, description):
    """A positive finite float, or a tensor: a scalar or per-channel along ``channel_dim`` of ``like``.

    Returns the float, or the tensor itself (not copied, so autograd reaches it through the
    op's own arguments). A CPU tensor's values are checked too (on CUDA that would cost a host
    sync per call).
    """
    if not isinstance(value, torch.Tensor):
        return check_positive(name, value, accepted="a positive finite number or a tensor")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float tensor, got {value.dtype}")
    if value.device != like.device:
        raise ValueError(f"{name} must be on {like.device} like the input, got {value.device}")
    if value.dim() > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D per-channel tensor, got shape {tuple(value.shape)}")
    if value.numel() != 1:
        channels = like.shape[channel_dim] if like.dim() > channel_dim else None
        if channels is None or value.numel() != channels:
            raise ValueError(
                f"{name} per-channel must have {description} elements "
                f"(size of dim {channel_dim} of the input, {channels}), got {value.numel()}"
            )
    if value.device.type == "cpu" and not torch.compiler.is_compiling():
        # one reduction (or one read for a scalar): NaN fails "> 0", inf fails "< inf"
        if value.numel() == 1:
            smallest = largest = value.detach().reshape(()).item()
        else:
            smallest, largest = (v.item() for v in torch.aminmax(value.detach()))
        if not (smallest > 0 and largest < math.inf):
            raise ValueError(f"{name} must be finite and > 0, got {value.detach().flatten()[:8].tolist()}")
    return value


def check_greater(name, value, bound, accepted=None):
    """A finite real (not a bool) strictly greater than ``bound``, as a float."""
    accepted = accepted or f"a finite real > {bound}"
    value = check_real(name, value, accepted=accepted)
    if not value > bound:
        raise ValueError(f"{name} must be {accepted}, got {value}")
    return value


def check_clip_level(lam, *, min_lam, name="lam"):
    """NoisyQuant's initial clip level λ: a finite real > min_lam, or "auto" (set from data)."""
    accepted = f'a finite float > min_lam ({min_lam}) or "auto"'
    if isinstance(lam, str):
        if lam != "auto":
            raise ValueError(f"{name} must be {accepted}, got {lam!r}")
        return lam
    return check_greater(name, lam, min_lam, accepted=accepted)
