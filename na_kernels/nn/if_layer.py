"""IFLayer: the integrate-and-fire neurons that replace one NoisyQuant call site in an SNN."""

import math

import torch

from .._layout import from_storage_order, storage_order
from .._spec import DEFAULT_V_INIT as V_INIT  # integrate_fire's v_init, as a fraction of the threshold θ
from .._validation import check_dense, check_parameter_values
from ..ops.integrate_fire import integrate_fire, integrate_fire_carried
from ..ops.noisy_quant import noisy_quant
from .buffers import FixedDtypeBuffers
from .synapses import synaptic_ops

# Whether a run lets the kernel leave unwritten what this layer will not read: the spike counts
# unless ``record``, the final potential unless ``carry_state`` (False: both written, as a bench
# baseline).
SKIP_UNREAD_OUTPUTS = True


def sum_over_batch(counts: torch.Tensor) -> torch.Tensor:
    """``counts.sum(0, dtype=torch.int32)`` for int32 counts ``[B, C, ...]``, read in memory order:
    torch reduces dim 0 of a channels-last tensor along a strided path (about 75x slower at
    ``[64, 16, 32, 32]``). The same integers, in ``counts``' layout without dim 0."""
    order, stored = storage_order(counts)
    if order[0] != 0 or not stored.is_contiguous():
        return counts.sum(0, dtype=torch.int32)
    rest = stored.shape[1:]
    summed = stored.reshape(counts.shape[0], math.prod(rest)).sum(0, dtype=torch.int32).reshape((1,) + rest)
    return from_storage_order(summed, order)[0]


