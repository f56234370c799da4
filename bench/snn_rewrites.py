"""What each rewrite of the SNN's forward (``na_kernels/snn/fused.py``) gains: the same converted
network run three ways in one process, rounds interleaved, process CPU time per pass (medians,
[min, max]), outputs compared bitwise with the plain graph's (equal in fp32):

- ``plain``: ``snn.network``'s own graph (every conv, add and IF layer as written);
- ``fused add``: each residual ``conv(x) + shortcut`` as one oneDNN convolution with an add post-op;
- ``+ IF overwrite``: also each IF layer whose input nothing else reads writing its spikes over it
  (what ``snn(x)`` runs).

    python bench/snn_rewrites.py --arch resnet20 --impls na_kernels channels_last fast --threads 2
"""

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20", choices=("resnet20", "resnet18"))
    parser.add_argument("--impls", nargs="+", default=["na_kernels", "channels_last", "fast"])
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("NA_BENCH_DEVICE", "cpu")
    import model_cases
    import torch

    from na_kernels.snn import fused

    torch.set_num_threads(args.threads)
    print(f"load average at the start: {os.getloadavg()}")
    runs = {}
    for impl in args.impls:
        _, snn, x = model_cases.snn_pass(args.arch, impl, args.T, args.batch, args.dtype)
        variants = {}
        for name, overwrite in (("plain", None), ("fused add", False), ("+ IF overwrite", True)):
            network = copy.deepcopy(snn)
            graph = network.network
            forward = (
                (lambda net, *inputs: net(*inputs))
                if overwrite is None
                else fused.fuse_residual_adds(graph, overwrite=overwrite)[0]
            )
            fused._FORWARDS[graph] = (graph.code, forward)
            variants[name] = network
        with torch.no_grad():
            outputs = {name: network(x) for name, network in variants.items()}
        same = all(torch.equal(out, outputs["plain"]) for out in outputs.values())
        note = "" if args.dtype == "fp32" and impl != "fast" else " (bf16: the fused add rounds once, not twice)"
        print(f"  {impl}: outputs bitwise the plain graph's: {same}{note}", flush=True)
        for name, network in variants.items():
            runs[f"{impl}: {name}"] = lambda network=network, x=x: network(x)
    seconds = {name: [] for name in runs}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.process_time()
                run()
                seconds[name].append(time.process_time() - start)
    print(
        f"{args.arch} SNN T={args.T} batch {args.batch} {args.dtype}, {args.threads} thread(s), "
        f"{args.rounds} rounds, process CPU time per pass, median [min, max]:"
    )
    for name, values in seconds.items():
        print(
            f"  {name:<36} {1e3 * statistics.median(values):8.1f} ms [{1e3 * min(values):.1f}, {1e3 * max(values):.1f}]"
        )
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
