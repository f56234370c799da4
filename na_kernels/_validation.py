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
import struct

import torch

from ._spec import FLOAT_DTYPES, Noise, Reset, Surrogate

# parameter tensors (lam, threshold, v_init) may also be float64: the kernels read them as float32
PARAMETER_DTYPES = FLOAT_DTYPES + (torch.float64,)

# Every number reaches float32 arithmetic, so each must be representable there (issue 12): its
# magnitude at most float32's largest finite value, and a value that must be > 0 at least one
# that float32 does not round to 0 (values <= 2^-150 do).
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # 3.4028234663852886e38
FLOAT32_SMALLEST_NORMAL = 2.0**-126  # 1.1754943508222875e-38
_FLOAT32_ROUNDS_TO_ZERO = 2.0**-150
# p is exact in float32 up to 2^24
MAX_LEVELS = 2**24
# The range of a positive parameter tensor or number (lam, threshold), as float32 values:
# - threshold: a positive normal float32, so theta/2 and h - theta keep full precision;
# - lam: lam / p a normal float32 for every p <= 2^24 (lam >= 2^24 * 2^-126 = 2^-102), so every
#   level q * lam / p has full precision, and x * p finite for every |x| <= 2 lam and p <= 2^24
#   (2 * 2^102 * 2^24 = 2^127 < float32 max), so z = (x * p) / lam never overflows before it saturates.
PARAMETER_RANGES = {
    "lam": (
        2.0**-102,
        2.0**102,
        "2^-102 to 2^102, so that lam / p is a normal float32 and x * p cannot overflow for any p <= 2^24",
    ),
}
_DEFAULT_PARAMETER_RANGE = (FLOAT32_SMALLEST_NORMAL, FLOAT32_MAX, "a positive normal float32")


def parameter_range(name):
    """(smallest, largest, why) of the float32 value of the positive parameter ``name`` (lam, threshold)."""
    return PARAMETER_RANGES.get(name, _DEFAULT_PARAMETER_RANGE)


