"""na_kernels.nn: the model layer — a drop-in activation, ANN-to-SNN conversion, a multi-step
SNN runner with per-step outputs, spike statistics and threshold calibration.

Train (one changed line in an existing script)::

    from na_kernels.nn import NoisyQuant, replace_activations
    model, report = replace_activations(model, p=3, noise="uniform", lam=8.0)  # every ReLU
    # or by hand: nn.ReLU()  ->  NoisyQuant(p=3, lam=8.0)
    print(report)                      # what was replaced; raises on ReLU6/GELU/... unless skipped

Convert and run::

    from na_kernels.nn import to_snn
    snn = to_snn(model, T=8)           # BN folded, one IF layer per NoisyQuant call site
    out = snn(images)                  # [T, B, K]: out[t-1] = mean of the logits over steps 1..t
    acc_per_t = (out.argmax(-1) == labels).float().mean(1)     # accuracy at every t <= T
    snn(images, T=256, chunk=32)       # long runs in the memory of one 32-step chunk
    print(snn.statistics_table())      # per IF layer: neurons, spikes, firing rate, SOPs; energy
    stats = snn.statistics()           # the same as a dict (see SpikingNetwork.statistics)

Public names:

- ``NoisyQuant(p, lam=8.0, noise="uniform", scale=1.0, per_channel=False, channels=None)``:
  ``y = clamp(floor(x*p/λ + scale*ε + 0.5), 0, p) * λ/p`` (ε only in training mode).
  λ is trainable and kept positive by its parametrisation ``λ = softplus(raw) + min_lam``;
  ``lam="auto"`` sets λ from the first training batch (99.9th percentile of relu(x)).
  ``noise=None`` is QCFS; ``noise="gaussian", p=1`` is the single-step (T = 1) strategy.
- ``replace_activations(model, p, *, noise="uniform", lam=8.0, scale=1.0, per_channel=False,
  maxpool_to_avgpool=False, skip=(), allow_unconvertible=False, trace_functional=True)`` ->
  ``(model, ReplacementReport)``. Swaps ``nn.ReLU`` modules in place and ``F.relu`` /
  ``torch.relu`` / ``Tensor.relu`` calls through ``torch.fx`` (then the returned model is a
  ``torch.fx.GraphModule``: use the returned model). Raises ``UnconvertibleActivationError``
  naming every ReLU6 / GELU / LeakyReLU / ReLU subclass ... it cannot convert.
- ``to_snn(model, T, chunk=None, *, fold_bn=True, allow_maxpool=False)`` -> ``SpikingNetwork``.
  ``SpikingNetwork.forward(x, T=None, chunk=None)`` returns ``[T, B, ...]``;
  ``.ann(x)`` runs the same graph as the quantized ANN (noise off) for comparison;
  ``.if_layers`` maps a name to each ``IFLayer``; ``.statistics(energy_per_ac=0.9e-12,
  energy_per_mac=4.6e-12)`` -> dict; ``.statistics_table(...)`` -> str;
  ``.reset_statistics()``; ``.record_statistics(flag)``; ``.conversion_report`` (dict: IF
  layers, folded BatchNorms, ...). Chunked runs carry membrane potentials; under autograd the
  gradient flows across chunks. ``torch.save(snn)`` / ``torch.load(..., weights_only=False)``.
- ``fold_batchnorm(model)`` -> ``torch.fx.GraphModule`` with each BatchNorm folded into the
  conv/linear before it (the ANN output is unchanged up to float rounding).
- ``calibrate_thresholds(snn, batches, iterations=6, *, T=None, step_size=0.5)`` -> dict:
  adjusts per-channel IF thresholds so the SNN's spike counts match the quantized ANN's
  activation levels (spike amplitude stays λ); calibrate for the T you will run.
- ``collect_statistics(snn, ...)`` / ``format_statistics(stats)``: the dict and the table
  behind ``snn.statistics()`` / ``snn.statistics_table()``.

Energy model: spike-driven conv/linear layers cost one accumulate per synaptic event (exact
SOPs, ``sum_i [x_i != 0] * fanout_i``), the analog stem before the first IF layer costs its
MACs once per sample (its input is the same at every step, so it runs once); pooling,
additions, neuron updates and memory traffic are not counted.
"""
from .calibrate import calibrate_thresholds
from .convert import IFLayer, SpikingNetwork, SynapseMeter, TimeRepeat, fold_batchnorm, to_snn
from .noisy_quant import NoisyQuant
from .replace import ReplacementReport, UnconvertibleActivationError, replace_activations
from .stats import collect_statistics, format_statistics

__all__ = [
    "NoisyQuant", "replace_activations", "ReplacementReport", "UnconvertibleActivationError", "to_snn",
    "SpikingNetwork", "IFLayer", "SynapseMeter", "TimeRepeat", "fold_batchnorm", "calibrate_thresholds",
    "collect_statistics", "format_statistics",
]
