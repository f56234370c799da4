"""Fine-tune a converted SNN with BPTT: conversion first, then spike-based training at small T.

The route of hybrid conversion + spike-based training (as in the noise-based T = 1 paper): train
the ANN with NoisyQuant, convert it with to_snn, then train the SNN itself for a few epochs at
the T you will run. Gradients flow through every IF layer's fused surrogate-gradient backward
(integrate_fire: one kernel call per layer over all T steps) into all weights; the thresholds
stay as converted.

    python python/finetune_snn.py                     # quick ANN (3 epochs), convert at T = 2, fine-tune
    python python/finetune_snn.py --checkpoint digits_noisyquant.pt --T 1
    python python/finetune_snn.py --checkpoint runs/digits/last.pt    # written by na-kernels train
    python python/finetune_snn.py --save /tmp/digits_t2.snn   # save the fine-tuned SNN (load_snn reads it)

It writes nothing unless --save is given.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from na_kernels.app.datasets import digits_split
from na_kernels.app.train import CheckpointError, _first_line, _load_weights, load_checkpoint, network_from_checkpoint
from na_kernels.nn import replace_activations, to_snn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_noisyquant import digits_tensors, make_model  # noqa: E402  the same model and data


def load_ann(path):
    """The quantized ANN of a checkpoint and the digits (train, test) scaled as it was trained on.

    Reads a ``last.pt`` / ``best.pt`` of ``na-kernels train --dataset digits`` (its arch and
    normalization) or a ``train_noisyquant.py`` file ({"state_dict", "p", ...}: make_model's
    weights). Raises CheckpointError (one line) naming a missing key, a tensor of another shape
    or a non-finite one."""
    state = _read(path)
    if state.get("format") == "na_kernels-checkpoint-1":
        state = load_checkpoint(path)
        if state["config"]["dataset"] != "digits":
            raise CheckpointError(
                f"{path} was trained on {state['config']['dataset']!r}; this script fine-tunes "
                "on the bundled digits (train with --dataset digits)"
            )
        model = network_from_checkpoint(state)
        train, test = digits_split()
        scale = lambda d: (  # noqa: E731
            (d.images.float() / d.max_value - torch.tensor(d.mean).view(1, -1, 1, 1))
            / torch.tensor(d.std).view(1, -1, 1, 1)
        )
        return model, (scale(train), scale(test))
    missing = [k for k in ("state_dict", "p") if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} has no {missing[0]!r}: pass a checkpoint of `na-kernels train` or of python/train_noisyquant.py"
        )
    p = state["p"]
    if type(p) is not int or p < 1:
        raise CheckpointError(f"{path}: 'p' must be an int >= 1, got {p!r:.40}")
    if not isinstance(state["state_dict"], dict):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state['state_dict']).__name__}, not a dict")
    model, _ = replace_activations(make_model(), p=p, lam=2.0)
    _load_weights(model, state["state_dict"], path, "train_noisyquant.make_model")
    x_train, _, x_test, _ = digits_tensors()
    return model.eval(), (x_train, x_test)


def _read(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, or one holding objects (weights_only refuses them)
        raise CheckpointError(f"{path} is not a readable checkpoint ({_first_line(error)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint")
    return state


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
            loss.backward()  # through integrate_fire's surrogate backward, all T steps
            optimizer.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix_str(f"loss {loss.item():.3f}")
    bar.close()
    snn.record_statistics(True)
    return losses


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="finetune_snn.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a last.pt / best.pt of `na-kernels train --dataset digits`, or a train_noisyquant.py "
        "checkpoint (default: train one now)",
    )
    parser.add_argument("--p", type=int, default=3, help="quantization levels of the quick ANN")
    parser.add_argument("--ann-epochs", type=int, default=3, help="epochs of the quick ANN (no --checkpoint)")
    parser.add_argument("--T", type=int, default=2, help="time steps to convert and fine-tune at")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the fine-tuning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="write the fine-tuned SNN here (snn.save; load with load_snn)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = digits_tensors()

    if args.checkpoint:
        try:
            model, (x_train, x_test) = load_ann(args.checkpoint)
        except CheckpointError as error:
            parser.error(str(error))  # one "finetune_snn.py: error: ..." line, exit status 2
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
