"""Run the test suite on CUDA, then the full benchmark, and write the results.

    python bench/run_gpu.py                    # on a machine with a GPU
    python bench/run_gpu.py --allow-cpu --skip-tests   # the CPU table (shrunk sizes)
    python bench/run_gpu.py --allow-cpu --skip-tests --malloc-tuning   # glibc told to keep freed memory
    python bench/run_gpu.py --budget-s 540     # a session with one 10-minute call: everything ends in time

The benchmark runs in a plain process, with the environment it is given, exactly as
``pytest bench/ --benchmark-only`` does: those are the numbers to quote. ``--malloc-tuning``
sets MALLOC_TUNING below for the benchmark process (a configuration a user has to choose; see
bench/README.md, "malloc"), and its files get ``-malloc-tuned`` in their names and say so.

Writes, under --out (default bench/results/):
    <machine>-<date>[-simd-<level>][-malloc-tuned].json
        pytest-benchmark JSON (extra_info: bytes, GB/s, % copy, speedups)
    <machine>-<date>.md           the markdown summary (bench/summarize.py) + the test outcome
    <machine>-<date>-tests.txt    the test suite's output (unless --skip-tests)
where <machine> is the GPU's name (e.g. nvidia-h100-80gb-hbm3) or cpu-<model>-<threads>t and
<date> is the UTC date. Commit them. Extra arguments after ``--`` go to the benchmark pytest
(e.g. ``-- -k noisy_quant``).

``--budget-s`` bounds the whole run's wall time: the test suite gets at most TEST_SHARE of it
(killed past that, and the .md says so), and the benchmark skips the cases left once the budget,
less DEADLINE_MARGIN_S for the case in flight and the files, has passed (``NA_BENCH_DEADLINE``).
The op cases run first (file order), then the whole-network cases (SNN variants included: the
fast mode, bf16 channels-last, is a row of the fp32 SNN cases); ``--no-compiled-models`` skips
the compiled networks (``NA_BENCH_MODEL_COMPILE=none``); ``--models resnet20,resnet18`` picks the
networks (``NA_BENCH_MODELS``; default: the size table's).
"""

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Only with --malloc-tuning (never by default): glibc serves every allocation from the heap and never
# gives freed memory back, so
# a tensor allocated again after it was freed reuses pages instead of faulting fresh ones in.
# Without it, an output of the size of the last freed block is mmapped anew on every call (the
# dynamic mmap threshold equals that size) and its page faults -- about 1 ms per MiB on the
# 2-core VM this was tuned on, more than the copy itself -- land in whichever case runs then.
# It applies to every implementation alike (PyTorch's caching allocator does the same on CUDA),
# but a user's process does not have it unless they set it, so a tuned run is labelled as such.
MALLOC_TUNING = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}
ROOT = BENCH.parent
TEST_SHARE = 0.5  # of --budget-s, at most, for the test suite
DEADLINE_MARGIN_S = 90  # a compiled network case in flight, then the JSON and the summary


def machine_slug(device):
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        model = line.split(":", 1)[1].strip()  # e.g. "Intel(R) Xeon(R) Processor"
                        name = "cpu-" + re.sub(r"\((r|tm)\)|\s(processor|cpu @.*)$", "", model, flags=re.IGNORECASE)
                        break
        except OSError:
            pass
        name += f"-{torch.get_num_threads()}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# A capped NA_KERNELS_SIMD level stands for a CPU without the wider ISA: torch's own CPU kernels
