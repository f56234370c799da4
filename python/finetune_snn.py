"""Fine-tune a converted SNN with BPTT: conversion first, then spike-based training at small T.

The route of hybrid conversion + spike-based training (as in the noise-based T = 1 paper): train
the ANN with NoisyQuant, convert it with to_snn, then train the SNN itself for a few epochs at
the T you will run. Gradients flow through every IF layer's fused surrogate-gradient backward
(integrate_fire: one kernel call per layer over all T steps) into all weights; the thresholds
stay as converted.

    python python/finetune_snn.py                     # quick ANN (3 epochs), convert at T = 2, fine-tune
    python python/finetune_snn.py --checkpoint digits_noisyquant.pt --T 1
    python python/finetune_snn.py --save /tmp/digits_t2.snn   # save the fine-tuned SNN (load_snn reads it)

It writes nothing unless --save is given.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from na_kernels.nn import replace_activations, to_snn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_noisyquant import digits_tensors, make_model  # noqa: E402  the same model and data


def train_ann(p, epochs, x_train, y_train):
    """The quantized ANN: make_model with NoisyQuant (uniform noise), a few epochs of SGD."""
    model, _ = replace_activations(make_model(), p=p, noise="uniform", lam=2.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in tqdm(range(epochs), desc="ANN epochs"):
        for index in torch.randperm(len(y_train)).split(32):
            loss = F.cross_entropy(model(x_train[index]), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(snn, x, y):
    """Accuracy after all T steps (the running mean at the last step)."""
    with torch.no_grad():
        return (snn(x)[-1].argmax(-1) == y).float().mean().item()


def finetune(snn, x_train, y_train, epochs, lr, batch_size=32):
    """BPTT on the SNN: cross-entropy of the mean output over the T steps. Returns the losses.

    The network stays in eval mode (BatchNorm is folded; dropout, if any, stays off); gradients
    need only grad mode. Statistics counting is switched off while training."""
    snn.record_statistics(False)
    optimizer = torch.optim.Adam([p for p in snn.parameters() if p.requires_grad], lr=lr)
    losses = []
    bar = tqdm(total=epochs * len(range(0, len(y_train), batch_size)), desc=f"SNN fine-tune (T={snn.T})")
    for _ in range(epochs):
        for index in torch.randperm(len(y_train)).split(batch_size):
            out = snn(x_train[index])  # [T, B, 10]; out[-1] = mean over all T steps
            loss = F.cross_entropy(out[-1], y_train[index])
            optimizer.zero_grad()
            loss.backward()          # through integrate_fire's surrogate backward, all T steps
            optimizer.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix_str(f"loss {loss.item():.3f}")
    bar.close()
    snn.record_statistics(True)
    return losses


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a train_noisyquant.py checkpoint (default: train one now)")
    parser.add_argument("--p", type=int, default=3, help="quantization levels of the quick ANN")
    parser.add_argument("--ann-epochs", type=int, default=3, help="epochs of the quick ANN (no --checkpoint)")
    parser.add_argument("--T", type=int, default=2, help="time steps to convert and fine-tune at")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the fine-tuning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="write the fine-tuned SNN here (snn.save; load with load_snn)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = digits_tensors()

    if args.checkpoint:
        ckpt = torch.load(args.checkpoint, weights_only=True)
        model, _ = replace_activations(make_model(), p=ckpt["p"], lam=2.0)
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
    else:
        model = train_ann(args.p, args.ann_epochs, x_train, y_train)
    with torch.no_grad():
        print(f"quantized ANN: {100 * (model(x_test).argmax(1) == y_test).float().mean().item():.1f}%")

    snn = to_snn(model, T=args.T)
    before = accuracy(snn, x_test, y_test)
    print(f"converted SNN, T={args.T}: {100 * before:.1f}%")
    losses = finetune(snn, x_train, y_train, args.epochs, args.lr)
    after = accuracy(snn, x_test, y_test)
    first = sum(losses[:10]) / len(losses[:10])
    last = sum(losses[-10:]) / len(losses[-10:])
    print(f"fine-tuning loss: {first:.3f} (first 10 steps) -> {last:.3f} (last 10)")
    print(f"fine-tuned SNN, T={args.T}: {100 * after:.1f}%")
    if args.save:
        snn.save(args.save)
        print(f"saved {args.save} (na_kernels.nn.load_snn reads it without this script)")


if __name__ == "__main__":
    main()
