"""Per-sample early exit (dynamic latency): each sample stops when the SNN is confident, and
finished samples leave the batch, so they stop costing compute.

``run_early_exit(snn, x, rule, T_max=..., chunk=c)`` runs the steps ``c`` at a time, carrying
every IF layer's membrane potential from one chunk to the next (as ``snn(x, chunk=c)`` does).
After each chunk it evaluates the rule at every step of the chunk on each remaining sample's
running output, the fixed-T readout ``out[t-1] = (1/t) * sum_{s<=t} f_s(x)`` computed exactly as
``SpikingNetwork.forward`` computes it. A sample exits at the first step t >= ``min_steps`` where
the rule holds (at ``T_max`` at the latest); the samples that exited in a chunk are then removed
from the batch: their rows of the input, of the stem's outputs and of every IF layer's
potential are dropped (``select_rows``: ``index_select`` on dim 0, in each value's own memory
order), so the next chunk runs on the remaining samples only. The chunks run in the network's
own buffers (``SpikingNetwork.reuse_buffers``): a later chunk, on fewer samples, takes the
buffers an earlier one left, as does the next call. The stem (the layers that see the input
only) runs once per sample, as in the fixed-T run: ``split_stem`` cuts the graph where its
values meet the steps.

Samples are independent in eval mode, so each sample's output at its exit step equals the
fixed-T run's ``out[exit_step - 1]`` for that sample: the readout is computed the same way, the
convolutions are those of the fixed-T run (event-driven where ``snn.event_driven(True)``) and
the IF kernels are exact per neuron, so the only difference is a conv/linear layer run on a
batch of another size summing its products in another order (oneDNN picks its kernel by batch
size: on the CPU, one sample of the demo's model alone in a chunk came out 1 ulp off; the tests'
network matches bitwise). A spike can flip only if that rounding crosses a threshold.

Because the rule is checked at every step of a chunk, the exit steps and predictions do not
depend on ``chunk``: a larger chunk only runs some samples for a few steps past their exit
(``steps_run``), with fewer network calls.

Statistics (spikes, SOPs, energy) count what ran: each sample's ``steps_run`` steps, and the
stem (analog MACs) once per sample.
``score_exits(outputs, rule)`` scores a fixed-T run's ``[T, B, K]`` outputs post hoc with the
same rule (what the early exit returns, without its savings).
"""

import math
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import fx

from .._layout import contiguous_strides, from_storage_order, storage_order
from .._progress import progress
from .._validation import check_int, check_positive, check_real, check_time_steps
from ..cpu.output_cache import empty_strided
from ..nn.if_layer import IFLayer
from .base import SpikingNetworkBase, TimeRepeat
from .fused import run_fused
from .stats import collect_statistics


