"""Benchmark a converted SNN with NeuroBench 2.x so that its metrics count what the SNN does.

``neurobench_model(snn, example)`` returns a ``NeuroBenchModel`` whose ``__call__(x)`` (x: the
SNN's input ``[B, ...]``, the same at every step) runs the SNN step by step for ``snn.T`` steps
and returns the mean output over the steps ``[B, classes]`` (``out[T-1]`` of ``snn(x)``); put
``argmax_postprocessor`` after it for NeuroBench's ``ClassificationAccuracy``. The network it
runs is a copy of ``snn.network`` rewritten so that NeuroBench's hooks see what happens:

- each ``IFLayer`` becomes a ``NeuroBenchIF`` (a ``snntorch.SpikingNeuron``, registered as an
  activation module) that runs the same kernel one step at a time, emits 0/1 spikes and keeps
  its potential in ``.mem`` (a new tensor per step, as NeuroBench's membrane-update hook needs);
- each conv/linear that spikes reach through routing only (reshapes, average pooling, dropout,
  sums) is replaced by one layer per route with the amplitude and the pooling folded in: for a
  route ``IF -> avg_pool(k) -> conv(W, stride s, padding p)`` a conv with weights
  ``W'[o, c] = a[c] * repeat(W[o, c], k) / k^d``, kernel ``K*k``, stride ``s*k``, padding ``p*k``
  (non-overlapping pools only); for a linear, ``W' = W @ J * a`` with J the pooling/flatten map.
  These see 0/1 inputs, so NeuroBench books their operations as ACs; their outputs are summed,
  the bias added once. A spike that reaches a conv through a pooling window is thereby counted
  as one AC per synapse of that window, as ``snn.statistics()`` counts it (NeuroBench itself would
  book the pooled, non-binary values as MACs); the pooling additions are counted by neither;
- conv/linear layers fed by the input only (the stem) run once per sample, at step 1, as in
  ``SpikingNetwork`` (the input is the same at every step): their MACs are booked once; analog
  layers behind spiking ones (a conv fed by a conv's output) run, and count MACs, at every step;
- a conv/linear whose input mixes spikes with analog values (e.g. a residual sum of spikes and a
  conv's output, as in MobileNetV2) or combines them otherwise (a product, a concatenation) is
  left as it is, fed the amplitude-carrying values: NeuroBench books it as MACs over its nonzero
  inputs, where ``snn.statistics()`` counts one SOP per nonzero input and synapse. Such layers
  are listed in ``model.folding["mixed_layers"]``.

Agreement with ``snn.statistics()`` (same network, same input): accuracy; activation sparsity
``= 1 - total firing_rate``; ``Effective_ACs = total sops_per_sample`` and ``Effective_MACs =
analog_macs_per_sample``, exactly while no weight is exactly 0 (NeuroBench counts nonzero weights
only, na_kernels every synapse). ``Dense`` counts every synapse of the folded layers (a pooled
conv's kernel is k^d times larger), not the ANN's MACs. ``MembraneUpdates`` counts, per sample,
every neuron at step 1 and then each neuron whose potential changed (``x[t] != s[t]*θ``); na_kernels
does not count membrane updates. ``NeuronOperations`` has a cost table of snnTorch's neuron
classes only and fails on this one (NeuroBench reports 0.0). The folded network's output is
checked against ``snn`` on ``example``; a route that cannot be folded (an overlapping pool before a
conv) raises ``NeuroBenchError``.
"""

import copy
import math
import operator

import torch
from torch import fx, nn
from torch.nn import functional as F

try:
    import snntorch
    from neurobench.models import NeuroBenchModel
except ImportError as error:  # pragma: no cover - exercised where the peers are missing
    raise ImportError(
        "na_kernels.io.neurobench needs neurobench>=2 and snntorch (pip install --no-deps neurobench snntorch)"
    ) from error

from .._validation import check_time_steps
from ..convert.convert import spike_routes  # the same routing rule the statistics use
from ..nn.fx_utils import CONV_TYPES
from ..nn.if_layer import IFLayer
from ..ops.integrate_fire import integrate_fire, integrate_fire_carried
from ..snn.base import SpikingNetworkBase, TimeRepeat
from ..snn.stats import SynapseMeter


class NeuroBenchError(ValueError):
    """A SpikingNetwork that this adapter cannot present to NeuroBench faithfully."""


