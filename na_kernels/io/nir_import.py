"""from_nir: a SpikingNetwork from a NIR graph, as data only: rebuilt exactly from a graph
``to_nir`` wrote, or read by NIR's definitions from a graph another tool wrote (see ``from_nir``;
the mapping of NIR's IF onto integrate_fire is in docs/design.md).

A NIR file is an HDF5 file. Before the ``nir`` package reads it, its size (at most
``max_bytes``, default 1 GiB) and the bytes its datasets declare (compressed data included)
are checked, and every node's ``type`` must be one of ``NODE_TYPES``. The graph (read from a
file or passed as a ``nir.NIRGraph``) is then checked as a whole before anything is built:

- graph metadata: ``format`` / ``format_version`` of na_kernels, ``T`` an int >= 1 (2.7 is an
  error, not 2), ``chunk`` an int >= 0;
- ``torch_target`` metadata: a module path (identifiers and decimal indices), never an
  attribute the network already has; node names are any text, and name a module only when
  they are plain identifiers (``node_<i>`` otherwise: to_nir names the layers of an
  ``nn.Sequential`` ``_0``, ``_1``, ... after their fx nodes);
- one Input, one Output, every edge between existing nodes, no cycle, every node reached;
- per node: the arrays' ranks and sizes agree with each other and with the shapes flowing in
  (computed from the Input's shape), weights, biases, scales, thresholds and amplitudes are
  finite (thresholds and amplitudes > 0), ints are ints;
- to_nir's forms: pooling nodes match the graph's ``pooling`` ("avg" AvgPool2d, "sum"
  SumPool2d, "conv" an identity-sum Conv2d) and their metadata (``kind``, ``count_include_pad``,
  ``divisor_override``, ``output_size``); a node with metadata ``role`` (``ROLES``) is a Scale
  > 0 or a diagonal 1x1 Conv2d / Affine with zero bias fed by the node its ``of`` names, an
  amplitude from an IF layer and a divisor from a pooling node; a conv with metadata ``groups``
  is ungrouped in the file and block-diagonal (zeros between the groups, exactly).

A graph from another tool has no metadata to trust: its node names are only printed (modules
are named by the name when it is a module path, else ``node_<i>``), and its IF arrays are
checked against the neurons' shape. NIR nodes a SpikingNetwork cannot run (``REFUSED``) raise
naming what they would need.

Anything wrong raises ``NIRImportError`` (a subclass of ``NIRExportError``, so code catching
that keeps working) naming the node and what is wrong. Modules are built from a closed table
(Conv1d, Conv2d, Linear, AvgPool2d, AdaptiveAvgPool2d, IFLayer) and the fx graph holds only
``call_module`` nodes, ``get_attr`` of its own Scale buffers, ``operator.add``,
``operator.mul`` and ``torch.flatten``: nothing read from the file is run, imported or looked up.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import fx, nn

from ..snn.record import DEFAULT_MAX_BYTES  # one limit for both formats
from .nir_export import FORMAT, FORMAT_VERSION, POOLING, NIRExportError, _grouped, _input_factor, _nir

MAX_NODES = 100_000
NODE_TYPES = (
    "Input",
    "Output",
    "Conv1d",
    "Conv2d",
    "Affine",
    "Linear",
    "AvgPool2d",
    "SumPool2d",
    "Flatten",
    "Scale",
    "IF",
)
# NIR nodes that no SpikingNetwork can run, and what running them would need (named in the error)
REFUSED = {
    "LIF": "a leak (v decays towards v_leak with time constant tau); integrate_fire has none",
    "CubaLIF": "a leak and a synaptic current state; integrate_fire has neither",
    "LI": "a leaky, non-spiking readout state; integrate_fire has no leak and always fires",
    "CubaLI": "a leaky synaptic current and a non-spiking readout; integrate_fire has neither",
    "I": "a non-spiking integrator (no threshold, no reset); integrate_fire always fires and resets",
    "Threshold": "a stateless step function without a reset; integrate_fire's neurons integrate and reset",
    "Delay": "a per-synapse delay line; a SpikingNetwork has no delays",
    "Conv3d": "a 3-d convolution; from_nir builds Conv1d and Conv2d",
}
FOREIGN_RESETS = ("nir", "subtract")
ROLES = ("amplitude", "scale")  # metadata role of a node to_nir wrote for a factor
POOL_KINDS = ("AvgPool2d", "AdaptiveAvgPool2d")
_MAX_RANK = 4


class NIRImportError(NIRExportError):
    """A NIR graph or file that ``from_nir`` cannot rebuild: not written by ``to_nir``, malformed,
    or inconsistent. A subclass of ``NIRExportError`` (and ValueError) for compatibility."""


# ---------------------------------------------------------------------------------- plain values


def _fail(message):
    raise NIRImportError(f"from_nir: {message}")


def _int(value, what, minimum=None, maximum=None) -> int:
    """An integer (Python or NumPy, or a 0-d / one-element integer array); never a float or bool."""
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iu":
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        _fail(f"{what} must be an int, got {value!r:.60}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" + ("" if maximum is None else f" and <= {maximum}")
        _fail(f"{what} must be an int {bounds}, got {value}")
    return value


def _text(value, what) -> str:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, (bytes, np.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            _fail(f"{what} is not UTF-8 text")
    if not isinstance(value, str) or len(value) > 1024 or not value.isprintable():
        _fail(f"{what} must be printable text, got {value!r:.60}")
    return str(value)


def _asarray(value, what) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as error:  # ragged nesting, objects numpy cannot hold, a tensor
        # that requires grad
        _fail(f"{what} is not an array ({str(error)[:80]})")


def _ints(value, what, length, minimum):
    array = _asarray(value, what)
    if array.dtype.kind not in "iu" or array.shape != (length,):
        _fail(f"{what} must be {length} ints, got {value!r:.60}")
    return tuple(_int(v, what, minimum) for v in array)


def _floats(value, what, ndim=None, positive=False) -> np.ndarray:
    """A finite real array (float64), as float32 too where it is converted (no overflow)."""
    array = _asarray(value, what)
    if array.dtype.kind not in "fiu" or (ndim is not None and array.ndim != ndim):
        _fail(f"{what} must be a {ndim}-d array of reals, got {array.dtype} of shape {array.shape}")
    array = array.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = array.astype(np.float32)
    if not np.all(np.isfinite(array)) or not np.all(np.isfinite(narrow)):
        _fail(f"{what} holds NaN or infinite values (or values beyond float32)")
    if positive and not np.all(array > 0):
        _fail(f"{what} must be > 0, got a minimum of {array.min() if array.size else 'nothing'}")
    return array


def _plain(name) -> bool:
    """Whether a node name may name a module: a plain identifier (record.check_identifier)."""
    from ..snn.record import SerializationError, check_identifier

    try:
        check_identifier(name, "node name")
    except SerializationError:
        return False
    return True


# ---------------------------------------------------------------------------------- the file


def _check_hdf5(path, max_bytes):
    """The file's size and the bytes its datasets declare (after decompression) are <= max_bytes,
    and every node's type is in NODE_TYPES, before the nir package reads anything."""
    import h5py

    size = os.path.getsize(path)
    if size > max_bytes:
        _fail(
            f"{path!r} is {size} bytes, more than max_bytes = {max_bytes}; pass a larger max_bytes if you "
            "trust its size"
        )
    declared, objects = 0, 0
    try:
        with h5py.File(path, "r") as f:

            def visit(name, item):
                nonlocal declared, objects
                objects += 1
                if objects > 16 * MAX_NODES:
                    _fail(f"{path!r} holds more than {16 * MAX_NODES} HDF5 objects")
                if isinstance(item, h5py.Dataset):
                    declared += int(np.prod(item.shape, dtype=object)) * item.dtype.itemsize
                    if declared > max_bytes:
                        _fail(
                            f"{path!r} declares more than max_bytes = {max_bytes} bytes of arrays "
                            f"({name}: shape {item.shape}); pass a larger max_bytes if you trust it"
                        )
                if name.endswith("/type") or name == "type":
                    kind = item[()] if isinstance(item, h5py.Dataset) and item.shape == () else None
                    kind = kind.decode("utf-8", "replace") if isinstance(kind, bytes) else kind
                    expected = ("NIRGraph",) if name in ("node/type", "type") else NODE_TYPES
                    if kind not in expected:
                        if kind in REFUSED:
                            _fail(
                                f"{path!r}: node {name[:-5]!r} is a NIR {kind}, which a SpikingNetwork cannot run: "
                                f"it would need {REFUSED[kind]}"
                            )
                        _fail(f"{path!r}: {name} is {kind!r:.60}; from_nir reads the node types {NODE_TYPES}")

            if "node" not in f:
                _fail(f"{path!r} is not a NIR file (no 'node' group)")
            f.visititems(visit)
    except NIRImportError:
        raise
    except Exception as error:  # h5py's OSError for a damaged file, KeyError, ...
        _fail(f"{path!r} is not a readable NIR (HDF5) file ({type(error).__name__}: {str(error)[:160]})")


