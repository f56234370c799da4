"""NeuroBench 2.x on a converted SNN: its metrics next to na_kernels' own statistics.

Trains the digits CNN of python/nir_peers.py (NoisyQuant, p = 2), converts it with ``to_snn``,
runs the first ``--images`` test images at T steps, and benchmarks the same network and images
with NeuroBench twice: as one would wrap it naively (``snn(x)[-1]`` in a NeuroBenchModel with
``IFLayer`` registered as activation module) and through ``na_kernels.io.neurobench.neurobench_model``
(0/1 spikes, amplitude and pooling folded into the consuming layers, step by step). Prints both
next to ``snn.statistics()``.

    pip install --no-deps neurobench snntorch     # plus what they import (tqdm)
    python python/neurobench_digits.py [--T 4] [--images 200] [--epochs 15] [--seed 0]
"""

import argparse

import torch
from neurobench.benchmarks import Benchmark
from neurobench.metrics.workload import ActivationSparsity, ClassificationAccuracy, MembraneUpdates, SynapticOperations
from neurobench.models import NeuroBenchModel
from nir_peers import digits_tensors, train
from torch.utils.data import DataLoader, TensorDataset

from na_kernels.io.neurobench import argmax_postprocessor, neurobench_model
from na_kernels.nn import IFLayer, to_snn

METRICS = [ClassificationAccuracy, ActivationSparsity, SynapticOperations, MembraneUpdates]


class Naive(NeuroBenchModel):
    """The SNN as it is: one multi-step call, spikes carrying the amplitude, pooled spikes into convs."""

    def __init__(self, snn):
        super().__init__()
        self.net = snn
        self.add_activation_module(IFLayer)

    def __call__(self, x):
        with torch.no_grad():
            return self.net(x)[-1]

    def __net__(self):
        return self.net


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--p", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x_train, y_train, x_test, y_test = digits_tensors()
    model = train(args.p, args.epochs, args.seed, x_train, y_train)
    snn = to_snn(model, T=args.T)
    x, y = x_test[: args.images], y_test[: args.images]
    loader = DataLoader(TensorDataset(x, y), batch_size=100)

    snn.reset_statistics()
    with torch.no_grad():
        out = snn(x)
    stats = snn.statistics()
    ours = dict(
        accuracy=(out[-1].argmax(-1) == y).float().mean().item(),
        sparsity=1 - stats["total"]["firing_rate"],
        acs=stats["total"]["sops_per_sample"],
        macs=stats["total"]["analog_macs_per_sample"],
        updates=None,
    )
    print(snn.statistics_table())

    def bench(wrapped):
        r = Benchmark(wrapped, loader, [], [argmax_postprocessor], [[], METRICS]).run(quiet=True)
        ops = r["SynapticOperations"]
        return dict(
            accuracy=r["ClassificationAccuracy"],
            sparsity=r["ActivationSparsity"],
            acs=ops["Effective_ACs"],
            macs=ops["Effective_MACs"],
            updates=r["MembraneUpdates"],
        )

    naive = bench(Naive(snn))
    snn.record_statistics(False)
    adapted = bench(neurobench_model(snn, x[:8]))
    rows = [
        ("accuracy", "{:.4f}"),
        ("sparsity", "{:.5f}"),
        ("acs", "{:,.1f}"),
        ("macs", "{:,.1f}"),
        ("updates", "{:,.1f}"),
    ]
    labels = dict(
        accuracy="accuracy",
        sparsity="activation sparsity",
        acs="ACs / sample (SOPs)",
        macs="MACs / sample",
        updates="membrane updates / sample",
    )
    print(f"\ndigits CNN, T = {args.T}, {len(x)} test images")
    print(f"{'metric':<26}{'snn.statistics()':>18}{'NeuroBench, naive':>20}{'NeuroBench, adapter':>22}")
    for key, fmt in rows:
        cells = ["-" if d[key] is None else fmt.format(d[key]) for d in (ours, naive, adapted)]
        print(f"{labels[key]:<26}{cells[0]:>18}{cells[1]:>20}{cells[2]:>22}")


if __name__ == "__main__":
    main()
