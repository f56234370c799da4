"""noisy_quant's contract on every backend: each against the reference bit for bit (forward and
grad_x; grad_lam within rounding), the reference against float64 and its unbiasedness, the
straight-through gradients, layouts, non-finite input, the seed and bad input. (Philox: test_philox.py;
compile, export, opcheck, the fast path: test_torch_integration.py.)"""

import math

import pytest
import torch

import na_kernels
from na_kernels import cpu
from na_kernels._spec import Noise
from na_kernels.ops.noisy_quant import reference as reference
from na_kernels.reference import philox

try:
    from na_kernels.ops.noisy_quant import triton as triton_kernels
except ImportError:  # no triton
    triton_kernels = None

from conftest import BACKENDS, HAS_CUDA, TRITON_DEVICE, compile_triton_for_sm90, requires_cpp, requires_triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NOISES = [kind.public for kind in Noise]  # None, "uniform", "gaussian"


def make_input(shape, dtype, device="cpu", scale=2.0):
    return (torch.randn(shape, device=device) * scale).to(dtype)


def make_lam(kind, x):
    if kind == "scalar":
        return torch.tensor(1.7, device=x.device)
    if kind == "one":
        return torch.tensor([0.9], device=x.device)
    return torch.rand(x.shape[1], device=x.device) + 0.5  # per-channel


