"""``na-kernels demo``: NoisyQuant vs QCFS on bundled digits, over several seeds: per model the
ANN, the clipped network (the SNN's T -> infinity limit) and the SNN at T = 1..64, each as the
mean and the min..max over the seeds, and one sentence, computed from those numbers, saying what
the run shows.

The command line wiring is in ``na_kernels.app.cli``; this module trains, converts, evaluates,
prints the table and draws the plot. ``summarize`` and ``describe`` are pure functions of the
per-seed numbers (tested on small inputs).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from .. import __version__
from .._spec import Noise
from .datasets import BatchLoader, ImageData, digits_split, mnist10k_split
from .train import build_network, check_output_path, evaluate, evaluate_snn, make_optimizer, make_scheduler, train_epoch

DEMO_TS = (1, 2, 4, 8, 16, 32, 64)
DEMO_ENERGY_T = 4  # the T of the energy estimate
LOW_TS = (1, 2, 4)  # the low-T columns whose noise - QCFS difference the run reports
DEMO_EXIT_CONFIDENCES = (0.9, 0.99)  # the early-exit thresholds swept by default (first seed)
DEMO_VARIANTS = (("NoisyQuant (uniform noise)", Noise.UNIFORM.label), ("QCFS (no noise)", Noise.NONE.label))
# the bundled data sets the demo runs on: loader, network, default epochs, how to name them
DEMO_DATA = {
    "mnist10k": {
        "split": mnist10k_split,
        "arch": "mnist_cnn",
        "epochs": 3,
        "p": 1,
        "optimizer": "adam",
        "title": "28x28 MNIST digits (10,000 bundled)",
        "network": "small CNN (3 conv + 1 hidden linear layer)",
        "licence": "CC BY-SA 3.0, see na_kernels/app/data/MNIST10K_LICENSE.txt",
    },
    "digits": {
        "split": digits_split,
        "arch": "digits_cnn",
        "epochs": 15,
        "p": 3,
        "optimizer": "sgd",
        "title": "UCI 8x8 handwritten digits (1797 bundled)",
        "network": "small CNN (4 conv + 1 hidden linear layer)",
        "licence": "CC BY 4.0, see na_kernels/app/data/DIGITS_LICENSE.txt",
    },
}
EXIT_BATCH = 500  # the early exit runs one step at a time: large batches amortise each step's overhead
DEMO_LR = {"adam": 0.001, "sgd": 0.05}
# a change smaller than this many points is "level": one point is 20 of the 2000 test images
MARGIN_POINTS = 1.0


def _pct(x: Optional[float]) -> str:
    return "  -  " if x is None else f"{100 * x:5.1f}"


def first_images(data: ImageData, n: int) -> ImageData:
    """``n`` images of ``data`` picked by a fixed shuffle (seed 0), in their original order: the
    bundled splits are sorted by class, so the first ``n`` would hold only the first digits."""
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: min(n, len(data))]
    return data.subset(index.sort().values)


def _demo_train(
    name: str, noise: str, train: ImageData, args, show: bool, *, seed: Optional[int] = None, arch: str = "digits_cnn"
) -> Dict[str, Any]:
    """Train the demo CNN ``arch`` with ``noise`` and ``seed`` (default ``args.seed``): the same initial
    weights and data order for every variant."""
    seed = args.seed if seed is None else seed
    torch.manual_seed(seed)
    model = build_network(arch, train.num_classes, train.in_channels, args.p, noise, args.lam)
    loader = BatchLoader(train, args.batch_size, shuffle=True, augment=True, drop_last=True, seed=seed)
    if getattr(args, "optimizer", "sgd") == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        optimizer = make_optimizer(model, args.lr, 0.9, 5e-4)
    scheduler = make_scheduler(optimizer, args.epochs * len(loader))
    history = []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(seed * 7919 + epoch)  # the noise stream of this epoch
        stats = train_epoch(
            model,
            loader,
            optimizer,
            scheduler,
            amp=False,
            desc=f"seed {seed} train {name} {epoch + 1}/{args.epochs}",
            show_progress=show,
        )
        history.append({"epoch": epoch + 1, "train_loss": stats["loss"], "train_acc": stats["acc"]})
    return {"model": model.eval(), "history": history}


def _snn_eval(
    snn, test: ImageData, Ts: Sequence[int], energy_T: int, batch_size: int, show: bool, desc: str
) -> Dict[str, Any]:
    """One run of max(Ts) steps gives the accuracy at every t <= max(Ts) (the running mean at t
    is a t-step run) and the firing rate; one run of ``energy_T`` steps the energy estimate."""
    loader = BatchLoader(test, batch_size)
    stats = {}
    curve: List[float] = []
    for T in sorted({max(Ts), energy_T}, reverse=True):
        snn.reset_statistics()
        acc = evaluate_snn(snn, loader, T=T, desc=f"{desc} T={T}", show_progress=show)
        st = snn.statistics()
        stats[T] = {
            "firing_rate": st["total"]["firing_rate"],
            "sops_per_sample": st["total"]["sops_per_sample"],
            "energy_ratio": st["energy"]["ratio"],
            "snn_j_per_sample": st["energy"]["snn_j_per_sample"],
            "ann_j_per_sample": st["energy"]["ann_j_per_sample"],
        }
        if T == max(Ts):
            curve = acc
    return {"acc": {T: curve[T - 1] for T in Ts}, "curve": curve, "stats": {str(T): v for T, v in stats.items()}}


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


# ----------------------------------------------------------------------------------------
# the numbers over seeds, and what they show (pure functions)
# ----------------------------------------------------------------------------------------


def _spread(values: Sequence[float]) -> Dict[str, Any]:
    values = [float(v) for v in values]
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "per_seed": values}


def summarize(runs: Sequence[Dict[str, Any]], Ts: Sequence[int]) -> Dict[str, Any]:
    """Mean, min, max and per-seed values of one variant's runs (one dict per seed with ``ann``,
    ``limit`` and ``acc``: {T: SNN accuracy}; accuracies as fractions): keys ``ann``, ``limit``,
    ``snn`` {T: ...}, and per seed the SNN's best T among ``Ts`` (``peak_T``; the smallest on a
    tie) and ``fall``: best accuracy minus the accuracy at max(Ts)."""
    best = [max(Ts, key=lambda T: (r["acc"][T], -T)) for r in runs]
    return {
        "ann": _spread([r["ann"] for r in runs]),
        "limit": _spread([r["limit"] for r in runs]),
        "snn": {T: _spread([r["acc"][T] for r in runs]) for T in Ts},
        "peak_T": best,
        "fall": _spread([r["acc"][b] - r["acc"][max(Ts)] for r, b in zip(runs, best)]),
    }


def paired_difference(noisy: Sequence[Dict[str, Any]], qcfs: Sequence[Dict[str, Any]], Ts: Sequence[int]):
    """Noise minus QCFS, seed by seed: {T: spread of the differences} plus ``limit`` and ``ann``.
    Both lists must hold the same seeds in the same order."""
    if [r.get("seed") for r in noisy] != [r.get("seed") for r in qcfs]:
        raise ValueError(
            f"paired_difference needs the same seeds on both sides, got "
            f"{[r.get('seed') for r in noisy]} and {[r.get('seed') for r in qcfs]}"
        )
    out = {T: _spread([a["acc"][T] - b["acc"][T] for a, b in zip(noisy, qcfs)]) for T in Ts}
    out["limit"] = _spread([a["limit"] - b["limit"] for a, b in zip(noisy, qcfs)])
    out["ann"] = _spread([a["ann"] - b["ann"] for a, b in zip(noisy, qcfs)])
    return out


def _pts(x: float, sign: bool = False) -> str:
    return f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def _range(s: Dict[str, Any], sign: bool = False) -> str:
    """``mean`` alone for one seed, else ``mean [min..max]``, in points."""
    if len(s["per_seed"]) == 1:
        return _pts(s["mean"], sign)
    return f"{_pts(s['mean'], sign)} [{_pts(s['min'], sign)}..{_pts(s['max'], sign)}]"


def _falls(s: Dict[str, Any], margin: float) -> bool:
    """Every seed's SNN at max T more than ``margin`` below its best T."""
    return s["fall"]["min"] > margin


