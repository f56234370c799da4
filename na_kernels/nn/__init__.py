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
``docs/design.md``. Modules: ``noisy_quant`` (NoisyQuant), ``replace`` (replace_activations),
``convert`` (to_snn), ``if_layer`` (IFLayer), ``network`` (SpikingNetwork, TimeRepeat),
``post_training`` (post_training_convert: a plain ReLU network without retraining),
``limit`` (clipped_network = ``SpikingNetwork.clipped``: the SNN's T -> infinity limit),
``batchnorm`` (fold_batchnorm), ``stats`` (SynapseMeter, collect_statistics,
format_statistics), ``calibrate`` (calibrate_thresholds), ``early_exit`` (ExitRule,
run_early_exit = ``SpikingNetwork.run_early_exit``, evaluate_early_exit, exit_tradeoff,
format_tradeoff, score_exits: per-sample early exit), ``serialize`` (save_snn, load_snn),
``nir_export`` (to_nir), ``nir_import`` (from_nir, NIRImportError: a validating reader), ``if_node``
(IFNode: a SpikingJelly-style IF module on the fused kernel), ``spikingjelly_compat``
(swap_spikingjelly_neurons, from_spikingjelly: SpikingJelly IF neurons in an existing model swapped
for IFNode), ``fx_utils`` (torch.fx helpers).
"""
from .batchnorm import fold_batchnorm
from .calibrate import calibrate_thresholds
from .convert import to_snn
from .early_exit import (EarlyExitResult, ExitRule, evaluate_early_exit, exit_tradeoff, format_tradeoff, run_early_exit,
                         score_exits)
from .if_layer import IFLayer
from .if_node import IFNode
from .spikingjelly_compat import from_spikingjelly, swap_spikingjelly_neurons
from .limit import ClippedActivation, ClippedNetwork, clipped_network
from .network import SpikingNetwork, TimeRepeat
from .nir_export import NIRExportError, NIRImportError, from_nir, to_nir
from .noisy_quant import NoisyQuant
from .post_training import SEARCH_PERCENTILES, post_training_convert
from .serialize import SerializationError, load_snn, save_snn
from .replace import ReplacementReport, UnconvertibleActivationError, replace_activations
from .stats import SynapseMeter, collect_statistics, format_statistics

__all__ = [
    "NoisyQuant", "replace_activations", "ReplacementReport", "UnconvertibleActivationError", "to_snn",
    "SpikingNetwork", "IFLayer", "SynapseMeter", "TimeRepeat", "fold_batchnorm", "calibrate_thresholds",
    "collect_statistics", "format_statistics", "post_training_convert", "SEARCH_PERCENTILES",
    "save_snn", "load_snn", "SerializationError", "IFNode", "swap_spikingjelly_neurons", "from_spikingjelly",
    "to_nir", "from_nir", "NIRExportError", "NIRImportError",
    "ExitRule", "EarlyExitResult", "evaluate_early_exit", "exit_tradeoff", "format_tradeoff", "run_early_exit",
    "score_exits", "clipped_network", "ClippedNetwork", "ClippedActivation",
]