def run(backend, x, p, lam, noise, seed, grad_y, *, scale=1.0, shift=0.5):
    """(y, grad_x, grad_lam) from one backend, with lam a leaf that requires grad."""
    x = x.detach().clone().requires_grad_(True)
    lam = lam.detach().clone().requires_grad_(True) if isinstance(lam, torch.Tensor) else lam
    with na_kernels.use_backend(backend):
        y = na_kernels.noisy_quant(x, p, lam, noise=noise, seed=seed, scale=scale, shift=shift)
        y.backward(grad_y)
    return y.detach(), x.grad, (lam.grad if isinstance(lam, torch.Tensor) else None)


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Ops allocate outputs filled with NaN, so an element a kernel forgets to write fails."""
    empty_like, empty = torch.empty_like, torch.empty

    def nan_empty_like(t, *args, **kwargs):
        out = empty_like(t, *args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    def nan_empty(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty_like", nan_empty_like)
    monkeypatch.setattr(torch, "empty", nan_empty)


# ------------------------------------------------------------------ reference vs float64


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("p", [1, 3, 7, 15])
def test_reference_matches_float64_formula(noise, p):
    x = make_input((64, 5, 33), torch.float32)
    lam = torch.rand(5) + 0.3
    seed = 99
    y = reference.noisy_quant(x, p, lam, noise=noise, seed=seed)
    eps = torch.zeros(x.shape, dtype=torch.float64)
    if noise is not None:
        # scale defaults to the noise kind's (gaussian 0.3), as in the op
        eps = reference.noise(x.shape, torch.tensor(seed), noise, x.device).double()
        eps = eps * Noise.parse("noise", noise).default_scale
    lam64 = lam.double().view(1, -1, 1)
    z = x.double() * p / lam64 + eps + 0.5
    expected = torch.clamp(torch.floor(z), 0, p) * lam64 / p
    # float32 rounding may flip the floor only where z is within a few ulp of an integer
    far_from_edge = (z - torch.round(z)).abs() > 1e-4 * z.abs().clamp_min(1)
    assert far_from_edge.double().mean() > 0.99
    torch.testing.assert_close(y.double()[far_from_edge], expected[far_from_edge], rtol=1e-6, atol=1e-7)


def test_reference_closed_form_backward_matches_autograd():
    x = make_input((8, 4, 9), torch.float32).requires_grad_()
    lam = (torch.rand(4) + 0.5).requires_grad_()
    grad_y = torch.randn(x.shape)
    reference.noisy_quant(x, 7, lam, noise="uniform", seed=3).backward(grad_y)
    grad_x, grad_lam = reference.noisy_quant_backward(grad_y, x.detach(), lam.detach(), 7, noise="uniform", seed=3)
    # autograd multiplies by (lam/p)(p/lam), the closed form by exactly 1: same mask, ~1 ulp
    assert torch.equal(grad_x == 0, x.grad == 0)
    torch.testing.assert_close(grad_x, x.grad, rtol=3e-7, atol=0)
    torch.testing.assert_close(grad_lam, lam.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [1, 3, 15])
@pytest.mark.slow
def test_uniform_noise_is_unbiased_estimate_of_clipped_relu(p):
    """E[y] = clamp(x, 0, lam) exactly for uniform noise and shift 0.5 (Noise Adaptor)."""
    lam = 1.3
    x = torch.linspace(-0.5, 1.8, 47)
    seeds = 3000
    ys = torch.stack([reference.noisy_quant(x, p, lam, noise="uniform", seed=s) for s in range(seeds)])
    std_error = (lam / p) * 0.5 / math.sqrt(seeds)
    assert ((ys.double().mean(0) - x.double().clamp(0, lam)).abs() < 5 * std_error + 1e-6).all()
    # without noise the quantizer is biased wherever x is not on the grid
    no_noise = reference.noisy_quant(x, p, lam, noise=None)
    assert (no_noise - x.clamp(0, lam)).abs().max() > 5 * std_error


# ------------------------------------------------------------------ backends vs reference


def assert_matches_reference(backend, x, p, lam, noise, seed, *, grad_lam_rtol=1e-5, scale=1.0, shift=0.5):
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(x.dtype).to(x.device)
    got = run(backend, x, p, lam, noise, seed, grad_y, scale=scale, shift=shift)
    ref = run("reference", x, p, lam, noise, seed, grad_y, scale=scale, shift=shift)
    assert got[0].shape == x.shape and got[0].dtype == x.dtype and got[0].device == x.device
    assert torch.equal(got[0], ref[0]), f"forward differs in {(got[0] != ref[0]).sum()} elements"
    assert torch.equal(got[1], ref[1]), f"grad_x differs in {(got[1] != ref[1]).sum()} elements"
    if isinstance(lam, torch.Tensor):
        assert got[2].shape == lam.shape and got[2].dtype == lam.dtype
        # a float32 sum: allow rounding relative to the sum of the magnitudes of its terms
        lam_min = lam.detach().float().min().item()
        magnitude = (grad_y.float().abs() * (1 + x.float().abs() / lam_min)).sum().item()
        torch.testing.assert_close(got[2], ref[2], rtol=grad_lam_rtol, atol=1e-6 * magnitude + 1e-7)


@requires_cpp
@pytest.mark.usefixtures("poisoned_allocations")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("lam_kind", ["scalar", "one", "per_channel"])
@pytest.mark.parametrize("shape", [(0,), (1,), (1023,), (3, 5, 7), (2, 3, 4, 5), (5, 3), (2, 3, 7, 7)])
def test_cpp_matches_reference(shape, lam_kind, noise, dtype, simd_level):
    x = make_input(shape, dtype)
    if lam_kind == "per_channel" and len(shape) < 2:
        pytest.skip("per-channel lam needs a channel dim")
    assert_matches_reference("cpu", x, 7, make_lam(lam_kind, x), noise, seed=2**40 + 11)


@requires_cpp
@pytest.mark.usefixtures("poisoned_allocations")
@pytest.mark.parametrize("lam_kind", ["scalar", "per_channel"])
@pytest.mark.slow
def test_cpp_large_and_odd_size(lam_kind, simd_level):
    x = make_input((1, 2**20 + 3), torch.float32) if lam_kind == "scalar" else make_input((3, 7, 49931), torch.float32)
    assert_matches_reference("cpu", x, 3, make_lam(lam_kind, x), "uniform", seed=1)


@requires_cpp
@pytest.mark.usefixtures("poisoned_allocations")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize(
    "shape, lam_kind",
    # around the vector widths (16 lanes, 32 per Philox call) with a scalar lam, and per-channel
    # rows long enough for the vector path (64 and more), ending inside a vector
    [
        ((15,), "scalar"),
        ((16,), "scalar"),
        ((17,), "scalar"),
        ((31,), "scalar"),
        ((33,), "scalar"),
        ((250,), "one"),
        ((2, 3, 64), "per_channel"),
        ((1, 2, 67), "per_channel"),
        ((2, 2, 130), "per_channel"),
    ],
)
def test_cpp_vector_tails_match_reference(shape, lam_kind, noise, dtype, simd_level):
    x = make_input(shape, dtype)
    assert_matches_reference("cpu", x, 7, make_lam(lam_kind, x), noise, seed=2**33 - 9)


@requires_cpp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpp_rounding_to_16_bit_matches_reference(dtype, simd_level):
    # float16: lam = 3e-5 puts every output level in float16's subnormal range; bfloat16: lam
    # with a long mantissa so that (q / p) * lam needs rounding at every level
    lam = torch.tensor(3e-5 if dtype == torch.float16 else 1.2345678, requires_grad=True)
    x = (torch.randn(4099) * lam.item()).to(dtype)
    for noise in (None, "uniform"):
        assert_matches_reference("cpu", x, 15, lam, noise, seed=77, grad_lam_rtol=1e-4)


@requires_cpp
def test_cpp_same_result_for_any_thread_count():
    x = make_input((4, 8, 5000), torch.float32)
    lam = (torch.rand(8) + 0.5).requires_grad_()
    results = []
    for threads in (1, 2, 3):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            results.append(run("cpu", x, 15, lam, "gaussian", 4, torch.ones(x.shape)))
        finally:
            torch.set_num_threads(previous)
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0]) and torch.equal(other[1], results[0][1])
        torch.testing.assert_close(other[2], results[0][2], rtol=1e-6, atol=1e-6)


@requires_triton
@pytest.mark.usefixtures("poisoned_allocations")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("lam_kind", ["scalar", "per_channel"])
@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (1, 1023), (3, 5, 7), (2, 3, 4, 5), (2, 3, 7, 7)])
def test_triton_matches_reference(shape, lam_kind, noise, dtype):
    x = make_input(shape, dtype, device=TRITON_DEVICE)
    assert_matches_reference("triton", x, 7, make_lam(lam_kind, x), noise, seed=77)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="bfloat16 Triton kernels run on a GPU only (the interpreter has no bf16)")
@pytest.mark.parametrize("noise", NOISES)
def test_triton_bfloat16_on_gpu(noise):
    x = make_input((4, 16, 33, 33), torch.bfloat16, device="cuda")
    assert_matches_reference("triton", x, 7, make_lam("per_channel", x), noise, seed=5)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_triton_large_on_gpu():
    x = make_input((1, 2**24 + 3), torch.float32, device="cuda")
    assert_matches_reference("triton", x, 3, make_lam("scalar", x), "uniform", seed=9, grad_lam_rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU with > 9 GB free")
def test_triton_beyond_int32_indexing_on_gpu():
    """2^31 + 1000 elements: the tail's noise comes from offsets past int32."""
    n, tail = 2**31 + 1000, 3000
    x_tail = make_input((tail,), torch.float16)
    x = torch.full((n,), 0.37, dtype=torch.float16, device="cuda")
    x[-tail:] = x_tail.cuda()
    with na_kernels.use_backend("triton"):
        y_tail = na_kernels.noisy_quant(x, 7, 1.3, noise="uniform", seed=8)[-tail:].cpu()
    del x
    eps = philox.noise_range(torch.tensor(8), n - tail, tail, "uniform")
    z = x_tail.float() * torch.div(torch.tensor(7.0), torch.tensor(1.3)) + eps
    q = torch.clamp(torch.floor(z + 0.5), 0, 7)
    assert torch.equal(y_tail, ((q / 7) * torch.tensor(1.3)).to(torch.float16))


