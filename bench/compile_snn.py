"""torch.compile of a converted network: compile time (the first call) and the speedup of later
calls over eager, statistics on and off, on the networks of ``bench/statistics_overhead.py``
(T = 8). Medians of interleaved eager / compiled calls, with their range.

    python bench/compile_snn.py [--nets digits,resnet] [--backend inductor] [--threads 2] [--reps 7]
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch._dynamo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import statistics_overhead  # noqa: E402  (also puts the checkout on sys.path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default="digits,resnet")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--T", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch.compile(snn, backend={args.backend!r}), T={args.T}, {args.threads} thread(s), torch {torch.__version__}"
    )
    for name in args.nets.split(","):
        for record in (True, False):
            torch._dynamo.reset()
            snn, x = statistics_overhead.converted(name, args.T)
            snn.record_statistics(record)
            compiled = torch.compile(snn, backend=args.backend)
            with torch.no_grad():
                start = time.perf_counter()
                compiled(x)
                compile_s = time.perf_counter() - start
                snn(x)
                ratios, eager, fast = [], [], []
                for rep in range(args.reps):
                    pair = {}
                    for which in ("eager", "compiled") if rep % 2 == 0 else ("compiled", "eager"):
                        start = time.perf_counter()
                        (snn if which == "eager" else compiled)(x)
                        pair[which] = time.perf_counter() - start
                    eager.append(pair["eager"])
                    fast.append(pair["compiled"])
                    ratios.append(pair["eager"] / pair["compiled"])
            print(
                f"{name:8s} statistics {'on ' if record else 'off'}: first call (compile) {compile_s:6.1f} s; "
                f"eager {1e3 * statistics.median(eager):7.1f} ms, compiled {1e3 * statistics.median(fast):7.1f} ms, "
                f"speedup x{statistics.median(ratios):.2f} (range x{min(ratios):.2f} .. x{max(ratios):.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
