"""Post-training conversion of a plain-ReLU CNN, side by side with SpikingJelly's converter.

For each seed: train one plain-ReLU CNN (na_kernels.app.models.digits_cnn) on the bundled 8x8
digits (1258 train / 539 test images), then convert that same network, with no retraining,

  - with SpikingJelly 2.0's rate-coding recipe: 99.9 % percentile, channel-wise, half threshold
    (``ann2snn.RateCodingRecipe(mode="99.9%", channel_wise=True, half_threshold=True)``);
  - with ``na_kernels.nn.post_training_convert`` (exact 99.9 % percentile, channel-wise,
    v_init = θ/2), without and with channel-wise threshold calibration (calibrated for each T);

both calibrated on the training images, and print the test accuracy at T = 1, 2, 4, 8
(mean ± spread over the seeds; spread = max - min). Needs spikingjelly (pip install
spikingjelly --no-deps). Writes nothing.

    python python/post_training_vs_spikingjelly.py [--seeds 0 1 2] [--epochs 30]

Measured (seeds 0, 1, 2, 30 epochs, CPU; test accuracy %, mean ± max - min):

                                          T = 1        T = 2        T = 4        T = 8
    ANN (ReLU)                          99.6 ± 0.2   99.6 ± 0.2   99.6 ± 0.2   99.6 ± 0.2
    SpikingJelly 99.9% ch.-wise half-θ  88.2 ± 10.2  98.5 ± 1.1   99.4 ± 0.7   99.6 ± 0.2
    post_training_convert               86.9 ± 9.6   98.0 ± 1.5   99.3 ± 0.2   99.5 ± 0.4
    + calibrate_thresholds (per T)      86.9 ± 9.6   98.7 ± 0.4   99.3 ± 0.7   99.4 ± 0.4
"""

import argparse
import copy
import statistics
import sys
import types

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from na_kernels.app.datasets import digits_split
from na_kernels.app.models import digits_cnn
from na_kernels.convert.post_training import SEARCH_PERCENTILES
from na_kernels.nn import post_training_convert

STEPS = (1, 2, 4, 8)


def digits_tensors():
    train, test = digits_split()
    scale = lambda d: (d.images.float() - 4.88) / 6.02  # noqa: E731  pixel values are 0..16
    return scale(train), train.labels, scale(test), test.labels


def train_relu_cnn(seed, x, y, epochs):
    torch.manual_seed(seed)
    model = digits_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        schedule.step()
    return model.eval()


def accuracy(logits, labels):
    return 100.0 * (logits.argmax(-1) == labels).float().mean(-1)


def _import_spikingjelly():
    try:
        import requests  # noqa: F401
    except ImportError:  # ann2snn imports requests only to download checkpoints, unused here
        sys.modules["requests"] = types.ModuleType("requests")
    from spikingjelly.activation_based import ann2snn, functional

    return ann2snn, functional


@torch.no_grad()
def spikingjelly_curve(model, calibration, x, y):
    ann2snn, functional = _import_spikingjelly()

    recipe = ann2snn.RateCodingRecipe(dataloader=calibration, mode="99.9%", channel_wise=True, half_threshold=True)
    snn = ann2snn.FXConverter(recipe=recipe, device="cpu").convert(copy.deepcopy(model)).eval()
    functional.reset_net(snn)
    total, curve = None, {}
    for t in range(1, max(STEPS) + 1):
        step = snn(x)
        total = step if total is None else total + step
        if t in STEPS:
            curve[t] = float(accuracy(total, y))
    return curve


@torch.no_grad()
def ours_curve(model, calibration, x, y, calibrate):
    if not calibrate:  # one conversion, one run: every T from the per-step outputs
        snn, _ = post_training_convert(model, calibration, T=max(STEPS), progress=False)
        out = snn(x)
        return {t: float(accuracy(out[t - 1], y)) for t in STEPS}
    curve = {}
    for t in STEPS:  # thresholds calibrated for the T that is run
        snn, _ = post_training_convert(model, calibration, T=t, calibrate=True, progress=False)
        curve[t] = float(accuracy(snn(x)[-1], y))
    return curve


@torch.no_grad()
def searched_curve(model, calibration, x, y):
    """The percentile chosen per T among SEARCH_PERCENTILES on the calibration inputs (no labels)."""
    curve = {}
    for t in STEPS:
        snn, _ = post_training_convert(model, calibration, T=t, percentile=SEARCH_PERCENTILES, progress=False)
        curve[t] = float(accuracy(snn(x)[-1], y))
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x_train, y_train, x_test, y_test = digits_tensors()
    calibration = DataLoader(TensorDataset(x_train, y_train), batch_size=128)
    rows = {
        "ANN (ReLU)": [],
        "SpikingJelly 99.9% channel-wise half-threshold": [],
        "na_kernels post_training_convert": [],
        "na_kernels + calibrate_thresholds": [],
        "na_kernels, percentile searched per T": [],
    }
    for seed in args.seeds:
        model = train_relu_cnn(seed, x_train, y_train, args.epochs)
        with torch.no_grad():
            ann = float(accuracy(model(x_test), y_test))
        rows["ANN (ReLU)"].append({t: ann for t in STEPS})
        rows["SpikingJelly 99.9% channel-wise half-threshold"].append(
            spikingjelly_curve(model, calibration, x_test, y_test)
        )
        rows["na_kernels post_training_convert"].append(ours_curve(model, calibration, x_test, y_test, False))
        rows["na_kernels + calibrate_thresholds"].append(ours_curve(model, calibration, x_test, y_test, True))
        rows["na_kernels, percentile searched per T"].append(searched_curve(model, calibration, x_test, y_test))
        print(
            f"seed {seed}: "
            + "; ".join(f"{name}: " + " ".join(f"{r[-1][t]:.1f}" for t in STEPS) for name, r in rows.items()),
            flush=True,
        )

    width = max(len(name) for name in rows)
    print(f"\ndigits test accuracy (%), {len(y_test)} images, mean ± spread (max - min) over seeds {args.seeds}")
    print(" " * width + "".join(f"{'T = ' + str(t):>16}" for t in STEPS))
    for name, runs in rows.items():
        cells = []
        for t in STEPS:
            values = [run[t] for run in runs]
            cells.append(f"{statistics.mean(values):6.1f} ± {max(values) - min(values):4.1f}   ")
        print(name.ljust(width) + "".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
