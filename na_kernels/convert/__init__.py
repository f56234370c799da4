"""na_kernels.convert: the passes that turn a trained ANN into an SNN.

``replace`` (replace_activations: NoisyQuant in place of ReLU-like activations), ``batchnorm``
(fold_batchnorm), ``convert`` (to_snn: the torch.fx conversion into a ``SpikingNetwork``),
``calibrate`` (calibrate_thresholds), ``post_training`` (post_training_convert: a plain ReLU
network without retraining) and ``limit`` (clipped_network: the SNN's T -> infinity limit).
Everything here is re-exported by ``na_kernels.nn``.
"""

from .._lazy import lazy_exports

_LAZY = {
    **dict.fromkeys(
        ("ReplacementReport", "UnconvertibleActivationError", "replace_activations"), "na_kernels.convert.replace"
    ),
    "to_snn": "na_kernels.convert.convert",
    "fold_batchnorm": "na_kernels.convert.batchnorm",
    "calibrate_thresholds": "na_kernels.convert.calibrate",
    **dict.fromkeys(("SEARCH_PERCENTILES", "post_training_convert"), "na_kernels.convert.post_training"),
    **dict.fromkeys(("ClippedActivation", "ClippedNetwork", "clipped_network"), "na_kernels.convert.limit"),
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = sorted(_LAZY)
