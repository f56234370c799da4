"""``na-kernels``: the command line.

    na-kernels demo [--out DIR] [--seed N] [--quick]      offline demo on the bundled digits
    na-kernels train --dataset cifar10 --data-dir D --arch resnet20 --p 3 --noise uniform
    na-kernels evaluate --checkpoint runs/x/last.pt [--data-dir D]
    na-kernels convert --checkpoint runs/x/last.pt [--data-dir D] --T 32 [--report r.json]
    torchrun --nproc_per_node N -m na_kernels.cli train ...   (or the na-kernels script)

Run ``na-kernels <command> --help`` for the options.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from . import __version__
from .datasets import DATASETS, BatchLoader, DatasetError, ImageData, digits_split, load_dataset
from .models import MODELS
from ._spec import Noise
from ._validation import check_clip_level, check_int, check_levels, check_positive, check_real, check_time_steps
from .train import (_MIN_LAM, CheckpointError, ConfigError, TrainConfig, build_network, check_output_path,
                    check_run_seed, evaluate, evaluate_snn, fit, load_checkpoint, make_optimizer, make_scheduler,
                    network_from_checkpoint, parse_device, train_epoch)

DEMO_TS = (1, 2, 4, 8, 16, 32)
DEMO_VARIANTS = (("NoisyQuant (uniform noise)", Noise.UNIFORM.label), ("QCFS (no noise)", Noise.NONE.label))


def _err(msg: str) -> None:
    print(f"na-kernels: error: {msg}", file=sys.stderr)


def _pct(x: Optional[float]) -> str:
    return "  -  " if x is None else f"{100 * x:5.1f}"


# ----------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------


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


def _snn_eval(model, test: ImageData, Ts: Sequence[int], batch_size: int, show: bool, desc: str) -> Dict[str, Any]:
    """Run the converted network once per T in Ts (statistics per T); the largest T's run
    gives the accuracy at every t <= T (the running mean at t is a t-step run)."""
    from .nn import to_snn

    snn = to_snn(model, max(Ts))
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


def _demo_table(results: List[Dict[str, Any]], Ts: Sequence[int], energy_T: int) -> str:
    head = ["model", "ANN"] + [f"T={T}" for T in Ts] + ["rate", f"energy@T={energy_T}"]
    rows = []
    for r in results:
        rows.append([r["name"], _pct(r["ann_acc"])] + [_pct(r["snn"]["per_T"][T]["acc"]) for T in Ts]
                    + [f"{r['snn']['per_T'][max(Ts)]['firing_rate']:.3f}",
                       f"{r['snn']['per_T'][energy_T]['energy_ratio']:.2f}x ANN"])
    widths = [max(len(str(row[i])) for row in [head] + rows) for i in range(len(head))]
    fmt = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    lines = [fmt(head), "-" * len(fmt(head))] + [fmt(row) for row in rows]
    return "\n".join(lines)


def _demo_plot(results, path: str, Ts: Sequence[int]) -> Optional[str]:
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
        ax2.plot(Ts, [r["snn"]["per_T"][T]["energy_ratio"] for T in Ts], "o-", color=color, label=r["name"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(Ts), [str(T) for T in Ts])
    ax.set_xlabel("time steps T")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("SNN accuracy vs time steps (8x8 digits)")
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
    """``na-kernels demo``: NoisyQuant vs QCFS on the bundled digits, ANN vs SNN at T = 1..32."""
    t0 = time.time()
    if args.quick:
        args.epochs = args.epochs or 3
        args.test_limit = args.test_limit or 200
    args.epochs = args.epochs or 15
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
        t2 = time.time()
        snn = _snn_eval(model, test, Ts, args.eval_batch_size, show, f"SNN {name}")
        lams = [float(m.lam.detach()) for m in model.modules() if hasattr(m, "raw_lam")]
        results.append({"name": name, "noise": noise, "ann_acc": ann_acc, "snn": snn, "lambda": lams,
                        "history": trained["history"], "train_s": t_train, "snn_eval_s": time.time() - t2})

    table = _demo_table(results, Ts, energy_T)
    elapsed = time.time() - t0
    print()
    print("Test accuracy (%) of the ANN and of the converted SNN after T time steps;")
    print(f"rate = spikes per neuron per step (T={max(Ts)}); energy = estimated SNN/ANN energy per image at T={energy_T} "
          "(0.9 pJ/AC, 4.6 pJ/MAC)")
    print(table)
    for r in results:
        r["first_T_within_1pt"] = next((T for T in Ts if r["snn"]["per_T"][T]["acc"] >= r["ann_acc"] - 0.01), None)
    print("first T at which the SNN is within 1 point of its ANN: " + ", ".join(
        f"{r['name']} T={r['first_T_within_1pt'] or '>' + str(max(Ts))}" for r in results))
    print(f"(one test image = {100 / len(test):.2f} points)")
    os.makedirs(args.out, exist_ok=True)
    report = {
        "command": "na-kernels demo", "version": __version__, "seed": args.seed, "quick": bool(args.quick),
        "dataset": {"name": "UCI optical recognition of handwritten digits (8x8)", "train": len(train),
                    "test": len(test), "licence": "CC BY 4.0, see na_kernels/data/DIGITS_LICENSE.txt"},
        "model": "DigitsCNN", "p": args.p, "lam_init": args.lam, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4, "T": list(Ts), "energy_T": energy_T,
        "results": [{k: (v if k != "snn" else {"per_T": {str(T): d for T, d in v["per_T"].items()},
                                               "acc_every_t": v["curve"]})
                     for k, v in r.items()} for r in results],
        "table": table, "elapsed_s": elapsed,
        "torch_threads": torch.get_num_threads(),
    }
    json_path = os.path.join(args.out, "demo_report.json")
    png = None if args.no_plot else _demo_plot(results, os.path.join(args.out, "demo_accuracy_vs_T.png"), Ts)
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


# ----------------------------------------------------------------------------------------
# train / evaluate / convert
# ----------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    """``na-kernels train``: :func:`na_kernels.train.fit` with the options as a TrainConfig."""
    resume = args.resume
    if resume == "auto":
        resume = os.path.join(args.out, "last.pt")
    try:  # each option is checked by its argparse type; what is left are rules between options
        cfg = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, arch=args.arch, p=args.p, noise=args.noise,
                          lam=args.lam, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          momentum=args.momentum, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                          augment=not args.no_augment, amp=not args.no_amp, seed=args.seed, out=args.out,
                          resume=resume, device=args.device, progress=not args.no_progress,
                          max_steps_per_epoch=args.max_steps_per_epoch, stop_after=args.stop_after,
                          overwrite=args.overwrite)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    summary = fit(cfg)
    if summary["rank"] == 0 and summary["history"]:
        print(f"final test accuracy {100 * summary['test_acc']:.2f}%  checkpoint: {summary['checkpoint']}")
        best = summary["best"]
        print(f"best test accuracy {100 * best['test_acc']:.2f}% (epoch {best['epoch']}): {best['checkpoint']}; "
              f"metrics: {os.path.join(args.out, 'metrics.json')}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _checkpoint_model_and_test_data(args):
    """(checkpoint state, its network on the chosen device, the device, the test split)."""
    state = load_checkpoint(args.checkpoint)
    device = torch.device(parse_device(args.device) or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = network_from_checkpoint(state).to(device)
    cfg = state["config"]
    test = load_dataset(cfg["dataset"], args.data_dir or cfg.get("data_dir"), train=False)
    return state, model, device, test


def cmd_evaluate(args) -> int:
    """``na-kernels evaluate``: test accuracy of a checkpoint's quantized ANN (noise off)."""
    state, model, device, test = _checkpoint_model_and_test_data(args)
    acc = evaluate(model, BatchLoader(test, args.batch_size, device=device), amp=not args.no_amp,
                   show_progress=not args.no_progress)
    cfg = state["config"]
    print(f"{cfg['arch']} p={cfg['p']} noise={cfg['noise']} epoch {state['epoch']}: "
          f"{cfg['dataset']} test accuracy (quantized ANN, no noise) {100 * acc:.2f}% on {len(test)} images")
    return 0


