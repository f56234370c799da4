"""Per-sample early exit against the fixed-T run: accuracy, mean exit step, wall time, images/s,
and the compaction's share of a chunk (issue 15's targets).

    python bench/early_exit.py                          # trains the demo's noise model (seconds)
    python bench/early_exit.py --checkpoint runs/x/last.pt   # a na-kernels train checkpoint
    python bench/early_exit.py --model model.pt         # a torch.save'd model (--save-model writes one)
    python bench/early_exit.py --device cuda            # on a GPU

Steps, on the bundled digits' held-out split (539 images) unless --checkpoint names another
dataset:
1. the model: trained by the demo's own training function with the demo's settings (the noise
   variant, ``na-kernels demo`` defaults: 15 epochs, p = 3, λ = 2, seed 0), or loaded;
2. the fixed-T run at T = --T (default 8): accuracy at every t <= T;
3. a sweep of confidence thresholds (real early-exit runs, statistics on): accuracy, mean exit
   step, energy; the rule kept is the one with the smallest mean exit step whose accuracy is
   within --tolerance points (default 0.2) of the fixed-T = T run;
4. wall time over the test set in batches of --batch (default 256), statistics off, fixed T
   against the kept rule at each --chunks value; rounds interleaved (fixed, adaptive, fixed, ...)
   so that load from other processes falls on both alike; medians;
5. compaction: one chunk of the network on --batch samples (membrane potentials carried, the
   stem cut off as the early exit runs it) against the compaction that follows it (every IF
   layer's potential, the input and the stem's outputs cut to half of the samples by ``select_rows``),
   medians.
Then the targets, met or missed. On a shared machine the times move a lot: quote them with the
load average printed at the top and the bottom, and rerun on a quiet machine.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

from na_kernels.app.datasets import BatchLoader, digits_split, load_dataset
from na_kernels.nn import ExitRule, exit_tradeoff, format_tradeoff, run_early_exit, to_snn
from na_kernels.snn.early_exit import compact, select_rows, split_stem

DEFAULT_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


# ----------------------------------------------------------------------------- the model
def _demo_training():
    """The demo's training function and its default settings, wherever the demo lives."""
    for module_name in ("na_kernels.app.demo", "na_kernels.app.cli"):
        try:
            module = __import__(module_name, fromlist=["_demo_train"])
        except ImportError:
            continue
        train = getattr(module, "_demo_train", None)
        if train is not None:
            from na_kernels.app.cli import build_parser

            args = build_parser().parse_args(["demo", "--data", "digits"])
            defaults = getattr(module, "apply_data_defaults", None)
            return train, defaults(args) if defaults else args, module_name
    raise RuntimeError("no _demo_train in na_kernels.app.demo or na_kernels.app.cli: pass --checkpoint or --model")


def demo_model(seed=0, epochs=None, show=False):
    """(model, description): the demo's noise model, trained as ``na-kernels demo`` trains it."""
    train_fn, args, where = _demo_training()
    args.seed = seed
    args.epochs = epochs or args.epochs or 15
    train, _ = digits_split()
    model = train_fn("NoisyQuant (uniform noise)", "uniform", train, args, show)["model"]
    return model.eval(), (
        f"the demo's noise model ({where}._demo_train: digits_cnn p={args.p} uniform noise "
        f"lam={args.lam} epochs={args.epochs} batch={args.batch_size} lr={args.lr} seed={seed})"
    )


def load_model(args):
    """(model, test ImageData, description) from --checkpoint / --model, else the demo's model."""
    if args.checkpoint:
        from na_kernels.app.train import load_checkpoint, network_from_checkpoint

        state = load_checkpoint(args.checkpoint)
        cfg = state["config"]
        test = load_dataset(cfg["dataset"], args.data_dir or cfg.get("data_dir"), train=False)
        return network_from_checkpoint(state).eval(), test, f"checkpoint {args.checkpoint} ({cfg['arch']})"
    _, test = digits_split()
    if args.model:
        return torch.load(args.model, weights_only=False).eval(), test, f"model {args.model}"
    model, description = demo_model(args.seed, args.epochs)
    if args.save_model:
        torch.save(model, args.save_model)
    return model, test, description


# ----------------------------------------------------------------------------- timing
def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(fns, device, rounds):
    """Median seconds of each fn, the rounds interleaved (fn0, fn1, ..., fn0, fn1, ...)."""
    for fn in fns:  # warm-up
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            times[i].append(timed(fn, device))
    return [statistics.median(t) for t in times]


