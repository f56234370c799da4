"""na_kernels: fused kernels for noise-injected low-bit ANN training and ANN-to-SNN conversion.

Public API (each function's docstring documents it; docs/design.md the design):
    noisy_quant(x, p, lam=1.0, *, noise="uniform", scale=None, shift=0.5, seed=None, training=True)
        noise-injected quantize-clip activation, straight-through backward (grad of lam too);
        noise only while training is True, as F.dropout
    integrate_fire(x_seq, threshold=1.0, *, v_init=0.5, reset="subtract", amplitude="threshold",
                   surrogate="sigmoid", alpha=4.0, detach_reset=False, return_v=False)
        multi-step integrate-and-fire over [T, ...] with spike counts, surrogate-gradient BPTT
    set_backend / use_backend / get_backend: force "triton", "cpu" or "reference"

``import na_kernels`` itself does not import torch (so ``na-kernels --help`` answers at once):
the names above and the subpackages (``na_kernels.nn``, ...) load on first use, and that first
use imports torch and registers both ops with ``torch.library``. ``import na_kernels.ops``
registers them explicitly, e.g. before ``torch.export.load`` of a program that calls them.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module (under na_kernels) that defines it
_PUBLIC = {
    "noisy_quant": "ops.noisy_quant",
    "integrate_fire": "ops.integrate_fire",
    "BACKENDS": "_backend",
    "get_backend": "_backend",
    "set_backend": "_backend",
    "use_backend": "_backend",
}

__all__ = ["noisy_quant", "integrate_fire", "BACKENDS", "get_backend", "set_backend", "use_backend", "__version__"]


def __getattr__(name):
    """Load a public name, or a subpackage (``na_kernels.nn``), on first access (PEP 562)."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    elif name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":  # the submodule exists but one of its imports is missing
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
