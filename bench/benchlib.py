"""Helpers of the benchmark suite: device, sizes, copy bandwidth, the case runner (see conftest.py)."""

import gc
import math
import os
import platform
import statistics
import time

import pytest
import torch


def _pick_device():
    forced = os.environ.get("NA_BENCH_DEVICE")
    if forced:
        if forced not in ("cpu", "cuda"):
            raise pytest.UsageError(f"NA_BENCH_DEVICE must be cpu or cuda, got {forced!r}")
        if forced == "cuda" and not torch.cuda.is_available():
            raise pytest.UsageError("NA_BENCH_DEVICE=cuda but torch.cuda.is_available() is False")
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICE = _pick_device()
IS_CUDA = DEVICE == "cuda"
if IS_CUDA:
    # compare against SpikingJelly's Triton IFNode (the GPU target), not its torch loop
    os.environ.setdefault("SJ_IF_CUDA_IMPLEMENTATION", "triton")

# ----------------------------------------------------------------------------- sizes
# nq_sizes: name -> activation shape; if_neurons: neurons per time step ([T, N] input);
# model_archs: the networks of the model cases; train_batch / snn_batch: images per training step
# / SNN pass; model_compile: the dtypes whose compiled model cases run (compiling a network takes
# tens of seconds); budget_s: timed seconds per case (rounds adapt).
SIZE_TABLES = {
    "full": dict(
        nq_sizes={"128x64x32x32": (128, 64, 32, 32), "2^26": (1 << 26,)},
        if_neurons=1 << 20,
        if_steps=(4, 8, 16, 32),
        model_archs=("resnet20",),
        train_batch=64,
        snn_batch=64,
        snn_T=8,
        model_compile=("fp32",),
        budget_s=1.0,
        min_rounds=10,
        max_rounds=200,
    ),
    # CPU: the ResNet activation at batch 16 (2^20 elements, 4 MiB fp32: cache-resident), 2^23
    # elements (32 MiB fp32 each way), and 2^19 neurons per step for T <= 8 (T = 8: 16 MiB fp32
    # each way, beyond the 32 MiB L3 of the 2-core machine these were tuned on); for T = 16, 32
    # the neurons shrink so that T x N stays 2^22 (if_max_elements) and the suite stays short.
    "cpu": dict(
        nq_sizes={"16x64x32x32": (16, 64, 32, 32), "2^23": (1 << 23,)},
        if_neurons=1 << 19,
        if_max_elements=1 << 22,
        if_steps=(4, 8, 16, 32),
        model_archs=("resnet20",),
        train_batch=64,
        snn_batch=64,
        snn_T=8,
        model_compile=("fp32",),
        budget_s=1.0,
        min_rounds=5,
        max_rounds=50,
    ),
    "tiny": dict(
        nq_sizes={"2x8x16x16": (2, 8, 16, 16), "2^16": (1 << 16,)},
        if_neurons=1 << 12,
        if_steps=(4, 8),
        model_archs=("resnet20",),
        train_batch=2,
        snn_batch=1,
        snn_T=8,
        model_compile=(),
        budget_s=0.05,
        min_rounds=3,
        max_rounds=5,
    ),
}
SIZE_NAME = os.environ.get("NA_BENCH_SIZES") or ("full" if IS_CUDA else "cpu")
if SIZE_NAME not in SIZE_TABLES:
    raise RuntimeError(f"NA_BENCH_SIZES must be one of {sorted(SIZE_TABLES)}, got {SIZE_NAME!r}")