@dataclass(frozen=True)
class ExitRule:
    """When a sample stops: at the first step t >= ``min_steps`` where, with
    ``p = softmax(out[t-1] / temperature)`` over the classes (``out[t-1]`` the mean logits over
    steps 1..t) and ``p1 >= p2`` its two largest values,

        p1 >= confidence        (when ``confidence`` is given), and
        p1 - p2 >= margin       (when ``margin`` is given);

    every sample still running stops at ``T_max``. At least one of the two must be given.

    Args:
        confidence: top softmax probability, a real in (0, 1].
        margin: top-two probability margin, a real in (0, 1].
        temperature: a finite real > 0 dividing the mean logits before the softmax.
        min_steps: no sample stops before this step, an int >= 1 (<= T_max of the run).
    """

    confidence: Optional[float] = None
    margin: Optional[float] = None
    temperature: float = 1.0
    min_steps: int = 1

    def __post_init__(self):
        if self.confidence is None and self.margin is None:
            raise ValueError(
                "ExitRule needs confidence and/or margin (e.g. ExitRule(confidence=0.9)); "
                "without a rule every sample runs T_max steps: use snn(x, T=T_max) for that"
            )
        for name in ("confidence", "margin"):
            value = getattr(self, name)
            if value is not None:
                value = check_real(
                    name,
                    value,
                    strictly_positive=True,
                    maximum=1.0,
                    accepted="a real in (0, 1] (a softmax probability)",
                )
            object.__setattr__(self, name, value)
        object.__setattr__(
            self, "temperature", check_positive("temperature", self.temperature, accepted="a finite real > 0")
        )
        object.__setattr__(
            self,
            "min_steps",
            check_int("min_steps", self.min_steps, minimum=1, meaning="the first step at which a sample may stop"),
        )

    def probabilities(self, mean_logits: torch.Tensor) -> torch.Tensor:
        """``[..., K]`` -> ``softmax(mean_logits / temperature)`` over K, in float32.

        Computed as ``softmax((x - max x) / temperature)``: the same probabilities, but a tiny
        temperature no longer turns the logits into infinities (``inf - inf`` = NaN); as
        temperature -> 0 they go to 1 on the largest logit (shared among ties)."""
        x = mean_logits.to(torch.float32)
        shifted = x - x.amax(dim=-1, keepdim=True)  # <= 0 (NaN only where a logit is NaN)
        return torch.softmax(shifted / self.temperature, dim=-1)

    def holds(self, mean_logits: torch.Tensor) -> torch.Tensor:
        """``[..., K]`` running outputs -> bool ``[...]``: whether the rule holds (min_steps aside)."""
        top = self.probabilities(mean_logits).topk(2, dim=-1).values
        ok = torch.ones(top.shape[:-1], dtype=torch.bool, device=top.device)
        if self.confidence is not None:
            ok &= top[..., 0] >= self.confidence
        if self.margin is not None:
            ok &= (top[..., 0] - top[..., 1]) >= self.margin
        return ok

    def describe(self) -> str:
        """The rule in words, e.g. ``p1 >= 0.9, min 1 step``."""
        parts = []
        if self.confidence is not None:
            parts.append(f"p1 >= {self.confidence:g}")
        if self.margin is not None:
            parts.append(f"p1-p2 >= {self.margin:g}")
        if self.temperature != 1.0:
            parts.append(f"temperature {self.temperature:g}")
        if self.min_steps != 1:
            parts.append(f"min {self.min_steps} steps")
        return ", ".join(parts)


RuleLike = Union[ExitRule, float]


def as_rule(rule: RuleLike) -> ExitRule:
    """An ``ExitRule``, or a number c as ``ExitRule(confidence=c)``."""
    if isinstance(rule, ExitRule):
        return rule
    if isinstance(rule, bool) or not isinstance(rule, (int, float)):
        raise TypeError(f"rule must be an ExitRule or a confidence threshold in (0, 1], got {rule!r}")
    return ExitRule(confidence=rule)


