"""Shared setup of the benchmark suite (``pytest bench/ --benchmark-only``).

- Device: CUDA when a GPU is present (full sizes), else the CPU (shrunk sizes, so the whole
  suite runs in a few minutes). ``NA_BENCH_DEVICE=cpu|cuda`` forces one;
  ``NA_BENCH_SIZES=full|cpu|tiny`` forces a size table (tiny: a smoke run in seconds).
- Copy bandwidth: measured once per session by a large device-to-device copy
  (``dst.copy_(src)``, bytes = read + write); every case reports its fraction of it.
- Timing: each case calls :func:`run_case`, which warms up (torch.compile compiles there),
  calibrates, and times with ``benchmark.pedantic``. On the CPU the time is pytest-benchmark's
  median wall clock per call. On CUDA pytest-benchmark's timer synchronises the device and
  each round runs enough calls to hide launch overhead; the time used for GB/s and speedups
  is the median of ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls), kept
  as ``extra_info["time_s"]`` next to the wall-clock statistics.
- Speedups "side by side in one run": every implementation of a case (na_kernels, eager,
  torch.compile, SpikingJelly) is its own benchmark in one pytest-benchmark group. At session
  end, before pytest-benchmark writes its JSON, a hook adds ``speedup_vs_<impl>`` (that
  implementation's time / na_kernels' time) to na_kernels' ``extra_info`` of every group,
  and prints a short markdown summary (``bench/summarize.py`` makes the same from the JSON): op,
  case, median time, GB/s, % copy, the ratio to each alternative, then the project's internal
  targets. It is the last thing printed; pytest-benchmark's own tables are hidden unless
  ``NA_BENCH_FULL_TABLES=1`` or ``--bench-full-tables`` (then they come first, median columns).
- Allocator: the process is taken as it is (no malloc tuning here); the header and the summary
  say whether ``MALLOC_*`` variables were set (bench/README.md, "malloc").
- Never under Triton's interpreter: a run with ``TRITON_INTERPRET`` set is refused.
- Whole-network cases (``extra_info["table"] == "model"``) print in a table of their own after
  the op table; compiled ones carry the ``compile_model`` marker. ``NA_BENCH_DEADLINE`` (a Unix
  time) skips the cases left when it has passed.
"""

import os
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import summarize  # noqa: E402  (bench/summarize.py: the same tables from the JSON)
from benchlib import (  # noqa: E402
    _SESSION,
    DEVICE,
    IS_CUDA,
    SIZE_NAME,
    _load_average,
    _spikingjelly_version,
    _triton_version,
    copy_bandwidth_once,
    describe_device,
)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def copy_bandwidth():
    """{"gbps", "bytes", "seconds", "method"} of a large device-to-device copy, once per session."""
    return copy_bandwidth_once()