def describe(
    noisy: Dict[str, Any],
    qcfs: Dict[str, Any],
    diff: Dict[Any, Any],
    Ts: Sequence[int],
    margin_points: float = MARGIN_POINTS,
) -> str:
    """One sentence, from ``summarize`` of each variant and their ``paired_difference``: whether
    the QCFS SNN falls at long T towards a worse clipped network while the noise-trained one does
    not, or that neither / both do, and how the noise changes the low-T columns (``LOW_TS``).
    A difference counts only when it holds for every seed by more than ``margin_points``: at low
    T "ahead" / "behind" (every seed beyond the margin), "level" (every seed within it), else
    "ahead in some seeds, behind in others" or "ahead / behind in some seeds, level in others".
    Values are ``mean [min..max]`` over the seeds (the mean alone for one seed)."""
    m = margin_points / 100
    T_max = max(Ts)
    n = len(noisy["ann"]["per_seed"])
    every = "every seed" if n > 1 else "this seed"

    def long_T(s: Dict[str, Any]) -> str:
        return f"{_range(s['snn'][T_max])} % at T = {T_max}"

    q_falls, n_falls = _falls(qcfs, m), _falls(noisy, m)
    q_gap = [ann - limit for ann, limit in zip(qcfs["ann"]["per_seed"], qcfs["limit"]["per_seed"])]
    if q_falls and not n_falls:
        peaks = sorted(set(qcfs["peak_T"]))
        head = (
            f"This run shows the collapse without noise: in {every} the QCFS SNN peaks early "
            f"(T = {', '.join(map(str, peaks))}) and falls by {_range(qcfs['fall'])} points to "
            f"{long_T(qcfs)}, towards its clipped network ({_range(qcfs['limit'])} %, ANN "
            f"{_range(qcfs['ann'])} %), while the noise-trained SNN reaches {long_T(noisy)} "
            f"(its clipped network {_range(noisy['limit'])} %)"
        )
    elif not q_falls and not n_falls:
        level = "within" if min(q_gap) > -m and max(q_gap) < m else "not consistently below"
        head = (
            f"In this run neither SNN falls at long T (drop from the best T to T = {T_max}: QCFS "
            f"{_range(qcfs['fall'])}, noise {_range(noisy['fall'])} points) and the QCFS clipped network is "
            f"{level} {margin_points:g} point of its ANN ({_range(qcfs['limit'])} % vs {_range(qcfs['ann'])} %), "
            "so the collapse without noise does not show here"
        )
    else:
        who = "both SNNs fall" if q_falls else "the noise-trained SNN falls"
        head = (
            f"In this run {who} at long T in {every} (drop from the best T to T = {T_max}: QCFS "
            f"{_range(qcfs['fall'])}, noise {_range(noisy['fall'])} points; clipped networks: QCFS "
            f"{_range(qcfs['limit'])} %, noise {_range(noisy['limit'])} %)"
        )
    low = []
    for T in LOW_TS:
        if T not in diff:
            continue
        d = diff[T]
        ahead = sum(v > m for v in d["per_seed"])
        behind = sum(v < -m for v in d["per_seed"])
        n_seeds = len(d["per_seed"])
        word = (
            "ahead"
            if ahead == n_seeds
            else "behind"
            if behind == n_seeds
            else "level"
            if not ahead + behind
            else "ahead in some seeds, behind in others"
            if ahead and behind
            else f"{'ahead' if ahead else 'behind'} in some seeds, level in others"
        )
        low.append(f"{word} at T = {T} ({_range(d, sign=True)} points)")
    tail = "; against QCFS with the same seed, the noise-trained SNN is " + ", ".join(low) if low else ""
    return head + tail + "."