@dataclass
class EarlyExitResult:
    """What an early-exit run returns (all tensors on the CPU, B samples, K classes).

    Per sample: ``predictions`` [B] (argmax of ``outputs``), ``exit_steps`` [B] (the step t in
    1..T_max whose running output decided), ``steps_run`` [B] (steps computed: the end of the
    chunk the sample exited in, >= exit_steps), ``outputs`` [B, K] (the running mean of the
    logits at the exit step, in the network's dtype), ``labels`` [B] when given.
    Aggregate: ``accuracy``, ``mean_exit_step``, ``mean_steps_run``, ``exit_histogram``, and
    ``statistics`` (``SpikingNetwork.statistics()`` of this run: spikes, SOPs, energy over the
    steps actually run; None when the network's statistics are off). ``summary()`` prints them.
    """

    predictions: torch.Tensor
    exit_steps: torch.Tensor
    steps_run: torch.Tensor
    outputs: torch.Tensor
    T_max: int
    chunk: int
    rule: ExitRule
    labels: Optional[torch.Tensor] = None
    statistics: Optional[Dict[str, Any]] = None

    @property
    def samples(self) -> int:
        return int(self.exit_steps.numel())

    @property
    def accuracy(self) -> Optional[float]:
        """Fraction of predictions equal to the labels (None without labels)."""
        if self.labels is None or not self.samples:
            return None
        return float((self.predictions == self.labels).double().mean())

    @property
    def mean_exit_step(self) -> float:
        return float(self.exit_steps.double().mean()) if self.samples else float("nan")

    @property
    def mean_steps_run(self) -> float:
        return float(self.steps_run.double().mean()) if self.samples else float("nan")

    @property
    def exit_histogram(self) -> List[int]:
        """``h[t-1]`` = number of samples that exited at step t, t = 1..T_max."""
        return torch.bincount(self.exit_steps - 1, minlength=self.T_max).tolist()

    def as_row(self) -> Dict[str, Any]:
        """A JSON-ready summary: the rule, accuracy, exit steps, histogram, SOPs and energy."""
        row = dict(
            rule=self.rule.describe(),
            confidence=self.rule.confidence,
            margin=self.rule.margin,
            temperature=self.rule.temperature,
            min_steps=self.rule.min_steps,
            T_max=self.T_max,
            chunk=self.chunk,
            samples=self.samples,
            accuracy=self.accuracy,
            mean_exit_step=self.mean_exit_step,
            mean_steps_run=self.mean_steps_run,
            exit_histogram=self.exit_histogram,
        )
        if self.statistics is not None:
            row.update(
                sops_per_sample=self.statistics["total"]["sops_per_sample"],
                firing_rate=self.statistics["total"]["firing_rate"],
                snn_j_per_sample=self.statistics["energy"]["snn_j_per_sample"],
                energy_ratio=self.statistics["energy"]["ratio"],
            )
        return row

    def summary(self) -> str:
        """A few readable lines: the rule, accuracy, exit steps and their histogram, energy."""
        accuracy = "" if self.accuracy is None else f"accuracy {100 * self.accuracy:.2f} %, "
        early = float((self.exit_steps < self.T_max).double().mean()) if self.samples else 0.0
        lines = [
            f"early exit ({self.rule.describe()}): {self.samples} samples, T_max {self.T_max}, chunk {self.chunk}",
            f"{accuracy}mean exit step {self.mean_exit_step:.3g} (steps run {self.mean_steps_run:.3g}), "
            f"{100 * early:.1f} % stopped before T_max",
        ]
        shown = [(t, n) for t, n in enumerate(self.exit_histogram, 1) if n or self.T_max <= 16]  # long T: nonzero only
        steps = [str(t) for t, _ in shown]
        counts = [str(n) for _, n in shown]
        widths = [max(len(a), len(b)) for a, b in zip(steps, counts)]
        lines.append("exit step  " + " ".join(s.rjust(w) for s, w in zip(steps, widths)))
        lines.append("samples    " + " ".join(c.rjust(w) for c, w in zip(counts, widths)))
        if self.statistics is not None:
            total, energy = self.statistics["total"], self.statistics["energy"]
            lines.append(
                f"firing rate {total['firing_rate']:.4f}, {total['sops_per_sample']:.4g} SOPs/sample, "
                f"energy {energy['snn_j_per_sample']:.4g} J/sample = {energy['ratio']:.3g}x the ANN "
                "(steps actually run)"
            )
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    @classmethod
    def concatenate(cls, parts: Sequence["EarlyExitResult"], statistics=None) -> "EarlyExitResult":
        """The results of several batches (same rule, T_max, chunk) as one."""
        if not parts:
            raise ValueError("concatenate needs at least one EarlyExitResult")
        first = parts[0]
        labels = None if any(p.labels is None for p in parts) else torch.cat([p.labels for p in parts])
        return cls(
            torch.cat([p.predictions for p in parts]),
            torch.cat([p.exit_steps for p in parts]),
            torch.cat([p.steps_run for p in parts]),
            torch.cat([p.outputs for p in parts]),
            first.T_max,
            first.chunk,
            first.rule,
            labels,
            statistics,
        )


# ---------------------------------------------------------------------------------- scoring