class NeuroBenchIF(snntorch.SpikingNeuron):
    """One ``IFLayer`` run a step at a time with 0/1 spikes, for NeuroBench's hooks.

    ``forward(x)``: ``[B, C, ...]`` -> spikes ``[B, C, ...]`` in {0, 1}; ``mem`` = the potential
    after the step (``v = v_init*θ`` before step 1; ``h = v + x; s = [h >= θ]``; subtractive or
    zero reset as the IF layer). The amplitude is folded into the consuming layers."""

    def __init__(self, layer: IFLayer):
        super().__init__(
            threshold=1.0,
            init_hidden=True,
            output=False,
            reset_mechanism="zero" if layer.reset == "zero" else "subtract",
        )
        instances = snntorch.SpikingNeuron.instances
        if instances and instances[-1] is self:
            instances.pop()  # snnTorch's global registry would keep every copy alive
        self.name = layer.name
        self.register_buffer("if_threshold", layer.threshold.detach().clone())
        self.if_v_init = layer.v_init
        self.if_reset = layer.reset
        self.mem = None

    def reset_mem(self):
        """Forget the potential: the next step starts at ``v_init * θ``."""
        self.mem = None
        return self

    def forward(self, x):
        threshold = self.if_threshold
        options = dict(reset=self.if_reset, amplitude=1.0, return_v=True)
        if self.mem is None:
            spikes, _, v = integrate_fire(x.unsqueeze(0), threshold, v_init=self.if_v_init, **options)
        else:
            spikes, _, v = integrate_fire_carried(x.unsqueeze(0), threshold, self.mem, **options)
        self.mem = v  # a new tensor: NeuroBench compares the potentials before and after a step
        return spikes[0]


class _RunOnce(nn.Module):
    """A conv/linear fed by the input only: computed at step 1 and reused (its MACs counted once)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.cached = None

    def forward(self, x):
        if self.cached is None:
            self.cached = self.layer(x)
        return self.cached


def _check_snn(snn):
    if not isinstance(snn, SpikingNetworkBase) or not hasattr(snn, "network"):
        raise TypeError(f"neurobench_model: snn must be a SpikingNetwork (to_snn's result), got {type(snn).__name__}")


def _channel_scale(amplitude, channels):
    a = amplitude.detach().to(torch.float32)
    return a.expand(channels) if a.dim() == 0 else a


def _conv_route(layer, pools, amplitude, shape, name):
    """The conv equivalent to ``layer(pools(a * s))`` on spikes s of shape ``shape`` ([C, *spatial])."""
    dims = len(layer.kernel_size)
    factor = [1] * dims
    size = list(shape[1:])
    for pool in pools:
        if pool[0] == "adaptive":
            out = [n if o is None else o for n, o in zip(size, pool[1])]
            if any(n % o for n, o in zip(size, out)):
                raise NeuroBenchError(
                    f"{name}: adaptive pooling {tuple(size)} -> {tuple(out)} has overlapping "
                    "windows; only non-overlapping pools fold into a conv"
                )
            kernel = [n // o for n, o in zip(size, out)]
        else:
            _, kernel, stride, padding, ceil_mode = pool
            if tuple(kernel) != tuple(stride) or any(padding) or ceil_mode:
                raise NeuroBenchError(
                    f"{name}: average pooling {pool[1:]} (kernel, stride, padding, ceil_mode) is "
                    "not non-overlapping without padding; it cannot fold into the conv"
                )
            kernel = list(kernel)
        factor = [f * k for f, k in zip(factor, kernel)]
        size = [n // k for n, k in zip(size, kernel)]
    if any(d != 1 for d in layer.dilation) and any(f != 1 for f in factor) or isinstance(layer.padding, str):
        raise NeuroBenchError(f"{name}: a dilated or 'same'/'valid'-padded conv behind pooling cannot be folded")
    weight = layer.weight.detach().to(torch.float32)
    for d, f in enumerate(factor):
        weight = weight.repeat_interleave(f, dim=2 + d)
    weight = weight / math.prod(factor)
    groups = layer.groups
    a = _channel_scale(amplitude, shape[0])  # [C]
    per_group = weight.shape[0] // groups
    a_rows = a.reshape(groups, 1, -1).expand(groups, per_group, -1).reshape(weight.shape[0], -1)  # [O, C/groups]
    weight = weight * a_rows.reshape(a_rows.shape + (1,) * dims)
    conv = type(layer)(
        layer.in_channels,
        layer.out_channels,
        tuple(k * f for k, f in zip(layer.kernel_size, factor)),
        stride=tuple(s * f for s, f in zip(layer.stride, factor)),
        padding=tuple(p * f for p, f in zip(layer.padding, factor)),
        dilation=layer.dilation,
        groups=groups,
        bias=False,
    )
    conv.weight.data = weight.to(layer.weight.dtype)
    return conv


def _pool_fn(pool):
    dims = len(pool[1])
    if pool[0] == "adaptive":
        fn = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[dims - 1]
        return lambda x: fn(x, pool[1])
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    _, kernel, stride, padding, ceil_mode = pool
    return lambda x: fn(x, kernel, stride, padding, ceil_mode)


def _linear_route(layer, pools, amplitude, shape, name):
    """The linear equivalent to ``layer(flatten(pools(a * s)))`` on spikes s of shape ``shape``."""
    for pool in pools:
        if pool[0] == "avg" and any(s < k for k, s in zip(pool[1], pool[2])):
            raise NeuroBenchError(
                f"{name}: overlapping average pooling {pool[1:]} before a linear layer counts "
                "a spike once per window; NeuroBench counts each synapse once"
            )
    weight = layer.weight.detach().to(torch.float32)
    a = _channel_scale(amplitude, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    x = torch.zeros((weight.shape[0],) + tuple(shape), dtype=torch.float32, requires_grad=True)
    y = x * a
    for pool in pools:
        y = _pool_fn(pool)(y)
    y = y.flatten(1)
    if y.shape[1] != weight.shape[1]:
        raise NeuroBenchError(f"{name}: spikes {tuple(shape)} reach {weight.shape[1]} inputs as {y.shape[1]}")
    (grad,) = torch.autograd.grad((y * weight).sum(), x)  # row o: W[o] @ J * a
    linear = nn.Linear(grad[0].numel(), layer.out_features, bias=False)
    linear.weight.data = grad.reshape(grad.shape[0], -1).to(layer.weight.dtype)
    return linear


def _shapes(gm, example):
    """Shape ([C, ...], no batch) of each node's output on ``example`` (T = 1)."""
    shapes = {}
    interpreter = fx.Interpreter(gm)
    original = interpreter.run_node

    def run_node(node):
        value = original(node)
        if isinstance(value, torch.Tensor):
            shapes[node] = tuple(value.shape[1:])
        return value

    interpreter.run_node = run_node
    with torch.no_grad():
        interpreter.run(example)
    return shapes