# (eager, SpikingJelly, and the code torch.compile generates) are capped to match, unless the
# environment already says otherwise, so both sides of each ratio run on the same ISA.
ATEN_CAPABILITY_OF_LEVEL = {"generic": "default", "avx2": "avx2"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(BENCH / "results"), help="output folder (default bench/results)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU")
    parser.add_argument("--skip-tests", action="store_true", help="benchmark only")
    parser.add_argument(
        "--sizes", choices=("full", "cpu", "tiny"), help="size table (default: full on CUDA, cpu on CPU)"
    )
    parser.add_argument(
        "--malloc-tuning",
        action="store_true",
        help="set MALLOC_MMAP_MAX_=0 and a huge MALLOC_TRIM_THRESHOLD_ for the benchmark (glibc keeps "
        "freed memory); not what a plain `pytest bench/ --benchmark-only` measures; the output "
        "files are named and labelled -malloc-tuned",
    )
    parser.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="accepted for old command lines: a plain process is the default now",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock seconds for the whole run (tests + benchmark): cases left past it are skipped",
    )
    parser.add_argument(
        "--no-compiled-models",
        action="store_true",
        help="skip the compiled whole-network cases (NA_BENCH_MODEL_COMPILE=none)",
    )
    parser.add_argument(
        "--models", default=None, help="networks of the model cases, e.g. resnet20,resnet18 (NA_BENCH_MODELS)"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for the benchmark pytest run (after --)")
    args = parser.parse_args(argv)

    import time

    import torch

    started = time.time()
    if args.budget_s is not None and args.budget_s <= DEADLINE_MARGIN_S:
        sys.exit(f"run_gpu.py: --budget-s must be more than {DEADLINE_MARGIN_S} s, got {args.budget_s:g}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        sys.exit("run_gpu.py: no CUDA device (torch.cuda.is_available() is False); --allow-cpu runs the CPU sizes")

    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # never time the interpreter
    env["NA_BENCH_DEVICE"] = device
    level = env.get("NA_KERNELS_SIMD", "").strip().lower()
    if device == "cpu" and level in ATEN_CAPABILITY_OF_LEVEL and "ATEN_CPU_CAPABILITY" not in env:
        env["ATEN_CPU_CAPABILITY"] = ATEN_CAPABILITY_OF_LEVEL[level]
        print(
            f"run_gpu.py: NA_KERNELS_SIMD={level}: torch's kernels capped to match "
            f"(ATEN_CPU_CAPABILITY={env['ATEN_CPU_CAPABILITY']})",
            flush=True,
        )
    if args.sizes:
        env["NA_BENCH_SIZES"] = args.sizes
    if args.malloc_tuning and args.no_malloc_tuning:
        sys.exit("run_gpu.py: --malloc-tuning and --no-malloc-tuning contradict each other")
    if args.malloc_tuning:
        env.update(MALLOC_TUNING)
    if args.no_compiled_models:
        env["NA_BENCH_MODEL_COMPILE"] = "none"
    if args.models:
        env["NA_BENCH_MODELS"] = args.models
    tuned = {k: v for k, v in env.items() if k.startswith("MALLOC_")}
    if tuned and not args.malloc_tuning:
        print(
            f"run_gpu.py: note: glibc settings inherited from the environment ({tuned}): the files are "
            "labelled -malloc-tuned; unset them for a plain run",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{machine_slug(device)}-{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}"
    if os.environ.get("NA_KERNELS_SIMD"):  # a capped SIMD level is a different configuration
        stem += f"-simd-{os.environ['NA_KERNELS_SIMD'].strip().lower()}"
    if tuned:  # not a plain process: never mistaken for the numbers a user's run prints
        stem += "-malloc-tuned"

    test_line = "Test suite: not run (--skip-tests)."
    if not args.skip_tests:
        log = out / f"{stem}-tests.txt"
        print(f"run_gpu.py: test suite on {device} -> {log}", flush=True)
        limit = TEST_SHARE * args.budget_s if args.budget_s else None
        with open(log, "w") as f:
            try:
                code = subprocess.run(
                    [sys.executable, "-m", "pytest", str(ROOT / "tests"), "-q", "-p", "no:cacheprovider"],
                    cwd=ROOT,
                    env=env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=limit,
                ).returncode
            except subprocess.TimeoutExpired:
                code = f"none: stopped after {limit:.0f} s (--budget-s {args.budget_s:g})"
        last = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["(no output)"]
        test_line = f"Test suite on {device}: exit code {code} — {last[0].strip('= ')}"
        print("run_gpu.py:", test_line, flush=True)

    json_path = out / f"{stem}.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(BENCH),
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        "-p",
        "no:cacheprovider",
        "-q",
        *args.pytest_args,
    ]
    if args.budget_s:
        env["NA_BENCH_DEADLINE"] = str(started + args.budget_s - DEADLINE_MARGIN_S)
    print("run_gpu.py:", " ".join(command), flush=True)
    bench = subprocess.run(command, cwd=ROOT, env=env)

    if not json_path.exists():
        sys.exit(f"run_gpu.py: the benchmark wrote no JSON (exit code {bench.returncode})")
    sys.path.insert(0, str(BENCH))
    import json

    import summarize

    data = json.loads(json_path.read_text())
    text = summarize.render(data.get("benchmarks", []), data.get("machine_info"))
    md_path = out / f"{stem}.md"
    commit = (data.get("commit_info") or {}).get("id", "")
    given, shown = list(argv if argv is not None else sys.argv[1:]), []
    while given:  # the command line as run, less the output folder
        arg = given.pop(0)
        if arg == "--out" and given:
            given.pop(0)
        elif not arg.startswith("--out="):
            shown.append(arg)
    shown = shlex.join(shown)
    if tuned:
        settings = " ".join(f"{k}={v}" for k, v in sorted(tuned.items()))
        process = (
            f"**Tuned allocator ({settings})**: not a plain process; a plain "
            '`pytest bench/ --benchmark-only` does not measure these numbers (bench/README.md, "malloc").'
        )
    else:
        process = "Plain process (glibc malloc defaults), as `pytest bench/ --benchmark-only` runs."
    md_path.write_text(
        f"# na_kernels benchmarks — {stem}\n\n"
        f"Run {data.get('datetime', '')} at commit {commit[:12]}: "
        f"`python bench/run_gpu.py{(' ' + shown) if shown else ''}`. {process}\n\n"
        f"{test_line}\n\n{text}\n"
    )
    print(f"run_gpu.py: wrote {json_path} and {md_path} (benchmark exit code {bench.returncode})")
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
