"""Which implementation runs an op: Triton (CUDA), the C++ extension (CPU) or the reference.

"auto" (the default) picks Triton for CUDA tensors, the C++ kernels for CPU tensors
(the reference where the extension is not built). Tests and benchmarks force one with
``na_kernels.use_backend(name)`` or the environment variable ``NA_KERNELS_BACKEND``.
Forcing "triton" for CPU tensors runs Triton's interpreter and needs
``TRITON_INTERPRET=1`` set before triton is first imported.

Each op's folder holds one module per backend (``na_kernels/ops/<op>/triton.py``, ``cpu.py``,
``reference.py``), and every such module has the op's ``forward`` and ``backward`` with the same
arguments (see ``na_kernels/ops/<op>/__init__.py``); ``implementation`` finds the one that runs.
"""

import contextlib
import importlib
import os

from . import cpu

BACKENDS = ("auto", "triton", "cpu", "reference")
_modules = {}  # (backend, op) -> its module, imported on first use (triton is optional)

_forced = None  # set by set_backend / use_backend; None means "read the environment"


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def get_backend():
    """The requested backend: "auto", "triton", "cpu" or "reference"."""
    if _forced is not None:
        return _forced
    return _check_name(os.environ.get("NA_KERNELS_BACKEND", "auto"))


def set_backend(name):
    """Force a backend for every later call ("auto" restores the default choice)."""
    global _forced
    _forced = _check_name(name)


@contextlib.contextmanager
def use_backend(name):
    """Context manager: run the ops inside the block with backend ``name``."""
    global _forced
    previous = _forced
    _forced = _check_name(name)
    try:
        yield
    finally:
        _forced = previous


def triton_interpreter_enabled():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(device):
    """The backend that runs for a tensor on ``device``."""
    name = get_backend()
    if name == "auto":
        if device.type == "cuda":
            return "triton"
        if device.type == "cpu" and cpu.available():
            return "cpu"
        if device.type == "cpu":
            cpu.warn_fallback_once()
        return "reference"
    if name == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' runs CPU tensors only, got a tensor on {device}")
    if name == "cpu" and not cpu.available():
        raise RuntimeError(f"backend 'cpu' was forced but the C++ extension is unavailable: {cpu.load_error()}")
    if name == "triton" and device.type == "cpu" and not triton_interpreter_enabled():
        raise RuntimeError(
            "backend 'triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before triton is imported"
        )
    if name == "triton" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"backend 'triton' runs CUDA tensors (or CPU ones when interpreted), got {device}")
    return name


def implementation(op, device):
    """The module with ``forward`` and ``backward`` of ``op`` ("noisy_quant", "integrate_fire") for a
    tensor on ``device``: na_kernels.ops.<op>.triton, .cpu or .reference."""
    key = (resolve(device), op)
    module = _modules.get(key)
    if module is None:
        try:
            module = importlib.import_module(f"na_kernels.ops.{op}.{key[0]}")
        except ModuleNotFoundError as error:
            if key[0] != "triton" or error.name is None or error.name.split(".")[0] != "triton":
                raise
            raise ImportError(
                f"backend 'triton' (what runs {device.type} tensors here) needs the triton package, which is "
                "not installed: pip install 'triton>=3.2' (torch's CUDA builds bring it on Linux)"
            ) from None
        _modules[key] = module
    return module
