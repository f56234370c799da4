"""The ops inside torch: torch.compile (no graph breaks, dynamic shapes, Inductor), torch.export,
opcheck of the custom ops, autocast, and the eager fast path.

The fast path (ops/_eager.py, ops/_registration.py): plain eager calls skip the torch.library ops
and call the same kernels directly; every other caller (torch.compile, FakeTensor, meta,
functorch, modes, autocast) still gets the op. Both paths must give bit-identical outputs and
gradients.


"fast" below runs with the custom ops replaced by functions that raise (so the fast path must
have been taken, forward and backward); "op" runs with the fast path switched off (its check
answers False) and its entry points replaced by functions that raise; "no fast" keeps the real
check and only makes the fast path's entry points raise (so the check itself must send the call
to the op).
"""

import contextlib

import pytest
import torch
from conftest import (
    BACKENDS,
    HAS_CUDA,
    assert_same_forward,
    channels_last_seq,
    interpreted,
    requires_cpp,
    requires_triton,
)
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import na_kernels
from na_kernels._spec import IntegrateFireArgs, Noise, NoisyQuantArgs, Reset, Save, Surrogate
from na_kernels.ops import _eager
from na_kernels.ops import integrate_fire as if_ops
from na_kernels.ops import noisy_quant as nq_ops
from na_kernels.ops.integrate_fire import reference as ref

# ------------------------------------------------------------------------------ the schemas


def test_schemas_are_the_tensors_then_the_records_fields():
    """The four ops keep their names; a record's fields follow the tensors, flattened to
    ints / floats / bools (an enum is its int), then the backward's own arguments."""
    schemas = {
        op: str(getattr(torch.ops.na_kernels, op).default._schema)
        for op in ("noisy_quant", "noisy_quant_backward", "integrate_fire", "integrate_fire_backward")
    }
    assert schemas["noisy_quant"] == (
        "na_kernels::noisy_quant(Tensor x, Tensor lam, Tensor seed, int p, int noise, float scale, float shift)"
        " -> Tensor"
    )
    assert schemas["noisy_quant_backward"] == (
        "na_kernels::noisy_quant_backward(Tensor grad_y, Tensor x, Tensor lam, Tensor seed, int p, int noise, "
        "float scale, float shift, bool need_grad_lam) -> (Tensor, Tensor)"
    )
    fields = "float v_frac, int reset, float? amplitude, int surrogate, float alpha, bool detach_reset, int save"
    assert schemas["integrate_fire"] == (
        f"na_kernels::integrate_fire(Tensor x_seq, Tensor threshold, Tensor? v_init, {fields}) "
        "-> (Tensor, Tensor, Tensor, Tensor)"
    )
    assert schemas["integrate_fire_backward"] == (
        "na_kernels::integrate_fire_backward(Tensor? grad_spikes, Tensor? grad_v, Tensor? h, Tensor? x_seq, "
        f"Tensor? v_init, Tensor threshold, {fields}, ScalarType x_dtype, bool need_grad_x, "
        "bool need_grad_v_init) -> (Tensor, Tensor)"
    )
    assert str(torch.ops.na_kernels.batchnorm_noisy_quant.default._schema) == (
        "na_kernels::batchnorm_noisy_quant(Tensor x, Tensor? residual, Tensor weight, Tensor bias, "
        "Tensor? running_mean, Tensor? running_var, Tensor lam, Tensor seed, int p, int noise, float scale, "
        "float shift, bool batch_stats, float momentum, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
    )
    records = (
        (nq_ops.OP, NoisyQuantArgs(7, Noise.GAUSSIAN, 0.5, 0.25)),
        (if_ops.OP, IntegrateFireArgs(0.25, Reset.ZERO, None, Surrogate.ATAN, 2.0, True, Save.X)),
    )
    for op, args in records:
        flat = op.record.flatten(args)
        assert all(type(value) in (int, float, bool, type(None)) for value in flat)
        assert op.record.rebuild(flat) == args


# --------------------------------------------------------------------------- noisy_quant


def test_noisy_quant_torch_compile_fullgraph_no_graph_breaks():
    def f(x, lam):
        return na_kernels.noisy_quant(x * 2, 7, lam, noise="uniform").sum()

    x = torch.randn(4, 3, 8)
    lam = torch.tensor(1.5, requires_grad=True)
    explanation = torch._dynamo.explain(f)(x, lam)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    loss = compiled(x, lam)
    loss.backward()
    compiled_grad = lam.grad.clone()
    lam.grad = None
    torch.manual_seed(0)
    eager = f(x, lam)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(compiled_grad, lam.grad)