@requires_triton
@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
@pytest.mark.parametrize(
    "rows, channel_stride",
    # whole blocks (rows of a multiple of 4 elements, or one row), and rows that start inside a
    # block: 7x7 maps, odd lengths, rows of 1 to 3 elements, a row longer than one tile
    [(1, 1023), (6, 20), (2, 2052), (6, 49), (3, 7), (5, 3), (7, 1), (4, 2), (3, 1029)],
)
def test_triton_noise_is_the_reference_noise_on_every_tiling(rows, channel_stride, noise):
    """The kernels' noise itself, read back tile by tile: element i gets output i % 4 of block i // 4
    whichever path (whole blocks or per element) the tiling takes."""
    import triton
    import triton.language as tl

    k = triton_kernels

    @triton.jit
    def noise_kernel(
        seed_ptr,
        out_ptr,
        rows,
        channel_stride,
        blocks_per_row,
        first,
        NOISE: tl.constexpr,
        WHOLE_BLOCKS: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        row, col_start, offsets, mask, _ = triton_kernels._tile(
            rows, channel_stride, 1, blocks_per_row, BLOCK_R, BLOCK_C
        )
        eps = triton_kernels._noise(
            seed_ptr, row, col_start, offsets + first, channel_stride, NOISE, WHOLE_BLOCKS, BLOCK_R, BLOCK_C
        )
        tl.store(out_ptr + offsets, eps, mask=mask)

    kind = Noise.parse("noise", noise)
    seed = 2**40 + 3
    expected = philox.noise_range(torch.tensor(seed), 0, rows * channel_stride, noise)
    block_r, block_c, blocks_per_row, programs = k._launch_geometry(rows, channel_stride)
    results = []
    for whole in sorted({k.whole_blocks(rows, channel_stride, block_c), False}):
        out = torch.full((rows * channel_stride,), float("nan"), device=TRITON_DEVICE)
        noise_kernel[(programs,)](
            torch.tensor([seed], device=TRITON_DEVICE),
            out,
            rows,
            channel_stride,
            blocks_per_row,
            0,
            NOISE=int(kind),
            WHOLE_BLOCKS=whole,
            BLOCK_R=block_r,
            BLOCK_C=block_c,
        )
        out = out.cpu()
        if noise == "uniform":
            assert torch.equal(out, expected)
        else:  # Triton's float32 log/cos/sin: within 4 ulp of the reference
            magnitude = expected.abs()
            ulp = torch.nextafter(magnitude, torch.tensor(float("inf"))) - magnitude
            assert ((out - expected).abs() <= 4 * ulp).all()
        results.append(out)
    # the fast path and the per-element path give the same noise bit for bit
    assert all(torch.equal(r, results[0]) for r in results)


@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_noise_independent_of_shape_and_lam_layout(backend, device, noise):
    """[2, 3, 7, 7] with a per-channel lam (rows of 49: a row starts inside a Philox block) and the
    same data flattened with a scalar lam (whole blocks) draw the same noise per flat index."""
    x = make_input((2, 3, 7, 7), torch.float32, device=device)
    lam_value = 1.7
    per_channel = torch.full((3,), lam_value, device=device)
    # a fine grid and a large scale: y resolves the noise to 1/64 of a step
    p, scale = 255, 64.0
    with na_kernels.use_backend(backend):
        y_channels = na_kernels.noisy_quant(x * 30, p, per_channel, noise=noise, scale=scale, seed=2**35 + 1)
        y_flat = na_kernels.noisy_quant(
            (x * 30).reshape(-1), p, torch.tensor(lam_value, device=device), noise=noise, scale=scale, seed=2**35 + 1
        )
        y_rows = na_kernels.noisy_quant((x * 30).reshape(6, 49), p, lam_value, noise=noise, scale=scale, seed=2**35 + 1)
    assert torch.equal(y_channels.reshape(-1), y_flat)
    assert torch.equal(y_rows.reshape(-1), y_flat)
    assert (y_flat > 0).any() and (y_flat < lam_value).any()


@requires_triton
@pytest.mark.parametrize("lam_kind", ["scalar", "per_channel"])
def test_triton_grad_lam_deterministic(lam_kind):
    x = make_input((2, 3, 7, 7), torch.float32, device=TRITON_DEVICE)
    lam = make_lam(lam_kind, x)
    grad_y = torch.randn(x.shape, device=TRITON_DEVICE)
    first = run("triton", x, 7, lam, "gaussian", 12, grad_y)
    for _ in range(2):
        again = run("triton", x, 7, lam, "gaussian", 12, grad_y)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


_AOT_SCRIPT = r"""
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from na_kernels.ops.noisy_quant import triton as k

target = GPUTarget("cuda", 90, 32)
common = {"lam_ptr": "*fp32", "seed_ptr": "*i64", "rows": "i32", "channel_stride": "i64", "channels": "i32",
          "blocks_per_row": "i32", "p": "fp32", "scale": "fp32", "shift": "fp32", "NOISE": "constexpr",
          "WHOLE_BLOCKS": "constexpr", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr"}
for dt in ("fp32", "bf16", "fp16"):
    for noise, whole, (block_r, block_c) in [(0, True, (1, 1024)), (1, True, (64, 16)), (1, False, (16, 64)),
                                             (2, True, (1, 1024)), (2, False, (1024, 1))]:
        tiles = {"NOISE": noise, "WHOLE_BLOCKS": whole, "BLOCK_R": block_r, "BLOCK_C": block_c}
        sig = {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", **common}
        triton.compile(ASTSource(k._noisy_quant_forward_kernel, sig, tiles), target=target)
        sig = {"grad_y_ptr": f"*{dt}", "x_ptr": f"*{dt}", "grad_x_ptr": f"*{dt}", "partial_ptr": "*fp32", **common,
               "NEED_GRAD_LAM": "constexpr"}
        triton.compile(ASTSource(k._noisy_quant_backward_kernel, sig, {**tiles, "NEED_GRAD_LAM": noise != 0}),
                       target=target)
print("compiled")
"""


@requires_triton
@pytest.mark.slow
def test_triton_kernels_compile_for_cuda():
    """The interpreter runs the kernels as Python: compile them for sm_90 too (GPU-only errors)."""
    compile_triton_for_sm90(_AOT_SCRIPT)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_input(backend, device):
    base = make_input((6, 4, 10), torch.float32, device=device)
    x = base.transpose(0, 2)[::2]  # [5, 4, 6], strided
    assert not x.is_contiguous()
    lam = make_lam("per_channel", x)
    grad_y = torch.randn(x.shape, device=device)
    got = run(backend, x, 3, lam, "uniform", 21, grad_y)
    expected = run("reference", x.contiguous(), 3, lam, "uniform", 21, grad_y)
    for a, b in zip(got[:2], expected[:2]):
        assert torch.equal(a, b)
    torch.testing.assert_close(got[2], expected[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nan_and_infinities(backend, device):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.4, -0.0], device=device)
    lam = torch.tensor(1.5, device=device, requires_grad=True)
    xg = x.clone().requires_grad_()
    with na_kernels.use_backend(backend):
        y = na_kernels.noisy_quant(xg, 3, lam, noise="uniform", seed=1)
        y.backward(torch.ones_like(y))
    assert torch.isnan(y[0])
    assert y[1].item() == 1.5 and y[2].item() == 0.0
    assert torch.isfinite(y[1:]).all()
    assert xg.grad[1].item() == 0 and xg.grad[2].item() == 0  # saturated: no gradient
    # grad_lam: 1 from +inf (above the clip), 0 from -inf and from NaN
    expected_lam_grad = reference.noisy_quant_backward(
        torch.ones(3, device=device), x[2:], lam.detach(), 3, noise="uniform", seed=1
    )[1]
    assert math.isfinite(lam.grad.item())
    assert lam.grad.item() == pytest.approx(1.0 + expected_lam_grad.item(), abs=1e-6)


# ------------------------------------------------------------------------- the seed


def test_seed_none_uses_torch_generator():
    x = torch.rand(1000) * 2
    torch.manual_seed(5)
    a = na_kernels.noisy_quant(x, 3)
    b = na_kernels.noisy_quant(x, 3)
    torch.manual_seed(5)
    c = na_kernels.noisy_quant(x, 3)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


def test_explicit_seed_forms_agree():
    x = torch.rand(100) * 2
    a = na_kernels.noisy_quant(x, 3, seed=123)
    b = na_kernels.noisy_quant(x, 3, seed=torch.tensor(123))
    c = na_kernels.noisy_quant(x, 3, seed=torch.tensor([123]))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(na_kernels.noisy_quant(x, 3, seed=2**64 - 1), na_kernels.noisy_quant(x, 3, seed=-1))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_noise_none_spellings_agree(backend, device):
    """noise=None and noise="none" are one op: QCFS, the seed ignored."""
    x = make_input((3, 4, 5), torch.float32, device=device)
    with na_kernels.use_backend(backend):
        a = na_kernels.noisy_quant(x, 7, 1.5, noise=None)
        b = na_kernels.noisy_quant(x, 7, 1.5, noise="none", seed=123)
    assert torch.equal(a, b)


def test_noise_none_is_qcfs():
    x = torch.randn(3, 4, 5)
    y = na_kernels.noisy_quant(x, 4, 2.0, noise=None)
    expected = torch.clamp(torch.floor(x * 4 / 2.0 + 0.5), 0, 4) * 2.0 / 4
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=torch.arange(4)), TypeError, "x must be float32"),
        (dict(x=torch.ones(4, dtype=torch.bool)), TypeError, "x must be float32"),
        (dict(x=[1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
        (dict(p=0), ValueError, "p must be an int >= 1"),
        (dict(p=-3), ValueError, "p must be an int >= 1"),
        (dict(p=2.5), ValueError, "p must be an int >= 1"),
        (dict(p="3"), TypeError, "p must be an int >= 1"),
        (dict(p=True), TypeError, "p must be an int >= 1"),
        (dict(lam=0.0), ValueError, "lam must be > 0"),
        (dict(lam=-1.0), ValueError, "lam must be > 0"),
        (dict(lam=float("nan")), ValueError, "lam must be finite"),
        (dict(lam=float("inf")), ValueError, "lam must be finite"),
        (dict(lam=torch.tensor([1.0, 0.0, 1.0])), ValueError, "lam must be finite and > 0"),
        (dict(lam=torch.tensor([1.0, 2.0])), ValueError, "lam per-channel must have"),
        (dict(lam=torch.ones(3, 1)), ValueError, "lam must be a scalar or a 1-D"),
        (dict(lam=torch.ones(3, dtype=torch.int64)), TypeError, "lam must be a float tensor"),
        (dict(lam=torch.ones(3, device="meta")), ValueError, "lam must be on cpu"),
        (dict(noise="normal"), ValueError, "noise must be one of"),
        (dict(scale=-0.1), ValueError, "scale must be >= 0"),
        (dict(scale=float("nan")), ValueError, "scale must be finite"),
        (dict(seed=1.5), TypeError, "seed must be None, an int"),
        (dict(seed=torch.tensor([1.0])), TypeError, "seed must be None, an int"),
        (dict(seed=2**64), ValueError, "seed must fit in 64 bits"),
        (dict(seed="junk", noise=None), TypeError, "seed must be None, an int"),  # checked without noise too
        (dict(seed=1.5, noise="none"), TypeError, "seed must be None, an int"),
        (dict(x=torch.randn(2, 3, 4).to_sparse()), TypeError, "x must be a dense tensor, got layout torch.sparse_coo"),
        (
            dict(x=torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)], layout=torch.jagged)),
            TypeError,
            "x is a nested tensor; pad it first",
        ),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(x=torch.randn(2, 3, 4), p=3, lam=1.0)
    args.update(kwargs)
    x, p, lam = args.pop("x"), args.pop("p"), args.pop("lam")
    with pytest.raises(error, match=match):
        na_kernels.noisy_quant(x, p, lam, **args)


