"""The ``.snn`` file format of a converted SpikingNetwork: data only, the file never runs code.

``save_snn(snn, path)`` (also ``snn.save(path)``) writes one ``.snn`` file; ``load_snn(path)``
rebuilds the network from it without the model's Python class. The file is data only, and
nothing read from it is ever executed, imported, looked up by ``getattr`` or put into
generated source unless it is one of the names this module lists:

    magic (8 bytes: ``b"\\x89NASNN\\r\\n"``) | version (uint32 LE) | header length (uint64 LE)
    | sha256 of header + payload (32 bytes) | header (UTF-8 JSON) | payload (tensor bytes)

The header holds

- ``tensors``: per tensor its dtype (one of ``DTYPES``), shape and byte range in the payload
  (little-endian, C order, consecutive);
- ``modules``: every submodule, parents first: its name (identifiers or digits joined by
  dots), its ``type`` (a key of the closed table ``MODULE_TYPES``: torch.nn layers, rebuilt by
  calling their constructor with the saved constructor arguments on the meta device, and
  na_kernels' IFLayer, TimeRepeat, SynapseMeter), its parameters and buffers (tensor indices;
  names and shapes must be exactly those the constructor made) and, for na_kernels' modules,
  the fields of the closed tables ``_CONFIG`` (an IF layer's ``routes``: meter name, synapse
  and pool specs of the exact structure ``stats.synapse_spec`` / ``pool_spec`` make, each
  leading to a routed meter of the file), ``_STATE`` (switches, per-channel statistics) and
  ``_BUFFERS`` (thresholds, amplitudes and the statistics counters, which are saved and come
  back as they were);
- ``graph``: the fx graph node by node; ``call_function`` targets are keys of ``FUNCTIONS``,
  ``call_method`` targets are in ``METHODS`` (no in-place, storage, type, device or I/O
  method) and only called on values the graph computed, ``getattr`` reads only ``GETATTR``;
  node names, placeholder targets and kwargs keys are plain identifiers, constants are
  None, bool, int, finite float, str, dtype, slice or Ellipsis;
- ``network``: T, chunk, the run counters and the conversion report.

Loading checks, before building anything: the magic, the version, the sizes, the sha256
checksum (a flipped bit is an error, not different outputs), that the file is at most
``max_bytes`` long (default ``DEFAULT_MAX_BYTES``, 1 GiB; every tensor must be stored in
full, so the tensors allocated are at most the file's size), then every record's type,
names, shapes and values (weights finite, IF thresholds and amplitudes finite and > 0,
counters of their dtype and shape and >= 0, T and chunk ints >= 1). Anything wrong raises
``SerializationError`` naming it. The network comes back in eval mode with the saved tensors
and statistics: the same outputs bit for bit, the same ``statistics()``.
"""

import builtins
import functools
import hashlib
import inspect
import io
import json
import keyword
import math
import operator
import os
import struct
import warnings

import torch
from torch import fx, nn
from torch.nn import functional as F

from .. import __version__
from .._validation import check_int, check_levels, check_time_steps
from ..nn.if_layer import IFLayer
from .base import SpikingNetworkBase, TimeRepeat
from .stats import SynapseMeter

FORMAT = "na_kernels.SpikingNetwork"
FORMAT_VERSION = 2
MAGIC = b"\x89NASNN\r\n"
_PREFIX = struct.Struct("<8sIQ32s")  # magic, version, header length, sha256
DEFAULT_MAX_BYTES = 1 << 30  # a file larger than this is refused unless load_snn(max_bytes=...) raises it
MAX_HEADER_BYTES = 16 << 20  # a 10 000-node graph's header is about 3 MiB
_MAX_DEPTH = 12  # nesting of a graph argument or a report value
_MAX_NAME = 256
_MAX_DIM = 1 << 31  # a tensor dimension or torch.Size entry

# torch.nn layers a converted network may hold (rebuilt by their constructor from saved arguments)
_TORCH_MODULES = (
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
    "Identity",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "LayerNorm",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "Flatten",
    "Unflatten",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "ZeroPad1d",
    "ZeroPad2d",
    "ZeroPad3d",
    "ConstantPad1d",
    "ConstantPad2d",
    "ConstantPad3d",
    "Upsample",
    "PixelShuffle",
    "PixelUnshuffle",
    "Softmax",
    "LogSoftmax",
)
_OWN_MODULES = ("IFLayer", "TimeRepeat", "SynapseMeter")
MODULE_TYPES = ("Module",) + _TORCH_MODULES + _OWN_MODULES