def test_noisy_quant_torch_compile_dynamic_shapes():
    f = torch.compile(
        lambda x: na_kernels.noisy_quant(x, 3, 1.0, scale=0.5, seed=2),
        fullgraph=True,
        dynamic=True,
        backend="aot_eager",
    )
    for rows in (5, 7):
        x = torch.randn(rows, 3)
        assert torch.equal(f(x), na_kernels.noisy_quant(x, 3, 1.0, scale=0.5, seed=2))


@pytest.mark.slow
def test_noisy_quant_torch_compile_inductor_runs():
    torch._dynamo.reset()
    f = torch.compile(lambda x: na_kernels.noisy_quant(x, 3, 1.0, seed=4), fullgraph=True)
    x = torch.randn(2, 3, 4)
    assert torch.equal(f(x), na_kernels.noisy_quant(x, 3, 1.0, seed=4))


def test_noisy_quant_torch_export():
    class Model(torch.nn.Module):
        def forward(self, x):
            return na_kernels.noisy_quant(x, 3, 1.0, noise=None)

    x = torch.randn(2, 3)
    program = torch.export.export(Model(), (x,))
    assert torch.equal(program.module()(x), Model()(x))


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_cpp)])
def test_noisy_quant_opcheck(backend):
    x = torch.randn(3, 4, 5)
    seed = torch.tensor([11])
    with na_kernels.use_backend(backend):
        for lam in (torch.tensor([1.3]), torch.rand(4) + 0.5):
            torch.library.opcheck(
                torch.ops.na_kernels.noisy_quant.default, (x, lam.requires_grad_(), seed, 7, 1, 1.0, 0.5)
            )
            torch.library.opcheck(
                torch.ops.na_kernels.noisy_quant_backward.default,
                (torch.randn(3, 4, 5), x, lam.detach(), seed, 7, 1, 1.0, 0.5, True),
            )


def test_noisy_quant_autocast_bfloat16_input():
    x = torch.randn(2, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.functional.linear(x, torch.randn(5, 4))
        y = na_kernels.noisy_quant(h, 3, 1.0, seed=0)
    assert y.dtype == torch.bfloat16 and y.shape == h.shape


# ------------------------------------------------------------------------ integrate_fire


def _if_compiled_fn(x, threshold, v0):
    spikes, counts, v = na_kernels.integrate_fire(x, threshold, v_init=v0, surrogate="triangle", return_v=True)
    return spikes * 2, counts, v


def test_integrate_fire_torch_compile_fullgraph_no_graph_breaks():
    x = torch.randn(5, 2, 3, 4, requires_grad=True)
    threshold = torch.rand(3) + 0.5
    v0 = torch.zeros(2, 3, 4, requires_grad=True)
    explanation = torch._dynamo.explain(_if_compiled_fn)(x, threshold, v0)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    # aot_eager: traces forward and backward through the fake rules; Inductor's own C++
    # codegen is not what is under test here
    compiled = torch.compile(_if_compiled_fn, fullgraph=True, backend="aot_eager")
    got = compiled(x, threshold, v0)
    want = _if_compiled_fn(x, threshold, v0)
    assert_same_forward(got, want)
    g_got = torch.autograd.grad(got[0].sum() + got[2].sum(), (x, v0))
    g_want = torch.autograd.grad(want[0].sum() + want[2].sum(), (x, v0))
    for g, w in zip(g_got, g_want):
        assert torch.equal(g, w)
    with torch.no_grad():
        assert_same_forward(compiled(x, threshold, v0), want)
    # channels-last steps: the fake rule promises the strides the kernel delivers
    x_cl = channels_last_seq(5, 2, 3, 2, 4, "cpu").requires_grad_()
    got = compiled(x_cl, threshold, torch.zeros(2, 3, 2, 4))
    want = _if_compiled_fn(x_cl, threshold, torch.zeros(2, 3, 2, 4))
    assert_same_forward(got, want)
    assert got[0].stride() == want[0].stride() and got[2].stride() == want[2].stride()


@pytest.mark.slow
def test_integrate_fire_torch_compile_dynamic_shapes():
    """dynamic=True: symbolic shapes and strides (channels-last included), float arguments traced."""

    def fn(x, threshold, v0):
        spikes, counts, v = na_kernels.integrate_fire(
            x, threshold, v_init=v0, surrogate="atan", alpha=2.0, return_v=True
        )
        spikes2, counts2 = na_kernels.integrate_fire(x, 1.0)
        return spikes + spikes2, counts + counts2, v

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)
    threshold = torch.rand(3) + 0.5
    for steps, batch, width in ((4, 2, 5), (6, 3, 7), (2, 1, 9)):
        for x in (torch.randn(steps, batch, 3, width), channels_last_seq(steps, batch, 3, width, 2, "cpu")):
            x = x.detach().requires_grad_()
            v0 = torch.randn(x.shape[1:])
            got, want = compiled(x, threshold, v0), fn(x, threshold, v0)
            assert_same_forward(got, want)
            assert all(g.stride() == w.stride() for g, w in zip(got, want))
            g_got = torch.autograd.grad(got[0].sum() + got[2].sum(), (x,))
            g_want = torch.autograd.grad(want[0].sum() + want[2].sum(), (x,))
            assert torch.equal(g_got[0], g_want[0])