def cmd_convert(args) -> int:
    """``na-kernels convert``: a checkpoint as an SNN: accuracy at every t <= T, spikes, energy."""
    from .nn import to_snn

    exit_rules = _exit_rules(args)
    state, model, device, test = _checkpoint_model_and_test_data(args)
    loader = BatchLoader(test, args.batch_size, device=device)
    ann_acc = evaluate(model, loader, amp=False, show_progress=False)
    snn = to_snn(model, args.T, chunk=args.chunk).to(device)
    acc = evaluate_snn(snn, loader, desc=f"SNN T={args.T}", show_progress=not args.no_progress)
    stats = snn.statistics()
    cfg = state["config"]
    print(f"{cfg['arch']} p={cfg['p']} noise={cfg['noise']} on {cfg['dataset']} ({len(test)} test images): "
          f"ANN {100 * ann_acc:.2f}%")
    shown = sorted({t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if t <= args.T} | {args.T})
    print("T:    " + "  ".join(f"{t:>6d}" for t in shown))
    print("SNN:  " + "  ".join(f"{100 * acc[t - 1]:5.2f}%" for t in shown))
    print(snn.statistics_table())
    early_exit = _convert_early_exit(args, snn, loader, acc, exit_rules)
    if args.report:
        os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
        with open(args.report, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "config": cfg, "epoch": state["epoch"], "T": args.T,
                       "ann_acc": ann_acc, "snn_acc_every_t": acc, "statistics": stats, "early_exit": early_exit},
                      f, indent=2, default=str)
        print(f"report: {args.report}")
    return 0