# call_function targets, by the key the file names them with
FUNCTIONS = {
    **{
        f"operator.{n}": getattr(operator, n)
        for n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "pos", "matmul", "getitem")
    },
    "builtins.getattr": builtins.getattr,
    "math.sqrt": math.sqrt,
    **{
        f"torch.{n}": getattr(torch, n)
        for n in (
            "add",
            "sub",
            "mul",
            "div",
            "cat",
            "concat",
            "stack",
            "flatten",
            "reshape",
            "transpose",
            "permute",
            "squeeze",
            "unsqueeze",
            "mean",
            "sum",
            "matmul",
            "neg",
            "avg_pool1d",
            "adaptive_avg_pool1d",
            "max_pool1d",
            "max_pool2d",
            "max_pool3d",
            "conv1d",
            "conv2d",
            "conv3d",
            "clamp",
            "chunk",
            "split",
        )
    },
    **{
        f"F.{n}": getattr(F, n)
        for n in (
            "linear",
            "conv1d",
            "conv2d",
            "conv3d",
            "avg_pool1d",
            "avg_pool2d",
            "avg_pool3d",
            "adaptive_avg_pool1d",
            "adaptive_avg_pool2d",
            "adaptive_avg_pool3d",
            "max_pool1d",
            "max_pool2d",
            "max_pool3d",
            "adaptive_max_pool1d",
            "adaptive_max_pool2d",
            "adaptive_max_pool3d",
            "dropout",
            "pad",
            "interpolate",
            "batch_norm",
            "layer_norm",
            "group_norm",
            "softmax",
            "log_softmax",
        )
    },
}
# in-place operators a traced forward may hold (``out += x``): written as the out-of-place operator
# when nothing else reads their first operand (then the value is the same)
_IN_PLACE = {
    operator.iadd: "operator.add",
    operator.isub: "operator.sub",
    operator.imul: "operator.mul",
    operator.itruediv: "operator.truediv",
}
# Tensor methods a graph may call, only on a value the graph computed: shape arithmetic and
# out-of-place maths; none touches storage, dtype or device, files, or a tensor in place
METHODS = frozenset(
    (
        "size",
        "dim",
        "view",
        "reshape",
        "flatten",
        "contiguous",
        "permute",
        "transpose",
        "unsqueeze",
        "squeeze",
        "mean",
        "sum",
        "add",
        "sub",
        "mul",
        "div",
        "matmul",
        "chunk",
        "split",
        "expand",
        "expand_as",
        "view_as",
        "reshape_as",
        "clamp",
        "softmax",
        "log_softmax",
        "neg",
    )
)
_NON_TENSOR_METHODS = ("size", "dim")  # their results are ints: no method may be called on them
GETATTR = ("shape", "ndim", "dtype", "device")  # what getattr(value, name) may read (tensor metadata)
DTYPES = {
    name: getattr(torch, name)
    for name in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

_MODULE_BASE_KEYS = frozenset(nn.Module().__dict__)
_HOOK_KEYS = tuple(k for k in _MODULE_BASE_KEYS if k.endswith("hooks"))
# na_kernels' modules, field by field. _CONFIG: what the module is (checked, then rebuilt);
# _STATE: switches and optional per-channel statistics (attribute -> kind); _BUFFERS: every
# buffer (name -> kind): IF thresholds / amplitudes and the statistics counters, tensors updated
# in place (saved, cloned on load); _TRANSIENT: per-run state, not saved
_CONFIG = {
    "IFLayer": ("name", "p", "input_is_constant", "routes"),
    "TimeRepeat": (),
    "SynapseMeter": ("name", "layer_type", "sources", "spike_driven", "synapse", "weight_shape", "routed"),
}
_STATE = {
    "IFLayer": {
        "record": "bool",
        "record_channels": "bool",
        "record_ann_levels": "bool",
        "channel_spikes": "count_vector",
        "ann_channel_levels": "level_vector",
    },
    "TimeRepeat": {},
    "SynapseMeter": {"record": "bool"},
}
_BUFFERS = {
    "IFLayer": {
        "threshold": "positive",
        "amplitude": "positive",
        "spikes": "count",
        "neuron_steps": "count",
        "neurons": "count",
        "route_sops": "route_sops",
    },
    "TimeRepeat": {},
    "SynapseMeter": {"sops": "sops", "macs": "count", "rows": "count", "macs_per_sample": "count"},
}
_TRANSIENT = {
    "IFLayer": ("time_steps", "mode", "carry_state", "v", "_calibrated", "_calibrated_versions"),
    "TimeRepeat": ("time_steps",),
    "SynapseMeter": (),
}
_SYNAPTIC_TYPES = {"Linear": 0, "Conv1d": 1, "Conv2d": 2, "Conv3d": 3}  # fx_utils.SYNAPTIC_TYPES -> spatial dims
_MAX_ROUTES = 1024  # routes of one IF layer (one per path from it to a conv/linear)
_MAX_POOLS = 16  # average pools on one route
# names fx's generated forward may use besides the builtins: an input may not shadow them
_RESERVED_INPUTS = frozenset(
    ("self", "torch", "operator", "math", "builtins", "device", "inf", "nan", "fx_pytree", "pytree", "NoneType", "F")
)
_MODULE_RECORD_KEYS = ("name", "type", "parameters", "buffers", "config", "state")
_NETWORK_KEYS = ("T", "chunk", "samples", "sample_steps", "conversion_report")
# how a network runs here, not what it is: not saved (``SpikingNetwork.event_driven``,
# ``SpikingNetwork.reuse_buffers``)
_RUN_OPTION_KEYS = ("event_convolutions", "workspace", "_workspace_key")


class SerializationError(ValueError):
    """A network that cannot be saved in the format, or a file that is not a valid one."""


# ---------------------------------------------------------------------------------- names


def check_identifier(name, what) -> str:
    """``name`` as a plain Python identifier: a str, not a keyword, not private or dunder."""
    if (
        not isinstance(name, str)
        or not name.isidentifier()
        or not name.isascii()
        or keyword.iskeyword(name)
        or name.startswith("_")
        or len(name) > _MAX_NAME
    ):
        raise SerializationError(
            f"{what} {name!r:.80} is not a plain identifier (letters, digits and _ , "
            "not starting with _ , not a Python keyword)"
        )
    return name


def _check_node_name(name, what) -> str:
    """An fx node name: an identifier, not a keyword, not dunder (fx names a Sequential's
    children ``_0``, ``_1``: one leading underscore is fine)."""
    if (
        not isinstance(name, str)
        or not name.isidentifier()
        or not name.isascii()
        or keyword.iskeyword(name)
        or name.startswith("__")
        or len(name) > _MAX_NAME
    ):
        raise SerializationError(f"{what} {name!r:.80} is not a plain identifier")
    return name


def check_path(name, what, allow_root=False) -> str:
    """A module path: identifiers or decimal indices (a Sequential's children) joined by dots."""
    if allow_root and name == "":
        return name
    if not isinstance(name, str) or not name or len(name) > 4 * _MAX_NAME:
        raise SerializationError(f"{what} {name!r:.80} is not a module path")
    for part in name.split("."):
        if not (part.isascii() and part.isdigit()):
            check_identifier(part, f"{what} {name!r:.80}: part")
    return name


def _check_label(value, what) -> str:
    """A display name (an IF layer's name, a report entry): printable text, bounded length."""
    if not isinstance(value, str) or len(value) > 4 * _MAX_NAME or not value.isprintable():
        raise SerializationError(
            f"{what} must be printable text of at most {4 * _MAX_NAME} characters, got {value!r:.80}"
        )
    return value


def _own_classes():
    return {"IFLayer": IFLayer, "TimeRepeat": TimeRepeat, "SynapseMeter": SynapseMeter}


def _type_key(module: nn.Module, where: str) -> str:
    cls = type(module)
    if cls is nn.Module:
        return "Module"
    for key, own in _own_classes().items():
        if cls is own:
            return key
    if cls.__name__ in _TORCH_MODULES and getattr(nn, cls.__name__, None) is cls:
        return cls.__name__
    raise SerializationError(
        f"{where}: {cls.__module__}.{cls.__qualname__} is not a module save_snn can rebuild without its code "
        f"(accepted: torch.nn.{{{', '.join(_TORCH_MODULES)}}}, torch.nn.Module containers and na_kernels' "
        "IFLayer, TimeRepeat, SynapseMeter); use torch.save(snn) and torch.load(path, weights_only=False) with "
        "the code importable"
    )


def _constructor_arguments(cls):
    parameters = inspect.signature(cls.__init__).parameters
    return [
        n
        for n, p in parameters.items()
        if n not in ("self", "device", "dtype") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _has_bias_flag(cls) -> bool:
    parameter = inspect.signature(cls.__init__).parameters.get("bias")
    return parameter is not None and isinstance(parameter.default, bool)


# ---------------------------------------------------------------------------------- plain values


def _encode(value, where, nodes=False):
    """A constant (or, in a graph, an fx node) as JSON: tuples as arrays, the rest tagged."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(f"{where}: a non-finite constant {value!r} is not written")
        return float(value)
    if isinstance(value, str):
        return str(value)
    if nodes and isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, torch.Size):
        return {"size": [int(v) for v in value]}
    if isinstance(value, tuple):
        return [_encode(v, where, nodes) for v in value]
    if isinstance(value, list):
        return {"list": [_encode(v, where, nodes) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": [[k, _encode(v, where, nodes)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [_encode(v, where, nodes) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype) and value in _DTYPE_NAMES:
        return {"dtype": _DTYPE_NAMES[value]}
    raise SerializationError(f"{where}: a value of type {type(value).__name__} ({value!r:.80}) is not plain data")


def _decode(value, where, nodes=None, depth=0):
    """The inverse of ``_encode``; ``nodes``: the fx nodes defined so far (by file name)."""
    if depth > _MAX_DEPTH:
        raise SerializationError(f"{where}: values nested deeper than {_MAX_DEPTH}")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(f"{where}: a non-finite constant")
        return value
    if isinstance(value, list):
        return tuple(_decode(v, where, nodes, depth + 1) for v in value)
    if isinstance(value, dict) and len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "node" and nodes is not None:
            if not isinstance(body, str) or body not in nodes:
                raise SerializationError(f"{where}: refers to fx node {body!r:.80}, which is not defined before it")
            return nodes[body]
        if tag == "list" and isinstance(body, list):
            return [_decode(v, where, nodes, depth + 1) for v in body]
        if tag == "size" and isinstance(body, list) and all(type(v) is int and 0 <= v < _MAX_DIM for v in body):
            return torch.Size(body)
        if tag == "dict" and isinstance(body, list) and all(isinstance(i, list) and len(i) == 2 for i in body):
            return {check_identifier(k, f"{where}: key"): _decode(v, where, nodes, depth + 1) for k, v in body}
        if tag == "slice" and isinstance(body, list) and len(body) == 3:
            parts = [_decode(v, where, nodes, depth + 1) for v in body]
            if not all(p is None or type(p) is int or isinstance(p, fx.Node) for p in parts):
                raise SerializationError(f"{where}: a slice of something other than ints")
            return slice(*parts)
        if tag == "ellipsis" and body is True:
            return Ellipsis
        if tag == "dtype" and isinstance(body, str) and body in DTYPES:
            return DTYPES[body]
    raise SerializationError(f"{where}: {value!r:.80} is not a value record of the format")


# ---------------------------------------------------------------------------------- tensors


class _Tensors:
    """The tensor table a writer fills (shared tensors written once)."""

    def __init__(self):
        self.entries, self.chunks, self.index, self.offset = [], [], {}, 0

    def add(self, tensor: torch.Tensor, where: str) -> int:
        key = id(tensor)
        if key in self.index:
            return self.index[key]
        if tensor.dtype not in _DTYPE_NAMES:
            raise SerializationError(f"{where}: dtype {tensor.dtype} is not written (accepted: {', '.join(DTYPES)})")
        data = tensor.detach().to("cpu").contiguous()
        raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
        self.entries.append(
            {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(data.shape), "offset": self.offset, "nbytes": len(raw)}
        )
        self.chunks.append(raw)
        self.offset += len(raw)
        self.index[key] = len(self.entries) - 1
        return self.index[key]


def _read_tensors(entries, payload, map_location):
    if not isinstance(entries, list):
        raise SerializationError("the header's 'tensors' is not a list")
    tensors, offset = [], 0
    for i, entry in enumerate(entries):
        where = f"tensor {i}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "offset", "nbytes"}:
            raise SerializationError(f"{where}: a record with keys dtype, shape, offset, nbytes expected")
        dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        shape = entry["shape"]
        if dtype is None:
            raise SerializationError(f"{where}: dtype {entry['dtype']!r:.40} is not one of {', '.join(DTYPES)}")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(type(d) is int and 0 <= d < _MAX_DIM for d in shape)
        ):
            raise SerializationError(f"{where}: shape {shape!r:.80} is not a list of at most 8 ints in 0 .. 2^31")
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if entry["offset"] != offset or entry["nbytes"] != nbytes:
            raise SerializationError(
                f"{where}: its shape {shape} and dtype {entry['dtype']} need {nbytes} bytes "
                f"at offset {offset}; the record says {entry['nbytes']!r:.40} at "
                f"{entry['offset']!r:.40}"
            )
        if offset + nbytes > len(payload):
            raise SerializationError(
                f"{where}: its {nbytes} bytes at offset {offset} lie past the end of the "
                f"payload ({len(payload)} bytes): the file is truncated"
            )
        if nbytes:
            flat = torch.frombuffer(payload, dtype=torch.uint8, count=nbytes, offset=offset).clone()
            tensor = flat.view(dtype).reshape(shape)
        else:
            tensor = torch.empty(shape, dtype=dtype)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SerializationError(f"{where} holds NaN or infinite values")
        tensors.append(tensor if map_location is None else tensor.to(map_location))
        offset += nbytes
    if offset != len(payload):
        raise SerializationError(f"the payload holds {len(payload) - offset} bytes no tensor record describes")
    return tensors


# ---------------------------------------------------------------------------------- save


def _describe_module(name, module, tensors):
    where = f"module {name or '<root>'}"
    check_path(name, "save_snn cannot write it: module name", allow_root=True)
    for key in _HOOK_KEYS:
        if getattr(module, key, None):
            raise SerializationError(f"{where} has {key} registered: hooks are code and are not saved; remove them")
    kind = "Module" if name == "" else _type_key(module, where)
    record = {
        "name": name,
        "type": kind,
        "parameters": {
            k: [tensors.add(v, f"{where}.{k}"), bool(v.requires_grad)]
            for k, v in module._parameters.items()
            if v is not None
        },
        "buffers": {k: tensors.add(v, f"{where}.{k}") for k, v in module._buffers.items() if v is not None},
        "config": {},
        "state": {},
    }
    if kind in _OWN_MODULES:
        known = set(_CONFIG[kind]) | set(_STATE[kind]) | set(_TRANSIENT[kind])
        for key in module.__dict__:
            if key not in _MODULE_BASE_KEYS and key not in known:
                raise SerializationError(f"{where}: attribute {key!r} is not described by the format")
        if set(record["buffers"]) != set(_BUFFERS[kind]) or record["parameters"]:
            raise SerializationError(
                f"{where}: its parameters and buffers {sorted(record['parameters'])} "
                f"{sorted(record['buffers'])} are not those the format describes "
                f"({sorted(_BUFFERS[kind])})"
            )
        record["config"] = {k: _encode(module.__dict__.get(k), f"{where}.{k}") for k in _CONFIG[kind]}
        try:  # what load_snn accepts: a file save_snn writes always loads
            _check_config(kind, _decode_config(record["config"], where), where)
        except SerializationError as error:
            raise SerializationError(f"save_snn cannot write it: {error}") from None
        for key in _STATE[kind]:
            value = module.__dict__.get(key)
            record["state"][key] = (
                tensors.add(value, f"{where}.{key}")
                if isinstance(value, torch.Tensor)
                else _encode(value, f"{where}.{key}")
            )
    elif kind != "Module":
        cls = type(module)
        config = {k: module.__dict__[k] for k in _constructor_arguments(cls) if k in module.__dict__}
        if _has_bias_flag(cls):
            config["bias"] = module._parameters.get("bias") is not None
        record["config"] = {k: _encode(v, f"{where}.{k}") for k, v in config.items()}
        rebuilt = _construct(kind, _decode_config(record["config"], where), where)
        for key, value in module.__dict__.items():
            if key not in _MODULE_BASE_KEYS and rebuilt.__dict__.get(key, object()) != value:
                raise SerializationError(
                    f"{where}: attribute {key!r} ({value!r:.60}) is not what its constructor "
                    "makes from the saved arguments, so it cannot be rebuilt faithfully"
                )
    return record


_ALIASING_METHODS = (
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "unsqueeze",
    "squeeze",
    "expand",
    "expand_as",
    "view_as",
    "reshape_as",
    "contiguous",
    "chunk",
    "split",
)
_ALIASING_MODULES = (
    "Identity",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "Flatten",
    "Unflatten",
    "TimeRepeat",
    "SynapseMeter",
)


def _may_alias(node, root) -> bool:
    """Whether ``node``'s value may share memory with another value (an input, a weight, a view
    or a module that returns its input): an in-place update of it would be seen elsewhere."""
    if node.op in ("placeholder", "get_attr"):
        return True
    if node.op == "call_method":
        return node.target in _ALIASING_METHODS
    if node.op == "call_module":
        return type(root.get_submodule(node.target)).__name__ in _ALIASING_MODULES
    return node.target not in (
        operator.add,
        operator.sub,
        operator.mul,
        operator.truediv,
        torch.add,
        torch.sub,
        torch.mul,
        torch.div,
        torch.cat,
        torch.matmul,
        operator.matmul,
    )


def _describe_graph(graph: fx.Graph, root: nn.Module):
    nodes = []
    for node in graph.nodes:
        where = f"fx node {node.name!r}"
        target = node.target
        if node.op == "call_function":
            if target in _IN_PLACE:
                first = node.args[0] if node.args else None
                if not isinstance(first, fx.Node) or len(first.users) != 1 or _may_alias(first, root):
                    raise SerializationError(
                        f"{where}: an in-place {target.__name__} on a value that is read "
                        "elsewhere or may share memory with one is not written (use the "
                        "out-of-place operator)"
                    )
                target = _IN_PLACE[target]
            else:
                target = next((k for k, f in FUNCTIONS.items() if f is target), None)
                if target is None:
                    raise SerializationError(
                        f"{where}: calls {getattr(node.target, '__module__', '')}."
                        f"{getattr(node.target, '__name__', node.target)}"
                        ", which save_snn does not write (accepted: na_kernels.snn.record.FUNCTIONS)"
                    )
        elif node.op == "call_method" and target not in METHODS:
            raise SerializationError(
                f"{where}: Tensor.{target} is not a method save_snn writes (accepted: {', '.join(sorted(METHODS))})"
            )
        try:  # what load_snn accepts: a file save_snn writes always loads
            _check_node_name(node.name, where)
            if node.op == "placeholder":
                check_identifier(target, f"{where}: input name")
                if node.args or target in _RESERVED_INPUTS:
                    raise SerializationError(f"{where}: an input with a default value or a reserved name")
            elif node.op == "get_attr":
                owner, _, leaf = check_path(target, f"{where}: target").rpartition(".")
                holder = root.get_submodule(owner) if owner else root
                if leaf not in holder._parameters and leaf not in holder._buffers:
                    raise SerializationError(
                        f"{where} reads {target!r}, which is not a parameter or buffer (a "
                        "tensor constant): register it as a buffer"
                    )
            elif node.op == "call_module":
                check_path(target, f"{where}: target")
            for key in node.kwargs:
                check_identifier(key, f"{where}: keyword")
        except SerializationError as error:
            raise SerializationError(f"save_snn cannot write it: {error}") from None
        nodes.append(
            {
                "op": node.op,
                "name": node.name,
                "target": target,
                "args": _encode(tuple(node.args), where, nodes=True),
                "kwargs": _encode(dict(node.kwargs), where, nodes=True),
            }
        )
    return nodes


def snn_header(snn):
    """``(header, payload)``: the JSON header and the tensor bytes ``save_snn`` writes."""
    if not isinstance(snn, SpikingNetworkBase):
        raise TypeError(f"save_snn expects a SpikingNetwork (from to_snn), got {type(snn).__name__}")
    gm = snn.network
    for key in snn.__dict__:
        if key not in _MODULE_BASE_KEYS and key not in _NETWORK_KEYS and key not in _RUN_OPTION_KEYS:
            raise SerializationError(f"SpikingNetwork attribute {key!r} is not described by the format")
    tensors = _Tensors()
    modules = [_describe_module(name, module, tensors) for name, module in gm.named_modules(remove_duplicate=False)]
    try:
        _check_routes(gm.named_modules(remove_duplicate=False))
    except SerializationError as error:
        raise SerializationError(f"save_snn cannot write it: {error}") from None
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "na_kernels_version": __version__,
        "torch_version": str(torch.__version__),
        "byte_order": "little",
        "class_name": type(gm).__name__.lstrip("_") or "GraphModule",
        "tensors": tensors.entries,
        "modules": modules,
        "graph": _describe_graph(gm.graph, gm),
        "network": {k: _encode(getattr(snn, k), f"SpikingNetwork.{k}") for k in _NETWORK_KEYS},
    }
    return header, b"".join(tensors.chunks)


def pack(header: dict, payload: bytes) -> bytes:
    """The bytes of a ``.snn`` file: prefix (magic, version, header length, sha256), header, payload."""
    text = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    digest = hashlib.sha256(text + payload).digest()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text), digest) + text + payload


def save_snn(snn, path) -> None:
    """Write a converted ``SpikingNetwork`` to ``path`` (a file name or a binary file object).

    Raises ``SerializationError`` (a ValueError) naming the module or fx node that the format
    cannot describe (a custom module, a function outside ``FUNCTIONS``, a hook, ...)."""
    data = pack(*snn_header(snn))
    if hasattr(path, "write"):
        path.write(data)
        return
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- load


def _decode_config(config, where):
    if not isinstance(config, dict):
        raise SerializationError(f"{where}: 'config' is not a record")
    return {
        check_identifier(k, f"{where}: constructor argument"): _decode(v, f"{where}.{k}") for k, v in config.items()
    }


def _construct(kind, config, where):
    """A torch.nn layer from its constructor arguments, on the meta device (no memory)."""
    cls = getattr(nn, kind)
    accepted = set(_constructor_arguments(cls))
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise SerializationError(f"{where}: {kind} takes no argument {unknown[0]!r:.80}")
    if "device" in inspect.signature(cls.__init__).parameters:
        config = dict(config, device="meta")
    try:
        with warnings.catch_warnings():  # its initial values are replaced by the saved tensors: no init warnings
            warnings.simplefilter("ignore")
            return cls(**config)
    except Exception as error:  # the constructor's own checks (TypeError, ValueError, ...)
        raise SerializationError(
            f"{where}: {kind}({', '.join(sorted(config))}) refuses the saved arguments "
            f"({type(error).__name__}: {str(error)[:200]})"
        ) from None


def _tensor_ref(index, tensors, where):
    if type(index) is not int or not 0 <= index < len(tensors):
        raise SerializationError(f"{where}: {index!r:.40} is not a tensor of the file")
    return tensors[index]


def _check_tensor_names(record, module, tensors, where):
    """The file's parameters and buffers: exactly the names (and shapes) the module has."""
    for kind, own in (("parameters", module._parameters), ("buffers", module._buffers)):
        saved = record.get(kind)
        if not isinstance(saved, dict):
            raise SerializationError(f"{where}: '{kind}' is not a record")
        expected = {k for k, v in own.items() if v is not None}
        if set(saved) != expected:
            extra = sorted(set(saved) - expected, key=str)
            raise SerializationError(
                f"{where}: its {kind} are {sorted(saved, key=str)!r:.120}, "
                f"the module has {sorted(expected)}" + (f" ({extra[0]!r:.60} is not one)" if extra else "")
            )


def _build_torch_module(record, tensors, where):
    kind = record["type"]
    module = _construct(kind, _decode_config(record.get("config"), where), where)
    _check_tensor_names(record, module, tensors, where)
    for key, value in record["parameters"].items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], bool)):
            raise SerializationError(f"{where}: parameter {key}: [tensor index, requires_grad] expected")
        tensor = _tensor_ref(value[0], tensors, f"{where}.{key}")
        expected = module._parameters[key]
        if tensor.shape != expected.shape or not tensor.is_floating_point():
            raise SerializationError(
                f"{where}.{key}: shape {tuple(tensor.shape)} {tensor.dtype}, the module needs "
                f"{tuple(expected.shape)} floating point"
            )
        module._parameters[key] = nn.Parameter(tensor, requires_grad=value[1])
    for key, index in record["buffers"].items():
        tensor = _tensor_ref(index, tensors, f"{where}.{key}")
        expected = module._buffers[key]
        if tensor.shape != expected.shape or tensor.is_floating_point() != expected.is_floating_point():
            raise SerializationError(
                f"{where}.{key}: shape {tuple(tensor.shape)} {tensor.dtype}, the module needs "
                f"{tuple(expected.shape)} {expected.dtype}"
            )
        if key in ("running_var", "num_batches_tracked") and bool((tensor < 0).any()):
            raise SerializationError(f"{where}.{key} holds negative values")
        module._buffers[key] = tensor
    return module


