"""``torch.compiler.disable`` without importing ``torch._dynamo`` when the package is imported.

Decorating with ``torch.compiler.disable`` at class definition imports ``torch._dynamo`` (about
a second, much of a CLI's start-up). ``compile_disabled`` defers that to a call made while
compiling: there ``torch._dynamo`` is loaded anyway; an eager program never loads it.
"""
import functools

import torch


def compile_disabled(fn):
    """``fn`` that torch.compile never traces (it runs eagerly, a graph break around it), as
    ``torch.compiler.disable(fn)``; in eager mode a plain call of ``fn``."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            # dynamo does not trace torch.compiler.disable itself: it breaks the graph here and
            # runs the disabled fn eagerly, guarding on nothing of this wrapper
            return torch.compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return call
