"""NoisyQuant, the drop-in activation module: formula, λ positivity, "auto", state dict, repr."""

import gc
import io

import pytest
import torch
from torch import nn

import na_kernels
from na_kernels.nn import NoisyQuant


def quantize(x, p, lam):
    return torch.clamp(torch.floor(x * p / lam + 0.5), 0, p) * lam / p


def test_eval_is_the_deterministic_quantizer():
    module = NoisyQuant(3, lam=2.0, noise="uniform").eval()
    x = torch.randn(4, 5, 6) * 2
    torch.testing.assert_close(module(x), quantize(x, 3, torch.tensor(2.0)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(module(x), module(x))  # no noise in eval


def test_training_adds_noise_and_matches_the_op():
    module = NoisyQuant(3, lam=2.0, noise="uniform").train()
    x = torch.randn(64, 8) * 2
    torch.manual_seed(7)
    y = module(x)
    torch.manual_seed(7)
    expected = na_kernels.noisy_quant(x, 3, module.lam, noise="uniform")
    torch.testing.assert_close(y, expected)
    assert not torch.equal(y, module.eval()(x))


def test_qcfs_and_gaussian_single_step():
    x = torch.randn(32, 4)
    qcfs = NoisyQuant(4, lam=1.5, noise=None).train()
    assert NoisyQuant(4, noise="none").noise is None
    torch.testing.assert_close(qcfs(x), quantize(x, 4, torch.tensor(1.5)), rtol=1e-6, atol=1e-6)
    single = NoisyQuant(1, lam=1.0, noise="gaussian").train()
    y = single(x)
    lam = single.lam.detach()  # softplus(raw) + min_lam: 1.0 to float precision
    torch.testing.assert_close(lam, torch.tensor(1.0))
    assert set(torch.unique(y).tolist()) <= {0.0, lam.item()}


def test_per_channel_lambda_applies_along_dim_1():
    module = NoisyQuant(3, lam=1.0, per_channel=True, channels=4).eval()
    module.lam = torch.tensor([0.5, 1.0, 2.0, 4.0])
    x = torch.rand(2, 4, 3, 3) * 4
    expected = quantize(x, 3, module.lam.detach().reshape(1, 4, 1, 1))
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)


def test_lambda_gets_a_gradient_and_stays_positive_under_a_large_step():
    module = NoisyQuant(3, lam=1.0, noise="uniform", per_channel=True, channels=3)
    optimizer = torch.optim.SGD(module.parameters(), lr=100.0)
    x = torch.rand(16, 3, 4) * 3
    for step in range(5):
        # every output is pushed down: the gradient shrinks λ (clipped inputs have dy/dλ = 1)
        loss = module(x).sum()
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            assert module.raw_lam.grad is not None and torch.all(module.raw_lam.grad > 0)
        optimizer.step()
        assert torch.all(module.lam > 0) and torch.all(torch.isfinite(module.lam))
    assert torch.all(module.lam < 1.0)
    module(x).sum().backward()  # λ near its floor still gives a finite forward and backward


def test_auto_lambda_uses_a_high_percentile_of_the_first_training_batch():
    module = NoisyQuant(3, lam="auto")
    assert module.auto_pending and "auto" in repr(module)
    with pytest.raises(RuntimeError, match="auto"):
        module.eval()(torch.randn(4, 4))
    x = torch.randn(200, 50)
    module.train()(x)
    expected = torch.quantile(x.clamp_min(0).flatten(), 0.999)
    torch.testing.assert_close(module.lam.detach(), expected, rtol=1e-4, atol=1e-4)
    first = module.lam.detach().clone()
    module(x * 10)  # later batches leave λ to the optimizer
    torch.testing.assert_close(module.lam.detach(), first)


def test_auto_per_channel_and_optimizer_created_before_the_first_batch():
    module = NoisyQuant(3, lam="auto", per_channel=True)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    scales = torch.tensor([0.5, 1.0, 4.0])
    x = torch.randn(64, 3, 5, 5) * scales.reshape(1, 3, 1, 1)
    module(x).sum().backward()
    assert module.lam.shape == (3,)
    expected = torch.quantile(x.clamp_min(0).transpose(0, 1).reshape(3, -1), 0.999, dim=1)
    torch.testing.assert_close(module.lam.detach(), expected, rtol=1e-4, atol=1e-4)
    before = module.raw_lam.detach().clone()
    optimizer.step()  # the optimizer holds the same Parameter object
    assert not torch.equal(before, module.raw_lam.detach())


def test_state_dict_round_trip_including_auto_state():
    module = NoisyQuant(7, lam="auto", per_channel=True)
    module.train()(torch.randn(32, 5, 3))
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh = NoisyQuant(7, lam="auto", per_channel=True)
    fresh.load_state_dict(torch.load(buffer))
    assert not fresh.auto_pending
    torch.testing.assert_close(fresh.lam, module.lam)
    x = torch.randn(4, 5, 3)
    torch.testing.assert_close(fresh.eval()(x), module.eval()(x))
    # a checkpoint saved before "auto" happened keeps it pending
    pending = NoisyQuant(7, lam="auto")
    reloaded = NoisyQuant(7, lam="auto")
    reloaded.load_state_dict(pending.state_dict())
    assert reloaded.auto_pending


def test_repr_names_the_settings():
    text = repr(NoisyQuant(3, lam=8.0, noise="uniform"))
    assert "p=3" in text and "lam=8" in text and "uniform" in text
    assert "QCFS" in repr(NoisyQuant(3, noise=None))
    assert "per-channel[4]" in repr(NoisyQuant(3, per_channel=True, channels=4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(p=0), "p must"),
        (dict(p=2.5), "p must"),
        (dict(p=3, lam=0.0), "lam must"),
        (dict(p=3, lam=-1.0), "lam must"),
        (dict(p=3, lam="max"), "lam must"),
        (dict(p=3, noise="laplace"), "noise must"),
        (dict(p=3, scale=-1.0), "scale must"),
        (dict(p=3, channels=4), "per_channel"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoisyQuant(**kwargs)


def test_arguments_follow_the_shared_rules():
    # p is an integral number >= 1 as in the op; "none" and None both mean QCFS
    assert NoisyQuant(3.0).p == 3 and type(NoisyQuant(3.0).p) is int
    assert NoisyQuant(3, noise="none").noise is None and NoisyQuant(3, noise=None).noise is None
    with pytest.raises(ValueError, match="p must be an int >= 1"):
        NoisyQuant(2.5)
    with pytest.raises(TypeError, match="p must"):
        NoisyQuant(True)
    x = torch.randn(4, 6)
    torch.testing.assert_close(NoisyQuant(3.0, lam=2.0).eval()(x), na_kernels.noisy_quant(x, 3.0, 2.0, noise=None))


def test_per_channel_mismatch_raises():
    module = NoisyQuant(3, per_channel=True, channels=4)
    with pytest.raises(ValueError, match="4 channels"):
        module(torch.randn(2, 5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_low_precision(dtype):
    model = nn.Sequential(nn.Linear(8, 16), NoisyQuant(3, lam=1.0), nn.Linear(16, 4))
    x = torch.randn(6, 8)
    with torch.autocast("cpu", dtype=dtype):
        y = model(x)
    y.float().sum().backward()
    assert model[1].raw_lam.grad is not None and torch.isfinite(model[1].raw_lam.grad).all()


def test_data_parallel_wrapper_runs():
    model = nn.DataParallel(nn.Sequential(nn.Linear(4, 8), NoisyQuant(3, lam=1.0)))
    model(torch.randn(3, 4)).sum().backward()  # on CPU DataParallel calls the module directly
    assert model.module[1].raw_lam.grad is not None


def test_compiles_without_graph_breaks():
    module = NoisyQuant(3, lam=2.0).eval()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 6)
    torch.testing.assert_close(compiled(x), module(x))


def test_auto_lambda_is_averaged_over_ranks_under_distributed(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    ddp = None
    try:
        model = nn.Sequential(nn.Linear(4, 8), NoisyQuant(3, lam="auto"))
        ddp = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(32, 4)
        ddp(x).sum().backward()
        expected = torch.quantile(model[0](x).detach().clamp_min(0).flatten(), 0.999)
        torch.testing.assert_close(model[1].lam.detach(), expected, rtol=1e-4, atol=1e-4)
        assert model[1].raw_lam.grad is not None
    finally:
        # DDP's reducer holds the process group: freed after destroy_process_group (when this frame
        # goes), ~ProcessGroupGloo can block forever joining its worker threads
        del ddp
        gc.collect()
        dist.destroy_process_group()


@pytest.mark.parametrize("initial", [8.0, "auto"])
def test_lam_set_before_the_first_forward_of_a_per_channel_module_is_kept(initial):
    module = NoisyQuant(3, lam=initial, per_channel=True)
    module.lam = 2.0  # channels not known yet
    module.eval()(torch.ones(1, 4))
    torch.testing.assert_close(module.lam.detach(), torch.full((4,), 2.0), rtol=1e-6, atol=0)
    assert not module.auto_pending


def test_functional_op_adds_noise_only_when_training_as_dropout():
    x = torch.linspace(-1, 2, 1000)
    quantized = na_kernels.noisy_quant(x, 3, 1.5, noise=None)
    assert torch.equal(na_kernels.noisy_quant(x, 3, 1.5, seed=7, training=False), quantized)
    assert not torch.equal(na_kernels.noisy_quant(x, 3, 1.5, seed=7), quantized)  # default training=True
    assert torch.equal(
        na_kernels.noisy_quant(x, 3, 1.5, seed=7, training=True), na_kernels.noisy_quant(x, 3, 1.5, seed=7)
    )
    with pytest.raises(TypeError, match="training must be True or False"):
        na_kernels.noisy_quant(x, 3, 1.5, training="eval")


def test_unclear_errors_of_the_module_are_named():
    import math

    module = NoisyQuant(3)
    with pytest.raises(TypeError, match="lam must be a positive number"):
        module.lam = "x"
    with pytest.raises(ValueError, match="per_channel=True"):
        module.lam = [1.0, 2.0]
    module.lam = torch.tensor([2.0])  # one number in a 1-element tensor is one number
    assert abs(float(module.lam.detach()) - 2.0) < 1e-6
    per_channel = NoisyQuant(3, per_channel=True, channels=2)
    per_channel.lam = [1.0, 3.0]
    torch.testing.assert_close(per_channel.lam.detach(), torch.tensor([1.0, 3.0]))
    auto = NoisyQuant(3, lam="auto").train()
    with pytest.raises(ValueError, match="first training batch, which is empty"):
        auto(torch.randn(0, 4))
    assert auto.auto_pending
    with pytest.raises(ValueError, match="min_lam"):
        NoisyQuant(3, min_lam=math.inf)
    with pytest.raises(TypeError, match="NoisyQuant: x must be a dense tensor.*to_dense"):
        NoisyQuant(3).eval()(torch.randn(4, 4).to_sparse())
    nested = torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)], layout=torch.jagged)
    with pytest.raises(TypeError, match="nested tensor"):
        NoisyQuant(3).eval()(nested)