def _positive_tensor(tensor, where):
    if tensor.dtype != torch.float32 or tensor.dim() > 1 or tensor.numel() == 0 or not bool((tensor > 0).all()):
        raise SerializationError(
            f"{where} must be a float32 scalar or [C] vector of finite values > 0, got "
            f"{tuple(tensor.shape)} {tensor.dtype}" + (f" with minimum {tensor.min().item()}" if tensor.numel() else "")
        )
    return tensor


def _is_int(value, minimum) -> bool:
    return type(value) is int and minimum <= value < _MAX_DIM


def _int_tuple(value, where, length=None, minimum=0):
    if not (
        type(value) is tuple and (length is None or len(value) == length) and all(_is_int(v, minimum) for v in value)
    ):
        raise SerializationError(
            f"{where}: {value!r:.80} is not a tuple of {length or 'some'} ints in {minimum} .. 2^31"
        )
    return value


def _check_synapse(spec, where) -> int:
    """A ``stats.synapse_spec``: ``("conv", kernel, stride, padding, dilation, out_channels //
    groups)`` of 1 to 3 spatial dims (padding "same", "valid" or ints) or ``("linear",
    out_features)``. Returns its spatial dims (0 for a linear)."""
    if type(spec) is tuple and len(spec) == 2 and spec[0] == "linear" and _is_int(spec[1], 0):
        return 0
    if not (
        type(spec) is tuple
        and len(spec) == 6
        and spec[0] == "conv"
        and type(spec[1]) is tuple
        and 1 <= len(spec[1]) <= 3
    ):
        raise SerializationError(
            f"{where}: {spec!r:.120} is not a synapse spec (('conv', kernel, stride, padding, "
            "dilation, out_channels // groups) of 1 to 3 spatial dims or ('linear', "
            "out_features))"
        )
    _, kernel, stride, padding, dilation, per_group = spec
    dims = len(kernel)
    _int_tuple(kernel, f"{where}: kernel", dims, 1)
    _int_tuple(stride, f"{where}: stride", dims, 1)
    _int_tuple(dilation, f"{where}: dilation", dims, 1)
    if padding == "same":
        if any(v != 1 for v in stride):
            raise SerializationError(f"{where}: padding 'same' needs stride 1, got {stride}")
    elif padding != "valid":
        _int_tuple(padding, f"{where}: padding", dims, 0)
    if not _is_int(per_group, 1):
        raise SerializationError(f"{where}: out_channels // groups {per_group!r:.40} is not an int >= 1")
    return dims


