"""Spike statistics, synaptic operations and an energy estimate of a SpikingNetwork's runs.

Counted over every ``snn(x)`` call since ``snn.reset_statistics()``:

- per IF layer: ``neurons`` (per sample), ``spikes`` (the sum of the kernel's int32 counts),
  ``firing_rate = spikes / (neurons * samples * T)`` (spikes per neuron per step);
- per conv/linear layer: spike-driven layers (fed by IF layers through stateless ops) cost one
  accumulate per synapse a spike reaches, ``SOPs = sum over spikes of their fan-out``; analog
  layers (fed by the input only: the stem, which runs once per sample because its input is
  the same at every step) cost MACs;
- an IF layer's ``sops`` are those of the layers its spikes feed (split evenly where a layer
  is fed by several IF layers through an operation other than a sum, e.g. a concatenation);
- energy per sample: ``E_SNN = E_AC * SOPs + E_MAC * MACs(analog layers)`` against
  ``E_ANN = E_MAC * MACs(all conv/linear layers)``; defaults 0.9 pJ per AC and 4.6 pJ per
  MAC (32-bit float at 45 nm, Horowitz, ISSCC 2014). Only conv/linear operations are
  counted (not pooling, additions, the neurons' own updates or memory traffic).

Where the spikes of IF layers reach a conv/linear through routing only (reshapes, average
pooling, dropout in eval, sums of such), the SOPs are event-driven and exact: each spike
reaches every synapse of every pooling window that contains it, so with ``c`` the spike counts
summed over the batch and channels (one reduction of the kernel's int32 counts ``[B, C, ...]``,
T times smaller than the spikes) and ``g_d`` the fan-out of a position along spatial dim d
(per-dim window memberships of the pools times the conv's per-dim fan-out: convolution and
pooling windows are products of per-dim windows)::

    SOPs = out_channels / groups * sum_{h, w} c[h, w] * g_h[h] * g_w[w]     (conv2d; linear:
    g = window memberships, times out_features)

computed in the IF layer from its counts (``IFLayer.routes``), with no pass over the spikes. A
conv/linear fed otherwise (a product, a concatenation, analog values mixed in) counts its
nonzero inputs ``[x != 0]`` instead (one pass over its input). All counters are tensors
updated in place (no host sync, one graph under torch.compile). ``snn.record_statistics(False)``
turns them off; ``bench/statistics_overhead.py`` measures their cost.
"""

import math

import torch
from torch import nn

from .._validation import check_dense, check_real
from ..nn.buffers import FixedDtypeBuffers
from ..nn.synapses import synapse_spec, synaptic_ops


