"""to_snn: ANN-to-SNN conversion on torch.fx, as a sequence of graph passes.

``to_snn(model, T)`` runs, on a traced copy of the trained network (NoisyQuant kept as a leaf):

1. ``_traced_copy``: trace a deep copy in eval mode (the model itself is not modified), each
   NoisyQuant fused with its BatchNorm (``replace_activations(fuse_batchnorm=True)``) split again;
2. ``_check_convertible``: raise, naming every site, on what has no SNN equivalent;
3. ``fold_batchnorm_graph``: fold each BatchNorm into the conv/linear before it;
4. ``_place_if_layers``: one ``IFLayer`` per NoisyQuant call site and per functional
   ``noisy_quant`` call (θ = λ, ``v_init = 0.5``);
5. ``add_time_repetition``: ``TimeRepeat`` where a value that is the same at every step
   (the input, the stem) meets one that varies (spikes), so the stem runs once;
6. ``add_synapse_meters``: a ``SynapseMeter`` before every conv/linear call (its SOPs counted
   by the IF layers from their spike counts where spikes reach it through routing only);
7. ``wrap_network``: recompile and wrap the graph in a ``SpikingNetwork`` with its report.
"""

import copy
import itertools
import operator
from typing import Dict, List, Optional

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .._validation import check_bool, check_levels, check_positive, check_time_steps
from ..nn.fx_utils import (
    SYNAPTIC_TYPES,
    UNCONVERTIBLE_MODULES,
    clip_call_level,
    clip_module_level,
    constant_value,
    describe_call,
    free_submodule_name,
    is_noisy_quant_call,
    is_relu_call,
    is_unconvertible_call,
    module_calls,
    noisy_quant_arguments,
    number_call_sites,
    site_name,
    trace,
)
from ..nn.if_layer import IFLayer
from ..nn.noisy_quant import NoisyQuant
from ..nn.synapses import pool_spec
from ..snn.network import SpikingNetwork, TimeRepeat
from ..snn.stats import SynapseMeter
from .batchnorm import fold_batchnorm_graph
from .replace import unfuse_batchnorm

MAXPOOL_TYPES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
MAXPOOL_FUNCTIONS = (
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    torch.max_pool1d,
    torch.max_pool2d,
    torch.max_pool3d,
)
STATEFUL_TYPES = (nn.RNNBase, nn.RNNCellBase)

_NO_EQUIVALENT = (
    "no IF-neuron equivalent, replace_activations cannot convert it either: use ReLU / ReLU6 / "
    "Hardtanh(0, a) there and retrain"
)

_PARAM, _BATCH, _VARYING = 0, 1, 2  # what a graph value depends on: weights, the input, spikes
_META_METHODS = ("size", "dim", "numel", "nelement", "stride")
_META_ATTRS = ("shape", "ndim")
_META_FUNCTIONS = (operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv)


