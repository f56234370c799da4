"""Event-driven synaptic operations: how many synapses a spike reaches in a conv/linear layer,
through average-pooling windows, as per-dimension fan-out vectors (``na_kernels.snn.stats``
uses them; an ``IFLayer`` counts its routed SOPs with them).

A conv or pooling window is a product of per-dimension windows, so with ``c`` the events summed
over the batch and channels and ``g_d`` the fan-out of a position along spatial dim d::

    SOPs = out_channels / groups * sum_{h, w} c[h, w] * g_h[h] * g_w[w]     (conv2d; linear:
    g = window memberships, times out_features)
"""

import torch
from torch import nn

from .fx_utils import CONV_TYPES


def _tuple(value, dims):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def synapse_spec(layer: nn.Module):
    """The plain-data description of a conv/linear layer's synapses that ``fanout_vectors`` reads:
    ``("conv", kernel, stride, padding, dilation, out_channels // groups)`` or ``("linear", out_features)``."""
    if isinstance(layer, CONV_TYPES):
        dims = len(layer.kernel_size)
        padding = layer.padding if isinstance(layer.padding, str) else _tuple(layer.padding, dims)
        return (
            "conv",
            tuple(layer.kernel_size),
            _tuple(layer.stride, dims),
            padding,
            _tuple(layer.dilation, dims),
            layer.out_channels // layer.groups,
        )
    return ("linear", layer.out_features)


def pool_spec(kind: str, dims: int, *, kernel=None, stride=None, padding=0, ceil_mode=False, output_size=None):
    """A pooling step of a route: ``("avg", kernel, stride, padding, ceil_mode)`` or ``("adaptive", output_size)``."""
    if kind == "adaptive":
        return ("adaptive", _tuple(output_size, dims))
    kernel = _tuple(kernel, dims)
    return (
        "avg",
        kernel,
        kernel if stride is None or stride == [] else _tuple(stride, dims),
        _tuple(padding, dims),
        bool(ceil_mode),
    )


def _pool_membership(pool, d, size, device):
    """``[O, size]`` float64 0/1: whether input position i (along dim d) lies in window o."""
    i = torch.arange(size, device=device, dtype=torch.int64)
    if pool[0] == "adaptive":
        out = pool[1][d]
        out = size if out is None else out
        o = torch.arange(out, device=device, dtype=torch.int64).unsqueeze(1)
        start = torch.div(o * size, out, rounding_mode="floor")
        end = -torch.div(-(o + 1) * size, out, rounding_mode="floor")  # ceil
        return ((i >= start) & (i < end)).to(torch.float64)
    _, kernel, stride, padding, ceil_mode = pool
    k, s, p = kernel[d], stride[d], padding[d]
    span = size + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside the input or left padding
        out -= 1
    start = torch.arange(out, device=device, dtype=torch.int64).unsqueeze(1) * s - p
    return ((i >= start) & (i < start + k)).to(torch.float64)


def _conv_fanout(synapse, d, size, device):
    """``[size]`` float64: how many (output position, kernel tap) pairs read input position i along dim d."""
    _, kernel, stride, padding, dilation, _ = synapse
    k, s, dil = kernel[d], stride[d], dilation[d]
    if padding == "valid":
        p = 0
    elif padding == "same":
        p = dil * (k - 1) // 2
    else:
        p = padding[d]
    out = (size + 2 * p - dil * (k - 1) - 1) // s + 1
    if padding == "same":
        out = size
    i = torch.arange(size, device=device, dtype=torch.int64)
    taps = torch.arange(k, device=device, dtype=torch.int64).unsqueeze(1) * dil - p  # [k, 1]
    shifted = i - taps  # o * s for the output o that tap j of reads i
    hit = (torch.remainder(shifted, s) == 0) & (shifted >= 0) & (shifted < out * s)
    return hit.to(torch.float64).sum(0)


def synaptic_ops(position_counts, synapse, pools=()):
    """Exact event-driven SOPs of a conv/linear (``synapse_spec``) reached through ``pools``
    (``pool_spec`` steps, in order) by events at positions ``position_counts``: the events summed
    over the batch and channels, shape = the spatial dims (``[]`` for none), any numeric dtype.
    Per dim, ``g_d = M_1^T ... M_n^T f_d`` (``M`` window memberships, ``f`` the conv's fan-out, 1
    for a linear), and ``SOPs = sum c * g_1 (x) g_2 ... * (out_channels/groups | out_features)``.
    Returns a float64 0-d tensor."""
    c = position_counts.to(torch.float64)
    dims = c.dim()
    device = c.device
    if (synapse[0] == "conv" and len(synapse[1]) != dims) or any(len(pool[1]) != dims for pool in pools):
        raise ValueError(f"synaptic_ops: events with {dims} spatial dims do not fit {synapse} after {pools}")
    weighted = c
    for d in range(dims):
        sizes = [c.shape[d]]
        memberships = []
        for pool in pools:
            m = _pool_membership(pool, d, sizes[-1], device)
            memberships.append(m)
            sizes.append(m.shape[0])
        g = (
            _conv_fanout(synapse, d, sizes[-1], device)
            if synapse[0] == "conv"
            else torch.ones(sizes[-1], dtype=torch.float64, device=device)
        )
        for m in reversed(memberships):
            g = m.t() @ g
        weighted = weighted * g.reshape((-1,) + (1,) * (dims - 1 - d))
    per_synapse = synapse[5] if synapse[0] == "conv" else synapse[1]
    return weighted.sum() * per_synapse
