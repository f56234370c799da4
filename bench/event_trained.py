"""A briefly trained ResNet-20 for the event-driven SNN measurements: the event convolutions'
time depends on the firing rates, so random weights alone say little.

Trains ``resnet20`` with NoisyQuant(p=3, λ=8) activations (bench/model_cases.py's network) for
``--steps`` SGD steps on the bundled 10k MNIST digits, padded to 32x32 and repeated to 3 channels,
saves the ANN state dict (``--out``, for ``NA_BENCH_SNN_STATE``), and prints the test accuracy of
the ANN and of the T-step SNN (dense and event-driven), the per-layer firing rates, and the
fraction of IF outputs that differ between the dense and the event-driven run.

    python bench/event_trained.py --steps 300 --out /tmp/resnet20-mnist.pt
    NA_BENCH_SNN_STATE=/tmp/resnet20-mnist.pt python bench/profile_snn.py --arch resnet20 --compare ...
"""

import argparse
import time

import model_cases
import torch
import torch.nn.functional as F


def mnist32(data):
    """uint8 [N, 1, 28, 28] -> normalised float [N, 3, 32, 32] (zero padding, repeated channels)."""
    x = data.images.float() / data.max_value
    x = (x - data.mean[0] / data.max_value) / (data.std[0] / data.max_value)
    return F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)


def train(model, x, y, steps, batch, lr):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def spike_outputs(snn, x):
    """{IF layer: its output} of one run of ``snn`` on x."""
    from na_kernels.nn import IFLayer

    out = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: out.__setitem__(m.name, o.detach().clone()))
        for m in snn.network.modules()
        if isinstance(m, IFLayer)
    ]
    try:
        with torch.no_grad():
            logits = snn(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, out


def main():
    from na_kernels.app.datasets import mnist10k_split
    from na_kernels.nn import NoisyQuant, to_snn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--test", type=int, default=512, help="test images for the accuracies and rates")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_data, test_data = mnist10k_split()
    x, y = mnist32(train_data), train_data.labels
    xt, yt = mnist32(test_data)[: args.test], test_data.labels[: args.test]
    torch.manual_seed(0)
    model = model_cases.architectures()["resnet20"](10, act=lambda: NoisyQuant(p=model_cases.P, lam=model_cases.LAM))
    start = time.perf_counter()
    train(model, x, y, args.steps, args.batch, args.lr)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s wall")
    torch.save(model.state_dict(), args.out)
    with torch.no_grad():
        print(f"ANN test accuracy ({args.test} images): {(model(xt).argmax(1) == yt).float().mean().item():.3f}")
    snn = to_snn(model, T=args.T).eval().to(memory_format=torch.channels_last)
    snn.record_statistics(False)
    xt = xt.contiguous(memory_format=torch.channels_last)
    dense, dense_spikes = spike_outputs(snn.event_driven(False), xt)
    event, event_spikes = spike_outputs(snn.event_driven(True), xt)
    for name, logits in (("dense", dense), ("event", event)):
        print(f"SNN T={args.T} {name} test accuracy: {(logits[-1].argmax(1) == yt).float().mean().item():.3f}")
    print(
        f"event vs dense: final outputs max |diff| {(event - dense).abs().max().item():.3g}, "
        f"predictions agree {(event[-1].argmax(1) == dense[-1].argmax(1)).float().mean().item():.4f}"
    )
    print("IF layer: firing rate (nonzero fraction of its spikes, all steps), differing spikes event vs dense")
    total = differing = 0
    for name, s in dense_spikes.items():
        diff = int((s != event_spikes[name]).sum())
        total, differing = total + s.numel(), differing + diff
        print(f"  {name:<24} {(s != 0).float().mean().item():.4f}  {diff}/{s.numel()}")
    print(f"differing spikes overall: {differing}/{total} = {differing / total:.2e}")


if __name__ == "__main__":
    main()
