"""Spike statistics, synaptic operations and an energy estimate of a SpikingNetwork's runs.

Counted over every ``snn(x)`` call since ``snn.reset_statistics()``:

- per IF layer: ``neurons`` (per sample), ``spikes`` (the sum of the kernel's int32 counts),
  ``firing_rate = spikes / (neurons * samples * T)`` (spikes per neuron per step);
- per conv/linear layer: spike-driven layers (fed by IF layers through stateless ops) cost one
  accumulate per synapse an input event reaches, ``SOPs = sum_i [input_i != 0] * fanout_i``
  (computed exactly, borders included); analog layers (fed by the input only: the stem,
  which runs once per sample because its input is the same at every step) cost MACs;
- an IF layer's ``sops`` are those of the layers its spikes feed (split evenly where a layer
  is fed by several IF layers, e.g. after a residual addition);
- energy per sample: ``E_SNN = E_AC * SOPs + E_MAC * MACs(analog layers)`` against
  ``E_ANN = E_MAC * MACs(all conv/linear layers)``; defaults 0.9 pJ per AC and 4.6 pJ per
  MAC (32-bit float at 45 nm, Horowitz, ISSCC 2014). Only conv/linear operations are
  counted (not pooling, additions, the neurons' own updates or memory traffic).

Cost: statistics are on by default and nearly free. Spike counts come from the kernel's int32
counts ``[B, C, ...]`` (one reduction per run, T times smaller than the spikes); a conv/linear
that reads an IF layer's output directly (or flattened) takes its nonzero inputs from those
counts too; only one behind pooling or another mixing op reads its input once
(``[x != 0]``). Measured on the digits CNN (540 images, one thread, a shared machine): about
50 % of inference before this design, 1-10 % with it, at T = 8 and 64
(``bench/statistics_overhead.py``). ``snn.record_statistics(False)`` turns them off.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from .._compiler import compile_disabled
from .._validation import check_dense, check_real
from .fx_utils import CONV_TYPES


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
        """Forget the operation counts of earlier runs."""
        self.sops = None
        self.macs = 0
        self.rows = 0
        self.macs_per_sample = 0

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ones"] = None  # _source (the IF layer) pickles with the network as a reference
        if isinstance(state.get("sops"), torch.Tensor):
            state["sops"] = state["sops"].cpu()
        return state

    def forward(self, x):
        """The identity on ``x`` (``[rows, C, ...]``); counts its SOPs / MACs while ``record``."""
        check_dense("x", x, f"the input of {self.name}")
        if self.record and isinstance(x, torch.Tensor):
            self._measure(x)
        return x

    def count_from(self, layer) -> None:
        """Take the nonzero inputs from ``layer``'s spike counts: valid when this meter's input is
        that IF layer's output reshaped (no pooling or mixing between), where an input is nonzero
        exactly at a spike (amplitudes are > 0), so ``sum over rows [x != 0] = sum over the
        batch of the counts`` and the T-times larger spike tensor is never read."""
        self._source = (layer,)  # a tuple: not registered as a submodule

    def _counts_for(self, x):
        """The source layer's counts of this run, when they describe ``x``; else None."""
        source = self.__dict__.get("_source")
        counts = source[0].last_counts if source and source[0].record else None
        if counts is None or counts.dim() < 1 or not counts.shape[0] or x.shape[0] % counts.shape[0]:
            return None
        if counts.numel() * (x.shape[0] // counts.shape[0]) != x.numel():
            return None
        if self.dims and tuple(counts.shape[1:]) != tuple(x.shape[1:]):
            return None
        return counts

    @compile_disabled  # python counters: under torch.compile they must not become guards
    @torch.no_grad()
    def _measure(self, x):
        rows = x.shape[0]
        counts = self._counts_for(x) if self.spike_driven else None
        if self.dims:
            # SOPs = sum_i [x_i != 0] * fanout_i. With W = ones, conv(indicator, W) summed over
            # its outputs is exactly that; all output channels of a group see the same window,
            # so it equals out_channels/groups * sum(conv(indicator summed over rows and
            # channels, ones[1, 1, *kernel])) -- one single-channel conv, in float64 (exact).
            indicator = (x != 0) if counts is None else counts
            indicator = indicator.sum(dim=(0, 1), dtype=torch.float64).reshape((1, 1) + tuple(x.shape[2:]))
            if self._ones is None or self._ones.device != x.device:
                self._ones = torch.ones((1, 1) + self.weight_shape[2:], dtype=torch.float64, device=x.device)
            conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
            geometry = dict(self.geometry, groups=1)
            fan = conv(indicator, self._ones, None, **geometry)
            out_channels, fan_in = self.weight_shape[0], math.prod(self.weight_shape[1:])
            sops = fan.sum() * (out_channels // self.geometry["groups"])
            per_row = fan[0, 0].numel() * out_channels * fan_in
        else:
            nonzero = (x != 0).sum(dtype=torch.float64) if counts is None else counts.sum(dtype=torch.float64)
            sops = nonzero * self.out_features
            per_row = (x[0].numel() if rows else 0) * self.out_features
        self.sops = sops if self.sops is None else self.sops.to(sops.device) + sops
        self.macs += per_row * rows
        self.rows += rows
        self.macs_per_sample = per_row


# ---------------------------------------------------------------------------------- statistics


def _number(value):
    if value is None:
        return 0
    if hasattr(value, "item"):
        return value.item()
    return value


def _check_energy(name, value):
    return check_real(name, value, minimum=0.0, accepted="a finite real >= 0 (joules)")


def collect_statistics(snn, energy_per_ac: float = 0.9e-12, energy_per_mac: float = 4.6e-12) -> dict:
    """Statistics of ``snn`` (a SpikingNetwork) as a dict.

    Keys: ``samples``, ``sample_steps`` (sum of B*T over runs), ``if_layers`` (list of dicts:
    name, neurons, spikes, firing_rate, spikes_per_sample, feeds, sops, sops_per_sample),
    ``synapses`` (list of dicts: name, layer_type, spike_driven, sources, sops, macs,
    macs_per_sample, energy_j), ``total`` (neurons, spikes, firing_rate, sops_per_sample,
    ann_macs_per_sample, analog_macs_per_sample), ``energy`` (energy_per_ac, energy_per_mac,
    snn_j_per_sample, ann_j_per_sample, ratio = snn/ann).
    """
    e_ac = _check_energy("energy_per_ac", energy_per_ac)
    e_mac = _check_energy("energy_per_mac", energy_per_mac)
    samples = snn.samples
    per = (lambda v: v / samples) if samples else (lambda v: 0.0)
    meters = list(snn.synapses.values())
    synapses = []
    for meter in meters:
        sops = float(_number(meter.sops)) if meter.spike_driven else 0.0
        macs = 0 if meter.spike_driven else int(meter.macs)
        synapses.append(dict(
            name=meter.name, layer_type=meter.layer_type, spike_driven=meter.spike_driven, sources=list(meter.sources),
            sops=sops, macs=macs, macs_per_sample=int(meter.macs_per_sample),
            energy_j=sops * e_ac + macs * e_mac,
        ))
    layers = []
    for name, layer in snn.if_layers.items():
        spikes = int(_number(layer.spikes))
        fed = [s for s in synapses if name in s["sources"]]
        sops = sum(s["sops"] / len(s["sources"]) for s in fed)
        layers.append(dict(
            name=name, neurons=int(layer.neurons), spikes=spikes,
            firing_rate=spikes / layer.neuron_steps if layer.neuron_steps else 0.0,
            spikes_per_sample=per(spikes), feeds=[s["name"] for s in fed], sops=sops, sops_per_sample=per(sops),
        ))
    total_spikes = sum(layer["spikes"] for layer in layers)
    total_steps = sum(layer.neuron_steps for layer in snn.if_layers.values())
    total_sops = sum(s["sops"] for s in synapses)
    analog_macs = sum(s["macs"] for s in synapses)
    ann_macs = sum(s["macs_per_sample"] for s in synapses)
    snn_j = per(sum(s["energy_j"] for s in synapses))
    ann_j = ann_macs * e_mac
    return dict(
        samples=samples,
        sample_steps=snn.sample_steps,
        if_layers=layers,
        synapses=synapses,
        total=dict(
            neurons=sum(layer["neurons"] for layer in layers), spikes=total_spikes,
            firing_rate=total_spikes / total_steps if total_steps else 0.0,
            sops_per_sample=per(total_sops), ann_macs_per_sample=ann_macs, analog_macs_per_sample=per(analog_macs),
        ),
        energy=dict(
            energy_per_ac=e_ac, energy_per_mac=e_mac, snn_j_per_sample=snn_j, ann_j_per_sample=ann_j,
            ratio=snn_j / ann_j if ann_j else float("nan"),
        ),
    )


def _si(value, unit=""):
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def _joules(value):
    for factor, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}J"
    return f"{value:.3g} J"


def format_statistics(stats: dict) -> str:
    """A printable table of a ``collect_statistics`` / ``SpikingNetwork.statistics()`` dict."""
    samples = stats["samples"]
    steps = stats["sample_steps"] / samples if samples else 0
    header = ("IF layer", "neurons", "spikes/sample", "rate", "SOPs/sample", "feeds")
    rows = [
        (layer["name"], str(layer["neurons"]), f"{layer['spikes_per_sample']:.4g}", f"{layer['firing_rate']:.4f}",
         _si(layer["sops_per_sample"]), ", ".join(layer["feeds"]) or "-")
        for layer in stats["if_layers"]
    ]
    total = stats["total"]
    rows.append(("total", str(total["neurons"]), f"{sum(l['spikes_per_sample'] for l in stats['if_layers']):.4g}",
                 f"{total['firing_rate']:.4f}", _si(total["sops_per_sample"]), ""))
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(row):
        cells = enumerate(zip(row, widths))
        return "  ".join(cell.ljust(width) if i in (0, 5) else cell.rjust(width) for i, (cell, width) in cells)

    rule = "-" * len(line(header))
    energy = stats["energy"]
    out = [f"SNN statistics over {samples} sample(s), {steps:g} step(s) per sample", line(header), rule]
    out += [line(row) for row in rows[:-1]] + [rule, line(rows[-1])]
    out.append(
        f"ANN: {_si(total['ann_macs_per_sample'])} MAC/sample x {energy['energy_per_mac'] * 1e12:g} pJ = "
        f"{_joules(energy['ann_j_per_sample'])};  SNN: {_si(total['sops_per_sample'])} AC x "
        f"{energy['energy_per_ac'] * 1e12:g} pJ + {_si(total['analog_macs_per_sample'])} MAC (analog input layers) = "
        f"{_joules(energy['snn_j_per_sample'])}  (SNN/ANN = {energy['ratio']:.3g})"
    )
    return "\n".join(out)
