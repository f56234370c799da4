"""SpikingNetwork: a converted network run for T steps at once, with per-step outputs.

- the input is the same at every step; layers that only depend on the input (the stem before
  the first IF layer) run once on the ``[B, ...]`` batch;
- every later stateless layer (conv, linear, pooling, flatten, dropout in eval, residual
  additions, concatenation) sees a ``[T*B, ...]`` batch, time-major; a ``TimeRepeat`` turns
  a ``[B, ...]`` value into ``[T*B, ...]`` where it meets one that varies over the steps;
- each ``IFLayer`` reshapes its input to ``[T, B, ...]`` and calls ``integrate_fire`` once
  over all T steps;
- the output ``[T, B, ...]`` holds at step t the mean of the last layer's outputs over steps
  1..t, so ``out[t-1]`` is the SNN's prediction after t steps;
- ``chunk=c`` processes the T steps c at a time, carrying each IF layer's membrane potential
  from one chunk to the next, so memory is that of a c-step run (under no_grad; with autograd
  the potentials stay in the graph and gradients flow across chunks);
- ``forward`` runs the graph with each residual ``conv(x) + other`` as one convolution with an
  add post-op where it applies (``fused.fuse_residual_adds``; not under torch.compile, which
  traces the plain graph); ``network`` keeps the plain graph;
- ``event_driven(True)`` (off by default) runs the convolutions that read spikes as event-driven
  convolutions (``na_kernels.event_conv2d``: CPU, float32, inference; cost ~ nonzero inputs),
  see ``fused``;
- without autograd on the CPU, the kernels' large outputs (IF spikes, counts and potentials,
  event-driven convolutions, the dense convolutions of ``fused``) come from the network's own
  ``Workspace`` (``na_kernels.cpu.workspace``), kept from one call to the next: a buffer is
  handed out again only when nothing else holds its memory. ``reuse_buffers`` sets it up.
"""

import contextlib
import copy
from typing import Dict, Optional

import torch
from torch import fx

from .._validation import check_bool, check_real, check_time_steps
from ..cpu.workspace import Workspace
from ..nn.if_layer import IFLayer
from .base import SpikingNetworkBase, TimeRepeat
from .clipped import ClippedNetwork, clip_graph
from .early_exit import run_early_exit
from .fused import run_fused
from .record import save_snn
from .stats import SynapseMeter, collect_statistics, format_statistics

DEFAULT_REUSE_MB = 1024  # the default cap of the buffers a network keeps between calls