def score_exits(outputs: torch.Tensor, rule: RuleLike) -> torch.Tensor:
    """Exit steps of a fixed-T run, scored post hoc: outputs ``[T, B, K]`` (``snn(x, T=T)``) ->
    int64 ``[B]``, the first t >= min_steps where ``rule.holds(outputs[t-1])``, else T."""
    rule = as_rule(rule)
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 3:
        raise ValueError(
            f"outputs must be a [T, B, K] tensor (snn(x) of a classifier), got "
            f"{tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__}"
        )
    if outputs.shape[2] < 2:
        raise ValueError(f"outputs must have K >= 2 classes (dim 2), got shape {tuple(outputs.shape)}")
    T = outputs.shape[0]
    ok = rule.holds(outputs)
    ok[: min(rule.min_steps, T) - 1] = False
    ok[-1] = True
    return ok.to(torch.int8).argmax(0).to(torch.int64) + 1


# ---------------------------------------------------------------------------------- the run


def _check_network(snn):
    if not isinstance(snn, SpikingNetworkBase):
        raise TypeError(f"snn must be a SpikingNetwork (from to_snn), got {type(snn).__name__}")


def _check_batch(x, labels):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor [B, ...], got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must be [B, ...] with B >= 1 samples, got shape {tuple(x.shape)}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor [B] (class indices), got {labels!r:.80}")
        if tuple(labels.shape) != (x.shape[0],):
            raise ValueError(f"labels must have shape [B] = ({x.shape[0]},) like x, got {tuple(labels.shape)}")


def _check_labels(labels, outputs):
    """Labels ``[B]`` must index the K classes of ``outputs`` ``[B, K]``: else accuracy is silently 0."""
    classes = outputs.shape[-1]
    if labels is not None and labels.numel() and not bool(((labels >= 0) & (labels < classes)).all()):
        raise ValueError(
            f"labels must be class indices in [0, {classes}) (the network has {classes} outputs), "
            f"got values from {int(labels.min())} to {int(labels.max())}"
        )


def _check_steps(snn, rule, T_max, chunk):
    T_max = snn.T if T_max is None else check_time_steps("T_max", T_max)
    chunk = check_time_steps("chunk", chunk)
    if rule.min_steps > T_max:
        raise ValueError(f"min_steps ({rule.min_steps}) must be <= T_max ({T_max}): no sample could stop early")
    return T_max, min(chunk, T_max)


def compact(snn, keep: torch.Tensor) -> None:
    """Keep only the rows ``keep`` (int64 [B'] indices into the current batch) of every IF
    layer's carried membrane potential ``[B, C, ...]``: the samples not in ``keep`` leave."""
    _compact_layers(snn.if_layers.values(), keep)


def _compact_layers(layers, keep):
    for layer in layers:
        if layer.v is not None:
            layer.v = select_rows(layer.v, keep)