_FLOAT32_RANGE_CASES = [
    (dict(lam=1e-50), "lam must be > 0 in float32"),  # float32 rounds it to 0
    (dict(lam=1e-35), "lam must be in \\[1.97215226e-31, 5.0706024e\\+30\\] as float32"),
    (dict(lam=2.0**102 * 1.5), "lam must be in"),
    (dict(lam=torch.tensor(1e-50, dtype=torch.float64)), "lam must be finite and > 0 as float32"),
    (dict(lam=torch.tensor(1e39, dtype=torch.float64)), "lam must be finite and > 0 as float32"),
    (dict(lam=torch.tensor([1.0, 1e-33, 1.0])), "lam must be in"),
    (dict(lam=torch.tensor([1.0, 1e33, 1.0])), "lam must be in"),
    (dict(scale=1e39), "scale must be finite in float32"),
    (dict(shift=-1e39), "shift must be finite in float32"),
    (dict(p=2**63), "p must be an int >= 1 and <= 16777216"),
    (dict(p=2**24 + 1), "p must be an int >= 1 and <= 16777216"),
    (dict(p=float(2**70)), "p must be an int >= 1 and <= 16777216"),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kwargs, match", _FLOAT32_RANGE_CASES)
def test_values_float32_cannot_represent_are_refused_on_every_backend(backend, device, kwargs, match):
    """Issue 12 item 5: lam 1e-50 (0 in float32) gave NaN, a huge lam flipped levels, p >= 2^63 a
    pybind TypeError on the C++ backend only: one named ValueError, before dispatch, everywhere."""
    args = dict(p=3, lam=1.0)
    args.update(kwargs)
    x = torch.randn(2, 3, 4, device=device)
    p, lam = args.pop("p"), args.pop("lam")
    lam = lam.to(device) if isinstance(lam, torch.Tensor) else lam
    with na_kernels.use_backend(backend), pytest.raises(ValueError, match=match):
        na_kernels.noisy_quant(x, p, lam, **args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_lam_at_the_ends_of_its_range_is_exact(backend, device):
    """lam = 2^-102 and 2^102 with p up to 2^24 (the largest accepted): every level q lam / p is a
    normal float32 and x * p does not overflow for |x| <= 2 lam, so y is the exact formula."""
    for lam in (2.0**-102, 2.0**102):
        for p in (3, 255, 2**24):
            x = torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0, -1.0]) * lam
            with na_kernels.use_backend(backend):
                y = na_kernels.noisy_quant(x.to(device), p, lam, noise=None).cpu()
            levels = torch.tensor([0, round(0.25 * p), round(0.5 * p + 1e-9), p, p, 0], dtype=torch.float64)
            want = ((levels / p).float() * torch.tensor(lam)).float()  # (q / p) * lam in float32
            assert torch.equal(y, want), (lam, p, y, want)
            assert bool((y[1:4] >= torch.finfo(torch.float32).tiny).all())  # normal


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        na_kernels.set_backend("cuda")