class SpikingNetwork(SpikingNetworkBase):
    """A converted network run in multi-step mode. Build it with ``to_snn``.

    ``forward(x, T=None, chunk=None)``: x ``[B, ...]`` (the ANN's input) ->
    ``[T, B, ...]`` with ``out[t-1] = (1/t) * sum_{s<=t} f_s(x)``, ``f_s`` the last layer's
    output at step s. ``ann(x)`` runs the same converted graph as the quantized ANN (noise
    off, IF layers replaced by ``noisy_quant(x, p, λ, noise=None)``) -> ``[B, ...]``.
    ``statistics()`` / ``statistics_table()`` report the runs since ``reset_statistics()``.
    It pickles: ``torch.save(snn, path)``, ``torch.load(path, weights_only=False)``.

    Attributes:
        network: the converted ``torch.fx.GraphModule`` (``[T*B, ...]`` batches inside).
        if_layers: name -> ``IFLayer``, in execution order.
        synapses: name -> ``SynapseMeter``, one per conv/linear call, in execution order.
        T, chunk: the defaults for ``forward``.
        workspace: the buffers kept from one pass without autograd to the next (``reuse_buffers``,
            ``na_kernels.cpu.workspace.Workspace``; ``workspace.info()`` says what it holds).
        conversion_report: what ``to_snn`` did: ``if_layers``, ``folded_batchnorm``,
            ``unfolded_batchnorm`` (left as per-channel affine maps), ``stem_runs_once`` (False
            when batch-size arithmetic forced repeating the input), ``synapses``.
    """

    def __init__(self, network: fx.GraphModule, T: int, chunk: Optional[int] = None):
        super().__init__()
        self.network = network
        self.T = check_time_steps("T", T)
        self.chunk = check_time_steps("chunk", chunk, allow_none=True)
        # samples and sample-steps (sum of B*T) recorded: a tensor updated in place (no host sync,
        # no Python counter for torch.compile to guard on)
        self.register_buffer("run_counts", torch.zeros(2, dtype=torch.int64), persistent=False)
        self.conversion_report = {}
        self.event_convolutions = False
        self.workspace = Workspace(DEFAULT_REUSE_MB << 20)
        self._workspace_key = None

    @property
    def samples(self) -> int:
        """Samples run with statistics on since the last reset."""
        return int(self.run_counts[0])

    @samples.setter
    def samples(self, value):
        self.run_counts[0] = value

    @property
    def sample_steps(self) -> int:
        """Sum of B*T over the runs with statistics on since the last reset."""
        return int(self.run_counts[1])

    @sample_steps.setter
    def sample_steps(self, value):
        self.run_counts[1] = value

    @property
    def if_layers(self) -> Dict[str, IFLayer]:
        """Name -> IFLayer, in execution order."""
        return {m.name: m for m in self.network.modules() if isinstance(m, IFLayer)}

    @property
    def synapses(self) -> Dict[str, SynapseMeter]:
        """Name -> SynapseMeter (one per conv/linear call), in execution order."""
        return {m.name: m for m in self.network.modules() if isinstance(m, SynapseMeter)}

    def _time_modules(self):
        return [m for m in self.network.modules() if isinstance(m, (IFLayer, TimeRepeat))]

    def _set(self, **values):
        for module in self._time_modules():
            for key, value in values.items():
                if hasattr(module, key):
                    setattr(module, key, value)

    def forward(self, *inputs, T: Optional[int] = None, chunk: Optional[int] = None):
        """x ``[B, ...]`` -> ``[T, B, ...]``, ``out[t-1] = (1/t) * sum_{s<=t} f_s(x)``; T and chunk
        default to ``self.T`` / ``self.chunk`` (ints >= 1; chunk None: all T steps at once)."""
        T = self.T if T is None else check_time_steps("T", T)
        chunk = (self.chunk if chunk is None else check_time_steps("chunk", chunk)) or T
        chunk = min(chunk, T)
        outputs, running, batch = [], None, None
        self._set(mode="snn", carry_state=chunk < T)
        try:
            with self._reusing(inputs, chunk):
                for start in range(0, T, chunk):
                    steps = min(chunk, T - start)
                    self._set(time_steps=steps)
                    out = run_fused(self.network, *inputs, event_driven=getattr(self, "event_convolutions", False))
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
            with torch.no_grad():
                self.run_counts[0] += batch
                self.run_counts[1] += batch * T
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def _reusing(self, inputs, steps):
        """The workspace, active for a pass without autograd on CPU inputs (else a null context) whose
        network calls run at most ``steps`` steps of the inputs' batch; let go first when the pass
        differs from the ones the buffers were kept for (inputs' shapes past the batch, dtypes, mode)
        or is larger (a larger batch, or more steps per call): a smaller pass runs in them."""
        workspace = getattr(self, "workspace", None)
        if (
            workspace is None
            or workspace.limit_bytes == 0
            or torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or not all(isinstance(x, torch.Tensor) and x.device.type == "cpu" for x in inputs)
        ):
            return contextlib.nullcontext()
        kind = (tuple((tuple(x.shape[1:]), x.dtype) for x in inputs), self.event_convolutions)
        batch = max((x.shape[0] for x in inputs if x.dim()), default=1)
        kept = self._workspace_key
        if kept is None or kept[0] != kind:
            workspace.release()
            self._workspace_key = (kind, batch, steps)
        elif batch > kept[1] or steps > kept[2]:
            workspace.release()
            self._workspace_key = (kind, max(batch, kept[1]), max(steps, kept[2]))
        return workspace.active()

    def reuse_buffers(self, limit_mb: int = DEFAULT_REUSE_MB) -> "SpikingNetwork":
        """Keep up to ``limit_mb`` MiB of the kernels' large outputs from one pass without autograd
        to the next (0: none; ``DEFAULT_REUSE_MB`` by default), so repeated passes run on memory
        already mapped. Bitwise the same results; a buffer is reused only when nothing else holds its
        memory (``na_kernels.cpu.workspace``). Between calls it holds about the outputs one pass
        has alive at once; a pass on fewer samples or steps per call (an early exit's later chunks)
        runs in the same buffers. Let go by ``release_buffers()``, by ``.to()`` / ``.cpu()`` and the
        like, by ``event_driven()``, and by a pass whose inputs differ past the batch dim (shapes,
        dtypes) or that is larger (batch, or steps per call). Not saved. Returns self."""
        limit_mb = int(check_real("limit_mb", limit_mb, minimum=0))
        self.release_buffers()
        self.workspace = Workspace(limit_mb << 20)
        return self

    def release_buffers(self) -> None:
        """Let the buffers kept for reuse go (``reuse_buffers``); outputs a caller holds are unaffected."""
        workspace = getattr(self, "workspace", None)
        if workspace is not None:
            workspace.release()
        self._workspace_key = None

    def _apply(self, fn, *args, **kwargs):
        self.release_buffers()
        return super()._apply(fn, *args, **kwargs)

    def event_driven(self, flag: bool = True) -> "SpikingNetwork":
        """Run (True) or stop running (False) each convolution that reads an IF layer's spikes,
        plain or fused with its residual add, as ``na_kernels.event_conv2d``: its cost scales
        with the nonzero inputs (spikes), its output is channels-last. Applies on the CPU in
        float32 without autograd (elsewhere, or above 30 % nonzero inputs, 25 % for Cout <= 16:
        ``event_conv.default_max_density``, the dense convolution runs); the first
        convolution (the image) stays dense.
        The convolutions sum in another float32 order, so a membrane potential can differ in the
        last bits and a spike at the threshold can flip (docs/design.md). Not saved by ``save``.
        Returns self."""
        self.event_convolutions = check_bool("flag", flag)
        self.release_buffers()
        return self

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
        self.run_counts.zero_()
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

        See ``na_kernels.snn.stats.collect_statistics`` for the keys.
        """
        return collect_statistics(self, energy_per_ac=energy_per_ac, energy_per_mac=energy_per_mac)

    def statistics_table(self, energy_per_ac: float = 0.9e-12, energy_per_mac: float = 4.6e-12) -> str:
        """``statistics()`` as a printable table."""
        return format_statistics(self.statistics(energy_per_ac, energy_per_mac))

    def clipped(self) -> ClippedNetwork:
        """This network's T → ∞ limit, every IF layer replaced by ``clamp(x, 0, θ) * a/θ``
        (``clamp(x, 0, λ)`` uncalibrated): a ``ClippedNetwork``, ``[B, ...] -> [B, ...]``.
        See ``na_kernels.nn.clipped_network``."""
        return clip_graph(copy.deepcopy(self.network))

    def extra_repr(self):
        return f"T={self.T}, chunk={self.chunk}, if_layers={len(self.if_layers)}"

    def save(self, path) -> None:
        """Write this network to ``path`` for ``na_kernels.nn.load_snn`` (no model code needed to
        load it; a JSON header and raw tensors, never code: see ``na_kernels.snn.record``)."""
        save_snn(self, path)

    def run_early_exit(self, x, rule, *, T_max: Optional[int] = None, chunk: int = 1, labels=None):
        """Per-sample early exit on x ``[B, ...]``: the steps run ``chunk`` at a time, each sample
        stops at the first step t >= ``rule.min_steps`` where ``rule`` holds on its running output
        ``out[t-1]`` (at ``T_max``, default ``self.T``, at the latest) and leaves the batch.
        ``rule``: an ``ExitRule`` or a confidence threshold c (top softmax probability >= c).
        Returns an ``EarlyExitResult`` (see ``na_kernels.snn.early_exit.run_early_exit``)."""
        return run_early_exit(self, x, rule, T_max=T_max, chunk=chunk, labels=labels)
