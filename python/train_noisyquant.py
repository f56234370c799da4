"""Put NoisyQuant into an existing PyTorch training loop: a one-line change.

The loop below is an ordinary PyTorch loop for a small CNN on the 8x8 handwritten
digits that ship with na_kernels. The only na_kernels line is `replace_activations`:
it swaps every nn.ReLU for a NoisyQuant activation (p quantization levels, a trainable
clip λ per layer, uniform noise in training). Everything else is unchanged.

    python python/train_noisyquant.py                 # p=3 (2-bit), 10 epochs
    python python/train_noisyquant.py --noise none    # the QCFS baseline, for comparison
    python python/convert_snn.py                      # then: convert and run as an SNN
"""

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from na_kernels.app.datasets import digits_split  # the bundled 8x8 UCI digits (CC BY 4.0)
from na_kernels.nn import replace_activations


def make_model() -> nn.Module:
    """Any ordinary network with nn.ReLU (use average pooling: max pooling has no SNN twin)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, 10),
    )


def digits_tensors():
    """(x_train, y_train, x_test, y_test): float images scaled to about zero mean, unit std."""
    train, test = digits_split()
    scale = lambda d: (d.images.float() - 4.88) / 6.02  # noqa: E731  pixel values are 0..16
    return scale(train), train.labels, scale(test), test.labels


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--p", type=int, default=3, help="quantization levels (3, 7, 15 = 2, 3, 4 bit)")
    parser.add_argument("--noise", default="uniform", choices=["uniform", "gaussian", "none"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default=os.path.join("runs", "digits_noisyquant.pt"),
        help="where to save the trained weights (default: runs/digits_noisyquant.pt)",
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    x_train, y_train, x_test, y_test = digits_tensors()
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True)
    model = make_model()

    # ---- the one-line change -------------------------------------------------------
    model, report = replace_activations(model, p=args.p, noise=args.noise, lam=2.0)
    # ---------------------------------------------------------------------------------
    print(report)

    # create the optimizer after the swap: each NoisyQuant's clip λ is a new parameter
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * len(loader))
    for epoch in range(args.epochs):
        model.train()  # noise on
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()  # noise off: the deterministic p-level quantizer the SNN will reproduce
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.3f}  test accuracy {100 * acc:.1f}%")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "p": args.p, "noise": args.noise}, args.out)
    print(f"saved {args.out}; next: python python/convert_snn.py --checkpoint {args.out}")


if __name__ == "__main__":
    main()
