"""batchnorm_noisy_quant on every backend against the composition it replaces
(``noisy_quant(F.batch_norm(x) + residual)``, reference.unfused): y with the same noise, the running
statistics, every gradient; the straight-through gradients against float64 autograd; what autograd
keeps; compile, opcheck and bad input."""

import pytest
import torch
from conftest import BACKENDS, compile_triton_for_sm90, float_dtypes, interpreted, requires_triton
from torch.nn import functional as F

import na_kernels
from na_kernels.ops.batchnorm_noisy_quant import OP, batchnorm_noisy_quant, reference
from na_kernels.ops.noisy_quant import reference as nq_reference

SHAPES = [(6, 5, 7, 9), (3, 4, 8, 8), (2, 3, 5), (7, 2), (4, 3, 1, 1)]


def make_case(shape, dtype, *, residual=False, lam_kind="channel", seed=0):
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype)
    r = torch.randn(shape, generator=g).to(dtype) if residual else None
    w = torch.randn(channels, generator=g)
    b = torch.randn(channels, generator=g)
    lam = torch.rand(channels, generator=g) + 0.5 if lam_kind == "channel" else torch.tensor(1.3)
    rm = torch.randn(channels, generator=g)
    rv = torch.rand(channels, generator=g) + 0.5
    grad_y = torch.randn(shape, generator=g).to(dtype)
    return dict(x=x, residual=r, weight=w, bias=b, lam=lam, running_mean=rm, running_var=rv, grad_y=grad_y)


def run(function, case, p=3, **kwargs):
    """(y, running_mean, running_var, {name: gradient}) of function over fresh copies of the case."""
    leaves = {k: case[k].clone().requires_grad_() for k in ("x", "weight", "bias", "lam")}
    if case["residual"] is not None:
        leaves["residual"] = case["residual"].clone().requires_grad_()
    rm, rv = case["running_mean"].clone(), case["running_var"].clone()
    y = function(
        leaves["x"],
        leaves["weight"],
        leaves["bias"],
        rm,
        rv,
        p,
        leaves["lam"],
        residual=leaves.get("residual"),
        **kwargs,
    )
    y.backward(case["grad_y"])
    return y.detach(), rm, rv, {k: v.grad for k, v in leaves.items()}


def unfused(x, w, b, rm, rv, p, lam, *, residual=None, training=True, batch_stats=None, noise="uniform", seed=0):
    batch_stats = training if batch_stats is None else batch_stats
    noise = noise if training else None
    return reference.unfused(
        x, w, b, rm, rv, p, lam, batch_stats=batch_stats, residual=residual, noise=noise, seed=seed
    )


def fused(backend):
    def call(*args, **kwargs):
        with na_kernels.use_backend(backend):
            return batchnorm_noisy_quant(*args, **kwargs)

    return call


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("residual", [False, True])
def test_matches_unfused_composition(backend, device, shape, residual):
    """Training: y (same noise), running statistics and every gradient as the unfused composition."""
    for dtype in float_dtypes(backend, device):
        if interpreted(backend, device) and dtype != torch.float32:
            continue
        case = make_case(shape, dtype, residual=residual, seed=hash((shape, residual)) % 1000)
        y, rm, rv, grads = run(fused(backend), case, seed=5)
        y_ref, rm_ref, rv_ref, grads_ref = run(unfused, case, seed=5)
        assert y.dtype == dtype and y.shape == case["x"].shape
        assert torch.equal(y, y_ref)  # the statistics are torch's bit for bit, so y is too
        if dtype == torch.float32:  # torch's 16-bit BatchNorm sums differently
            assert torch.equal(rm, rm_ref)
        torch.testing.assert_close(rm, rm_ref, rtol=2e-6, atol=1e-6)
        torch.testing.assert_close(rv, rv_ref, rtol=2e-6, atol=1e-6)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        for name in grads:
            torch.testing.assert_close(grads[name].float(), grads_ref[name].float(), **tol, msg=name)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("noise", [None, "uniform", "gaussian"])
