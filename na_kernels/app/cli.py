"""``na-kernels``: the command line.

    na-kernels demo [--out DIR] [--seeds N] [--quick]     offline demo on the bundled digits
    na-kernels train --dataset cifar10 --data-dir D --arch resnet20 --p 3 --noise uniform
    na-kernels evaluate --checkpoint runs/x/last.pt [--data-dir D]
    na-kernels convert --checkpoint runs/x/last.pt [--data-dir D] --T 32 [--report r.json] [--save net.snn]
    torchrun --nproc_per_node N -m na_kernels.app.cli train ...   (or the na-kernels script)

Run ``na-kernels <command> --help`` for the options.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Any, Optional, Sequence

from .. import __version__

# Every other module of the package imports torch (a second or more): they are imported where a
# command or an option needs them, so `na-kernels --help` answers without loading torch.


def _err(msg: str) -> None:
    print(f"na-kernels: error: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------------------
# train / evaluate / convert
# ----------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    """``na-kernels train``: :func:`na_kernels.app.train.fit` with the options as a TrainConfig."""
    import torch

    from .train import ConfigError, TrainConfig, fit

    resume = args.resume
    if resume == "auto":
        resume = os.path.join(args.out, "last.pt")
    try:  # each option is checked by its argparse type; what is left are rules between options
        cfg = TrainConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            arch=args.arch,
            p=args.p,
            noise=args.noise,
            lam=args.lam,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs,
            augment=not args.no_augment,
            amp=not args.no_amp,
            seed=args.seed,
            out=args.out,
            resume=resume,
            device=args.device,
            progress=not args.no_progress,
            max_steps_per_epoch=args.max_steps_per_epoch,
            stop_after=args.stop_after,
            overwrite=args.overwrite,
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    summary = fit(cfg)
    if summary["rank"] == 0 and summary["history"]:
        print(f"final test accuracy {100 * summary['test_acc']:.2f}%  checkpoint: {summary['checkpoint']}")
        best = summary["best"]
        print(
            f"best test accuracy {100 * best['test_acc']:.2f}% (epoch {best['epoch']}): {best['checkpoint']}; "
            f"metrics: {os.path.join(args.out, 'metrics.json')}"
        )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _checkpoint_model_and_test_data(args):
    """(checkpoint state, its network on the chosen device, the device, the test split)."""
    import torch

    from .datasets import load_dataset
    from .train import load_checkpoint, network_from_checkpoint, parse_device

    state = load_checkpoint(args.checkpoint)
    device = torch.device(parse_device(args.device) or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = network_from_checkpoint(state).to(device)
    cfg = state["config"]
    test = load_dataset(cfg["dataset"], args.data_dir or cfg.get("data_dir"), train=False)
    return state, model, device, test


def cmd_evaluate(args) -> int:
    """``na-kernels evaluate``: test accuracy of a checkpoint's quantized ANN (noise off) and of its clipped network."""
    from ..nn import clipped_network
    from .datasets import BatchLoader
    from .train import evaluate

    state, model, device, test = _checkpoint_model_and_test_data(args)
    acc = evaluate(
        model,
        BatchLoader(test, args.batch_size, device=device),
        amp=not args.no_amp,
        show_progress=not args.no_progress,
    )
    limit_acc = evaluate(
        clipped_network(model),
        BatchLoader(test, args.batch_size, device=device),
        amp=not args.no_amp,
        show_progress=False,
    )
    cfg = state["config"]
    print(
        f"{cfg['arch']} p={cfg['p']} noise={cfg['noise']} epoch {state['epoch']}: "
        f"{cfg['dataset']} test accuracy (quantized ANN, no noise) {100 * acc:.2f}% on {len(test)} images; "
        f"its clipped network (the SNN's T -> infinity limit) {100 * limit_acc:.2f}%"
    )
    return 0


