"""Save and load a converted SpikingNetwork without the model's Python class.

``save_snn(snn, path)`` (also ``snn.save(path)``) writes one ``torch.save`` file holding only
plain data, so ``load_snn(path)`` reads it with ``torch.load(weights_only=True)`` (no pickled
code runs) and rebuilds the network from it:

- ``format`` (``"na_kernels.SpikingNetwork"``) and ``version`` (``FORMAT_VERSION``);
- ``graph``: the fx graph node by node (op, name, target, args, kwargs); a ``call_function``
  target is written ``"module:name"`` and must be in ``ALLOWED_FUNCTIONS`` (operator, getattr,
  and the torch / torch.nn.functional functions a CNN uses), a ``call_method`` target must be a
  public ``torch.Tensor`` method;
- ``modules``: every submodule of the graph module, parents first: its type (``torch.nn.Module``
  containers, the torch.nn layers in ``ALLOWED_MODULES``, and na_kernels' ``IFLayer``,
  ``TimeRepeat``, ``SynapseMeter``), its plain attributes (numbers, strings, tuples, ...: what
  the constructor set, e.g. a Conv2d's stride and padding, an IFLayer's p), its parameters and
  buffers (CPU copies: the weights with BatchNorm folded, the IF thresholds and amplitudes,
  calibrated or not);
- the SpikingNetwork's own plain attributes: T, chunk, the conversion report, ...

A module is rebuilt without calling its constructor: ``cls.__new__`` plus ``nn.Module.__init__``,
then its attributes, parameters and buffers are set, so the loaded network computes with the
same tensors and the same code: bit-identical outputs. Statistics counters are saved as they
are; the membrane potential carried between chunks is not.
"""
import builtins
import math
import operator
from typing import Optional

import torch
from torch import fx, nn
from torch.nn import functional as F

FORMAT = "na_kernels.SpikingNetwork"
FORMAT_VERSION = 1

# torch.nn layers a converted network may hold (constructed from their saved attributes)
ALLOWED_MODULES = (
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear", "Identity",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LayerNorm",
    "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
    "Flatten", "Unflatten", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
    "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d",
    "Upsample", "PixelShuffle", "PixelUnshuffle", "Softmax", "LogSoftmax", "Module",
)
# call_function targets a graph may hold, by module
ALLOWED_FUNCTIONS = {
    "_operator": (
        "add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "pos", "matmul", "getitem", "iadd", "isub",
        "imul", "itruediv",
    ),
    "builtins": ("getattr",),
    "math": ("sqrt",),
    "torch": (
        "add", "sub", "mul", "div", "cat", "stack", "flatten", "reshape", "transpose", "permute", "squeeze",
        "unsqueeze", "mean", "sum", "matmul", "avg_pool1d", "adaptive_avg_pool1d", "max_pool1d", "max_pool2d",
        "max_pool3d", "conv1d", "conv2d", "conv3d", "clamp", "chunk", "split",
    ),
    "torch.nn.functional": (
        "linear", "conv1d", "conv2d", "conv3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
        "adaptive_avg_pool2d", "adaptive_avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "dropout", "pad", "interpolate",
        "batch_norm", "layer_norm", "group_norm", "softmax", "log_softmax",
    ),
}
# attribute names getattr(value, name) may read in a graph (tensor metadata only)
ALLOWED_GETATTR = ("shape", "ndim", "dtype", "device", "T", "mT", "real")
_FUNCTION_MODULES = {"_operator": operator, "builtins": builtins, "math": math, "torch": torch,
                     "torch.nn.functional": F}
_MODULE_BASE_KEYS = frozenset(nn.Module().__dict__)
_HOOK_KEYS = tuple(k for k in _MODULE_BASE_KEYS if k.endswith("hooks"))
# per-run state and caches: not saved; restored to these values on load where the class has them
_TRANSIENT = {"v": None, "_ones": None, "_calibrated_versions": None, "_calibrated": None}
_RESTORED = {"na_kernels.nn.IFLayer": ("v",), "na_kernels.nn.SynapseMeter": ("_ones",)}
_DTYPES = {str(d).replace("torch.", ""): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint8, torch.bool)}


class SerializationError(ValueError):
    """A network that cannot be saved in the format, or a file that is not one."""


def _own_classes():
    from ..nn.if_layer import IFLayer
    from ..snn.network import TimeRepeat
    from ..snn.stats import SynapseMeter
    return {f"na_kernels.nn.{c.__name__}": c for c in (IFLayer, TimeRepeat, SynapseMeter)}