def fixed_run(snn, batches, T):
    def run():
        with torch.no_grad():
            for x, _ in batches:
                snn(x, T=T)

    return run


def adaptive_run(snn, batches, rule, T, chunk):
    def run():
        for x, _ in batches:
            run_early_exit(snn, x, rule, T_max=T, chunk=chunk)

    return run


def chunk_and_compaction(snn, x, chunk):
    """(one_chunk, compaction) callables at batch x.shape[0], as ``run_early_exit`` runs them:
    the network body (stem cut off) for ``chunk`` steps with the potentials carried, and the
    compaction after it to half of the samples (every IF layer's potential, the input and the
    stem's outputs through ``select_rows``). Call one_chunk first; reset the network's state after."""
    stem, body = split_stem(snn.network)
    with torch.no_grad():
        inputs = (x,) + tuple(stem(x)) if stem is not None else (x,)
    network = body if body is not None else snn.network
    keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[: x.shape[0] // 2]
    keep = keep.sort().values.to(x.device)
    state = {}

    def one_chunk():
        snn._set(mode="snn", carry_state=True, time_steps=chunk, v=None)
        with torch.no_grad():
            network(*inputs)
        state["v"] = {name: layer.v for name, layer in snn.if_layers.items()}

    def compaction():
        for name, layer in snn.if_layers.items():
            layer.v = state["v"][name]
        for value in inputs:
            select_rows(value, keep)
        compact(snn, keep)

    return one_chunk, compaction


def compaction_share(snn, x, chunk, device, rounds):
    """(chunk seconds, compaction seconds) at batch x.shape[0] (see ``chunk_and_compaction``)."""
    one_chunk, compaction = chunk_and_compaction(snn, x, chunk)

    try:
        chunk_s = interleaved([one_chunk], device, rounds)[0]
        compaction_s = interleaved([compaction], device, rounds)[0]
    finally:
        snn._set(carry_state=False, v=None, time_steps=1)
    return chunk_s, compaction_s


# ----------------------------------------------------------------------------- the measurement
def measure(
    model,
    test,
    *,
    T=8,
    batch=256,
    chunks=(1, 2, 4),
    thresholds=DEFAULT_THRESHOLDS,
    tolerance=0.2,
    rounds=7,
    device="cpu",
    show=False,
):
    """Everything the script prints, as a dict (see the module doc)."""
    snn = to_snn(model, T).to(device).eval()
    batches = [(x, y) for x, y in BatchLoader(test, batch, device=device)]
    from na_kernels.app.train import evaluate_snn

    fixed_acc = evaluate_snn(snn, batches, T=T, show_progress=False)
    rows = exit_tradeoff(snn, batches, thresholds, T_max=T, chunk=1, show_progress=show)
    eligible = [r for r in rows if r["accuracy"] >= fixed_acc[-1] - tolerance / 100 - 1e-12]
    kept = min(eligible, key=lambda r: (r["mean_exit_step"], -r["accuracy"])) if eligible else None
    result = dict(
        T=T,
        batch=batch,
        samples=len(test),
        fixed_accuracy_every_t=fixed_acc,
        tradeoff=rows,
        tradeoff_table=format_tradeoff(rows, fixed_acc),
        tolerance_points=tolerance,
        kept=kept,
        device=str(device),
        threads=torch.get_num_threads(),
    )
    snn.record_statistics(False)
    try:
        if kept is not None:
            rule = ExitRule(confidence=kept["confidence"])
            fns = [fixed_run(snn, batches, T)] + [adaptive_run(snn, batches, rule, T, c) for c in chunks]
            seconds = interleaved(fns, device, rounds)
            result["wall"] = [dict(run=f"fixed T={T}", seconds=seconds[0], images_per_s=len(test) / seconds[0])]
            for c, s in zip(chunks, seconds[1:]):
                result["wall"].append(
                    dict(
                        run=f"early exit {rule.describe()}, chunk {c}",
                        chunk=c,
                        seconds=s,
                        images_per_s=len(test) / s,
                        vs_fixed=s / seconds[0],
                    )
                )
        x = batches[0][0]
        result["compaction"] = []
        for c in chunks:
            chunk_s, compaction_s = compaction_share(snn, x, c, device, rounds)
            result["compaction"].append(
                dict(
                    chunk=c,
                    batch=x.shape[0],
                    chunk_s=chunk_s,
                    compaction_s=compaction_s,
                    fraction=compaction_s / chunk_s,
                )
            )
    finally:
        snn.record_statistics(True)
    return result


def _targets(result):
    lines = ["Targets (issue 15; on 2 CPU cores for the wall time):"]
    fixed = result["fixed_accuracy_every_t"][-1]
    kept = result["kept"]
    if kept is None:
        lines.append(
            f"- no threshold of the sweep is within {result['tolerance_points']} points of fixed T = "
            f"{result['T']} ({100 * fixed:.2f} %): MISSED (try higher thresholds)"
        )
        return lines
    gap = 100 * (kept["accuracy"] - fixed)
    lines.append(
        f"- rule kept: {kept['rule']}: {100 * kept['accuracy']:.2f} % vs fixed T={result['T']} "
        f"{100 * fixed:.2f} % ({gap:+.2f} points; at least -{result['tolerance_points']} allowed)"
    )
    mean = kept["mean_exit_step"]
    lines.append(f"- mean exit step <= 4: {mean:.2f} — {'met' if mean <= 4 else 'MISSED'}")
    for w in result.get("wall", [])[1:]:
        lines.append(
            f"- wall time <= 0.6x fixed T={result['T']} (chunk {w['chunk']}): {w['vs_fixed']:.2f}x — "
            f"{'met' if w['vs_fixed'] <= 0.6 else 'MISSED'}"
        )
    for c in result["compaction"]:
        lines.append(
            f"- compaction <= 10 % of a chunk at batch {c['batch']} (chunk {c['chunk']}): "
            f"{100 * c['fraction']:.1f} % — {'met' if c['fraction'] <= 0.10 else 'MISSED'}"
        )
    return lines


def _ms(seconds):
    return f"{1e3 * seconds:.2f} ms"


def report(result, description):
    lines = [
        f"Model: {description}; {result['samples']} test images, batch {result['batch']}, "
        f"device {result['device']}, {result['threads']} torch threads",
        "Fixed-T accuracy (%): "
        + "  ".join(f"T={t + 1}: {100 * a:.2f}" for t, a in enumerate(result["fixed_accuracy_every_t"])),
        "",
        "Early-exit sweep (chunk 1, statistics on):",
        result["tradeoff_table"],
        "",
    ]
    if "wall" in result:
        lines.append("Wall time over the test set (medians of interleaved rounds, statistics off):")
        for w in result["wall"]:
            ratio = f"  ({w['vs_fixed']:.2f}x fixed)" if "vs_fixed" in w else ""
            lines.append(f"  {w['run']:<40} {_ms(w['seconds']):>10}  {w['images_per_s']:9.0f} images/s{ratio}")
        lines.append("")
    lines.append(
        "Compaction between chunks (every IF layer's potential, the input and the stem's outputs, to half the batch):"
    )
    for c in result["compaction"]:
        lines.append(
            f"  chunk {c['chunk']}: one chunk at batch {c['batch']} {_ms(c['chunk_s'])}, compaction "
            f"{_ms(c['compaction_s'])} = {100 * c['fraction']:.1f} % of it"
        )
    lines += [""] + _targets(result)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a na-kernels train checkpoint (its dataset's test split)")
    parser.add_argument("--data-dir", default=None, help="dataset folder for --checkpoint")
    parser.add_argument("--model", help="a torch.save'd model (digits test split)")
    parser.add_argument("--save-model", help="write the trained demo model here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="demo training epochs (default: the demo's)")
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    parser.add_argument("--tolerance", type=float, default=0.2, help="accuracy points below fixed T allowed")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, 2 on 2 cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average at the start: {os.getloadavg()}", flush=True)
    model, test, description = load_model(args)
    result = measure(
        model,
        test,
        T=args.T,
        batch=args.batch,
        chunks=tuple(args.chunks),
        thresholds=args.thresholds,
        tolerance=args.tolerance,
        rounds=args.rounds,
        device=args.device,
    )
    result["model"] = description
    result["command"] = " ".join([os.path.basename(sys.executable), *sys.argv])
    result["load_average_end"] = os.getloadavg()
    print(report(result, description))
    print(f"load average at the end: {result['load_average_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
