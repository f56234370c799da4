"""How a converted network runs: the residual add fused into the convolution before it, and IF
layers whose spikes take their input's memory.

A residual block ends in ``IF(conv(x) + shortcut)``. Run as two ops, the add is a pass over
three ``[T*B, C, H, W]`` tensors and one more fresh output. ``fuse_residual_adds(network)``
returns the network's forward with each ``conv(x) + other`` (a ``nn.Conv2d`` whose only user
is the add, either operand order) replaced by ``conv_add(conv, x, other)``, which on the CPU
without autograd is oneDNN's convolution with a binary-add post-op: the sum is formed in the
convolution's output pass, in float32 (bitwise ``conv(x) + other`` in float32; in bfloat16
rounded once instead of twice). Everything else (autograd, CUDA, float16, other shapes or
layouts, a conv with forward hooks, or any global forward hook) runs ``conv(x) + other``.

The same forward runs each IF layer whose input is a fresh tensor no other node reads (a
convolution's, ``conv_add``'s or an add's output with that layer as its only user) as
``IFLayer(x, overwrite=True)`` (``if_overwriting``): the spikes take the input's memory instead
of a fresh output's (``integrate_fire``'s ``overwrite``; the same spikes), unless forward hooks
could see the input; float32 only (in bfloat16 it measured slower).

Event-driven convolutions (opt-in: ``fuse_residual_adds(network, event_driven=True)``, which
``SpikingNetwork.event_driven()`` turns on): each ``nn.Conv2d`` that reads spikes (its input is
an IF layer's output, directly or through the statistics' ``SynapseMeter``), plain or fused with
its residual add, runs as ``event_conv_module(conv, x, other)``: ``event_conv2d``, whose cost
scales with the nonzero inputs, where it applies (CPU, float32, no autograd, groups 1, dilation 1,
zero padding, no hooks, input density at most ``event_conv.default_max_density``), else the dense
``conv(x)`` / ``conv_add``. Its outputs are channels-last. It sums in another float32 order than
the dense convolution, so an IF layer's input can differ in the last bits and a spike at the
threshold can flip (docs/design.md, the model layer, "Event-driven convolutions").

The network itself is left as it is (its graph is what ``save``, NIR export, the statistics'
routing and early exit's stem/body split read): the returned function runs the rewritten code on
the network's own modules, so a module replaced later is the one that runs. ``run_fused`` is how
``SpikingNetwork.forward`` and early exit's chunks call a network.
"""

import operator
import weakref

import torch
from torch import fx, nn
from torch.nn.modules import module as _module

from ..cpu import workspace
from ..nn.if_layer import IFLayer
from ..ops.event_conv import dense, event_conv2d, event_ok
from .stats import SynapseMeter

_ADDS = (operator.add, torch.add)
_FORWARDS = weakref.WeakKeyDictionary()  # network -> (its code when fused, the fused forward)
_EVENT_FORWARDS = weakref.WeakKeyDictionary()  # the same, event-driven
_FUSED_DTYPES = (torch.float32, torch.bfloat16)
_FRESH_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # each call returns a new tensor
_OVERWRITE_DTYPES = (torch.float32,)


