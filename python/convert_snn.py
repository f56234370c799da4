"""Convert the network trained by train_noisyquant.py into an SNN and evaluate it per time step.

to_snn replaces every NoisyQuant by an integrate-and-fire layer (threshold = the trained
λ), folds BatchNorm, and runs all T steps at once; its output holds the running-mean
prediction after every step t <= T, so one run gives the whole accuracy-vs-T curve.

    python python/train_noisyquant.py && python python/convert_snn.py [--T 32]
"""

import argparse
import os
import sys

import torch

from na_kernels.nn import replace_activations, to_snn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_noisyquant import digits_tensors, make_model  # noqa: E402  the same model and data


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint",
        default=os.path.join("runs", "digits_noisyquant.pt"),
        help="the weights train_noisyquant.py saved (default: runs/digits_noisyquant.pt)",
    )
    parser.add_argument("--T", type=int, default=32, help="time steps")
    args = parser.parse_args()
    if not os.path.isfile(args.checkpoint):
        sys.exit(f"{args.checkpoint} not found: run python python/train_noisyquant.py first")
    ckpt = torch.load(args.checkpoint, weights_only=True)

    # rebuild the trained network: the same model, the same swap, then the weights
    model, _ = replace_activations(make_model(), p=ckpt["p"], lam=2.0)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()

    _, _, x_test, y_test = digits_tensors()
    snn = to_snn(model, T=args.T)
    with torch.no_grad():
        ann_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        out = snn(x_test)  # [T, B, 10]: out[t-1] = mean output over steps 1..t
    acc = (out.argmax(-1) == y_test).float().mean(1)  # accuracy after every step

    print(f"quantized ANN (p={ckpt['p']}, trained with noise={ckpt['noise']}): {100 * ann_acc:.1f}%")
    for t in (1, 2, 4, 8, 16, 32, 64, 128):
        if t <= args.T:
            print(f"SNN, T={t:<4d} {100 * acc[t - 1].item():.1f}%")
    print()
    print(snn.statistics_table())  # spikes per layer, firing rates, synaptic operations, energy


if __name__ == "__main__":
    main()
