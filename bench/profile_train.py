"""Where a training step's time goes, and the activations side by side (process CPU time).

    python bench/profile_train.py                      # ResNet-20, batch 16, 1 thread, fp32 and bf16
    python bench/profile_train.py --compare --rounds 7 # ReLU / NoisyQuant / fused, interleaved
    python bench/profile_train.py --op --dtype fp32 bf16 fp16 --batch 64 --rounds 15

Profile: torch.profiler over --repeats steps (after two warm-up steps) of each activation's
network (bench/model_cases.py, eager), self CPU time grouped into convolution, BatchNorm, the
activation (ReLU's ops, the QCFS formula's ops, or NoisyQuant's fwd + bwd, which on the CPU
run as direct kernel calls inside NoisyQuantEager / EagerFunctionBackward, or as the custom op
under autocast), optimizer, and the rest. --compare: process CPU time of one step of each,
rounds interleaved, medians (less disturbed by other processes than wall time at one thread);
--memory adds each step's peak memory (model_cases.peak_memory). --op: the fused op alone against
F.batch_norm + noisy_quant and against what it replaces in a ReLU network (BN + ReLU; with a
residual, BN + add + ReLU) at ResNet-20's three activation shapes, forward and backward apart
(process CPU time, rounds interleaved, medians).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GROUPS = (  # first match wins
    ("fused BatchNorm + NoisyQuant", ("BatchnormNoisyQuant", "batchnorm_noisy_quant")),
    ("activation: NoisyQuant", ("NoisyQuant", "EagerFunction", "noisy_quant", "softplus")),
    ("convolution", ("conv",)),
    ("BatchNorm", ("batch_norm",)),
    ("activation: ReLU", ("relu", "clamp_min", "threshold_backward")),
    ("activation: QCFS formula ops", ("floor", "clamp", "rand", "FloorSTE", "aten::div", "aten::mul", "aten::sub")),
    ("optimizer", ("_foreach", "SGD", "Optimizer")),
    ("residual add + grad accumulation", ("aten::add",)),
)


def profile(args, activation, dtype):
    import model_cases

    step = model_cases.train_step(args.arch, activation, args.batch, dtype=dtype)
    step()
    step()
    events, total, groups = model_cases.cpu_profile(step, args.repeats, GROUPS)
    lines = [
        (
            f"## {args.arch} train step batch {args.batch} {dtype} {activation}: "
            f"{total / 1e3 / args.repeats:.1f} ms per step (profiled)"
        )
    ]
    lines += [f"  {group:<34} {100 * us / total:5.1f} %" for group, us in groups.most_common()]
    lines.append(
        "  top ops (self CPU): "
        + ", ".join(
            f"{e.key} {100 * e.self_cpu_time_total / total:.1f} %"
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
        )
    )
    return "\n".join(lines)


def compare(args, dtype):
    import model_cases

    if args.eager_and_compiled:  # each activation both ways, rounds interleaved
        steps = {
            f"{a} {mode}": model_cases.train_step(args.arch, a, args.batch, dtype=dtype, compiled=mode == "compiled")
            for a in args.activation
            for mode in ("eager", "compiled")
        }
    else:
        steps = {
            a: model_cases.train_step(args.arch, a, args.batch, dtype=dtype, compiled=args.compiled)
            for a in args.activation
        }
    for step in steps.values():
        step()
        step()
    seconds = {a: [] for a in steps}
    for _ in range(args.rounds):
        for a, step in steps.items():
            start = time.process_time()
            step()
            seconds[a].append(time.process_time() - start)
    medians = {a: statistics.median(v) for a, v in seconds.items()}
    mode = "eager and compiled" if args.eager_and_compiled else "compiled" if args.compiled else "eager"
    baseline = next((a for a in medians if a.split()[0] == "relu"), None)
    line = f"{args.arch} train step batch {args.batch} {dtype} {mode}: " + ", ".join(
        f"{a} {1e3 * m:.1f} ms" + (f" ({m / medians[baseline]:.2f}x {baseline})" if baseline else "")
        for a, m in medians.items()
    )
    line += "\n  range (min-max ms): " + ", ".join(
        f"{a} {1e3 * min(v):.1f}-{1e3 * max(v):.1f}" for a, v in seconds.items()
    )
    if args.memory:
        peaks = {a: model_cases.peak_memory(step).get("peak_memory_bytes") for a, step in steps.items()}
        line += "\n  peak memory above idle (RSS): " + ", ".join(
            f"{a} {peak / 2**20:.0f} MiB" if peak is not None else f"{a} n/a" for a, peak in peaks.items()
        )
    return line


OP_SHAPES = ((16, 32), (32, 16), (64, 8))  # ResNet-20's (channels, side)
OP_KINDS = ("fused", "unfused", "bn+relu", "fused+res", "bn+add+relu")


def op_cases(batch, channels, side, torch_dtype):
    """The fused op, the ops it fuses, and what it replaces in a ReLU network (BN + ReLU, and
    BN + residual add + ReLU against the fused op with a residual), on one activation shape."""
    import torch
    from torch.nn import functional as F

    from na_kernels.ops.batchnorm_noisy_quant import batchnorm_noisy_quant
    from na_kernels.ops.noisy_quant import noisy_quant

    g = torch.Generator().manual_seed(channels)
    x = torch.randn(batch, channels, side, side, generator=g).to(torch_dtype).requires_grad_()
    residual = torch.randn(x.shape, generator=g).to(torch_dtype).requires_grad_()
    grad_y = torch.randn(x.shape, generator=g).to(torch_dtype)
    w, b, lam = (torch.ones(channels).requires_grad_() for _ in range(3))
    mean, var = torch.zeros(channels), torch.ones(channels)
    forwards = {
        "fused": lambda: batchnorm_noisy_quant(x, w, b, mean, var, 3, lam, seed=1),
        "unfused": lambda: noisy_quant(F.batch_norm(x, mean, var, w, b, training=True), 3, lam, seed=1),
        "bn+relu": lambda: F.relu(F.batch_norm(x, mean, var, w, b, training=True)),
        "fused+res": lambda: batchnorm_noisy_quant(x, w, b, mean, var, 3, lam, seed=1, residual=residual),
        "bn+add+relu": lambda: F.relu(F.batch_norm(x, mean, var, w, b, training=True) + residual),
    }
    return {kind: (forward, grad_y) for kind, forward in forwards.items()}


def compare_op(args, dtype):
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    cases = {}
    for channels, side in OP_SHAPES:
        for kind, case in op_cases(args.batch, channels, side, torch_dtype).items():
            cases[(channels, kind)] = case
    seconds = {k: ([], []) for k in cases}
    for round_ in range(args.rounds + 2):
        for k, (forward, grad_y) in cases.items():
            start = time.process_time()
            y = forward()
            middle = time.process_time()
            y.backward(grad_y)
            if round_ >= 2:
                seconds[k][0].append(middle - start)
                seconds[k][1].append(time.process_time() - middle)
    lines = [f"batchnorm_noisy_quant alone, batch {args.batch} {dtype} (fwd / bwd ms, medians):"]
    for channels, side in OP_SHAPES:
        parts = []
        for kind in OP_KINDS:
            fwd, bwd = (1e3 * statistics.median(v) for v in seconds[(channels, kind)])
            parts.append(f"{kind} {fwd:.2f} / {bwd:.2f} (sum {fwd + bwd:.2f})")
        lines.append(f"  [{args.batch}, {channels}, {side}, {side}]: " + ", ".join(parts))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20", choices=("resnet20", "resnet18"))
    parser.add_argument(
        "--activation",
        nargs="+",
        default=["relu", "noisy_quant", "noisy_quant_fused"],
        choices=("relu", "qcfs", "noisy_quant", "noisy_quant_fused"),
    )
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--compare", action="store_true", help="time the three activations instead")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="with --compare: each step's peak memory too")
    parser.add_argument("--compiled", action="store_true", help="with --compare: torch.compile each model first")
    parser.add_argument(
        "--eager-and-compiled",
        action="store_true",
        help="with --compare: each activation eager and compiled, rounds interleaved",
    )
    parser.add_argument("--op", action="store_true", help="time the fused op alone against the unfused ops")
    args = parser.parse_args(argv)
    if "fp16" in args.dtype and not args.op:
        parser.error("--dtype fp16 is for --op only")
    os.environ.setdefault("NA_BENCH_DEVICE", "cpu")
    import torch

    torch.set_num_threads(args.threads)
    print(f"load average at the start: {os.getloadavg()}", flush=True)
    for dtype in args.dtype:
        if args.op:
            print(compare_op(args, dtype), flush=True)
            continue
        if args.compare:
            print(compare(args, dtype), flush=True)
            continue
        for activation in args.activation:
            print(profile(args, activation, dtype), flush=True)
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