def _output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` runs forward hooks (its own or global ones): then it is called."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or _module._global_forward_hooks
        or _module._global_forward_pre_hooks
    )


def _fusable(conv: nn.Conv2d, x, other) -> bool:
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(other, torch.Tensor)
        and x.device.type == "cpu"
        and x.dim() == 4
        and other.dim() == 4
        and x.dtype in _FUSED_DTYPES
        and x.dtype == other.dtype == conv.weight.dtype
        and (conv.bias is None or conv.bias.dtype == x.dtype)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and torch.backends.mkldnn.is_available()
        and not _hooked(conv)
    ):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, other, conv.weight, conv.bias)):
        return False
    spatial = tuple(
        _output_size(n, k, s, p, d)
        for n, k, s, p, d in zip(x.shape[2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    )
    if tuple(other.shape) != (x.shape[0], conv.out_channels) + spatial:
        return False
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    channels_last = channels_last or (
        conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return x.is_contiguous(memory_format=layout) and other.is_contiguous(memory_format=layout)


def conv_add(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``conv(x) + other``: x ``[N, C_in, H, W]``, other ``[N, C_out, H', W']`` (the conv's output
    shape) -> ``[N, C_out, H', W']``; one oneDNN convolution with an add post-op where it applies
    (CPU, float32 / bfloat16, no autograd, x and other in the conv's layout), else two ops."""
    if _fusable(conv, x, other):
        if _into_workspace(conv, x):
            return dense.conv2d(x, conv.weight, conv.bias, tuple(conv.stride), tuple(conv.padding), other)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x,
            other,
            conv.weight,
            conv.bias,
            list(conv.padding),
            list(conv.stride),
            list(conv.dilation),
            conv.groups,
            "add",
            None,
            None,
            [],
            None,
        )
    return conv(x) + other


def _into_workspace(conv: nn.Conv2d, x) -> bool:
    """Whether ``dense.conv2d`` may run ``conv`` on x into the active workspace (one is active, x and
    conv are float32, conv a plain one without hooks: the rest ``dense.conv2d`` checks; in bfloat16
    ``conv_add``'s fused add rounds once, which ``dense.conv2d`` would not)."""
    return (
        workspace.current() is not None
        and isinstance(x, torch.Tensor)
        and x.dim() == 4
        and x.dtype == conv.weight.dtype == torch.float32
        and conv.groups == 1
        and tuple(conv.dilation) == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not _hooked(conv)
    )


def conv_module(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, into the active workspace where it applies (``_into_workspace``; bitwise the same)."""
    if _into_workspace(conv, x):
        return dense.conv2d(x, conv.weight, conv.bias, tuple(conv.stride), tuple(conv.padding))
    return conv(x)


def _event_applies(conv: nn.Conv2d, x, other) -> bool:
    """Whether ``event_conv_module`` may run ``conv`` on x (and ``other``) as an event convolution."""
    return (
        isinstance(x, torch.Tensor)
        and x.dim() == 4
        and conv.groups == 1
        and tuple(conv.dilation) == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not _hooked(conv)
        and event_ok(x, conv.weight, conv.bias, other)
        and (other is None or (isinstance(other, torch.Tensor) and other.dim() == 4))
    )


def event_conv_module(conv: nn.Conv2d, x: torch.Tensor, other=None) -> torch.Tensor:
    """``conv(x) (+ other)`` by ``event_conv2d`` (cost ~ x's nonzeros; channels-last output) where
    it applies (``_event_applies``), else ``conv(x)`` / ``conv_add(conv, x, other)``."""
    if _event_applies(conv, x, other):
        return event_conv2d(x, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding, residual=other)
    return conv_module(conv, x) if other is None else conv_add(conv, x, other)


def _reads_spikes(network, node) -> bool:
    """Whether fx ``node`` is an IF layer's output, or a SynapseMeter call on one."""
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return False
    module = network.get_submodule(node.target)
    if isinstance(module, SynapseMeter) and len(node.args) == 1:
        return _reads_spikes(network, node.args[0])
    return type(module) is IFLayer


def _event_conv_call(network, node):
    """(conv module name, x, other or None) of a Conv2d call or a ``conv_add`` whose input reads spikes."""
    if node.op == "call_module" and type(network.get_submodule(node.target)) is nn.Conv2d:
        if len(node.args) == 1 and not node.kwargs and _reads_spikes(network, node.args[0]):
            return node.target, node.args[0], None
    if node.op == "call_function" and node.target is conv_add and _reads_spikes(network, node.args[1]):
        return node.args[0].target, node.args[1], node.args[2]
    return None


def _use_event_convs(network, graph):
    """Replace each spike-reading convolution of ``graph`` by ``event_conv_module``; returns how many."""
    count = 0
    for node in list(graph.nodes):
        found = _event_conv_call(network, node)
        if found is None:
            continue
        target, x, other = found
        with graph.inserting_before(node):
            conv = graph.get_attr(target)
            call = graph.call_function(event_conv_module, (conv, x, other))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        count += 1
    return count


def _use_conv_modules(network, graph):
    """Replace each remaining one-input ``nn.Conv2d`` call of ``graph`` by ``conv_module``."""
    for node in list(graph.nodes):
        if node.op != "call_module" or type(network.get_submodule(node.target)) is not nn.Conv2d:
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        with graph.inserting_before(node):
            conv = graph.get_attr(node.target)
            call = graph.call_function(conv_module, (conv, node.args[0]))
        node.replace_all_uses_with(call)
        graph.erase_node(node)


def _conv_operand(network, node):
    """(conv node, the other operand) of an add ``node`` whose one operand is a Conv2d output used only there."""
    if node.op != "call_function" or node.target not in _ADDS or len(node.args) != 2 or node.kwargs:
        return None
    for mine, other in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
        if (
            isinstance(mine, fx.Node)
            and isinstance(other, fx.Node)
            and mine.op == "call_module"
            and type(network.get_submodule(mine.target)) is nn.Conv2d
            and len(mine.users) == 1
            and len(mine.args) == 1
            and not mine.kwargs
        ):
            return mine, other
    return None


def if_overwriting(layer, x, producer=None):
    """``layer(x)``, letting an ``IFLayer``'s spikes take x's memory (``overwrite=True``) where no
    one else can see x: x is the fresh output of ``producer`` (a module, or None for a function)
    used only here, and neither the layer nor the producer has forward hooks (nor any global).
    float32 x only: in bfloat16 it measured slower (bench/snn_rewrites.py)."""
    if (
        type(layer) is IFLayer
        and "forward" not in layer.__dict__  # no forward of its own set on the instance
        and getattr(x, "dtype", None) in _OVERWRITE_DTYPES
        and not _hooked(layer)
        and (producer is None or not _hooked(producer))
    ):
        return layer(x, overwrite=True)
    return layer(x)


def _overwritable_input(network, node):
    """Whether ``node`` (an IFLayer call) gets a fresh tensor no other node reads: the output of a
    conv / linear module, of ``conv_add`` or of an add, with this call its only user."""
    if node.op != "call_module" or type(network.get_submodule(node.target)) is not IFLayer:
        return False
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
        return False
    source = node.args[0]
    if len(source.users) != 1:
        return False
    if source.op == "call_module":
        return isinstance(network.get_submodule(source.target), _FRESH_MODULES)
    return source.op == "call_function" and (
        source.target in (conv_add, conv_module, event_conv_module) or source.target in _ADDS
    )


def fuse_residual_adds(network: fx.GraphModule, overwrite: bool = True, event_driven: bool = False):
    """``(forward, count)``: ``forward(network, *inputs)`` runs ``network``'s graph with each
    ``conv(x) + other`` as one ``conv_add``, (``event_driven``) each spike-reading convolution
    as ``event_conv_module`` and (``overwrite``) each IF layer whose input no other node reads
    through ``if_overwriting`` (see the module doc); ``count`` adds were fused.
    ``network`` itself is unchanged."""
    graph = fx.Graph()
    values = {}
    values_of = graph.graph_copy(network.graph, values)
    graph.output(values_of)
    count = 0
    for node in list(graph.nodes):
        found = _conv_operand(network, node)
        if found is None:
            continue
        conv_node, other = found
        with graph.inserting_before(node):
            conv = graph.get_attr(conv_node.target)
            fused = graph.call_function(conv_add, (conv, conv_node.args[0], other))
        node.replace_all_uses_with(fused)
        graph.erase_node(node)
        graph.erase_node(conv_node)
        count += 1
    if event_driven:
        _use_event_convs(network, graph)
    _use_conv_modules(network, graph)
    for node in list(graph.nodes) if overwrite else ():
        if not _overwritable_input(network, node):
            continue
        source = node.args[0]
        with graph.inserting_before(node):
            layer = graph.get_attr(node.target)
            if source.op == "call_module":
                producer = graph.get_attr(source.target)
            elif source.target in (conv_module, event_conv_module):  # conv(x) runs its hooks there
                producer = source.args[0]
            else:
                producer = None
            call = graph.call_function(if_overwriting, (layer, source, producer))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    graph.lint()
    return type(fx.GraphModule(network, graph)).forward, count


def fused_forward(network: fx.GraphModule, event_driven: bool = False):
    """``fuse_residual_adds(network, event_driven=event_driven)``'s forward, kept per network (no
    attribute on it) and rebuilt when its code changes (a recompiled graph)."""
    code = network.code
    kept = _EVENT_FORWARDS if event_driven else _FORWARDS
    cached = kept.get(network)
    if cached is None or cached[0] is not code:
        cached = kept[network] = (code, fuse_residual_adds(network, event_driven=event_driven)[0])
    return cached[1]


def run_fused(network: fx.GraphModule, *inputs, event_driven: bool = False):
    """``network(*inputs)`` with its residual adds fused (``fused_forward``) and, with
    ``event_driven``, its spike-reading convolutions event-driven; under torch.compile the plain
    graph, which the compiler traces."""
    if torch.compiler.is_compiling():
        return network(*inputs)
    return fused_forward(network, event_driven)(network, *inputs)
