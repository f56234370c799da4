"""Where the time of an SNN pass goes: the converted network of the model cases, by op and by
oneDNN primitive (proportions, which a loaded machine disturbs less than absolute times).

    python bench/profile_snn.py                                  # ResNet-20, T = 8, batch 16, 1 thread
    python bench/profile_snn.py --dtype fp32 bf16 --layout contiguous channels_last
    python bench/profile_snn.py --impl spikingjelly --batch 64 --threads 2
    python bench/profile_snn.py --compare --rounds 7  # the layouts side by side: process CPU time
    python bench/profile_snn.py --compare --threads 2 --batch 64 --dtype fp32 \
        --impls na_kernels channels_last spikingjelly spikingjelly_compiled   # any model_cases.SNN_IMPLS

For each (dtype, layout): torch.profiler over --repeats passes (after a warm-up), self CPU time
grouped into convolution (oneDNN, its internal reorders included), the IF layers (each one's
forward in a profiler range: the C++ kernels are called directly, not as dispatcher ops), residual adds,
explicit copies (copy_/clone/contiguous/_to_copy), pooling + linear, statistics, and the rest,
plus the top ops; then the same passes in a child process with ONEDNN_VERBOSE=1, whose timed
primitives split oneDNN's own time into convolution and reorder (layout conversions of inputs,
weights or outputs between torch's order and the blocked order oneDNN computes in).
``--compare`` instead times variants against each other: the layouts of ``--impl``, or with
``--impls`` any of ``model_cases.SNN_IMPLS`` (SpikingJelly and compiled ones included); process
CPU time of all threads (less disturbed by other processes than wall time), rounds interleaved,
medians with min and max, the first call (compiling) timed apart, the median minor page faults
of a pass (``getrusage``: fresh memory the kernels' first writes fault in), and the median over
rounds of each variant's speed relative to the first variant's in the same round.
Networks and variants: bench/model_cases.py (``--impl``: na_kernels, na_kernels_stats, reference,
spikingjelly; ``--layout channels_last`` converts weights and input as the channels_last case does).
"""

import argparse
import collections
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