def test_integrate_fire_torch_export():
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("theta", torch.rand(3) + 0.5)

        def forward(self, x):
            return na_kernels.integrate_fire(x, self.theta, return_v=True)

    layer = Layer()
    x = torch.randn(4, 2, 3, 5)
    program = torch.export.export(layer, (x,))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert "na_kernels.integrate_fire.default" in targets
    assert_same_forward(program.module()(x), layer(x))


@pytest.mark.parametrize(
    "backend", ["reference", pytest.param("cpu", marks=requires_cpp), pytest.param("triton", marks=requires_triton)]
)
def test_integrate_fire_opcheck(backend):
    if backend == "triton" and HAS_CUDA:
        pytest.skip("opcheck of the Triton path runs on CPU tensors through the interpreter")
    theta = torch.ones(1)
    x = torch.randn(4, 2, 3, 5)
    with na_kernels.use_backend(backend):
        cases = [
            (x, theta, None, 0.5, 0, None, 0, 4.0, False, Save.NOTHING),
            (x.half(), torch.rand(3) + 0.5, None, 0.25, 1, 1.0, 2, 1.0, True, Save.NOTHING),
            (
                x.clone().requires_grad_(),
                theta,
                torch.randn(2, 3, 5, requires_grad=True),
                0.0,
                0,
                None,
                1,
                2.0,
                False,
                Save.H,
            ),
            (x.clone().requires_grad_(), torch.rand(3) + 0.5, None, 0.5, 1, 1.0, 3, 4.0, True, Save.H),
            (
                x.half().requires_grad_(),
                torch.rand(3) + 0.5,
                torch.randn(2, 3, 5, requires_grad=True),
                0.0,
                0,
                None,
                0,
                4.0,
                False,
                Save.X,
            ),
            (x[:1].expand(4, 2, 3, 5).clone().requires_grad_(), theta, None, 0.5, 1, None, 2, 4.0, True, Save.X),
        ]
        x_cl = channels_last_seq(3, 2, 3, 2, 4, "cpu")
        cases += [
            (x_cl, torch.rand(3) + 0.5, None, 0.5, 0, None, 0, 4.0, False, Save.NOTHING),
            (
                x_cl.clone().requires_grad_(),
                torch.rand(3) + 0.5,
                torch.randn(2, 3, 2, 4, requires_grad=True),
                0.0,
                1,
                None,
                2,
                4.0,
                False,
                Save.H,
            ),
            (x_cl.half().requires_grad_(), torch.rand(3) + 0.5, None, 0.5, 0, None, 1, 4.0, False, Save.X),
            # neither dense nor contiguous: copied
            (x_cl[:, :, :, :1], theta, None, 0.5, 0, 1.0, 0, 4.0, False, Save.NOTHING),
        ]
        for args in cases:
            torch.library.opcheck(if_ops.OP.forward_op, args)
        h = ref.integrate_fire(x, 1.0, return_h=True)[3]
        g, gv = torch.randn(x.shape), torch.randn(x.shape[1:])
        # grad_spikes, grad_v, h, x_seq, v_init, threshold, the record's fields, x_dtype, need_grad_x, need_grad_v_init
        backward_cases = [
            (g, gv, h, None, None, theta, 0.0, 0, None, 0, 4.0, False, Save.H, torch.float32, True, True),
            (None, gv, h, None, None, theta, 0.0, 1, 1.0, 1, 2.0, True, Save.H, torch.float32, True, False),
            (g.half(), None, h, None, None, theta, 0.0, 0, None, 3, 4.0, False, Save.H, torch.float16, False, True),
            (
                g.half(),
                gv,
                None,
                x.half(),
                torch.randn(x.shape[1:]),
                theta,
                0.0,
                1,
                None,
                2,
                4.0,
                False,
                Save.X,
                torch.float16,
                True,
                True,
            ),
            (
                torch.randn(x_cl.shape),
                None,
                None,
                x_cl,
                None,
                torch.rand(3) + 0.5,
                0.5,
                0,
                None,
                0,
                4.0,
                True,
                Save.X,
                torch.float32,
                True,
                True,
            ),
        ]
        for args in backward_cases:
            torch.library.opcheck(if_ops.OP.backward_op, args)


