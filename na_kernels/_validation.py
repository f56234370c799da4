"""Argument checks shared by the ops: each error names the argument and what is accepted."""
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float_tensor(name, tensor):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")


def check_int_at_least(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_real(name, value, *, minimum=None, strictly_positive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not value - value == 0:  # not finite; math.isfinite would break a dynamic-shape graph
        raise ValueError(f"{name} must be finite, got {value}")
    if strictly_positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def positive_parameter_tensor(name, value, like, channel_dim, description):
    """A positive finite float or a tensor (scalar or per-channel along ``channel_dim``).

    Returns a float32 tensor of shape [1] or [C] on ``like``'s device. The caller's
    tensor is not copied when it already is float32 on that device (so autograd
    reaches it through the op's own arguments).
    """
    if isinstance(value, torch.Tensor):
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
            # Data check on CPU only: on CUDA it would cost a host sync per call.
            # one reduction (or one read for a scalar): NaN fails "> 0", inf fails "< inf"
            if value.numel() == 1:
                smallest = largest = value.detach().reshape(()).item()
            else:
                smallest, largest = (v.item() for v in torch.aminmax(value.detach()))
            if not (smallest > 0 and largest < math.inf):
                raise ValueError(f"{name} must be finite and > 0, got {value.detach().flatten()[:8].tolist()}")
        return value
    value = check_real(name, value, strictly_positive=True)
    return value