def _class_name(module: nn.Module, where: str) -> str:
    cls = type(module)
    own = {c: name for name, c in _own_classes().items()}
    if cls in own:
        return own[cls]
    if cls.__name__ in ALLOWED_MODULES and getattr(nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    raise SerializationError(
        f"{where}: {cls.__module__}.{cls.__qualname__} is not a module save_snn can rebuild without its code "
        f"(accepted: torch.nn.{{{', '.join(ALLOWED_MODULES)}}} and na_kernels' IFLayer, TimeRepeat, "
        "SynapseMeter); use torch.save(snn) and torch.load(path, weights_only=False) with the code importable"
    )


def _resolve_class(name: str):
    own = _own_classes()
    if name in own:
        return own[name]
    prefix, _, short = name.rpartition(".")
    if prefix == "torch.nn" and short in ALLOWED_MODULES:
        return getattr(nn, short)
    raise SerializationError(f"the file names a module type {name!r} that load_snn does not rebuild")


# ---------------------------------------------------------------------------------- plain values


def _encode(value, where, modules=None):
    """A graph argument or module attribute as plain data (fx nodes, slices, dtypes marked; a
    submodule of the network, e.g. a SynapseMeter's source IF layer, by its qualified name)."""
    if value is None:
        return value
    if isinstance(value, nn.Module):
        if modules is None or id(value) not in modules:
            raise SerializationError(f"{where}: refers to a {type(value).__name__} that is not part of the network")
        return {"__module__": modules[id(value)]}
    for plain in (bool, int, float, str):  # subclasses (TorchVersion, IntEnum, ...) as the plain type
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, fx.Node):
        return {"__node__": value.name}
    if isinstance(value, torch.Size):
        return {"__size__": list(value)}
    if isinstance(value, (tuple, list)):
        items = [_encode(v, where, modules) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": [(k, _encode(v, where, modules)) for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        return {"__set__": [_encode(v, where, modules) for v in sorted(value, key=repr)]}
    if isinstance(value, slice):
        return {"__slice__": [_encode(value.start, where), _encode(value.stop, where), _encode(value.step, where)]}
    if value is Ellipsis:
        return {"__ellipsis__": True}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).replace("torch.", "")}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().clone()}
    raise SerializationError(f"{where}: a value of type {type(value).__name__} ({value!r:.80}) is not plain data")


def _decode(value, nodes=None, modules=None):
    if isinstance(value, tuple):
        return tuple(_decode(v, nodes, modules) for v in value)
    if isinstance(value, list):
        return [_decode(v, nodes, modules) for v in value]
    if not isinstance(value, dict):
        return value
    if "__module__" in value:
        if modules is None or value["__module__"] not in modules:
            raise SerializationError(f"the file refers to module {value['__module__']!r}, which it does not hold")
        return modules[value["__module__"]]
    if "__node__" in value:
        if nodes is None or value["__node__"] not in nodes:
            raise SerializationError(f"the file refers to fx node {value['__node__']!r} before or outside the graph")
        return nodes[value["__node__"]]
    if "__size__" in value:
        return torch.Size(value["__size__"])
    if "__dict__" in value:
        return {k: _decode(v, nodes, modules) for k, v in value["__dict__"]}
    if "__set__" in value:
        return set(_decode(v, nodes, modules) for v in value["__set__"])
    if "__slice__" in value:
        return slice(*(_decode(v, nodes) for v in value["__slice__"]))
    if "__ellipsis__" in value:
        return Ellipsis
    if "__dtype__" in value:
        return _DTYPES[value["__dtype__"]]
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__tensor__" in value:
        return value["__tensor__"]
    raise SerializationError(f"unknown value record {sorted(value)} in the file")


def _function_name(target, where):
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", "")
    if module == "torch._C._nn" or (module == "" and getattr(torch, name, None) is target):
        module = "torch"  # builtins such as torch.flatten report no module
    for candidate, owner in _FUNCTION_MODULES.items():
        if name in ALLOWED_FUNCTIONS[candidate] and getattr(owner, name, None) is target:
            return f"{candidate}:{name}"
    raise SerializationError(
        f"{where}: calls {module}.{name}, which save_snn does not write (accepted: operator arithmetic, getattr, "
        "and the torch / torch.nn.functional functions in na_kernels.io.serialize.ALLOWED_FUNCTIONS)"
    )


def _check_getattr(spelled, args, where):
    if spelled == "builtins:getattr" and (len(args) != 2 or args[1] not in ALLOWED_GETATTR):
        raise SerializationError(f"{where}: getattr{tuple(args)!r:.80} reads an attribute outside {ALLOWED_GETATTR}")


