"""batchnorm_noisy_quant on channels-last x: y in x's layout with the same values, bit for bit, at
every logical position as for contiguous x (the noise of the logical index), the mask in y's memory
order, gradients as the contiguous path's within float rounding (in y's layout), the fake rule's
strides, and torch.compile (Inductor, which keeps convolutions' outputs channels-last)."""

import importlib

import pytest
import torch
from conftest import BACKENDS, interpreted
from torch import nn

import na_kernels
from na_kernels._spec import BatchNormNoisyQuantArgs, Noise
from na_kernels.ops.batchnorm_noisy_quant import OP, batchnorm_noisy_quant, reference

CL = torch.channels_last


def make_case(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]
    return dict(
        x=(torch.randn(shape, generator=g) * 2 + 0.5).to(dtype),
        residual=torch.randn(shape, generator=g).to(dtype),
        weight=torch.randn(channels, generator=g),
        bias=torch.randn(channels, generator=g),
        lam=torch.rand(channels, generator=g) + 0.5,
        running_mean=torch.randn(channels, generator=g),
        running_var=torch.rand(channels, generator=g) + 0.5,
        grad_y=torch.randn(shape, generator=g).to(dtype),
    )


def run(backend, case, x_layout, residual_layout, *, training=True, noise="uniform", seed=3):
    """(y, running_mean, running_var, {name: gradient}); residual_layout None: no residual."""
    x = case["x"].clone().requires_grad_()
    leaves = {k: case[k].clone().requires_grad_() for k in ("weight", "bias", "lam")}
    r = case["residual"].clone().requires_grad_() if residual_layout is not None else None
    rm, rv = case["running_mean"].clone(), case["running_var"].clone()
    with na_kernels.use_backend(backend):
        y = batchnorm_noisy_quant(
            x.contiguous(memory_format=x_layout),
            leaves["weight"],
            leaves["bias"],
            rm,
            rv,
            3,
            leaves["lam"],
            residual=None if r is None else r.contiguous(memory_format=residual_layout),
            training=training,
            noise=noise,
            seed=seed,
        )
    y.backward(case["grad_y"].contiguous(memory_format=x_layout))
    grads = {"x": x.grad, **{k: v.grad for k, v in leaves.items()}}
    if r is not None:
        grads["residual"] = r.grad
    return y.detach(), rm, rv, grads


def assert_matches_contiguous(backend, case, residual_layout, **kwargs):
    y0, rm0, rv0, g0 = run(backend, case, torch.contiguous_format, residual_layout, **kwargs)
    y1, rm1, rv1, g1 = run(backend, case, CL, residual_layout, **kwargs)
    assert y1.is_contiguous(memory_format=CL) and y1.stride() == case["x"].contiguous(memory_format=CL).stride()
    assert torch.equal(y0, y1), (y0 != y1).sum()
    torch.testing.assert_close(rm1, rm0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rv1, rv0, rtol=1e-6, atol=1e-7)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5, msg=name)


SHAPES = [(4, 3, 5, 7), (3, 17, 4, 3), (2, 70, 3, 5), (2, 16, 8, 8)]


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("residual_layout", [None, torch.contiguous_format, CL], ids=["none", "contig", "cl"])
def test_channels_last_matches_contiguous(backend, device, shape, residual_layout):
    if interpreted(backend, device) and shape[1] == 70:
        pytest.skip("the interpreter: small sizes")
    case = make_case(shape, seed=shape[1])
    for training in (True, False):
        assert_matches_contiguous(backend, case, residual_layout, training=training)
    assert_matches_contiguous(backend, case, residual_layout, noise="gaussian")