def _read(path, max_bytes):
    nir = _nir()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_nir: no file {path!r}")
    _check_hdf5(path, max_bytes)
    try:
        return nir.read(path)
    except Exception as error:  # nir raises AssertionError, KeyError, ValueError, ... for bad contents
        _fail(f"{path!r} is not a NIR graph the nir package can read ({type(error).__name__}: {str(error)[:160]})")


# ---------------------------------------------------------------------------------- the graph


def _metadata(node, what) -> dict:
    meta = node.metadata if node.metadata is not None else {}
    if not isinstance(meta, dict):
        _fail(f"{what}: metadata is not a dict")
    return meta


def _order(names: List[str], edges, rank) -> List[str]:
    """The node names with every edge going forward (sources first); a cycle is an error."""
    incoming = {n: 0 for n in names}
    outgoing: Dict[str, List[str]] = {n: [] for n in names}
    for src, dst in edges:
        incoming[dst] += 1
        outgoing[src].append(dst)
    ready = sorted((n for n in names if incoming[n] == 0), key=rank.get)
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for dst in outgoing[name]:
            incoming[dst] -= 1
            if incoming[dst] == 0:
                ready.append(dst)
                ready.sort(key=rank.get)
    if len(order) != len(names):
        stuck = sorted(set(names) - set(order))
        _fail(f"the graph has a cycle (through {stuck[0]!r}); a SpikingNetwork is feed-forward")
    return order


class _Foreign:
    """How to read a graph another tool wrote: the time step ``dt``, the IF reading ``reset``, and the
    ``input_shape`` that replaces the Input's (None: the Input's own)."""

    def __init__(self, dt, reset, input_shape):
        self.dt, self.reset, self.input_shape = dt, reset, input_shape


