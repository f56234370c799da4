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
import copy

import torch
from torch import nn

from .convert import to_snn
from ..nn.if_layer import IFLayer
from ..snn.network import SpikingNetwork
from ..snn.stats import SynapseMeter


class ClippedActivation(nn.Module):
    """The long-T limit of one IF layer: ``y = clamp(x, 0, θ) * (a / θ)`` (θ the threshold, a the
    spike amplitude; ``clamp(x, 0, λ)`` while θ = a = λ). θ and a are scalars or per channel
    (dim 1 of x). x of any shape ``[B, C, ...]`` -> y of x's shape and dtype."""

    def __init__(self, name: str, threshold: torch.Tensor, amplitude: torch.Tensor):
        super().__init__()
        self.name = name
        self.register_buffer("threshold", threshold.detach().to(torch.float32).clone())
        self.register_buffer("amplitude", amplitude.detach().to(torch.float32).clone())
        # decided once here, not per forward (no host sync, no graph break under torch.compile)
        self.calibrated = (self.threshold.shape != self.amplitude.shape
                           or not torch.equal(self.threshold, self.amplitude))

    def _view(self, tensor, x):
        if tensor.dim() == 1:
            return tensor.reshape((1, -1) + (1,) * (x.dim() - 2))
        return tensor

    def forward(self, x):
        """``clamp(x, 0, θ) * (a/θ)`` in float32, returned in x's dtype."""
        theta = self._view(self.threshold, x)
        y = torch.minimum(x.to(torch.float32).clamp_min(0), theta)
        if self.calibrated:
            y = y * (self._view(self.amplitude, x) / theta)
        return y.to(x.dtype)

    def extra_repr(self):
        theta = self.threshold
        shown = f"per-channel[{theta.numel()}]" if theta.dim() == 1 else f"{theta.item():.4g}"
        return f"name={self.name!r}, threshold={shown}"


class ClippedNetwork(nn.Module):
    """A converted network's T → ∞ limit: its graph with every IF layer a ``ClippedActivation``.

    ``forward(x)``: x ``[B, ...]`` (the ANN's input) -> ``[B, ...]`` (the ANN's output shape);
    no time dimension, no statistics, no noise.

    Attributes:
        network: the ``torch.fx.GraphModule`` (a copy; the SNN it came from is not changed).
        activations: name -> ``ClippedActivation``, in execution order (the IF layers' names).
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    @property
    def activations(self):
        """Name -> ClippedActivation, in execution order."""
        return {m.name: m for m in self.network.modules() if isinstance(m, ClippedActivation)}

    def forward(self, *inputs):
        """The clipped network's output for ``inputs``, ``[B, ...]``."""
        return self.network(*inputs)


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
        raise TypeError(f"model must be an nn.Module (a network with NoisyQuant activations or a "
                        f"SpikingNetwork), got {type(model).__name__}")
    if isinstance(model, SpikingNetwork):
        graph = copy.deepcopy(model.network)
    else:
        graph = to_snn(model, 1, fold_bn=False).network
    for name, module in list(graph.named_modules()):
        if isinstance(module, IFLayer):
            graph.set_submodule(name, ClippedActivation(module.name, module.threshold, module.amplitude))
        elif isinstance(module, SynapseMeter):
            graph.set_submodule(name, nn.Identity())
    return ClippedNetwork(graph.eval())