def select_rows(value: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``value.index_select(0, keep)`` (value ``[B, ...]``, keep int64 ``[B']``) -> ``[B', ...]`` in
    value's own memory order where dim 0 is its outermost (a channels-last value stays channels-last,
    as the kernels that read it next want it), on the CPU into the active workspace where it applies
    (``output_cache.empty_strided``); else as ``index_select`` lays it out."""
    order, stored = storage_order(value)
    if value.dim() < 2 or order[0] != 0 or not stored.is_contiguous() or value.device.type != "cpu":
        return value.index_select(0, keep)
    shape = (keep.numel(),) + tuple(stored.shape[1:])
    out = empty_strided(shape, contiguous_strides(shape), dtype=value.dtype)
    torch.index_select(stored, 0, keep, out=out)
    return from_storage_order(out, order)


def _set_on(modules, **values):
    """``SpikingNetwork._set`` on a list of its time modules found once (not per chunk)."""
    for module in modules:
        for key, value in values.items():
            if hasattr(module, key):
                setattr(module, key, value)


_SPLITS = weakref.WeakKeyDictionary()  # network -> (weakref to its graph, stem, body); (.., None, None): no cut


def split_stem(network: fx.GraphModule):
    """``(stem, body)``: the converted graph cut where its ``[B, ...]`` values (the same at
    every step: the stem) meet the steps, i.e. at the inputs of its ``TimeRepeat`` modules and
    of the IF layers with ``input_is_constant``. ``stem(x)`` returns those values as a tuple;
    ``body(x, *values)`` is the rest of the graph (``body(x, *stem(x)) == network(x)``), so a
    chunked run computes the stem once. Both share the network's modules. ``(None, None)`` when
    nothing can be cut (the input itself is repeated). Cached per network."""
    cached = _SPLITS.get(network)
    if cached is not None and cached[0]() is network.graph:
        return cached[1:]
    graph = network.graph
    boundaries = []
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = network.get_submodule(node.target)
        if isinstance(module, TimeRepeat) or (isinstance(module, IFLayer) and module.input_is_constant):
            source = node.args[0]
            if isinstance(source, fx.Node) and source.op != "placeholder" and source not in boundaries:
                boundaries.append(source)
    stem = body = None
    if boundaries:
        stem_graph, values = fx.Graph(), {}
        stem_graph.graph_copy(graph, values)
        stem_graph.output(tuple(values[node] for node in boundaries))
        body_graph, values = fx.Graph(), {}
        result = body_graph.graph_copy(graph, values)
        last_input = [n for n in body_graph.nodes if n.op == "placeholder"][-1]
        for index, node in enumerate(reversed(boundaries)):
            with body_graph.inserting_after(last_input):
                value = body_graph.placeholder(f"stem_{len(boundaries) - 1 - index}")
            values[node].replace_all_uses_with(value)
        body_graph.output(result)
        stem, body = fx.GraphModule(network, stem_graph), fx.GraphModule(network, body_graph)
        for part in (stem, body):
            part.graph.eliminate_dead_code()
            part.graph.lint()
            part.recompile()
            part.delete_all_unused_submodules()  # only the part's own references: the network keeps its modules
    _SPLITS[network] = (weakref.ref(graph), stem, body)  # the graph refers to the network: no strong ref
    return stem, body


def _per_step_output(out, steps, batch):
    """The network's chunk output ``[steps*B, K]`` as ``[steps, B, K]``; ValueError otherwise."""
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != steps * batch or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"snn: early exit needs a classifier whose output is [B, classes] (classes >= 2) per "
            f"step, i.e. [{steps}*{batch}, K] for this chunk; got {shape}"
        )
    return out.reshape(steps, batch, out.shape[1])


@torch.no_grad()
def _run_batch(snn, x, rule: ExitRule, T_max: int, chunk: int):
    """The chunked run with compaction on one batch: (outputs [B, K], exit_steps [B], steps_run [B]).
    Its network calls run in the network's workspace (``SpikingNetwork._reusing``: at most ``chunk``
    steps of x's batch per call; later chunks, on fewer samples, in the same buffers).

    Adds B samples and sum(steps_run) sample-steps to the network's statistics counters."""
    time_modules = snn._time_modules()
    layers = list(snn.if_layers.values())
    _set_on(time_modules, mode="snn", carry_state=True)
    try:
        with snn._reusing((x,), chunk):
            outputs, exit_steps, steps_run = _chunks(snn, x, rule, T_max, chunk, time_modules, layers)
    finally:
        _set_on(time_modules, carry_state=False, v=None, time_steps=1)
    if any(layer.record for layer in layers):
        snn.samples += x.shape[0]
        snn.sample_steps += int(steps_run.sum())
    return outputs.cpu(), exit_steps.cpu(), steps_run.cpu()


