"""torch.fx helpers shared by replace_activations, BatchNorm folding and to_snn.

Tracing with NoisyQuant kept as a leaf (and ``na_kernels.noisy_quant`` calls kept as one node),
evaluating the weight-only arguments of a call (its λ), the names a node is reported by, matching calls
against the tables of what can (ReLU) and cannot (ReLU6, GELU, ...) become an IF neuron,
numbering the call sites of a module, and finding free submodule names.
"""

import inspect
from typing import Iterable, List, Tuple

import torch
from torch import fx, nn
from torch.nn import functional as F

from ..ops.noisy_quant import noisy_quant
from .noisy_quant import NoisyQuant

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SYNAPTIC_TYPES = CONV_TYPES + (nn.Linear,)  # the layers spikes reach through synapses

# Activation modules with no IF-neuron equivalent (checked with isinstance, after nn.ReLU and the
# clip activations ReLU6 / Hardtanh(0, a), which clip_module_level recognises first).
UNCONVERTIBLE_MODULES = (
    nn.ReLU6,
    nn.Hardtanh,
    nn.GELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Threshold,
    nn.GLU,
    nn.LogSigmoid,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Hardshrink,
    nn.Softshrink,
)
RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_, torch.nn.functional.relu)
RELU_METHODS = ("relu", "relu_")
UNCONVERTIBLE_FUNCTIONS = (
    F.relu6,
    F.hardtanh,
    F.hardtanh_,
    F.gelu,
    F.leaky_relu,
    F.leaky_relu_,
    F.prelu,
    F.rrelu,
    F.elu,
    F.elu_,
    F.selu,
    F.celu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.tanh,
    F.softplus,
    F.threshold,
    F.glu,
    F.logsigmoid,
    F.softsign,
    F.tanhshrink,
    F.hardshrink,
    F.softshrink,
)
UNCONVERTIBLE_METHODS = ("relu6", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh", "hardtanh_")


# ---------------------------------------------------------------------------------- tracing


class ActivationTracer(fx.Tracer):
    """fx tracer that keeps NoisyQuant as an opaque leaf module."""

    def is_leaf_module(self, m, module_qualified_name):
        """NoisyQuant and torch.nn's own modules are leaves."""
        return isinstance(m, NoisyQuant) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` with NoisyQuant kept as a leaf; clear error on failure."""
    tracer = ActivationTracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises many types (TraceError, TypeError, ...)
        raise RuntimeError(
            f"torch.fx could not trace {type(model).__name__}.forward ({type(error).__name__}: {error}). "
            "Conversion needs a traceable forward (no data-dependent Python control flow); move such code "
            "into a leaf module or make it traceable"
        ) from error
    name = model.__class__.__name__ if isinstance(model, nn.Module) else "GraphModule"
    return fx.GraphModule(tracer.root, graph, name)


# ---------------------------------------------------------------------------------- node names


def node_owner(node: fx.Node) -> str:
    """Qualified name of the module whose forward made a call_function/call_method node."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        return str(path)
    return ""


def site_name(node: fx.Node) -> str:
    """``<owner module>.<node name>`` (or the node name at top level): how a call is reported."""
    owner = node_owner(node)
    return f"{owner}.{node.name}" if owner else node.name


def describe_call(node: fx.Node) -> str:
    """What a call_function/call_method node calls, as a user wrote it: ``F.relu()``, ``Tensor.relu()``."""
    if node.op == "call_method":
        return f"Tensor.{node.target}()"
    module = getattr(node.target, "__module__", "") or ""
    name = getattr(node.target, "__name__", node.target)
    # F.linear / F.conv2d are torch._C builtins: known by the name F gives them
    prefix = "F" if module.endswith("functional") or getattr(F, str(name), None) is node.target else "torch"
    return f"{prefix}.{name}()"


# ---------------------------------------------------------------------------------- call matching


def _calls(node: fx.Node, functions, methods) -> bool:
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def is_relu_call(node: fx.Node) -> bool:
    """``F.relu`` / ``torch.relu`` / ``Tensor.relu`` (in-place forms included)."""
    return _calls(node, RELU_FUNCTIONS, RELU_METHODS)


def is_unconvertible_call(node: fx.Node) -> bool:
    """A functional activation with no IF-neuron equivalent (``F.gelu``, ``torch.sigmoid``, ...)."""
    return _calls(node, UNCONVERTIBLE_FUNCTIONS, UNCONVERTIBLE_METHODS)


def clip_module_level(module: nn.Module):
    """The clip level a of a clip activation module (``nn.ReLU6``: 6, ``nn.Hardtanh(0, a)``: a),
    None for anything else: ``clamp(x, 0, a)`` is NoisyQuant's clipped ReLU with λ = a."""
    if type(module) in (nn.ReLU6, nn.Hardtanh) and module.min_val == 0 and module.max_val > 0:
        return float(module.max_val)
    return None


def clip_call_level(node: fx.Node):
    """The clip level of ``F.relu6(x)`` (6) or ``F.hardtanh(x, 0, a)`` (a, a constant > 0), else None."""
    if node.op != "call_function":
        return None
    if node.target is F.relu6:
        return 6.0
    if node.target in (F.hardtanh, F.hardtanh_):
        bounds = dict(zip(("input", "min_val", "max_val"), node.args))
        bounds.update(node.kwargs)
        low, high = bounds.get("min_val", -1.0), bounds.get("max_val", 1.0)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) and low == 0 and high > 0:
            return float(high)
    return None


def is_noisy_quant_call(node: fx.Node) -> bool:
    """A call of the functional ``na_kernels.noisy_quant`` (an activation site, as NoisyQuant)."""
    return node.op == "call_function" and node.target is noisy_quant


def noisy_quant_arguments(node: fx.Node) -> dict:
    """The arguments of a traced ``noisy_quant`` call by name (defaults filled in)."""
    parameters = inspect.signature(noisy_quant).parameters  # the defaults, stated once: in the signature
    arguments = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    arguments.update(zip(parameters, node.args))
    arguments.update(node.kwargs)
    return arguments


def constant_value(gm: fx.GraphModule, value, where: str):
    """The value of a graph argument that depends on the weights only (a parameter or buffer, an
    expression of them such as ``softplus(raw) + c``, or a plain Python value), evaluated now.

    Raises a ValueError naming ``where`` when it depends on the model's input."""

    def evaluate(node):
        if node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        if node.op == "placeholder":
            raise ValueError(
                f"{where}: the value depends on the model's input ({node.name}); it must be a constant, "
                "a parameter or a buffer (or an expression of them)"
            )
        args = fx.node.map_arg(node.args, evaluate)
        kwargs = fx.node.map_arg(node.kwargs, evaluate)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            return gm.get_submodule(node.target)(*args, **kwargs)
        raise ValueError(f"{where}: cannot evaluate graph node {node.name} ({node.op})")

    with torch.no_grad():
        return fx.node.map_arg(value, evaluate)


def module_calls(gm: fx.GraphModule, types) -> List[fx.Node]:
    """The call_module nodes of ``gm`` whose module is an instance of ``types``, in graph order."""
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), types)]


def number_call_sites(nodes: Iterable[fx.Node]) -> List[Tuple[fx.Node, str]]:
    """``(node, site)`` per call_module node: the first call of a module is named by its target,
    the n-th by ``<target>_call<n>`` (a module called at two sites gives two names)."""
    seen, sites = {}, []
    for node in nodes:
        index = seen.get(node.target, 0)
        seen[node.target] = index + 1
        sites.append((node, node.target if index == 0 else f"{node.target}_call{index + 1}"))
    return sites


# ---------------------------------------------------------------------------------- submodules


def free_submodule_name(graph_module: nn.Module, target: str) -> str:
    """``target``, or ``target_1``, ``target_2``, ... : the first name no submodule has yet."""
    candidate, index = target, 1
    while True:
        try:
            graph_module.get_submodule(candidate)
        except AttributeError:
            return candidate
        candidate, index = f"{target}_{index}", index + 1


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at the qualified ``name`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
