"""from_nir: rebuild a SpikingNetwork from a NIR graph that ``to_nir`` wrote, as data only.

A NIR file is an HDF5 file. Before the ``nir`` package reads it, its size (at most
``max_bytes``, default 1 GiB) and the bytes its datasets declare (compressed data included)
are checked, and every node's ``type`` must be one of ``NODE_TYPES``. The graph (read from a
file or passed as a ``nir.NIRGraph``) is then checked as a whole before anything is built:

- graph metadata: ``format`` / ``format_version`` of na_kernels, ``T`` an int >= 1 (2.7 is an
  error, not 2), ``chunk`` an int >= 0;
- node names and ``torch_target`` metadata: plain identifiers (module paths may hold decimal
  indices), never an attribute the network already has;
- one Input, one Output, every edge between existing nodes, no cycle, every node reached;
- per node: the arrays' ranks and sizes agree with each other and with the shapes flowing in
  (computed from the Input's shape), weights, biases, scales, thresholds and amplitudes are
  finite (thresholds and amplitudes > 0), ints are ints.

Anything wrong raises ``NIRImportError`` (a subclass of ``NIRExportError``, so code catching
that keeps working) naming the node and what is wrong. Modules are built from a closed table
(Conv2d, Linear, AvgPool2d, AdaptiveAvgPool2d, IFLayer) and the fx graph holds only
``call_module`` nodes, ``operator.add`` and ``torch.flatten``: nothing read from the file is
run, imported or looked up.
"""
from __future__ import annotations

import math
import operator
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import fx, nn

from .nir_export import FORMAT, FORMAT_VERSION, NIRExportError, _nir
from .serialize import DEFAULT_MAX_BYTES  # one limit for both formats
MAX_NODES = 100_000
NODE_TYPES = ("Input", "Output", "Conv2d", "Affine", "Linear", "AvgPool2d", "Flatten", "Scale", "IF")
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
    except (ValueError, TypeError) as error:  # ragged nesting, objects numpy cannot hold
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


def _identifier(name, what) -> str:
    from .serialize import SerializationError, check_identifier
    try:
        return check_identifier(name, what)
    except SerializationError as error:
        _fail(str(error))


# ---------------------------------------------------------------------------------- the file


def _check_hdf5(path, max_bytes):
    """The file's size and the bytes its datasets declare (after decompression) are <= max_bytes,
    and every node's type is in NODE_TYPES, before the nir package reads anything."""
    import h5py
    size = os.path.getsize(path)
    if size > max_bytes:
        _fail(f"{path!r} is {size} bytes, more than max_bytes = {max_bytes}; pass a larger max_bytes if you "
              "trust its size")
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
                        _fail(f"{path!r} declares more than max_bytes = {max_bytes} bytes of arrays "
                              f"({name}: shape {item.shape}); pass a larger max_bytes if you trust it")
                if name.endswith("/type") or name == "type":
                    kind = item[()] if isinstance(item, h5py.Dataset) and item.shape == () else None
                    kind = kind.decode("utf-8", "replace") if isinstance(kind, bytes) else kind
                    expected = ("NIRGraph",) if name in ("node/type", "type") else NODE_TYPES
                    if kind not in expected:
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
        _fail(f"{path!r} is not a NIR graph the nir package can read ({type(error).__name__}: "
              f"{str(error)[:160]})")


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


