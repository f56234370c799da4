"""How other SNN tools run a network na_kernels exported to NIR: load, run, compare.

Trains the digits CNN of the demo (na_kernels.app.models.digits_cnn: four conv-BN layers, two
average pools, two linear layers) with NoisyQuant, converts it with ``to_snn``, writes it with
``to_nir`` in the pooling form each importer reads, loads the file with every peer installed
(SpikingJelly, snnTorch, sinabs, Norse) through its own importer, with no hand edits, and runs
all on the 539 test images for T = 1 ... 64 with the input repeated at every step. Prints, per
tool and T, the test accuracy of the mean output over steps 1..T and its relative distance
from na_kernels' (||mean_peer - mean_ours|| / ||mean_ours||), and whether the file loaded.

    pip install nir spikingjelly snntorch sinabs norse nirtorch --no-deps
    pip install loguru pbr matplotlib        # what they import
    python python/nir_peers.py [--p 2] [--epochs 15] [--seed 0]
"""

import argparse
import os
import sys
import tempfile
import traceback

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from na_kernels.app.datasets import digits_split
from na_kernels.app.models import digits_cnn
from na_kernels.nn import replace_activations, to_nir, to_snn

STEPS = (1, 2, 4, 8, 16, 32, 64)


def digits_tensors():
    train, test = digits_split()
    scale = lambda d: (d.images.float() - 4.88) / 6.02  # noqa: E731  pixel values are 0..16
    return scale(train), train.labels, scale(test), test.labels


def train(p, epochs, seed, x, y):
    torch.manual_seed(seed)
    model, _ = replace_activations(digits_cnn(), p=p, noise="uniform", lam=2.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    return model.eval()


def running_mean(per_step):
    """[T, B, K] outputs of each step -> [T, B, K] mean over steps 1..t."""
    steps = torch.arange(1, per_step.shape[0] + 1, dtype=per_step.dtype).reshape(-1, 1, 1)
    return per_step.cumsum(0) / steps


# ----------------------------------------------------------------------------- the peers' runs
# Each takes the NIR file path, the test images x [B, 1, 8, 8] and T; returns [T, B, K] outputs per step.


def run_spikingjelly(path, x, T):
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    net = import_from_nir(path, dt=1.0, step_mode="m")  # our IF nodes integrate r = 1 per step: dt = 1
    functional.reset_net(net)
    out, _ = net(x.unsqueeze(0).expand(T, *x.shape).contiguous())
    return out


def run_snntorch(path, x, T):
    import nir
    from snntorch.import_nir import import_from_nir

    net = import_from_nir(nir.read(path))
    outputs, state = [], None
    for _ in range(T):
        out, state = net(x, state)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return torch.stack(outputs)


def run_sinabs(path, x, T):
    import nir
    import sinabs

    net = sinabs.from_nir(nir.read(path), batch_size=x.shape[0])
    sinabs.reset_states(net)
    # sinabs's squeeze layers take [B*T, ...], batch-major (sample b's T steps together)
    out = net(x.unsqueeze(1).expand(x.shape[0], T, *x.shape[1:]).reshape(-1, *x.shape[1:]))
    out = out[0] if isinstance(out, tuple) else out  # nirtorch.load's graph returns (output, state)
    return out.reshape(x.shape[0], T, -1).transpose(0, 1)


def run_norse(path, x, T):
    import nir
    import norse.torch

    net = norse.torch.from_nir(nir.read(path))  # its reset_method reaches LIF nodes, not IF
    outputs, state = [], None
    for _ in range(T):
        out, state = net(x, state)
        outputs.append(out)
    return torch.stack(outputs)


PEERS = {  # tool -> (the pooling form its importer reads, the run)
    "SpikingJelly 2.0": ("avg", run_spikingjelly),
    "snnTorch 1.0": ("avg", run_snntorch),
    "sinabs 3.1": ("sum", run_sinabs),
    "Norse 1.1": ("sum", run_norse),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--p", type=int, default=2, help="NoisyQuant levels (default 2)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x_train, y_train, x_test, y_test = digits_tensors()
    model = train(args.p, args.epochs, args.seed, x_train, y_train)
    T = max(STEPS)
    snn = to_snn(model, T=T)
    with torch.no_grad():
        ann = (model(x_test).argmax(1) == y_test).float().mean().item()
        ours = snn(x_test)  # [T, B, K]: mean over steps 1..t
    rows = [("na_kernels", "-", "runs", ours)]
    with tempfile.TemporaryDirectory() as folder:
        for tool, (pooling, run) in PEERS.items():
            path = os.path.join(folder, f"digits_{pooling}.nir")
            if not os.path.exists(path):
                import nir

                nir.write(path, to_nir(snn, tuple(x_test.shape[1:]), pooling=pooling))
            try:
                with torch.no_grad():
                    means = running_mean(run(path, x_test, T).float())
                rows.append((tool, pooling, "runs", means))
            except ImportError as error:
                rows.append((tool, pooling, f"not installed ({error.name})", None))
            except Exception as error:  # report what the importer or its forward raised
                traceback.print_exc(file=sys.stderr)
                rows.append((tool, pooling, f"fails: {type(error).__name__}: {str(error)[:80]}", None))
    print(
        f"digits CNN, NoisyQuant p = {args.p}, {args.epochs} epochs, seed {args.seed}; ANN {100 * ann:.1f} %; "
        f"test accuracy % (distance from na_kernels' mean output)"
    )
    print("| tool | pooling | file | " + " | ".join(f"T = {t}" for t in STEPS) + " |")
    print("|---|---|---|" + "---|" * len(STEPS))
    for tool, pooling, status, means in rows:
        cells = []
        for t in STEPS:
            if means is None:
                cells.append("-")
                continue
            accuracy = (means[t - 1].argmax(1) == y_test).float().mean().item()
            distance = ((means[t - 1] - ours[t - 1]).norm() / ours[t - 1].norm()).item()
            cells.append(f"{100 * accuracy:.1f}" + ("" if tool == "na_kernels" else f" ({distance:.2f})"))
        print(f"| {tool} | {pooling} | {status} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