def _chunks(snn, x, rule, T_max, chunk, time_modules, layers):
    """``_run_batch``'s chunk loop, with the time modules set up for it."""
    batch = x.shape[0]
    device = x.device
    alive = torch.arange(batch, device=device)  # original index of each sample still running
    exit_steps = torch.full((batch,), T_max, dtype=torch.int64, device=device)
    steps_run = torch.full((batch,), T_max, dtype=torch.int64, device=device)
    outputs = None
    history = None  # float32 [t, B', K]: the per-step outputs f_s of the samples still running
    t = 0
    stem, body = split_stem(snn.network)
    inputs = (x,) + tuple(stem(x)) if stem is not None else (x,)  # the stem runs once per sample
    while t < T_max and alive.numel():
        steps = min(chunk, T_max - t)
        _set_on(time_modules, time_steps=steps)
        out = run_fused(
            body if body is not None else snn.network, *inputs, event_driven=getattr(snn, "event_convolutions", False)
        )
        per_step = _per_step_output(out, steps, alive.numel()).to(torch.float32)
        if outputs is None:
            outputs = torch.empty((batch, per_step.shape[2]), dtype=out.dtype, device=device)
        history = per_step if history is None else torch.cat([history, per_step])
        # the fixed-T readout, as SpikingNetwork.forward computes it: a float32 cumsum over all
        # steps so far (a prefix of the fixed-T cumsum), divided by t, cast to the output dtype
        count = torch.arange(t + 1, t + steps + 1, device=device, dtype=torch.float32).reshape(-1, 1, 1)
        means = (history.cumsum(0)[t:] / count).to(out.dtype)
        ok = rule.holds(means)
        first_allowed = max(rule.min_steps - t - 1, 0)
        ok[:first_allowed] = False
        t += steps
        if t == T_max:
            ok[-1] = True
        done = ok.any(0)
        finished = done.nonzero().squeeze(1)
        if finished.numel():
            first = ok.to(torch.int8).argmax(0).index_select(0, finished)
            original = alive.index_select(0, finished)
            exit_steps[original] = t - steps + 1 + first
            steps_run[original] = t
            outputs[original] = means[first, finished]
            keep = (~done).nonzero().squeeze(1)
            if keep.numel():
                alive = alive.index_select(0, keep)
                inputs = tuple(select_rows(value, keep) for value in inputs)
                history = history.index_select(1, keep)
                _compact_layers(layers, keep)
            else:
                alive = keep
    return outputs, exit_steps, steps_run


def _statistics(snn):
    return collect_statistics(snn) if any(layer.record for layer in snn.if_layers.values()) else None


def run_early_exit(
    snn,
    x: torch.Tensor,
    rule: RuleLike,
    *,
    T_max: Optional[int] = None,
    chunk: int = 1,
    labels: Optional[torch.Tensor] = None,
) -> EarlyExitResult:
    """Run ``snn`` on the batch x ``[B, ...]`` with per-sample early exit (see the module doc),
    under ``torch.no_grad`` (inference: the exits are not differentiable).

    Args:
        snn: a ``SpikingNetwork`` whose output is ``[B, K]`` class scores per step.
        x: the input batch ``[B, ...]`` (the ANN's input).
        rule: an ``ExitRule``, or a number c for ``ExitRule(confidence=c)``.
        T_max: the most steps any sample runs, an int >= 1 (default ``snn.T``).
        chunk: steps per network call, an int >= 1 (clipped to T_max); the rule is checked at
            every step and finished samples leave the batch after each chunk.
        labels: optional int ``[B]`` class indices, for ``accuracy``.

    Returns:
        ``EarlyExitResult``: ``outputs[i] == snn(x, T=T_max)[exit_steps[i] - 1, i]`` per sample.
        The network's statistics are reset first and then hold this run (``result.statistics``).

    Raises:
        ValueError for T_max < 1, chunk < 1, min_steps > T_max, a network output that is not
        ``[B, classes]``, labels not ``[B]``; TypeError for a non-ExitRule rule, non-tensor x.
    """
    _check_network(snn)
    rule = as_rule(rule)
    T_max, chunk = _check_steps(snn, rule, T_max, chunk)
    _check_batch(x, labels)
    snn.reset_statistics()
    outputs, exit_steps, steps_run = _run_batch(snn, x, rule, T_max, chunk)
    _check_labels(labels, outputs)
    return EarlyExitResult(
        outputs.argmax(-1),
        exit_steps,
        steps_run,
        outputs,
        T_max,
        chunk,
        rule,
        None if labels is None else labels.cpu(),
        _statistics(snn),
    )


