"""ANN-to-SNN conversion on torch.fx: BatchNorm folding, IF layers, the multi-step runner.

``to_snn(model, T)`` traces the trained network (NoisyQuant kept as a leaf), folds each
BatchNorm into the conv/linear before it, and turns each NoisyQuant *call site* into an
``IFLayer`` with threshold θ = λ (per channel where λ is) and ``v_init = 0.5``. The result,
a ``SpikingNetwork``, runs all T steps at once:

- the input is the same at every step; layers that only depend on the input (the stem before
  the first IF layer) run once on the ``[B, ...]`` batch;
- every later stateless layer (conv, linear, pooling, flatten, dropout in eval, residual
  additions, concatenation) sees a ``[T*B, ...]`` batch, time-major;
- each IF layer reshapes its input to ``[T, B, ...]`` and calls ``integrate_fire`` once over
  all T steps, emitting spikes of amplitude θ, so no weight needs rescaling:
  a constant input x gives ``count = clamp(floor(x*T/θ + 0.5), 0, T)`` spikes and a mean
  output ``count*θ/T``, which is the quantized ANN's ``q*λ/p`` at T = p;
- the output ``[T, B, ...]`` holds at step t the mean of the last layer's outputs over steps
  1..t, so ``out[t-1]`` is the SNN's prediction after t steps;
- ``chunk=c`` processes the T steps c at a time, carrying each IF layer's membrane potential
  from one chunk to the next, so memory is that of a c-step run (under no_grad; with autograd
  the potentials stay in the graph and gradients flow across chunks).
"""
import copy
import math
import numbers
import operator
from typing import Dict, List, Optional

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..ops.noisy_quant import noisy_quant
from .noisy_quant import NoisyQuant
from .replace import (
    UNCONVERTIBLE_MODULES,
    describe_call,
    free_submodule_name,
    is_relu_call,
    is_unconvertible_call,
    site_name,
    trace,
)

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SYNAPTIC_TYPES = CONV_TYPES + (nn.Linear,)
MAXPOOL_TYPES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d
)
MAXPOOL_FUNCTIONS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    torch.max_pool1d, torch.max_pool2d, torch.max_pool3d,
)
STATEFUL_TYPES = (nn.RNNBase, nn.RNNCellBase)

_PARAM, _BATCH, _VARYING = 0, 1, 2  # what a graph value depends on: weights, the input, spikes
_META_METHODS = ("size", "dim", "numel", "nelement", "stride")
_META_ATTRS = ("shape", "ndim")
_META_FUNCTIONS = (operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv)


def _integrate_fire():
    import na_kernels

    try:
        return na_kernels.integrate_fire
    except AttributeError:  # pragma: no cover - only while the op is being built
        raise RuntimeError("na_kernels.integrate_fire is not available in this build") from None


