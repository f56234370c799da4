"""The default noise scale per noise kind (scale=None), and an explicit scale winning over it."""

import pytest
import torch
from conftest import BACKENDS

import na_kernels
from na_kernels._spec import DEFAULT_NOISE_SCALE, Noise
from na_kernels.nn import NoisyQuant, replace_activations


def test_default_scale_table():
    assert DEFAULT_NOISE_SCALE == {Noise.NONE: 0.0, Noise.UNIFORM: 1.0, Noise.GAUSSIAN: 0.3}
    assert set(DEFAULT_NOISE_SCALE) == set(Noise)
    assert Noise.GAUSSIAN.default_scale == 0.3


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
def test_op_default_scale_is_the_kinds_and_explicit_scale_wins(backend, device, noise):
    x = (torch.randn(2, 3, 7, 5) * 2).to(device)
    default = DEFAULT_NOISE_SCALE[Noise.parse("noise", noise)]
    with na_kernels.use_backend(backend):
        y_default = na_kernels.noisy_quant(x, 3, 1.5, noise=noise, seed=11)
        y_same = na_kernels.noisy_quant(x, 3, 1.5, noise=noise, scale=default, seed=11)
        y_other = na_kernels.noisy_quant(x, 3, 1.5, noise=noise, scale=0.7, seed=11)
        y_zero = na_kernels.noisy_quant(x, 3, 1.5, noise=noise, scale=0.0, seed=11)
        y_none = na_kernels.noisy_quant(x, 3, 1.5, noise=None)
    torch.testing.assert_close(y_default, y_same, rtol=0, atol=0)
    assert not torch.equal(y_default, y_other)
    torch.testing.assert_close(y_zero, y_none, rtol=0, atol=0)  # an explicit 0 is no noise, not the default


def test_gaussian_default_is_about_the_uniform_noise_spread():
    """σ = 0.3 step: the fraction of inputs moved to another level matches the uniform noise's."""
    x = torch.rand(1 << 16) * 3  # p = 3, λ = 3: one step per unit
    moved = {}
    for noise in ("uniform", "gaussian"):
        y = na_kernels.noisy_quant(x, 3, 3.0, noise=noise, seed=5)
        moved[noise] = float((y != na_kernels.noisy_quant(x, 3, 3.0, noise=None)).float().mean())
    # uniform: 1/4 of the inputs move; gaussian σ = 0.3: E over the step of P(|N(0, .3)| > distance to a boundary)
    assert abs(moved["uniform"] - 0.25) < 0.01
    assert 0.2 < moved["gaussian"] < 0.3


def test_module_and_replace_activations_default_and_explicit_scale():
    assert NoisyQuant(1, noise="gaussian").scale == 0.3
    assert NoisyQuant(1, noise="uniform").scale == 1.0
    assert NoisyQuant(1, noise="gaussian", scale=1.0).scale == 1.0
    assert NoisyQuant(1, noise="uniform", scale=0.0).scale == 0.0
    assert "scale=0.3" in repr(NoisyQuant(1, noise="gaussian"))
    model, _ = replace_activations(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), 1, noise="gaussian")
    assert model[1].scale == 0.3
    model, _ = replace_activations(
        torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), 1, noise="gaussian", scale=0.5
    )
    assert model[1].scale == 0.5
    with pytest.raises(ValueError, match="scale must be >= 0"):
        NoisyQuant(1, noise="gaussian", scale=-1.0)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow
def test_single_step_gaussian_trains_by_default_like_uniform():
    """noise="gaussian", p = 1 (the T = 1 strategy) with the default scale trains the demo CNN about as
    well as uniform noise (σ = 1.0, the old default, stays near chance: 8-14 % after 3 epochs)."""
    from argparse import Namespace

    from na_kernels.app.datasets import BatchLoader, digits_split
    from na_kernels.app.demo import _demo_train
    from na_kernels.app.train import evaluate_snn
    from na_kernels.nn import to_snn

    train, test = digits_split()
    args = Namespace(seed=0, p=1, lam=2.0, batch_size=32, lr=0.05, epochs=3)
    acc = {}
    for noise in ("gaussian", "uniform"):
        model = _demo_train(noise, noise, train, args, show=False)["model"]
        assert all(
            m.scale == DEFAULT_NOISE_SCALE[Noise.parse("noise", noise)]
            for m in model.modules()
            if isinstance(m, NoisyQuant)
        )
        acc[noise] = evaluate_snn(to_snn(model, 8), BatchLoader(test, 256), show_progress=False)
    for T in (1, 8):
        assert acc["gaussian"][T - 1] >= 0.85, acc["gaussian"][T - 1]
        # 3 epochs (the measured 15-epoch gap is under a point, docs/design.md): within 3 points
        assert acc["gaussian"][T - 1] >= acc["uniform"][T - 1] - 0.03, (T, acc)
