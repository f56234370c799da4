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
import json
import os
import sys
from typing import Optional, Sequence

import torch

from . import __version__
from .datasets import DATASETS, BatchLoader, DatasetError, load_dataset
from .models import MODELS
from ._spec import Noise
from .demo import cmd_demo
from ._validation import check_int, check_levels, check_positive, check_time_steps
from .train import CheckpointError, TrainConfig, evaluate, evaluate_snn, fit, load_checkpoint, network_from_checkpoint


def _err(msg: str) -> None:
    print(f"na-kernels: error: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------------------
# train / evaluate / convert
# ----------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    """``na-kernels train``: :func:`na_kernels.train.fit` with the options as a TrainConfig."""
    resume = args.resume
    if resume == "auto":
        resume = os.path.join(args.out, "last.pt")
    cfg = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, arch=args.arch, p=args.p, noise=args.noise,
                      lam=args.lam, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      momentum=args.momentum, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                      augment=not args.no_augment, amp=not args.no_amp, seed=args.seed, out=args.out,
                      resume=resume, device=args.device, progress=not args.no_progress,
                      max_steps_per_epoch=args.max_steps_per_epoch, stop_after=args.stop_after)
    summary = fit(cfg)
    if summary["rank"] == 0 and summary["history"]:
        print(f"final test accuracy {100 * summary['test_acc']:.2f}%  checkpoint: {summary['checkpoint']}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _checkpoint_model_and_test_data(args):
    """(checkpoint state, its network on the chosen device, the device, the test split)."""
    state = load_checkpoint(args.checkpoint)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = network_from_checkpoint(state).to(device)
    cfg = state["config"]
    test = load_dataset(cfg["dataset"], args.data_dir or cfg.get("data_dir"), train=False)
    return state, model, device, test


def cmd_evaluate(args) -> int:
    """``na-kernels evaluate``: test accuracy of a checkpoint's quantized ANN (noise off) and of its clipped network."""
    from .nn import clipped_network

    state, model, device, test = _checkpoint_model_and_test_data(args)
    acc = evaluate(model, BatchLoader(test, args.batch_size, device=device), amp=not args.no_amp,
                   show_progress=not args.no_progress)
    limit_acc = evaluate(clipped_network(model), BatchLoader(test, args.batch_size, device=device),
                         amp=not args.no_amp, show_progress=False)
    cfg = state["config"]
    print(f"{cfg['arch']} p={cfg['p']} noise={cfg['noise']} epoch {state['epoch']}: "
          f"{cfg['dataset']} test accuracy (quantized ANN, no noise) {100 * acc:.2f}% on {len(test)} images; "
          f"its clipped network (the SNN's T -> infinity limit) {100 * limit_acc:.2f}%")
    return 0


def cmd_convert(args) -> int:
    """``na-kernels convert``: a checkpoint as an SNN: accuracy at every t <= T, spikes, energy."""
    from .nn import clipped_network, to_snn

    state, model, device, test = _checkpoint_model_and_test_data(args)
    loader = BatchLoader(test, args.batch_size, device=device)
    ann_acc = evaluate(model, loader, amp=False, show_progress=False)
    limit_acc = evaluate(clipped_network(model), loader, amp=False, show_progress=False)
    snn = to_snn(model, args.T, chunk=args.chunk).to(device)
    acc = evaluate_snn(snn, loader, desc=f"SNN T={args.T}", show_progress=not args.no_progress)
    stats = snn.statistics()
    cfg = state["config"]
    print(f"{cfg['arch']} p={cfg['p']} noise={cfg['noise']} on {cfg['dataset']} ({len(test)} test images): "
          f"ANN {100 * ann_acc:.2f}%, clipped network (the SNN's T -> infinity limit) {100 * limit_acc:.2f}%")
    shown = sorted({t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if t <= args.T} | {args.T})
    print("T:    " + "  ".join(f"{t:>6d}" for t in shown))
    print("SNN:  " + "  ".join(f"{100 * acc[t - 1]:5.2f}%" for t in shown))
    print(snn.statistics_table())
    if args.report:
        os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
        with open(args.report, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "config": cfg, "epoch": state["epoch"], "T": args.T,
                       "ann_acc": ann_acc, "limit_acc": limit_acc, "snn_acc_every_t": acc, "statistics": stats},
                      f, indent=2, default=str)
        print(f"report: {args.report}")
    return 0


