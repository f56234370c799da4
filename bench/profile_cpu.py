"""Where the CPU time of the two ops goes: the numbers behind the targets in bench/README.md.

    python bench/profile_cpu.py [--threads 1 2] [--n 23] [--neurons 19]

For each thread count it prints, as minimum-of-repeats times (min, not median: this looks
for the cost of the work, not for the machine's noise):
- copy bandwidth of the same bytes (``copy_`` into a preallocated tensor);
- noisy_quant forward with noise=None / "uniform" / "gaussian": the difference is the cost
  of the Philox stream, regenerated once in forward and once more in backward;
- noisy_quant forward into a fresh output vs the same arithmetic's bytes as a copy: a
  2^23-element fp32 output from torch is 32 MiB, which glibc maps fresh (and unmaps on free)
  on every call, so its page faults would be part of every call's time (the C++ kernels take
  their outputs from their own block cache instead: na_kernels/cpu/output_cache.py);
- integrate_fire forward at T = 8 against a copy of the same bytes, and the time split of a
  forward into an existing output (spikes, counts) by comparing it with a single read pass.
It never sets TRITON_INTERPRET and runs the C++ kernels.
"""

import argparse
import time

import torch

import na_kernels


def best(fn, repeats=9):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--n", type=int, default=23, help="log2 elements of the noisy_quant tensor")
    parser.add_argument("--neurons", type=int, default=19, help="log2 neurons per step of the IF input")
    args = parser.parse_args(argv)
    n, neurons, T = 1 << args.n, 1 << args.neurons, 8
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"--- {threads} thread(s)")
        for dtype in (torch.float32, torch.bfloat16):
            e = torch.tensor([], dtype=dtype).element_size()
            x = (torch.randn(n) * 0.6 + 0.4).to(dtype)
            out = torch.empty_like(x)
            t_copy = best(lambda: out.copy_(x))
            print(
                f"noisy_quant 2^{args.n} {dtype}: copy of x into a preallocated y {t_copy * 1e3:.1f} ms "
                f"({2 * n * e / t_copy / 1e9:.1f} GB/s)"
            )
            for noise in (None, "uniform", "gaussian"):
                t = best(lambda: na_kernels.noisy_quant(x, 3, 1.0, noise=noise), 5 if noise == "gaussian" else 9)
                print(
                    f"  forward noise={str(noise):8s} {t * 1e3:7.1f} ms = {n / t / 1e6:6.0f} Melem/s "
                    f"= {2 * n * e / t / 1e9:5.2f} GB/s ({100 * t_copy / t:.0f} % of the copy)"
                )
            t_fresh = best(lambda: torch.empty_like(x).fill_(0))
            t_pre = best(lambda: out.fill_(0))
            print(
                f"  writing a fresh {n * e >> 20} MiB output {t_fresh * 1e3:.1f} ms vs a preallocated one "
                f"{t_pre * 1e3:.1f} ms (page faults of a fresh allocation: {1e3 * (t_fresh - t_pre):.1f} ms)"
            )
            xs = (torch.rand(T, neurons) * 0.8).to(dtype)
            spikes = torch.empty_like(xs)
            t_copy = best(lambda: spikes.copy_(xs))
            t_if = best(lambda: na_kernels.integrate_fire(xs, 1.0))
            moved = 2 * T * neurons * e + 4 * neurons
            t_read = best(lambda: xs.sum())
            print(
                f"integrate_fire fwd T={T} N=2^{args.neurons} {dtype}: {t_if * 1e3:.2f} ms = "
                f"{moved / t_if / 1e9:.2f} GB/s; "
                f"copy of the same input {t_copy * 1e3:.2f} ms ({100 * t_copy / t_if:.0f} % of the copy's speed); "
                f"one read pass (x.sum) {t_read * 1e3:.2f} ms"
            )


if __name__ == "__main__":
    main()
