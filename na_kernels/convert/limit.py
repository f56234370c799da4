"""The SNN's long-T limit: the clipped network.

As T grows, an IF layer's output rate (soft reset, ``v_init = θ/2``, amplitude a) tends to
``a * clamp(x/θ, 0, 1)``, which is ``clamp(x, 0, λ)`` while θ = a = λ: the clipped activation,
not the p-level quantizer. So the network with every activation call site replaced by that
clip is the T → ∞ limit of the converted SNN (docs/design.md, "The long-T limit"). With
uniform noise and shift 0.5, ``E[noisy_quant(x)] = clamp(x, 0, λ)``: a noise-trained ANN is
trained on an unbiased estimate of this network; a QCFS ANN (no noise) is not, and its SNN
drifts at long T towards this network's accuracy, which can be far below the ANN's.

    limit = clipped_network(model)      # or snn.clipped()
    logits = limit(images)              # [B, ...], evaluated like the ANN
"""

from torch import nn

from ..snn.clipped import ClippedActivation, ClippedNetwork, clip_graph
from ..snn.network import SpikingNetwork
from .convert import to_snn

__all__ = ["ClippedActivation", "ClippedNetwork", "clipped_network"]


def clipped_network(model: nn.Module) -> ClippedNetwork:
    """The SNN's T → ∞ limit: ``model`` with every activation call site replaced by ``clamp(x, 0, λ)``.

    Args:
        model: a trained network with NoisyQuant activations (converted as ``to_snn`` would,
            BatchNorm kept as the ANN evaluates it, in eval mode), or a ``SpikingNetwork``
            (its converted graph: BatchNorm folded as in the SNN, calibrated thresholds kept:
            each IF layer becomes ``clamp(x, 0, θ) * a/θ``). Neither is modified.

    Returns:
        ``ClippedNetwork``: ``limit(x)`` with x ``[B, ...]`` -> ``[B, ...]``, evaluated like
        the ANN (e.g. ``na_kernels.app.train.evaluate(limit, loader)``).

    Raises:
        TypeError if ``model`` is not an nn.Module; ValueError as ``to_snn`` does for a model
        it cannot convert (no NoisyQuant, an unreplaced ReLU, ``lam="auto"`` never set, ...).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module (a network with NoisyQuant activations or a "
            f"SpikingNetwork), got {type(model).__name__}"
        )
    if isinstance(model, SpikingNetwork):
        return model.clipped()
    return clip_graph(to_snn(model, 1, fold_bn=False).network)
