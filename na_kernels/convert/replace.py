"""replace_activations: swap a model's ReLUs for NoisyQuant, modules and functional calls.

Module ReLUs (``nn.ReLU`` exactly) are swapped in place; so are the clip activations
``nn.ReLU6`` and ``nn.Hardtanh(0, a)`` (and ``F.relu6`` / ``F.hardtanh(x, 0, a)`` calls):
``clamp(x, 0, a)`` is NoisyQuant's clipped ReLU, so they become NoisyQuant with λ starting at
the clip level a (6 for ReLU6) whatever ``lam`` says. ``F.relu`` / ``torch.relu`` /
``Tensor.relu`` calls live in ``forward`` code, which only ``torch.fx`` can rewrite: when
there are any, the returned model is a ``torch.fx.GraphModule`` with a NoisyQuant submodule
per call. Anything that cannot become an IF neuron (GELU, LeakyReLU, Hardtanh(-1, 1), a ReLU subclass
with its own forward, ...) raises ``UnconvertibleActivationError`` listing every such site by
its qualified name, unless the caller leaves it (``skip=`` names or
``allow_unconvertible=True``). Nothing is ever skipped silently.
"""

import copy
import dataclasses
import fnmatch
import operator
import warnings
from typing import Dict, Iterable, List, Tuple

import torch
from torch import fx, nn

from ..nn.fx_utils import (
    UNCONVERTIBLE_MODULES,
    clip_call_level,
    clip_module_level,
    describe_call,
    free_submodule_name,
    is_noisy_quant_call,
    is_relu_call,
    is_unconvertible_call,
    set_submodule,
    site_name,
    trace,
)
from ..nn.noisy_quant import NoisyQuant

# torch.nn modules (fx leaves) whose forward calls ``self.activation``, a function by default
FUNCTIONAL_ACTIVATION_HOLDERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


class UnconvertibleActivationError(ValueError):
    """Raised when a model holds activations that cannot become IF neurons."""


