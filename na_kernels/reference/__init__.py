"""What the PyTorch reference shares: ``philox``, the noise stream. Each op's reference (the formula
in plain PyTorch, the spec every backend meets, and its forward/backward adapter) is
``na_kernels/ops/<op>/reference.py``; ``na_kernels.reference.noisy_quant`` and
``.integrate_fire`` still name those modules."""

import importlib

_OPS = ("noisy_quant", "integrate_fire")


def __getattr__(name):
    if name in _OPS:
        return importlib.import_module(f"na_kernels.ops.{name}.reference")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
