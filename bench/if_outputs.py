"""The 19 IF layers of a ResNet-20 SNN pass alone (T = 8, batch 64, float32, channels-last), as
the pass runs them (``IFLayer(x, overwrite=True)``, statistics off, a ``Workspace`` active): with
the spike counts and final potentials left unwritten (``if_layer.SKIP_UNREAD_OUTPUTS``, the
default) and written, interleaved in one process. Per round, the process CPU time of the 19
calls (each input refilled from its source outside the timed call); medians [min, max]. Bytes
written per pass: spikes T x N x 4, counts N x 4, v_final N x 4.

    python bench/if_outputs.py --threads 2 --rounds 21
"""

import argparse
import os
import statistics
import time

import torch

from na_kernels.cpu.workspace import Workspace
from na_kernels.nn import IFLayer, if_layer

T, BATCH = 8, 64
# (channels, side, layers): the stem and stage 1, stage 2, stage 3
STAGES = ((16, 32, 7), (32, 16, 6), (64, 8, 6))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    stages = []
    for channels, side, layers in STAGES:
        shape = (T * BATCH, channels, side, side)
        source = (torch.randn(shape, generator=gen) * 0.6 + 0.2).contiguous(memory_format=torch.channels_last)
        layer = IFLayer("if", torch.tensor(1.0), p=3)
        layer.time_steps, layer.record = T, False
        stages.append((source, torch.empty_like(source), layer, layers))
    variants = {"skip unread": True, "write all": False}
    times = {name: [] for name in variants}
    workspace = Workspace(1 << 30)
    print(f"load average at the start: {os.getloadavg()}")
    with torch.no_grad(), workspace.active():
        for round_ in range(args.rounds + 1):  # the first round warms the workspace up
            for name, skip in variants.items():
                if_layer.SKIP_UNREAD_OUTPUTS = skip
                total = 0.0
                for source, work, layer, layers in stages:
                    for _ in range(layers):
                        work.copy_(source)
                        start = time.process_time()
                        spikes = layer(work, overwrite=True)
                        total += time.process_time() - start
                        del spikes
                if round_:
                    times[name].append(total * 1e3)
    if_layer.SKIP_UNREAD_OUTPUTS = True
    neurons = sum(BATCH * c * s * s * n for c, s, n in STAGES)
    print(
        f"19 IF layers of ResNet-20, T={T} batch {BATCH} fp32 channels-last, {args.threads} thread(s), "
        f"{args.rounds} rounds, process CPU time per pass, median [min, max]:"
    )
    for name, skip in variants.items():
        written = neurons * 4 * (T + (0 if skip else 2)) / 2**20
        ms = times[name]
        print(
            f"  {name:12s} {statistics.median(ms):7.1f} ms [{min(ms):.1f}, {max(ms):.1f}]  ({written:.0f} MiB written)"
        )
    ratio = [w / s for s, w in zip(times["skip unread"], times["write all"])]
    spread = f"[{min(ratio):.3f}, {max(ratio):.3f}]"
    print(f"  write all / skip unread per round: median {statistics.median(ratio):.3f} {spread}")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
