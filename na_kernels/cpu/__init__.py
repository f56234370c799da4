"""The compiled C++ CPU kernels (``na_kernels._C``): loading, raw-pointer calls, fallback.

The extension is built by ``pip install .`` with pybind11 and no torch headers; it sees
tensors as (address, element count, dtype code). Where it is missing, ops on CPU tensors
fall back to the PyTorch reference and warn once, saying why.
"""

import contextlib
import os
import warnings

import torch

from .._spec import SimdLevel

try:
    from .. import _C

    _LOAD_ERROR = None
except ImportError as error:  # not built: no compiler at install time, or a source checkout
    _C = None
    _LOAD_ERROR = error

_warned = False


def available():
    return _C is not None


def load_error():
    return _LOAD_ERROR


def warn_fallback_once():
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"na_kernels: the C++ CPU kernels are not available ({_LOAD_ERROR}); CPU tensors use the "
            "slower PyTorch reference. Reinstall with a C++ compiler (`pip install .`) to build them.",
            RuntimeWarning,
            stacklevel=3,
        )


def extension():
    if _C is None:
        raise RuntimeError(f"na_kernels C++ extension unavailable: {_LOAD_ERROR}")
    return _C


def code(member) -> int:
    """A vocabulary member (``_spec``) as the plain int the extension's entry points take
    (pybind converts an IntEnum argument more slowly than an int)."""
    return int(member)


# Below this many elements a kernel runs on the calling thread: starting an OpenMP team costs
# more than the work (and much more on a busy machine), as ATen's grain size also reflects.
SERIAL_ELEMENTS = 32768


def num_threads(elements):
    """Threads for a kernel over ``elements`` elements: torch.get_num_threads(), or 1 when small."""
    return 1 if elements < SERIAL_ELEMENTS else max(1, torch.get_num_threads())


SIMD_LEVELS = SimdLevel.labels()  # ("generic", "avx2", "avx512"), indexed by the SimdLevel value


def simd_level():
    """The explicit-SIMD kernels the C++ ops use here: "avx512", "avx2" or "generic"."""
    return SIMD_LEVELS[extension().simd_level()]


def detected_simd_level():
    """The best explicit-SIMD level this CPU supports (what ``simd_level`` is without a limit)."""
    return SIMD_LEVELS[extension().detected_simd_level()]


@contextlib.contextmanager
def limit_simd(level):
    """Run the C++ kernels no higher than ``level`` ("generic", "avx2", "avx512") inside the block.

    Tests use it to check every kernel path on one machine; it changes speed, never results.
    The limit is process-wide, like ``NA_KERNELS_SIMD``: while the block runs, C++ kernels called
    from every thread use it, and blocks entered from several threads at once restore each
    other's previous level in whatever order they exit. Use it from one thread at a time.
    """
    global _simd_limit
    previous = _simd_limit
    _simd_limit = int(SimdLevel.parse("level", level))
    extension().set_simd_limit(_simd_limit)
    try:
        yield
    finally:
        _simd_limit = previous
        extension().set_simd_limit(previous)


def _limit_from_environment():
    """``NA_KERNELS_SIMD=generic|avx2|avx512`` caps the level for the whole process (e.g. to see
    how a CPU without AVX-512 would do); unset, the kernels use the best the CPU has."""
    text = os.environ.get("NA_KERNELS_SIMD", "").strip().lower()
    if not text:
        return len(SIMD_LEVELS) - 1
    level = int(SimdLevel.parse("NA_KERNELS_SIMD", text))
    if _C is not None:
        _C.set_simd_limit(level)
    return level


_simd_limit = _limit_from_environment()  # what limit_simd (or NA_KERNELS_SIMD) last set

from .output_cache import cache_info, empty_cache, set_cache_limit  # noqa: E402,F401  (the kernels' output blocks)
