"""The default noise scale per noise kind (scale=None), and an explicit scale winning over it."""
import pytest
import torch

import na_kernels
from conftest import BACKENDS
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
    model, _ = replace_activations(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), 1,
                                   noise="gaussian", scale=0.5)
    assert model[1].scale == 0.5
    with pytest.raises(ValueError, match="scale must be >= 0"):
        NoisyQuant(1, noise="gaussian", scale=-1.0)