def check_time_steps(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1 (time steps), got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1 (time steps), got {value}")
    return int(value)


# ---------------------------------------------------------------------------------- modules


class IFLayer(nn.Module):
    """Integrate-and-fire neurons replacing one NoisyQuant call site.

    Per neuron, over the T steps of one run (``integrate_fire``, subtractive reset)::

        v = v_init * θ;  h = v + x[t];  s = [h >= θ];  v = h - s*θ;  out[t] = s * a

    with threshold θ and amplitude a = λ (θ = λ until ``calibrate_thresholds`` changes θ),
    both scalars or per-channel ([C], channel = dim 1 of a step).

    Input: ``[T*B, C, ...]`` (time-major), or ``[B, C, ...]`` when the input is the same at
    every step (``input_is_constant``); output ``[T*B, C, ...]`` in the input's dtype.
    In "ann" mode the layer is the quantized ANN activation ``noisy_quant(x, p, λ, noise=None)``.

    Statistics of the runs since the last reset: ``spikes`` (total), ``neuron_steps``
    (neurons x samples x steps), ``channel_spikes`` ([C]), ``neurons`` (per sample).
    """

    def __init__(self, name: str, lam: torch.Tensor, p: int, *, input_is_constant: bool = False):
        super().__init__()
        lam = lam.detach().to(torch.float32).clone()
        self.name = name
        self.p = int(p)
        self.register_buffer("threshold", lam.clone())
        self.register_buffer("amplitude", lam.clone())
        self.input_is_constant = input_is_constant
        self.time_steps = 1
        self.mode = "snn"
        self.carry_state = False
        self.v = None
        self.record = True
        self.record_ann_levels = False
        self.reset_statistics()

    @property
    def per_channel(self) -> bool:
        return self.threshold.dim() == 1

    @property
    def calibrated(self) -> bool:
        """Whether θ differs from the amplitude λ (then spikes are emitted as 1 and scaled by λ).

        Cached on the buffers' identity and version counters: no host sync per forward."""
        key = (id(self.threshold), self.threshold._version, id(self.amplitude), self.amplitude._version)
        if getattr(self, "_calibrated_key", None) != key:
            self._calibrated_key = key
            self._calibrated = self.threshold.shape != self.amplitude.shape or not torch.equal(
                self.threshold, self.amplitude
            )
        return self._calibrated

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # calibrated thresholds are per-channel: take the checkpoint's shape
        for name in ("threshold", "amplitude"):
            value = state_dict.get(prefix + name)
            if isinstance(value, torch.Tensor) and value.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(value, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def reset_statistics(self):
        self.spikes = None
        self.neuron_steps = 0
        self.neurons = 0
        self.channel_spikes = None
        self.channel_neuron_steps = 0
        self.ann_channel_levels = None

    def reset_state(self):
        self.v = None

    def __getstate__(self):
        # torch.save(snn) on a GPU machine must load on a CPU-only one: statistics go to the CPU
        state = self.__dict__.copy()
        for key in ("spikes", "channel_spikes", "ann_channel_levels"):
            if isinstance(state.get(key), torch.Tensor):
                state[key] = state[key].cpu()
        state["v"] = None
        return state

    def extra_repr(self):
        shape = "per-channel[%d]" % self.threshold.numel() if self.per_channel else f"{self.threshold.item():.4g}"
        return f"name={self.name!r}, threshold={shape}, v_init=0.5, reset=subtract, p={self.p}"

    def _channel_view(self, tensor, ndim):
        return tensor.reshape((1, -1) + (1,) * (ndim - 2)) if tensor.dim() == 1 else tensor

    def forward(self, x):
        if self.mode == "ann":
            y = noisy_quant(x, self.p, self.amplitude, noise=None)
            if self.record_ann_levels:
                self._record_levels(y, x.dim())
            return y
        T = self.time_steps
        if self.input_is_constant:
            x_seq = x.unsqueeze(0).expand((T,) + tuple(x.shape))
        else:
            if x.shape[0] % T:
                raise RuntimeError(f"{self.name}: input batch {x.shape[0]} is not a multiple of T = {T}")
            x_seq = x.reshape((T, x.shape[0] // T) + tuple(x.shape[1:]))
        integrate_fire = _integrate_fire()
        calibrated = self.calibrated
        v_init = self.v if self.v is not None else 0.5
        spikes, counts, v_final = integrate_fire(
            x_seq, self.threshold, v_init=v_init, amplitude=1.0 if calibrated else "threshold", return_v=True
        )
        if calibrated:
            spikes = spikes * self._channel_view(self.amplitude, spikes.dim() - 1).to(spikes.dtype)
        if self.carry_state:  # kept in the graph: gradients flow across chunks
            self.v = v_final
        if self.record:
            self._record_counts(counts, T)
        return spikes.reshape((-1,) + tuple(spikes.shape[2:]))

    @torch.no_grad()
    def _record_counts(self, counts, T):
        total = counts.sum(dtype=torch.int64)
        self.spikes = total if self.spikes is None else self.spikes.to(total.device) + total
        per_sample = counts[0].numel() if counts.dim() > 0 and counts.shape[0] else 0
        self.neurons = per_sample
        self.neuron_steps += counts.numel() * T
        if counts.dim() >= 2:
            channel = counts.transpose(0, 1).reshape(counts.shape[1], -1).sum(1, dtype=torch.int64)
            if self.channel_spikes is not None:
                channel = self.channel_spikes.to(channel.device) + channel
            self.channel_spikes = channel
            self.channel_neuron_steps += (counts.numel() // counts.shape[1]) * T

    @torch.no_grad()
    def _record_levels(self, y, ndim):
        levels = y.to(torch.float32) / self._channel_view(self.amplitude, ndim) * self.p  # q in 0..p
        channel = levels.transpose(0, 1).reshape(levels.shape[1], -1).sum(1, dtype=torch.float64)
        self.ann_channel_levels = (
            channel if self.ann_channel_levels is None else self.ann_channel_levels.to(channel.device) + channel
        )


class TimeRepeat(nn.Module):
    """``[B, ...] -> [T*B, ...]``: a value that is the same at every step, repeated time-major
    where it meets a value that varies over the steps. Non-tensors pass through unchanged."""

    def __init__(self):
        super().__init__()
        self.time_steps = 1

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or self.time_steps == 1 or x.dim() == 0:
            return x
        return x.unsqueeze(0).expand((self.time_steps,) + tuple(x.shape)).reshape((-1,) + tuple(x.shape[1:]))


class SynapseMeter(nn.Module):
    """Identity observer before a conv/linear layer of the SNN: counts its operations.

    Spike-driven layers (fed by IF layers through stateless ops) cost one accumulate (AC) per
    synapse an event reaches: ``SOPs = sum over nonzero inputs of their fan-out``, computed
    exactly as ``sum(conv(nonzero_indicator, ones))`` (``nnz * out_features`` for linear).
    Analog layers (fed by the input only) cost their multiply-accumulates (MACs) per row run.
    ``macs_per_sample`` is the layer's MAC count in the ANN.
    """

    def __init__(self, name: str, layer: nn.Module, sources, spike_driven: bool):
        super().__init__()
        self.name = name
        self.layer_type = type(layer).__name__
        self.sources = tuple(sources)
        self.spike_driven = bool(spike_driven)
        if isinstance(layer, CONV_TYPES):
            self.dims = len(layer.kernel_size)
            self.geometry = dict(
                stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
            )
            self.weight_shape = tuple(layer.weight.shape)
            self.out_features = None
        else:
            self.dims = 0
            self.weight_shape = tuple(layer.weight.shape)
            self.out_features = layer.out_features
        self.record = True
        self._ones = None
        self.reset_statistics()

    def reset_statistics(self):
        self.sops = None
        self.macs = 0
        self.rows = 0
        self.macs_per_sample = 0

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ones"] = None
        if isinstance(state.get("sops"), torch.Tensor):
            state["sops"] = state["sops"].cpu()
        return state

    def forward(self, x):
        if self.record and isinstance(x, torch.Tensor):
            self._measure(x)
        return x

    @torch.no_grad()
    def _measure(self, x):
        rows = x.shape[0]
        if self.dims:
            # SOPs = sum_i [x_i != 0] * fanout_i. With W = ones, conv(indicator, W) summed over
            # its outputs is exactly that; all output channels of a group see the same window,
            # so it equals out_channels/groups * sum(conv(indicator summed over rows and
            # channels, ones[1, 1, *kernel])) -- one single-channel conv, in float64 (exact).
            indicator = (x != 0).sum(dim=(0, 1), dtype=torch.float64).reshape((1, 1) + tuple(x.shape[2:]))
            if self._ones is None or self._ones.device != x.device:
                self._ones = torch.ones((1, 1) + self.weight_shape[2:], dtype=torch.float64, device=x.device)
            conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
            geometry = dict(self.geometry, groups=1)
            fan = conv(indicator, self._ones, None, **geometry)
            out_channels, fan_in = self.weight_shape[0], math.prod(self.weight_shape[1:])
            sops = fan.sum() * (out_channels // self.geometry["groups"])
            per_row = fan[0, 0].numel() * out_channels * fan_in
        else:
            sops = (x != 0).sum(dtype=torch.float64) * self.out_features
            per_row = (x[0].numel() if rows else 0) * self.out_features
        self.sops = sops if self.sops is None else self.sops.to(sops.device) + sops
        self.macs += per_row * rows
        self.rows += rows
        self.macs_per_sample = per_row


# ---------------------------------------------------------------------------------- BN folding


def _call_counts(graph):
    counts = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def fold_batchnorm_graph(gm: fx.GraphModule) -> List[str]:
    """Fold, in place, each BatchNorm whose input is a conv/linear used only by it.

    ``W' = W * γ/σ`` (per output channel), ``b' = (b - μ) * γ/σ + β``, ``σ = sqrt(var + eps)``,
    with the running statistics. Returns the names of the folded BatchNorm modules.
    """
    folded = []
    calls = _call_counts(gm.graph)
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(node.target)
        if not isinstance(bn, _BatchNorm):
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError(
                f"{node.target}: BatchNorm with track_running_stats=False normalises with the statistics of "
                "each batch even in eval mode; it cannot be folded nor run on a [T*B] batch"
            )
        previous = node.args[0] if node.args else None
        if not (isinstance(previous, fx.Node) and previous.op == "call_module" and len(previous.users) == 1):
            continue
        layer = gm.get_submodule(previous.target)
        if type(layer) not in SYNAPTIC_TYPES or len(node.args) != 1 or node.kwargs:
            continue
        if isinstance(layer, nn.Linear) and layer.out_features != bn.num_features:
            continue
        fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        fused = fuse(layer.eval(), bn.eval())
        if calls[previous.target] == 1:
            gm.add_submodule(previous.target, fused)
        else:  # the layer is called elsewhere too: this call site gets its own folded copy
            target = free_submodule_name(gm, f"{previous.target}_bnfold")
            gm.add_submodule(target, fused)
            previous.target = target
        node.replace_all_uses_with(previous)
        gm.graph.erase_node(node)
        folded.append(str(node.target))
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return folded


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A copy of ``model`` (eval mode, traced by torch.fx) with each BatchNorm folded into the
    conv/linear before it. Its output equals ``model.eval()(x)`` up to float rounding."""
    gm = trace(copy.deepcopy(model).eval())
    fold_batchnorm_graph(gm)
    return gm.eval()


# ---------------------------------------------------------------------------------- conversion


def _check_convertible(gm: fx.GraphModule, allow_maxpool: bool):
    problems = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, NoisyQuant):
                continue
            if isinstance(module, nn.ReLU) or isinstance(module, UNCONVERTIBLE_MODULES):
                problems.append(f"{node.target}: {type(module).__name__} (run replace_activations first)")
            elif isinstance(module, MAXPOOL_TYPES) and not allow_maxpool:
                problems.append(
                    f"{node.target}: {type(module).__name__} (max pooling has no rate-coded SNN equivalent: use "
                    "replace_activations(..., maxpool_to_avgpool=True) and retrain, or to_snn(allow_maxpool=True))"
                )
            elif isinstance(module, STATEFUL_TYPES):
                problems.append(f"{node.target}: {type(module).__name__} (a stateful layer cannot see a [T*B] batch)")
        elif node.op in ("call_function", "call_method"):
            if is_relu_call(node) or is_unconvertible_call(node):
                problems.append(f"{site_name(node)}: {describe_call(node)} (run replace_activations first)")
            elif node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS and not allow_maxpool:
                problems.append(f"{site_name(node)}: {describe_call(node)} (max pooling; see to_snn(allow_maxpool=))")
    if problems:
        listing = "\n  ".join(problems)
        raise ValueError(f"to_snn cannot convert {len(problems)} site(s):\n  {listing}")


def _classify(graph, if_nodes, input_varies):
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


def to_snn(model: nn.Module, T: int, chunk: Optional[int] = None, *, fold_bn: bool = True, allow_maxpool: bool = False):
    """Convert a network with NoisyQuant activations into a multi-step SNN.

    Each NoisyQuant call site becomes an ``IFLayer`` (θ = λ, per channel where λ is,
    ``v_init = 0.5``, subtractive reset, spike amplitude θ); BatchNorm is folded into the
    conv/linear before it; everything else runs unchanged on ``[T*B, ...]`` batches.

    Args:
        model: the trained network (not modified; a deep copy is converted). It must be
            traceable by torch.fx and hold NoisyQuant activations (``replace_activations``).
        T: default number of time steps, int >= 1.
        chunk: default chunk size (steps per kernel call), None for all T at once.
        fold_bn: fold BatchNorm into the preceding conv/linear (unfoldable ones stay, as the
            per-channel affine maps they are in eval mode).
        allow_maxpool: run max pooling on spikes as it is instead of raising.

    Returns:
        ``SpikingNetwork``; ``snn(x)`` returns ``[T, B, ...]``, ``out[t-1]`` the mean of the
        last layer's outputs over steps 1..t.

    Raises:
        ValueError for T < 1, unconverted ReLU / GELU / ... sites, max pooling, stateful layers,
        a model with no NoisyQuant, or a NoisyQuant whose ``lam="auto"`` was never initialised.
    """
    T = check_time_steps("T", T)
    chunk = check_time_steps("chunk", chunk, allow_none=True)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, NoisyQuant) and module.auto_pending:
            raise ValueError(f'{name or "model"}: NoisyQuant(lam="auto") was never initialised (train one batch first)')
    gm = trace(copy.deepcopy(model).eval())
    _check_convertible(gm, allow_maxpool)
    folded = fold_batchnorm_graph(gm) if fold_bn else []

    # every NoisyQuant call site -> its own IFLayer
    graph = gm.graph
    if_nodes: Dict[fx.Node, str] = {}
    calls_seen: Dict[str, int] = {}
    pending = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), NoisyQuant):
            quant = gm.get_submodule(node.target)
            index = calls_seen.get(node.target, 0)
            calls_seen[node.target] = index + 1
            pending.append((node, quant, index))
    if not pending:
        raise ValueError("to_snn found no NoisyQuant activation in the model: run replace_activations first")
    for node, quant, index in pending:
        target = node.target if index == 0 else free_submodule_name(gm, f"{node.target}_call{index + 1}")
        layer = IFLayer(target, quant.lam, quant.p)
        node.target = target
        if_nodes[node] = target
        gm.add_submodule(target, layer)

    # which values vary over time; if batch-size arithmetic meets spikes, repeat the input instead
    kind, meta = _classify(graph, if_nodes, input_varies=False)
    input_varies = any(
        kind[n] == _BATCH and meta[n] and any(kind.get(u) == _VARYING for u in n.users)
        for n in graph.nodes
        if n in kind
    )
    if input_varies:
        kind, meta = _classify(graph, if_nodes, input_varies=True)

    repeat_count = 0

    def add_repeat(after):
        nonlocal repeat_count
        target = free_submodule_name(gm, f"time_repeat_{repeat_count}")
        repeat_count += 1
        gm.add_submodule(target, TimeRepeat())
        with graph.inserting_after(after):
            return graph.call_module(target, (after,))

    if input_varies:
        for node in [n for n in graph.nodes if n.op == "placeholder"]:
            repeated = add_repeat(node)
            node.replace_all_uses_with(repeated, delete_user_cb=lambda user: user is not repeated)
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
        source = node.args[0]
        gm.get_submodule(name).input_is_constant = kind.get(source) == _BATCH

    # a meter before every conv/linear call
    synaptic_nodes = [
        n for n in graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), SYNAPTIC_TYPES)
    ]
    synaptic_set = set(synaptic_nodes)
    seen_targets: Dict[str, int] = {}
    for index, node in enumerate(synaptic_nodes):
        layer = gm.get_submodule(node.target)
        calls = seen_targets.get(node.target, 0)
        seen_targets[node.target] = calls + 1
        name = node.target if calls == 0 else f"{node.target}_call{calls + 1}"
        sources = _upstream_if_layers(node, if_nodes, synaptic_set)
        meter = SynapseMeter(name, layer, sources, spike_driven=bool(sources))
        target = free_submodule_name(gm, f"synapse_meter_{index}")
        gm.add_submodule(target, meter)
        with graph.inserting_before(node):
            measured = graph.call_module(target, (node.args[0],))
        node.replace_input_with(node.args[0], measured)
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    snn = SpikingNetwork(gm.eval(), T, chunk)
    unfolded = [
        n.target for n in graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), _BatchNorm)
    ]
    snn.conversion_report = dict(
        if_layers=list(if_nodes.values()),
        folded_batchnorm=folded,
        unfolded_batchnorm=unfolded,
        stem_runs_once=not input_varies,
        synapses=[m.name for m in gm.modules() if isinstance(m, SynapseMeter)],
    )
    return snn


# ---------------------------------------------------------------------------------- runner


class SpikingNetwork(nn.Module):
    """A converted network run in multi-step mode. Build it with ``to_snn``.

    ``forward(x, T=None, chunk=None)``: x ``[B, ...]`` (the ANN's input) ->
    ``[T, B, ...]`` with ``out[t-1] = (1/t) * sum_{s<=t} f_s(x)``, ``f_s`` the last layer's
    output at step s. ``ann(x)`` runs the same converted graph as the quantized ANN (noise
    off, IF layers replaced by ``noisy_quant(x, p, λ, noise=None)``) -> ``[B, ...]``.

    Attributes:
        network: the converted ``torch.fx.GraphModule`` (``[T*B, ...]`` batches inside).
        if_layers: name -> ``IFLayer``, in execution order.
        synapses: name -> ``SynapseMeter``, one per conv/linear call, in execution order.
        T, chunk: the defaults for ``forward``.
        conversion_report: what ``to_snn`` did: ``if_layers``, ``folded_batchnorm``,
            ``unfolded_batchnorm`` (left as per-channel affine maps), ``stem_runs_once`` (False
            when batch-size arithmetic forced repeating the input), ``synapses``.
    """

    def __init__(self, network: fx.GraphModule, T: int, chunk: Optional[int] = None):
        super().__init__()
        self.network = network
        self.T = check_time_steps("T", T)
        self.chunk = check_time_steps("chunk", chunk, allow_none=True)
        self.samples = 0
        self.sample_steps = 0
        self.conversion_report = {}

    @property
    def if_layers(self) -> Dict[str, IFLayer]:
        return {m.name: m for m in self.network.modules() if isinstance(m, IFLayer)}

    @property
    def synapses(self) -> Dict[str, SynapseMeter]:
        return {m.name: m for m in self.network.modules() if isinstance(m, SynapseMeter)}

    def _time_modules(self):
        return [m for m in self.network.modules() if isinstance(m, (IFLayer, TimeRepeat))]

    def _set(self, **values):
        for module in self._time_modules():
            for key, value in values.items():
                if hasattr(module, key):
                    setattr(module, key, value)

    def forward(self, *inputs, T: Optional[int] = None, chunk: Optional[int] = None):
        T = self.T if T is None else check_time_steps("T", T)
        chunk = (self.chunk if chunk is None else check_time_steps("chunk", chunk)) or T
        chunk = min(chunk, T)
        outputs, running, batch = [], None, None
        self._set(mode="snn", carry_state=chunk < T)
        try:
            for start in range(0, T, chunk):
                steps = min(chunk, T - start)
                self._set(time_steps=steps)
                out = self.network(*inputs)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"SpikingNetwork supports a single tensor output, got {type(out).__name__}")
                per_step = out.reshape((steps, -1) + tuple(out.shape[1:]))
                batch = per_step.shape[1]
                summed = per_step.to(torch.float32).cumsum(0)
                if running is not None:
                    summed = summed + running
                running = summed[-1]
                count = torch.arange(start + 1, start + steps + 1, device=out.device, dtype=torch.float32)
                outputs.append((summed / count.reshape((-1,) + (1,) * (summed.dim() - 1))).to(out.dtype))
        finally:
            self._set(carry_state=False, v=None, time_steps=1)
        if any(layer.record for layer in self.if_layers.values()):
            self.samples += batch
            self.sample_steps += batch * T
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def ann(self, *inputs):
        """The quantized ANN on the same converted graph: ``[B, ...]`` (no noise, no statistics)."""
        previous = {m: m.record for m in self.network.modules() if hasattr(m, "record")}
        self._set(mode="ann", time_steps=1)
        for module in previous:
            module.record = False
        try:
            return self.network(*inputs)
        finally:
            self._set(mode="snn")
            for module, flag in previous.items():
                module.record = flag

    def reset_statistics(self):
        """Forget the counts of earlier runs."""
        self.samples = 0
        self.sample_steps = 0
        for module in self.network.modules():
            if isinstance(module, (IFLayer, SynapseMeter)):
                module.reset_statistics()

    def record_statistics(self, flag: bool = True):
        """Turn the per-layer spike / operation counting on or off (on by default)."""
        for module in self.network.modules():
            if isinstance(module, (IFLayer, SynapseMeter)):
                module.record = bool(flag)

    def statistics(self, energy_per_ac: float = 0.9e-12, energy_per_mac: float = 4.6e-12) -> dict:
        """Spike statistics and an energy estimate of the runs since the last reset.

        See ``na_kernels.nn.stats.collect_statistics`` for the keys.
        """
        from .stats import collect_statistics

        return collect_statistics(self, energy_per_ac=energy_per_ac, energy_per_mac=energy_per_mac)

    def statistics_table(self, energy_per_ac: float = 0.9e-12, energy_per_mac: float = 4.6e-12) -> str:
        """``statistics()`` as a printable table."""
        from .stats import format_statistics

        return format_statistics(self.statistics(energy_per_ac, energy_per_mac))

    def extra_repr(self):
        return f"T={self.T}, chunk={self.chunk}, if_layers={len(self.if_layers)}"