def _check_pool(spec, where) -> int:
    """A ``stats.pool_spec``: ``("avg", kernel, stride, padding, ceil_mode)`` (padding at most half
    the kernel) or ``("adaptive", output_size)`` (ints >= 1 or None), 1 to 3 dims. Returns the dims."""
    if type(spec) is tuple and len(spec) in (2, 5) and type(spec[1]) is tuple and 1 <= len(spec[1]) <= 3:
        dims = len(spec[1])
        if len(spec) == 2 and spec[0] == "adaptive" and all(v is None or _is_int(v, 1) for v in spec[1]):
            return dims
        if len(spec) == 5 and spec[0] == "avg" and isinstance(spec[4], bool):
            kernel = _int_tuple(spec[1], f"{where}: kernel", dims, 1)
            _int_tuple(spec[2], f"{where}: stride", dims, 1)
            padding = _int_tuple(spec[3], f"{where}: padding", dims, 0)
            if any(2 * p > k for p, k in zip(padding, kernel)):
                raise SerializationError(f"{where}: padding {padding} is more than half the kernel {kernel}")
            return dims
    raise SerializationError(
        f"{where}: {spec!r:.120} is not a pool spec (('avg', kernel, stride, padding, ceil_mode) "
        "or ('adaptive', output_size), 1 to 3 spatial dims)"
    )