IF_LABEL = "IFLayer.forward"
GROUPS = (  # (group, substrings of op names), first match wins; self CPU time
    ("IF layers (kernel + Python)", ("integrate_fire", IF_LABEL)),
    ("convolution (oneDNN)", ("convolution", "conv2d", "mkldnn")),
    ("residual add", ("aten::add",)),
    ("copies", ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::to", "aten::expand")),
    ("statistics", ("aten::sum", "aten::ne", "aten::count_nonzero", "SynapseMeter", "aten::ones")),
    ("pooling + linear", ("pool", "aten::addmm", "aten::linear", "aten::mm")),
)


def label_if_layers(snn):
    """Each IF layer's forward inside a profiler range: on the CPU the public ops call the C++
    kernels directly (no dispatcher op), so without it their time is no op's self time."""
    import torch

    for layer in snn.if_layers.values():

        def forward(x, _forward=layer.forward, **options):
            with torch.profiler.record_function(IF_LABEL):
                return _forward(x, **options)

        layer.forward = forward


def profile(args, dtype, layout):
    import model_cases
    import torch

    impl = "channels_last" if layout == "channels_last" else args.impl
    if layout == "channels_last" and args.impl != "na_kernels":
        raise SystemExit("--layout channels_last profiles the na_kernels network only")
    infer, snn, _ = model_cases.snn_pass(args.arch, impl, args.T, args.batch, dtype)
    label_if_layers(snn)
    infer()
    events, total, groups = model_cases.cpu_profile(infer, args.repeats, GROUPS)
    lines = [
        (
            f"## {args.arch} SNN T={args.T} batch {args.batch} {dtype} {layout} ({args.impl}), "
            f"{torch.get_num_threads()} thread(s): {total / 1e3 / args.repeats:.1f} ms per pass (profiled)"
        )
    ]
    for group, micros in groups.most_common():
        lines.append(f"  {group:<28} {100 * micros / total:5.1f} %")
    lines.append("  top ops (self CPU):")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        lines.append(f"    {e.key:<40} {100 * e.self_cpu_time_total / total:5.1f} %  calls {e.count // args.repeats}")
    return "\n".join(lines)


def onednn_split(args, dtype, layout):
    """{primitive kind: ms} from ONEDNN_VERBOSE=1 in a child process (profile mode: only timing)."""
    env = dict(os.environ, ONEDNN_VERBOSE="1", NA_PROFILE_CHILD="1")
    command = [
        sys.executable,
        __file__,
        "--dtype",
        dtype,
        "--layout",
        layout,
        "--arch",
        args.arch,
        "--T",
        str(args.T),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--impl",
        args.impl,
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    kinds, started = collections.Counter(), False
    for line in out.splitlines():
        if line.startswith("NA_PROFILE_WALL,"):
            kinds["(wall time of the passes)"] = float(line.split(",")[1])
            continue
        if line.startswith("NA_PROFILE_TIMED"):
            started = True
            continue
        fields = line.split(",")
        if started and line.startswith("onednn_verbose") and "exec" in fields[:4]:
            kind = fields[fields.index("exec") + 2]
            try:
                kinds[kind] += float(fields[-1])
            except ValueError:
                pass
    return kinds


def child(args):
    """ONEDNN_VERBOSE run: a warm-up, a marker line, the timed passes."""
    import model_cases

    impl = "channels_last" if args.layout[0] == "channels_last" else args.impl
    infer, _, _ = model_cases.snn_pass(args.arch, impl, args.T, args.batch, args.dtype[0])
    infer()
    sys.stdout.flush()
    print("NA_PROFILE_TIMED", flush=True)
    start = time.perf_counter()
    for _ in range(args.repeats):
        infer()
    sys.stdout.flush()
    print(f"NA_PROFILE_WALL,{1e3 * (time.perf_counter() - start)}", flush=True)


def compare(args):
    """Interleaved rounds of each variant's pass, process CPU time; medians, minima and maxima.
    A variant of ``--impls`` is ``impl`` (in every ``--dtype``, each dtype a group of its own) or
    ``impl:dtype`` (in one group with every other such variant)."""
    import statistics

    import model_cases

    if args.impls:
        parsed = [(entry, *entry.partition(":")[::2]) for entry in args.impls]
        known = model_cases.SNN_IMPLS + model_cases.SNN_EXTRA_IMPLS
        unknown = [entry for entry, impl, dtype in parsed if impl not in known or dtype not in ("", "fp32", "bf16")]
        if unknown:
            raise SystemExit(
                f"--impls: unknown {unknown}; accepted: {', '.join(known)}, each optionally :fp32 or :bf16"
            )
        mixed = [(entry, impl, dtype) for entry, impl, dtype in parsed if dtype]
        groups = [[(impl, impl, dtype) for _, impl, d in parsed if not d] for dtype in args.dtype]
        groups = [g for g in groups if g] + ([mixed] if mixed else [])
    else:
        layouts = [(layout, "channels_last" if layout == "channels_last" else args.impl) for layout in args.layout]
        groups = [[(name, impl, dtype) for name, impl in layouts] for dtype in args.dtype]
    for group in groups:
        passes = {}
        for name, impl, dtype in group:
            start = time.perf_counter()
            passes[name] = model_cases.snn_pass(args.arch, impl, args.T, args.batch, dtype)[0]
            result = passes[name]()
            print(f"  {name}: first call {time.perf_counter() - start:.1f} s wall", flush=True)
            if hasattr(result, "exit_histogram"):  # an early exit: how many samples stopped at each step
                print(f"    exits at steps 1..{args.T}: {result.exit_histogram} ({result.rule.describe()})", flush=True)
        seconds = {name: [] for name in passes}
        faults = {name: [] for name in passes}
        for _ in range(args.rounds):
            for name, run in passes.items():
                start, faults_before = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                run()
                seconds[name].append(time.process_time() - start)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        medians = {name: statistics.median(v) for name, v in seconds.items()}
        first = next(iter(seconds))
        # each round's ratio to the first variant's pass of that round: less moved by load that
        # comes and goes between rounds than the ratio of the medians
        paired = {name: statistics.median(a / b for a, b in zip(seconds[first], v)) for name, v in seconds.items()}
        dtypes = "/".join(sorted({dtype for _, _, dtype in group}))
        print(
            f"{args.arch} SNN T={args.T} batch {args.batch} {dtypes}, {torch_threads()} thread(s), "
            f"{args.rounds} rounds, process CPU time per pass, median [min, max]; minor page faults per pass, median:",
            flush=True,
        )
        for name, m in medians.items():
            ratios = ", ".join(f"{medians[other] / m:.2f}x {other}" for other in medians if other != name)
            print(
                f"  {name:<28} {1e3 * m:8.1f} ms [{1e3 * min(seconds[name]):.1f}, {1e3 * max(seconds[name]):.1f}]  "
                f"({ratios}); {statistics.median(faults[name]):.0f} faults"
                + (f"; per round {paired[name]:.2f}x {first}" if name != first else ""),
                flush=True,
            )


def torch_threads():
    import torch

    return torch.get_num_threads()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20", choices=("resnet20", "resnet18"))
    parser.add_argument(
        "--impl", default="na_kernels", choices=("na_kernels", "na_kernels_stats", "reference", "spikingjelly")
    )
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument(
        "--layout", nargs="+", default=["contiguous", "channels_last"], choices=("contiguous", "channels_last")
    )
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--no-onednn", action="store_true", help="skip the ONEDNN_VERBOSE split")
    parser.add_argument("--compare", action="store_true", help="time the layouts against each other instead")
    parser.add_argument("--impls", nargs="+", help="--compare these model_cases.SNN_IMPLS instead of the layouts")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of --compare")
    args = parser.parse_args(argv)
    os.environ.setdefault("NA_BENCH_DEVICE", "cpu")
    import torch

    torch.set_num_threads(args.threads)
    if os.environ.get("NA_PROFILE_CHILD"):
        return child(args)
    print(f"load average at the start: {os.getloadavg()}")
    if args.compare:
        compare(args)
        print(f"load average at the end: {os.getloadavg()}")
        return 0
    for dtype in args.dtype:
        for layout in args.layout:
            print(profile(args, dtype, layout))
            if not args.no_onednn:
                kinds = onednn_split(args, dtype, layout)
                wall = kinds.pop("(wall time of the passes)", 0.0)
                total = sum(kinds.values())
                if total:
                    split = ", ".join(f"{kind} {100 * ms / total:.1f} %" for kind, ms in kinds.most_common())
                    print(
                        f"  oneDNN primitives: {total / args.repeats:.1f} ms per pass of {wall / args.repeats:.1f} ms "
                        f"wall ({100 * total / wall:.0f} %): {split}"
                    )
            print(flush=True)
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
