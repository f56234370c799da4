"""na_kernels: fused kernels for noise-injected low-bit ANN training and ANN-to-SNN conversion.

Public API (each function's docstring documents it; docs/design.md the design):
    noisy_quant(x, p, lam=1.0, *, noise="uniform", scale=None, shift=0.5, seed=None, training=True)
        noise-injected quantize-clip activation, straight-through backward (grad of lam too);
        noise only while training is True, as F.dropout
    integrate_fire(x_seq, threshold=1.0, *, v_init=0.5, reset="subtract", amplitude="threshold",
                   surrogate="sigmoid", alpha=4.0, detach_reset=False, return_v=False)
        multi-step integrate-and-fire over [T, ...] with spike counts, surrogate-gradient BPTT
    set_backend / use_backend / get_backend: force "triton", "cpu" or "reference"
"""
from ._backend import BACKENDS, get_backend, set_backend, use_backend
from .ops.integrate_fire import integrate_fire
from .ops.noisy_quant import noisy_quant

__version__ = "0.1.0"

__all__ = ["noisy_quant", "integrate_fire", "BACKENDS", "get_backend", "set_backend", "use_backend", "__version__"]
