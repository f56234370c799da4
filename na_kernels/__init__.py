"""na_kernels: fused kernels for noise-injected low-bit ANN training and ANN-to-SNN conversion.

Public API:
    noisy_quant(x, p, lam=1.0, *, noise="uniform", scale=1.0, shift=0.5, seed=None)
    set_backend / use_backend / get_backend: force "triton", "cpu" or "reference"
"""
from ._backend import BACKENDS, get_backend, set_backend, use_backend
from .ops.integrate_fire import integrate_fire
from .ops.noisy_quant import noisy_quant

__version__ = "0.1.0"

__all__ = ["noisy_quant", "integrate_fire", "BACKENDS", "get_backend", "set_backend", "use_backend", "__version__"]
