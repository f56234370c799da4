"""IFLayer: the integrate-and-fire neurons that replace one NoisyQuant call site in an SNN."""
import torch
from torch import nn

from .._compiler import compile_disabled
from .._validation import check_dense
from ..ops.integrate_fire import integrate_fire
from ..ops.noisy_quant import noisy_quant

V_INIT = 0.5  # the initial membrane potential v_init, as a fraction of the threshold θ


class IFLayer(nn.Module):
    """Integrate-and-fire neurons replacing one NoisyQuant call site.

    Per neuron, over the T steps of one run (``integrate_fire``, subtractive reset)::

        v = v_init * θ;  h = v + x[t];  s = [h >= θ];  v = h - s*θ;  out[t] = s * a

    with ``v_init = 0.5`` (``V_INIT``; in a chunked run, the potential the previous chunk left),
    threshold θ and amplitude a = λ (θ = λ until ``calibrate_thresholds`` changes θ), both
    scalars or per-channel ([C], channel = dim 1 of a step).

    Input: ``[T*B, C, ...]`` (time-major), or ``[B, C, ...]`` when the input is the same at
    every step (``input_is_constant``); output ``[T*B, C, ...]`` in the input's dtype.
    In "ann" mode the layer is the quantized ANN activation ``noisy_quant(x, p, λ, noise=None)``.

    Statistics of the runs since the last reset: ``spikes`` (total), ``neuron_steps``
    (neurons x samples x steps), ``channel_spikes`` ([C]), ``neurons`` (per sample), all from
    the kernel's int32 spike counts (one reduction over ``[B, C, ...]`` per run, T times
    smaller than the spikes), while ``record`` is True.
    """

    def __init__(self, name: str, lam: torch.Tensor, p: int, *, input_is_constant: bool = False):
        super().__init__()
        lam = lam.detach().to(torch.float32).clone()
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
        self.record_ann_levels = False
        self.reset_statistics()

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
        self.spikes = None
        self.neuron_steps = 0
        self.neurons = 0
        self.channel_spikes = None
        self.channel_neuron_steps = 0
        self.ann_channel_levels = None
        self.last_counts = None  # the counts of the latest run, read by the SynapseMeters it feeds

    def reset_state(self):
        """Forget the membrane potential carried between chunks (the next run starts at v_init)."""
        self.v = None

    def __getstate__(self):
        # torch.save(snn) on a GPU machine must load on a CPU-only one: statistics go to the CPU
        state = self.__dict__.copy()
        for key in ("spikes", "channel_spikes", "ann_channel_levels"):
            if isinstance(state.get(key), torch.Tensor):
                state[key] = state[key].cpu()
        state["v"] = None
        state["last_counts"] = None
        return state

    def extra_repr(self):
        shape = "per-channel[%d]" % self.threshold.numel() if self.per_channel else f"{self.threshold.item():.4g}"
        return f"name={self.name!r}, threshold={shape}, v_init={V_INIT}, reset=subtract, p={self.p}"

    def _channel_view(self, tensor, ndim):
        return tensor.reshape((1, -1) + (1,) * (ndim - 2)) if tensor.dim() == 1 else tensor

    def forward(self, x):
        """``[T*B, C, ...]`` (or ``[B, C, ...]`` with ``input_is_constant``) -> spikes ``[T*B, C, ...]``."""
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
        v_init = self.v if self.v is not None else V_INIT
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

    @compile_disabled  # python counters: under torch.compile they must not become guards
    @torch.no_grad()
    def _record_counts(self, counts, T):
        # from the kernel's int32 counts ([B, C, ...], T times smaller than the spikes): one
        # reduction per channel, the rest from that
        self.last_counts = counts
        per_sample = counts[0].numel() if counts.dim() > 0 and counts.shape[0] else 0
        self.neurons = per_sample
        self.neuron_steps += counts.numel() * T
        if counts.dim() >= 2:
            dims = (0,) + tuple(range(2, counts.dim()))
            channel = counts.sum(dim=dims, dtype=torch.int64)
            total = channel.sum()
            if self.channel_spikes is not None:
                channel = self.channel_spikes.to(channel.device) + channel
            self.channel_spikes = channel
            self.channel_neuron_steps += (counts.numel() // counts.shape[1]) * T
        else:
            total = counts.sum(dtype=torch.int64)
        self.spikes = total if self.spikes is None else self.spikes.to(total.device) + total

    @torch.no_grad()
    def _record_levels(self, y, ndim):
        levels = y.to(torch.float32) / self._channel_view(self.amplitude, ndim) * self.p  # q in 0..p
        channel = levels.transpose(0, 1).reshape(levels.shape[1], -1).sum(1, dtype=torch.float64)
        self.ann_channel_levels = (
            channel if self.ann_channel_levels is None else self.ann_channel_levels.to(channel.device) + channel
        )
