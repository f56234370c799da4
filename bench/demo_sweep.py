"""Sweeps behind the demo's settings and the default noise scales.

Trains the demo's CNN on a bundled data set (``--data digits``: DigitsCNN on the 8x8 digits,
539 held-out test images; ``--data mnist10k``: MnistCNN on the 28x28 MNIST digits, 2000 held-out
test images) for every combination of the options and prints one line per run: ANN, the clipped
network (the SNN's T -> infinity limit) and the SNN at T = 1, 2, 4, ..., 64 (test accuracy, %).
Lines are also appended to ``--out`` as JSON. ``--snn-modes`` evaluates the same trained
network's SNN in several precisions / layouts (``fp32``: the default; ``channels_last``;
``bf16``: ``snn.to(torch.bfloat16)``; ``bf16_channels_last``: both, the fast mode), one line
each, input cast and laid out to match. ``--threads`` torch threads per run (default 1);
run it under ``nice`` on a shared machine. The runs behind README and docs/design.md are listed,
with their commands, in bench/results/issue14/README.md and bench/results/issue25/README.md; for
example

    python bench/demo_sweep.py --p 3 --noise uniform none --seeds 0 1 2 3 4 5 6 7 8 9
    python bench/demo_sweep.py --p 1 --noise gaussian --scale 0.1 0.2 0.3 0.5 1.0 --seeds 0 1 2
    python bench/demo_sweep.py --data mnist10k --epochs 3 --seeds 0 1 2
    python bench/demo_sweep.py --data mnist10k --epochs 3 --noise uniform --seeds 0 1 2 3 4 \
        --snn-modes fp32 channels_last bf16 bf16_channels_last
"""

import argparse
import itertools
import json
import sys
import time

import torch
from torch import nn

from na_kernels.app.datasets import BatchLoader, digits_split, mnist10k_split
from na_kernels.app.models import build_model
from na_kernels.app.train import evaluate, evaluate_snn, make_optimizer, make_scheduler, train_epoch
from na_kernels.nn import NoisyQuant, clipped_network, to_snn

TS = (1, 2, 4, 8, 16, 32, 64)
SNN_MODES = {  # name -> (dtype, memory format) of the converted network and its input
    "fp32": (torch.float32, torch.contiguous_format),
    "channels_last": (torch.float32, torch.channels_last),
    "bf16": (torch.bfloat16, torch.contiguous_format),
    "bf16_channels_last": (torch.bfloat16, torch.channels_last),
}


class _InMode(nn.Module):
    """``snn`` cast to a mode of ``SNN_MODES``, casting and laying out its input to match."""

    def __init__(self, snn, mode):
        super().__init__()
        self.dtype, self.memory_format = SNN_MODES[mode]
        self.snn = snn.to(self.dtype).to(memory_format=self.memory_format)

    def forward(self, x):
        x = x.to(self.dtype)
        return self.snn(x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x)


def deeper_digits_cnn(num_classes, in_channels, act, convs_per_stage, width=32):
    """DigitsCNN with ``convs_per_stage`` 3x3 conv-BN-act layers per stage instead of 2."""
    layers, c = [], in_channels
    for stage in range(2):
        for _ in range(convs_per_stage):
            layers += [
                nn.Conv2d(c, width * (stage + 1), 3, padding=1, bias=False),
                nn.BatchNorm2d(width * (stage + 1)),
                act(),
            ]
            c = width * (stage + 1)
        layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * 4, 128), act(), nn.Linear(128, num_classes))


ARCH = {"digits": "digits_cnn", "mnist10k": "mnist_cnn"}
SPLIT = {"digits": digits_split, "mnist10k": mnist10k_split}