def _exit_rules(args) -> list:
    """The early-exit rules of ``convert``'s --exit-* options: one per confidence x margin given
    (an empty list without --exit-confidence / --exit-margin)."""
    from .nn import ExitRule

    confidences, margins = args.exit_confidence or [None], args.exit_margin or [None]
    if args.exit_confidence is None and args.exit_margin is None:
        if args.exit_min_steps is not None:
            raise ConfigError("--exit-min-steps needs --exit-confidence and/or --exit-margin")
        return []
    min_steps = args.exit_min_steps or 1
    if min_steps > args.T:
        raise ConfigError(f"--exit-min-steps ({min_steps}) must be <= --T ({args.T})")
    return [ExitRule(confidence=c, margin=m, min_steps=min_steps) for c in confidences for m in margins]


def _convert_early_exit(args, snn, loader, acc, rules) -> Optional[list]:
    """``convert`` with --exit-*: one early-exit run per rule over the test set (T_max = --T,
    chunk = --chunk or 1), printed as the accuracy / mean-exit-step table next to the fixed-T
    curve ``acc``; returns the rows (None without rules)."""
    from .nn import exit_tradeoff, format_tradeoff

    if not rules:
        return None
    rows = exit_tradeoff(snn, loader, rules, T_max=args.T, chunk=args.chunk or 1,
                         show_progress=not args.no_progress)
    print(f"\nEarly exit (per sample, T_max = {args.T}; energy over the steps actually run), "
          f"against the fixed-T run:")
    print(format_tradeoff(rows, acc))
    return rows


# ----------------------------------------------------------------------------------------
# argument parsing
# ----------------------------------------------------------------------------------------


def _checked(check, words: Sequence[str] = ()):
    """An argparse type: the text as a number (int, else float), checked by a ``_validation`` rule
    (``words``: texts passed to the rule as they are, e.g. "auto")."""

    def parse(text: str):
        if text in words:
            value: Any = text
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    also = "".join(f" or {w!r}" for w in words)
                    raise argparse.ArgumentTypeError(f"not a number{also}: {text!r}") from None
        try:
            return check(value)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _count(name: str, minimum: int = 1):
    return _checked(lambda value: check_int(name, value, minimum=minimum))


def _positive(name: str):
    return _checked(lambda value: check_positive(name, value))


def _real(name: str, minimum: float):
    return _checked(lambda value: check_real(name, value, minimum=minimum))