@pytest.mark.parametrize("lam_kind", ["channel", "scalar"])
def test_running_statistics_forward_is_bitwise_unfused(backend, device, noise, lam_kind):
    """With the running statistics (eval BatchNorm) the op is the unfused composition bit for bit,
    with and without noise; the running statistics stay as they were."""
    for dtype in float_dtypes(backend, device):
        case = make_case((5, 4, 6, 6), dtype, residual=True, lam_kind=lam_kind)
        y, rm, rv, grads = run(fused(backend), case, batch_stats=False, noise=noise, seed=9)
        y_ref, rm_ref, rv_ref, grads_ref = run(unfused, case, batch_stats=False, noise=noise, seed=9)
        assert torch.equal(y, y_ref)
        assert torch.equal(rm, case["running_mean"]) and torch.equal(rv, case["running_var"])
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
        for name in grads:
            torch.testing.assert_close(grads[name].float(), grads_ref[name].float(), **tol, msg=name)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_eval_is_deterministic_and_uses_running_statistics(backend, device):
    case = make_case((4, 3, 5, 5), torch.float32)
    y1, rm, _, _ = run(fused(backend), case, training=False, seed=1)
    y2, _, _, _ = run(fused(backend), case, training=False, seed=2)
    y_ref, _, _, _ = run(unfused, case, training=False)
    assert torch.equal(y1, y2) and torch.equal(y1, y_ref)
    assert torch.equal(rm, case["running_mean"])


def _straight_through_float64(case, y, mask, p, batch_stats):
    """Float64 autograd of the straight-through surrogate with the op's levels and mask pinned:
    y = mask ? (q_raw(z)/p)·λ with d q_raw/dz = p/λ : the saturated constant (λ above, 0 below)."""
    x = case["x"].double().requires_grad_()
    w = case["weight"].double().requires_grad_()
    b = case["bias"].double().requires_grad_()
    lam = case["lam"].double().requires_grad_()
    r = case["residual"].double().requires_grad_() if case["residual"] is not None else None
    z = F.batch_norm(x, case["running_mean"].double(), case["running_var"].double(), w, b, batch_stats, 0.1, 1e-5)
    if r is not None:
        z = z + r
    lam_b = nq_reference.lam_view(lam.float(), x).double()
    lam_b = lam.reshape(lam_b.shape) if lam.dim() else lam
    level = torch.round(y.double() * p / lam_b.detach())
    u = z * p / lam_b
    q_ste = u + (level - u).detach()  # value: the level; gradient: that of z·p/λ
    saturated = torch.where(level >= p, torch.ones_like(u), torch.zeros_like(u))
    out = torch.where(mask, q_ste / p * lam_b, saturated * lam_b)
    out.backward(case["grad_y"].double())
    leaves = dict(x=x, weight=w, bias=b, lam=lam)
    if r is not None:
        leaves["residual"] = r
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("batch_stats", [True, False])
@pytest.mark.parametrize("residual", [False, True])
def test_gradients_match_float64_straight_through(backend, device, batch_stats, residual):
    """Every gradient against float64 autograd of the straight-through estimator (noise off, the op's
    own mask and levels pinned): BatchNorm's backward, the residual's and λ's, to float32 rounding.
    (floor has derivative 0 almost everywhere, so finite differences cannot check a quantizer.)"""
    case = make_case((5, 3, 7, 7), torch.float32, residual=residual, seed=3)
    with na_kernels.use_backend(backend):
        args = (case["x"], case["weight"], case["bias"], case["running_mean"].clone(), case["running_var"].clone())
        y, mean, invstd, mask, _, _ = OP(
            *args[:1],
            case["residual"],
            *args[1:],
            case["lam"],
            torch.zeros(1, dtype=torch.int64),
            na_kernels._spec.BatchNormNoisyQuantArgs(3, na_kernels._spec.Noise.NONE, 0.0, 0.5, batch_stats, 0.1, 1e-5),
        )
    _, _, _, grads = run(fused(backend), case, noise=None, batch_stats=batch_stats, seed=0)
    want = _straight_through_float64(case, y, reference.unpack_mask(mask, case["x"].shape), 3, batch_stats)
    for name in want:
        torch.testing.assert_close(grads[name].double(), want[name], rtol=1e-4, atol=1e-4, msg=name)


