"""bfloat16 on the Triton kernels, bit for bit against the C++ kernels (issue 12 item 4).

Triton's interpreter (3.9) converts fp32 -> bf16 by truncation and mangles subnormal bf16 inputs,
while compiled sm_90 code rounds to nearest even (cvt.rn.bf16.f32) and widens exactly
(cvt.f32.bf16); the kernels therefore convert bf16 themselves with integer operations
(``na_kernels/kernels/_storage.py``), so that interpreter and GPU compute the same bits, and launch
without libdevice flush-to-zero (Triton's default compiles tl.floor to cvt.rmi.ftz.f32). These
tests run the kernels on bf16 through the interpreter (natively on a GPU) and compile them for
sm_90 to check the PTX.
"""

import pytest
import torch
from conftest import TRITON_DEVICE, compile_triton_for_sm90, requires_cpp, requires_triton

import na_kernels

pytestmark = [requires_triton, requires_cpp]

BF16 = torch.bfloat16


def _bits(t):
    return t.contiguous().view(torch.int16).cpu()


def _special_bf16():
    """Values where rounding, subnormals, signed zeros and non-finite values matter."""
    tiny = torch.finfo(BF16).smallest_normal
    values = [
        0.34,
        0.2,
        0.71,
        -0.34,
        1.0 / 3,
        2.0 / 3,
        0.5,
        0.0,
        -0.0,
        float("inf"),
        -float("inf"),
        float("nan"),
        3.3e38,
        -3.3e38,
        tiny,
        -tiny,
    ]
    subnormals = (
        torch.tensor([0x0001, 0x0003, 0x0040, 0x007F, 0x8001, 0x8003, 0x8040, 0x807F], dtype=torch.int32)
        .to(torch.int16)
        .view(BF16)
    )
    return torch.cat([torch.tensor(values, dtype=BF16), subnormals])


def _noisy_quant(backend, x, lam, grad_y, **kwargs):
    x = x.detach().clone().to(TRITON_DEVICE if backend == "triton" else "cpu").requires_grad_()
    lam = lam.detach().clone().to(x.device).requires_grad_()
    with na_kernels.use_backend(backend):
        y = na_kernels.noisy_quant(x, kwargs.pop("p"), lam, **kwargs)
        y.backward(grad_y.to(x.device))
    return y.detach(), x.grad, lam.grad


@pytest.mark.parametrize("noise", [None, "uniform"])
@pytest.mark.parametrize("shift", [0.5, 0.0])
def test_noisy_quant_bf16_triton_equals_cpp_bit_for_bit(noise, shift):
    """0.34 at p = 3 is 0.333984375 when rounded (0.33203125 truncated); a negative subnormal x at
    shift 0 floors to -1 (no gradient), not to -0; NaN gives the quiet NaN 0x7fc0 in both."""
    torch.manual_seed(2)
    x = torch.cat([_special_bf16(), (torch.randn(300) * 2).to(BF16), (torch.randn(50) * 1e-39).to(BF16)])
    grad_y = torch.cat([torch.randn(x.numel() - 20), torch.tensor([1e-39, -1e-39] * 10)]).to(BF16)
    for p, lam in ((3, torch.tensor(1.0)), (7, torch.tensor(1.7)), (255, torch.tensor(0.3))):
        args = dict(p=p, noise=noise, seed=9, shift=shift)
        got = _noisy_quant("triton", x, lam, grad_y, **args)
        want = _noisy_quant("cpu", x, lam, grad_y, **args)
        assert torch.equal(_bits(got[0]), _bits(want[0])), (p, x[_bits(got[0]) != _bits(want[0])])
        assert torch.equal(_bits(got[1]), _bits(want[1])), (p, x[_bits(got[1]) != _bits(want[1])])
        torch.testing.assert_close(got[2].cpu(), want[2], rtol=1e-5, atol=1e-6)
    y = _noisy_quant("triton", torch.tensor([0.34], dtype=BF16), torch.tensor(1.0), torch.ones(1), p=3, noise=None)[0]
    assert y.item() == 0.333984375


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("amplitude", ["threshold", 0.3])
def test_integrate_fire_bf16_triton_equals_cpp_bit_for_bit(reset, amplitude):
    """Spikes of theta = 0.71 are 0.7109375 in bf16 (0.70703125 truncated); subnormal, NaN and inf
    inputs and gradients; forward and backward (surrogates without exp: those are bit for bit)."""
    torch.manual_seed(4)
    special = _special_bf16()
    x = (torch.randn(6, 40) * 0.5 + 0.3).to(BF16)
    x[0, : special.numel()] = special
    x[3, : special.numel()] = special.flip(0)
    theta = torch.tensor(0.71)
    grad_spikes = (torch.randn(x.shape) * torch.tensor([1.0, 1e-39]).repeat(20)).to(BF16)
    for surrogate in ("atan", "triangle", "rectangle"):
        out = {}
        for backend in ("triton", "cpu"):
            device = TRITON_DEVICE if backend == "triton" else "cpu"
            xg = x.to(device).requires_grad_()
            with na_kernels.use_backend(backend):
                spikes, counts = na_kernels.integrate_fire(
                    xg, theta.to(device), reset=reset, amplitude=amplitude, surrogate=surrogate
                )
                (grad,) = torch.autograd.grad(spikes, (xg,), grad_spikes.to(device))
            out[backend] = (spikes, counts, grad)
        for got, want, name in zip(out["triton"], out["cpu"], ("spikes", "counts", "grad_x")):
            got, want = got.cpu(), want.cpu()
            if got.is_floating_point():
                got, want = _bits(got), _bits(want)
            assert torch.equal(got, want), (surrogate, name)
    if amplitude == "threshold":
        assert 0.7109375 in out["triton"][0].float().unique().tolist()


