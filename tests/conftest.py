"""Test setup shared by every test file.

Triton's interpreter must be switched on before triton is first imported, so it is set
here (unless a GPU is present, where the Triton kernels run natively on CUDA tensors).

Tiers (markers registered in pyproject.toml): ``slow`` (the property tests, the rest of a
parametrized grid after its first case per backend, training runs, subprocesses), ``gpu`` (needs
CUDA; skipped without it)
and ``peers`` (compares with another library, e.g. SpikingJelly; skipped where it is missing).
``pytest -m "not slow" tests`` is the inner loop; ``pytest tests`` (CI) runs everything.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

try:
    import triton  # noqa: F401,E402

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

# Where the Triton kernels run in these tests: natively on a GPU, else the interpreter on CPU.
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"

requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
requires_cuda = pytest.mark.gpu  # skipped without a GPU (pytest_collection_modifyitems)


def _cpp_available():
    from na_kernels import cpu

    return cpu.available()


requires_cpp = pytest.mark.skipif(not _cpp_available(), reason="C++ extension not built")

# Every backend of the ops, as (backend, device) test parameters: the C++ kernels and the reference
# on CPU tensors, Triton on CUDA tensors (or on CPU tensors through its interpreter).
BACKENDS = [
    pytest.param("reference", "cpu", id="reference"),
    pytest.param("cpu", "cpu", id="cpp", marks=requires_cpp),
    pytest.param("triton", TRITON_DEVICE, id="triton", marks=requires_triton),
]


def interpreted(backend, device):
    """True for Triton's interpreter (slow, and without bfloat16)."""
    return backend == "triton" and device == "cpu"


def float_dtypes(backend, device):
    """The input dtypes a backend is tested with: all three, but no bfloat16 in the interpreter."""
    if interpreted(backend, device):
        return (torch.float32, torch.float16)
    return (torch.float32, torch.float16, torch.bfloat16)


def channels_last_seq(steps, batch, channels, height, width, device, dtype=torch.float32):
    """[T, B, C, H, W] whose steps are channels-last in memory: what a channels-last network's
    [T*B, C, H, W] activation looks like after ``reshape(T, B, ...)``."""
    x = torch.randn(steps * batch, channels, height, width, device=device) * 0.8 + 0.3
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    return x.reshape(steps, batch, channels, height, width)


def assert_same_forward(got, want):
    """Same number of tensors, each with the same dtype, shape and values."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w), (g - w).abs().max() if g.is_floating_point() else (g != w).sum()


@pytest.fixture(autouse=True)
def _seed_and_restore_backend():
    import na_kernels

    torch.manual_seed(1234)
    previous = na_kernels.get_backend()
    yield
    na_kernels.set_backend(previous)


@pytest.fixture
def one_thread():
    """Tiny models: more threads only spin on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["generic", "avx2", "avx512"])
def simd_level(request):
    """Each explicit-SIMD path of the C++ kernels this CPU can run (the others are skipped)."""
    from na_kernels import cpu

    if not cpu.available():
        pytest.skip("C++ extension not built")
    if cpu.SIMD_LEVELS.index(request.param) > cpu.SIMD_LEVELS.index(cpu.detected_simd_level()):
        pytest.skip(f"this CPU has no {request.param}")
    with cpu.limit_simd(request.param):
        assert cpu.simd_level() == request.param
        yield request.param


def compile_triton_for_sm90(script):
    """Run ``script`` (which calls triton.compile for an sm_90 target and prints "compiled") in a
    process without TRITON_INTERPRET: GPU-only compile errors show up on a machine with no GPU."""
    import shutil
    import subprocess
    import sys

    if HAS_CUDA:
        pytest.skip("the CUDA tests run the kernels natively")
    try:
        from triton.backends.nvidia import compiler
    except ImportError:
        pytest.skip("triton has no NVIDIA backend")
    bin_dir = os.path.join(os.path.dirname(compiler.__file__), "bin")
    if not (os.path.exists(os.path.join(bin_dir, "ptxas")) or shutil.which("ptxas")):
        pytest.skip("no ptxas")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]


def poison_like(tensor):
    """A tensor of the same shape/dtype filled with NaN: unwritten outputs show up."""
    return torch.full_like(tensor, float("nan"))


def pytest_collection_modifyitems(config, items):
    """The tiers that follow from where a test is. ``slow``: the property tests, and every case of
    a parametrized test after the first one per backend, so the fast tier still runs each test
    function on every backend (and every Triton kernel) once. ``gpu`` tests skip without CUDA."""
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    first_cases = set()
    for item in items:
        if "property" in item.path.parts:
            item.add_marker(pytest.mark.slow)
        params = getattr(getattr(item, "callspec", None), "params", None)
        if params:
            case = (item.path, item.originalname, params.get("backend"))
            if case in first_cases:
                item.add_marker(pytest.mark.slow)
            first_cases.add(case)
        if not HAS_CUDA and item.get_closest_marker("gpu"):
            item.add_marker(no_gpu)


def _register_hypothesis_profiles():
    """The property tests' hypothesis profiles (tests/property), chosen by NA_KERNELS_HYPOTHESIS_PROFILE:

    - "ci" (the default, and what CI runs): derandomized (the same examples every run), 1000 examples
      per test, no example database;
    - "thorough": random examples, 20 times as many (a local hunt for new failures);
    - "dev": derandomized, 50 examples (a quick local check while editing).
    """
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # the test extra is not installed: tests/property skips itself
        return
    common = dict(
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )
    settings.register_profile("ci", max_examples=1000, derandomize=True, **common)
    settings.register_profile("thorough", max_examples=20000, derandomize=False, **common)
    settings.register_profile("dev", max_examples=50, derandomize=True, **common)
    name = os.environ.get("NA_KERNELS_HYPOTHESIS_PROFILE", "ci")
    if name not in ("ci", "thorough", "dev"):
        raise ValueError(f"NA_KERNELS_HYPOTHESIS_PROFILE must be 'ci', 'thorough' or 'dev', got {name!r}")
    settings.load_profile(name)


_register_hypothesis_profiles()