@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
def test_cpp_noise_in_registers(simd_level, noise):
    """Channels a multiple of 16 and inner a multiple of 4 (AVX-512 makes the noise in registers)."""
    for shape in [(3, 16, 4, 5), (2, 48, 6, 2), (2, 32, 36, 30)]:
        case = make_case(shape, seed=shape[1])
        assert_matches_contiguous("cpu", case, CL, noise=noise)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_mask_is_in_y_memory_order(backend, device):
    case = make_case((3, 5, 4, 7))
    args = BatchNormNoisyQuantArgs(3, Noise.UNIFORM, 1.0, 0.5, True, 0.1, 1e-5)
    tensors = [case[k] for k in ("x", "residual", "weight", "bias", "running_mean", "running_var", "lam")]
    with na_kernels.use_backend(backend):
        y0, _, _, mask0, _, _ = OP(*tensors, torch.tensor([9]), args)
        y1, _, _, mask1, _, _ = OP(tensors[0].contiguous(memory_format=CL), *tensors[1:], torch.tensor([9]), args)
    assert torch.equal(y0, y1) and y1.is_contiguous(memory_format=CL)
    inside = reference.unpack_mask(mask0, y0.shape)
    assert torch.equal(mask1[:-1], reference.pack_mask(inside.permute(0, 2, 3, 1)))  # bit i: i-th element in memory
    assert torch.equal(reference.unpack_mask(mask1[:-1], y1.shape, True), inside)
    assert mask0[-1].item() == 0 and mask1[-1].item() == 1  # the order byte
    assert torch.equal(reference.unpack_op_mask(mask0, y0.shape), inside)
    assert torch.equal(reference.unpack_op_mask(mask1, y1.shape), inside)
    # the mask agrees with y: outside [0, p] the level is clamped to 0 or p
    lam = case["lam"].reshape(1, -1, 1, 1)
    level = torch.round(y1 * 3 / lam)
    assert bool(((level > 0) & (level < 3))[~inside].logical_not().all())


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_reads_the_mask_order_not_y_strides(backend, device, dtype):
    """torch.compile may give backward a restrided copy of the y forward returned (Inductor did so
    for a ResNet's last activation, read by the average pool): the gradients are the same, in the
    layout of the y given."""
    if interpreted(backend, device) and dtype is not torch.float32:
        pytest.skip("the interpreter: float32 only")
    case = make_case((3, 16, 4, 5), dtype, seed=5)
    flat = (3, 1, 1.0, 0.5, True, 0.1, 1e-5)
    weight, bias, lam = (case[k].to(device) for k in ("weight", "bias", "lam"))
    residual, grad_y = case["residual"].to(device), case["grad_y"].to(device)
    other = {CL: torch.contiguous_format, torch.contiguous_format: CL}
    with na_kernels.use_backend(backend):
        for layout in (CL, torch.contiguous_format):
            x = case["x"].to(device).contiguous(memory_format=layout)
            y, mean, invstd, mask, _, _ = torch.ops.na_kernels.batchnorm_noisy_quant(
                x, residual, weight, bias, None, None, lam, torch.tensor([4], device=device), *flat
            )

            def grads(y_given):
                return torch.ops.na_kernels.batchnorm_noisy_quant_backward(
                    grad_y, x, residual, y_given, mask, mean, invstd, weight, bias, lam, *flat, True
                )

            want = grads(y)
            got = grads(y.contiguous(memory_format=other[layout]))
            for name, a, b in zip(("x", "residual", "weight", "bias", "lam"), got, want):
                torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5, msg=name)
            for g in got[:2]:
                assert g.is_contiguous(memory_format=other[layout])


@pytest.mark.parametrize("residual", [False, True])
def test_cpp_channels_last_at_every_simd_level(simd_level, residual):
    """Vectors of 16 / 8 / 1 channels and the scalar tail: odd channel counts, 1 and 2 threads."""
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            # (2, 71, 30, 20): two work items per image, split inside a byte of the mask; 16k channels
            # and inner % 4 == 0: the noise in registers on AVX-512, (2, 32, 36, 30) in two items
            for shape in [(3, 17, 5, 3), (2, 70, 3, 3), (4, 3, 9, 11), (2, 71, 30, 20), (3, 16, 4, 5), (2, 32, 36, 30)]:
                case = make_case(shape, seed=shape[1] + count)
                assert_matches_contiguous("cpu", case, CL if residual else None, training=True)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_16_bit_channels_last_keeps_the_layout(backend, dtype):
    if backend == "cpu" and not na_kernels.cpu.available():
        pytest.skip("C++ extension not built")
    case = make_case((3, 5, 4, 6), dtype)
    y0, _, _, g0 = run(backend, case, torch.contiguous_format, CL)
    y1, _, _, g1 = run(backend, case, CL, CL)
    assert y1.is_contiguous(memory_format=CL) and torch.equal(y0, y1)
    for name in g0:
        torch.testing.assert_close(g1[name].float(), g0[name].float(), rtol=1e-2, atol=1e-2, msg=name)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_opcheck_channels_last(backend):
    """The fake rules give the strides the kernels deliver (channels-last y and gradients)."""
    if backend == "cpu" and not na_kernels.cpu.available():
        pytest.skip("C++ extension not built")
    case = make_case((3, 5, 4, 3))
    flat = (3, 1, 1.0, 0.5, True, 0.1, 1e-5)
    x = case["x"].contiguous(memory_format=CL)
    with na_kernels.use_backend(backend):
        for residual in (None, case["residual"], case["residual"].contiguous(memory_format=CL)):
            torch.library.opcheck(
                torch.ops.na_kernels.batchnorm_noisy_quant.default,
                (x.requires_grad_(), residual, case["weight"].requires_grad_(), case["bias"], None, None)
                + (case["lam"], torch.tensor([3]), *flat),
            )
        y, mean, invstd, mask, _, _ = torch.ops.na_kernels.batchnorm_noisy_quant(
            x.detach(), None, case["weight"].detach(), case["bias"], None, None, case["lam"], torch.tensor([3]), *flat
        )
        assert y.is_contiguous(memory_format=CL)
        for need in (False, True):
            torch.library.opcheck(
                torch.ops.na_kernels.batchnorm_noisy_quant_backward.default,
                (case["grad_y"], x.detach(), case["residual"], y, mask, mean, invstd, case["weight"].detach())
                + (case["bias"], case["lam"], *flat, need),
            )