def test_mask_round_trip():
    inside = torch.rand(3, 5, 7) < 0.5
    assert torch.equal(reference.unpack_mask(reference.pack_mask(inside), inside.shape), inside)
    assert reference.pack_mask(inside).shape == ((3 * 5 * 7 + 7) // 8,)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_backends_write_the_same_mask_and_y(backend, device):
    case = make_case((3, 4, 5, 3), torch.float32, residual=True)
    args = na_kernels._spec.BatchNormNoisyQuantArgs(3, na_kernels._spec.Noise.UNIFORM, 1.0, 0.5, False, 0.1, 1e-5)
    tensors = (
        case["x"],
        case["residual"],
        case["weight"],
        case["bias"],
        case["running_mean"],
        case["running_var"],
        case["lam"],
        torch.tensor([77]),
    )
    with na_kernels.use_backend(backend):
        got = OP(*tensors, args)
    want = reference.forward(*tensors, args)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_saves_only_x_residual_y_the_mask_and_channel_tensors(backend, device):
    """Autograd keeps x, the residual and y (each the same storage a neighbouring layer keeps), the
    one-bit mask and [C]-sized tensors: no z, no noise."""
    case = make_case((4, 6, 8, 8), torch.float32, residual=True)
    x = case["x"].clone().requires_grad_()
    r = case["residual"].clone().requires_grad_()
    w = case["weight"].clone().requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with na_kernels.use_backend(backend), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = batchnorm_noisy_quant(
            x, w, case["bias"], case["running_mean"], case["running_var"], 3, case["lam"], residual=r, seed=1
        )
    big = [t for t in saved if t.numel() > 6]
    storages = {t.untyped_storage().data_ptr() for t in big if t.dtype != torch.uint8}
    assert storages <= {x.untyped_storage().data_ptr(), r.untyped_storage().data_ptr(), y.untyped_storage().data_ptr()}
    masks = [t for t in big if t.dtype == torch.uint8]
    assert len(masks) == 1 and masks[0].numel() == 4 * 6 * 64 // 8 + 1  # the bits and their order's byte
    y.sum().backward()


def test_torch_compile_fullgraph_matches_eager():
    case = make_case((4, 3, 6, 6), torch.float32, residual=True)

    def f(x, w, b, rm, rv, lam, r):
        return batchnorm_noisy_quant(x * 1.0, w, b, rm, rv, 3, lam, residual=r, seed=4).sum()

    leaves = [case[k].clone().requires_grad_() for k in ("x", "weight", "bias")]
    rm, rv = case["running_mean"].clone(), case["running_var"].clone()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(*leaves, rm, rv, case["lam"], case["residual"])
    loss.backward()
    eager_leaves = [case[k].clone().requires_grad_() for k in ("x", "weight", "bias")]
    rm2, rv2 = case["running_mean"].clone(), case["running_var"].clone()
    eager = f(*eager_leaves, rm2, rv2, case["lam"], case["residual"])
    eager.backward()
    torch.testing.assert_close(loss, eager)
    assert torch.equal(rm, rm2) and torch.equal(rv, rv2)
    for a, b in zip(leaves, eager_leaves):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_opcheck(backend):
    case = make_case((3, 4, 5), torch.float32, residual=True)
    flat = (3, 1, 1.0, 0.5, True, 0.1, 1e-5)
    with na_kernels.use_backend(backend):
        for residual in (None, case["residual"]):
            torch.library.opcheck(
                torch.ops.na_kernels.batchnorm_noisy_quant.default,
                (
                    case["x"].requires_grad_(),
                    residual,
                    case["weight"].requires_grad_(),
                    case["bias"],
                    case["running_mean"],
                    case["running_var"],
                    case["lam"],
                    torch.tensor([3]),
                    *flat,
                ),
            )
        y, mean, invstd, mask, _, _ = torch.ops.na_kernels.batchnorm_noisy_quant(
            case["x"].detach(),
            None,
            case["weight"].detach(),
            case["bias"],
            None,
            None,
            case["lam"],
            torch.tensor([3]),
            *flat,
        )
        torch.library.opcheck(
            torch.ops.na_kernels.batchnorm_noisy_quant_backward.default,
            (
                case["grad_y"],
                case["x"].detach(),
                None,
                y,
                mask,
                mean,
                invstd,
                case["weight"].detach(),
                case["bias"],
                case["lam"],
                *flat,
                False,
            ),
        )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(p=100, dtype=torch.bfloat16), ValueError, "at most 64"),
        (dict(shape=(1, 3)), ValueError, "more than 1 value"),
        (dict(shape=(5,)), ValueError, "channel dim"),
        (dict(running_var=None), ValueError, "together"),
        (dict(lam=-1.0), ValueError, "lam"),
    ],
)
def test_bad_input(kwargs, error, match):
    shape = kwargs.pop("shape", (4, 3, 2))
    dtype = kwargs.pop("dtype", torch.float32)
    x = torch.randn(shape).to(dtype)
    call = dict(weight=None, bias=None, running_mean=torch.zeros(3), running_var=torch.ones(3), p=3, lam=1.0)
    call.update(kwargs)
    with pytest.raises(error, match=match):
        batchnorm_noisy_quant(x, **call)


