"""replace_activations: swap a model's ReLUs for NoisyQuant, modules and functional calls.

Module ReLUs (``nn.ReLU`` exactly) are swapped in place. ``F.relu`` / ``torch.relu`` /
``Tensor.relu`` calls live in ``forward`` code, which only ``torch.fx`` can rewrite: when
there are any, the returned model is a ``torch.fx.GraphModule`` with a NoisyQuant submodule
per call. Anything that cannot become an IF neuron (ReLU6, GELU, LeakyReLU, a ReLU subclass
with its own forward, ...) raises ``UnconvertibleActivationError`` listing every such site by
its qualified name, unless the caller leaves it (``skip=`` names or
``allow_unconvertible=True``). Nothing is ever skipped silently.
"""
import dataclasses
import fnmatch
import warnings
from typing import Iterable, List, Tuple

import torch
from torch import fx, nn
from torch.nn import functional as F

from .noisy_quant import NoisyQuant

# Activation modules with no IF-neuron equivalent (checked with isinstance, after nn.ReLU).
UNCONVERTIBLE_MODULES = (
    nn.ReLU6, nn.Hardtanh, nn.GELU, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Threshold, nn.GLU,
    nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink,
)
RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_, torch.nn.functional.relu)
RELU_METHODS = ("relu", "relu_")
UNCONVERTIBLE_FUNCTIONS = (
    F.relu6, F.hardtanh, F.hardtanh_, F.gelu, F.leaky_relu, F.leaky_relu_, F.prelu, F.rrelu, F.elu, F.elu_, F.selu,
    F.celu, F.silu, F.mish, F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus,
    F.threshold, F.glu, F.logsigmoid, F.softsign, F.tanhshrink, F.hardshrink, F.softshrink,
)
# torch.nn modules (fx leaves) whose forward calls ``self.activation``, a function by default
FUNCTIONAL_ACTIVATION_HOLDERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
UNCONVERTIBLE_METHODS = ("relu6", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh", "hardtanh_")


class UnconvertibleActivationError(ValueError):
    """Raised when a model holds activations that cannot become IF neurons."""


@dataclasses.dataclass
class ReplacementReport:
    """What ``replace_activations`` did.

    replaced: ``(qualified name, what it was)`` for each new NoisyQuant.
    pooling: qualified names of MaxPool2d modules swapped for AvgPool2d.
    left: ``(qualified name, what it is, why)`` for each site left as it was.
    functional_checked: whether forward code was traced for F.relu calls.
    """

    replaced: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    pooling: List[str] = dataclasses.field(default_factory=list)
    left: List[Tuple[str, str, str]] = dataclasses.field(default_factory=list)
    functional_checked: bool = True

    def __str__(self):
        lines = [f"replaced {len(self.replaced)} activation(s) with NoisyQuant:"]
        lines += [f"  {name}: {kind}" for name, kind in self.replaced]
        if self.pooling:
            lines.append(f"replaced {len(self.pooling)} MaxPool2d with AvgPool2d: " + ", ".join(self.pooling))
        if self.left:
            lines.append(f"left {len(self.left)} site(s) unconverted:")
            lines += [f"  {name}: {kind} ({why})" for name, kind, why in self.left]
        if not self.functional_checked:
            lines.append("forward code was NOT traced: F.relu / torch.relu calls were not looked for")
        return "\n".join(lines)


class ActivationTracer(fx.Tracer):
    """fx tracer that keeps NoisyQuant (and any ``leaf_types``) as opaque leaf modules."""

    def __init__(self, leaf_types=()):
        super().__init__()
        self.leaf_types = (NoisyQuant,) + tuple(leaf_types)

    def is_leaf_module(self, m, module_qualified_name):
        if isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, leaf_types=()) -> fx.GraphModule:
    """Symbolically trace ``model`` with NoisyQuant kept as a leaf; clear error on failure."""
    tracer = ActivationTracer(leaf_types)
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


