"""Public ops: argument checks, the torch.library registration (``_registration``), autograd and
the eager fast path (``_eager``); the kernels are the backends' (``na_kernels._backend``).

Importing this package registers both ops (``torch.ops.na_kernels.*``)."""
from . import integrate_fire, noisy_quant  # noqa: F401