def _as_is(check):
    """An argparse type for a text option, checked by ``check`` (its ValueError as the message)."""

    def parse(text: str):
        try:
            return check(text)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


_levels = _checked(check_levels)
# NoisyQuant's initial λ: a number above its floor, or "auto" (the 99.9th percentile of the first batch)
_lam = _checked(lambda value: check_clip_level(value, min_lam=_MIN_LAM), words=("auto",))
_device = _as_is(lambda text: parse_device(text, ""))


def _steps(name: str):
    return _checked(lambda value: check_time_steps(name, value))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already states it (or the
    default is nothing to show: a flag's False, an option's None)."""

    def _get_help_string(self, action):
        help = action.help or ""
        if ("default" in help or not action.option_strings or action.default is argparse.SUPPRESS
                or action.default is None or action.default is False or isinstance(action, argparse._VersionAction)):
            return help
        return (help + " " if help else "") + "(default: %(default)s)"

    def _format_action(self, action):
        if not action.help and self._get_help_string(action):  # an option without help: still show its default
            action = copy.copy(action)
            action.help = self._get_help_string(action)
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    """The CLI's parsers: defaults in every help text."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

def _exit_probability(name: str):
    """An argparse type for an ExitRule threshold (``confidence`` / ``margin``), checked by ExitRule."""

    def check(value):
        from .nn import ExitRule

        return getattr(ExitRule(**{name: value}), name)

    return _checked(check)