def node_owner(node: fx.Node) -> str:
    """Qualified name of the module whose forward made a call_function/call_method node."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        return str(path)
    return ""


def site_name(node: fx.Node) -> str:
    owner = node_owner(node)
    return f"{owner}.{node.name}" if owner else node.name


def describe_call(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}()"
    module = getattr(node.target, "__module__", "") or ""
    prefix = "F" if module.endswith("functional") else "torch"
    return f"{prefix}.{getattr(node.target, '__name__', node.target)}()"


def is_relu_call(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    return node.op == "call_method" and node.target in RELU_METHODS


def is_unconvertible_call(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in UNCONVERTIBLE_FUNCTIONS
    return node.op == "call_method" and node.target in UNCONVERTIBLE_METHODS


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _has_own_forward(module: nn.Module) -> bool:
    return type(module).forward is not nn.ReLU.forward


def _set_submodule(model: nn.Module, name: str, new: nn.Module):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _avgpool_for(pool: nn.MaxPool2d, name: str) -> nn.AvgPool2d:
    dilation = pool.dilation if isinstance(pool.dilation, tuple) else (pool.dilation,) * 2
    if any(d != 1 for d in dilation) or pool.return_indices:
        raise UnconvertibleActivationError(
            f"{name}: MaxPool2d with dilation {pool.dilation} / return_indices={pool.return_indices} "
            "has no AvgPool2d equivalent"
        )
    return nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode, count_include_pad=False)


def replace_activations(
    model: nn.Module,
    p: int,
    *,
    noise="uniform",
    lam=8.0,
    scale: float = 1.0,
    per_channel: bool = False,
    maxpool_to_avgpool: bool = False,
    skip: Iterable[str] = (),
    allow_unconvertible: bool = False,
    trace_functional: bool = True,
):
    """Replace every ReLU of ``model`` by ``NoisyQuant(p, lam, noise, scale, per_channel)``.

    Each replaced site computes ``y = clamp(floor(x*p/λ + scale*ε + 0.5), 0, p) * λ/p`` (shape of
    x) with its own λ; a ReLU module called at several sites stays one module (one λ) as before.

    Args:
        model: the network; its ``nn.ReLU`` modules are swapped in place.
        p, noise, lam, scale, per_channel: NoisyQuant's arguments for every new activation.
        maxpool_to_avgpool: also swap ``nn.MaxPool2d`` for ``nn.AvgPool2d`` (same kernel, stride,
            padding); max pooling has no rate-coded SNN equivalent.
        skip: qualified names (fnmatch patterns, e.g. ``"head.*"``) of sites to leave as they
            are: ReLUs there are not replaced and unconvertible activations there do not raise.
            For functional calls the name is ``<owner module>.<fx node name>`` (e.g.
            ``"block.relu_1"``), as printed in the report and in errors.
        allow_unconvertible: leave every unconvertible activation in place (with a warning and
            an entry in ``report.left``) instead of raising.
        trace_functional: trace forward code with torch.fx to find ``F.relu``/``torch.relu``/
            ``Tensor.relu`` calls. False leaves such calls unchecked (``report.functional_checked``).

    Returns:
        ``(model, report)``: the same model object when only modules were swapped, else a
        ``torch.fx.GraphModule`` (functional calls rewritten); a ``ReplacementReport``.

    Raises:
        UnconvertibleActivationError naming every unconvertible site, or RuntimeError when
        tracing fails (pass ``trace_functional=False`` to convert modules only).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    skip = tuple(skip) if not isinstance(skip, str) else (skip,)

    def make():
        return NoisyQuant(p, lam=lam, noise=noise, scale=scale, per_channel=per_channel)

    make()  # validate the arguments before touching the model
    report = ReplacementReport()
    problems = []

    def unconvertible(name, kind):
        if _matches(name, skip):
            report.left.append((name, kind, "skipped by the caller"))
        elif allow_unconvertible:
            report.left.append((name, kind, "unconvertible, allowed by the caller"))
        else:
            problems.append(f"{name}: {kind}")

    for name, module in list(model.named_modules()):
        if not name:
            continue
        kind = type(module).__name__
        if isinstance(module, nn.ReLU):
            if type(module) is not nn.ReLU and _has_own_forward(module):
                unconvertible(name, f"{kind} (a ReLU subclass with its own forward)")
            elif _matches(name, skip):
                report.left.append((name, kind, "skipped by the caller"))
            else:
                _set_submodule(model, name, make())
                report.replaced.append((name, kind))
        elif isinstance(module, UNCONVERTIBLE_MODULES):
            unconvertible(name, kind)
        elif isinstance(module, FUNCTIONAL_ACTIVATION_HOLDERS) and not isinstance(module.activation, nn.Module):
            # torch.nn leaves that call an activation function internally: fx cannot see into them
            function = getattr(module.activation, "__name__", repr(module.activation))
            unconvertible(name, f"{kind} (calls {function} internally)")
        elif isinstance(module, nn.MaxPool2d) and maxpool_to_avgpool and not _matches(name, skip):
            _set_submodule(model, name, _avgpool_for(module, name))
            report.pooling.append(name)

    result = model
    if trace_functional:
        graph_module = trace(model)
        rewrite = []
        for node in graph_module.graph.nodes:
            if is_relu_call(node):
                name = site_name(node)
                if _matches(name, skip):
                    report.left.append((name, describe_call(node), "skipped by the caller"))
                else:
                    rewrite.append(node)
            elif is_unconvertible_call(node):
                unconvertible(site_name(node), describe_call(node))
        if problems:
            _raise(problems)
        if rewrite:
            for node in rewrite:
                owner = node_owner(node)
                target = f"{owner}.{node.name}" if owner else node.name
                target = free_submodule_name(graph_module, target)
                graph_module.add_submodule(target, make())
                with graph_module.graph.inserting_before(node):
                    new = graph_module.graph.call_module(target, (node.args[0],))
                new.meta = dict(node.meta)
                node.replace_all_uses_with(new)
                graph_module.graph.erase_node(node)
                report.replaced.append((target, describe_call(node)))
            graph_module.graph.lint()
            graph_module.recompile()
            graph_module.train(model.training)
            result = graph_module
    else:
        report.functional_checked = False
        warnings.warn("replace_activations(trace_functional=False): F.relu / torch.relu calls were not looked for")
    if problems:
        _raise(problems)
    for name, kind, why in report.left:
        if "allowed" in why:
            warnings.warn(f"replace_activations left {name} ({kind}) unconverted: allow_unconvertible=True")
    return result, report


def free_submodule_name(graph_module, target):
    """``target``, or ``target_1``, ``target_2``, ... : the first name no submodule has yet."""
    candidate, index = target, 1
    while True:
        try:
            graph_module.get_submodule(candidate)
        except AttributeError:
            return candidate
        candidate, index = f"{target}_{index}", index + 1


def _raise(problems):
    listing = "\n  ".join(problems)
    raise UnconvertibleActivationError(
        f"{len(problems)} activation(s) cannot be converted to IF neurons:\n  {listing}\n"
        "Replace them in the model (NoisyQuant is a ReLU), or leave them with "
        "skip=[names] / allow_unconvertible=True"
    )