def cmd_convert(args) -> int:
    """``na-kernels convert``: a checkpoint as an SNN: accuracy at every t <= T, spikes, energy."""
    from ..nn import clipped_network, to_snn
    from .datasets import BatchLoader
    from .train import ConfigError, evaluate, evaluate_snn

    exit_rules = _exit_rules(args)
    state, model, device, test = _checkpoint_model_and_test_data(args)
    loader = BatchLoader(test, args.batch_size, device=device)
    ann_acc = evaluate(model, loader, amp=False, show_progress=False)
    limit_acc = evaluate(clipped_network(model), loader, amp=False, show_progress=False)
    snn = to_snn(model, args.T, chunk=args.chunk).to(device)
    if args.save:
        from ..nn import SerializationError

        try:
            snn.save(args.save)  # before any run: the file holds no statistics
        except (SerializationError, OSError) as error:
            raise ConfigError(f"--save {args.save}: {error}") from None
        print(f"saved the SNN to {args.save} (na_kernels.nn.load_snn reads it without the model's code)")
    acc = evaluate_snn(snn, loader, desc=f"SNN T={args.T}", show_progress=not args.no_progress)
    stats = snn.statistics()
    cfg = state["config"]
    print(
        f"{cfg['arch']} p={cfg['p']} noise={cfg['noise']} on {cfg['dataset']} ({len(test)} test images): "
        f"ANN {100 * ann_acc:.2f}%, clipped network (the SNN's T -> infinity limit) {100 * limit_acc:.2f}%"
    )
    shown = sorted({t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if t <= args.T} | {args.T})
    print("T:    " + "  ".join(f"{t:>6d}" for t in shown))
    print("SNN:  " + "  ".join(f"{100 * acc[t - 1]:5.2f}%" for t in shown))
    print(snn.statistics_table())
    early_exit = _convert_early_exit(args, snn, loader, acc, exit_rules)
    if args.report:
        os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
        with open(args.report, "w") as f:
            json.dump(
                {
                    "checkpoint": args.checkpoint,
                    "config": cfg,
                    "epoch": state["epoch"],
                    "T": args.T,
                    "ann_acc": ann_acc,
                    "limit_acc": limit_acc,
                    "snn_acc_every_t": acc,
                    "statistics": stats,
                    "early_exit": early_exit,
                },
                f,
                indent=2,
                default=str,
            )
        print(f"report: {args.report}")
    return 0


def _exit_rules(args) -> list:
    """The early-exit rules of ``convert``'s --exit-* options: one per confidence x margin given
    (an empty list without --exit-confidence / --exit-margin)."""
    from ..nn import ExitRule
    from .train import ConfigError

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
    from ..nn import exit_tradeoff, format_tradeoff

    if not rules:
        return None
    rows = exit_tradeoff(snn, loader, rules, T_max=args.T, chunk=args.chunk or 1, show_progress=not args.no_progress)
    print(f"\nEarly exit (per sample, T_max = {args.T}; energy over the steps actually run), against the fixed-T run:")
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
    from .._validation import check_int

    return _checked(lambda value: check_int(name, value, minimum=minimum))


def _positive(name: str):
    from .._validation import check_positive

    return _checked(lambda value: check_positive(name, value))


def _real(name: str, minimum: float):
    from .._validation import check_real

    return _checked(lambda value: check_real(name, value, minimum=minimum))


def _as_is(check):
    """An argparse type for a text option, checked by ``check`` (its ValueError as the message)."""

    def parse(text: str):
        try:
            return check(text)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _steps(name: str):
    from .._validation import check_time_steps

    return _checked(lambda value: check_time_steps(name, value))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already states it (or the
    default is nothing to show: a flag's False, an option's None)."""

    def _get_help_string(self, action):
        help = action.help or ""
        if (
            "default" in help
            or not action.option_strings
            or action.default is argparse.SUPPRESS
            or action.default is None
            or action.default is False
            or isinstance(action, argparse._VersionAction)
        ):
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
        from ..nn import ExitRule

        return getattr(ExitRule(**{name: value}), name)

    return _checked(check)


# the commands and their one-line help, as `na-kernels --help` lists them
_COMMANDS = {
    "demo": "offline demo on bundled digits: NoisyQuant vs QCFS, ANN vs clipped network vs SNN, over several seeds",
    "train": "train a network with NoisyQuant activations on MNIST / CIFAR",
    "evaluate": "test accuracy of a checkpoint (the quantized ANN, noise off)",
    "convert": "convert a checkpoint to an SNN; accuracy at every t <= T, spikes, energy",
}


def _top_parser():
    """The ``na-kernels`` parser and its subparsers' action, before any command is added."""
    parser = _Parser(
        prog="na-kernels",
        description=("Noise-injected low-bit ANN training and ANN-to-SNN conversion with fused kernels."),
    )
    parser.add_argument("--version", action="version", version=f"na_kernels {__version__}")
    return parser, parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)