class IFLayer(FixedDtypeBuffers):
    """Integrate-and-fire neurons replacing one NoisyQuant call site.

    Per neuron, over the T steps of one run (``integrate_fire``, subtractive reset)::

        v = v_init * θ;  h = v + x[t];  s = [h >= θ];  v = h - s*θ;  out[t] = s * a

    with ``v_init = 0.5`` (``V_INIT``; in a chunked run, the potential the previous chunk left),
    threshold θ and amplitude a = λ (θ = λ until ``calibrate_thresholds`` changes θ), both
    scalars or per-channel ([C], channel = dim 1 of a step).

    Input: ``[T*B, C, ...]`` (time-major), or ``[B, C, ...]`` when the input is the same at
    every step (``input_is_constant``); output ``[T*B, C, ...]`` in the input's dtype.
    In "ann" mode the layer is the quantized ANN activation ``noisy_quant(x, p, λ, noise=None)``.

    Statistics of the runs since the last reset, while ``record`` is True: ``spikes`` (total),
    ``neuron_steps`` (neurons x samples x steps), ``neurons`` (per sample), 0-d int64 tensors
    updated in place, and with ``record_channels`` also ``channel_spikes`` ([C] int64, for
    ``calibrate_thresholds``); ``route_sops`` (float64, one per entry of ``routes``: the SOPs
    its spikes cause in the conv/linear layers they reach through routing ops, see
    ``na_kernels.nn.synapses``). All from the kernel's int32 spike counts (one reduction over
    ``[B, C, ...]`` per run, T times smaller than the spikes), without a host sync.

    ``reset`` ("subtract" or "zero": hard reset to 0) and ``v_init`` (the start potential as a
    fraction of θ) are class defaults; ``from_nir`` sets them per layer for a graph from another
    tool ("zero" / 0.0 for NIR's IF), and ``save_snn`` refuses a layer that sets them.

    θ, the amplitude and ``route_sops`` keep float32 / float64 when the network is cast
    (``snn.to(torch.bfloat16)``: ``nn.buffers.FixedDtypeBuffers``); the kernels compare in float32.
    """

    fixed_dtype_buffers = ("threshold", "amplitude", "route_sops")
    reset = "subtract"
    v_init = V_INIT

    def __init__(self, name: str, lam: torch.Tensor, p: int, *, input_is_constant: bool = False):
        super().__init__()
        lam = check_parameter_values("lam", lam.detach().to(torch.float32).clone(), f"IF layer {name}")
        self.name = name
        self.p = int(p)
        self.register_buffer("threshold", lam.clone())
        self.register_buffer("amplitude", lam.clone())
        self._derive_calibrated()
        self.input_is_constant = input_is_constant
        self.time_steps = 1
        self.mode = "snn"
        self.carry_state = False
        self.v = None
        self.record = True
        self.record_channels = False
        self.record_ann_levels = False
        self.routes = ()  # ((meter name, synapse spec, pool specs), ...): set by add_route
        for name in ("spikes", "neuron_steps", "neurons"):
            self.register_buffer(name, torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("route_sops", torch.zeros(0, dtype=torch.float64), persistent=False)
        self.reset_statistics()

    def add_route(self, meter: str, synapse, pools=()) -> None:
        """Count the SOPs this layer's spikes cause in the conv/linear measured by ``meter``
        (``synapses.synapse_spec``), reached through the average pools ``pools`` (``synapses.pool_spec``,
        in order) and reshapes only."""
        self.routes = self.routes + ((meter, tuple(synapse), tuple(pools)),)
        self.route_sops = torch.zeros(len(self.routes), dtype=torch.float64, device=self.threshold.device)

    @property
    def per_channel(self) -> bool:
        """Whether θ is per channel ([C]) rather than one scalar."""
        return self.threshold.dim() == 1

    @property
    def calibrated(self) -> bool:
        """Whether θ differs from the amplitude λ (then spikes are emitted as 1 and scaled by λ).

        Derived when ``threshold`` or ``amplitude`` is assigned (or loaded), not per forward:
        no host sync per run, and under torch.compile a plain bool (no recompiles). An in-place
        edit of either buffer (``layer.threshold.mul_(2)``) is seen through its version counter
        in eager mode; under torch.compile assign a new tensor instead."""
        if not torch.compiler.is_compiling() and self.__dict__.get("_calibrated_versions") != self._buffer_versions():
            self._derive_calibrated()
        return self._calibrated

    def _buffer_versions(self):
        return (self.threshold._version, self.amplitude._version)

    def _derive_calibrated(self):
        self._calibrated = self.threshold.shape != self.amplitude.shape or not torch.equal(
            self.threshold, self.amplitude
        )
        self._calibrated_versions = self._buffer_versions()

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in ("threshold", "amplitude") and "amplitude" in self._buffers:
            self._derive_calibrated()

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # calibrated thresholds are per-channel: take the checkpoint's shape
        for name in ("threshold", "amplitude"):
            value = state_dict.get(prefix + name)
            if isinstance(value, torch.Tensor) and value.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(value, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._derive_calibrated()

    def reset_statistics(self):
        """Forget the spike counts of earlier runs."""
        for counter in (self.spikes, self.neuron_steps, self.neurons, self.route_sops):
            counter.zero_()
        self.channel_spikes = None
        self.ann_channel_levels = None

    def reset_state(self):
        """Forget the membrane potential carried between chunks (the next run starts at v_init)."""
        self.v = None

    def __getstate__(self):
        # torch.save(snn) on a GPU machine must load on a CPU-only one: statistics go to the CPU
        state = self.__dict__.copy()
        for key in ("channel_spikes", "ann_channel_levels"):
            if isinstance(state.get(key), torch.Tensor):
                state[key] = state[key].cpu()
        state["v"] = None
        return state

    def extra_repr(self):
        shape = "per-channel[%d]" % self.threshold.numel() if self.per_channel else f"{self.threshold.item():.4g}"
        return f"name={self.name!r}, threshold={shape}, v_init={self.v_init}, reset={self.reset}, p={self.p}"

    def _channel_view(self, tensor, ndim):
        return tensor.reshape((1, -1) + (1,) * (ndim - 2)) if tensor.dim() == 1 else tensor

    def forward(self, x, overwrite: bool = False):
        """``[T*B, C, ...]`` (or ``[B, C, ...]`` with ``input_is_constant``) -> spikes ``[T*B, C, ...]``.
        ``overwrite=True``: the spikes may take x's memory (``integrate_fire``'s ``overwrite``),
        for a caller that knows nothing else reads x (``snn.fused.if_overwriting``)."""
        check_dense("x", x, f"IF layer {self.name}")
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
        calibrated = self.calibrated
        options = dict(
            reset=self.reset,
            amplitude=1.0 if calibrated else "threshold",
            overwrite=overwrite,
            return_counts=self.record or not SKIP_UNREAD_OUTPUTS,
            return_v=self.carry_state or not SKIP_UNREAD_OUTPUTS,
        )
        if self.v is None:
            outputs = integrate_fire(x_seq, self.threshold, v_init=self.v_init, **options)
        else:  # the previous chunk's potential: NaN / inf where the input had them
            outputs = integrate_fire_carried(x_seq, self.threshold, self.v, **options)
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        spikes = outputs[0]
        counts = outputs[1] if options["return_counts"] else None
        v_final = outputs[-1] if options["return_v"] else None
        if calibrated:
            spikes = spikes * self._channel_view(self.amplitude, spikes.dim() - 1).to(spikes.dtype)
        if self.carry_state:  # kept in the graph: gradients flow across chunks
            self.v = v_final
        if self.record:
            self._record_counts(counts, T)
        return spikes.reshape((-1,) + tuple(spikes.shape[2:]))

    @torch.no_grad()
    def _record_counts(self, counts, T):
        # from the kernel's int32 counts ([B, C, ...], T times smaller than the spikes): one
        # reduction over the batch (int32 holds B*T), everything else from that [C, ...] map;
        # in-place updates of tensors: no host sync, and no Python counter for torch.compile to guard
        self.neurons.fill_(math.prod(counts.shape[1:]))
        self.neuron_steps.add_(counts.numel() * T)
        if counts.dim() < 2:  # one neuron per sample
            positions = counts.sum(dtype=torch.int64)
            self.spikes.add_(positions)
        else:
            per_neuron = sum_over_batch(counts)  # [C, ...]: at most B*T each
            channel = per_neuron.reshape(per_neuron.shape[0], math.prod(per_neuron.shape[1:])).sum(
                1, dtype=torch.int64
            )  # [C]
            self.spikes.add_(channel.sum())
            if self.record_channels:
                self.channel_spikes = channel if self.channel_spikes is None else self.channel_spikes + channel
            positions = per_neuron.sum(0, dtype=torch.int64) if self.routes else None  # the spatial dims
        if self.routes:
            self.route_sops.add_(
                torch.stack([synaptic_ops(positions, synapse, pools) for _, synapse, pools in self.routes])
            )

    @torch.no_grad()
    def _record_levels(self, y, ndim):
        levels = y.to(torch.float32) / self._channel_view(self.amplitude, ndim) * self.p  # q in 0..p
        channel = levels.transpose(0, 1).reshape(levels.shape[1], -1).sum(1, dtype=torch.float64)
        self.ann_channel_levels = (
            channel if self.ann_channel_levels is None else self.ann_channel_levels.to(channel.device) + channel
        )