def test_forced_cpu_backend_rejects_other_devices():
    from na_kernels import _backend

    with na_kernels.use_backend("cpu"), pytest.raises(ValueError, match="runs CPU tensors only"):
        _backend.resolve(torch.device("cuda"))


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(cpu, "_C", None)
    monkeypatch.setattr(cpu, "_LOAD_ERROR", ImportError("no compiler"))
    monkeypatch.setattr(cpu, "_warned", False)
    x = torch.randn(10)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        y = na_kernels.noisy_quant(x, 3, seed=1)
    with na_kernels.use_backend("reference"):
        assert torch.equal(y, na_kernels.noisy_quant(x, 3, seed=1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        na_kernels.noisy_quant(x, 3, seed=1)  # warned once only


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_float64_lam_is_read_as_float32(backend, device):
    """One rule for parameter tensors: float64 is accepted (as integrate_fire's v_init is) and
    read as float32; its gradient comes back in float64."""
    x = torch.randn(2, 3, 5, device=device)
    lam64 = torch.tensor([0.5, 1.25, 2.0], dtype=torch.float64, device=device, requires_grad=True)
    lam32 = lam64.detach().float().requires_grad_()
    with na_kernels.use_backend(backend):
        y64 = na_kernels.noisy_quant(x, 3, lam64, seed=7)
        y32 = na_kernels.noisy_quant(x, 3, lam32, seed=7)
        y64.sum().backward()
        y32.sum().backward()
    assert torch.equal(y64, y32)
    assert lam64.grad.dtype == torch.float64
    assert torch.equal(lam64.grad.float(), lam32.grad)
