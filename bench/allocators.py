"""The CPU output cache against the allocator route, side by side, each in its own process.

    python bench/allocators.py [--repeats 15] [--n 23] [--neurons 18] [--threads 2]

Configurations (one fresh process each, the same workload):
- cache on, glibc:        NA_KERNELS_CPU_CACHE_MB=256, the C library's malloc;
- cache off, glibc:       the default since issue 22;
- cache off, tcmalloc:    LD_PRELOAD of libtcmalloc_minimal (as torch.backends.xeon.run_cpu does);
- cache off, jemalloc:    LD_PRELOAD of libjemalloc with MALLOC_CONF tuned to keep freed pages.
A configuration whose library is not installed is reported as such (Debian/Ubuntu:
``apt-get install libtcmalloc-minimal4 libjemalloc2``).

Workload, per iteration: noisy_quant forward + backward on 2^n fp32 elements (uniform noise,
grad of x and lam) and integrate_fire forward + backward at T = 8 on 2^neurons fp32 neurons.
Reported: the median time per iteration and the minor page faults per iteration (getrusage),
for the kernels' outputs and torch's own allocations together. The load average is printed:
on a shared machine the times move with it, so compare columns of one run only.
"""

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time

LIBRARIES = {
    "tcmalloc": [
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
        "/usr/lib/*/libtcmalloc_minimal.so*",
        "/usr/lib/*/libtcmalloc.so*",
    ],
    "jemalloc": ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/*/libjemalloc.so*"],
}
# jemalloc: keep freed pages for reuse instead of returning them at once (torch's launcher sets similar)
JEMALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def _library(name):
    for pattern in LIBRARIES[name]:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def configurations():
    base = {k: v for k, v in os.environ.items() if k not in ("NA_KERNELS_CPU_CACHE_MB", "LD_PRELOAD", "MALLOC_CONF")}
    yield "cache on, glibc", {**base, "NA_KERNELS_CPU_CACHE_MB": "256"}, None
    yield "cache off, glibc", dict(base), None
    for name in ("tcmalloc", "jemalloc"):
        library = _library(name)
        env = {**base, "LD_PRELOAD": library or ""}
        if name == "jemalloc":
            env["MALLOC_CONF"] = JEMALLOC_CONF
        yield f"cache off, {name}", env, None if library else f"{name} not installed"


def child(args):
    import torch

    import na_kernels

    torch.set_num_threads(args.threads)
    x = (torch.randn(1 << args.n) * 0.6 + 0.4).requires_grad_(True)
    lam = torch.tensor(1.0, requires_grad=True)
    v = (torch.rand(8, 1 << args.neurons) * 0.8).requires_grad_(True)

    def step():
        y = na_kernels.noisy_quant(x, 3, lam, seed=1)
        y.backward(torch.ones_like(y))
        spikes, counts = na_kernels.integrate_fire(v, 1.0)
        spikes.backward(torch.ones_like(spikes))
        x.grad = lam.grad = v.grad = None

    for _ in range(3):
        step()
    times, faults = [], []
    for _ in range(args.repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    times.sort()
    faults.sort()
    print(
        json.dumps(
            {
                "median_ms": 1e3 * times[len(times) // 2],
                "faults": faults[len(faults) // 2],
                "cache": na_kernels.cpu.cache_info()["limit_bytes"] >> 20,
                "preload": os.environ.get("LD_PRELOAD", ""),
            }
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--n", type=int, default=23, help="log2 elements of the noisy_quant tensor")
    parser.add_argument("--neurons", type=int, default=18, help="log2 neurons per step of the IF input")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    print(
        f"noisy_quant fwd+bwd 2^{args.n} fp32 + integrate_fire fwd+bwd T=8 x 2^{args.neurons} fp32, "
        f"{args.threads} threads, median of {args.repeats}; load average before: {os.getloadavg()}"
    )
    print("| configuration | median per iteration | minor page faults per iteration |")
    print("|---|---|---|")
    for name, env, missing in configurations():
        if missing:
            print(f"| {name} | – ({missing}) | – |")
            continue
        command = [
            sys.executable,
            __file__,
            "--child",
            "--repeats",
            str(args.repeats),
            "--n",
            str(args.n),
            "--neurons",
            str(args.neurons),
            "--threads",
            str(args.threads),
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"| {name} | failed: {result.stderr.strip().splitlines()[-1]} | – |")
            continue
        record = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {name} | {record['median_ms']:.1f} ms | {record['faults']} |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