@dataclasses.dataclass
class ReplacementReport:
    """What ``replace_activations`` did.

    replaced: ``(qualified name, what it was)`` for each new NoisyQuant.
    pooling: qualified names of MaxPool2d modules swapped for AvgPool2d.
    left: ``(qualified name, what it is, why)`` for each site left as it was.
    kept: ``(qualified name, what it is)`` for each site that already is an activation the
        converter takes (a NoisyQuant module, a functional ``noisy_quant`` call).
    call_sites: qualified name -> the number of places the traced forward calls it, for each
        replaced activation (empty when forward code was not traced).
    clip_levels: qualified name -> a, for the clip activations (ReLU6, Hardtanh(0, a)) replaced.
    functional_checked: whether forward code was traced for F.relu calls.
    fused: ``(activation, batchnorm)`` qualified names of each NoisyQuant computed in one op with
        the BatchNorm before it (``fuse_batchnorm=True``).
    """

    replaced: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    pooling: List[str] = dataclasses.field(default_factory=list)
    left: List[Tuple[str, str, str]] = dataclasses.field(default_factory=list)
    kept: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    call_sites: Dict[str, int] = dataclasses.field(default_factory=dict)
    clip_levels: Dict[str, float] = dataclasses.field(default_factory=dict)
    functional_checked: bool = True
    fused: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

    def __str__(self):
        if self.functional_checked:
            sites = sum(self.call_sites.values())
            lines = [f"replaced {len(self.replaced)} activation(s) at {sites} call site(s) with NoisyQuant:"]
        else:
            lines = [f"replaced {len(self.replaced)} activation(s) with NoisyQuant (call sites not counted):"]
        for name, kind in self.replaced:
            calls = self.call_sites.get(name, 1)
            lines.append(f"  {name}: {kind}" + (f" (called at {calls} sites, one λ)" if calls > 1 else ""))
        if self.pooling:
            lines.append(f"replaced {len(self.pooling)} MaxPool2d with AvgPool2d: " + ", ".join(self.pooling))
        if self.kept:
            lines.append(
                f"kept {len(self.kept)} site(s) that already are quantized activations: "
                + ", ".join(f"{name} ({kind})" for name, kind in self.kept)
            )
        if self.left:
            lines.append(f"left {len(self.left)} site(s) unconverted:")
            lines += [f"  {name}: {kind} ({why})" for name, kind, why in self.left]
        if self.fused:
            lines.append(
                f"fused {len(self.fused)} activation(s) with their BatchNorm: "
                + ", ".join(f"{bn} -> {name}" for name, bn in self.fused)
            )
        if not self.functional_checked:
            lines.append("forward code was NOT traced: F.relu / torch.relu calls were not looked for")
        return "\n".join(lines)


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _has_own_forward(module: nn.Module) -> bool:
    return type(module).forward is not nn.ReLU.forward


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
    scale=None,
    per_channel: bool = False,
    maxpool_to_avgpool: bool = False,
    skip: Iterable[str] = (),
    allow_unconvertible: bool = False,
    trace_functional: bool = True,
    per_call_site: bool = False,
    fuse_batchnorm: bool = False,
):
    """Replace every ReLU of ``model`` by ``NoisyQuant(p, lam, noise, scale, per_channel)``, and
    every clip activation (ReLU6, Hardtanh(0, a), F.relu6, F.hardtanh(x, 0, a)) by one with λ = a.

    Each replaced site computes ``y = clamp(floor(x*p/λ + scale*ε + 0.5), 0, p) * λ/p`` (shape of
    x) with its own λ; a ReLU module called at several sites (torchvision's BasicBlock calls one
    ``self.relu`` twice) stays one module with one λ shared by its call sites, unless
    ``per_call_site``. The report counts both: "replaced 9 activation(s) at 17 call site(s)".

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
            ``Tensor.relu`` calls. False leaves such calls unchecked (``report.functional_checked``)
            and call sites uncounted.
        per_call_site: give every call site of a module called more than once its own NoisyQuant
            (own λ): the first keeps the module's name, the n-th is ``<name>_call<n>`` (the names
            ``to_snn`` gives its IF layers); the model then comes back as a GraphModule.
        fuse_batchnorm: compute each ``BatchNorm -> NoisyQuant`` and ``BatchNorm -> add(residual) ->
            NoisyQuant`` chain (the BatchNorm's output used there only) with one
            ``batchnorm_noisy_quant`` op, the same numbers up to BatchNorm's rounding in a faster
            training step with less memory. The model comes back as a GraphModule with the same
            modules and state-dict keys (a checkpoint loads into either), and ``to_snn`` converts it
            exactly as the unfused model.

    Returns:
        ``(model, report)``: the same model object when only modules were swapped, else a
        ``torch.fx.GraphModule`` (functional calls rewritten); a ``ReplacementReport``.

    Raises:
        UnconvertibleActivationError naming every unconvertible site, or RuntimeError when
        tracing fails (pass ``trace_functional=False`` to convert modules only).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")

    def make(clip=None):  # a clip activation clamp(x, 0, a) starts from λ = a
        return NoisyQuant(p, lam=lam if clip is None else clip, noise=noise, scale=scale, per_channel=per_channel)

    make()  # validate the arguments before touching the model
    sites = _Sites(skip, allow_unconvertible)
    _swap_modules(model, make, sites, maxpool_to_avgpool)
    result = model
    if trace_functional:
        result = _rewrite_calls(model, make, sites, per_call_site)
    else:
        sites.report.functional_checked = False
        warnings.warn(
            "replace_activations(trace_functional=False): F.relu / torch.relu calls were not looked for", stacklevel=2
        )
    sites.raise_problems()
    if fuse_batchnorm:
        result = _fuse_batchnorm(result, sites.report)
    for name, kind, why in sites.report.left:
        if "allowed" in why:
            warnings.warn(
                f"replace_activations left {name} ({kind}) unconverted: allow_unconvertible=True", stacklevel=2
            )
    return result, sites.report


class _Sites:
    """The caller's skip patterns and allowance, the report, and the unconvertible sites found."""

    def __init__(self, skip, allow_unconvertible):
        self.skip = tuple(skip) if not isinstance(skip, str) else (skip,)
        self.allow_unconvertible = allow_unconvertible
        self.report = ReplacementReport()
        self.problems = []

    def skipped(self, name, kind) -> bool:
        """Whether the caller skips ``name`` (then it is recorded as left)."""
        if not _matches(name, self.skip):
            return False
        self.report.left.append((name, kind, "skipped by the caller"))
        return True

    def unconvertible(self, name, kind):
        if self.skipped(name, kind):
            return
        if self.allow_unconvertible:
            self.report.left.append((name, kind, "unconvertible, allowed by the caller"))
        else:
            self.problems.append(f"{name}: {kind}")

    def raise_problems(self):
        if self.problems:
            listing = "\n  ".join(self.problems)
            raise UnconvertibleActivationError(
                f"{len(self.problems)} activation(s) cannot be converted to IF neurons:\n  {listing}\n"
                "Replace them in the model by ReLU / ReLU6 / Hardtanh(0, a) and retrain, or leave them "
                "with skip=[names] / allow_unconvertible=True to keep training the ANN as it is "
                "(to_snn refuses them all the same: an SNN has no equivalent)"
            )


