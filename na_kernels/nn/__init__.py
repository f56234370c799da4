"""na_kernels.nn: the model layer — a drop-in activation, ANN-to-SNN conversion, a multi-step
SNN runner with per-step outputs, spike statistics and threshold calibration.

Train with ``NoisyQuant`` in place of ``nn.ReLU`` (``replace_activations`` swaps them in an
existing model), convert with ``to_snn``, run the ``SpikingNetwork`` it returns::

    model, report = replace_activations(model, p=3, noise="uniform", lam=8.0)
    ...                                # train as usual
    snn = to_snn(model, T=8)
    out = snn(images)                  # [T, B, K]: out[t-1] = mean of the logits over steps 1..t
    print(snn.statistics_table())      # spikes, firing rates, synaptic operations, energy

Each public name's docstring carries its formula, arguments and shapes; the design is in
``docs/design.md``. This package holds the modules a user puts in a model: ``noisy_quant``
(NoisyQuant), ``if_layer`` (IFLayer), ``if_node`` (IFNode: a SpikingJelly-style IF module on
the fused kernel), ``spikingjelly_compat`` (swap_spikingjelly_neurons,
from_spikingjelly: SpikingJelly IF neurons in an existing model swapped for IFNode) and
``fx_utils`` (the torch.fx helpers that find them in a graph). It also
re-exports, imported on first use, the names of the layers above it:

- ``na_kernels.convert``: ``replace`` (replace_activations), ``convert`` (to_snn),
  ``batchnorm`` (fold_batchnorm), ``calibrate`` (calibrate_thresholds), ``post_training``
  (post_training_convert: a plain ReLU network without retraining), ``limit``
  (clipped_network: the SNN's T -> infinity limit);
- ``na_kernels.snn``: ``network`` (SpikingNetwork, TimeRepeat), ``stats`` (SynapseMeter,
  collect_statistics, format_statistics), ``early_exit`` (ExitRule, run_early_exit,
  evaluate_early_exit, exit_tradeoff, format_tradeoff, score_exits: per-sample early exit);
- ``na_kernels.io``: ``serialize`` (save_snn, load_snn), ``nir_export`` (to_nir), ``nir_import`` (from_nir,
  NIRImportError: a validating reader).
"""

from .._lazy import lazy_exports
from .if_layer import IFLayer
from .if_node import IFNode
from .noisy_quant import NoisyQuant
from .spikingjelly_compat import from_spikingjelly, swap_spikingjelly_neurons

_LAZY = {
    **dict.fromkeys(
        ("ReplacementReport", "UnconvertibleActivationError", "replace_activations"), "na_kernels.convert.replace"
    ),
    "to_snn": "na_kernels.convert.convert",
    "fold_batchnorm": "na_kernels.convert.batchnorm",
    "calibrate_thresholds": "na_kernels.convert.calibrate",
    **dict.fromkeys(("SEARCH_PERCENTILES", "post_training_convert"), "na_kernels.convert.post_training"),
    **dict.fromkeys(("ClippedActivation", "ClippedNetwork", "clipped_network"), "na_kernels.convert.limit"),
    **dict.fromkeys(("SpikingNetwork", "TimeRepeat"), "na_kernels.snn.network"),
    **dict.fromkeys(("SynapseMeter", "collect_statistics", "format_statistics"), "na_kernels.snn.stats"),
    **dict.fromkeys(
        (
            "EarlyExitResult",
            "ExitRule",
            "evaluate_early_exit",
            "exit_tradeoff",
            "format_tradeoff",
            "run_early_exit",
            "score_exits",
        ),
        "na_kernels.snn.early_exit",
    ),
    **dict.fromkeys(("SerializationError", "load_snn", "save_snn"), "na_kernels.io.serialize"),
    **dict.fromkeys(("NIRExportError", "to_nir"), "na_kernels.io.nir_export"),
    **dict.fromkeys(("NIRImportError", "from_nir"), "na_kernels.io.nir_import"),
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "NoisyQuant",
    "replace_activations",
    "ReplacementReport",
    "UnconvertibleActivationError",
    "to_snn",
    "SpikingNetwork",
    "IFLayer",
    "SynapseMeter",
    "TimeRepeat",
    "fold_batchnorm",
    "calibrate_thresholds",
    "collect_statistics",
    "format_statistics",
    "post_training_convert",
    "SEARCH_PERCENTILES",
    "save_snn",
    "load_snn",
    "SerializationError",
    "IFNode",
    "swap_spikingjelly_neurons",
    "from_spikingjelly",
    "to_nir",
    "from_nir",
    "NIRExportError",
    "NIRImportError",
    "ExitRule",
    "EarlyExitResult",
    "evaluate_early_exit",
    "exit_tradeoff",
    "format_tradeoff",
    "run_early_exit",
    "score_exits",
    "clipped_network",
    "ClippedNetwork",
    "ClippedActivation",
]