def _resolve_function(spelled):
    module, _, name = spelled.partition(":")
    if module not in ALLOWED_FUNCTIONS or name not in ALLOWED_FUNCTIONS[module]:
        raise SerializationError(f"the file calls {spelled!r}, which load_snn does not accept")
    return getattr(_FUNCTION_MODULES[module], name)


# ---------------------------------------------------------------------------------- save


def _describe_module(name, module, modules):
    where = f"module {name or '<root>'}"
    for key in _HOOK_KEYS:
        if getattr(module, key, None):
            raise SerializationError(f"{where} has {key} registered: hooks are code and are not saved; remove them")
    attributes = {}
    for key, value in module.__dict__.items():
        if key in _MODULE_BASE_KEYS or key in _TRANSIENT or name == "":  # the root: the fx code is rebuilt
            continue
        attributes[key] = _encode(value, f"{where}, attribute {key}", modules)
    return dict(
        name=name,
        type="torch.nn.Module" if name == "" else _class_name(module, where),
        training=module.training,
        attributes=attributes,
        parameters={k: (v.detach().cpu().clone(), v.requires_grad) for k, v in module._parameters.items()
                    if v is not None},
        buffers={k: v.detach().cpu().clone() for k, v in module._buffers.items() if v is not None},
        non_persistent=sorted(module._non_persistent_buffers_set),
    )


def _describe_graph(graph: fx.Graph):
    nodes = []
    for node in graph.nodes:
        where = f"fx node {node.name!r}"
        if node.op == "call_function":
            target = _function_name(node.target, where)
            _check_getattr(target, node.args, where)
        elif node.op == "call_method":
            if node.target.startswith("_") or not hasattr(torch.Tensor, node.target):
                raise SerializationError(f"{where}: Tensor.{node.target} is not a public torch.Tensor method")
            target = node.target
        else:
            target = node.target
        nodes.append(dict(op=node.op, name=node.name, target=target, args=_encode(node.args, where),
                          kwargs=_encode(dict(node.kwargs), where)))
    return nodes


def snn_record(snn) -> dict:
    """The plain-data record ``save_snn`` writes (see the module docstring for its fields)."""
    from .. import __version__
    from ..snn.network import SpikingNetwork
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"save_snn expects a SpikingNetwork (from to_snn), got {type(snn).__name__}")
    gm = snn.network
    names = {id(module): name for name, module in gm.named_modules()}
    attributes = {}
    for key, value in snn.__dict__.items():
        if key in _MODULE_BASE_KEYS or key in _TRANSIENT:
            continue
        attributes[key] = _encode(value, f"SpikingNetwork attribute {key}")
    return dict(
        format=FORMAT,
        version=FORMAT_VERSION,
        na_kernels_version=__version__,
        torch_version=str(torch.__version__),
        class_name=type(gm).__name__,
        graph=_describe_graph(gm.graph),
        modules=[_describe_module(name, module, names) for name, module in gm.named_modules(remove_duplicate=False)],
        attributes=attributes,
        training=snn.training,
    )


def save_snn(snn, path) -> None:
    """Write a converted ``SpikingNetwork`` to ``path`` (a file name or a binary file object).

    The file holds tensors and plain data only (``torch.save`` of ``snn_record(snn)``);
    ``load_snn`` rebuilds the network from it without the model's code. Raises
    ``SerializationError`` (a ValueError) naming the module or fx node that the format cannot
    describe (a custom module, a function outside ``ALLOWED_FUNCTIONS``, a hook)."""
    torch.save(snn_record(snn), path)


# ---------------------------------------------------------------------------------- load


def _build_module(record):
    """The module of ``record`` with its parameters and buffers; its plain attributes are set by
    ``_set_attributes`` once every module exists (an attribute may name another module)."""
    cls = nn.Module if record["type"] == "torch.nn.Module" else _resolve_class(record["type"])
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key in record["attributes"]:
        if key in _MODULE_BASE_KEYS:
            raise SerializationError(f"module {record['name']!r}: the file overrides nn.Module's own {key!r}")
    for key, (tensor, requires_grad) in record["parameters"].items():
        module.register_parameter(key, nn.Parameter(tensor, requires_grad=requires_grad))
    for key, tensor in record["buffers"].items():
        module.register_buffer(key, tensor, persistent=key not in record["non_persistent"])
    for key in _RESTORED.get(record["type"], ()):
        module.__dict__[key] = _TRANSIENT[key]
    if hasattr(module, "_derive_calibrated"):  # an IFLayer: its calibrated flag follows its buffers
        module._derive_calibrated()
    module.train(record["training"])
    return module