def build_parser() -> argparse.ArgumentParser:
    """The ``na-kernels`` argument parser (options checked with the rules of ``_validation``)."""
    parser = _Parser(prog="na-kernels", description=(
        "Noise-injected low-bit ANN training and ANN-to-SNN conversion with fused kernels."))
    parser.add_argument("--version", action="version", version=f"na_kernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)

    d = sub.add_parser("demo", help="offline demo on the bundled 8x8 digits: NoisyQuant vs QCFS, ANN vs SNN",
                       description="Train the same small CNN twice on the bundled 8x8 UCI digits (NoisyQuant "
                                   "uniform noise, and no noise = QCFS) at the same p, convert both to SNNs and "
                                   "report accuracy at T = 1..32, firing rate and estimated energy.")
    d.add_argument("--out", default="na_kernels_demo", help="folder for the JSON report and the plot "
                                                            "(default: ./na_kernels_demo)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--quick", action="store_true", help="a few seconds: 3 epochs, 200 test images")
    d.add_argument("--p", type=_levels, default=3, help="activation levels (default 3 = 2-bit)")
    d.add_argument("--lam", type=_lam, default=2.0, help="initial clip λ (default 2.0)")
    d.add_argument("--epochs", type=_count("epochs"), default=None, help="training epochs (default 15, quick 3)")
    d.add_argument("--batch-size", type=_count("batch_size"), default=32)
    d.add_argument("--eval-batch-size", type=_count("eval_batch_size"), default=128)
    d.add_argument("--lr", type=float, default=0.05)
    d.add_argument("--test-limit", type=_count("test_limit"), default=None, help=argparse.SUPPRESS)
    d.add_argument("--threads", type=_count("threads"), default=1, help="torch CPU threads (default 1)")
    d.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a network with NoisyQuant activations on MNIST / CIFAR",
                       description="Train with the published recipe (SGD momentum 0.9, lr 0.1, weight decay "
                                   "5e-4, cosine schedule, random crop + flip). Launch with torchrun for "
                                   "DistributedDataParallel (one process per GPU; each rank its own noise).")
    t.add_argument("--dataset", choices=DATASETS, required=True, help="the dataset (digits is bundled)")
    t.add_argument("--data-dir", default=None, help="folder with the dataset files (not needed for digits)")
    t.add_argument("--arch", choices=sorted(MODELS), default="resnet20", help="the network")
    t.add_argument("--p", type=_levels, default=3, help="activation levels: 3, 7, 15 = 2, 3, 4 bit")
    t.add_argument("--noise", choices=Noise.labels(), default="uniform", help="'none' = QCFS")
    t.add_argument("--lam", type=_lam, default="auto",
                   help="initial clip λ of every activation: a number, or 'auto': each λ is set to the 99.9th "
                        "percentile of its first training batch (default: auto; a fixed λ = 8 stays "
                        "near chance for the first epochs at p = 3)")
    t.add_argument("--epochs", type=_count("epochs"), default=300, help="training epochs (the cosine schedule's length)")
    t.add_argument("--batch-size", type=_count("batch_size"), default=128, help="images per step, per process")
    t.add_argument("--lr", type=_positive("lr"), default=0.1, help="peak SGD learning rate")
    t.add_argument("--momentum", type=_real("momentum", 0.0), default=0.9, help="SGD momentum")
    t.add_argument("--weight-decay", type=_real("weight_decay", 0.0), default=5e-4,
                   help="L2 weight decay (not on biases, BatchNorm and λ)")
    t.add_argument("--warmup-epochs", type=_count("warmup_epochs", 0), default=0, help="linear warmup epochs")
    t.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on GPU")
    t.add_argument("--seed", type=_checked(check_run_seed), default=0,
                   help="random seed (weights, data order, noise), 0 .. 2**32 - 1")
    t.add_argument("--out", default="runs/na_kernels",
                   help="folder for last.pt (every epoch), best.pt (best test accuracy so far; selected on the "
                        "test split) and metrics.json (loss, accuracy, lr per epoch)")
    t.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (without a path: <out>/last.pt)")
    t.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that already holds a run (else that is refused)")
    t.add_argument("--stop-after", type=_count("stop_after"), default=None,
                   help="stop after this epoch (the schedule still spans --epochs; continue with --resume)")
    t.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    t.add_argument("--max-steps-per-epoch", type=_count("max_steps_per_epoch"), default=None, help=argparse.SUPPRESS)
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    for name, helptext in (("evaluate", "test accuracy of a checkpoint (the quantized ANN, noise off)"),
                           ("convert", "convert a checkpoint to an SNN; accuracy at every t <= T, spikes, energy")):
        description = helptext
        if name == "convert":
            description += (". Conversion is deterministic and takes a second, so the checkpoint is the artifact; "
                            "in Python: na_kernels.nn.to_snn(na_kernels.train.network_from_checkpoint("
                            "na_kernels.train.load_checkpoint(path)), T)")
        c = sub.add_parser(name, help=helptext, description=description)
        c.add_argument("--checkpoint", required=True, help="a checkpoint written by na-kernels train")
        c.add_argument("--data-dir", default=None, help="dataset folder (default: the one it was trained on)")
        c.add_argument("--batch-size", type=_count("batch_size"), default=256, help="images per batch")
        c.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
        c.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "evaluate":
            c.add_argument("--no-amp", action="store_true", help="no bf16 autocast on GPU")
            c.set_defaults(func=cmd_evaluate)
        else:
            c.add_argument("--T", type=_steps("T"), default=32, help="time steps")
            c.add_argument("--chunk", type=_steps("chunk"), default=None,
                           help="steps per kernel call (less memory; default: all T at once)")
            c.add_argument("--report", type=_as_is(lambda text: check_output_path(text, "", folder=False)),
                           default=None, help="write a JSON report to this file")
            c.add_argument("--exit-confidence", type=_exit_probability("confidence"), nargs="+", default=None,
                           metavar="C", help="per-sample early exit when the top softmax probability of the "
                                             "mean logits reaches C; several values: a sweep")
            c.add_argument("--exit-margin", type=_exit_probability("margin"), nargs="+", default=None,
                           metavar="M", help="early exit when the top-two probability margin reaches M "
                                             "(with --exit-confidence: both must hold; one row per pair)")
            c.add_argument("--exit-min-steps", type=_steps("exit_min_steps"), default=None,
                           help="no early exit before this step (default: 1)")
            c.set_defaults(func=cmd_convert)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``na-kernels`` with ``argv``; returns the exit status (2 for a bad option, data, checkpoint or
    run setting: one ``na-kernels: error: ...`` line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (DatasetError, CheckpointError, ConfigError) as e:
        _err(str(e))
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