_PTX_SCRIPT = r"""
import atexit
import importlib.util
import os
import shutil
import tempfile
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from na_kernels.ops.noisy_quant import triton as nq_kernels
from na_kernels.kernels._storage import FLOAT_OPTIONS

target = GPUTarget("cuda", 90, 32)

# @triton.jit needs a source file: a kernel that converts with plain .to()
source = (
    "import triton\n"
    "import triton.language as tl\n"
    "@triton.jit\n"
    "def plain_cast(x32_ptr, y16_ptr, x16_ptr, y32_ptr):\n"
    "    offsets = tl.arange(0, 128)\n"
    "    tl.store(y16_ptr + offsets, tl.load(x32_ptr + offsets).to(tl.bfloat16))\n"
    "    tl.store(y32_ptr + offsets, tl.load(x16_ptr + offsets).to(tl.float32))\n"
)
folder = tempfile.mkdtemp()
atexit.register(shutil.rmtree, folder, ignore_errors=True)
path = os.path.join(folder, "plain_cast.py")
with open(path, "w") as f:
    f.write(source)
spec = importlib.util.spec_from_file_location("plain_cast", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

# what the GPU does for .to(): widen exactly, round to nearest even (what _storage writes out)
signature = {"x32_ptr": "*fp32", "y16_ptr": "*bf16", "x16_ptr": "*bf16", "y32_ptr": "*fp32"}
ptx = triton.compile(ASTSource(module.plain_cast, signature, {}), target=target,
                     options=FLOAT_OPTIONS).asm["ptx"]
assert "cvt.f32.bf16" in ptx and "cvt.rn.bf16.f32" in ptx, ptx

common = {"lam_ptr": "*fp32", "seed_ptr": "*i64", "rows": "i32", "channel_stride": "i64", "channels": "i32",
          "blocks_per_row": "i32", "p": "fp32", "scale": "fp32", "shift": "fp32", "NOISE": "constexpr",
          "WHOLE_BLOCKS": "constexpr", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr"}
tiles = {"NOISE": 1, "WHOLE_BLOCKS": True, "BLOCK_R": 1, "BLOCK_C": 1024}
kernels = [
    (nq_kernels._noisy_quant_forward_kernel, {"x_ptr": "*bf16", "y_ptr": "*bf16", **common}, tiles),
    (nq_kernels._noisy_quant_backward_kernel, {"grad_y_ptr": "*bf16", "x_ptr": "*bf16", "grad_x_ptr": "*bf16",
                                               "partial_ptr": "*fp32", **common, "NEED_GRAD_LAM": "constexpr"},
     {**tiles, "NEED_GRAD_LAM": True}),
]
for kernel, signature, constants in kernels:
    ptx = triton.compile(ASTSource(kernel, signature, constants), target=target, options=FLOAT_OPTIONS).asm["ptx"]
    assert ".ftz" not in ptx, [line for line in ptx.splitlines() if ".ftz" in line][:4]
    assert "cvt.rmi.f32.f32" in ptx  # floor, subnormals kept
    assert "fma" not in ptx
    # with Triton's default libdevice flush-to-zero the floor would flush
    default = triton.compile(ASTSource(kernel, signature, constants), target=target,
                             options={"enable_fp_fusion": False}).asm["ptx"]
    assert "cvt.rmi.ftz.f32.f32" in default
print("compiled")
"""


@pytest.mark.slow
def test_bf16_kernels_compile_for_sm90_without_flush_to_zero():
    compile_triton_for_sm90(_PTX_SCRIPT)


class _RecordingKernel:
    """Stands in for a @triton.jit kernel: records each launch's keyword options, then launches."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)

        return launch


def test_every_launch_uses_the_float_options(monkeypatch):
    """No FMA contraction and no libdevice flush-to-zero on every kernel launch (what the PTX test checks)."""
    from na_kernels.ops.integrate_fire import triton as if_kernels
    from na_kernels.ops.noisy_quant import triton as nq_kernels

    launches = []
    for module, name in (
        (nq_kernels, "_noisy_quant_forward_kernel"),
        (nq_kernels, "_noisy_quant_backward_kernel"),
        (if_kernels, "_integrate_fire_forward_kernel"),
        (if_kernels, "_integrate_fire_backward_kernel"),
    ):
        monkeypatch.setattr(module, name, _RecordingKernel(getattr(module, name), launches))
    x = torch.randn(2, 3, 8, device=TRITON_DEVICE, requires_grad=True)
    lam = torch.tensor(1.0, device=TRITON_DEVICE, requires_grad=True)
    with na_kernels.use_backend("triton"):
        na_kernels.noisy_quant(x, 3, lam).sum().backward()
        na_kernels.integrate_fire(x, 1.0)[0].sum().backward()
    assert len(launches) == 4
    for kwargs in launches:
        assert kwargs["enable_fp_fusion"] is False and kwargs["enable_reflect_ftz"] is False
