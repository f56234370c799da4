"""The plain-data record of a converted network: what ``save_snn`` writes and ``load_snn``
reads back (``na_kernels.io.serialize`` has the file format, the loader and the rules).

This half, the record of a network and the vocabulary of what the format accepts, sits below
``SpikingNetwork`` so that ``SpikingNetwork.save`` can call it; the loader, which builds a
``SpikingNetwork``, sits above it in ``na_kernels.io``.
"""

import builtins
import math
import operator

import torch
from torch import fx, nn
from torch.nn import functional as F

from .. import __version__
from ..nn.if_layer import IFLayer
from .base import SpikingNetworkBase, TimeRepeat
from .stats import SynapseMeter

FORMAT = "na_kernels.SpikingNetwork"


FORMAT_VERSION = 1


ALLOWED_MODULES = (
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
    "Module",
)


ALLOWED_FUNCTIONS = {
    "_operator": (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "neg",
        "pos",
        "matmul",
        "getitem",
        "iadd",
        "isub",
        "imul",
        "itruediv",
    ),
    "builtins": ("getattr",),
    "math": ("sqrt",),
    "torch": (
        "add",
        "sub",
        "mul",
        "div",
        "cat",
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
    ),
    "torch.nn.functional": (
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
    ),
}


ALLOWED_GETATTR = ("shape", "ndim", "dtype", "device", "T", "mT", "real")


FUNCTION_MODULES = {"_operator": operator, "builtins": builtins, "math": math, "torch": torch, "torch.nn.functional": F}


MODULE_BASE_KEYS = frozenset(nn.Module().__dict__)


_HOOK_KEYS = tuple(k for k in MODULE_BASE_KEYS if k.endswith("hooks"))


TRANSIENT = {"v": None, "_ones": None, "_calibrated_versions": None, "_calibrated": None}


RESTORED = {"na_kernels.nn.IFLayer": ("v",), "na_kernels.nn.SynapseMeter": ("_ones",)}


DTYPES = {
    str(d).replace("torch.", ""): d
    for d in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    )
}


class SerializationError(ValueError):
    """A network that cannot be saved in the format, or a file that is not one."""


def own_classes():
    return {f"na_kernels.nn.{c.__name__}": c for c in (IFLayer, TimeRepeat, SynapseMeter)}


def _class_name(module: nn.Module, where: str) -> str:
    cls = type(module)
    own = {c: name for name, c in own_classes().items()}
    if cls in own:
        return own[cls]
    if cls.__name__ in ALLOWED_MODULES and getattr(nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    raise SerializationError(
        f"{where}: {cls.__module__}.{cls.__qualname__} is not a module save_snn can rebuild without its code "
        f"(accepted: torch.nn.{{{', '.join(ALLOWED_MODULES)}}} and na_kernels' IFLayer, TimeRepeat, "
        "SynapseMeter); use torch.save(snn) and torch.load(path, weights_only=False) with the code importable"
    )


def resolve_class(name: str):
    own = own_classes()
    if name in own:
        return own[name]
    prefix, _, short = name.rpartition(".")
    if prefix == "torch.nn" and short in ALLOWED_MODULES:
        return getattr(nn, short)
    raise SerializationError(f"the file names a module type {name!r} that load_snn does not rebuild")


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


def _function_name(target, where):
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", "")
    if module == "torch._C._nn" or (module == "" and getattr(torch, name, None) is target):
        module = "torch"  # builtins such as torch.flatten report no module
    for candidate, owner in FUNCTION_MODULES.items():
        if name in ALLOWED_FUNCTIONS[candidate] and getattr(owner, name, None) is target:
            return f"{candidate}:{name}"
    raise SerializationError(
        f"{where}: calls {module}.{name}, which save_snn does not write (accepted: operator arithmetic, getattr, "
        "and the torch / torch.nn.functional functions in na_kernels.io.serialize.ALLOWED_FUNCTIONS)"
    )


def _describe_module(name, module, modules):
    where = f"module {name or '<root>'}"
    for key in _HOOK_KEYS:
        if getattr(module, key, None):
            raise SerializationError(f"{where} has {key} registered: hooks are code and are not saved; remove them")
    attributes = {}
    for key, value in module.__dict__.items():
        if key in MODULE_BASE_KEYS or key in TRANSIENT or name == "":  # the root: the fx code is rebuilt
            continue
        attributes[key] = _encode(value, f"{where}, attribute {key}", modules)
    return dict(
        name=name,
        type="torch.nn.Module" if name == "" else _class_name(module, where),
        training=module.training,
        attributes=attributes,
        parameters={
            k: (v.detach().cpu().clone(), v.requires_grad) for k, v in module._parameters.items() if v is not None
        },
        buffers={k: v.detach().cpu().clone() for k, v in module._buffers.items() if v is not None},
        non_persistent=sorted(module._non_persistent_buffers_set),
    )


def _describe_graph(graph: fx.Graph):
    nodes = []
    for node in graph.nodes:
        where = f"fx node {node.name!r}"
        if node.op == "call_function":
            target = _function_name(node.target, where)
            check_getattr(target, node.args, where)
        elif node.op == "call_method":
            if node.target.startswith("_") or not hasattr(torch.Tensor, node.target):
                raise SerializationError(f"{where}: Tensor.{node.target} is not a public torch.Tensor method")
            target = node.target
        else:
            target = node.target
        nodes.append(
            dict(
                op=node.op,
                name=node.name,
                target=target,
                args=_encode(node.args, where),
                kwargs=_encode(dict(node.kwargs), where),
            )
        )
    return nodes


def snn_record(snn) -> dict:
    """The plain-data record ``save_snn`` writes (see the module docstring for its fields)."""
    if not isinstance(snn, SpikingNetworkBase):
        raise TypeError(f"save_snn expects a SpikingNetwork (from to_snn), got {type(snn).__name__}")
    gm = snn.network
    names = {id(module): name for name, module in gm.named_modules()}
    attributes = {}
    for key, value in snn.__dict__.items():
        if key in MODULE_BASE_KEYS or key in TRANSIENT:
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


def check_getattr(spelled, args, where):
    if spelled == "builtins:getattr" and (len(args) != 2 or args[1] not in ALLOWED_GETATTR):
        raise SerializationError(f"{where}: getattr{tuple(args)!r:.80} reads an attribute outside {ALLOWED_GETATTR}")


def save_snn(snn, path) -> None:
    """Write a converted ``SpikingNetwork`` to ``path`` (a file name or a binary file object).

    The file holds tensors and plain data only (``torch.save`` of ``snn_record(snn)``);
    ``load_snn`` rebuilds the network from it without the model's code. Raises
    ``SerializationError`` (a ValueError) naming the module or fx node that the format cannot
    describe (a custom module, a function outside ``ALLOWED_FUNCTIONS``, a hook)."""
    torch.save(snn_record(snn), path)