def to_snn(
    model: nn.Module,
    T: int,
    chunk: Optional[int] = None,
    *,
    fold_bn: bool = True,
    allow_maxpool: bool = False,
    allow_nonlinear_after_spikes: bool = False,
):
    """Convert a network with NoisyQuant activations into a multi-step SNN.

    Each NoisyQuant call site, and each ``na_kernels.noisy_quant(x, p, lam)`` call in a forward
    (λ a float or a parameter / buffer, evaluated at conversion), becomes an ``IFLayer`` (θ = λ, per channel where λ is,
    ``v_init = 0.5``, subtractive reset, spike amplitude θ, so no weight needs rescaling); a
    constant input x then gives ``count = clamp(floor(x*T/θ + 0.5), 0, T)`` spikes and a mean
    output ``count*θ/T``, the quantized ANN's ``q*λ/p`` at T = p. BatchNorm is folded into the
    conv/linear before it; everything else runs unchanged on ``[T*B, ...]`` batches.

    Args:
        model: the trained network (not modified; a deep copy is converted). It must be
            traceable by torch.fx and hold NoisyQuant activations (``replace_activations``).
        T: default number of time steps, int >= 1.
        chunk: default chunk size (steps per kernel call), None for all T at once.
        fold_bn: fold BatchNorm into the preceding conv/linear (unfoldable ones stay, as the
            per-channel affine maps they are in eval mode). Folding changes pre-activations by
            rounding only, but that can move one across a level boundary, so ``snn.ann(x)``
            equals ``model(x)`` only up to such flips (``na_kernels.convert.batchnorm`` states the
            bound exactly).
        allow_maxpool: run max pooling on spikes as it is instead of raising.
        allow_nonlinear_after_spikes: convert even where an operation that is not linear in
            time reads spikes (see below) instead of raising.

    What may follow an IF layer: the SNN's output is the time average of the network run on
    spikes, which equals the ANN only through operations linear in time (``f(mean_t s_t) =
    mean_t f(s_t)``): conv, linear, average pooling, flatten / reshape / view / indexing,
    addition and subtraction, concatenation, dropout in eval, BatchNorm with running
    statistics, multiplication or division by a value that does not depend on the spikes,
    sum and mean, identity. Anything else reading spikes (``amax``/``max``, softmax, a product
    of two spiking tensors, LayerNorm/GroupNorm, an activation that is not an IF layer, ...)
    raises a ValueError naming the fx node, unless ``allow_nonlinear_after_spikes``.

    Returns:
        ``SpikingNetwork``; ``snn(x)`` with x ``[B, ...]`` returns ``[T, B, ...]``, ``out[t-1]``
        the mean of the last layer's outputs over steps 1..t.

    Raises:
        ValueError for T < 1, unconverted ReLU / GELU / ... sites, max pooling, stateful layers,
        an operation not linear in time after an IF layer,
        a model with no NoisyQuant, or a NoisyQuant whose ``lam="auto"`` was never initialised.
    """
    T = check_time_steps("T", T)
    chunk = check_time_steps("chunk", chunk, allow_none=True)
    gm = _traced_copy(model)
    _check_convertible(gm, allow_maxpool)
    folded = fold_batchnorm_graph(gm) if fold_bn else []
    if_nodes = _place_if_layers(gm)
    if not check_bool("allow_nonlinear_after_spikes", allow_nonlinear_after_spikes):
        _check_linear_in_time(gm, if_nodes)
    stem_runs_once = add_time_repetition(gm, if_nodes)
    add_synapse_meters(gm, if_nodes)
    return wrap_network(gm, T, chunk, if_layers=list(if_nodes.values()), folded=folded, stem_runs_once=stem_runs_once)


# ---------------------------------------------------------------------------------- the passes