def evaluate_early_exit(
    snn,
    batches: Iterable,
    rule: RuleLike,
    *,
    T_max: Optional[int] = None,
    chunk: int = 1,
    desc: str = "early exit",
    show_progress: bool = False,
) -> EarlyExitResult:
    """``run_early_exit`` over ``batches`` (an iterable of ``(x, labels)`` pairs or of x
    tensors, e.g. a ``BatchLoader``), as one result; statistics reset once, over all batches."""
    _check_network(snn)
    rule = as_rule(rule)
    T_max, chunk = _check_steps(snn, rule, T_max, chunk)
    snn.reset_statistics()
    parts = []
    for item in progress(batches, desc=desc, enabled=show_progress):
        x, labels = item if isinstance(item, (tuple, list)) else (item, None)
        _check_batch(x, labels)
        outputs, exit_steps, steps_run = _run_batch(snn, x, rule, T_max, chunk)
        _check_labels(labels, outputs)
        parts.append(
            EarlyExitResult(
                outputs.argmax(-1),
                exit_steps,
                steps_run,
                outputs,
                T_max,
                chunk,
                rule,
                None if labels is None else labels.cpu(),
            )
        )
    if not parts:
        raise ValueError("batches must yield at least one batch")
    return EarlyExitResult.concatenate(parts, _statistics(snn))


def exit_tradeoff(
    snn,
    batches: Iterable,
    rules: Sequence[RuleLike],
    *,
    T_max: Optional[int] = None,
    chunk: int = 1,
    show_progress: bool = False,
) -> List[Dict[str, Any]]:
    """The accuracy / mean-exit-step trade-off: one ``EarlyExitResult.as_row()`` per rule (a
    number c means ``ExitRule(confidence=c)``), each a real early-exit run over ``batches``
    (re-iterable, yielding ``(x, labels)``). Plot ``row["mean_exit_step"]`` against
    ``row["accuracy"]`` next to the fixed-T curve ``(t, acc[t-1])`` of ``evaluate_snn``."""
    rules = [as_rule(rule) for rule in rules]
    if not rules:
        raise ValueError("rules must hold at least one ExitRule or confidence threshold")
    return [
        evaluate_early_exit(
            snn,
            batches,
            rule,
            T_max=T_max,
            chunk=chunk,
            show_progress=show_progress,
            desc=f"early exit {rule.describe()}",
        ).as_row()
        for rule in rules
    ]


def format_tradeoff(rows: Sequence[Dict[str, Any]], fixed_accuracy: Optional[Sequence[float]] = None) -> str:
    """``exit_tradeoff`` rows as a table; with ``fixed_accuracy`` (``acc[t-1]`` of the fixed-T run,
    as ``evaluate_snn`` returns it) also the fixed-T accuracy at the rounded-up mean exit step and
    the fewest fixed steps reaching each row's accuracy."""
    head = ["rule", "accuracy", "mean exit step", "steps run", "SOPs/sample", "energy/ANN"]
    if fixed_accuracy is not None:
        head += ["fixed T=ceil(mean)", "fixed T for same acc"]
    table = []
    for row in rows:
        acc = row.get("accuracy")
        cells = [
            row["rule"],
            "-" if acc is None else f"{100 * acc:.2f} %",
            f"{row['mean_exit_step']:.2f}",
            f"{row['mean_steps_run']:.2f}",
            f"{row['sops_per_sample']:.4g}" if "sops_per_sample" in row else "-",
            f"{row['energy_ratio']:.3g}x" if "energy_ratio" in row else "-",
        ]
        if fixed_accuracy is not None:
            T = len(fixed_accuracy)
            at = min(T, max(1, math.ceil(row["mean_exit_step"] - 1e-9)))
            cells.append(f"{100 * fixed_accuracy[at - 1]:.2f} % (T={at})")
            needed = None if acc is None else next((t + 1 for t, a in enumerate(fixed_accuracy) if a >= acc), None)
            cells.append("-" if acc is None else (f"T={needed}" if needed else f"> {T}"))
        table.append(cells)
    widths = [max(len(r[i]) for r in [head] + table) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), "-" * len(line(head))] + [line(cells) for cells in table])