# ----------------------------------------------------------------------------------------
# printing and plotting
# ----------------------------------------------------------------------------------------


def _demo_table(results: List[Dict[str, Any]], Ts: Sequence[int], energy_T: int) -> str:
    """Per variant one row of means and, with several seeds, one row of min..max."""
    head = ["model", "ANN", "limit"] + [f"T={T}" for T in Ts] + ["rate", f"energy@T={energy_T}"]
    rows = []
    for r in results:
        s = r["summary"]
        cols = [s["ann"], s["limit"]] + [s["snn"][T] for T in Ts]
        rate = sum(run["stats"][str(max(Ts))]["firing_rate"] for run in r["runs"]) / len(r["runs"])
        energy = sum(run["stats"][str(energy_T)]["energy_ratio"] for run in r["runs"]) / len(r["runs"])
        rows.append([r["name"]] + [_pct(c["mean"]) for c in cols] + [f"{rate:.3f}", f"{energy:.2f}x ANN"])
        if len(r["runs"]) > 1:
            rows.append(
                ["  min..max over seeds"] + [f"{100 * c['min']:.1f}..{100 * c['max']:.1f}" for c in cols] + ["", ""]
            )
    widths = [max(len(str(row[i])) for row in [head] + rows) for i in range(len(head))]

    def fmt(row):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = [fmt(head), "-" * len(fmt(head))] + [fmt(row).rstrip() for row in rows]
    return "\n".join(lines)