def _command_list_parser() -> argparse.ArgumentParser:
    """The ``na-kernels`` parser with each command listed but none of their options: it answers
    ``--help``, ``--version`` and a mistyped command without importing torch."""
    parser, sub = _top_parser()
    for name, helptext in _COMMANDS.items():
        sub.add_parser(name, help=helptext)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``na-kernels`` argument parser (options checked with the rules of ``_validation``)."""
    from .._spec import Noise
    from .._validation import check_clip_level, check_levels
    from .datasets import DATASETS
    from .demo import cmd_demo
    from .models import MODELS
    from .train import _MIN_LAM, check_output_path, check_run_seed, parse_device

    _levels = _checked(check_levels)
    # NoisyQuant's initial λ: a number above its floor, or "auto" (the 99.9th percentile of the first batch)
    _lam = _checked(lambda value: check_clip_level(value, min_lam=_MIN_LAM), words=("auto",))
    _device = _as_is(lambda text: parse_device(text, ""))
    parser, sub = _top_parser()

    d = sub.add_parser(
        "demo",
        help=_COMMANDS["demo"],
        description="Train the same small CNN on bundled digits (default: 10,000 28x28 MNIST digits) "
        "with NoisyQuant's uniform noise and without noise (QCFS) at the same p, for "
        "several seeds; convert each to an SNN and report the ANN, its clipped network "
        "(the SNN's T -> infinity limit) and the SNN at T = 1..64 as the mean and "
        "min..max over the seeds, noise minus QCFS seed by seed, and one sentence "
        "saying what the run shows.",
    )
    d.add_argument(
        "--out", default="na_kernels_demo", help="folder for the JSON report and the plot (default: ./na_kernels_demo)"
    )
    d.add_argument(
        "--data",
        choices=("mnist10k", "digits"),
        default="mnist10k",
        help="bundled data: 10,000 28x28 MNIST digits, or the 1797 8x8 UCI digits",
    )
    d.add_argument("--seed", type=_checked(check_run_seed), default=0, help="the first random seed")
    d.add_argument(
        "--seeds", type=_count("seeds"), default=None, help="how many seeds (seed, seed + 1, ...) (default 3, quick 1)"
    )
    d.add_argument("--quick", action="store_true", help="seconds: 1 seed, 1 epoch, 300 test images")
    d.add_argument(
        "--p", type=_levels, default=None, help="activation levels (default: mnist10k 1 = 1-bit, digits 3 = 2-bit)"
    )
    d.add_argument("--lam", type=_lam, default=2.0, help="initial clip λ (default 2.0)")
    d.add_argument(
        "--epochs",
        type=_count("epochs"),
        default=None,
        help="training epochs (default: mnist10k 3, digits 15; quick 1)",
    )
    d.add_argument("--batch-size", type=_count("batch_size"), default=32, help="training images per step")
    d.add_argument(
        "--eval-batch-size",
        type=_count("eval_batch_size"),
        default=16,
        help="images per SNN batch (small: the SNN's [T, batch, ...] tensors stay small enough for the "
        "allocator to reuse, where large ones are mapped and page-faulted anew each batch)",
    )
    d.add_argument(
        "--optimizer",
        choices=("adam", "sgd"),
        default=None,
        help="adam: Adam, no weight decay; sgd: SGD, momentum 0.9, weight decay 5e-4 on the weights "
        "(default: mnist10k adam, digits sgd)",
    )
    d.add_argument("--lr", type=_positive("lr"), default=None, help="learning rate (default: adam 0.001, sgd 0.05)")
    d.add_argument("--test-limit", type=_count("test_limit"), default=None, help=argparse.SUPPRESS)
    d.add_argument(
        "--threads",
        type=_count("threads"),
        default=1,
        help="torch CPU threads (default 1: the small CNN gains little from more, and their spin-waits "
        "cost several times the CPU time on a busy machine)",
    )
    d.add_argument(
        "--workers",
        type=_count("workers"),
        default=None,
        help="worker processes, each training and evaluating one (seed, variant) at a time "
        "(default: 2, or 1 on a one-CPU machine); the numbers do not depend on it",
    )
    d.add_argument(
        "--exit-confidence",
        type=_exit_probability("confidence"),
        nargs="*",
        default=None,
        metavar="C",
        help="per-sample early exit thresholds to sweep (top softmax probability; no value: none) "
        "(default: 0.9 0.99, on the first seed's SNNs)",
    )
    d.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser(
        "train",
        help=_COMMANDS["train"],
        description="Train with the published recipe (SGD momentum 0.9, lr 0.1, weight decay "
        "5e-4, cosine schedule, random crop + flip). Launch with torchrun for "
        "DistributedDataParallel (one process per GPU; each rank its own noise).",
    )
    t.add_argument("--dataset", choices=DATASETS, required=True, help="the dataset (digits and mnist10k are bundled)")
    t.add_argument("--data-dir", default=None, help="folder with the dataset files (not needed for digits, mnist10k)")
    t.add_argument("--arch", choices=sorted(MODELS), default="resnet20", help="the network")
    t.add_argument("--p", type=_levels, default=3, help="activation levels: 3, 7, 15 = 2, 3, 4 bit")
    t.add_argument("--noise", choices=Noise.labels(), default="uniform", help="'none' = QCFS")
    t.add_argument(
        "--lam",
        type=_lam,
        default="auto",
        help="initial clip λ of every activation: a number, or 'auto': each λ is set to the 99.9th "
        "percentile of its first training batch (default: auto; a fixed λ = 8 stays "
        "near chance for the first epochs at p = 3)",
    )
    t.add_argument(
        "--epochs", type=_count("epochs"), default=300, help="training epochs (the cosine schedule's length)"
    )
    t.add_argument("--batch-size", type=_count("batch_size"), default=128, help="images per step, per process")
    t.add_argument("--lr", type=_positive("lr"), default=0.1, help="peak SGD learning rate")
    t.add_argument("--momentum", type=_real("momentum", 0.0), default=0.9, help="SGD momentum")
    t.add_argument(
        "--weight-decay",
        type=_real("weight_decay", 0.0),
        default=5e-4,
        help="L2 weight decay (not on biases, BatchNorm and λ)",
    )
    t.add_argument("--warmup-epochs", type=_count("warmup_epochs", 0), default=0, help="linear warmup epochs")
    t.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on GPU")
    t.add_argument(
        "--seed",
        type=_checked(check_run_seed),
        default=0,
        help="random seed (weights, data order, noise), 0 .. 2**32 - 1",
    )
    t.add_argument(
        "--out",
        default="runs/na_kernels",
        help="folder for last.pt (every epoch), best.pt (best test accuracy so far; selected on the "
        "test split) and metrics.json (loss, accuracy, lr per epoch)",
    )
    t.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue from a checkpoint (without a path: <out>/last.pt)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out that already holds a run (else that is refused)",
    )
    t.add_argument(
        "--stop-after",
        type=_count("stop_after"),
        default=None,
        help="stop after this epoch (the schedule still spans --epochs; continue with --resume)",
    )
    t.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    t.add_argument("--max-steps-per-epoch", type=_count("max_steps_per_epoch"), default=None, help=argparse.SUPPRESS)
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    for name in ("evaluate", "convert"):
        description = helptext = _COMMANDS[name]
        if name == "convert":
            description += (
                ". Conversion is deterministic and takes a second; --save writes the SNN as a file "
                "(na_kernels.nn.load_snn reads it). In Python: na_kernels.nn.to_snn("
                "na_kernels.app.train.network_from_checkpoint(na_kernels.app.train.load_checkpoint(path)), T)"
            )
        c = sub.add_parser(name, help=helptext, description=description)
        c.add_argument("--checkpoint", required=True, help="a checkpoint written by na-kernels train")
        c.add_argument("--data-dir", default=None, help="dataset folder (default: the one it was trained on)")
        c.add_argument("--batch-size", type=_count("batch_size"), default=256, help="images per batch")
        c.add_argument(
            "--device", type=_device, default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)"
        )
        c.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "evaluate":
            c.add_argument("--no-amp", action="store_true", help="no bf16 autocast on GPU")
            c.set_defaults(func=cmd_evaluate)
        else:
            c.add_argument("--T", type=_steps("T"), default=32, help="time steps")
            c.add_argument(
                "--chunk",
                type=_steps("chunk"),
                default=None,
                help="steps per kernel call (less memory; default: all T at once)",
            )
            c.add_argument(
                "--report",
                type=_as_is(lambda text: check_output_path(text, "", folder=False)),
                default=None,
                help="write a JSON report to this file",
            )
            c.add_argument(
                "--save",
                type=_as_is(lambda text: check_output_path(text, "", folder=False)),
                default=None,
                metavar="NET.snn",
                help="write the converted SNN to this file (na_kernels.nn.load_snn reads it: data only, "
                "no code runs when it is loaded)",
            )
            c.add_argument(
                "--exit-confidence",
                type=_exit_probability("confidence"),
                nargs="+",
                default=None,
                metavar="C",
                help="per-sample early exit when the top softmax probability of the "
                "mean logits reaches C; several values: a sweep",
            )
            c.add_argument(
                "--exit-margin",
                type=_exit_probability("margin"),
                nargs="+",
                default=None,
                metavar="M",
                help="early exit when the top-two probability margin reaches M "
                "(with --exit-confidence: both must hold; one row per pair)",
            )
            c.add_argument(
                "--exit-min-steps",
                type=_steps("exit_min_steps"),
                default=None,
                help="no early exit before this step (default: 1)",
            )
            c.set_defaults(func=cmd_convert)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``na-kernels`` with ``argv``; returns the exit status (2 for a bad option, data, checkpoint or
    run setting: one ``na-kernels: error: ...`` line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # without a command (--help, --version, a typo) nothing but the command list is needed
    parser = build_parser() if any(arg in _COMMANDS for arg in argv) else _command_list_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .datasets import DatasetError
    from .train import CheckpointError, ConfigError

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
