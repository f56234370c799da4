"""What the SNN runtime's passes need of a converted network, below ``SpikingNetwork``.

``SpikingNetwork`` (``network``) offers ``run_early_exit``, ``clipped`` and ``save`` as methods,
so the passes behind them (``early_exit``, ``clipped``, ``record``) sit below it and cannot
name it: they check for ``SpikingNetworkBase``, whose one subclass it is.
"""

import torch
from torch import nn


class SpikingNetworkBase(nn.Module):
    """The type of a converted network for the passes below ``SpikingNetwork`` (its only
    subclass; build one with ``na_kernels.nn.to_snn``)."""


class TimeRepeat(nn.Module):
    """``[B, ...] -> [T*B, ...]``: a value that is the same at every step, repeated time-major
    where it meets a value that varies over the steps. Non-tensors pass through unchanged."""

    def __init__(self):
        super().__init__()
        self.time_steps = 1

    def forward(self, x):
        """``[B, ...]`` -> ``[T*B, ...]`` (T = ``time_steps``), step-major."""
        if not isinstance(x, torch.Tensor) or self.time_steps == 1 or x.dim() == 0:
            return x
        return x.unsqueeze(0).expand((self.time_steps,) + tuple(x.shape)).reshape((-1,) + tuple(x.shape[1:]))