def _swap_modules(model, make, sites, maxpool_to_avgpool):
    """Swap, in place, each ``nn.ReLU`` module for ``make()`` (and MaxPool2d for AvgPool2d when asked)."""
    for name, module in list(model.named_modules()):
        if not name:
            continue
        kind = type(module).__name__
        if isinstance(module, NoisyQuant):
            sites.report.kept.append((name, kind))
        elif isinstance(module, nn.ReLU):
            if type(module) is not nn.ReLU and _has_own_forward(module):
                sites.unconvertible(name, f"{kind} (a ReLU subclass with its own forward)")
            elif not sites.skipped(name, kind):
                set_submodule(model, name, make().train(module.training))  # an eval model stays in eval
                sites.report.replaced.append((name, kind))
        elif clip_module_level(module) is not None:
            clip = clip_module_level(module)
            if not sites.skipped(name, kind):
                set_submodule(model, name, make(clip).train(module.training))
                sites.report.replaced.append((name, f"{kind} (λ = {clip:g})"))
                sites.report.clip_levels[name] = clip
        elif isinstance(module, UNCONVERTIBLE_MODULES):
            sites.unconvertible(name, kind)
        elif isinstance(module, FUNCTIONAL_ACTIVATION_HOLDERS) and not isinstance(module.activation, nn.Module):
            # torch.nn leaves that call an activation function internally: fx cannot see into them
            function = getattr(module.activation, "__name__", repr(module.activation))
            sites.unconvertible(name, f"{kind} (calls {function} internally)")
        elif isinstance(module, nn.MaxPool2d) and maxpool_to_avgpool and not _matches(name, sites.skip):
            set_submodule(model, name, _avgpool_for(module, name))
            sites.report.pooling.append(name)


def _rewrite_calls(model, make, sites, per_call_site):
    """Trace ``model``, turn each ReLU / clip call into a call of a new ``make()`` submodule and,
    with ``per_call_site``, give each further call of a replaced module its own copy (own λ);
    count the call sites of every replaced module in ``sites.report.call_sites``.

    Returns ``model`` itself when the graph needs no rewrite, else the rewritten GraphModule."""
    graph_module = trace(model)
    rewrite, module_sites = [], {}
    replaced = {name for name, _ in sites.report.replaced}
    for node in graph_module.graph.nodes:
        clip = clip_call_level(node)
        if node.op == "call_module" and node.target in replaced:
            module_sites.setdefault(node.target, []).append(node)
        elif is_relu_call(node) or clip is not None:
            if not sites.skipped(site_name(node), describe_call(node)):
                rewrite.append((node, clip))
        elif is_unconvertible_call(node):
            sites.unconvertible(site_name(node), describe_call(node))
        elif is_noisy_quant_call(node):
            sites.report.kept.append((site_name(node), "noisy_quant()"))
    sites.raise_problems()
    report = sites.report
    report.call_sites = {name: len(module_sites.get(name, ())) for name, _ in report.replaced}
    shared = {name: nodes for name, nodes in module_sites.items() if len(nodes) > 1} if per_call_site else {}
    if not rewrite and not shared:
        return model
    for node, clip in rewrite:
        target = free_submodule_name(graph_module, site_name(node))
        graph_module.add_submodule(target, make(clip))
        with graph_module.graph.inserting_before(node):
            new = graph_module.graph.call_module(target, (node.args[0],))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph_module.graph.erase_node(node)
        kind = describe_call(node) if clip is None else f"{describe_call(node)} (λ = {clip:g})"
        report.replaced.append((target, kind))
        report.call_sites[target] = 1
        if clip is not None:
            report.clip_levels[target] = clip
    kinds = dict(report.replaced)
    for name, nodes in shared.items():
        original = graph_module.get_submodule(name)
        for index, node in enumerate(nodes[1:], start=2):  # named as to_snn names call sites
            target = free_submodule_name(graph_module, f"{name}_call{index}")
            graph_module.add_submodule(target, copy.deepcopy(original))
            node.target = target
            report.replaced.append((target, f"{kinds[name]}, call site {index} of {name}"))
            report.call_sites[target] = 1
            if name in report.clip_levels:
                report.clip_levels[target] = report.clip_levels[name]
        report.call_sites[name] = 1
    graph_module.graph.lint()
    graph_module.recompile()
    graph_module.train(model.training)
    return graph_module