def _check_route(route, where):
    """One of ``IFLayer.routes``: ``(meter name, synapse spec, pool specs)``, pools and synapse of
    the same spatial dims."""
    if not (type(route) is tuple and len(route) == 3 and type(route[2]) is tuple and len(route[2]) <= _MAX_POOLS):
        raise SerializationError(
            f"{where}: {route!r:.120} is not (meter name, synapse spec, pool specs) with at most {_MAX_POOLS} pools"
        )
    meter, synapse, pools = route
    _check_label(meter, f"{where}: meter name")
    dims = _check_synapse(synapse, f"{where}: synapse")
    pool_dims = {_check_pool(pool, f"{where}: pool {i}") for i, pool in enumerate(pools)}
    if len(pool_dims) > 1 or (dims and pool_dims and pool_dims != {dims}):
        raise SerializationError(
            f"{where}: its pools ({sorted(pool_dims)}) and synapse ({dims or 'linear'}) have different spatial dims"
        )
    return route


def _check_config(kind, config, where) -> dict:
    """The fields of a na_kernels module's decoded config record, each checked by type and range."""
    if set(config) != set(_CONFIG[kind]):
        raise SerializationError(f"{where}: a {kind} record holds {sorted(config)}, expected {list(_CONFIG[kind])}")
    if kind == "TimeRepeat":
        return {}
    for key in ("input_is_constant",) if kind == "IFLayer" else ("spike_driven", "routed"):
        if not isinstance(config[key], bool):
            raise SerializationError(f"{where}.{key} must be a bool")
    fields = dict(config, name=_check_label(config["name"], f"{where}.name"))
    if kind == "IFLayer":
        try:
            fields["p"] = check_levels(config["p"]) if type(config["p"]) is int else check_levels(None)
        except (TypeError, ValueError) as error:
            raise SerializationError(f"{where}.p: {error}") from None
        routes = config["routes"]
        if type(routes) is not tuple or len(routes) > _MAX_ROUTES:
            raise SerializationError(f"{where}.routes must be a list of at most {_MAX_ROUTES} routes")
        for i, route in enumerate(routes):
            _check_route(route, f"{where}.routes[{i}]")
        return fields
    layer_type = config["layer_type"]  # SynapseMeter
    if layer_type not in _SYNAPTIC_TYPES:
        raise SerializationError(
            f"{where}.layer_type {layer_type!r:.40} is not a synaptic layer ({', '.join(_SYNAPTIC_TYPES)})"
        )
    synapse = config["synapse"]
    dims = _check_synapse(synapse, f"{where}.synapse")
    if dims != _SYNAPTIC_TYPES[layer_type]:
        raise SerializationError(
            f"{where}: the synapse spec of a {layer_type} has {_SYNAPTIC_TYPES[layer_type]} spatial dims, not {dims}"
        )
    if type(config["sources"]) is not tuple:
        raise SerializationError(f"{where}.sources must be a list of IF layer names")
    for source in config["sources"]:
        _check_label(source, f"{where}.sources entry")
    if config["routed"] and not config["spike_driven"]:
        raise SerializationError(f"{where}: a routed meter is spike-driven")
    weight_shape = _int_tuple(config["weight_shape"], f"{where}.weight_shape", dims + 2 if dims else 2)
    if (
        (weight_shape[2:] != synapse[1] or weight_shape[0] < 1 or weight_shape[0] % synapse[5])
        if dims
        else (weight_shape[0] != synapse[1])
    ):
        raise SerializationError(f"{where}: weight shape {weight_shape} does not fit the synapse spec {synapse}")
    return fields


