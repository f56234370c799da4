"""Public ops, one folder each (``noisy_quant/``, ``batchnorm_noisy_quant/``, ``integrate_fire/``,
``event_conv/``, inference only and not a torch.library op): the
public function and its autograd rule in ``__init__.py``, one module per backend beside it (``triton.py``, ``cpu.py``,
``reference.py``). ``_registration`` turns each op's description into its torch.library ops, and
its docstring maps the call path; ``_eager`` decides when a call may skip the dispatcher.

Importing this package registers the ops (``torch.ops.na_kernels.*``)."""

from . import batchnorm_noisy_quant, event_conv, integrate_fire, noisy_quant  # noqa: F401
