"""Single-seed probes for a QCFS collapse on the bundled 28x28 digits (issue 25): other CNNs
than the demo's (--arch a = the demo's MnistCNN, b = full-resolution first conv with pools,
c = smaller, d = 8 conv layers, mlp = 2 hidden layers, vgg = plain VGG-like stack of --depth
3x3 convs at full resolution with average pools plus one hidden linear layer), BatchNorm
on/off, λ₀, p, epochs, lr, and (--shift 0, a diagnostic only: QCFS proper uses ½) the
quantizer's shift.
Split: a seed-0 permutation of the 10,000 images, the first --ntrain for training, the last
--ntest for testing (not mnist10k_split). One JSON line per run appended to --out. Written as
an exploration script; the runs it recorded are in bench/results/issue25/probe.jsonl.

    PYTHONPATH=. python bench/demo_sweep_probe.py --arch a --p 1 --epochs 3 --seeds 0
"""

import argparse
import json
import time
from functools import partial

import torch
from torch import nn

from na_kernels.app.datasets import BatchLoader, load_mnist10k
from na_kernels.app.train import evaluate, evaluate_snn, make_optimizer, make_scheduler, train_epoch
from na_kernels.nn import NoisyQuant, clipped_network, to_snn
from na_kernels.ops.noisy_quant import noisy_quant