def _conv_out(size, kernel, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class _Checked:
    """One node after its checks: its kind, its per-sample output shape and what to build."""

    def __init__(self, kind, shape, **values):
        self.kind, self.shape, self.values = kind, shape, values


def _pair(value, what, dims, minimum):
    """``dims`` ints (an int or a 0-d array repeats; NIR's Conv1d holds plain ints)."""
    array = _asarray(value, what)
    if array.ndim == 0 or array.shape == (1,):
        return (_int(array.reshape(()).item() if array.dtype.kind in "iu" else value, what, minimum),) * dims
    return _ints(array, what, dims, minimum)


def _compact(array, shape, what):
    """``array`` (one value, one per channel ``(C,)``, or the full ``shape``) in a form that broadcasts
    to ``shape`` without being copied to it: ``(1, ..., 1)``, ``(C, 1, ..., 1)`` or ``shape``;
    anything else is an error."""
    ones = (1,) * (len(shape) - 1)
    if array.size == 1:
        return array.reshape((1,) + ones)
    if array.shape == tuple(shape):
        return array
    if shape and array.shape == (shape[0],):
        return array.reshape((-1,) + ones)
    _fail(
        f"{what} has shape {array.shape}; the node's neurons have shape {tuple(shape)} (accepted: that shape, "
        f"one value, or one per channel)"
    )


def _per_channel_values(array, shape, what):
    """A ``_compact`` array as one value for the layer (a 0-d tensor) or one per channel ([C]); an
    error if it varies within a channel (the kernel holds one threshold per channel)."""
    if np.all(array == array.reshape(-1)[0]):
        return torch.tensor(array.reshape(-1)[0], dtype=torch.float64)
    per = array.reshape(array.shape[0], -1)
    if not np.all(per == per[:, :1]):
        channel = int(np.nonzero(np.any(per != per[:, :1], axis=1))[0][0])
        _fail(
            f"{what} varies within channel {channel}; integrate_fire takes one value per channel (dim 0 of "
            f"{tuple(shape)}) or one for the layer"
        )
    return torch.from_numpy(per[:, 0].copy())


def _foreign_if(what, node, shape_in, foreign):
    """NIR's IF, ``dv/dt = R·I``, ``z = [v > v_threshold]``, ``v <- v_reset`` on z, from v = 0,
    stepped with ``dt`` (forward Euler, as the peer tools run it): ``v += dt·r·I``. Divided by dt·r
    (> 0) that is the kernel's ``v' += I`` with θ' = v_threshold / (dt·r), the same spikes; ``>`` is
    ``>=`` at the next float32 above θ'. ``reset="subtract"`` reads the IF of NIR < 1.0.6 (and
    sinabs): ``v -= v_threshold`` on a spike."""
    if not shape_in:
        _fail(f"IF {what}: its input has no shape")
    fields = {}
    for key in ("r", "v_threshold", "v_reset"):
        value = getattr(node, key, None)
        if value is None:
            _fail(f"IF {what} has no {key}")
        fields[key] = _compact(_floats(value, f"IF {what}: {key}"), shape_in, f"IF {what}: {key}")
    if not np.all(fields["r"] > 0):
        _fail(f"IF {what}: r must be > 0 (the input's gain), got a minimum of {fields['r'].min()}")
    if np.any(fields["v_reset"] != 0):
        _fail(
            f"IF {what} resets to v_reset = {fields['v_reset'].reshape(-1)[np.argmax(fields['v_reset'] != 0)]}; "
            "integrate_fire's hard reset is to 0 and it starts at 0: a nonzero v_reset would need a reset "
            "potential in the kernel"
        )
    theta = fields["v_threshold"] / (foreign.dt * fields["r"])
    narrow = theta.astype(np.float32)
    if not np.all(np.isfinite(narrow)) or not np.all(narrow > 0):
        _fail(
            f"IF {what}: v_threshold / (dt·r) must be a finite float32 > 0 (a neuron that starts at v = 0 "
            f"with v_threshold <= 0 fires at once: integrate_fire needs θ > 0), got a minimum of {theta.min()}"
        )
    strict = np.nextafter(narrow, np.float32(np.inf))  # h > θ  <=>  h >= next float32 above θ
    threshold = _per_channel_values(strict.astype(np.float64), shape_in, f"IF {what}: v_threshold / (dt·r)")
    return _Checked(
        "if",
        shape_in,
        p=1,
        layer=None,
        threshold=threshold.to(torch.float32),
        amplitude=torch.ones_like(threshold, dtype=torch.float32),
        reset="zero" if foreign.reset == "nir" else "subtract",
    )


def _check_node(nir, name, node, shape_in, meta, foreign=None, pooling="avg"):
    """The checks of one node given the shape flowing into it; returns a _Checked. ``pooling``: the
    form to_nir wrote average pooling in (graph metadata, ours only)."""
    what = f"node {name!r}"
    kind = type(node).__name__
    if not foreign and "role" in meta:
        return _factor_node(what, kind, node, shape_in, meta)
    if not foreign and kind == "Conv2d" and "kind" in meta:
        if pooling != "conv":
            _fail(f"{what} is a Conv2d with pooling metadata 'kind' in a graph written with pooling={pooling!r}")
        return _identity_conv_pool(what, node, shape_in, meta)
    if kind in ("Conv1d", "Conv2d"):
        dims = 1 if kind == "Conv1d" else 2
        weight = _floats(node.weight, f"{what}: weight", ndim=2 + dims)
        out_channels, per_group = weight.shape[:2]
        kernel = tuple(weight.shape[2:])
        groups = _int(node.groups, f"{what}: groups", 1)
        stride = _pair(node.stride, f"{what}: stride", dims, 1)
        dilation = _pair(node.dilation, f"{what}: dilation", dims, 1)
        padding = node.padding
        if isinstance(padding, (str, bytes, np.bytes_)):
            padding = _text(padding, f"{what}: padding")
            if padding not in ("same", "valid") or (padding == "same" and stride != (1,) * dims):
                _fail(f"{what}: padding {padding!r} (accepted: 'same' with stride 1, 'valid', or {dims} ints)")
        else:
            padding = _pair(padding, f"{what}: padding", dims, 0)
        has_bias = 1 if foreign else _int(meta.get("bias", 1), f"{what}: metadata bias", 0, 1)
        bias = _floats(node.bias, f"{what}: bias", ndim=1)
        if bias.shape != (out_channels,) or out_channels == 0 or out_channels % groups or per_group == 0:
            _fail(f"{what}: weight {weight.shape}, bias {bias.shape} and groups {groups} do not agree")
        regroup = 1
        if not foreign and "groups" in meta:  # to_nir wrote a grouped conv as the equal ungrouped one
            regroup = _int(meta["groups"], f"{what}: metadata groups", 1)
            if groups != 1 or out_channels % regroup or per_group % regroup:
                _fail(
                    f"{what}: metadata groups {regroup} with the node's groups {groups} and weight {weight.shape} "
                    "(to_nir writes groups = 1 and metadata groups dividing both channel counts)"
                )
            _block_diagonal(weight, regroup, what)
        if len(shape_in) != 1 + dims or shape_in[0] != per_group * groups:
            _fail(
                f"{what}: its input has shape {shape_in}; the weight {weight.shape} with groups {groups} needs "
                f"({per_group * groups}, {'L' if dims == 1 else 'H, W'})"
            )
        if padding == "same":
            shape = (out_channels,) + tuple(shape_in[1:])
        else:
            pad = (0,) * dims if padding == "valid" else padding
            shape = (out_channels,) + tuple(
                _conv_out(s, k, st, p, d) for s, k, st, p, d in zip(shape_in[1:], kernel, stride, pad, dilation)
            )
        if min(shape) < 1:
            _fail(f"{what}: the kernel {kernel} does not fit its input {shape_in}")
        scale = None if foreign else _input_scale(meta, what, per_group * groups)
        return _Checked(
            "conv",
            shape,
            weight=weight,
            bias=bias if has_bias else None,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            scale=scale,
            dims=dims,
            regroup=regroup,
        )
    if kind in ("Affine", "Linear"):
        weight = _floats(node.weight, f"{what}: weight", ndim=2)
        bias = _floats(node.bias, f"{what}: bias", ndim=1) if kind == "Affine" else None
        if bias is not None and bias.shape != weight.shape[:1]:
            _fail(f"{what}: weight {weight.shape} and bias {bias.shape} do not agree")
        if shape_in != (weight.shape[1],):
            _fail(f"{what}: its input has shape {shape_in}; the weight {weight.shape} needs ({weight.shape[1]},)")
        return _Checked(
            "linear",
            (weight.shape[0],),
            weight=weight,
            bias=bias,
            scale=None if foreign else _input_scale(meta, what, weight.shape[1]),
        )
    if kind in ("AvgPool2d", "SumPool2d"):
        if len(shape_in) != 3:
            _fail(f"{what}: pooling needs a (C, H, W) input, got {shape_in}")
        if not foreign and kind != {"avg": "AvgPool2d", "sum": "SumPool2d"}.get(pooling):
            _fail(f"{what} is a {kind} in a graph written with pooling={pooling!r}")
        kernel = _pair(node.kernel_size, f"{what}: kernel_size", 2, 1)
        stride = _pair(node.stride, f"{what}: stride", 2, 1)
        padding = _pair(node.padding, f"{what}: padding", 2, 0)
        return _pool(what, shape_in, kernel, stride, padding, None if foreign else meta, kind == "SumPool2d")
    if kind == "Flatten":
        rank = len(shape_in)
        start = _int(node.start_dim, f"{what}: start_dim", -rank, rank - 1)
        end = _int(node.end_dim, f"{what}: end_dim", -rank, rank - 1)
        start, end = start % rank, end % rank
        if not foreign and (start, end) != (0, rank - 1):
            _fail(f"{what}: from_nir reads Flatten(start_dim=0, end_dim=-1) only")
        if start > end:
            _fail(f"{what}: start_dim {node.start_dim} comes after end_dim {node.end_dim} for an input {shape_in}")
        shape = shape_in[:start] + (math.prod(shape_in[start : end + 1]),) + shape_in[end + 1 :]
        return _Checked("flatten", shape, start=start + 1, end=end + 1)  # + 1: torch's batch dimension
    if kind == "Scale" and foreign:
        scale = _floats(node.scale, f"{what}: scale")
        return _Checked("scale", shape_in, scale=_compact(scale, shape_in, f"{what}: scale"))
    if kind == "IF" and foreign:
        return _foreign_if(what, node, shape_in, foreign)
    if kind == "Scale":
        _fail(
            f"{what} is a Scale without metadata role (to_nir writes Scale nodes only for an amplitude or a "
            f"pooling divisor: role one of {ROLES})"
        )
    if kind == "IF":
        from .._validation import MAX_LEVELS
        from ..nn.if_layer import V_INIT

        for key in ("amplitude", "threshold", "p", "threshold_dims", "amplitude_dims"):
            if key not in meta:
                _fail(f"IF {what} lacks na_kernels' metadata {key!r} (written by to_nir)")
        semantics = (
            _text(meta.get("reset", ""), f"{what}: reset"),
            meta.get("v_init"),
            _text(meta.get("firing", ""), f"{what}: firing"),
        )
        if (
            semantics[0] not in ("subtract", "zero")
            or semantics[2] != ">="
            or not (
                isinstance(semantics[1], (float, int, np.floating, np.integer)) and float(semantics[1]) in (V_INIT, 0.0)
            )
        ):
            _fail(
                f"IF {what} has reset/v_init/firing {semantics!r:.80}; IFLayer is ('subtract' or 'zero', {V_INIT} "
                "or 0.0, '>=') and cannot rebuild another neuron"
            )
        values = {}
        for key in ("threshold", "amplitude"):
            array = _floats(meta[key], f"{what}: metadata {key}", ndim=1, positive=True)
            dims = _int(meta[key + "_dims"], f"{what}: metadata {key}_dims", 0, 1)
            if array.size == 0 or (dims == 0 and array.size != 1):
                _fail(f"{what}: metadata {key} holds {array.size} values for a {'scalar' if dims == 0 else 'vector'}")
            if dims == 1 and (not shape_in or array.size != shape_in[0]):
                _fail(f"{what}: {array.size} per-channel {key}s for an input of shape {shape_in}")
            tensor = torch.from_numpy(array.astype(np.float32))
            values[key] = tensor.reshape(()) if dims == 0 else tensor
        p = _int(meta["p"], f"{what}: metadata p", 1, MAX_LEVELS)
        layer = _text(meta["layer"], f"{what}: metadata layer") if "layer" in meta else None
        if (semantics[0], float(semantics[1])) != ("subtract", V_INIT):  # a layer from_nir read from another tool
            values.update(reset=semantics[0], v_init=float(semantics[1]))
        return _Checked("if", shape_in, p=p, layer=layer, **values)
    _refuse(name, kind, foreign)


def _input_scale(meta, what, size):
    """Metadata ``input_scale`` (one factor > 0 per input channel or feature, folded into the weight's
    columns by to_nir) and its ``input_scale_role``; None when the node has none."""
    if "input_scale" not in meta:
        if "input_scale_role" in meta:
            _fail(f"{what}: metadata input_scale_role without input_scale")
        return None
    scale = _floats(meta["input_scale"], f"{what}: metadata input_scale", ndim=1, positive=True)
    if scale.shape != (size,):
        _fail(f"{what}: metadata input_scale has {scale.size} values for {size} inputs")
    _role(meta.get("input_scale_role", "amplitude"), f"{what}: metadata input_scale_role")
    return scale


def _role(value, what) -> str:
    role = _text(value, what)
    if role not in ROLES:
        _fail(f"{what} is {role!r:.60}; to_nir writes {ROLES}")
    return role


def _block_diagonal(weight, groups, what):
    """An ungrouped weight [C_out, C_in, ...] that is a grouped conv's: output channel o (group
    o // (C_out/groups)) reads only its group's C_in/groups inputs; every other entry exactly 0."""
    out_channels, in_channels = weight.shape[:2]
    group_out = np.arange(out_channels) // (out_channels // groups)
    group_in = np.arange(in_channels) // (in_channels // groups)
    outside = weight[group_out[:, None] != group_in[None, :]]
    if np.any(outside != 0):
        o, i = np.argwhere(
            (group_out[:, None] != group_in[None, :])
            & np.any(weight.reshape(out_channels, in_channels, -1) != 0, axis=2)
        )[0]
        _fail(
            f"{what}: metadata groups {groups}, but output channel {o} reads input channel {i} of another group "
            "(the weight is not block-diagonal)"
        )


def _factor_node(what, kind, node, shape_in, meta):
    """A node to_nir wrote for a factor (metadata ``role``): a spike amplitude, which the rebuilt IF
    layers emit themselves, or a pooling divisor (times amplitudes), which the rebuilt pooling
    applies; either way it passes its input through. Accepted: a Scale with factors > 0, a 1x1
    Conv2d or an Affine whose weight is diagonal with a diagonal > 0 and zero bias."""
    _role(meta["role"], f"{what}: metadata role")
    if kind == "Scale":
        _compact(_floats(node.scale, f"{what}: scale", positive=True), shape_in, f"{what}: scale")
        return _Checked("pass", shape_in)
    if kind in ("Conv2d", "Affine"):
        weight = _floats(node.weight, f"{what}: weight", ndim=4 if kind == "Conv2d" else 2)
        bias = _floats(node.bias, f"{what}: bias", ndim=1)
        size = shape_in[0] if shape_in else 0
        square = weight.shape[:2] == (size, size) and bias.shape == (size,)
        if kind == "Conv2d":
            one = lambda v, key, n: _pair(v, f"{what}: {key}", 2, 0) == (n, n)  # noqa: E731
            square = (
                square
                and len(shape_in) == 3
                and weight.shape[2:] == (1, 1)
                and one(node.stride, "stride", 1)
                and one(node.dilation, "dilation", 1)
                and _int(node.groups, f"{what}: groups", 1) == 1
                and not isinstance(node.padding, (str, bytes, np.bytes_))
                and one(node.padding, "padding", 0)
            )
        else:
            square = square and len(shape_in) == 1
        if not square:
            _fail(
                f"{what}: a {kind} of role {_text(meta['role'], 'role')!r} must be a 1x1, stride-1, unpadded, "
                f"ungrouped map of its {shape_in} input onto itself"
            )
        matrix = weight.reshape(size, size)
        if np.any(matrix[~np.eye(size, dtype=bool)] != 0) or not np.all(np.diag(matrix) > 0) or np.any(bias != 0):
            _fail(
                f"{what}: a {kind} of role {_text(meta['role'], 'role')!r} must have a diagonal weight "
                "(off-diagonal entries exactly 0, diagonal > 0) and zero bias"
            )
        return _Checked("pass", shape_in)
    _fail(f"{what} is a {kind} with metadata role; to_nir writes roles on Scale, Conv2d and Affine nodes only")


def _pool(what, shape_in, kernel, stride, padding, meta, summed=False):
    """Average pooling (sum pooling for another tool's SumPool2d); ``meta``: to_nir's metadata, which
    says the original: ``kind`` (AvgPool2d or AdaptiveAvgPool2d with ``output_size``),
    ``count_include_pad`` and ``divisor_override``. Rebuilding the original pooling (divisor
    included) is what lets the factor to_nir carried to the next layer be divided out again."""
    if any(2 * p > k for p, k in zip(padding, kernel)):
        _fail(f"{what}: padding {padding} is more than half the kernel {kernel}")
    shape = (shape_in[0],) + tuple(_conv_out(s, k, st, p) for s, k, st, p in zip(shape_in[1:], kernel, stride, padding))
    if min(shape) < 1:
        _fail(f"{what}: the kernel {kernel} does not fit its input {shape_in}")
    if meta is None:
        return _Checked(
            "pool", shape, kernel=kernel, stride=stride, padding=padding, include=True, divisor=1 if summed else None
        )
    kind = _text(meta.get("kind", "AvgPool2d"), f"{what}: metadata kind")
    if kind not in POOL_KINDS:
        _fail(f"{what}: metadata kind is {kind!r:.60}; to_nir writes {POOL_KINDS}")
    include = _int(meta.get("count_include_pad", 1), f"{what}: metadata count_include_pad", 0, 1)
    divisor = _int(meta.get("divisor_override", 0), f"{what}: metadata divisor_override", 0)
    if kind == "AdaptiveAvgPool2d":
        size = _ints(meta.get("output_size"), f"{what}: metadata output_size", 2, 1)
        whole = tuple(s // o for s, o in zip(shape_in[1:], size))
        if (
            shape[1:] != size
            or kernel != whole
            or stride != whole
            or any(padding)
            or divisor
            or any(s % o for s, o in zip(shape_in[1:], size))
        ):
            _fail(
                f"{what}: adaptive pooling of {shape_in} to {size} is a kernel and stride {whole} without "
                f"padding or divisor_override; the node has kernel {kernel}, stride {stride}, padding {padding}"
            )
        return _Checked("adaptive", shape, output_size=size)
    return _Checked(
        "pool", shape, kernel=kernel, stride=stride, padding=padding, include=bool(include), divisor=divisor or None
    )


def _identity_conv_pool(what, node, shape_in, meta):
    """pooling="conv": a Conv2d with weight[c, c] = 1 (every other entry 0), zero bias, no groups or
    dilation, i.e. sum pooling, rebuilt as the original average pooling (see ``_pool``)."""
    weight = _floats(node.weight, f"{what}: weight", ndim=4)
    bias = _floats(node.bias, f"{what}: bias", ndim=1)
    if len(shape_in) != 3:
        _fail(f"{what}: pooling needs a (C, H, W) input, got {shape_in}")
    channels = shape_in[0]
    identity = weight.shape[:2] == (channels, channels)  # checked before an identity of that size is made
    if identity:
        expected = np.zeros_like(weight)
        expected[np.arange(channels), np.arange(channels)] = 1.0
        identity = bool(np.all(weight == expected))
    if (
        not identity
        or bias.shape != (channels,)
        or np.any(bias != 0)
        or _int(node.groups, f"{what}: groups", 1) != 1
        or _pair(node.dilation, f"{what}: dilation", 2, 1) != (1, 1)
        or isinstance(node.padding, (str, bytes, np.bytes_))
    ):
        _fail(
            f"{what}: a Conv2d with pooling metadata must be sum pooling: weight[c, c] all ones and every other "
            f"entry 0 for its {channels} channels, zero bias, groups 1, dilation 1, padding as ints"
        )
    return _pool(
        what,
        shape_in,
        tuple(weight.shape[2:]),
        _pair(node.stride, f"{what}: stride", 2, 1),
        _pair(node.padding, f"{what}: padding", 2, 0),
        meta,
    )


def _module_name(name, meta, index):
    """The module a node becomes: its ``torch_target`` when that is a module path (identifiers
    or decimal indices joined by dots), else the node's own name when that is one (to_nir writes
    a description such as ``torch.flatten()`` for a function), else ``node_<index>``; never any
    other string."""
    from ..snn.record import SerializationError, check_path

    for target in (_text(meta.get("torch_target", name), f"node {name!r}: torch_target"), name):
        try:
            return check_path(target, f"node {name!r}: torch_target")
        except SerializationError:
            continue
    return f"node_{index}"


def _is_ours(graph) -> bool:
    """Whether the graph says na_kernels' to_nir wrote it (graph metadata ``format``)."""
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    return meta.get("format") is not None and _text(meta.get("format"), "graph metadata format") == FORMAT


def _refuse(name, kind, foreign):
    if foreign is not None and kind in REFUSED:
        _fail(f"node {name!r} is a NIR {kind}, which a SpikingNetwork cannot run: it would need {REFUSED[kind]}")
    reads = NODE_TYPES if foreign is not None else tuple(k for k in NODE_TYPES if k != "Conv1d")
    _fail(
        f"node {name!r} is a {kind:.60}, which {'from_nir does not read' if foreign else 'to_nir does not write'} "
        f"(it reads {', '.join(reads)})"
    )


def _check_factor_source(name, checked, sources, meta):
    """A factor to_nir wrote (a role node, or input_scale folded into a weight) comes from one source:
    a role node's metadata ``of``. A pooling divisor (role "scale") starts at a pooling node, an
    amplitude at an IF layer; only Flatten (and, for an amplitude, pooling) lie between."""
    item = checked[name]
    role = None
    if item.kind == "pass":
        role = _text(meta["role"], f"node {name!r}: metadata role")
        if (
            len(sources[name]) != 1
            or _text(meta.get("of", sources[name][0]), f"node {name!r}: metadata of") != sources[name][0]
        ):
            _fail(
                f"node {name!r} of role {role!r} must have one input, the node its metadata 'of' names; it has "
                f"{sources[name]}"
            )
    elif item.values.get("scale") is not None:
        role = _text(meta.get("input_scale_role", "amplitude"), f"node {name!r}: metadata input_scale_role")
        if len(sources[name]) != 1:
            _fail(
                f"node {name!r} has metadata input_scale but {len(sources[name])} inputs; to_nir folds a factor "
                "into a weight only for a single input"
            )
    if role is None:
        return
    through = ("flatten",) if role == "scale" else ("flatten", "pool", "adaptive")
    origin = ("pool", "adaptive") if role == "scale" else ("if",)
    source = sources[name][0]
    while checked[source].kind in through and checked[source].kind not in origin and len(sources[source]) == 1:
        source = sources[source][0]
    if checked[source].kind not in origin:
        _fail(
            f"node {name!r}: a factor of role {role!r} must come from {'a pooling' if role == 'scale' else 'an IF'} "
            f"node, through Flatten{'' if role == 'scale' else ' or pooling'} nodes only; it comes from "
            f"{source!r}"
        )


def _check_graph(nir, graph, foreign=None):
    """The checked nodes in build order, their input sources, and the graph's T and chunk
    (``foreign``: a graph another tool wrote, read by NIR's definitions, T and chunk None)."""
    if not isinstance(graph, nir.NIRGraph):
        _fail(f"expects a nir.NIRGraph or a file path, got {type(graph).__name__}")
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    if foreign is None:
        version = _int(meta.get("format_version"), "graph metadata format_version")
        if version != FORMAT_VERSION:
            _fail(f"reads format_version {FORMAT_VERSION}, the graph has {version}")
        T = _int(meta.get("T", 1), "graph metadata T", 1)
        chunk = _int(meta.get("chunk", 0), "graph metadata chunk", 0)
        pooling = _text(meta.get("pooling", "avg"), "graph metadata pooling")
        if pooling not in POOLING:
            _fail(f"graph metadata pooling is {pooling!r:.60}; to_nir writes {POOLING}")
    else:
        T = chunk = pooling = None
    nodes = graph.nodes
    if not isinstance(nodes, dict) or not nodes or len(nodes) > MAX_NODES:
        _fail(f"the graph must hold 1 .. {MAX_NODES} nodes")
    for name, node in nodes.items():
        _text(name, "node name")  # a module name only when a plain identifier (_plain), else generated
        kind = type(node).__name__
        if foreign is None and kind == "Conv1d":
            _refuse(name, kind, foreign)
        if kind not in NODE_TYPES or type(node) is not getattr(nir, kind, None):
            _refuse(name, kind, foreign)
    if not isinstance(graph.edges, (list, tuple)):
        _fail("the graph's edges are not a list")
    edges = []
    for edge in graph.edges:
        if not (isinstance(edge, (tuple, list)) and len(edge) == 2):
            _fail(f"edge {edge!r:.60} is not a (source, target) pair")
        src, dst = (_text(e, "an edge end") for e in edge)
        for end in (src, dst):
            if end not in nodes:
                _fail(f"edge {src!r} -> {dst!r} names node {end!r}, which the graph does not hold")
        edges.append((src, dst))
    inputs = [n for n, node in nodes.items() if isinstance(node, nir.Input)]
    outputs = [n for n, node in nodes.items() if isinstance(node, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        _fail(f"the graph must have one Input and one Output node, it has {inputs} and {outputs}")
    sources: Dict[str, List[str]] = {n: [] for n in nodes}
    for src, dst in edges:
        if dst == inputs[0] or src == outputs[0]:
            _fail(f"edge {src!r} -> {dst!r} leads into the Input or out of the Output")
        sources[dst].append(src)
    rank = {
        n: (_int(_metadata(node, f"node {n!r}").get("index", len(nodes)), f"node {n!r}: metadata index"), i)
        for i, (n, node) in enumerate(nodes.items())
    }
    order = _order(list(nodes), edges, rank)
    shapes: Dict[str, tuple] = {}
    checked = {}
    for name in order:
        node = nodes[name]
        meta_n = _metadata(node, f"node {name!r}")
        if isinstance(node, nir.Input):
            if not isinstance(node.input_type, dict):
                _fail("the Input's input_type is not a dict")
            shape = _floats(node.input_type.get("input"), "the Input's shape", ndim=1)
            if foreign is not None and foreign.input_shape is not None:
                shape = foreign.input_shape
            if (
                not 1 <= shape.size <= 3
                or not np.all(shape == np.round(shape))
                or not np.all(shape >= 1)
                or not np.all(shape <= 1 << 20)
            ):
                hint = (
                    "; NIR's dims exclude batch and time (some exporters write the sample data's shape): pass "
                    "from_nir(..., input_shape=(C, H, W))"
                    if foreign is not None
                    else ""
                )
                _fail(f"the Input's shape {shape.tolist()} is not 1 to 3 sizes in 1 .. 2^20{hint}")
            shapes[name] = tuple(int(s) for s in shape)
            checked[name] = _Checked("input", shapes[name])
            continue
        if not sources[name]:
            _fail(f"node {name!r} has no input edge")
        shape_in = {shapes[s] for s in sources[name]}
        if len(shape_in) != 1:
            _fail(f"node {name!r} sums inputs of different shapes {sorted(shape_in)}")
        shape_in = shape_in.pop()
        if isinstance(node, nir.Output):
            checked[name] = _Checked("output", shape_in)
        else:
            checked[name] = _check_node(nir, name, node, shape_in, meta_n, foreign, pooling)
            checked[name].values["target"] = _module_name(name, {} if foreign else meta_n, len(checked))
            if foreign is None:
                _check_factor_source(name, checked, sources, meta_n)
        shapes[name] = checked[name].shape
    unreached = [n for n in order if n != outputs[0] and not any(src == n for src, _ in edges)]
    if unreached:
        _fail(f"node {unreached[0]!r} leads nowhere (no edge out of it)")
    return order, checked, sources, T, chunk


# ---------------------------------------------------------------------------------- building


def from_nir(
    graph,
    T: Optional[int] = None,
    chunk: Optional[int] = None,
    *,
    dt: Optional[float] = None,
    reset: str = "nir",
    input_shape=None,
    max_bytes: int = DEFAULT_MAX_BYTES,
):
    """A ``SpikingNetwork`` from a NIR graph (a ``nir.NIRGraph`` or a file path).

    A graph ``to_nir`` wrote (graph metadata ``format``) is rebuilt exactly, in each of its
    ``pooling`` forms: the amplitudes and pooling divisors folded into weights are divided back
    out (float64 products of float32 numbers), nodes of amplitudes or divisors (metadata
    ``role``) pass through since the IF layers emit their amplitudes and each pooling is rebuilt
    as the original (count_include_pad, divisor_override, adaptive), grouped convs written
    ungrouped are regrouped, thresholds, p, T and chunk come from the metadata: the original's
    spikes and outputs bit for bit.

    A graph another tool wrote (SpikingJelly, Norse, sinabs, snnTorch, nirtorch, by hand) is read
    by NIR's definitions: Affine / Linear, Conv1d / Conv2d, AvgPool2d, SumPool2d, Flatten, Scale,
    and IF (``dv/dt = r·I``, spike ``z = [v > v_threshold]``, ``v <- v_reset`` on a spike, v = 0 at
    the start) stepped with ``dt`` as ``v += dt·r·I``; the IF layers start at v = 0 and emit 0/1
    spikes. It needs ``T`` (NIR has no number of steps) and ``dt``; ``reset="subtract"`` reads IF
    nodes as NIR < 1.0.6 and sinabs define them (``v -= v_threshold`` on a spike) instead of NIR's
    hard reset. ``input_shape`` (C, H, W) replaces an Input shape that holds the batch (Norse and
    nirtorch write the sample data's shape). Each step's input is the same (``[B, ...]`` in,
    ``[T, B, ...]`` out: at step t the mean of the Output over steps 1..t; ``ann()`` has no
    quantized ANN behind it here). Leaky neurons (LIF, CubaLIF, LI, CubaLI), I, Threshold and
    Delay nodes raise, naming the node and what running it would need.

    ``T`` / ``chunk`` override the values stored in the graph. ``max_bytes``: the largest file,
    and the most bytes its arrays may declare (default 1 GiB).

    Raises NIRImportError (a NIRExportError) for a node it cannot run or anything malformed (see
    the module docstring); nothing in the file is run.
    """
    from .._validation import check_int, check_real, check_time_steps
    from ..convert.convert import add_synapse_meters, add_time_repetition, wrap_network
    from ..nn.if_layer import IFLayer
    from ..snn.record import _graph_module_names

    nir = _nir()
    max_bytes = check_int("max_bytes", max_bytes, minimum=1)
    if T is not None:
        T = check_time_steps("T", T)
    if chunk is not None:
        chunk = check_time_steps("chunk", chunk)
    if isinstance(graph, (str, os.PathLike)):
        graph = _read(os.fspath(graph), max_bytes)
    if not isinstance(graph, nir.NIRGraph):
        _fail(f"expects a nir.NIRGraph or a file path, got {type(graph).__name__}")
    foreign = None
    if not _is_ours(graph):
        if T is None or dt is None:
            _fail(
                "this graph was not written by na_kernels.nn.to_nir; NIR holds neither the number of steps nor "
                "the time step: pass from_nir(graph, T=..., dt=...) (dt: the step the exporting tool used, "
                "1.0 for SpikingJelly's and sinabs' IF with r = 1)"
            )
        if reset not in FOREIGN_RESETS:
            _fail(f"reset must be one of {FOREIGN_RESETS}, got {reset!r:.40}")
        dt = check_real("dt", dt, strictly_positive=True, accepted="a finite real > 0 (the time step)")
        if input_shape is not None:
            input_shape = _floats(input_shape, "input_shape", ndim=1)
        foreign = _Foreign(float(dt), reset, input_shape)
    elif dt is not None or reset != "nir" or input_shape is not None:
        _fail(
            "dt, reset and input_shape are for graphs other tools wrote; this one was written by to_nir and "
            "carries its own"
        )
    order, checked, sources, file_T, file_chunk = _check_graph(nir, graph, foreign)

    root = nn.Module()
    reserved = _graph_module_names()
    fx_graph = fx.Graph()
    values: Dict[str, fx.Node] = {}
    if_nodes = {}
    scales: List[str] = []

    def summed(name):
        total = values[sources[name][0]]
        for other in sources[name][1:]:
            total = fx_graph.call_function(operator.add, (total, values[other]))
        return total

    def place(name, module):
        target = checked[name].values["target"]
        try:
            root.get_submodule(target)
            # two nodes named one module
            target = name if foreign is None and _plain(name) else f"node_{order.index(name)}"
        except AttributeError:
            pass
        owner, parts = root, target.split(".")
        for depth, part in enumerate(parts):
            taken = part in reserved if owner is root else hasattr(type(owner), part) or part in owner.__dict__
            existing = owner._modules.get(part)
            if taken or (existing is not None and depth == len(parts) - 1):
                _fail(f"node {name!r}: module name {target!r} is already taken by the network")
            if depth == len(parts) - 1:
                owner._modules[part] = module
            else:
                if existing is None:
                    existing = owner._modules[part] = nn.Module()
                elif type(existing) is not nn.Module:
                    _fail(f"node {name!r}: module path {target!r} runs through a layer")
                owner = existing
        return fx_graph.call_module(target, (summed(name),)), target

    def weight(item):
        w = torch.from_numpy(item.values["weight"].copy())
        if item.values["scale"] is not None:
            w = w / torch.from_numpy(_input_factor(item.values["scale"], w.shape, item.values.get("groups", 1)))
        if item.values.get("regroup", 1) > 1:  # checked block-diagonal: each output channel's own group
            w = _grouped(w, item.values["regroup"])
        return w.to(torch.float32)

    def bias(item):
        return None if item.values["bias"] is None else torch.from_numpy(item.values["bias"]).to(torch.float32)

    for name in order:
        item = checked[name]
        v = item.values
        if item.kind == "input":
            values[name] = fx_graph.placeholder("x")
        elif item.kind == "output":
            fx_graph.output(summed(name))
        elif item.kind == "conv":
            w, b = weight(item), bias(item)
            conv_type = nn.Conv1d if v["dims"] == 1 else nn.Conv2d
            groups = v["groups"] * v["regroup"]
            conv = conv_type(
                w.shape[1] * groups,
                w.shape[0],
                tuple(w.shape[2:]),
                stride=v["stride"],
                padding=v["padding"],
                dilation=v["dilation"],
                groups=groups,
                bias=b is not None,
                device="meta",
            )
            conv.weight = nn.Parameter(w)
            if b is not None:
                conv.bias = nn.Parameter(b)
            values[name], _ = place(name, conv)
        elif item.kind == "linear":
            w, b = weight(item), bias(item)
            linear = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
            linear.weight = nn.Parameter(w)
            if b is not None:
                linear.bias = nn.Parameter(b)
            values[name], _ = place(name, linear)
        elif item.kind == "adaptive":
            values[name], _ = place(name, nn.AdaptiveAvgPool2d(v["output_size"]))
        elif item.kind == "pool":  # sum pooling: the average without its division (divisor 1), exactly
            values[name], _ = place(
                name,
                nn.AvgPool2d(
                    v["kernel"],
                    v["stride"],
                    v["padding"],
                    count_include_pad=v["include"],
                    divisor_override=v["divisor"],
                ),
            )
        elif item.kind == "flatten":
            values[name] = fx_graph.call_function(torch.flatten, (summed(name), v["start"], v["end"]))
        elif item.kind == "scale":
            buffer = f"scale_{len(scales)}"
            while hasattr(root, buffer) or buffer in reserved:
                buffer = "_" + buffer
            root.register_buffer(buffer, torch.from_numpy(v["scale"]).to(torch.float32))
            scales.append(buffer)
            values[name] = fx_graph.call_function(operator.mul, (summed(name), fx_graph.get_attr(buffer)))
        elif item.kind == "pass":
            values[name] = summed(name)  # our IF layers emit their amplitude themselves
        else:  # if
            layer = IFLayer(v["layer"] or name, v["threshold"], v["p"])
            layer.amplitude = v["amplitude"]
            if "reset" in v:  # another tool's IF (NIR's reset, from v = 0), or one re-exported by to_nir
                layer.reset, layer.v_init = v["reset"], v.get("v_init", 0.0)
            values[name], target = place(name, layer)
            layer.name = v["layer"] or target
            if_nodes[values[name]] = target
    gm = fx.GraphModule(root, fx_graph, "FromNIR")
    stem_runs_once = add_time_repetition(gm, if_nodes)
    add_synapse_meters(gm, if_nodes)
    T = file_T if T is None else T
    chunk = (file_chunk or None) if chunk is None else chunk
    return wrap_network(gm, T, chunk, if_layers=list(if_nodes.values()), folded=[], stem_runs_once=stem_runs_once)