def _fold(snn, example):
    gm = copy.deepcopy(snn.network)
    for module in gm.modules():
        if isinstance(module, (IFLayer, TimeRepeat)):
            module.time_steps, module.mode, module.carry_state, module.v = 1, "snn", False, None
        if hasattr(module, "record"):
            module.record = False
    shapes = _shapes(gm, example)
    graph = gm.graph
    if_nodes = {
        n: n.target for n in graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), IFLayer)
    }
    amplitudes = {n: gm.get_submodule(t).amplitude for n, t in if_nodes.items()}
    varying = set()  # nodes whose value changes from step to step: the IF layers and what they reach
    for node in graph.nodes:
        if node in if_nodes or any(a in varying for a in node.all_input_nodes):
            varying.add(node)
    folded_uses = set()
    report = {"ac_layers": [], "mac_layers": [], "mixed_layers": []}
    for meter_node in [
        n for n in graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), SynapseMeter)
    ]:
        meter = gm.get_submodule(meter_node.target)
        (consumer,) = list(meter_node.users)
        layer = gm.get_submodule(consumer.target)
        if not meter.spike_driven:
            if meter_node.args[0] not in varying:  # the stem: the same at every step
                gm.add_submodule(consumer.target, _RunOnce(layer))
            report["mac_layers"].append(meter.name)
            consumer.replace_input_with(meter_node, meter_node.args[0])
            continue
        routes = spike_routes(gm, meter_node.args[0], if_nodes, conv=meter.dims) if meter.routed else None
        if not routes:  # spikes mixed with analog values (or multiplied, concatenated): left as they are
            report["mixed_layers"].append(meter.name)
            consumer.replace_input_with(meter_node, meter_node.args[0])
            continue
        total = None
        for index, (if_node, pools) in enumerate(routes):
            shape = shapes[if_node]
            make = _conv_route if isinstance(layer, CONV_TYPES) else _linear_route
            part = make(layer, pools, amplitudes[if_node], shape, meter.name)
            target = f"{consumer.target.replace('.', '_')}_route{index}"
            gm.add_submodule(target, part)
            with graph.inserting_before(consumer):
                source = if_node if isinstance(layer, CONV_TYPES) else graph.call_function(torch.flatten, (if_node, 1))
                value = graph.call_module(target, (source,))
                total = value if total is None else graph.call_function(operator.add, (total, value))
            folded_uses.add(source if source is not if_node else value)
        if layer.bias is not None:
            bias = f"{consumer.target.replace('.', '_')}_bias"
            gm.register_buffer(bias, layer.bias.detach().reshape((-1,) + (1,) * meter.dims).clone())
            with graph.inserting_before(consumer):
                total = graph.call_function(operator.add, (total, graph.get_attr(bias)))
        consumer.replace_all_uses_with(total)
        varying.add(total)
        graph.erase_node(consumer)
        report["ac_layers"].append(meter.name)
    graph.eliminate_dead_code()
    # the IF outputs that feed anything else (a residual sum, the output) carry the amplitude again
    for if_node, target in if_nodes.items():
        others = [u for u in if_node.users if u not in folded_uses]
        if others:
            name = f"{target.replace('.', '_')}_amplitude"
            amplitude = amplitudes[if_node].detach()
            gm.register_buffer(
                name,
                amplitude.reshape((-1,) + (1,) * (len(shapes[if_node]) - 1)) if amplitude.dim() else amplitude.clone(),
            )
            with graph.inserting_after(if_node):
                scale = graph.get_attr(name)
            with graph.inserting_after(scale):
                scaled = graph.call_function(operator.mul, (if_node, scale))
            for user in others:
                user.replace_input_with(if_node, scaled)
        gm.add_submodule(target, NeuroBenchIF(gm.get_submodule(target)))
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, report


