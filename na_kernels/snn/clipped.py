"""The clipped network: the SNN's long-T limit as a plain network (``convert.limit`` explains
the limit; ``SpikingNetwork.clipped`` and ``clipped_network`` build it with ``clip_graph``)."""

import torch
from torch import fx, nn

from ..nn.if_layer import IFLayer
from .stats import SynapseMeter


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
        self.calibrated = self.threshold.shape != self.amplitude.shape or not torch.equal(
            self.threshold, self.amplitude
        )

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


def clip_graph(graph: fx.GraphModule) -> ClippedNetwork:
    """``graph`` (a converted network's GraphModule, changed in place) with every IF layer
    replaced by its ``ClippedActivation`` and every ``SynapseMeter`` by ``nn.Identity``."""
    for name, module in list(graph.named_modules()):
        if isinstance(module, IFLayer):
            graph.set_submodule(name, ClippedActivation(module.name, module.threshold, module.amplitude))
        elif isinstance(module, SynapseMeter):
            graph.set_submodule(name, nn.Identity())
    return ClippedNetwork(graph.eval())