SIZES = SIZE_TABLES[SIZE_NAME]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def if_neurons(T):
    """Neurons per time step of the integrate_fire cases at T steps (the size table's, capped)."""
    neurons = SIZES["if_neurons"]
    cap = SIZES.get("if_max_elements")
    return max(1, min(neurons, cap // T)) if cap else neurons


_SESSION = {"copy": None}  # the copy-bandwidth measurement, filled once per session


# ----------------------------------------------------------------------------- machine facts
def describe_device():
    if IS_CUDA:
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from na_kernels import cpu

    simd = f", C++ kernels: {cpu.simd_level()}" if cpu.available() else ", C++ kernels not built"
    simd += f", torch kernels: {torch.backends.cpu.get_cpu_capability().lower()}"
    return f"{name} ({torch.get_num_threads()} threads of {os.cpu_count()} CPUs{simd})"


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def _spikingjelly_version():
    try:
        from importlib.metadata import version

        return version("spikingjelly")
    except Exception:
        return None


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def synchronize():
    if IS_CUDA:
        torch.cuda.synchronize()


def _cuda_timer():
    """pytest-benchmark timer on CUDA: the clock read after the queued work has finished."""
    torch.cuda.synchronize()
    return time.perf_counter()


# ----------------------------------------------------------------------------- copy bandwidth
def measure_copy_bandwidth():
    """GB/s of a large device-to-device copy (read + write counted), median of repeats."""
    if IS_CUDA:
        numel = 1 << 28  # 1 GiB fp32 each way: far beyond any L2
        src = torch.randn(numel, device="cuda")
        dst = torch.empty_like(src)
        from triton.testing import do_bench

        copy = lambda: dst.copy_(src)  # noqa: E731,F821  (ruff takes the del below for an earlier one)
        seconds = do_bench(copy, warmup=25, rep=200, return_mode="median") / 1e3
        method = "torch.Tensor.copy_ of 1 GiB fp32 on the GPU, triton.testing.do_bench median"
    else:
        numel = 1 << 26 if SIZE_NAME != "tiny" else 1 << 22  # 256 MiB fp32: 8x the L3
        src = torch.randn(numel)
        dst = torch.empty_like(src)
        dst.copy_(src)
        times = []
        for _ in range(9):
            start = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        method = f"torch.Tensor.copy_ of {numel * 4 >> 20} MiB fp32, {torch.get_num_threads()} threads, median of 9"
    nbytes = 2 * numel * 4
    del src, dst
    gc.collect()
    return {"gbps": nbytes / seconds / 1e9, "bytes": nbytes, "seconds": seconds, "method": method}


def copy_bandwidth_once():
    """The session's copy-bandwidth measurement (made on first use)."""
    if _SESSION["copy"] is None:
        _SESSION["copy"] = measure_copy_bandwidth()
    return _SESSION["copy"]


# ----------------------------------------------------------------------------- the case runner
def _time_once(fn):
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def _minor_faults():
    """This process's minor page faults so far (None where the resource module is missing)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_case(
    benchmark,
    fn,
    *,
    group,
    impl,
    copy_bandwidth,
    bytes_moved=None,
    items=None,
    item_name=None,
    grad_to_none=(),
    info=None,
    warmup=1,
    min_rounds=None,
):
    """Time ``fn`` as one implementation of the case ``group`` and record its extra_info.

    bytes_moved: the fewest bytes a fused kernel must move for this case (None for whole
    models); items / item_name: a throughput to report (e.g. images per call).
    grad_to_none: tensors whose .grad is cleared before every call (no accumulation pass).
    min_rounds: fewer rounds than the size table's minimum (whole-model cases on the CPU).
    """
    grads = list(grad_to_none)

    def call():
        for t in grads:
            t.grad = None
        return fn()

    for _ in range(warmup):  # torch.compile compiles here; autotuning and allocators settle
        call()
    synchronize()
    single = _time_once(call)  # calibrates the rounds (and is one more warm-up call)

    budget, lo, hi = SIZES["budget_s"], SIZES["min_rounds"], SIZES["max_rounds"]
    if min_rounds is not None and not IS_CUDA:
        lo = min(lo, min_rounds)
    if IS_CUDA:
        iterations = max(1, min(1000, math.ceil(2e-3 / max(single, 1e-7))))  # >= 2 ms per round
        benchmark._timer = _cuda_timer  # pytest-benchmark reads it when the runner is made
    else:
        iterations = 1
    rounds = int(min(hi, max(lo, budget / max(single * iterations, 1e-9))))

    benchmark.group = group
    extra = benchmark.extra_info
    extra.update(
        {"case": group, "impl": impl, "device": DEVICE, "sizes": SIZE_NAME, "threads": torch.get_num_threads()}
    )
    if info:
        extra.update(info)
    faults_before = _minor_faults()
    benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=0)
    if faults_before is not None:  # fresh memory touched per call: where an allocator makes the time
        extra["page_faults_per_call"] = (_minor_faults() - faults_before) / (rounds * iterations)

    stats = getattr(benchmark, "stats", None)
    if stats is None or not stats:  # --benchmark-disable: the function ran once, untimed
        return
    seconds = stats.stats.median
    extra["time_source"] = "pytest-benchmark median (wall clock per call)"
    if IS_CUDA:
        try:
            from triton.testing import do_bench

            seconds = do_bench(call, warmup=10, rep=100, grad_to_none=grads or None, return_mode="median") / 1e3
            extra["time_source"] = "triton.testing.do_bench median (CUDA events, L2 flushed)"
        except ImportError:
            pass
    extra["time_s"] = seconds
    if bytes_moved is not None:
        extra["bytes_moved"] = int(bytes_moved)
        extra["gbps"] = bytes_moved / seconds / 1e9
        extra["copy_gbps"] = copy_bandwidth["gbps"]
        extra["fraction_of_copy_bandwidth"] = extra["gbps"] / copy_bandwidth["gbps"]
    if items is not None:
        extra[f"{item_name}_per_s"] = items / seconds