def run(
    train,
    test,
    *,
    p,
    noise,
    scale,
    seed,
    epochs,
    lam,
    lr,
    opt,
    convs_per_stage=2,
    batch_size=32,
    arch="digits_cnn",
    snn_modes=("fp32",),
):
    """Train one demo CNN (or a deeper DigitsCNN); its ANN, clipped-network and SNN (T in TS) test
    accuracies, the SNN's in each of ``snn_modes`` (``SNN_MODES``): ``snn`` is the first mode's,
    ``snn_modes`` all of them."""
    torch.manual_seed(seed)
    scale_kw = {} if scale is None else {"scale": scale}  # None: NoisyQuant's default
    act = lambda: NoisyQuant(p, lam=lam, noise=noise, **scale_kw)  # noqa: E731
    if convs_per_stage == 2 or arch != "digits_cnn":
        model = build_model(arch, train.num_classes, train.in_channels, act=act)
    else:
        model = deeper_digits_cnn(train.num_classes, train.in_channels, act, convs_per_stage)
    loader = BatchLoader(train, batch_size, shuffle=True, augment=True, drop_last=True, seed=seed)
    if opt == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr)
    else:
        optimizer = make_optimizer(model, lr, 0.9, 5e-4)
    scheduler = make_scheduler(optimizer, epochs * len(loader))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(seed * 7919 + epoch)
        train_epoch(model, loader, optimizer, scheduler, amp=False, show_progress=False)
    model.eval()
    test_loader = BatchLoader(test, 256)
    ann = evaluate(model, test_loader, amp=False, show_progress=False)
    limit = evaluate(clipped_network(model), test_loader, amp=False, show_progress=False)
    modes = {}
    for mode in snn_modes:
        curve = evaluate_snn(_InMode(to_snn(model, max(TS)), mode), BatchLoader(test, 128), show_progress=False)
        modes[mode] = {T: curve[T - 1] for T in TS}
    return {"ann": ann, "limit": limit, "snn": modes[snn_modes[0]], "snn_modes": modes}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=sorted(ARCH), default="digits", help="the bundled data set (and its CNN)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--p", type=int, nargs="+", default=[3])
    ap.add_argument("--noise", nargs="+", default=["uniform", "none"])
    ap.add_argument("--scale", type=float, nargs="+", default=[None], help="noise scale(s); default: the package's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, nargs="+", default=[15])
    ap.add_argument(
        "--lam",
        type=lambda v: v if v == "auto" else float(v),
        nargs="+",
        default=[2.0],
        help='initial λ (a float or "auto")',
    )
    ap.add_argument("--lr", type=float, default=None, help="default 0.05 (sgd), 0.003 (adam)")
    ap.add_argument("--opt", choices=("sgd", "adam"), default="sgd")
    ap.add_argument(
        "--convs-per-stage", type=int, default=2, help="2 = the demo's DigitsCNN; more = deeper (digits only)"
    )
    ap.add_argument(
        "--snn-modes",
        nargs="+",
        default=["fp32"],
        choices=sorted(SNN_MODES),
        help="SNN precisions / layouts to evaluate",
    )
    ap.add_argument("--out", default=None, help="append one JSON line per run here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lr = a.lr if a.lr is not None else (0.05 if a.opt == "sgd" else 0.003)
    train, test = SPLIT[a.data]()
    print("p noise    scale  ep  lam seed |  ANN limit | " + " ".join(f"T={T:<3d}" for T in TS) + " | s", flush=True)
    for p, noise, scale, epochs, lam, seed in itertools.product(a.p, a.noise, a.scale, a.epochs, a.lam, a.seeds):
        t0 = time.time()
        r = run(
            train,
            test,
            p=p,
            noise=noise,
            scale=scale,
            seed=seed,
            epochs=epochs,
            lam=lam,
            lr=lr,
            opt=a.opt,
            convs_per_stage=a.convs_per_stage,
            arch=ARCH[a.data],
            snn_modes=tuple(a.snn_modes),
        )
        row = dict(
            data=a.data,
            threads=a.threads,
            p=p,
            noise=noise,
            scale=scale,
            epochs=epochs,
            lam=lam,
            seed=seed,
            opt=a.opt,
            lr=lr,
            convs_per_stage=a.convs_per_stage,
            **r,
            seconds=round(time.time() - t0, 1),
        )
        for mode, curve in r["snn_modes"].items():
            print(
                f"{p} {noise:8s} {str(scale):5s} {epochs:3d} {lam!s:>4} {seed:4d} | {100 * r['ann']:5.1f} "
                f"{100 * r['limit']:5.1f} | "
                + " ".join(f"{100 * curve[T]:5.1f}" for T in TS)
                + f" | {row['seconds']:.0f}"
                + (f" {mode}" if len(r["snn_modes"]) > 1 else ""),
                flush=True,
            )
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
