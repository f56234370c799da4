"""na_kernels: fused kernels for noise-injected low-bit ANN training and ANN-to-SNN conversion.

Public API (each function's docstring documents it; docs/design.md the design):
    noisy_quant(x, p, lam=1.0, *, noise="uniform", scale=None, shift=0.5, seed=None, training=True)
        noise-injected quantize-clip activation, straight-through backward (grad of lam too);
        noise only while training is True, as F.dropout
    integrate_fire(x_seq, threshold=1.0, *, v_init=0.5, reset="subtract", amplitude="threshold",
                   surrogate="sigmoid", alpha=4.0, detach_reset=False, return_v=False)
        multi-step integrate-and-fire over [T, ...] with spike counts, surrogate-gradient BPTT
    event_conv2d(x, weight, bias=None, *, stride=1, padding=0, residual=None, max_density=0.3)
        inference-only CPU convolution whose cost scales with x's nonzeros (spike inputs)
    set_backend / use_backend / get_backend: force "triton", "cpu" or "reference"

``import na_kernels`` itself does not import torch (so ``na-kernels --help`` answers at once):
the names above and the subpackages (``na_kernels.nn``, ...) load on first use, and that first
use imports torch and registers both ops with ``torch.library``. ``import na_kernels.ops``
registers them explicitly, e.g. before ``torch.export.load`` of a program that calls them.
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "noisy_quant": "na_kernels.ops.noisy_quant",
    "integrate_fire": "na_kernels.ops.integrate_fire",
    "event_conv2d": "na_kernels.ops.event_conv",
    **dict.fromkeys(("BACKENDS", "get_backend", "set_backend", "use_backend"), "na_kernels._backend"),
}

__all__ = [
    "noisy_quant",
    "integrate_fire",
    "event_conv2d",
    "BACKENDS",
    "get_backend",
    "set_backend",
    "use_backend",
    "__version__",
]

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, submodules=True)
