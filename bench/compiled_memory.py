"""Where a compiled training step's tensor memory peaks: torch.profiler's allocation events of one
step (after two warm-up steps), walked in time order, the peak of the bytes live above the step's
start, and the live bytes at that peak grouped by the op stack that allocated them.

    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python bench/compiled_memory.py --activation relu noisy_quant_fused

Torch's allocator only: memory the C++ kernels allocate themselves is not seen (their outputs come
from torch unless the CPU output cache is on).
"""

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _allocations(prof):
    """(time ns, bytes (negative: freed), address, allocating op stack) of every allocation event."""
    from torch._C._profiler import _EventType

    events = []

    def walk(node, stack):
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            events.append((node.start_time_ns, fields.alloc_size, fields.ptr, tuple(stack)))
        for child in node.children:
            walk(child, stack + [node.name])

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, [])
    return sorted(events, key=lambda e: e[0])


def peak(prof, depth):
    """(peak MiB, {stack: MiB live at the peak})."""
    current = highest = 0
    live, at_peak = {}, {}
    for _, size, address, stack in _allocations(prof):
        current += size
        if size > 0:
            live[address] = (size, stack[-depth:])
        else:
            live.pop(address, None)
        if current > highest:
            highest, at_peak = current, dict(live)
    groups = collections.Counter()
    for size, stack in at_peak.values():
        groups[" / ".join(stack)] += size / 2**20
    return highest / 2**20, groups


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20", choices=("resnet20", "resnet18"))
    parser.add_argument("--activation", nargs="+", default=["relu", "noisy_quant_fused"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3, help="op stack frames to group by")
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)

    import model_cases
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    for activation in args.activation:
        step = model_cases.train_step(args.arch, activation, args.batch, compiled=True)
        step()
        step()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        highest, groups = peak(prof, args.depth)
        print(f"## {args.arch} batch {args.batch} {activation} compiled: peak {highest:.1f} MiB above the start")
        for stack, mib in groups.most_common(args.top):
            print(f"  {mib:7.1f} MiB  {stack[-160:]}")


if __name__ == "__main__":
    main()