# ------------------------------------------------------------------ BatchNorm fused with NoisyQuant

_ADDS = (operator.add, torch.add)


def _single_call(calls, node, types, gm):
    return (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and type(gm.get_submodule(node.target)) in types
        and len(calls[node.target]) == 1
        and len(node.users) == 1
    )


def _fuse_batchnorm(model, report):
    """Rewrite ``nq(bn(x))`` and ``nq(bn(x) + r)`` into ``nq(x, residual=r)`` with ``nq`` fused with
    ``bn`` (both called once, bn's output used by nq or the add only). Returns the GraphModule."""
    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    batchnorms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    for node in list(gm.graph.nodes):
        if not (
            node.op == "call_module"
            and isinstance(gm.get_submodule(node.target), NoisyQuant)
            and len(calls[node.target]) == 1
        ):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        source, bn_node, residual = node.args[0], None, None
        if _single_call(calls, source, batchnorms, gm):
            bn_node = source
        elif (
            isinstance(source, fx.Node)
            and source.op == "call_function"
            and source.target in _ADDS
            and len(source.args) == 2
            and not source.kwargs
            and len(source.users) == 1
        ):
            a, b = source.args
            if _single_call(calls, a, batchnorms, gm) and isinstance(b, fx.Node):
                bn_node, residual = a, b
            elif _single_call(calls, b, batchnorms, gm) and isinstance(a, fx.Node):
                bn_node, residual = b, a
        if bn_node is None:
            continue
        gm.get_submodule(node.target).fuse_batchnorm(gm.get_submodule(bn_node.target))
        node.args = (bn_node.args[0],)
        node.kwargs = {} if residual is None else {"residual": residual}
        if source is not bn_node:
            gm.graph.erase_node(source)
        gm.graph.erase_node(bn_node)  # the module stays: its state-dict keys too
        report.fused.append((node.target, bn_node.target))
    gm.graph.lint()
    gm.recompile()
    gm.train(model.training)
    return gm


def unfuse_batchnorm(gm: fx.GraphModule, root: nn.Module = None) -> fx.GraphModule:
    """Undo ``fuse_batchnorm`` on ``gm``, a trace of ``root`` (default: gm itself): each fused
    ``nq(x, residual=r)`` call becomes ``nq(bn(x) + r)`` again and the NoisyQuant an activation
    alone (modules changed in place; a BatchNorm the trace left out is put back at its name in root)."""
    names = {id(module): name for name, module in (root if root is not None else gm).named_modules()}
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if not isinstance(module, NoisyQuant) or module.fused_batchnorm is None:
            continue
        bn = module.fused_batchnorm
        if id(bn) not in names:
            raise RuntimeError(f"{node.target}: its fused BatchNorm is not part of the model")
        target = names[id(bn)]
        try:
            gm.get_submodule(target)
        except AttributeError:
            gm.add_submodule(target, bn)
        residual = node.kwargs.get("residual", node.args[1] if len(node.args) > 1 else None)
        with gm.graph.inserting_before(node):
            z = gm.graph.call_module(target, (node.args[0],))
            if residual is not None:
                z = gm.graph.call_function(operator.add, (z, residual))
        node.args, node.kwargs = (z,), {}
        module.fuse_batchnorm(None)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm
