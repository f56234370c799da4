"""``na-kernels demo``: NoisyQuant vs QCFS on the bundled 8x8 digits: per model the ANN, the
clipped network (the SNN's T -> infinity limit) and the SNN at T = 1..64.

The command line wiring is in ``na_kernels.app.cli``; this module trains, converts, evaluates,
prints the table and draws the plot.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from .. import __version__
from .._spec import Noise
from .datasets import BatchLoader, ImageData, digits_split
from .train import build_network, check_output_path, evaluate, evaluate_snn, make_optimizer, make_scheduler, train_epoch

DEMO_TS = (1, 2, 4, 8, 16, 32, 64)
DEMO_EXIT_CONFIDENCES = (0.9, 0.99, 0.999)  # the early-exit thresholds swept by default
DEMO_VARIANTS = (("NoisyQuant (uniform noise)", Noise.UNIFORM.label), ("QCFS (no noise)", Noise.NONE.label))


def _pct(x: Optional[float]) -> str:
    return "  -  " if x is None else f"{100 * x:5.1f}"


def _demo_train(name: str, noise: str, train: ImageData, args, show: bool) -> Dict[str, Any]:
    """Train the demo CNN with ``noise``: the same initial weights and data order for every variant."""
    torch.manual_seed(args.seed)
    model = build_network("digits_cnn", train.num_classes, train.in_channels, args.p, noise, args.lam)
    loader = BatchLoader(train, args.batch_size, shuffle=True, augment=True, drop_last=True, seed=args.seed)
    optimizer = make_optimizer(model, args.lr, 0.9, 5e-4)
    scheduler = make_scheduler(optimizer, args.epochs * len(loader))
    history = []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(args.seed * 7919 + epoch)  # the noise stream of this epoch
        stats = train_epoch(model, loader, optimizer, scheduler, amp=False,
                            desc=f"train {name} {epoch + 1}/{args.epochs}", show_progress=show)
        history.append({"epoch": epoch + 1, "train_loss": stats["loss"], "train_acc": stats["acc"]})
    return {"model": model.eval(), "history": history}


def _snn_eval(snn, test: ImageData, Ts: Sequence[int], batch_size: int, show: bool, desc: str) -> Dict[str, Any]:
    """Run the converted network once per T in Ts (statistics per T); the largest T's run
    gives the accuracy at every t <= T (the running mean at t is a t-step run)."""
    loader = BatchLoader(test, batch_size)
    per_T = {}
    curve: List[float] = []
    for T in Ts:
        snn.reset_statistics()
        acc = evaluate_snn(snn, loader, T=T, desc=f"{desc} T={T}", show_progress=show)
        st = snn.statistics()
        per_T[T] = {"acc": acc[-1], "firing_rate": st["total"]["firing_rate"],
                    "sops_per_sample": st["total"]["sops_per_sample"], "energy_ratio": st["energy"]["ratio"],
                    "snn_j_per_sample": st["energy"]["snn_j_per_sample"],
                    "ann_j_per_sample": st["energy"]["ann_j_per_sample"],
                    "layers": [{k: l[k] for k in ("name", "neurons", "firing_rate", "sops_per_sample")}
                               for l in st["if_layers"]]}
        if T == max(Ts):
            curve = acc
    return {"per_T": per_T, "curve": curve}


def _early_exit_eval(snn, test: ImageData, T_max: int, batch_size: int, confidences) -> List[Dict[str, Any]]:
    """The per-sample early exit's trade-off on the test set: one row per confidence threshold
    (``na_kernels.nn.exit_tradeoff``: accuracy, mean exit step, energy of the steps run)."""
    from ..nn import exit_tradeoff

    if not confidences:
        return []
    return exit_tradeoff(snn, BatchLoader(test, batch_size), list(confidences), T_max=T_max)


def _limit_eval(model, test: ImageData) -> float:
    """Test accuracy of ``model``'s clipped network (every NoisyQuant site clamp(x, 0, λ)), evaluated like the ANN."""
    from ..nn import clipped_network

    return evaluate(clipped_network(model), BatchLoader(test, 256), amp=False, show_progress=False)


def _demo_table(results: List[Dict[str, Any]], Ts: Sequence[int], energy_T: int) -> str:
    head = ["model", "ANN", "limit"] + [f"T={T}" for T in Ts] + ["rate", f"energy@T={energy_T}"]
    rows = []
    for r in results:
        rows.append([r["name"], _pct(r["ann_acc"]), _pct(r["limit_acc"])]
                    + [_pct(r["snn"]["per_T"][T]["acc"]) for T in Ts]
                    + [f"{r['snn']['per_T'][max(Ts)]['firing_rate']:.3f}",
                       f"{r['snn']['per_T'][energy_T]['energy_ratio']:.2f}x ANN"])
    widths = [max(len(str(row[i])) for row in [head] + rows) for i in range(len(head))]
    fmt = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    lines = [fmt(head), "-" * len(fmt(head))] + [fmt(row) for row in rows]
    return "\n".join(lines)


def _demo_plot(results, path: str, Ts: Sequence[int], p: int) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r, color in zip(results, ("tab:blue", "tab:orange")):
        curve = r["snn"]["curve"]
        t = list(range(1, len(curve) + 1))
        ax.plot(t, [100 * a for a in curve], color=color, label=f"{r['name']}: SNN")
        ax.axhline(100 * r["ann_acc"], color=color, linestyle="--", linewidth=1, label=f"{r['name']}: ANN")
        ax.axhline(100 * r["limit_acc"], color=color, linestyle=":", linewidth=1.5,
                   label=f"{r['name']}: limit (clipped network)")
        if r.get("early_exit"):
            ax.plot([row["mean_exit_step"] for row in r["early_exit"]], [100 * row["accuracy"] for row in r["early_exit"]],
                    "s", color=color, markerfacecolor="none", label=f"{r['name']}: early exit (mean steps)")
        ax2.plot(Ts, [r["snn"]["per_T"][T]["energy_ratio"] for T in Ts], "o-", color=color, label=r["name"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(Ts), [str(T) for T in Ts])
    ax.set_xlabel("time steps T")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"SNN accuracy vs time steps (8x8 digits, p = {p})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(list(Ts), [str(T) for T in Ts])
    ax2.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    ax2.set_xlabel("time steps T")
    ax2.set_ylabel("energy, SNN / ANN")
    ax2.set_title("estimated energy per image")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cmd_demo(args) -> int:
    """``na-kernels demo``: NoisyQuant vs QCFS on the bundled digits: ANN, clipped limit, SNN at T = 1..64."""
    t0 = time.time()
    check_output_path(args.out, "--out", purpose="the report and the plot")  # before minutes of training
    if args.quick:
        args.epochs = args.epochs or 3
        args.test_limit = args.test_limit or 200
    args.epochs = args.epochs or 15
    if getattr(args, "exit_confidence", None) is None:
        args.exit_confidence = list(DEMO_EXIT_CONFIDENCES)
    show = not args.no_progress
    # 8x8 images are too small to gain much from more threads, and extra threads spin-wait
    # badly on a busy machine: the demo runs on `--threads` (default 1) threads
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _demo(args, t0, show)
    finally:
        torch.set_num_threads(threads)


def _demo(args, t0: float, show: bool) -> int:
    from ..nn import to_snn

    Ts = DEMO_TS
    energy_T = 4
    train, test = digits_split()
    if args.test_limit:
        test = test.subset(torch.arange(min(args.test_limit, len(test))))
    print(f"na-kernels demo: UCI 8x8 handwritten digits (bundled), {len(train)} train / {len(test)} held-out test "
          f"images; small CNN (4 conv + 1 hidden linear layer), p = {args.p} activation levels, "
          f"{args.epochs} epochs, seed {args.seed}{' (quick)' if args.quick else ''}", flush=True)
    results = []
    for name, noise in DEMO_VARIANTS:
        t1 = time.time()
        trained = _demo_train(name, noise, train, args, show)
        model = trained["model"]
        t_train = time.time() - t1
        ann_acc = evaluate(model, BatchLoader(test, 256), amp=False, show_progress=False)
        limit_acc = _limit_eval(model, test)
        t2 = time.time()
        network = to_snn(model, max(Ts))
        snn = _snn_eval(network, test, Ts, args.eval_batch_size, show, f"SNN {name}")
        early_exit = _early_exit_eval(network, test, max(Ts), args.eval_batch_size, args.exit_confidence)
        lams = [float(m.lam.detach()) for m in model.modules() if hasattr(m, "raw_lam")]
        results.append({"name": name, "noise": noise, "ann_acc": ann_acc, "limit_acc": limit_acc, "snn": snn,
                        "early_exit": early_exit, "lambda": lams,
                        "history": trained["history"], "train_s": t_train, "snn_eval_s": time.time() - t2})

    table = _demo_table(results, Ts, energy_T)
    elapsed = time.time() - t0
    print()
    print("Test accuracy (%) of the ANN, of its clipped network (limit: every activation clamp(x, 0, λ), "
          "the SNN's T -> infinity limit) and of the converted SNN after T time steps;")
    print(f"rate = spikes per neuron per step (T={max(Ts)}); energy = estimated SNN/ANN energy per image at T={energy_T} "
          "(0.9 pJ/AC, 4.6 pJ/MAC)")
    print(table)
    for r in results:
        r["first_T_within_1pt"] = next((T for T in Ts if r["snn"]["per_T"][T]["acc"] >= r["ann_acc"] - 0.01), None)
    print("first T at which the SNN is within 1 point of its ANN: " + ", ".join(
        f"{r['name']} T={r['first_T_within_1pt'] or '>' + str(max(Ts))}" for r in results))
    for r in results:
        accs = {T: r["snn"]["per_T"][T]["acc"] for T in Ts}
        r["peak_T"] = max(Ts, key=lambda T: (accs[T], -T))
        r["snn_minus_limit_at_max_T"] = accs[max(Ts)] - r["limit_acc"]
        print(f"{r['name']}: SNN best {_pct(accs[r['peak_T']]).strip()} at T={r['peak_T']}, "
              f"{_pct(accs[max(Ts)]).strip()} at T={max(Ts)}; its limit {_pct(r['limit_acc']).strip()}, "
              f"ANN {_pct(r['ann_acc']).strip()}")
    print(f"(one test image = {100 / len(test):.2f} points)")
    if args.exit_confidence:
        from ..nn import format_tradeoff

        print()
        print(f"Per-sample early exit (T_max = {max(Ts)}): each image stops at the first step where the top "
              "softmax probability of its mean logits reaches the threshold; the fixed-T columns are the "
              "same SNN run for a fixed number of steps")
        for r in results:
            print(f"{r['name']}:")
            print(format_tradeoff(r["early_exit"], r["snn"]["curve"]))
    os.makedirs(args.out, exist_ok=True)
    report = {
        "command": "na-kernels demo", "version": __version__, "seed": args.seed, "quick": bool(args.quick),
        "dataset": {"name": "UCI optical recognition of handwritten digits (8x8)", "train": len(train),
                    "test": len(test), "licence": "CC BY 4.0, see na_kernels/app/data/DIGITS_LICENSE.txt"},
        "model": "DigitsCNN", "p": args.p, "lam_init": args.lam, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4, "T": list(Ts), "energy_T": energy_T,
        "exit_confidence": list(args.exit_confidence),
        "results": [{k: (v if k != "snn" else {"per_T": {str(T): d for T, d in v["per_T"].items()},
                                               "acc_every_t": v["curve"]})
                     for k, v in r.items()} for r in results],
        "table": table, "elapsed_s": elapsed,
        "torch_threads": torch.get_num_threads(),
    }
    json_path = os.path.join(args.out, "demo_report.json")
    png = None if args.no_plot else _demo_plot(results, os.path.join(args.out, "demo_accuracy_vs_T.png"), Ts, args.p)
    report["plot"] = png
    report["elapsed_s"] = elapsed = time.time() - t0  # training, evaluation, plot
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    print()
    if png:
        print(f"plot:   {png}")
    elif not args.no_plot:
        print("plot:   skipped, matplotlib is not installed (pip install 'na_kernels[plot]')")
    print(f"report: {json_path}")
    print(f"done in {elapsed:.0f} s")
    return 0
