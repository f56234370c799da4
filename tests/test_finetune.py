"""Fine-tuning a converted SNN with BPTT through integrate_fire's surrogate backward (T = 2)."""

import os
import subprocess
import sys

import pytest
import torch
from nn_models import randomize_batchnorm
from torch import nn
from torch.nn import functional as F

import na_kernels
from na_kernels.app.datasets import digits_split
from na_kernels.nn import IFLayer, replace_activations, to_snn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digits_batch(n=64):
    train, _ = digits_split()
    return (train.images[:n].float() - 4.88) / 6.02, train.labels[:n]


def _converted(T=2):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    model, _ = replace_activations(randomize_batchnorm(model), p=3, noise=None, lam="auto")
    x, _ = _digits_batch()
    model.train()(x)  # initialise the "auto" clip levels
    return to_snn(model.eval(), T=T)


def _gradients(snn, x, y, **kwargs):
    snn.zero_grad()
    F.cross_entropy(snn(x, **kwargs)[-1], y).backward()
    return {name: p.grad.clone() for name, p in snn.named_parameters()}


@pytest.mark.slow
def test_few_steps_reduce_the_loss_at_T2():
    snn = _converted(T=2)
    x, y = _digits_batch()
    optimizer = torch.optim.Adam(snn.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(snn(x)[-1], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses  # 2.30 -> 1.47 on this batch


def test_every_weight_gets_a_gradient_through_the_if_layers():
    """The stem (before the first IF layer) and the layers after IF layers all receive gradients."""
    snn = _converted(T=2)
    x, y = _digits_batch()
    grads = _gradients(snn, x, y)
    assert len(snn.if_layers) == 2 and all(isinstance(m, IFLayer) for m in snn.if_layers.values())
    assert set(grads) == {name for name, _ in snn.named_parameters()}
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name


def test_fused_backward_matches_the_reference_and_chunks():
    """The network's gradients with the C++ kernels equal those of the PyTorch reference (sigmoid
    surrogate: within rounding), and a chunked run (potential carried in the graph) gives the same."""
    snn = _converted(T=3)
    x, y = _digits_batch(16)
    with na_kernels.use_backend("cpu"):
        fused = _gradients(snn, x, y)
        chunked = _gradients(snn, x, y, chunk=1)
    with na_kernels.use_backend("reference"):
        reference = _gradients(snn, x, y)
    for name in fused:
        torch.testing.assert_close(fused[name], reference[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chunked[name], fused[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_finetune_example_runs_and_writes_nothing(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "python", "finetune_snn.py"),
            "--ann-epochs",
            "1",
            "--epochs",
            "1",
            "--T",
            "2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    tuned = [l for l in lines if l.startswith("fine-tuned SNN, T=2:")]
    assert tuned and float(tuned[0].split()[-1].rstrip("%")) > 80.0
    assert list(tmp_path.iterdir()) == []
