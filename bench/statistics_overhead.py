"""Statistics overhead: SNN inference with spike statistics on against off, on the architectures
the package converts (random weights, λ from one batch: the cost does not depend on accuracy):

- ``pooled``: conv -> IF -> avg-pool -> conv -> IF -> avg-pool -> linear, 28x28, batch 256
  (pooling between an IF layer and the next conv);
- ``digits``: the demo's CNN (``digits_cnn``), 8x8, batch 256;
- ``vgg``: a small VGG (avg pooling between stages, a 3-layer classifier), 32x32, batch 64;
- ``resnet``: ``resnet20`` (CIFAR ResNet, residual sums), 32x32, batch 32.

All at T = 8 (``--T``), ``--threads`` threads (default 2). Each repetition runs statistics on and
off back to back (interleaved, the order alternating), and the overhead is the median over
repetitions of ``on / off - 1``, with the range of the per-repetition ratios (wall clock; a
shared, loaded machine widens the range: say so when reporting).

    python bench/statistics_overhead.py [--reps 7] [--threads 2] [--T 8] [--nets pooled,digits,vgg,resnet]
                                        [--clock wall|cpu] [--layout contiguous|channels_last|event]

``--layout``: the network and input as they are (contiguous), in channels-last memory order, or
channels-last with ``snn.event_driven(True)``.

Another revision: ``PYTHONPATH=<its checkout> python bench/statistics_overhead.py`` (the script
adds its own checkout only when na_kernels is not importable).
"""

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

try:
    import na_kernels  # noqa: F401  (installed, or on PYTHONPATH: e.g. another revision to compare)
except ImportError:  # run from a checkout
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def pooled_net():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


def networks():
    from na_kernels.app.models import VGG, digits_cnn, resnet20

    return {
        "pooled": (pooled_net, (256, 1, 28, 28)),
        "digits": (digits_cnn, (256, 1, 8, 8)),
        "vgg": (
            lambda: VGG([32, 32, "A", 64, 64, "A", 128, 128, "A", 128, "A", 128, "A"], hidden=256),
            (64, 3, 32, 32),
        ),
        "resnet": (resnet20, (32, 3, 32, 32)),
    }


def converted(name, T, layout="contiguous"):
    """The SNN of network ``name`` (p = 3, λ set on one batch) and an input batch, in ``layout``."""
    from na_kernels.nn import replace_activations, to_snn

    build, shape = networks()[name]
    torch.manual_seed(0)
    model, _ = replace_activations(build(), p=3, noise=None, lam="auto")
    x = torch.randn(shape)
    model.train()
    with torch.no_grad():
        model(x)  # λ = "auto" from this batch
    snn = to_snn(model.eval(), T)
    if layout != "contiguous":
        snn = snn.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "event":
        snn.event_driven(True)
    return snn, x


def overhead(snn, x, reps, clock=time.perf_counter):
    """(median, low, high) of on/off - 1 over ``reps`` interleaved pairs, and the median times (s)."""
    ratios, times = [], {True: [], False: []}
    with torch.no_grad():
        for flag in (True, False):  # warm up both paths
            snn.record_statistics(flag)
            snn(x)
        for rep in range(reps):
            pair = {}
            for flag in (True, False) if rep % 2 == 0 else (False, True):
                snn.record_statistics(flag)
                start = clock()
                snn(x)
                pair[flag] = clock() - start
                times[flag].append(pair[flag])
            ratios.append(pair[True] / pair[False] - 1)
    snn.record_statistics(True)
    return (
        statistics.median(ratios),
        min(ratios),
        max(ratios),
        statistics.median(times[True]),
        statistics.median(times[False]),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--nets", default="pooled,digits,vgg,resnet")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall clock, or this process's CPU time (less sensitive to other load; with --threads 1)",
    )
    parser.add_argument("--layout", choices=("contiguous", "channels_last", "event"), default="contiguous")
    args = parser.parse_args()
    import na_kernels

    torch.set_num_threads(args.threads)
    print(
        f"statistics overhead, T={args.T}, {args.threads} thread(s), {args.reps} interleaved pairs, "
        f"{args.clock} clock, {args.layout}, torch {torch.__version__}, "
        f"na_kernels from {os.path.dirname(na_kernels.__file__)}"
    )
    for name in args.nets.split(","):
        snn, x = converted(name, args.T, args.layout)
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        median, low, high, on, off = overhead(snn, x, args.reps, clock)
        print(
            f"{name:8s} batch {x.shape[0]:4d}: on {1e3 * on:8.1f} ms, off {1e3 * off:8.1f} ms, overhead "
            f"{100 * median:+6.1f} % (range {100 * low:+.1f} .. {100 * high:+.1f} %)",
            flush=True,
        )


if __name__ == "__main__":
    main()
