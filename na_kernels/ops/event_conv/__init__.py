"""event_conv: an event-driven (sparse-input) 2-D convolution for inference on the CPU.

A spiking network's convolutions read spikes: most inputs are 0. ``event_conv2d`` lists each
input pixel's nonzero channels once, then forms every output from those alone, so its cost
scales with the nonzero inputs (csrc/event_conv/). It is inference only: there is no backward,
and a call that needs a gradient runs the dense ``F.conv2d`` instead. The public function is
not a ``torch.library`` op (``_registration`` is for ops with a backward): under
``torch.compile`` it is traced as its dense fallback.

Modules: ``cpu.py`` (the C++ kernel), ``dense.py`` (the dense fallback, into an SNN's workspace where
one is active), ``reference.py`` (float64 PyTorch).
"""

import torch

from ... import cpu as _cpu
from ..._validation import check_event_conv_arguments, check_real
from . import cpu, dense, reference  # noqa: F401

# When the event kernel pays (bench/event_density.py with kept outputs, docs/notes.md): up to
# 30-60 % nonzero inputs on the bench networks' layers (ResNet-18's 512-channel one loses from
# 30 %); up to 20-30 % where Cout <= 16 (the kernel computes several output pixels at once there).
DEFAULT_MAX_DENSITY = 0.3
TILED_COUT = 16  # Cout up to which the kernel tiles output pixels (csrc/event_conv/event_conv.h)
TILED_MAX_DENSITY = 0.25


def default_max_density(cin, cout):
    """The nonzero fraction above which ``event_conv2d`` runs dense, for Cin x Cout channels."""
    return TILED_MAX_DENSITY if cout <= TILED_COUT else DEFAULT_MAX_DENSITY


def event_ok(x, weight, bias=None, residual=None):
    """Whether the C++ event kernel can run these operands: CPU float32 tensors, the extension
    built, no gradient needed, not traced by torch.compile."""
    tensors = [t for t in (x, weight, bias, residual) if t is not None]
    return (
        _cpu.available()
        and not torch.compiler.is_compiling()
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


def event_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, residual=None, max_density=None):
    """``conv2d(x, weight, bias, stride, padding) (+ residual)`` computed from x's nonzeros.

    ``out[n, co, oh, ow] = bias[co] + sum_{c, kh, kw} x[n, c, oh*s - p + kh, ow*s - p + kw] * weight[co, c, kh, kw]``
    (zero padding), plus ``residual[n, co, oh, ow]`` when given. Per output channel block the sum
    runs over the taps (kh, then kw) and each input pixel's nonzero channels in ascending order,
    one float32 FMA each, starting from the bias; the residual is added last (for Cout <= 16,
    exact zeros in between: only a zero result's sign can differ). So it differs from
    the dense convolution only in float32 summation order (an error below
    ``n * eps32 * (|bias| + sum |x * w|)`` for n terms), and is bitwise the same at every SIMD
    level and thread count. Zero inputs are skipped: a nonfinite weight meets only nonzero inputs.

    Inference only (no backward): where a gradient is needed, for non-CPU or non-float32
    operands, where ``max_density`` is 0 and where x's fraction of nonzeros exceeds it (the
    dense convolution is then faster) the result is the dense ``F.conv2d`` (+ residual).

    Args:
        x: ``[N, Cin, H, W]`` (channels-last memory order avoids a copy).
        weight: ``[Cout, Cin, KH, KW]``; bias: ``[Cout]`` or None.
        stride, padding: an int or a pair of ints (>= 1 and >= 0); dilation and groups must be 1.
        residual: ``[N, Cout, OH, OW]`` or None.
        max_density: a fraction in [0, 1]: run dense above it (0: always); None:
            ``default_max_density(Cin, Cout)`` (0.25 for Cout <= 16, else 0.3).
    Returns:
        ``[N, Cout, OH, OW]``, channels-last memory order on the event path.
    """
    stride, padding = check_event_conv_arguments(x, weight, bias, stride, padding, dilation, groups, residual)
    if max_density is None:
        max_density = default_max_density(weight.shape[1], weight.shape[0])
    max_density = check_real("max_density", max_density, minimum=0.0, maximum=1.0)
    if max_density == 0 or not event_ok(x, weight, bias, residual):
        return dense.conv2d(x, weight, bias, stride, padding, residual)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = cpu.forward(x_cl, weight, bias, stride, padding, residual, int(max_density * x.numel()))
    if out is None:
        return dense.conv2d(x_cl, weight, bias, stride, padding, residual)
    return out
