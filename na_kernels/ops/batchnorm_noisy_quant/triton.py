"""batchnorm_noisy_quant on CUDA tensors: there is no Triton kernel for this op yet, so the
reference backend's torch code (the same contract, docs/design.md) runs there."""

from .reference import backward, forward  # noqa: F401