def _buffer(kind, index, tensors, where, routes):
    """A buffer of a na_kernels module from the file: ``kind`` of ``_BUFFERS``; counters cloned
    (updated in place: never shared with another record's tensor)."""
    tensor = _tensor_ref(index, tensors, where)
    if kind == "positive":
        return _positive_tensor(tensor, where)
    dtype, shape = {"count": (torch.int64, ()), "sops": (torch.float64, ()), "route_sops": (torch.float64, (routes,))}[
        kind
    ]
    if tensor.dtype != dtype or tuple(tensor.shape) != shape or bool((tensor < 0).any()):
        raise SerializationError(
            f"{where} must be {dtype} of shape {shape} with values >= 0 (one per route), got "
            f"{tuple(tensor.shape)} {tensor.dtype}"
        )
    return tensor.clone()


def _plain(kind, value, where, tensors):
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind in ("count_vector", "level_vector"):
        if value is None:
            return None
        tensor = _tensor_ref(value, tensors, where)
        if (
            tensor.dim() == 1
            and tensor.dtype == (torch.int64 if kind == "count_vector" else torch.float64)
            and not bool((tensor < 0).any())
        ):
            return tensor.clone()
    raise SerializationError(f"{where}: {value!r:.60} is not a valid {kind.replace('_', ' ')}")


def _build_own_module(record, tensors, where):
    kind = record["type"]
    cls = _own_classes()[kind]
    fields = _check_config(kind, _decode_config(record.get("config"), where), where)
    state = record.get("state")
    if not isinstance(state, dict) or set(state) != set(_STATE[kind]):
        raise SerializationError(
            f"{where}: a {kind}'s state holds {sorted(state or ())!r:.120}, expected {sorted(_STATE[kind])}"
        )
    probe = nn.Module()
    for key in _BUFFERS[kind]:
        probe.register_buffer(key, torch.zeros(()))
    _check_tensor_names(record, probe, tensors, where)
    buffers = {
        key: _buffer(kind_of, record["buffers"][key], tensors, f"{where}.{key}", len(fields.get("routes", ())))
        for key, kind_of in _BUFFERS[kind].items()
    }
    state = {key: _plain(kind_of, state[key], f"{where}.{key}", tensors) for key, kind_of in _STATE[kind].items()}
    if kind == "TimeRepeat":
        module = cls()
    elif kind == "IFLayer":
        threshold, amplitude = buffers.pop("threshold"), buffers.pop("amplitude")
        if threshold.dim() == amplitude.dim() == 1 and threshold.numel() != amplitude.numel():
            raise SerializationError(f"{where}: {threshold.numel()} thresholds but {amplitude.numel()} amplitudes")
        if int(buffers["spikes"]) > int(buffers["neuron_steps"]):
            raise SerializationError(
                f"{where}: {int(buffers['spikes'])} spikes in {int(buffers['neuron_steps'])} "
                "neuron steps (at most one spike per neuron and step)"
            )
        channels = {v.numel() for v in (state["channel_spikes"], state["ann_channel_levels"]) if v is not None}
        if len(channels) > 1 or (channels and threshold.numel() > 1 and channels != {threshold.numel()}):
            raise SerializationError(
                f"{where}: per-channel statistics of {sorted(channels)} channels, thresholds of {threshold.numel()}"
            )
        module = cls(fields["name"], threshold, fields["p"], input_is_constant=fields["input_is_constant"])
        module.threshold = threshold  # the saved tensors themselves (the constructor copies)
        module.amplitude = amplitude
        for route in fields["routes"]:
            module.add_route(*route)
    else:  # SynapseMeter: its constructor needs the layer; its fields from the table, checked
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.__dict__.update(fields)
    for key, tensor in buffers.items():  # the statistics counters
        if key in module._buffers:
            module._buffers[key] = tensor
        else:
            module.register_buffer(key, tensor, persistent=False)
    module.__dict__.update(state)
    return module


def _check_routes(modules):
    """Each route of an IF layer leads to a routed meter of the network with the route's synapse
    spec, and each routed meter is reached by a route: else SOPs would count twice or never."""
    classes = _own_classes()
    modules = list(modules)
    meters, reached = {}, set()
    for path, module in modules:
        if type(module) is classes["SynapseMeter"]:
            if module.name in meters:
                raise SerializationError(f"module {path}: meter name {module.name!r:.80} is another meter's")
            meters[module.name] = module
    for path, module in modules:
        if type(module) is classes["IFLayer"]:
            for i, (name, synapse, _) in enumerate(module.routes):
                meter = meters.get(name)
                if meter is None or not meter.routed or meter.synapse != synapse:
                    raise SerializationError(
                        f"module {path}: route {i} leads to {name!r:.80}, which is not a routed "
                        "meter of the network with the route's synapse spec"
                    )
                reached.add(name)
    for name, meter in meters.items():
        if meter.routed and name not in reached:
            raise SerializationError(
                f"meter {name!r:.80} is routed (its SOPs counted by IF layers), but no IF layer has a route to it"
            )


