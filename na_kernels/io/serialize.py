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
from typing import Optional

import torch
from torch import fx, nn

from .. import __version__
from ..snn.network import SpikingNetwork
from ..snn.record import (ALLOWED_FUNCTIONS, ALLOWED_GETATTR, ALLOWED_MODULES, DTYPES, FORMAT, FORMAT_VERSION,
                          FUNCTION_MODULES, MODULE_BASE_KEYS, RESTORED, TRANSIENT, SerializationError, check_getattr,
                          resolve_class, save_snn, snn_record)

__all__ = ["save_snn", "load_snn", "snn_record", "snn_from_record", "SerializationError", "FORMAT", "FORMAT_VERSION",
           "ALLOWED_MODULES", "ALLOWED_FUNCTIONS", "ALLOWED_GETATTR"]


# torch.nn layers a converted network may hold (constructed from their saved attributes)
# call_function targets a graph may hold, by module
# attribute names getattr(value, name) may read in a graph (tensor metadata only)
# per-run state and caches: not saved; restored to these values on load where the class has them


# ---------------------------------------------------------------------------------- plain values


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
        return DTYPES[value["__dtype__"]]
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__tensor__" in value:
        return value["__tensor__"]
    raise SerializationError(f"unknown value record {sorted(value)} in the file")


def _resolve_function(spelled):
    module, _, name = spelled.partition(":")
    if module not in ALLOWED_FUNCTIONS or name not in ALLOWED_FUNCTIONS[module]:
        raise SerializationError(f"the file calls {spelled!r}, which load_snn does not accept")
    return getattr(FUNCTION_MODULES[module], name)


# ---------------------------------------------------------------------------------- load
# (save_snn and the record it writes: na_kernels.snn.record)


def _build_module(record):
    """The module of ``record`` with its parameters and buffers; its plain attributes are set by
    ``_set_attributes`` once every module exists (an attribute may name another module)."""
    cls = nn.Module if record["type"] == "torch.nn.Module" else resolve_class(record["type"])
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key in record["attributes"]:
        if key in MODULE_BASE_KEYS:
            raise SerializationError(f"module {record['name']!r}: the file overrides nn.Module's own {key!r}")
    for key, (tensor, requires_grad) in record["parameters"].items():
        module.register_parameter(key, nn.Parameter(tensor, requires_grad=requires_grad))
    for key, tensor in record["buffers"].items():
        module.register_buffer(key, tensor, persistent=key not in record["non_persistent"])
    for key in RESTORED.get(record["type"], ()):
        module.__dict__[key] = TRANSIENT[key]
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
            check_getattr(entry["target"], args, f"{where}: fx node {entry['name']!r}")
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