class SNNBenchmarkModel(NeuroBenchModel):
    """A SpikingNetwork as NeuroBench's model: ``__call__(x [B, ...]) -> [B, classes]``, the mean
    output over T steps, run step by step (see the module's docstring). ``folding``: which
    conv/linear layers count ACs (``ac_layers``), which MACs once per sample (``mac_layers``) and
    which are fed spikes mixed with analog values (``mixed_layers``, MACs at every step)."""

    def __init__(self, network: fx.GraphModule, T: int, folding: dict):
        super().__init__()
        self.net = network.eval()
        self.T = T
        self.folding = folding
        self.add_activation_module(NeuroBenchIF)

    def __call__(self, x):
        for module in self.net.modules():
            if isinstance(module, NeuroBenchIF):
                module.reset_mem()
            elif isinstance(module, _RunOnce):
                module.cached = None
        with torch.no_grad():
            total = None
            for _ in range(self.T):
                out = self.net(x).to(torch.float32)
                total = out if total is None else total + out
        return total / self.T

    def __net__(self):
        return self.net


def neurobench_model(snn, example: torch.Tensor, *, T=None, rtol: float = 1e-4, atol: float = 1e-5):
    """``snn`` (a SpikingNetwork) as a NeuroBench model (``SNNBenchmarkModel``) with 0/1 spikes,
    folded amplitudes and pools, T (default ``snn.T``) steps. ``example``: an input ``[B, ...]`` on
    which the result's output must equal ``snn(example, T=T)[-1]`` (within rtol/atol) and each
    IF layer fire as many spikes (up to rounding ties), else ``NeuroBenchError``. Hand it to
    ``neurobench.benchmarks.Benchmark`` with ``argmax_postprocessor``."""
    _check_snn(snn)
    if not isinstance(example, torch.Tensor) or example.dim() < 1 or example.shape[0] < 1:
        raise TypeError("neurobench_model: example must be a tensor [B, ...] with B >= 1, the SNN's input")
    T = snn.T if T is None else check_time_steps("T", T)
    network, folding = _fold(snn, example)
    model = SNNBenchmarkModel(network, T, folding)
    reference = copy.deepcopy(snn)  # the user's statistics stay as they are
    reference.reset_statistics()
    reference.record_statistics(True)
    with torch.no_grad():
        expected = reference(example, T=T)[-1].to(torch.float32)
    spikes, hooks = {}, []
    for module in model.net.modules():
        if isinstance(module, NeuroBenchIF):
            hooks.append(
                module.register_forward_hook(
                    lambda m, _, out: spikes.__setitem__(m.name, spikes.get(m.name, 0) + int(out.sum()))
                )
            )
    try:
        got = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not torch.allclose(got, expected, rtol=rtol, atol=atol):
        error = (got - expected).abs().max().item()
        raise NeuroBenchError(
            f"neurobench_model: the folded network's output differs from the SNN's by {error:.3g} "
            "on the example (a pooling or amplitude this adapter does not fold exactly)"
        )
    for name, layer in reference.if_layers.items():
        count = int(layer.spikes)
        if abs(spikes.get(name, 0) - count) > max(2, 1e-3 * count):  # a tie at θ may round either way
            raise NeuroBenchError(
                f"neurobench_model: IF layer {name} fires {spikes.get(name, 0)} spikes on the example, the SNN {count}"
            )
    return model


def argmax_postprocessor(output: torch.Tensor) -> torch.Tensor:
    """``[B, classes]`` -> ``[B]`` class indices, for NeuroBench's ClassificationAccuracy."""
    return output.argmax(-1)