def _build_container(record, tensors, where, root):
    """A plain nn.Module holding submodules and, maybe, parameters and buffers of its own
    (a model's ``self.gain = nn.Parameter(...)``): identifiers that are not already attributes."""
    module = nn.Module()
    taken = _graph_module_names() if root else set(dir(module))
    for kind in ("parameters", "buffers"):
        saved = record.get(kind)
        if not isinstance(saved, dict):
            raise SerializationError(f"{where}: '{kind}' is not a record")
        for key, value in saved.items():
            check_identifier(key, f"{where}: {kind[:-1]} name")
            if key in taken or key in module._parameters or key in module._buffers:
                raise SerializationError(f"{where}: {kind[:-1]} name {key!r} is already an attribute or method")
            if kind == "parameters":
                if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], bool)):
                    raise SerializationError(f"{where}: parameter {key}: [tensor index, requires_grad] expected")
                tensor = _tensor_ref(value[0], tensors, f"{where}.{key}")
                if not tensor.is_floating_point():
                    raise SerializationError(f"{where}.{key}: a parameter must be floating point")
                module._parameters[key] = nn.Parameter(tensor, requires_grad=value[1])
            else:
                module._buffers[key] = _tensor_ref(value, tensors, f"{where}.{key}")
    return module


def _build_modules(records, tensors):
    if not isinstance(records, list) or not records:
        raise SerializationError("the header's 'modules' is not a non-empty list")
    built = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("type"), str):
            raise SerializationError(f"module record {i} is not a record with a type")
        if set(record) != set(_MODULE_RECORD_KEYS):
            raise SerializationError(
                f"module record {i} holds {sorted(record)!r:.160}, expected {', '.join(_MODULE_RECORD_KEYS)}"
            )
        name = record.get("name")
        check_path(name, f"module record {i}: name", allow_root=True)
        where = f"module {name or '<root>'}"
        if name in built:
            raise SerializationError(f"{where} appears twice")
        if (i == 0) != (name == ""):
            raise SerializationError("the first module record must be the root (name '') and only it")
        kind = record["type"]
        if kind not in MODULE_TYPES:
            raise SerializationError(
                f"{where}: type {kind!r:.80} is not one load_snn rebuilds (accepted: {', '.join(MODULE_TYPES)})"
            )
        if kind not in _OWN_MODULES and (record["state"] != {} or (kind == "Module" and record["config"] != {})):
            raise SerializationError(
                f"{where}: a {kind} record holds no " + ("state" if record["state"] != {} else "constructor arguments")
            )
        if kind == "Module":
            module = _build_container(record, tensors, where, root=not name)
        elif kind in _OWN_MODULES:
            module = _build_own_module(record, tensors, where)
        else:
            module = _build_torch_module(record, tensors, where)
        if name:
            parent, _, child = name.rpartition(".")
            if parent not in built:
                raise SerializationError(f"{where}: its parent {parent or '<root>'!r} comes later or not at all")
            if hasattr(built[parent], child) or (not parent and child in _graph_module_names()):
                raise SerializationError(f"{where}: {child!r} is already an attribute or method of its parent")
            built[parent]._modules[child] = module
        built[name] = module
    _check_routes(built.items())
    return built


@functools.lru_cache(maxsize=None)
def _graph_module_names():
    """Every attribute and method of a GraphModule: a root submodule may not take one's name."""
    return frozenset(dir(fx.GraphModule(nn.Module(), fx.Graph())))


def _non_tensor(node_kinds, value):
    return isinstance(value, fx.Node) and node_kinds.get(value) == "int"


def _build_graph(entries, built, where):
    if not isinstance(entries, list) or not entries:
        raise SerializationError(f"{where}: the graph is not a non-empty list of nodes")
    graph, nodes, kinds, inputs = fx.Graph(), {}, {}, set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"op", "name", "target", "args", "kwargs"}:
            raise SerializationError(f"{where}: graph node {i} is not a record with op, name, target, args, kwargs")
        name = _check_node_name(entry["name"], f"graph node {i}: name")
        at = f"fx node {name!r}"
        if name in nodes:
            raise SerializationError(f"{at} is defined twice")
        op, target = entry["op"], entry["target"]
        args = _decode(entry["args"], at, nodes)
        kwargs = _decode(entry["kwargs"], at, nodes)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise SerializationError(f"{at}: args must be a list and kwargs a dict")
        if "output" in kinds.values():
            raise SerializationError(f"{at} comes after the output node")
        if op == "placeholder":
            check_identifier(target, f"{at}: input name")
            if args or kwargs:
                raise SerializationError(f"{at}: an input takes no default value or arguments")
            if target in inputs:
                raise SerializationError(f"{at}: the graph has two inputs named {target!r}")
            if kinds and any(k != "tensor" or n.op != "placeholder" for n, k in kinds.items()):
                raise SerializationError(f"{at}: inputs must come first")
            inputs.add(target)
            node = graph.placeholder(target)
            if target in _RESERVED_INPUTS or (target in dir(builtins) and target != "input"):
                raise SerializationError(f"{at}: input name {target!r} is reserved (a name the generated forward uses)")
        elif op in ("get_attr", "call_module"):
            check_path(target, f"{at}: target")
            if op == "get_attr" and (args or kwargs):
                raise SerializationError(f"{at}: get_attr takes no arguments")
            owner, _, leaf = target.rpartition(".")
            parent = built.get(owner)
            if op == "call_module" and target not in built:
                raise SerializationError(f"{at} calls {target!r:.80}, which is not a module of the file")
            if op == "get_attr" and not (
                parent is not None and (leaf in parent._parameters or leaf in parent._buffers)
            ):
                raise SerializationError(f"{at} reads {target!r:.80}, which is not a saved parameter or buffer")
            node = graph.create_node(op, target, args, kwargs)
        elif op == "call_function":
            function = FUNCTIONS.get(target) if isinstance(target, str) else None
            if function is None:
                raise SerializationError(
                    f"{at} calls {target!r:.80}, which is not one of na_kernels.snn.record.FUNCTIONS"
                )
            if function is builtins.getattr and (
                len(args) != 2 or kwargs or not isinstance(args[0], fx.Node) or args[1] not in GETATTR
            ):
                raise SerializationError(f"{at}: getattr may read {GETATTR} of a graph value only")
            node = graph.create_node(op, function, args, kwargs)
        elif op == "call_method":
            if not isinstance(target, str) or target not in METHODS:
                raise SerializationError(
                    f"{at} calls Tensor.{target!s:.80}, which is not one of na_kernels.snn.record.METHODS"
                )
            if not args or not isinstance(args[0], fx.Node) or _non_tensor(kinds, args[0]):
                raise SerializationError(f"{at}: Tensor.{target} must be called on a tensor the graph computed")
            node = graph.create_node(op, target, args, kwargs)
        elif op == "output":
            if len(args) != 1 or kwargs or target != "output":
                raise SerializationError(f"{at}: the output node holds one value")
            node = graph.output(args[0])
        else:
            raise SerializationError(f"{at} has an unknown op {op!r:.40}")
        for key in kwargs:
            check_identifier(key, f"{at}: keyword")
        non_tensor = (op == "call_method" and target in _NON_TENSOR_METHODS) or (
            op == "call_function"
            and (target == "builtins.getattr" or (target == "operator.getitem" and _non_tensor(kinds, args[0])))
        )
        kinds[node] = "int" if non_tensor else ("output" if op == "output" else "tensor")
        nodes[name] = node
    if "output" not in kinds.values():
        raise SerializationError(f"{where}: the graph has no output node")
    if not inputs:
        raise SerializationError(f"{where}: the graph has no input")
    try:
        graph.lint()
    except Exception as error:
        raise SerializationError(f"{where}: the graph is inconsistent ({str(error)[:200]})") from None
    return graph


