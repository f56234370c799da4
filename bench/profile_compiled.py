"""Where a compiled training step's time goes: torch.profiler self CPU time per op of each
activation's compiled network (bench/model_cases.py), the Inductor-generated code included
("Call CompiledFxGraph" rows).

    python bench/profile_compiled.py --activation relu noisy_quant_fused --batch 64
    python bench/profile_compiled.py --no-layout-optimization   # Inductor keeps NCHW

Run it with TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 when comparing code versions: the FX graph
cache may serve a graph compiled by another version of the custom op.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20", choices=("resnet20", "resnet18"))
    parser.add_argument("--activation", nargs="+", default=["relu", "noisy_quant_fused"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--no-layout-optimization", action="store_true", help="Inductor's layout_optimization off")
    args = parser.parse_args(argv)

    import model_cases
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    if args.no_layout_optimization:
        import torch._inductor.config as inductor_config

        inductor_config.layout_optimization = False
    steps = {a: model_cases.train_step(args.arch, a, args.batch, compiled=True) for a in args.activation}
    for a, step in steps.items():
        start = time.time()
        step()
        step()
        print(f"{a}: compile + 2 steps {time.time() - start:.1f} s", flush=True)
    for a, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        per_step = total / args.repeats / 1e3
        print(f"## {args.arch} batch {args.batch} {a} compiled: {per_step:.1f} ms per step (profiled)")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            print(f"  {e.self_cpu_time_total / args.repeats / 1e3:8.2f} ms  {e.key[:100]}")


if __name__ == "__main__":
    main()