class _Block(nn.Module):
    def __init__(self, channels=6):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.lam = nn.Parameter(torch.full((channels,), 2.0))
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x):
        h = self.conv(x)
        bn = self.bn
        y = batchnorm_noisy_quant(
            h, bn.weight, bn.bias, bn.running_mean, bn.running_var, 4, self.lam, training=self.training, seed=11
        )
        return self.conv2(y)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_inductor_conv_bn_noisy_quant_matches_eager(backend, one_thread, monkeypatch):
    """Inductor runs the convolutions channels-last and passes their outputs as they are
    (flexible_layout): the backend gets channels-last x, grad_y and y; y, the running statistics
    and the gradients as eager."""
    if backend == "cpu" and not na_kernels.cpu.available():
        pytest.skip("C++ extension not built")
    module = (
        reference if backend == "reference" else importlib.import_module("na_kernels.ops.batchnorm_noisy_quant.cpu")
    )
    seen = []
    forward, backward = module.forward, module.backward

    def logged_forward(x, *rest):
        seen.append(x.stride())
        return forward(x, *rest)

    def logged_backward(grad_y, x, residual, y, *rest):
        seen.extend([grad_y.stride(), y.stride()])
        return backward(grad_y, x, residual, y, *rest)

    monkeypatch.setattr(module, "forward", logged_forward)
    monkeypatch.setattr(module, "backward", logged_backward)
    torch.manual_seed(0)
    eager = _Block()
    compiled_model = _Block()
    compiled_model.load_state_dict(eager.state_dict())
    x = torch.randn(4, 3, 7, 5)
    with na_kernels.use_backend(backend):
        out_eager = eager(x)
        out_eager.square().sum().backward()
        torch._dynamo.reset()
        seen.clear()
        with torch._inductor.config.patch(force_layout_optimization=True):
            compiled = torch.compile(compiled_model, fullgraph=True)
            out = compiled(x)
            out.square().sum().backward()
    channels_last = x.new_empty(4, 6, 7, 5).contiguous(memory_format=CL).stride()
    assert seen == [channels_last] * 3
    torch.testing.assert_close(out, out_eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled_model.bn.running_mean, eager.bn.running_mean)
    torch.testing.assert_close(compiled_model.bn.running_var, eager.bn.running_var)
    for (name, a), b in zip(compiled_model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-3, msg=name)


class _Tail(_Block):
    """A ResNet's end: the op's y read by the average pool (Inductor saved a contiguous copy of it)."""

    def forward(self, x):
        bn = self.bn
        y = batchnorm_noisy_quant(
            self.conv(x), bn.weight, bn.bias, bn.running_mean, bn.running_var, 4, self.lam, seed=11
        )
        return y.mean((2, 3))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_inductor_network_tail_matches_eager(backend, one_thread):
    if backend == "cpu" and not na_kernels.cpu.available():
        pytest.skip("C++ extension not built")
    torch.manual_seed(0)
    eager, compiled_model = _Tail(16), _Tail(16)
    compiled_model.load_state_dict(eager.state_dict())
    x = torch.randn(4, 3, 6, 6)
    weights = torch.randn(4, 16)
    with na_kernels.use_backend(backend):
        (eager(x) * weights).sum().backward()
        torch._dynamo.reset()
        with torch._inductor.config.patch(force_layout_optimization=True):
            (torch.compile(compiled_model, fullgraph=True)(x) * weights).sum().backward()
    for (name, a), b in zip(compiled_model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-3, msg=name)