@pytest.fixture
def fresh_compiler():
    """torch.compile state reset around a case: the recompile budget is process-global."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- pytest hooks
def pytest_configure(config):
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise pytest.UsageError(
            "TRITON_INTERPRET is set: the benchmarks never time Triton's interpreter. Unset it "
            "(on a CPU the ops run the C++ kernels; on a GPU the compiled Triton kernels)."
        )
    config.addinivalue_line("markers", "bench_case: a timed case of the na_kernels benchmark suite")
    config.addinivalue_line(
        "markers",
        "compile_model: a whole network under torch.compile (compiles for tens "
        "of seconds; bench/README.md, model cases)",
    )


DEADLINE_ENV = "NA_BENCH_DEADLINE"


def pytest_runtest_setup(item):
    """Past ``NA_BENCH_DEADLINE`` (a Unix time; run_gpu.py --budget-s sets it) the remaining cases
    are skipped, so a run that must end by a wall-clock limit still writes its JSON."""
    deadline = os.environ.get(DEADLINE_ENV)
    if deadline:
        try:
            limit = float(deadline)
        except ValueError:
            raise pytest.UsageError(f"{DEADLINE_ENV} must be a Unix time in seconds, got {deadline!r}") from None
        if time.time() > limit:
            pytest.skip(f"past the run's deadline ({DEADLINE_ENV}; run_gpu.py --budget-s)")


def pytest_report_header(config):
    threads = torch.get_num_threads()
    return [
        f"na_kernels bench: device={describe_device()} sizes={SIZE_NAME} torch={torch.__version__} "
        f"threads={threads}"
        + (f" triton={_triton_version()}" if IS_CUDA else "")
        + f" malloc={_malloc_env() or 'defaults'}",
    ] + (
        [
            f"na_kernels bench: TUNED allocator ({' '.join(f'{k}={v}' for k, v in _malloc_env().items())}): "
            "not a plain process; see bench/README.md, 'malloc'"
        ]
        if _malloc_env()
        else []
    )


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["na_bench"] = {
        "device": DEVICE,
        "device_name": describe_device(),
        "sizes": SIZE_NAME,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "spikingjelly": _spikingjelly_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": _load_average(),
        "copy_bandwidth": _SESSION["copy"],
        "malloc_env": _malloc_env(),
    }


def _malloc_env():
    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # runs before pytest-benchmark's own wrapper writes the JSON: the ratios land in it
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None:
        try:
            summarize.add_speedups([_as_record(meta) for meta in bs.benchmarks if meta])
        except Exception as error:  # a summary bug must not lose the measurements
            print(f"\nna_kernels bench: could not compute speedups: {error!r}", file=sys.stderr)
    yield


# pytest-benchmark's own tables: hidden unless asked for (they come first in its output, sorted
# by min, and run to pages). What is shown instead is summarize.py's table, last in the output.
FULL_TABLES_ENV = "NA_BENCH_FULL_TABLES"
MEDIAN_COLUMNS = ["median", "iqr", "min", "max", "rounds", "iterations"]


def pytest_addoption(parser):
    parser.addoption(
        "--bench-full-tables",
        action="store_true",
        default=False,
        help=f"na_kernels bench: also print pytest-benchmark's own tables (or {FULL_TABLES_ENV}=1)",
    )


def _full_tables(config):
    if os.environ.get(FULL_TABLES_ENV, "0") not in ("", "0") or config.getoption("bench_full_tables", False):
        return True
    # a user who asks pytest-benchmark for something its tables show gets them
    asked = ("benchmark_columns", "benchmark_compare", "benchmark_histogram", "benchmark_cprofile", "benchmark_verbose")
    return any(config.getoption(name, None) for name in asked)


@pytest.hookimpl(hookwrapper=True)
def pytest_terminal_summary(terminalreporter, config):
    """Around pytest-benchmark's hook: its tables hidden unless asked (median columns first when
    shown), then the short summary, the last thing before pytest's closing line."""
    bs = getattr(config, "_benchmarksession", None)
    if bs is not None:
        if not _full_tables(config):
            bs.quiet = True  # its tables and cProfile are not printed; the regression checks still run
        elif not config.getoption("benchmark_columns", None):
            bs.columns = MEDIAN_COLUMNS
    yield
    try:
        _print_summary(terminalreporter)
    except Exception as error:  # a summary bug must not lose the run
        terminalreporter.write_line(f"na_kernels bench: could not print the summary: {error!r}")


def _print_summary(terminalreporter):
    config = terminalreporter.config
    bs = getattr(config, "_benchmarksession", None)
    if bs is None:
        return
    records = [_as_record(meta) for meta in bs.benchmarks if meta]
    if not records or not any(r["stats"]["median"] for r in records):
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "na_kernels benchmark summary (medians, all measured in this run)")
    write(summarize.render(records, {"na_bench": _machine_summary()}, alternative_times=False))
    write("")
    if not _full_tables(config):
        write(
            f"pytest-benchmark's full tables: {FULL_TABLES_ENV}=1 (or --bench-full-tables); "
            "all numbers: --benchmark-json=out.json, then python bench/summarize.py out.json."
        )
    write("Columns, allocator note: bench/README.md.")


def _as_record(meta):
    """A pytest-benchmark Metadata as the dict shape of its JSON entry (shared extra_info)."""
    return {
        "group": meta.group,
        "name": meta.name,
        "extra_info": meta.extra_info,
        "stats": {"median": meta.stats.median, "iterations": meta.iterations},
    }


def _machine_summary():
    return {
        "device": DEVICE,
        "device_name": describe_device(),
        "sizes": SIZE_NAME,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "copy_bandwidth": _SESSION["copy"],
        "load_average": _load_average(),
        "torch": torch.__version__,
        "malloc_env": _malloc_env(),
    }