def _traced_copy(model: nn.Module) -> fx.GraphModule:
    """A deep copy of ``model`` in eval mode, traced (NoisyQuant a leaf); ``model`` stays as it is."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, NoisyQuant) and module.auto_pending:
            raise ValueError(f'{name or "model"}: NoisyQuant(lam="auto") was never initialised (train one batch first)')
    copied = copy.deepcopy(model).eval()
    return unfuse_batchnorm(trace(copied), copied)


def _check_convertible(gm: fx.GraphModule, allow_maxpool: bool) -> None:
    """Raise a ValueError naming every site without an SNN equivalent: a ReLU or GELU, ... left
    unreplaced, max pooling (unless ``allow_maxpool``), a stateful (recurrent) layer."""
    problems = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, NoisyQuant):
                continue
            if isinstance(module, nn.ReLU) or clip_module_level(module) is not None:
                problems.append(f"{node.target}: {type(module).__name__} (run replace_activations first)")
            elif isinstance(module, UNCONVERTIBLE_MODULES):
                problems.append(f"{node.target}: {type(module).__name__} ({_NO_EQUIVALENT})")
            elif isinstance(module, MAXPOOL_TYPES) and not allow_maxpool:
                problems.append(
                    f"{node.target}: {type(module).__name__} (max pooling has no rate-coded SNN equivalent: use "
                    "replace_activations(..., maxpool_to_avgpool=True) and retrain, or to_snn(allow_maxpool=True))"
                )
            elif isinstance(module, STATEFUL_TYPES):
                problems.append(f"{node.target}: {type(module).__name__} (a stateful layer cannot see a [T*B] batch)")
        elif node.op in ("call_function", "call_method"):
            if is_relu_call(node) or clip_call_level(node) is not None:
                problems.append(f"{site_name(node)}: {describe_call(node)} (run replace_activations first)")
            elif is_unconvertible_call(node):
                problems.append(f"{site_name(node)}: {describe_call(node)} ({_NO_EQUIVALENT})")
            elif node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS and not allow_maxpool:
                problems.append(f"{site_name(node)}: {describe_call(node)} (max pooling; see to_snn(allow_maxpool=))")
    if problems:
        listing = "\n  ".join(problems)
        raise ValueError(f"to_snn cannot convert {len(problems)} site(s):\n  {listing}")


def _place_if_layers(gm: fx.GraphModule) -> Dict[fx.Node, str]:
    """Replace each activation site by its own ``IFLayer`` (θ = a = λ): each NoisyQuant call
    (p from the module) and each functional ``noisy_quant(x, p, lam)`` call (p and λ evaluated
    from the call's arguments: constants, parameters or buffers).

    A NoisyQuant called at n sites gives n IF layers, ``<name>``, ``<name>_call2``, ...; a
    functional call is named like the call site (``<owner module>.<node name>``).
    Returns IF node -> IF layer name, in graph order.
    """
    calls = dict(number_call_sites(module_calls(gm, NoisyQuant)))
    sites = []  # (node, name, λ, p), in graph order, before any is replaced
    for node in gm.graph.nodes:
        if node in calls:
            quant = gm.get_submodule(node.target)
            sites.append((node, calls[node], quant.lam, quant.p))
        elif is_noisy_quant_call(node):
            sites.append((node, site_name(node)) + _functional_site(gm, node))
    if not sites:
        raise ValueError(
            "to_snn found no NoisyQuant activation (module or noisy_quant() call) in the model: "
            "run replace_activations first"
        )
    if_nodes: Dict[fx.Node, str] = {}
    for node, site, lam, p in sites:
        target = site if node.op == "call_module" and site == node.target else free_submodule_name(gm, site)
        gm.add_submodule(target, IFLayer(target, lam, p))
        if node.op == "call_module":
            node.target = target
        else:
            x = noisy_quant_arguments(node)["x"]
            with gm.graph.inserting_before(node):
                layer_node = gm.graph.call_module(target, (x,))
            layer_node.meta = dict(node.meta)
            node.replace_all_uses_with(layer_node)
            _erase_with_unused_inputs(gm.graph, node)
            node = layer_node
        if_nodes[node] = target
    return if_nodes


def _functional_site(gm: fx.GraphModule, node: fx.Node):
    """``(λ as a float32 tensor, p)`` of a traced ``noisy_quant`` call; ValueError naming the node
    when they depend on the input or the call cannot be an IF layer."""
    where = f"{site_name(node)}: noisy_quant()"
    arguments = noisy_quant_arguments(node)
    p = constant_value(gm, arguments["p"], where + " p")
    lam = constant_value(gm, arguments["lam"], where + " lam")
    shift = constant_value(gm, arguments["shift"], where + " shift")
    p = check_levels(p, name=f"{where} p")
    if shift != 0.5:
        raise ValueError(
            f"{where} has shift={shift}: an IF layer starts at v_init = θ/2, which is shift 0.5; "
            "train with shift=0.5 to convert"
        )
    if not isinstance(lam, torch.Tensor):
        lam = torch.tensor(check_positive(f"{where} lam", lam), dtype=torch.float32)
    if lam.dim() > 1 or not bool(torch.isfinite(lam).all() & (lam > 0).all()):
        raise ValueError(f"{where} lam must be a positive finite scalar or per-channel [C] tensor, got {lam}")
    return lam.detach().to(torch.float32), p


def _erase_with_unused_inputs(graph: fx.Graph, node: fx.Node) -> None:
    """Erase ``node`` and then every input node (λ's expression) left without users, except placeholders."""
    stack = [node]
    while stack:
        current = stack.pop()
        if current.users or current.op in ("placeholder", "output"):
            continue
        inputs = current.all_input_nodes
        graph.erase_node(current)
        stack.extend(inputs)


_LINEAR_MODULES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    IFLayer,
)
_LINEAR_FUNCTIONS = (
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.neg,
    operator.pos,
    operator.getitem,
    torch.add,
    torch.sub,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    torch.chunk,
    torch.split,
    torch.sum,
    torch.mean,
    torch.neg,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    torch.avg_pool1d,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    getattr,
)
_LINEAR_METHODS = (
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "flatten",
    "unflatten",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "transpose",
    "permute",
    "expand",
    "expand_as",
    "chunk",
    "split",
    "add",
    "add_",
    "sub",
    "sub_",
    "neg",
    "sum",
    "mean",
    "to",
    "float",
    "half",
    "bfloat16",
    "type_as",
    "clone",
    "detach",
    "__getitem__",
) + _META_METHODS
_WEIGHTED_FUNCTIONS = (
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
)
_SCALING_FUNCTIONS = (operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div)
_SCALING_METHODS = ("mul", "mul_", "div", "div_")


def _check_linear_in_time(gm: fx.GraphModule, if_nodes: Dict[fx.Node, str]) -> None:
    """Raise a ValueError naming every node that reads spikes (directly or through other ops)
    and is not linear in time: the SNN's time average would not be the ANN's output there."""
    kind, _ = _classify(gm.graph, if_nodes, input_varies=False)
    problems = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output") or node in if_nodes:
            continue
        varying = [i for i in node.all_input_nodes if kind.get(i) == _VARYING]
        if not varying or _linear_in_time(gm, node, kind):
            continue
        if node.op == "call_module":
            what = f"{node.target}: {type(gm.get_submodule(node.target)).__name__}"
        else:
            what = f"{site_name(node)}: {describe_call(node)}"
        problems.append(what)
    if problems:
        listing = "\n  ".join(problems)
        raise ValueError(
            f"to_snn: {len(problems)} operation(s) after IF layers are not linear in time, so the SNN's "
            f"time-averaged output would differ from the ANN's:\n  {listing}\n"
            "Move them before the last activation or replace them by linear ones (avg instead of max "
            "pooling, ...), or convert anyway with to_snn(..., allow_nonlinear_after_spikes=True)"
        )


def _linear_in_time(gm: fx.GraphModule, node: fx.Node, kind) -> bool:
    """Whether ``node`` commutes with the time average over its spiking inputs."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, MAXPOOL_TYPES):
            return True  # refused (or allowed) by _check_convertible already
        if isinstance(module, _BatchNorm):
            return module.track_running_stats and module.running_mean is not None and not module.training
        return isinstance(module, _LINEAR_MODULES) or type(module).__name__ in ("SynapseMeter", "TimeRepeat")
    if node.op == "call_function":
        if node.target in MAXPOOL_FUNCTIONS:
            return True
        if node.target in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
            return node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True) is False
        if node.target in _SCALING_FUNCTIONS:
            return _scaled_by_a_constant(node, kind)
        if node.target in _WEIGHTED_FUNCTIONS:
            return _weighted_by_a_constant(node, kind)
        return node.target in _LINEAR_FUNCTIONS
    if node.op == "call_method":
        if node.target in _SCALING_METHODS:
            return _scaled_by_a_constant(node, kind)
        return node.target in _LINEAR_METHODS
    return False


def _scaled_by_a_constant(node: fx.Node, kind) -> bool:
    """``a * b`` / ``a / b`` with at most one spiking factor, never in a denominator."""
    operands = list(node.args[:2]) + [node.kwargs[k] for k in ("other",) if k in node.kwargs]
    spiking = [isinstance(a, fx.Node) and kind.get(a) == _VARYING for a in operands]
    division = node.target in (operator.truediv, operator.itruediv, torch.div, "div", "div_")
    if division:
        return len(spiking) >= 2 and not spiking[1]
    return sum(spiking) <= 1


def _weighted_by_a_constant(node: fx.Node, kind) -> bool:
    """``F.linear`` / ``F.conv*(input, weight, bias)``: bilinear in input and weight, so (like a
    product) at most one of the two may depend on spikes; a spiking bias only adds."""
    arguments = dict(zip(("input", "weight"), node.args))
    arguments.update((k, v) for k, v in node.kwargs.items() if k in ("input", "weight"))
    return sum(isinstance(a, fx.Node) and kind.get(a) == _VARYING for a in arguments.values()) <= 1


def add_time_repetition(gm: fx.GraphModule, if_nodes: Dict[fx.Node, str]) -> bool:
    """Insert a ``TimeRepeat`` ([B, ...] -> [T*B, ...]) where a value that is the same at every
    step meets one that varies over the steps, and tell each IF layer whether its input is such
    a [B, ...] value (``input_is_constant``).

    Values that depend on the input only (the stem) stay [B, ...] and run once; each is
    repeated where a spike-dependent value or the output uses it. When batch-size arithmetic
    on such a value (``x.size(0)``, ...) meets spikes, the input itself is repeated instead.
    Returns whether the stem runs once (False in that case).
    """
    graph = gm.graph
    input_varies, kind = _time_kinds(graph, if_nodes)
    counter = itertools.count()

    def add_repeat(after):
        target = free_submodule_name(gm, f"time_repeat_{next(counter)}")
        gm.add_submodule(target, TimeRepeat())
        with graph.inserting_after(after):
            return graph.call_module(target, (after,))

    if input_varies:
        for node in [n for n in graph.nodes if n.op == "placeholder"]:
            repeated = add_repeat(node)
            node.replace_all_uses_with(repeated, delete_user_cb=lambda user, r=repeated: user is not r)
    else:
        repeats = {}
        for node in list(graph.nodes):
            if node.op == "output" or (node in kind and kind[node] == _VARYING and node not in if_nodes):
                for source in node.all_input_nodes:
                    if kind.get(source) == _BATCH:
                        if source not in repeats:
                            repeats[source] = add_repeat(source)
                        node.replace_input_with(source, repeats[source])
    for node, name in if_nodes.items():
        gm.get_submodule(name).input_is_constant = kind.get(node.args[0]) == _BATCH
    return not input_varies


def add_synapse_meters(gm: fx.GraphModule, if_nodes: Dict[fx.Node, str]) -> None:
    """Insert a ``SynapseMeter`` before every conv/linear call (named like the IF layers:
    ``<layer>``, ``<layer>_call2``, ...); it is spike-driven when IF layers reach the call
    through stateless ops, analog (the stem) otherwise. Where IF outputs reach it through
    routing only (``spike_routes``), each of those IF layers counts its SOPs from its spike counts."""
    graph = gm.graph
    synaptic_nodes = module_calls(gm, SYNAPTIC_TYPES)
    synaptic_set = set(synaptic_nodes)
    for index, (node, name) in enumerate(number_call_sites(synaptic_nodes)):
        sources = _upstream_if_layers(node, if_nodes, synaptic_set)
        meter = SynapseMeter(name, gm.get_submodule(node.target), sources, spike_driven=bool(sources))
        routes = spike_routes(gm, node.args[0], if_nodes, conv=meter.dims) if sources else None
        if routes:
            for if_node, pools in routes:
                gm.get_submodule(if_nodes[if_node]).add_route(name, meter.synapse, pools)
            meter.routed = True
        target = free_submodule_name(gm, f"synapse_meter_{index}")
        gm.add_submodule(target, meter)
        with graph.inserting_before(node):
            measured = graph.call_module(target, (node.args[0],))
        node.replace_input_with(node.args[0], measured)


_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_RESHAPE_MODULES = (nn.Flatten, nn.Unflatten)
_RESHAPE_FUNCTIONS = (torch.flatten, torch.reshape)
_RESHAPE_METHODS = ("view", "reshape", "flatten")
_AVG_POOL_MODULES = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_ADAPTIVE_POOL_MODULES = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}
_AVG_POOL_FUNCTIONS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}
_ADAPTIVE_POOL_FUNCTIONS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3}
_ADDS = (operator.add, operator.iadd, torch.add)


def spike_routes(gm: fx.GraphModule, value, if_nodes, conv: int):
    """How spikes reach ``value`` (a conv/linear input): ``[(IF node, pool specs), ...]`` when it
    is IF outputs routed by reshapes (not for a conv: it needs the IF's spatial layout), average
    pooling, dropout/identity and sums only, each path one entry; None otherwise (then the
    meter counts nonzero inputs). ``conv``: the conv's spatial dims, 0 for a linear."""
    if not isinstance(value, fx.Node):
        return None
    if value in if_nodes:
        return [(value, ())]
    pool, source = None, None
    if value.op == "call_module":
        module = gm.get_submodule(value.target)
        kind = type(module)
        if kind in _PASS_MODULES or (kind in _RESHAPE_MODULES and not conv):
            source = value.args[0]
        elif kind in _AVG_POOL_MODULES:
            pool = pool_spec(
                "avg",
                _AVG_POOL_MODULES[kind],
                kernel=module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                ceil_mode=module.ceil_mode,
            )
            source = value.args[0]
        elif kind in _ADAPTIVE_POOL_MODULES:
            pool = pool_spec("adaptive", _ADAPTIVE_POOL_MODULES[kind], output_size=module.output_size)
            source = value.args[0]
    elif value.op == "call_function":
        if value.target in _RESHAPE_FUNCTIONS and not conv:
            source = value.args[0]
        elif value.target in _AVG_POOL_FUNCTIONS or value.target in _ADAPTIVE_POOL_FUNCTIONS:
            pool = _functional_pool(value)
            source = value.args[0] if pool is not None else None
        elif value.target in _ADDS and len(value.args) == 2 and not value.kwargs:
            left, right = (spike_routes(gm, a, if_nodes, conv) for a in value.args)
            return left + right if left and right else None
    elif value.op == "call_method":
        if value.target == "contiguous" or (value.target in _RESHAPE_METHODS and not conv):
            source = value.args[0]
    if source is None:
        return None
    if pool is None:
        return spike_routes(gm, source, if_nodes, conv)
    dims = len(pool[1])
    if conv and dims != conv:
        return None
    routes = spike_routes(gm, source, if_nodes, dims)  # below a pool: the IF's own layout, no reshape
    return None if routes is None else [(node, pools + (pool,)) for node, pools in routes]


def _functional_pool(node: fx.Node):
    """The pool spec of an ``F.avg_pool*`` / ``F.adaptive_avg_pool*`` call with constant arguments, else None."""
    if node.target in _ADAPTIVE_POOL_FUNCTIONS:
        names, dims = ("input", "output_size"), _ADAPTIVE_POOL_FUNCTIONS[node.target]
    else:
        names, dims = (
            ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
            _AVG_POOL_FUNCTIONS[node.target],
        )
    arguments = dict(zip(names, node.args))
    arguments.update(node.kwargs)
    if any(isinstance(v, fx.Node) for k, v in arguments.items() if k != "input"):
        return None
    if node.target in _ADAPTIVE_POOL_FUNCTIONS:
        return pool_spec("adaptive", dims, output_size=arguments.get("output_size"))
    return pool_spec(
        "avg",
        dims,
        kernel=arguments.get("kernel_size"),
        stride=arguments.get("stride"),
        padding=arguments.get("padding", 0),
        ceil_mode=arguments.get("ceil_mode", False),
    )


def wrap_network(
    gm: fx.GraphModule, T: int, chunk: Optional[int], *, if_layers: List[str], folded: List[str], stem_runs_once: bool
) -> SpikingNetwork:
    """Recompile the converted graph and wrap it in a ``SpikingNetwork`` with its ``conversion_report``."""
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    snn = SpikingNetwork(gm.eval(), T, chunk)
    snn.conversion_report = dict(
        if_layers=if_layers,
        folded_batchnorm=folded,
        unfolded_batchnorm=[n.target for n in module_calls(gm, _BatchNorm)],
        stem_runs_once=stem_runs_once,
        synapses=[m.name for m in gm.modules() if isinstance(m, SynapseMeter)],
    )
    return snn


# ---------------------------------------------------------------------------------- graph analysis


def _classify(graph: fx.Graph, if_nodes, input_varies: bool):
    """Per node: ``kind`` (what its value depends on: _PARAM weights only, _BATCH the input,
    _VARYING spikes or an input that varies over the steps) and ``meta`` (whether it is
    shape arithmetic: ``x.size(0)``, ``x.shape[1] * 2``, ...)."""
    kind, meta = {}, {}
    for node in graph.nodes:
        if node.op == "placeholder":
            kind[node] = _VARYING if input_varies else _BATCH
            meta[node] = False
            continue
        if node.op == "get_attr":
            kind[node], meta[node] = _PARAM, False
            continue
        if node.op == "output":
            continue
        inputs = node.all_input_nodes
        kind[node] = _VARYING if node in if_nodes else max((kind[i] for i in inputs), default=_PARAM)
        batch_inputs = [i for i in inputs if kind[i] != _PARAM]
        if node.op == "call_method" and node.target in _META_METHODS:
            meta[node] = True
        elif node.op == "call_function" and node.target is getattr and node.args[1] in _META_ATTRS:
            meta[node] = True
        elif node.op == "call_function" and node.target in _META_FUNCTIONS and batch_inputs:
            meta[node] = all(meta[i] for i in batch_inputs)
        else:
            meta[node] = False
    return kind, meta


def _time_kinds(graph: fx.Graph, if_nodes):
    """``(input_varies, kind)``: whether the input must be repeated over the steps (batch-size
    arithmetic on a [B, ...] value meets spikes), and ``_classify``'s kinds under that choice."""
    kind, meta = _classify(graph, if_nodes, input_varies=False)
    input_varies = any(
        kind[n] == _BATCH and meta[n] and any(kind.get(u) == _VARYING for u in n.users)
        for n in graph.nodes
        if n in kind
    )
    if input_varies:
        kind, _ = _classify(graph, if_nodes, input_varies=True)
    return input_varies, kind


def _upstream_if_layers(node, if_nodes, synaptic_nodes):
    """Names of the IF layers that reach ``node`` through stateless ops only."""
    found, stack, seen = [], list(node.all_input_nodes), set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in if_nodes:
            found.append(if_nodes[current])
        elif current not in synaptic_nodes and current.op != "placeholder":
            stack.extend(current.all_input_nodes)
    return sorted(set(found))