def _float32(value):
    """A Python float rounded to float32 and back (finite input within float32's range)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def check_dense(name, x, where=None):
    """A strided (dense), non-nested tensor: TypeError naming ``where`` (when given) and the fix otherwise."""
    prefix = f"{where}: " if where else ""
    if isinstance(x, torch.Tensor) and getattr(x, "is_nested", False):
        raise TypeError(
            f"{prefix}{name} is a nested tensor; pad it first, e.g. torch.nested.to_padded_tensor({name}, 0.0)"
        )
    if isinstance(x, torch.Tensor) and x.layout != torch.strided:
        raise TypeError(
            f"{prefix}{name} must be a dense tensor, got layout {x.layout}; convert it with {name}.to_dense()"
        )


def check_float_tensor(name, tensor):
    """A dense float32/float16/bfloat16 torch.Tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    check_dense(name, tensor)
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
    return tensor


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_real(name, value, *, minimum=None, strictly_positive=False, maximum=None, accepted="a real number"):
    """A real number (not a bool) finite in float32 (|value| <= 3.4028234663852886e38) as a float,
    optionally bounded; strictly_positive also refuses values that float32 rounds to 0 (<= 2^-150)."""
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be {accepted}, got {value!r}")
    value = float(value)
    if not (value - value == 0):
        raise ValueError(f"{name} must be finite, got {value}")
    if not abs(value) <= FLOAT32_MAX:
        raise ValueError(
            f"{name} must be finite in float32, |{name}| <= {FLOAT32_MAX:.9g} (the kernels compute in "
            f"float32), got {value}"
        )
    if strictly_positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if strictly_positive and value <= _FLOAT32_ROUNDS_TO_ZERO:
        raise ValueError(f"{name} must be > 0 in float32 (> 2^-150, which float32 rounds to 0), got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_int(name, value, *, minimum, maximum=None, meaning=""):
    """An integral number (an int, or a float such as 3.0 with an integral value; not a bool) >= minimum
    (and <= maximum when given)."""
    if type(value) is int and value >= minimum and (maximum is None or value <= maximum):
        return value
    what = (
        f"an int >= {minimum}"
        + ("" if maximum is None else f" and <= {maximum}")
        + (f" ({meaning})" if meaning else "")
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if not isinstance(value, numbers.Integral) and not (value - value == 0 and float(value).is_integer()):
        raise ValueError(f"{name} must be {what}, got {value}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {what}, got {value}")
    return int(value)


def check_optional_int(name, value, *, minimum, meaning=""):
    return None if value is None else check_int(name, value, minimum=minimum, meaning=meaning)


def check_levels(p, name="p"):
    """The number of quantization levels p: an int in [1, 2^24] (3, 7, 15 for 2, 3, 4 bits; exact in float32)."""
    return check_int(
        name, p, minimum=1, maximum=MAX_LEVELS, meaning="the number of quantization levels, exact in float32"
    )


# The fused BatchNorm + noisy_quant op reads each element's level back from y in backward:
# levels q * lam / p, q <= p, stay apart after y's rounding to its dtype while p times the
# dtype's relative rounding (2^-24, 2^-11, 2^-8) is at most 1/4.
FUSED_MAX_LEVELS = {torch.float32: MAX_LEVELS, torch.float16: 512, torch.bfloat16: 64}


def check_fused_levels(p, dtype, name="p"):
    """p for batchnorm_noisy_quant on x of ``dtype``: at most ``FUSED_MAX_LEVELS[dtype]``."""
    limit = FUSED_MAX_LEVELS[dtype]
    if p > limit:
        raise ValueError(
            f"{name} must be at most {limit} for batchnorm_noisy_quant on {dtype} (its backward reads the level "
            f"back from y), got {p}: use a wider dtype or BatchNorm and noisy_quant unfused"
        )
    return p


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


def resolve_noise_scale(scale, noise, name="scale"):
    """``scale`` checked by ``check_noise_scale``, or, for None, the default of ``noise`` (a
    ``Noise``): ``_spec.DEFAULT_NOISE_SCALE``. An explicit scale always wins."""
    return noise.default_scale if scale is None else check_noise_scale(scale, name)


def check_positive(name, value, accepted="a positive finite number"):
    return check_real(name, value, strictly_positive=True, accepted=accepted)


def _range_error(name, values):
    smallest, largest, why = parameter_range(name)
    return ValueError(
        f"{name} must be in [{smallest:.9g}, {largest:.9g}] as float32 ({why}; the kernels compute "
        f"in float32), got {values}; rescale the input if it needs a value outside"
    )


def _float32_bounds(tensor):
    """(min, max) of a non-empty tensor's float32 values in one reduction; NaN anywhere gives NaN
    for both, so a range test written as ``low < min and max < high`` fails on it."""
    values = tensor.detach().to(torch.float32)
    if values.numel() == 1:
        value = values.reshape(()).item()
        return value, value
    return tuple(v.item() for v in torch.aminmax(values))


def positive_parameter_tensor(name, value, like, channel_dim, description):
    """A positive float, or a tensor: a scalar or per-channel along ``channel_dim`` of ``like``;
    its float32 value(s) within ``parameter_range(name)``.

    Returns the float, or the tensor itself (not copied, so autograd reaches it through the
    op's own arguments). A CPU tensor's values are checked too (on CUDA that would cost a host
    sync per call).
    """
    if not isinstance(value, torch.Tensor):
        smallest_allowed, largest_allowed, _ = parameter_range(name)
        value = check_positive(name, value, accepted="a positive finite number or a tensor")
        if not smallest_allowed <= _float32(value) <= largest_allowed:
            raise _range_error(name, value)
        return value
    check_dense(name, value)
    if value.dtype not in PARAMETER_DTYPES:
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
        check_parameter_values(name, value)
    return value


def check_parameter_values(name, value, where=None):
    """The float32 values of a positive parameter tensor (lam, threshold): finite, > 0 and within
    ``parameter_range(name)``; the ValueError names ``where`` (a layer) when given. One
    reduction (a host read: call it on CPU tensors, or once at conversion, not per step)."""
    if not value.numel():
        return value
    prefix = f"{where}: " if where else ""
    smallest_allowed, largest_allowed, _ = parameter_range(name)
    smallest, largest = _float32_bounds(value)  # NaN fails "> 0", inf fails "< inf"
    if not (smallest > 0 and largest < math.inf):
        raise ValueError(
            f"{prefix}{name} must be finite and > 0 as float32, got {value.detach().flatten()[:8].tolist()}"
        )
    if not (smallest_allowed <= smallest and largest <= largest_allowed):
        raise ValueError(f"{prefix}{_range_error(name, value.detach().flatten()[:8].tolist())}")
    return value


def check_batches(name, batches):
    """Data batches, each a tuple of tensors (inputs): every tensor with at least one sample along
    dim 0 and, if floating point, only finite values (NaN or inf would set statistics derived
    from them silently wrong). ValueError naming ``name`` and the batch's index."""
    for index, inputs in enumerate(batches):
        for tensor in inputs:
            if tensor.dim() == 0 or tensor.shape[0] == 0:
                raise ValueError(
                    f"{name}: batch {index} is empty (shape {tuple(tensor.shape)}); every batch needs at "
                    "least one sample along dim 0"
                )
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(
                    f"{name}: batch {index} contains NaN or inf; statistics are computed from finite "
                    "data only: clean or drop that batch"
                )
    return batches


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


def check_seed(seed, name="seed"):
    """A noise seed: None (drawn later), an int that fits in 64 bits (returned as the int64 of the
    same bits: 2**64 - 1 and -1 are one seed), or a 1-element int64 tensor (returned as is)."""
    accepted = f"{name} must be None, an int or a 1-element int64 tensor"
    if seed is None:
        return None
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise TypeError(f"{accepted}, got {seed.dtype} of shape {tuple(seed.shape)}")
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{accepted}, got {seed!r}")
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"{name} must fit in 64 bits, got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed


def check_sequence(name, x_seq):
    """A float32/float16/bfloat16 tensor [T, ...], time first: rank >= 2 and T >= 1."""
    check_float_tensor(name, x_seq)
    if x_seq.dim() < 2:
        raise ValueError(f"{name} must be [T, ...] with rank >= 2 (time first), got shape {tuple(x_seq.shape)}")
    if x_seq.shape[0] == 0:
        raise ValueError(f"{name} must have T >= 1 time steps (dim 0), got shape {tuple(x_seq.shape)}")
    return x_seq


def check_amplitude(amplitude, name="amplitude"):
    """A spike amplitude: "threshold" (returned as None) or a positive finite number (a float)."""
    accepted = "'threshold' or a positive finite number"
    if isinstance(amplitude, str):
        if amplitude != "threshold":
            raise ValueError(f"{name} must be {accepted}, got {amplitude!r}")
        return None
    return check_positive(name, amplitude, accepted=accepted)


ALPHA_MAX = 2 / math.pi * FLOAT32_MAX  # atan's surrogate evaluates pi/2 * alpha in float32
_ALPHA_ACCEPTED = (
    "a positive finite number <= %.6g (2/pi * float32 max)" % ALPHA_MAX
)  # formatted once: not under dynamo


def check_alpha(alpha, name="alpha"):
    """A surrogate sharpness: a real in (0, 2/pi * float32 max] (beyond, atan's pi/2 * alpha overflows)."""
    return check_real(name, alpha, strictly_positive=True, maximum=ALPHA_MAX, accepted=_ALPHA_ACCEPTED)


def check_spikes_fit(amplitude, threshold, dtype):
    """The spike value, ``amplitude`` (a float) or, for None ("threshold"), each θ, must be finite in
    the spikes' dtype (x_seq's): float16 holds at most 65504. ``threshold`` is a float32 tensor;
    a CPU tensor's values are checked (on CUDA that would cost a host sync per call)."""
    largest = float(torch.finfo(dtype).max)
    if largest >= FLOAT32_MAX:
        return
    if amplitude is not None:
        if amplitude > largest:
            raise ValueError(
                f"amplitude {amplitude:g} does not fit the spikes' dtype {dtype} (at most {largest:g}); "
                "use a smaller amplitude or a float32 x_seq"
            )
        return
    if threshold.device.type == "cpu" and not torch.compiler.is_compiling() and threshold.numel():
        top = float(threshold.max())
        if top > largest:
            raise ValueError(
                f"threshold {top:g} does not fit the spikes' dtype {dtype} (at most {largest:g}): with "
                "amplitude='threshold' each spike is θ; pass amplitude=1.0, rescale, or use a float32 x_seq"
            )


def check_initial_potential(v_init, like, name="v_init", *, finite=True):
    """An initial membrane potential: a number (a fraction of the threshold; a float), or a float
    tensor of potentials (float64 included) with the per-step shape like.shape[1:], on like's device;
    its values finite in float32 unless ``finite=False`` (a potential carried from an earlier call,
    where a NaN or inf input left NaN or inf)."""
    if isinstance(v_init, torch.Tensor):
        check_dense(name, v_init)
        if v_init.dtype not in PARAMETER_DTYPES:
            raise TypeError(f"{name} must be a number or a float tensor of potentials, got {v_init.dtype}")
        if v_init.device != like.device:
            raise ValueError(f"{name} must be on {like.device} like the input, got {v_init.device}")
        if tuple(v_init.shape) != tuple(like.shape[1:]):
            raise ValueError(
                f"{name} tensor must have the per-step shape {tuple(like.shape[1:])}, got {tuple(v_init.shape)}"
            )
        if finite and v_init.device.type == "cpu" and not torch.compiler.is_compiling() and v_init.numel():
            # the kernels read the float32 values: NaN, inf and float64 values beyond float32 are garbage there
            smallest, largest = _float32_bounds(v_init)
            if not (-math.inf < smallest and largest < math.inf):
                raise ValueError(
                    f"{name} potentials must be finite in float32 (the kernels compute in float32), got "
                    "NaN or a value beyond +-3.4e38; check the state carried from the previous chunk"
                )
        return v_init
    return check_real(name, v_init, accepted="a number (a fraction of the threshold) or a tensor of potentials")


def _pair(name, value, minimum):
    """An int or a pair of ints, each >= minimum, as a pair."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(check_int(name, v, minimum=minimum) for v in values)


def check_event_conv_arguments(x, weight, bias, stride, padding, dilation, groups, residual):
    """event_conv2d's operands: x [N, Cin, H, W], weight [Cout, Cin, KH, KW] fitting the padded
    input, bias [Cout] or None, residual [N, Cout, OH, OW] or None, dilation and groups 1.
    Returns (stride, padding) as pairs."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("residual", residual)):
        if t is None and name in ("bias", "residual"):
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        check_dense(name, t)
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if _pair("dilation", dilation, 1) != (1, 1):
        raise ValueError(f"event_conv2d supports dilation 1 only, got {dilation!r}")
    if check_int("groups", groups, minimum=1) != 1:
        raise ValueError(f"event_conv2d supports groups=1 only, got {groups!r}")
    stride, padding = _pair("stride", stride, 1), _pair("padding", padding, 0)
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"x must be [N, Cin, H, W] and weight [Cout, Cin, KH, KW], got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input channels, x has {x.shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    out_size = tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip(x.shape[2:], padding, weight.shape[2:], stride))
    if any(n + 2 * p < k for n, p, k in zip(x.shape[2:], padding, weight.shape[2:])):
        raise ValueError(f"the kernel {tuple(weight.shape[2:])} is larger than the padded input")
    expected = (x.shape[0], weight.shape[0]) + out_size
    if residual is not None and tuple(residual.shape) != expected:
        raise ValueError(f"residual must be the output's shape {expected}, got {tuple(residual.shape)}")
    return stride, padding