TS = (1, 2, 4, 8, 16, 32, 64)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="a", choices=("a", "b", "c", "d", "mlp", "vgg"))
    ap.add_argument("--depth", type=int, default=7, help="vgg: number of conv layers (3 stages)")
    ap.add_argument("--p", type=int, default=3)
    ap.add_argument("--noise", nargs="+", default=["uniform", "none"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--ntrain", type=int, default=8000)
    ap.add_argument("--ntest", type=int, default=1000)
    ap.add_argument("--lam", default="2.0", help='initial λ: a float or "auto"')
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--aug", type=int, default=1, help="1: random crop while training")
    ap.add_argument("--bn", type=int, default=1, help="0: no BatchNorm (convs with bias)")
    ap.add_argument("--opt", default="sgd", choices=("sgd", "adam"), help="adam: Adam, no weight decay")
    ap.add_argument("--wd", type=float, default=5e-4, help="SGD weight decay")
    ap.add_argument("--track", type=int, default=0, help="1: ANN and clipped accuracy after every epoch")
    ap.add_argument("--shift", type=float, default=0.5, help="the quantizer's shift (0.5: QCFS)")
    ap.add_argument("--out", default="probe.jsonl")
    return ap.parse_args(argv)


def cba(a, ci, co, k, s, act):
    """conv (k x k, stride s) + BatchNorm (unless --bn 0) + activation."""
    if not a.bn:
        return [nn.Conv2d(ci, co, k, stride=s, padding=k // 2, bias=True), act()]
    return [nn.Conv2d(ci, co, k, stride=s, padding=k // 2, bias=False), nn.BatchNorm2d(co), act()]


class ShiftedQuant(NoisyQuant):
    """NoisyQuant with another shift than ½ (a diagnostic: its ANN, not its SNN, is what it tests)."""

    def __init__(self, *args, shift=0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.shift = shift

    def forward(self, x):
        return noisy_quant(
            x, self.p, self.lam, noise=self.noise, scale=self.scale, shift=self.shift, training=self.training
        )


def vgg(a, act, w):
    """--depth 3x3 convs split over three stages (28, 14, 7 pixels) with a pool after each."""
    stages = [a.depth - 2 * (a.depth // 3), a.depth // 3, a.depth // 3]
    layers, ci = [], 1
    for i, n in enumerate(stages):
        for _ in range(n):
            layers += cba(a, ci, w << i, 3, 1, act)
            ci = w << i
        layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(ci * 9, 128), act(), nn.Linear(128, 10))


def build(a, act, w):
    if a.arch == "vgg":
        return vgg(a, act, w)
    if a.arch == "a":  # the demo's MnistCNN: strided, 28 -> 14 -> 7
        return nn.Sequential(
            *cba(a, 1, w, 5, 2, act),
            *cba(a, w, 2 * w, 3, 2, act),
            *cba(a, 2 * w, 2 * w, 3, 1, act),
            nn.Flatten(),
            nn.Linear(2 * w * 49, 128),
            act(),
            nn.Linear(128, 10),
        )
    if a.arch == "b":  # a full-resolution first conv, then pools: 28 -> 14 -> 7
        return nn.Sequential(
            *cba(a, 1, w, 3, 1, act),
            nn.AvgPool2d(2),
            *cba(a, w, 2 * w, 3, 1, act),
            *cba(a, 2 * w, 2 * w, 3, 1, act),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * 49, 128),
            act(),
            nn.Linear(128, 10),
        )
    if a.arch == "c":  # smaller
        return nn.Sequential(
            *cba(a, 1, w, 5, 2, act),
            *cba(a, w, 2 * w, 3, 2, act),
            nn.Flatten(),
            nn.Linear(2 * w * 49, 64),
            act(),
            nn.Linear(64, 10),
        )
    if a.arch == "d":  # deeper: two strided convs, then 6 convs at 7x7
        layers = [*cba(a, 1, w, 5, 2, act), *cba(a, w, 2 * w, 3, 2, act)]
        for _ in range(6):
            layers += cba(a, 2 * w, 2 * w, 3, 1, act)
        return nn.Sequential(*layers, nn.AvgPool2d(7), nn.Flatten(), nn.Linear(2 * w, 10))
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.BatchNorm1d(256),
        act(),
        nn.Linear(256, 256),
        nn.BatchNorm1d(256),
        act(),
        nn.Linear(256, 10),
    )


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(1)
    data = load_mnist10k()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    train, test = data.subset(perm[: a.ntrain]), data.subset(perm[-a.ntest :])
    lam = a.lam if a.lam == "auto" else float(a.lam)
    for seed in a.seeds:
        for noise in a.noise:
            t0 = time.time()
            torch.manual_seed(seed)
            quant = NoisyQuant if a.shift == 0.5 else partial(ShiftedQuant, shift=a.shift)
            model = build(a, lambda: quant(a.p, lam=lam, noise=noise), a.width)  # noqa: B023
            loader = BatchLoader(train, a.bs, shuffle=True, augment=bool(a.aug), drop_last=True, seed=seed)
            if a.opt == "adam":
                opt = torch.optim.Adam(model.parameters(), lr=a.lr)
            else:
                opt = make_optimizer(model, a.lr, 0.9, a.wd)
            sch = make_scheduler(opt, a.epochs * len(loader))
            track = []
            for e in range(a.epochs):
                loader.set_epoch(e)
                torch.manual_seed(seed * 7919 + e)
                train_epoch(model, loader, opt, sch, amp=False, show_progress=False)
                if a.track:
                    model.eval()
                    tl = BatchLoader(test, 256)
                    ann_e = evaluate(model, tl, amp=False, show_progress=False)
                    track.append([ann_e, evaluate(clipped_network(model), tl, amp=False, show_progress=False)])
                    model.train()
            t1 = time.time()
            model.eval()
            tl = BatchLoader(test, 256)
            ann = evaluate(model, tl, amp=False, show_progress=False)
            lim = evaluate(clipped_network(model), tl, amp=False, show_progress=False)
            curve = evaluate_snn(to_snn(model, 64), BatchLoader(test, 50), show_progress=False)
            t2 = time.time()
            lams = [round(float(m.lam.detach()), 2) for m in model.modules() if isinstance(m, NoisyQuant)]
            row = dict(
                vars(a),
                seed=seed,
                noise=noise,
                ann=ann,
                limit=lim,
                snn={T: curve[T - 1] for T in TS},
                train_s=t1 - t0,
                eval_s=t2 - t1,
                lams=lams,
            )
            if a.track:
                row["track"] = track
            row.pop("seeds")
            print(
                f"{a.arch}{a.depth if a.arch == 'vgg' else ''} bn{a.bn} sh{a.shift} "
                f"{a.opt} wd{a.wd} lam{a.lam} lr{a.lr} w{a.width} p{a.p} ep{a.epochs} {noise:7s} s{seed} | "
                f"ANN {100 * ann:5.1f} lim {100 * lim:5.1f} | "
                + " ".join(f"{100 * curve[T - 1]:5.1f}" for T in TS)
                + f" | {t1 - t0:.0f}+{t2 - t1:.0f}s lam {lams}",
                flush=True,
            )
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