class SynapseMeter(FixedDtypeBuffers):
    """Identity observer before a conv/linear layer of the SNN: counts its operations.

    Spike-driven layers (fed by IF layers through stateless ops) cost one accumulate (AC) per
    synapse a spike reaches. Where IF layers reach this layer through routing only (``routed``),
    the IF layers count those SOPs from their spike counts (``IFLayer.routes``); otherwise this
    meter counts its nonzero inputs, ``SOPs = sum over nonzero inputs of their fan-out``.
    Analog layers (fed by the input only) cost their multiply-accumulates (MACs) per row run.
    ``macs_per_sample`` is the layer's MAC count in the ANN. Counters: 0-d tensors (``sops``
    stays float64 when the network is cast to another dtype).
    """

    fixed_dtype_buffers = ("sops",)

    def __init__(self, name: str, layer: nn.Module, sources, spike_driven: bool):
        super().__init__()
        self.name = name
        self.layer_type = type(layer).__name__
        self.sources = tuple(sources)
        self.spike_driven = bool(spike_driven)
        self.synapse = synapse_spec(layer)
        self.weight_shape = tuple(layer.weight.shape)
        self.routed = False
        self.record = True
        self.register_buffer("sops", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("macs", torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("rows", torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("macs_per_sample", torch.zeros((), dtype=torch.int64), persistent=False)

    @property
    def dims(self) -> int:
        """Spatial dims of the conv (0 for a linear)."""
        return len(self.synapse[1]) if self.synapse[0] == "conv" else 0

    def reset_statistics(self):
        """Forget the operation counts of earlier runs."""
        for counter in (self.sops, self.macs, self.rows, self.macs_per_sample):
            counter.zero_()

    def forward(self, x):
        """The identity on ``x`` (``[rows, C, ...]``); counts its SOPs / MACs while ``record``."""
        check_dense("x", x, f"the input of {self.name}")
        if self.record and isinstance(x, torch.Tensor):
            self._measure(x)
        return x

    def _measure(self, x):
        with torch.no_grad():
            rows = x.shape[0]
            if self.dims:
                outputs = math.prod(self._output_shape(x.shape[2:]))
                per_row = outputs * self.weight_shape[0] * math.prod(self.weight_shape[1:])
            else:
                per_row = math.prod(x.shape[1:]) * self.weight_shape[0]
            self.macs.add_(per_row * rows)
            self.rows.add_(rows)
            self.macs_per_sample.fill_(per_row)
            if self.spike_driven and not self.routed:
                nonzero = (x != 0).sum(dim=(0, 1)) if self.dims else (x != 0).sum()
                self.sops.add_(synaptic_ops(nonzero, self.synapse))

    def _output_shape(self, spatial):
        _, kernel, stride, padding, dilation, _ = self.synapse
        if padding == "same":
            return tuple(spatial)
        padding = (0,) * len(kernel) if padding == "valid" else padding
        return tuple(
            (n + 2 * p - dil * (k - 1) - 1) // s + 1
            for n, k, s, p, dil in zip(spatial, kernel, stride, padding, dilation)
        )


# ---------------------------------------------------------------------------------- statistics


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
    samples = int(snn.samples)
    per = (lambda v: v / samples) if samples else (lambda v: 0.0)
    meters = list(snn.synapses.values())
    synapses = []
    routed, routed_from = {}, {}  # SOPs the IF layers counted from their spikes: per meter, per IF layer
    for source, layer in snn.if_layers.items():
        for (name, _, _), sops in zip(layer.routes, layer.route_sops.tolist()):
            routed[name] = routed.get(name, 0.0) + sops
            routed_from[source] = routed_from.get(source, 0.0) + sops
    measured = {}  # SOPs a meter counted from its own input: split evenly among its sources
    for meter in meters:
        measured[meter.name] = float(meter.sops) if meter.spike_driven else 0.0
        sops = measured[meter.name] + routed.get(meter.name, 0.0) if meter.spike_driven else 0.0
        macs = 0 if meter.spike_driven else int(meter.macs)
        synapses.append(
            dict(
                name=meter.name,
                layer_type=meter.layer_type,
                spike_driven=meter.spike_driven,
                sources=list(meter.sources),
                sops=sops,
                macs=macs,
                macs_per_sample=int(meter.macs_per_sample),
                energy_j=sops * e_ac + macs * e_mac,
            )
        )
    layers, total_steps = [], 0
    for name, layer in snn.if_layers.items():
        spikes, steps = int(layer.spikes), int(layer.neuron_steps)
        total_steps += steps
        fed = [s for s in synapses if name in s["sources"]]
        sops = routed_from.get(name, 0.0) + sum(measured[s["name"]] / len(s["sources"]) for s in fed)
        layers.append(
            dict(
                name=name,
                neurons=int(layer.neurons),
                spikes=spikes,
                firing_rate=spikes / steps if steps else 0.0,
                spikes_per_sample=per(spikes),
                feeds=[s["name"] for s in fed],
                sops=sops,
                sops_per_sample=per(sops),
            )
        )
    total_spikes = sum(layer["spikes"] for layer in layers)
    total_sops = sum(s["sops"] for s in synapses)
    analog_macs = sum(s["macs"] for s in synapses)
    ann_macs = sum(s["macs_per_sample"] for s in synapses)
    snn_j = per(sum(s["energy_j"] for s in synapses))
    ann_j = ann_macs * e_mac
    return dict(
        samples=samples,
        sample_steps=int(snn.sample_steps),
        if_layers=layers,
        synapses=synapses,
        total=dict(
            neurons=sum(layer["neurons"] for layer in layers),
            spikes=total_spikes,
            firing_rate=total_spikes / total_steps if total_steps else 0.0,
            sops_per_sample=per(total_sops),
            ann_macs_per_sample=ann_macs,
            analog_macs_per_sample=per(analog_macs),
        ),
        energy=dict(
            energy_per_ac=e_ac,
            energy_per_mac=e_mac,
            snn_j_per_sample=snn_j,
            ann_j_per_sample=ann_j,
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
        (
            layer["name"],
            str(layer["neurons"]),
            f"{layer['spikes_per_sample']:.4g}",
            f"{layer['firing_rate']:.4f}",
            _si(layer["sops_per_sample"]),
            ", ".join(layer["feeds"]) or "-",
        )
        for layer in stats["if_layers"]
    ]
    total = stats["total"]
    rows.append(
        (
            "total",
            str(total["neurons"]),
            f"{sum(l['spikes_per_sample'] for l in stats['if_layers']):.4g}",
            f"{total['firing_rate']:.4f}",
            _si(total["sops_per_sample"]),
            "",
        )
    )
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