@pytest.mark.parametrize("backend, device", [b for b in BACKENDS if b.id == "cpp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpp_same_forward_and_gradients_for_any_thread_count(backend, device, dtype):
    """Work items of 2^14 elements over threads: y, the mask, the statistics and grad_x the same at
    1 and 3 threads (per-thread float64 sums may differ in their last bits only)."""
    case = make_case((4, 3, 71, 67), dtype, residual=True)  # channel runs across work items
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(run(fused(backend), case, seed=8))
    finally:
        torch.set_num_threads(threads)
    (y1, rm1, rv1, g1), (y3, rm3, rv3, g3) = results
    assert torch.equal(y1, y3) and torch.equal(rm1, rm3) and torch.equal(rv1, rv3)
    assert torch.equal(g1["residual"], g3["residual"])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype is torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for name in g1:
        torch.testing.assert_close(g1[name], g3[name], **tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("residual", [False, True])
def test_cpp_16_bit_at_every_simd_level(simd_level, dtype, residual):
    """The 16-bit kernel converts batches with explicit AVX2 / AVX-512 code: at every level y and
    the mask bit for bit as the unfused composition, the gradients within its rounding."""
    if not na_kernels.cpu.available():
        pytest.skip("C++ extension not built")
    case = make_case((3, 5, 11, 13), dtype, residual=residual, seed=4)  # runs of 143, across batches
    args = na_kernels._spec.BatchNormNoisyQuantArgs(3, na_kernels._spec.Noise.UNIFORM, 1.0, 0.5, True, 0.1, 1e-5)
    tensors = [case[k] for k in ("x", "residual", "weight", "bias", "running_mean", "running_var", "lam")]
    with na_kernels.use_backend("cpu"):
        got = OP(*tensors, torch.tensor([21]), args)
    want = reference.forward(*tensors, torch.tensor([21]), args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])  # y, mask
    y, _, _, grads = run(fused("cpu"), case, seed=6)
    y_ref, _, _, grads_ref = run(unfused, case, seed=6)
    assert torch.equal(y, y_ref)
    for name in grads:
        torch.testing.assert_close(grads[name].float(), grads_ref[name].float(), rtol=2e-2, atol=2e-2, msg=name)


# channel runs of 143 (starting at mask bits not a multiple of 8), 3 and 1 (shorter than a
# vector), 64 (whole vectors), and runs across work items of 2^14 elements
FLOAT32_SIMD_SHAPES = [(3, 5, 11, 13), (5, 3, 3), (7, 2), (4, 3, 8, 8), (2, 3, 71, 67)]


@pytest.mark.parametrize("shape", FLOAT32_SIMD_SHAPES)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("noise", ["NONE", "UNIFORM", "GAUSSIAN"])
def test_cpp_float32_forward_at_every_simd_level(simd_level, shape, residual, noise):
    """The float32 quantize pass's AVX2 / AVX-512 kernels: y, the mask bits, the statistics bit
    for bit as the reference (mask bits written from compare masks, runs off byte boundaries)."""
    if not na_kernels.cpu.available():
        pytest.skip("C++ extension not built")
    case = make_case(shape, torch.float32, residual=residual, seed=7)
    kind = getattr(na_kernels._spec.Noise, noise)
    args = na_kernels._spec.BatchNormNoisyQuantArgs(3, kind, 0.0 if noise == "NONE" else 1.0, 0.5, True, 0.1, 1e-5)
    tensors = [case[k] for k in ("x", "residual", "weight", "bias", "running_mean", "running_var", "lam")]
    with na_kernels.use_backend("cpu"):
        got = OP(*tensors, torch.tensor([13]), args)
    want = reference.forward(*tensors, torch.tensor([13]), args)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def _gradients_at_level(case, simd_level, batch_stats):
    from na_kernels import cpu

    with cpu.limit_simd(simd_level):
        _, _, _, grads = run(fused("cpu"), case, seed=5, batch_stats=batch_stats)
    return grads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", FLOAT32_SIMD_SHAPES)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("noise", ["NONE", "UNIFORM", "GAUSSIAN"])
def test_cpp_16_bit_forward_at_every_simd_level(simd_level, dtype, shape, residual, noise):
    """16-bit x on the explicit-SIMD kernels (widened as loaded, z rounded to the dtype in the lanes,
    y narrowed as stored): y, the mask bits and the statistics bit for bit as the reference."""
    if not na_kernels.cpu.available():
        pytest.skip("C++ extension not built")
    case = make_case(shape, dtype, residual=residual, seed=11)
    kind = getattr(na_kernels._spec.Noise, noise)
    tensors = [case[k] for k in ("x", "residual", "weight", "bias", "running_mean", "running_var", "lam")]
    for batch_stats in (True, False):
        args = na_kernels._spec.BatchNormNoisyQuantArgs(
            3, kind, 0.0 if noise == "NONE" else 1.0, 0.5, batch_stats, 0.1, 1e-5
        )
        with na_kernels.use_backend("cpu"):
            got = OP(*tensors, torch.tensor([17]), args)
        want = reference.forward(*tensors, torch.tensor([17]), args)
        for g, w in zip(got, want):
            assert torch.equal(g, w)


# tolerances of the SIMD backward against the generic loops (float32 sums, rounded to the dtype)
# and against the unfused ops, by dtype
SIMD_BACKWARD_TOLERANCES = {
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (1e-2, 2e-2),
    torch.float16: (1e-2, 2e-2),
}


@pytest.mark.parametrize("dtype", list(SIMD_BACKWARD_TOLERANCES))
@pytest.mark.parametrize("shape", FLOAT32_SIMD_SHAPES)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("batch_stats", [True, False])
def test_cpp_backward_at_every_simd_level(simd_level, dtype, shape, residual, batch_stats):
    """The backward's AVX2 / AVX-512 kernels against the generic loops: grad_residual bit for bit,
    grad_x too where it uses no per-channel sum (running statistics), the sums (weight, bias, lam,
    and through them grad_x) within their rounding; all against the unfused ops within the
    dtype's rounding."""
    if not na_kernels.cpu.available():
        pytest.skip("C++ extension not built")
    to_generic, to_unfused = SIMD_BACKWARD_TOLERANCES[dtype]
    case = make_case(shape, dtype, residual=residual, seed=9 if dtype == torch.float32 else 12)
    grads = _gradients_at_level(case, simd_level, batch_stats)
    generic = _gradients_at_level(case, "generic", batch_stats)
    exact = (("x",) if not batch_stats else ()) + (("residual",) if residual else ())
    for name in exact:
        assert torch.equal(grads[name], generic[name]), name
    for name in grads:
        torch.testing.assert_close(
            grads[name].float(), generic[name].float(), rtol=to_generic, atol=to_generic, msg=name
        )
    _, _, _, want = run(unfused, case, seed=5, batch_stats=batch_stats)
    for name in grads:
        torch.testing.assert_close(grads[name].float(), want[name].float(), rtol=to_unfused, atol=to_unfused, msg=name)


def test_cpp_float32_grad_residual_alone_at_every_simd_level(simd_level):
    """x needs no gradient: the input pass writes grad_residual only, the same at every level."""
    if not na_kernels.cpu.available():
        pytest.skip("C++ extension not built")
    from na_kernels import cpu

    case = make_case((3, 5, 11, 13), torch.float32, residual=True, seed=2)
    got = {}
    for level in (simd_level, "generic"):
        r = case["residual"].clone().requires_grad_()
        with cpu.limit_simd(level), na_kernels.use_backend("cpu"):
            y = batchnorm_noisy_quant(
                case["x"], case["weight"], case["bias"], None, None, 3, case["lam"], residual=r, seed=3
            )
        y.backward(case["grad_y"])
        got[level] = r.grad
    assert torch.equal(got[simd_level], got["generic"])


_AOT_SCRIPT = r"""
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from na_kernels.ops.batchnorm_noisy_quant import triton as k

target = GPUTarget("cuda", 90, 32)
geometry = {"rows": "i32", "channel_stride": "i64", "channels": "i32", "blocks_per_row": "i32", "p": "fp32"}
for dt in ("fp32", "bf16", "fp16"):
    for residual in (False, True):
        for noise, whole, (block_r, block_c) in [(0, True, (1, 1024)), (1, True, (64, 16)), (1, False, (16, 64)),
                                                 (2, False, (1024, 1))]:
            sig = {"x_ptr": f"*{dt}", "residual_ptr": f"*{dt}", "y_ptr": f"*{dt}", "inside_ptr": "*u8",
                   "alpha_ptr": "*fp32", "beta_ptr": "*fp32", "lam_ptr": "*fp32", "seed_ptr": "*i64", **geometry,
                   "scale": "fp32", "shift": "fp32", "NOISE": "constexpr", "HAS_RESIDUAL": "constexpr",
                   "WHOLE_BLOCKS": "constexpr", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr"}
            constants = {"NOISE": noise, "HAS_RESIDUAL": residual, "WHOLE_BLOCKS": whole, "BLOCK_R": block_r,
                         "BLOCK_C": block_c}
            triton.compile(ASTSource(k._forward_kernel, sig, constants), target=target)
        sig = {"grad_y_ptr": f"*{dt}", "x_ptr": f"*{dt}", "residual_ptr": f"*{dt}", "y_ptr": f"*{dt}",
               "inside_ptr": "*u8", "dz_ptr": f"*{dt}", "partial_ptr": "*fp32", "mean_ptr": "*fp32",
               "alpha_ptr": "*fp32", "beta_ptr": "*fp32", "lam_ptr": "*fp32", **geometry,
               "HAS_RESIDUAL": "constexpr", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr"}
        triton.compile(ASTSource(k._backward_kernel, sig, {"HAS_RESIDUAL": residual, "BLOCK_R": 16, "BLOCK_C": 64}),
                       target=target)
print("compiled")
"""


@requires_triton
@pytest.mark.slow
def test_triton_kernels_compile_for_cuda():
    """The interpreter runs the kernels as Python: compile them for sm_90 too (GPU-only errors)."""
    compile_triton_for_sm90(_AOT_SCRIPT)