# ---------------------------------------------------- the eager fast path against the op


_OPS = [(nq_ops.OP, "forward_op"), (nq_ops.OP, "backward_op"), (if_ops.OP, "forward_op"), (if_ops.OP, "backward_op")]


_FAST = [(nq_ops.OP, "eager"), (if_ops.OP, "eager"), (nq_ops.OP.function, "apply"), (if_ops.OP.function, "apply")]


def _raiser(name):
    def call(*args, **kwargs):
        raise AssertionError(f"{name} called")

    return call


@contextlib.contextmanager
def _path(kind):
    with pytest.MonkeyPatch.context() as mp:
        if kind == "fast":
            for owner, name in _OPS:
                mp.setattr(owner, name, _raiser(name))
        else:
            if kind == "op":
                mp.setattr(_eager, "forward_ok", lambda *tensors: False)
            for owner, name in _FAST:
                mp.setattr(owner, name, _raiser(name))
        yield


def _assert_identical(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        assert g.dtype == w.dtype and g.shape == w.shape and g.stride() == w.stride()
        assert torch.equal(g, w) or (
            torch.isnan(w).any() and torch.equal(g.isnan(), w.isnan()) and torch.equal(g.nan_to_num(), w.nan_to_num())
        )


def _both_paths(run):
    """run() under each path, torch re-seeded before each (seed=None draws from the generator)."""
    results = {}
    for kind in ("op", "fast"):
        torch.manual_seed(99)
        with _path(kind):
            results[kind] = run()
    _assert_identical(results["fast"], results["op"])
    return results["fast"]


def _nq_lam(kind, channels, device):
    if kind == "float":
        return 1.3
    if kind == "scalar":
        return torch.tensor(1.3, device=device)
    if kind == "bf16 [1]":
        return torch.tensor([1.25], device=device, dtype=torch.bfloat16)
    return torch.nn.Parameter(torch.rand(channels, device=device) + 0.5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("noise", ["uniform", "gaussian", None])
@pytest.mark.parametrize("lam_kind", ["float", "scalar", "bf16 [1]", "per-channel"])
@pytest.mark.parametrize("grad", ["none", "x", "lam", "both", "no_grad mode"])
def test_noisy_quant_paths_identical(backend, device, noise, lam_kind, grad):
    dtypes = (torch.float32, torch.float16) if interpreted(backend, device) else (torch.float32, torch.bfloat16)
    for dtype in dtypes:
        base = (torch.randn(3, 5, 7, device=device) * 1.5 + 0.5).to(dtype)
        base[0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
        grad_y = torch.randn(3, 5, 7, device=device).to(dtype)
        for seed in (None, 17):

            def run():
                x = base.clone().requires_grad_(grad in ("x", "both", "no_grad mode"))
                lam = _nq_lam(lam_kind, 5, device)
                if isinstance(lam, torch.Tensor):
                    lam = lam.detach().requires_grad_(grad in ("lam", "both", "no_grad mode"))
                with na_kernels.use_backend(backend), torch.set_grad_enabled(grad != "no_grad mode"):
                    y = na_kernels.noisy_quant(x, 3, lam, noise=noise, scale=0.7, seed=seed)
                    inputs = [t for t in (x, lam) if isinstance(t, torch.Tensor) and t.requires_grad]
                    if not y.requires_grad:
                        return (y,)
                    return (y, *torch.autograd.grad(y, inputs, grad_y))

            out = _both_paths(run)
            assert (
                len(out)
                == {
                    "none": 1,
                    "x": 2,
                    "lam": 1 + (lam_kind != "float"),
                    "both": 2 + (lam_kind != "float"),
                    "no_grad mode": 1,
                }[grad]
            )


def test_noisy_quant_seed_none_draws_once_per_call_on_both_paths():
    x = torch.rand(100)
    results = []
    for kind in ("op", "fast"):
        torch.manual_seed(3)
        with _path(kind):
            results.append((na_kernels.noisy_quant(x, 3), na_kernels.noisy_quant(x, 3), torch.rand(1)))
    _assert_identical(results[0], results[1])
    assert not torch.equal(results[0][0], results[0][1])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("threshold_kind", ["float", "scalar", "per-channel"])
@pytest.mark.parametrize("v_kind", ["float", "tensor"])
@pytest.mark.parametrize("grad", ["none", "x", "v", "both"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_integrate_fire_paths_identical(backend, device, threshold_kind, v_kind, grad, layout):
    dtypes = (torch.float32, torch.float16) if interpreted(backend, device) else (torch.float32, torch.bfloat16)
    threshold = {
        "float": 0.9,
        "scalar": torch.tensor(0.9, device=device),
        "per-channel": torch.rand(3, device=device) + 0.5,
    }[threshold_kind]
    for dtype in dtypes:
        base = (torch.rand(4, 2, 3, 2, 5, device=device) * 1.2).to(dtype)
        if layout == "channels_last":
            base = base.reshape(8, 3, 2, 5).contiguous(memory_format=torch.channels_last).reshape(4, 2, 3, 2, 5)
            assert not base.is_contiguous()
        grad_spikes = torch.randn(base.shape, device=device).to(dtype)
        grad_v = torch.randn(base.shape[1:], device=device)
        for options in (dict(), dict(reset="zero", amplitude=1.0, surrogate="atan", alpha=2.0, detach_reset=True)):

            def run():
                x = base.clone().requires_grad_(grad in ("x", "both"))
                v_init = 0.25
                if v_kind == "tensor":
                    v_init = (torch.rand(base.shape[1:], device=device) * 0.5).requires_grad_(grad in ("v", "both"))
                elif grad == "v":
                    return ()  # nothing to differentiate
                with na_kernels.use_backend(backend):
                    spikes, counts, v_final = na_kernels.integrate_fire(
                        x, threshold, v_init=v_init, return_v=True, **options
                    )
                    out = (spikes, counts, v_final)
                    if not spikes.requires_grad:
                        return out
                    inputs = [t for t in (x, v_init) if isinstance(t, torch.Tensor) and t.requires_grad]
                    grads = torch.autograd.grad((spikes, v_final), inputs, (grad_spikes, grad_v))
                    # and from the spikes alone (grad of v_final None in backward)
                    spikes2, _ = na_kernels.integrate_fire(x, threshold, v_init=v_init, **options)
                    grads2 = torch.autograd.grad(spikes2, inputs, grad_spikes)
                    return (*out, *grads, *grads2)

            _both_paths(run)


def _nq_call(x):
    return na_kernels.noisy_quant(x, 3, 1.0, seed=5)


def _if_call(x):
    return na_kernels.integrate_fire(x, 1.0, return_v=True)


@pytest.mark.parametrize("call", [_nq_call, _if_call], ids=["noisy_quant", "integrate_fire"])
def test_eager_calls_bypass_the_op(call):
    x = torch.rand(4, 3, 2, requires_grad=True)
    with _path("fast"):
        with torch.no_grad():
            call(x)
        with torch.inference_mode():
            call(x.detach())
        out = call(x)
        first = out[0] if isinstance(out, tuple) else out
        first.sum().backward()
        assert x.grad is not None
        call(torch.nn.Parameter(x.detach().clone()))[0].sum().backward()


def _graph_targets(fn, *args):
    targets = []

    def backend(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True, backend=backend)(*args)
    torch._dynamo.reset()
    return out, targets


def test_compile_uses_the_op_with_fast_path_disabled():
    x = torch.rand(4, 3, 2)
    with _path("no fast"):  # the fast path raises: torch.compile must not reach it
        out, targets = _graph_targets(_nq_call, x)
        assert torch.ops.na_kernels.noisy_quant.default in targets
        out_if, targets_if = _graph_targets(_if_call, x)
        assert torch.ops.na_kernels.integrate_fire.default in targets_if
    assert torch.equal(out, _nq_call(x))
    for g, w in zip(out_if, _if_call(x)):
        assert torch.equal(g, w)


def test_compile_with_grad_uses_the_ops_forward_and_backward():
    x = torch.rand(4, 3, 2, requires_grad=True)
    lam = torch.tensor(1.2, requires_grad=True)
    f = torch.compile(
        lambda x, lam: na_kernels.noisy_quant(x, 3, lam, seed=5).sum() + na_kernels.integrate_fire(x, 1.0)[0].sum(),
        fullgraph=True,
        backend="aot_eager",
    )
    torch._dynamo.reset()
    with _path("no fast"):
        f(x, lam).backward()
    torch._dynamo.reset()
    got = (x.grad.clone(), lam.grad.clone())
    x.grad = lam.grad = None
    (na_kernels.noisy_quant(x, 3, lam, seed=5).sum() + na_kernels.integrate_fire(x, 1.0)[0].sum()).backward()
    assert torch.equal(got[0], x.grad) and torch.equal(got[1], lam.grad)


def test_fake_meta_vmap_and_autocast_use_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with _path("no fast"):
        with FakeTensorMode():
            xf = torch.empty(4, 3, 2)
            assert _nq_call(xf).shape == (4, 3, 2)
            assert _if_call(xf)[0].shape == (4, 3, 2)
            assert na_kernels.noisy_quant(xf, 3, 1.0).shape == (4, 3, 2)  # seed None: fake randint
        xm = torch.empty(4, 3, 2, device="meta")
        assert _nq_call(xm).device.type == "meta"
        assert _if_call(xm)[2].shape == (3, 2)
        x = torch.rand(4, 3, 2)
        batched = torch.func.vmap(lambda row: na_kernels.noisy_quant(row, 3, 1.0, noise=None))(x)
        batched_if = torch.func.vmap(lambda row: na_kernels.integrate_fire(row, 1.0)[0])(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.nn.functional.linear(x, torch.randn(2, 2))
            assert _nq_call(h).dtype == torch.bfloat16
            assert _if_call(h)[0].dtype == torch.bfloat16
    assert torch.equal(batched, na_kernels.noisy_quant(x, 3, 1.0, noise=None))
    for i in range(4):
        assert torch.equal(batched_if[i], na_kernels.integrate_fire(x[i], 1.0)[0])


def test_modes_see_the_op():
    class Recording(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func)
            return func(*args, **(kwargs or {}))

    class PassThrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x = torch.rand(4, 3, 2, requires_grad=True)
    with Recording() as mode:
        _nq_call(x).sum().backward()
        _if_call(x)[0].sum().backward()
    for op in ("noisy_quant", "noisy_quant_backward", "integrate_fire", "integrate_fire_backward"):
        assert getattr(torch.ops.na_kernels, op).default in mode.seen, op
    with _path("no fast"), PassThrough():
        _nq_call(x)
        _if_call(x)


def test_functorch_wrapped_inputs_use_the_op():
    x = torch.rand(4, 3, 2)
    want = []
    for call in (_nq_call, lambda x: _if_call(x)[0]):
        leaf = x.clone().requires_grad_()
        want.append(torch.autograd.grad(call(leaf).sum(), leaf)[0])
    with _path("no fast"):  # the fast path raises if taken: the transforms go through the op
        got = [torch.func.grad(lambda x: _nq_call(x).sum())(x), torch.func.grad(lambda x: _if_call(x)[0].sum())(x)]
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_tensor_subclass_uses_the_op():
    class Subclass(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            return super().__torch_function__(func, types, args, kwargs or {})

    x = torch.rand(4, 3, 2)
    with _path("no fast"):
        y = _nq_call(x.as_subclass(Subclass))
        spikes = _if_call(x.as_subclass(Subclass))[0]
    assert torch.equal(y.as_subclass(torch.Tensor), _nq_call(x))
    assert torch.equal(spikes.as_subclass(torch.Tensor), _if_call(x)[0])


@pytest.mark.parametrize("call", [_nq_call, _if_call], ids=["noisy_quant", "integrate_fire"])
def test_create_graph_backward_uses_the_backward_op(call):
    """create_graph=True: the backward op runs inside an autograd.Function that records itself in
    the graph (the fast backward kernels are used only when no graph is built), and a second
    backward through it raises a NotImplementedError naming the op (test_func_transforms.py)."""
    x = torch.rand(4, 3, 2, requires_grad=True)
    name = "NoisyQuant" if call is _nq_call else "IntegrateFire"
    with pytest.MonkeyPatch.context() as mp:
        for owner, op_name in _OPS[::2]:  # the forward ops raise: the forward takes the fast path
            mp.setattr(owner, op_name, _raiser(op_name))
        out = call(x)
        (grad,) = torch.autograd.grad((out[0] if isinstance(out, tuple) else out).sum(), x, create_graph=True)
    assert type(grad.grad_fn).__name__ == f"{name}GradientBackward"
    with pytest.raises(NotImplementedError, match="double backward"):
        grad.sum().backward()
