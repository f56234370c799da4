"""When a public call may skip the torch.library op and call the backend kernels directly.

Going through the custom op costs Python and dispatcher work on every call (its autograd
wrapper, redispatch, the backend kernel lookup), more than the kernel itself on small tensors.
In plain eager mode the public functions call the same per-backend kernels directly (an
``autograd.Function`` with the op's own setup_context / backward when a gradient is needed;
both made by ``_registration.Op``);
everything else goes through the op, so torch.compile, torch.export, make_fx, FakeTensor,
functorch transforms, torch-function / dispatch modes, tracing, forward AD and autocast see
exactly the registered op.
"""

import torch
from torch.autograd import forward_ad

_C = torch._C
_PLAIN = (torch.Tensor, torch.nn.Parameter)
# The checks read torch internals; a torch without one of them never takes the fast path.
_REQUIRED = (
    "_len_torch_function_stack",
    "_len_torch_dispatch_stack",
    "_get_tracing_state",
    "_is_any_autocast_enabled",
    "is_grad_enabled",
)
_AVAILABLE = (
    all(hasattr(_C, name) for name in _REQUIRED)
    and hasattr(_C, "_functorch")
    and all(hasattr(_C._functorch, name) for name in ("is_functorch_wrapped_tensor", "peek_interpreter_stack"))
    and hasattr(forward_ad, "_current_level")
)


def _no_mode_active():
    return _AVAILABLE and not (
        torch.compiler.is_compiling()
        or _C._len_torch_function_stack()
        or _C._len_torch_dispatch_stack()
        or _C._functorch.peek_interpreter_stack() is not None
        or _C._get_tracing_state() is not None
        or forward_ad._current_level >= 0
    )


def forward_ok(*tensors):
    """True when a forward call with these tensor arguments (None allowed) may bypass the op:
    plain eager mode, no autocast, and every tensor a plain CPU or CUDA torch.Tensor/Parameter
    (meta, FakeTensor, functorch-wrapped and other subclasses go through the op)."""
    if not _no_mode_active() or _C._is_any_autocast_enabled():
        return False
    for t in tensors:
        if t is not None and (
            type(t) not in _PLAIN or not (t.is_cpu or t.is_cuda) or _C._functorch.is_functorch_wrapped_tensor(t)
        ):
            return False
    return True


def backward_ok(ctx, *tensors):
    """True when backward of a forward that bypassed the op (``ctx.eager_fast``) may call the
    backward kernels directly: the same checks, and no double backward (create_graph)."""
    return getattr(ctx, "eager_fast", False) and not _C.is_grad_enabled() and forward_ok(*tensors)


def functorch_active():
    """True inside a torch.func transform (grad, vjp, jacrev, vmap, ...)."""
    return _AVAILABLE and _C._functorch.peek_interpreter_stack() is not None
