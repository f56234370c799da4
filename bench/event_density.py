"""Where the event-driven convolution stops paying: process CPU time of ``event_conv2d`` (forced
onto the event kernel) against the dense channels-last convolution on the 3x3 convolutions of
the bench SNNs (N = T*B = 512 for ResNet-20; 64, an eighth of it, for ResNet-18), at input densities
from 1 % to 60 % of random binary spikes; each time a median of ``--rounds`` runs of ``--inner``
calls. Both write into a kept buffer, as in a SpikingNetwork's pass (``na_kernels.cpu.workspace``;
``--fresh``: new outputs each call). ``event_conv.DEFAULT_MAX_DENSITY`` and ``TILED_MAX_DENSITY`` are set
from where the event kernel loses.

    python bench/event_density.py --threads 2
"""

import argparse
import contextlib
import statistics
import time

import torch

from na_kernels.cpu.workspace import Workspace
from na_kernels.ops.event_conv import dense, event_conv2d

# (name, N, Cin, H, Cout, stride)
LAYERS = [
    ("resnet20 layer1", 512, 16, 32, 16, 1),
    ("resnet20 down2", 512, 16, 32, 32, 2),
    ("resnet20 layer2", 512, 32, 16, 32, 1),
    ("resnet20 down3", 512, 32, 16, 64, 2),
    ("resnet20 layer3", 512, 64, 8, 64, 1),
    ("resnet18 layer1", 64, 64, 32, 64, 1),
    ("resnet18 layer2", 64, 128, 16, 128, 1),
    ("resnet18 layer3", 64, 256, 8, 256, 1),
    ("resnet18 layer4", 64, 512, 4, 512, 1),
]
DENSITIES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6)


def cpu_ms(run, rounds, inner):
    run()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(inner):
            run()
        times.append((time.process_time() - start) / inner)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="new outputs each call (no kept buffer)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    workspace = Workspace(1 << 30)
    kept = contextlib.nullcontext if args.fresh else workspace.active
    outputs = "new outputs" if args.fresh else "outputs in kept buffers"
    print(f"{args.threads} thread(s), {outputs}, process CPU ms per call (median of {args.rounds} x {args.inner});")
    print("event / dense")
    for name, n, cin, h, cout, stride in LAYERS:
        weight = torch.randn((cout, cin, 3, 3), generator=g).contiguous(memory_format=torch.channels_last)
        cells = []
        for density in DENSITIES:
            x = (torch.rand((n, cin, h, h), generator=g) < density).float()
            x = x.contiguous(memory_format=torch.channels_last)

            def run_event():
                with kept():
                    event_conv2d(x, weight, stride=stride, padding=1, max_density=1.0)

            def run_dense():
                with kept():
                    dense.conv2d(x, weight, None, (stride, stride), (1, 1))

            with torch.no_grad():
                event = cpu_ms(run_event, args.rounds, args.inner)
                dense_ms = cpu_ms(run_dense, args.rounds, args.inner)
            cells.append(f"{density:.2f}: {event:.1f}/{dense_ms:.1f}")
        print(f"{name:<16} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