def _demo_plot(results, diff, path: str, Ts: Sequence[int], p: int, title: str, seeds: Sequence[int]) -> Optional[str]:
    """Left: SNN accuracy at every t (mean over seeds, band = min..max), the ANN and the clipped
    network as points (mean, bar = min..max) right of the curves, the two variants side by side.
    Right: noise minus QCFS, same seed, at each T of the table (mean, bar = min..max). One
    legend below both panels, outside the data."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [2.2, 1]})
    T_max = max(Ts)
    x_ann, x_lim = 2.0 * T_max, 4.0 * T_max  # two columns right of the curves (log axis)
    for k, (r, color, style) in enumerate(zip(results, ("tab:blue", "tab:orange"), ("-", "--"))):
        curves = torch.tensor([run["curve"] for run in r["runs"]], dtype=torch.float64) * 100
        t = list(range(1, curves.shape[1] + 1))
        ax.plot(t, curves.mean(0).tolist(), style, color=color, linewidth=1.8, label=f"{r['name']}: SNN (mean)")
        if curves.shape[0] > 1:
            ax.fill_between(
                t,
                curves.min(0).values.tolist(),
                curves.max(0).values.tolist(),
                color=color,
                alpha=0.18,
                linewidth=0,
                label=f"{r['name']}: SNN, min..max over seeds",
            )
        shift = 0.9 if k == 0 else 1.1  # side by side, so equal values do not hide each other
        for x, key, marker, what in ((x_ann, "ann", "D", "ANN"), (x_lim, "limit", "s", "clipped network (limit)")):
            s = r["summary"][key]
            ax.errorbar(
                [x * shift],
                [100 * s["mean"]],
                yerr=[[100 * (s["mean"] - s["min"])], [100 * (s["max"] - s["mean"])]],
                fmt=marker,
                color=color,
                markerfacecolor=color if k == 0 else "white",
                capsize=3,
                label=f"{r['name']}: {what}",
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(Ts) + [x_ann, x_lim], [str(T) for T in Ts] + ["ANN", "limit"])
    ax.set_xlim(0.8, x_lim * 1.5)
    ax.axvline((T_max * x_ann) ** 0.5, color="gray", linewidth=0.8)
    ax.set_xlabel("time steps T")
    ax.set_ylabel("test accuracy (%)")
    which = f"seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
    ax.set_title(f"{title}, p = {p}, {which}", fontsize=10)
    ax.grid(True, alpha=0.3)
    xs = list(Ts) + [x_lim]
    d = [diff[T] for T in Ts] + [diff["limit"]]
    mean = [100 * v["mean"] for v in d]
    ax2.errorbar(
        xs,
        mean,
        yerr=[[100 * (v["mean"] - v["min"]) for v in d], [100 * (v["max"] - v["mean"]) for v in d]],
        fmt="o",
        color="black",
        capsize=3,
    )
    ax2.axhline(0.0, color="gray", linestyle=":", linewidth=1)
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(xs, [str(T) for T in Ts] + ["limit"])
    ax2.set_xlabel("time steps T")
    ax2.set_ylabel("noise minus QCFS (points)")
    ax2.set_title("same seed; bar = min..max over seeds", fontsize=10)
    ax2.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------


def apply_data_defaults(args):
    """Fill the training settings ``args`` leaves unset (None) with those of its data set
    (``args.data``, default mnist10k): epochs, p, optimizer, lr. Returns ``args``."""
    data = DEMO_DATA[getattr(args, "data", None) or "mnist10k"]
    args.epochs = getattr(args, "epochs", None) or data["epochs"]
    args.p = getattr(args, "p", None) or data["p"]
    args.optimizer = getattr(args, "optimizer", None) or data["optimizer"]
    args.lr = getattr(args, "lr", None) or DEMO_LR[args.optimizer]
    return args


def cmd_demo(args) -> int:
    """``na-kernels demo``: NoisyQuant vs QCFS on bundled digits over several seeds: ANN, clipped
    limit, SNN at T = 1..64, and what the run shows."""
    t0 = time.time()
    check_output_path(args.out, "--out", purpose="the report and the plot")  # before minutes of training
    data = DEMO_DATA[getattr(args, "data", None) or "mnist10k"]
    if args.quick:
        args.epochs = args.epochs or 1
        args.test_limit = args.test_limit or 300
        args.seeds = args.seeds or 1
    apply_data_defaults(args)
    args.seeds = args.seeds or 3
    if getattr(args, "exit_confidence", None) is None:
        args.exit_confidence = list(DEMO_EXIT_CONFIDENCES)
    if getattr(args, "workers", None) is None:
        args.workers = min(2, os.cpu_count() or 1)
    show = not args.no_progress
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _demo(args, data, t0, show)
    finally:
        torch.set_num_threads(threads)


def _demo_job(data_key: str, args, seed: int, name: str, noise: str, early_exit: bool, show: bool) -> Dict[str, Any]:
    """Train, evaluate and convert one (seed, variant): the run's numbers (no model). Runs the
    same in the calling process or in a worker; its numbers depend on ``args.threads``, not on
    where it runs."""
    from ..nn import to_snn

    data = DEMO_DATA[data_key]
    Ts, energy_T = DEMO_TS, DEMO_ENERGY_T
    train, test = data["split"]()
    if args.test_limit:
        test = first_images(test, args.test_limit)
    t1 = time.time()
    trained = _demo_train(name, noise, train, args, show, seed=seed, arch=data["arch"])
    model = trained["model"]
    t_train = time.time() - t1
    ann_acc = evaluate(model, BatchLoader(test, 256), amp=False, show_progress=False)
    limit_acc = _limit_eval(model, test)
    t2 = time.time()
    network = to_snn(model, max(Ts))
    snn = _snn_eval(network, test, Ts, energy_T, args.eval_batch_size, show, f"seed {seed} SNN {name}")
    exits = _early_exit_eval(network, test, max(Ts), EXIT_BATCH, args.exit_confidence) if early_exit else []
    return {
        "seed": seed,
        "ann": ann_acc,
        "limit": limit_acc,
        "acc": snn["acc"],
        "curve": snn["curve"],
        "stats": snn["stats"],
        "early_exit": exits,
        "lambda": [float(m.lam.detach()) for m in model.modules() if hasattr(m, "raw_lam")],
        "history": trained["history"],
        "train_s": t_train,
        "snn_eval_s": time.time() - t2,
    }


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _job_line(run: Dict[str, Any], name: str, done: int, total: int) -> str:
    return (
        f"  [{done}/{total}] seed {run['seed']} {name}: ANN {_pct(run['ann']).strip()}, "
        f"limit {_pct(run['limit']).strip()}, SNN T=1 {_pct(run['acc'][1]).strip()}, "
        f"T={max(DEMO_TS)} {_pct(run['acc'][max(DEMO_TS)]).strip()} "
        f"({run['train_s']:.0f} s train, {run['snn_eval_s']:.0f} s SNN)"
    )


def _run_jobs(args, jobs, show: bool) -> List[Dict[str, Any]]:
    """The runs of ``jobs`` ((seed, name, noise, early_exit) tuples), in their order: in this
    process when ``args.workers`` is 1, else in that many worker processes (started with
    ``spawn``, ``args.threads`` torch threads each), printing a line as each one finishes."""
    data_key = getattr(args, "data", None) or "mnist10k"
    workers = min(args.workers, len(jobs))
    runs: List[Optional[Dict[str, Any]]] = [None] * len(jobs)
    if workers <= 1:
        for i, (seed, name, noise, early_exit) in enumerate(jobs):
            runs[i] = _demo_job(data_key, args, seed, name, noise, early_exit, show)
            print(_job_line(runs[i], name, i + 1, len(jobs)), flush=True)
        return runs
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(args.threads,)
    ) as pool:
        futures = {
            pool.submit(_demo_job, data_key, args, seed, name, noise, early_exit, False): i
            for i, (seed, name, noise, early_exit) in enumerate(jobs)
        }
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            runs[i] = future.result()
            print(_job_line(runs[i], jobs[i][1], done, len(jobs)), flush=True)
    return runs


def _demo(args, data: Dict[str, Any], t0: float, show: bool) -> int:
    from ..nn import format_tradeoff

    Ts = DEMO_TS
    energy_T = DEMO_ENERGY_T
    train, test = data["split"]()
    if args.test_limit:
        test = first_images(test, args.test_limit)
    seeds = list(range(args.seed, args.seed + args.seeds))
    jobs = [(seed, name, noise, seed == seeds[0]) for seed in seeds for name, noise in DEMO_VARIANTS]
    workers = min(args.workers, len(jobs))
    print(
        f"na-kernels demo: {data['title']}, {len(train)} train / {len(test)} held-out test images; "
        f"{data['network']}, p = {args.p} activation levels, {args.epochs} epoch(s) of "
        f"{'Adam' if args.optimizer == 'adam' else 'SGD'} (lr {args.lr:g}), "
        f"seed(s) {', '.join(map(str, seeds))}, {args.threads} thread(s)"
        f"{f' in each of {workers} worker processes' if workers > 1 else ''}{' (quick)' if args.quick else ''}",
        flush=True,
    )
    results = [{"name": name, "noise": noise, "runs": []} for name, noise in DEMO_VARIANTS]
    for (_, name, _, _), run in zip(jobs, _run_jobs(args, jobs, show)):
        next(r for r in results if r["name"] == name)["runs"].append(run)
    for r in results:
        r["summary"] = summarize(r["runs"], Ts)
    noisy, qcfs = results
    diff = paired_difference(noisy["runs"], qcfs["runs"], Ts)
    finding = describe(noisy["summary"], qcfs["summary"], diff, Ts)
    table = _demo_table(results, Ts, energy_T)
    print()
    print(
        "Test accuracy (%) of the ANN, of its clipped network (limit: every activation clamp(x, 0, λ), "
        "the SNN's T -> infinity limit) and of the converted SNN after T time steps"
        + (f"; mean over seeds {seeds[0]}..{seeds[-1]}, then min..max" if len(seeds) > 1 else "")
        + ";"
    )
    print(
        f"rate = spikes per neuron per step (T={max(Ts)}); energy = estimated SNN/ANN energy per image at "
        f"T={energy_T} (0.9 pJ/AC, 4.6 pJ/MAC)"
    )
    print(table)
    print(
        "noise minus QCFS, same seed (points): "
        + ", ".join(
            f"{'T=' + str(T) if T != 'limit' else 'limit'} {_range(diff[T], sign=True)}" for T in list(Ts) + ["limit"]
        )
    )
    print(f"(one test image = {100 / len(test):.2f} points)")
    print()
    print(finding)
    if args.exit_confidence:
        print()
        print(
            f"Per-sample early exit (seed {seeds[0]}, T_max = {max(Ts)}): each image stops at the first step "
            "where the top softmax probability of its mean logits reaches the threshold; the fixed-T columns "
            "are the same SNN run for a fixed number of steps"
        )
        for r in results:
            print(f"{r['name']}:")
            print(format_tradeoff(r["runs"][0]["early_exit"], r["runs"][0]["curve"]))
    os.makedirs(args.out, exist_ok=True)

    def key(d):  # JSON keys are strings
        return {str(k): v for k, v in d.items()}

    report = {
        "command": "na-kernels demo",
        "version": __version__,
        "seeds": seeds,
        "quick": bool(args.quick),
        "dataset": {"name": data["title"], "train": len(train), "test": len(test), "licence": data["licence"]},
        "model": data["arch"],
        "p": args.p,
        "lam_init": args.lam,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        **({"momentum": 0.9, "weight_decay": 5e-4} if args.optimizer == "sgd" else {"weight_decay": 0.0}),
        "T": list(Ts),
        "energy_T": energy_T,
        "exit_confidence": list(args.exit_confidence),
        "results": [
            {
                "name": r["name"],
                "noise": r["noise"],
                "summary": {**{k: v for k, v in r["summary"].items() if k != "snn"}, "snn": key(r["summary"]["snn"])},
                "runs": [{**run, "acc": key(run["acc"])} for run in r["runs"]],
            }
            for r in results
        ],
        "noise_minus_qcfs": key(diff),
        "finding": finding,
        "table": table,
        "torch_threads": torch.get_num_threads(),
    }
    json_path = os.path.join(args.out, "demo_report.json")
    png = (
        None
        if args.no_plot
        else _demo_plot(
            results, diff, os.path.join(args.out, "demo_accuracy_vs_T.png"), Ts, args.p, data["title"], seeds
        )
    )
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