def _check_network(values, where):
    if not isinstance(values, dict) or set(values) != set(_NETWORK_KEYS):
        raise SerializationError(f"{where}: 'network' must hold exactly {', '.join(_NETWORK_KEYS)}")
    decoded = {k: _decode(v, f"{where}: network.{k}") for k, v in values.items()}
    for key in ("T", "chunk"):
        value = decoded[key]
        if type(value) is not int and not (key == "chunk" and value is None):
            raise SerializationError(f"{where}: network.{key} must be an int >= 1, got {value!r:.40}")
        try:
            check_time_steps(key, value, allow_none=key == "chunk")
        except (TypeError, ValueError) as error:
            raise SerializationError(f"{where}: {error}") from None
    for key in ("samples", "sample_steps"):
        if type(decoded[key]) is not int or not 0 <= decoded[key] < 1 << 63:
            raise SerializationError(f"{where}: network.{key} must be an int >= 0 (int64)")
    if decoded["sample_steps"] < decoded["samples"]:
        raise SerializationError(f"{where}: network.sample_steps (sum of B*T) is less than network.samples")
    report = decoded["conversion_report"]
    if not isinstance(report, dict):
        raise SerializationError(f"{where}: network.conversion_report must be a record")
    for key, value in report.items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (bool, int, float)) or (isinstance(v, str) and _check_label(v, key)) for v in items):
            raise SerializationError(f"{where}: conversion_report.{key} holds something other than names and numbers")
    return decoded


def _unpack(data, where):
    """``(header, payload)`` of a file's bytes, after the magic, version, sizes and checksum checks."""
    if len(data) == 0:
        raise SerializationError(f"{where} is empty")
    if len(data) < _PREFIX.size:
        if MAGIC.startswith(bytes(data[: len(MAGIC)])):
            raise SerializationError(
                f"{where} is truncated: {len(data)} bytes, the fixed prefix alone is {_PREFIX.size}"
            )
    if bytes(data[: len(MAGIC)]) != MAGIC:
        hint = (
            " (a torch.save file: a pickled object, or a file of format version 1, which na_kernels wrote "
            "with torch.save before this format; load that with the version that wrote it and save it again)"
            if bytes(data[:2]) == b"PK" or bytes(data[:1]) == b"\x80"
            else ""
        )
        raise SerializationError(
            f"{where} is not a na_kernels SpikingNetwork file (no {MAGIC!r} at its start)"
            f"{hint}; write one with snn.save(path)"
        )
    magic, version, length, digest = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise SerializationError(
            f"{where} has format version {version}; this na_kernels ({__version__}) reads version "
            f"{FORMAT_VERSION} only: load it with the version that wrote it and save it again, or convert the ANN "
            "again"
        )
    if length > MAX_HEADER_BYTES or _PREFIX.size + length > len(data):
        raise SerializationError(
            f"{where} is truncated or damaged: its header says {length} bytes, "
            f"{len(data) - _PREFIX.size} follow the prefix"
        )
    body = memoryview(data)[_PREFIX.size :]
    if hashlib.sha256(body).digest() != digest:
        raise SerializationError(
            f"{where} is damaged: its sha256 checksum does not match its contents "
            "(a changed, truncated or extended file)"
        )
    try:
        header = json.loads(bytes(body[:length]).decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise SerializationError(f"{where}: the header is not valid JSON ({str(error)[:120]})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise SerializationError(f"{where}: the header is not a {FORMAT} version {FORMAT_VERSION} record")
    if header.get("byte_order") != "little":
        raise SerializationError(f"{where}: byte order {header.get('byte_order')!r:.40} (little expected)")
    return header, body[length:]


def _no_constant(text):
    raise ValueError(f"{text} is not a number the format holds")


def network_from_bytes(data, network_class, where="the data", map_location=None):
    """Rebuild the network of a ``.snn`` file's bytes as a ``network_class`` (``SpikingNetwork``:
    ``na_kernels.io.serialize.load_snn`` passes it, this module sits below it)."""
    header, payload = _unpack(data, where)
    try:
        tensors = _read_tensors(header.get("tensors"), payload, map_location)
        built = _build_modules(header.get("modules"), tensors)
        network = _check_network(header.get("network"), where)
        graph = _build_graph(header.get("graph"), built, where)
        class_name = check_identifier(header.get("class_name"), "class_name")
        try:
            gm = fx.GraphModule(built[""], graph, class_name)
        except Exception as error:  # fx's own checks of a graph that passed ours: still the file's fault
            raise SerializationError(
                f"the graph does not compile ({type(error).__name__}: {str(error)[:160]})"
            ) from None
    except SerializationError as error:
        raise SerializationError(f"{where}: {error}" if not str(error).startswith(where) else str(error)) from None
    snn = network_class(gm, network["T"], network["chunk"])
    if map_location is not None:  # its run counters where the network's counters are
        snn.run_counts = snn.run_counts.to(map_location)
    snn.samples, snn.sample_steps = network["samples"], network["sample_steps"]
    snn.conversion_report = network["conversion_report"]
    return snn.eval()


def read_file(path, max_bytes: int):
    """``(data, where)``: the bytes of ``path`` (a file name or a binary file object), refused as a
    ``SerializationError`` past ``max_bytes`` before more is read; ``where`` names it in errors."""
    max_bytes = check_int("max_bytes", max_bytes, minimum=_PREFIX.size)
    if hasattr(path, "read"):
        where = "the file"
        data = bytearray()
        while len(data) <= max_bytes:
            chunk = path.read(min(1 << 24, max_bytes + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    else:
        where = repr(os.fspath(path))
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise SerializationError(
                    f"{where} is {size} bytes, more than max_bytes = {max_bytes}; pass a "
                    "larger max_bytes to load_snn if you trust its size"
                )
            data = bytearray(size)  # read in place: one copy of the file in memory
            del data[f.readinto(data) :]  # a file that shrank meanwhile
    if len(data) > max_bytes:
        raise SerializationError(
            f"{where} is more than max_bytes = {max_bytes} bytes; pass a larger max_bytes "
            "to load_snn if you trust its size"
        )
    return data, where


def snn_to_bytes(snn) -> bytes:
    """The bytes ``save_snn`` writes."""
    buffer = io.BytesIO()
    save_snn(snn, buffer)
    return buffer.getvalue()
