"""The alternatives na_kernels is measured against: what users write today.

- ``qcfs_noisy``: the QCFS activation (Bu et al.'s ``MyFloor``: divide by λ, straight-through
  floor of ``x*p + 0.5``, clamp to [0, 1], times λ) with Noise Adaptor's uniform noise
  ``torch.rand_like(x) - 0.5`` added inside the floor. Eager PyTorch, one kernel per op.
- ``if_loop``: the multi-step IF neuron as a Python loop over T (SpikingJelly's torch
  formulation): ``h = v + x[t]; s = H(h - θ); v = h - s·θ`` with a Heaviside whose backward
  is the sigmoid surrogate (α = 4). It returns the spikes only (no counts: counting would be
  one more pass, which would flatter na_kernels).
- ``compiled(fn)``: ``torch.compile(fn, dynamic=False)`` of either (the caller resets dynamo).
- ``spikingjelly_if()``: SpikingJelly's multi-step ``IFNode`` with soft reset
  (``v_reset=None``), sigmoid surrogate α = 4; None when SpikingJelly is not installed.
- ``EagerNoisyQuant``: ``qcfs_noisy`` as an ``nn.Module`` with a trainable λ (for ResNet-18).
"""

import torch
from torch import nn


class FloorSTE(torch.autograd.Function):
    """floor with the straight-through gradient (QCFS's GradFloor)."""

    @staticmethod
    def forward(ctx, x):
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def qcfs_noisy(x, lam, p: int, noise: bool = True):
    y = x / lam
    z = y * p + 0.5
    if noise:
        z = z + (torch.rand_like(y) - 0.5)
    y = FloorSTE.apply(z) / p
    y = torch.clamp(y, 0, 1)
    return y * lam


class SpikeSigmoid(torch.autograd.Function):
    """Heaviside (ties fire) forward, sigmoid surrogate backward: α σ(αu)(1 - σ(αu))."""

    alpha = 4.0

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        sg = torch.sigmoid(SpikeSigmoid.alpha * u)
        return grad * (SpikeSigmoid.alpha * sg * (1 - sg))


def if_loop(x_seq, threshold: float = 1.0, v_init: float = 0.5):
    v = v_init * threshold
    spikes = []
    for t in range(x_seq.shape[0]):
        h = v + x_seq[t]
        s = SpikeSigmoid.apply(h - threshold)
        v = h - s * threshold
        spikes.append(s * threshold)
    return torch.stack(spikes)


def compiled(fn):
    return torch.compile(fn, dynamic=False)


def spikingjelly_if(threshold: float = 1.0):
    """SpikingJelly's multi-step soft-reset IFNode, or None where it is not installed."""
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except ImportError:
        return None
    return neuron.IFNode(
        v_threshold=threshold, v_reset=None, surrogate_function=surrogate.Sigmoid(alpha=4.0), step_mode="m"
    )


def spikingjelly_missing_reason():
    try:
        import spikingjelly  # noqa: F401
    except ImportError as error:
        return (
            f"SpikingJelly is not installed ({error}); "
            "`pip install spikingjelly --no-deps loguru tqdm` to compare against it"
        )
    return None


class EagerNoisyQuant(nn.Module):
    """The eager QCFS + uniform-noise activation with a trainable λ (a drop-in for nn.ReLU)."""

    def __init__(self, p: int = 3, lam: float = 8.0):
        super().__init__()
        self.p = p
        self.lam = nn.Parameter(torch.tensor(float(lam)))

    def forward(self, x):
        return qcfs_noisy(x, self.lam, self.p, noise=self.training)
