"""Per-call time of the public ops on tiny tensors (Python/dispatcher overhead) and on one
benchmark-size tensor each, inference (no_grad) and forward + backward.

    python bench/call_overhead.py            # tiny and large
    python bench/call_overhead.py --tiny     # tiny only (a few seconds)
    python bench/call_overhead.py --tiny --threads 1

Prints the median over a few repeats of the mean time per call, with torch.relu (and its
forward + backward) on the same tiny tensor as the floor of what an op call costs. The fused
BatchNorm + noisy_quant op is timed three ways against F.batch_norm + relu on one [4, 16, 2, 2]
input: the public function (eager), and its registered custom ops called as the code torch.compile
generates calls them (``torch.ops.na_kernels.batchnorm_noisy_quant`` and ``..._backward`` with
the flattened record; "fwd+bwd" there is the forward op then the backward op).
"""

import argparse
import statistics
import time

import torch

import na_kernels
from na_kernels._spec import BatchNormNoisyQuantArgs, Noise
from na_kernels.ops.batchnorm_noisy_quant import OP as BNQ_OP
from na_kernels.ops.batchnorm_noisy_quant import batchnorm_noisy_quant


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
    cases += _fused_cases()
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


def _fused_cases():
    """BatchNorm + ReLU, the fused op's public function, and its custom ops as compiled code calls them."""
    channels = 16
    x = torch.randn(4, channels, 2, 2)
    weight, bias = torch.nn.Parameter(torch.ones(channels)), torch.nn.Parameter(torch.zeros(channels))
    running_mean, running_var = torch.zeros(channels), torch.ones(channels)
    lam = torch.nn.Parameter(torch.tensor(8.0))

    def bn_relu(x):
        return torch.relu(torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, True))

    def fused(x):
        return batchnorm_noisy_quant(x, weight, bias, running_mean, running_var, 3, lam, seed=1)

    args = BatchNormNoisyQuantArgs(3, Noise.UNIFORM, 1.0, 0.5, True, 0.1, 1e-5)
    flat = BNQ_OP.record.flatten(args)
    plain = [t.detach() for t in (weight, bias, lam)]
    seed = torch.tensor([1])

    def op(x):
        return BNQ_OP.forward_op(x, None, plain[0], plain[1], running_mean, running_var, plain[2], seed, *flat)

    def op_forward_backward():
        with torch.no_grad():
            y, mean, invstd, mask, _, _ = op(x)
            BNQ_OP.backward_op(y, x, None, y, mask, mean, invstd, *plain, *flat, False)

    return [
        ("tiny", "batch_norm + relu", x, bn_relu),
        ("tiny", "batchnorm_noisy_quant", x, fused),
        ("tiny", "batchnorm_noisy_quant op", x, op, op_forward_backward),
    ]


def _forward_backward(fn, x):
    xg = x.clone().requires_grad_()
    grad_out = torch.ones_like(fn(x))

    def training():
        fn(xg).backward(grad_out)

    return training


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny tensors only")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {na_kernels.get_backend()}")
    print(f"{'size':<12} {'op':<28} {'no_grad us':>11} {'fwd+bwd us':>11}")
    for size, name, x, fn, *custom_training in _cases(args.tiny):
        budget = 0.5 if size == "tiny" else 2.0

        def inference():
            with torch.no_grad():
                fn(x)

        training = custom_training[0] if custom_training else _forward_backward(fn, x)
        print(f"{size:<12} {name:<28} {_time(inference, budget) * 1e6:11.1f} {_time(training, budget) * 1e6:11.1f}")


if __name__ == "__main__":
    main()