def _conv_out(size, kernel, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class _Checked:
    """One node after its checks: its kind, its per-sample output shape and what to build."""

    def __init__(self, kind, shape, **values):
        self.kind, self.shape, self.values = kind, shape, values


def _check_node(nir, name, node, shape_in, meta):
    """The checks of one node given the shape flowing into it; returns a _Checked."""
    what = f"node {name!r}"
    kind = type(node).__name__
    if kind == "Conv2d":
        weight = _floats(node.weight, f"{what}: weight", ndim=4)
        out_channels, per_group, kh, kw = weight.shape
        groups = _int(node.groups, f"{what}: groups", 1)
        stride = _ints(node.stride, f"{what}: stride", 2, 1)
        dilation = _ints(node.dilation, f"{what}: dilation", 2, 1)
        padding = node.padding
        if isinstance(padding, (str, bytes, np.bytes_)):
            padding = _text(padding, f"{what}: padding")
            if padding not in ("same", "valid") or (padding == "same" and stride != (1, 1)):
                _fail(f"{what}: padding {padding!r} (accepted: 'same' with stride 1, 'valid', or 2 ints)")
        else:
            padding = _ints(padding, f"{what}: padding", 2, 0)
        has_bias = _int(meta.get("bias", 1), f"{what}: metadata bias", 0, 1)
        bias = _floats(node.bias, f"{what}: bias", ndim=1)
        if bias.shape != (out_channels,) or out_channels == 0 or out_channels % groups or per_group == 0:
            _fail(f"{what}: weight {weight.shape}, bias {bias.shape} and groups {groups} do not agree")
        if len(shape_in) != 3 or shape_in[0] != per_group * groups:
            _fail(f"{what}: its input has shape {shape_in}; the weight {weight.shape} with groups {groups} needs "
                  f"({per_group * groups}, H, W)")
        if padding == "same":
            shape = (out_channels,) + tuple(shape_in[1:])
        else:
            pad = (0, 0) if padding == "valid" else padding
            shape = (out_channels,) + tuple(_conv_out(s, k, st, p, d) for s, k, st, p, d in
                                            zip(shape_in[1:], (kh, kw), stride, pad, dilation))
        if min(shape) < 1:
            _fail(f"{what}: the kernel {(kh, kw)} does not fit its input {shape_in}")
        scale = _input_scale(meta, what, per_group)
        return _Checked("conv", shape, weight=weight, bias=bias if has_bias else None, stride=stride,
                        padding=padding, dilation=dilation, groups=groups, scale=scale)
    if kind in ("Affine", "Linear"):
        weight = _floats(node.weight, f"{what}: weight", ndim=2)
        bias = _floats(node.bias, f"{what}: bias", ndim=1) if kind == "Affine" else None
        if bias is not None and bias.shape != weight.shape[:1]:
            _fail(f"{what}: weight {weight.shape} and bias {bias.shape} do not agree")
        if shape_in != (weight.shape[1],):
            _fail(f"{what}: its input has shape {shape_in}; the weight {weight.shape} needs ({weight.shape[1]},)")
        return _Checked("linear", (weight.shape[0],), weight=weight, bias=bias,
                        scale=_input_scale(meta, what, weight.shape[1]))
    if kind == "AvgPool2d":
        if len(shape_in) != 3:
            _fail(f"{what}: pooling needs a (C, H, W) input, got {shape_in}")
        if "kind" in meta and _text(meta["kind"], f"{what}: metadata kind") == "AdaptiveAvgPool2d":
            size = _ints(meta.get("output_size"), f"{what}: metadata output_size", 2, 1)
            return _Checked("adaptive", (shape_in[0],) + size, output_size=size)
        kernel = _ints(node.kernel_size, f"{what}: kernel_size", 2, 1)
        stride = _ints(node.stride, f"{what}: stride", 2, 1)
        padding = _ints(node.padding, f"{what}: padding", 2, 0)
        if any(2 * p > k for p, k in zip(padding, kernel)):
            _fail(f"{what}: padding {padding} is more than half the kernel {kernel}")
        shape = (shape_in[0],) + tuple(_conv_out(s, k, st, p) for s, k, st, p in
                                       zip(shape_in[1:], kernel, stride, padding))
        if min(shape) < 1:
            _fail(f"{what}: the kernel {kernel} does not fit its input {shape_in}")
        return _Checked("pool", shape, kernel=kernel, stride=stride, padding=padding)
    if kind == "Flatten":
        if _int(node.start_dim, f"{what}: start_dim") != 0 or _int(node.end_dim, f"{what}: end_dim") != -1:
            _fail(f"{what}: from_nir reads Flatten(start_dim=0, end_dim=-1) only")
        return _Checked("flatten", (math.prod(shape_in),))
    if kind == "Scale":
        if _text(meta.get("role", ""), f"{what}: metadata role") != "amplitude":
            _fail(f"{what} is a Scale that is not an IF layer's amplitude, which to_nir does not write")
        _floats(node.scale, f"{what}: scale", positive=True)
        return _Checked("pass", shape_in)
    if kind == "IF":
        from .._validation import MAX_LEVELS
        from .if_layer import V_INIT
        for key in ("amplitude", "threshold", "p", "threshold_dims", "amplitude_dims"):
            if key not in meta:
                _fail(f"IF {what} lacks na_kernels' metadata {key!r} (written by to_nir)")
        semantics = (_text(meta.get("reset", ""), f"{what}: reset"), meta.get("v_init"),
                     _text(meta.get("firing", ""), f"{what}: firing"))
        if semantics[0] != "subtract" or semantics[2] != ">=" or not (
                isinstance(semantics[1], (float, int, np.floating, np.integer))
                and float(semantics[1]) == V_INIT):
            _fail(f"IF {what} has reset/v_init/firing {semantics!r:.80}; IFLayer is ('subtract', {V_INIT}, "
                  "'>=') and cannot rebuild another neuron")
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
        return _Checked("if", shape_in, p=p, layer=layer, **values)
    _fail(f"{what} is a {kind}, which to_nir does not write (it reads {', '.join(NODE_TYPES)})")


def _input_scale(meta, what, size):
    if "input_scale" not in meta:
        return None
    scale = _floats(meta["input_scale"], f"{what}: metadata input_scale", ndim=1, positive=True)
    if scale.shape != (size,):
        _fail(f"{what}: metadata input_scale has {scale.size} values for {size} inputs")
    return scale


def _module_name(name, meta):
    """The module a node becomes: its ``torch_target`` when that is a module path (identifiers
    or decimal indices joined by dots), else the node's own name (to_nir writes a description
    such as ``torch.flatten()`` for a function); never any other string."""
    from .serialize import SerializationError, check_path
    target = _text(meta.get("torch_target", name), f"node {name!r}: torch_target")
    try:
        return check_path(target, f"node {name!r}: torch_target")
    except SerializationError:
        return name


def _check_graph(nir, graph):
    """The checked nodes in build order, their input sources, and the graph's T and chunk."""
    if not isinstance(graph, nir.NIRGraph):
        _fail(f"expects a nir.NIRGraph or a file path, got {type(graph).__name__}")
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    if meta.get("format") is None or _text(meta.get("format"), "graph metadata format") != FORMAT:
        _fail(f"rebuilds NIR graphs written by na_kernels.nn.to_nir only (graph metadata format {FORMAT!r}); "
              "this graph has none, and its IF nodes' reset, start potential and firing rule would be guesses")
    version = _int(meta.get("format_version"), "graph metadata format_version")
    if version != FORMAT_VERSION:
        _fail(f"reads format_version {FORMAT_VERSION}, the graph has {version}")
    T = _int(meta.get("T", 1), "graph metadata T", 1)
    chunk = _int(meta.get("chunk", 0), "graph metadata chunk", 0)
    nodes = graph.nodes
    if not isinstance(nodes, dict) or not nodes or len(nodes) > MAX_NODES:
        _fail(f"the graph must hold 1 .. {MAX_NODES} nodes")
    for name, node in nodes.items():
        _identifier(name, "node name")
        kind = type(node).__name__
        if kind not in NODE_TYPES or type(node) is not getattr(nir, kind, None):
            _fail(f"node {name!r} is a {kind}, which to_nir does not write (it reads {', '.join(NODE_TYPES)})")
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
    rank = {n: (_int(_metadata(node, f"node {n!r}").get("index", len(nodes)), f"node {n!r}: metadata index"), i)
            for i, (n, node) in enumerate(nodes.items())}
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
            if not 1 <= shape.size <= 3 or not np.all(shape == np.round(shape)) or not np.all(shape >= 1) \
                    or not np.all(shape <= 1 << 20):
                _fail(f"the Input's shape {shape.tolist()} is not 1 to 3 sizes in 1 .. 2^20")
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
            checked[name] = _check_node(nir, name, node, shape_in, meta_n)
            checked[name].values["target"] = _module_name(name, meta_n)
        shapes[name] = checked[name].shape
    unreached = [n for n in order if n != outputs[0] and not any(src == n for src, _ in edges)]
    if unreached:
        _fail(f"node {unreached[0]!r} leads nowhere (no edge out of it)")
    return order, checked, sources, T, chunk


# ---------------------------------------------------------------------------------- building


def from_nir(graph, T: Optional[int] = None, chunk: Optional[int] = None, *, max_bytes: int = DEFAULT_MAX_BYTES):
    """Rebuild the ``SpikingNetwork`` that ``to_nir`` exported (a ``nir.NIRGraph`` or a file path).

    The amplitudes folded into weights are divided back out (exactly: float64 products of float32
    numbers), Scale nodes of amplitudes become the IF layers' amplitudes again, thresholds,
    p, T and chunk come from the metadata: the result gives the original's spikes and outputs
    bit for bit. ``T`` / ``chunk`` override the values stored in the graph. ``max_bytes``: the
    largest file, and the most bytes its arrays may declare (default 1 GiB).

    Raises NIRImportError (a NIRExportError) for a graph na_kernels did not write (its IF
    semantics would be a guess: see ``nir_export``), a node type it does not use, or anything
    malformed (see the module docstring); nothing in the file is run.
    """
    from .._validation import check_int, check_time_steps
    from .convert import _add_synapse_meters, _add_time_repetition, _wrap
    from .if_layer import IFLayer
    from .serialize import _graph_module_names
    nir = _nir()
    max_bytes = check_int("max_bytes", max_bytes, minimum=1)
    if T is not None:
        T = check_time_steps("T", T)
    if chunk is not None:
        chunk = check_time_steps("chunk", chunk)
    if isinstance(graph, (str, os.PathLike)):
        graph = _read(os.fspath(graph), max_bytes)
    order, checked, sources, file_T, file_chunk = _check_graph(nir, graph)

    root = nn.Module()
    reserved = _graph_module_names()
    fx_graph = fx.Graph()
    values: Dict[str, fx.Node] = {}
    if_nodes = {}

    def summed(name):
        total = values[sources[name][0]]
        for other in sources[name][1:]:
            total = fx_graph.call_function(operator.add, (total, values[other]))
        return total

    def place(name, module):
        target = checked[name].values["target"]
        try:
            root.get_submodule(target)
            target = name  # two nodes named one module: the node's own name
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
            w = w / torch.from_numpy(item.values["scale"]).reshape((1, -1) + (1,) * (w.dim() - 2))
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
            conv = nn.Conv2d(w.shape[1] * v["groups"], w.shape[0], tuple(w.shape[2:]), stride=v["stride"],
                             padding=v["padding"], dilation=v["dilation"], groups=v["groups"], bias=b is not None,
                             device="meta")
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
        elif item.kind == "pool":
            values[name], _ = place(name, nn.AvgPool2d(v["kernel"], v["stride"], v["padding"]))
        elif item.kind == "flatten":
            values[name] = fx_graph.call_function(torch.flatten, (summed(name), 1))
        elif item.kind == "pass":
            values[name] = summed(name)  # our IF layers emit their amplitude themselves
        else:  # if
            layer = IFLayer(v["layer"] or name, v["threshold"], v["p"])
            layer.amplitude = v["amplitude"]
            values[name], target = place(name, layer)
            layer.name = v["layer"] or target
            if_nodes[values[name]] = target
    gm = fx.GraphModule(root, fx_graph, "FromNIR")
    stem_runs_once = _add_time_repetition(gm, if_nodes)
    _add_synapse_meters(gm, if_nodes)
    T = file_T if T is None else T
    chunk = (file_chunk or None) if chunk is None else chunk
    return _wrap(gm, T, chunk, if_layers=list(if_nodes.values()), folded=[], stem_runs_once=stem_runs_once)