def _check_record(record, where):
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SerializationError(
            f"{where} is not a na_kernels SpikingNetwork file (no format {FORMAT!r}); write one with snn.save(path)"
        )
    version = record.get("version")
    if version != FORMAT_VERSION:
        raise SerializationError(
            f"{where} has format version {version!r}; this na_kernels ({_na_version()}) reads version "
            f"{FORMAT_VERSION} only (the file was written by na_kernels {record.get('na_kernels_version')!r}): "
            "load it with the version that wrote it, or convert the ANN again"
        )


def _na_version():
    from .. import __version__
    return __version__


def _check_reference(root, entry, where):
    """get_attr must name a saved parameter or buffer, call_module a saved module (nothing else of the root)."""
    owner_name, _, leaf = entry["target"].rpartition(".")
    try:
        owner = root.get_submodule(owner_name) if owner_name else root
    except AttributeError:
        owner = None
    if entry["op"] == "call_module":
        ok = owner is not None and isinstance(owner._modules.get(leaf), nn.Module)
    else:
        ok = owner is not None and (leaf in owner._parameters or leaf in owner._buffers)
    if not ok:
        what = "a saved module" if entry["op"] == "call_module" else "a saved parameter or buffer"
        raise SerializationError(f"{where}: fx node {entry['name']!r} refers to {entry['target']!r}, not {what}")


def snn_from_record(record, where="the record"):
    """Rebuild the ``SpikingNetwork`` a ``snn_record`` describes."""
    from ..snn.network import SpikingNetwork
    _check_record(record, where)
    modules, built = {}, []
    for entry in record["modules"]:
        module = _build_module(entry)
        built.append((module, entry))
        name = entry["name"]
        if name:
            parent, _, child = name.rpartition(".")
            modules[parent].add_module(child, module)
        modules[name] = module
    for module, entry in built:
        for key, value in entry["attributes"].items():
            module.__dict__[key] = _decode(value, modules=modules)
    root = modules[""]
    graph = fx.Graph()
    nodes = {}
    for entry in record["graph"]:
        target = entry["target"]
        if entry["op"] == "call_function":
            target = _resolve_function(target)
        elif entry["op"] == "call_method" and (target.startswith("_") or not hasattr(torch.Tensor, target)):
            raise SerializationError(f"{where}: fx node {entry['name']!r} calls Tensor.{target}, not accepted")
        elif entry["op"] not in ("placeholder", "get_attr", "call_module", "call_method", "output"):
            raise SerializationError(f"{where}: fx node {entry['name']!r} has an unknown op {entry['op']!r}")
        args = _decode(entry["args"], nodes)
        kwargs = _decode(entry["kwargs"], nodes)
        if entry["op"] == "call_function":
            _check_getattr(entry["target"], args, f"{where}: fx node {entry['name']!r}")
        if entry["op"] in ("get_attr", "call_module"):
            _check_reference(root, entry, where)
        if entry["op"] == "output":
            nodes[entry["name"]] = graph.output(args[0])
        else:
            nodes[entry["name"]] = graph.create_node(entry["op"], target, args, kwargs, name=entry["name"])
    gm = fx.GraphModule(root, graph, record["class_name"])
    gm.train(modules[""].training)
    attributes = {k: _decode(v) for k, v in record["attributes"].items()}
    snn = SpikingNetwork(gm, attributes.get("T", 1), attributes.get("chunk"))
    for key, value in attributes.items():
        snn.__dict__[key] = value
    snn.train(record["training"])
    return snn


def load_snn(path, map_location: Optional[object] = None):
    """Load a ``SpikingNetwork`` written by ``save_snn`` / ``snn.save``: ``[B, ...] -> [T, B, ...]``
    as before saving, bit for bit; T, chunk, thresholds and amplitudes (calibrated ones included)
    are those saved. Tensors load on the CPU unless ``map_location`` says otherwise (it is passed
    to ``torch.load``). The file is read with ``weights_only=True``.

    Raises ``SerializationError`` (a ValueError) for a file that is not such a network or has
    another format version."""
    where = repr(path) if isinstance(path, (str, bytes)) or hasattr(path, "__fspath__") else "the file"
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # not a torch file, or one holding code (weights_only refuses it)
        raise SerializationError(
            f"{where} is not a na_kernels SpikingNetwork file ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "write one with snn.save(path)"
        ) from error
    return snn_from_record(record, where)
