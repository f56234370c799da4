"""Per-call time of the public ops on tiny tensors (Python/dispatcher overhead) and on one
benchmark-size tensor each, inference (no_grad) and forward + backward.

    python bench/call_overhead.py            # tiny and large
    python bench/call_overhead.py --tiny     # tiny only (a few seconds)

Prints the median over a few repeats of the mean time per call, with torch.relu (and its
forward + backward) on the same tiny tensor as the floor of what an op call costs.
"""

import argparse
import statistics
import time

import torch

import na_kernels


def _time(fn, budget_s):
    fn()
    fn()
    start = time.perf_counter()
    fn()
    single = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(budget_s / 5 / single))
    means = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        means.append((time.perf_counter() - start) / calls)
    return statistics.median(means)


def _cases(tiny_only):
    nq_tiny = torch.rand(16)
    if_tiny = torch.rand(8, 16)
    cases = [
        ("tiny", "torch.relu", nq_tiny, lambda x: torch.relu(x)),
        ("tiny", "noisy_quant", nq_tiny, lambda x: na_kernels.noisy_quant(x, 3, 1.0)),
        (
            "tiny",
            "noisy_quant lam=Parameter",
            nq_tiny,
            lambda x, lam=torch.nn.Parameter(torch.tensor(1.0)): na_kernels.noisy_quant(x, 3, lam),
        ),
        ("tiny", "integrate_fire", if_tiny, lambda x: na_kernels.integrate_fire(x, 1.0)[0]),
    ]
    if not tiny_only:
        cases += [
            (
                "16x64x32x32",
                "noisy_quant",
                torch.randn(16, 64, 32, 32) * 0.6 + 0.4,
                lambda x: na_kernels.noisy_quant(x, 3, 1.0),
            ),
            (
                "T=8 x 2^19",
                "integrate_fire",
                torch.randn(8, 1 << 19) * 0.6 + 0.4,
                lambda x: na_kernels.integrate_fire(x, 1.0)[0],
            ),
        ]
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny tensors only")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {na_kernels.get_backend()}")
    print(f"{'size':<12} {'op':<28} {'no_grad us':>11} {'fwd+bwd us':>11}")
    for size, name, x, fn in _cases(args.tiny):
        budget = 0.5 if size == "tiny" else 2.0

        def inference():
            with torch.no_grad():
                fn(x)

        xg = x.clone().requires_grad_()
        grad_out = torch.ones_like(fn(x))

        def training():
            fn(xg).backward(grad_out)

        print(f"{size:<12} {name:<28} {_time(inference, budget) * 1e6:11.1f} {_time(training, budget) * 1e6:11.1f}")


if __name__ == "__main__":
    main()