# ----------------------------------------------------------------------------------------
# argument parsing
# ----------------------------------------------------------------------------------------


def _checked(check):
    """An argparse type: the text as a number (int, else float), checked by a ``_validation`` rule."""

    def parse(text: str):
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        try:
            return check(value)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _count(name: str, minimum: int = 1):
    return _checked(lambda value: check_int(name, value, minimum=minimum))


_levels = _checked(check_levels)
_lam = _checked(lambda value: check_positive("lam", value))


def _steps(name: str):
    return _checked(lambda value: check_time_steps(name, value))


def build_parser() -> argparse.ArgumentParser:
    """The ``na-kernels`` argument parser (options checked with the rules of ``_validation``)."""
    parser = argparse.ArgumentParser(prog="na-kernels", description=(
        "Noise-injected low-bit ANN training and ANN-to-SNN conversion with fused kernels."))
    parser.add_argument("--version", action="version", version=f"na_kernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")

    d = sub.add_parser("demo", help="offline demo on the bundled 8x8 digits: NoisyQuant vs QCFS, ANN vs SNN",
                       description="Train the same small CNN twice on the bundled 8x8 UCI digits (NoisyQuant "
                                   "uniform noise, and no noise = QCFS) at the same p, convert both to SNNs and "
                                   "report the ANN, its clipped network (the SNN's T -> infinity limit) and the "
                                   "SNN at T = 1..64, firing rate and estimated energy.")
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
    t.add_argument("--dataset", choices=DATASETS, required=True)
    t.add_argument("--data-dir", default=None, help="folder with the dataset files (not needed for digits)")
    t.add_argument("--arch", choices=sorted(MODELS), default="resnet20")
    t.add_argument("--p", type=_levels, default=3, help="activation levels: 3, 7, 15 = 2, 3, 4 bit")
    t.add_argument("--noise", choices=Noise.labels(), default="uniform", help="'none' = QCFS")
    t.add_argument("--lam", type=_lam, default=8.0, help="initial clip λ of every activation (default 8)")
    t.add_argument("--epochs", type=_count("epochs"), default=300)
    t.add_argument("--batch-size", type=_count("batch_size"), default=128, help="per process (default 128)")
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--warmup-epochs", type=_count("warmup_epochs", 0), default=0)
    t.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on GPU")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/na_kernels", help="checkpoint folder (last.pt is written every epoch)")
    t.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (default: <out>/last.pt)")
    t.add_argument("--stop-after", type=_count("stop_after"), default=None,
                   help="stop after this epoch (the schedule still spans --epochs; continue with --resume)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    t.add_argument("--max-steps-per-epoch", type=_count("max_steps_per_epoch"), default=None, help=argparse.SUPPRESS)
    t.add_argument("--no-progress", action="store_true")
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
        c.add_argument("--batch-size", type=_count("batch_size"), default=256)
        c.add_argument("--device", default=None)
        c.add_argument("--no-progress", action="store_true")
        if name == "evaluate":
            c.add_argument("--no-amp", action="store_true")
            c.set_defaults(func=cmd_evaluate)
        else:
            c.add_argument("--T", type=_steps("T"), default=32, help="time steps (default 32)")
            c.add_argument("--chunk", type=_steps("chunk"), default=None, help="steps per kernel call (memory)")
            c.add_argument("--report", default=None, help="write a JSON report here")
            c.set_defaults(func=cmd_convert)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``na-kernels`` with ``argv``; returns the exit status (2 for a data or checkpoint error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (DatasetError, CheckpointError) as e:
        _err(str(e))
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
