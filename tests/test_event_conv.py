"""event_conv2d: the C++ event kernel against the float64 reference, bitwise agreement between
SIMD levels and thread counts, its fallbacks and errors, and an event-driven SNN against the
dense one."""

import pytest
import torch
import torch.nn.functional as F

from na_kernels import cpu
from na_kernels.ops import event_conv
from na_kernels.ops.event_conv import event_conv2d, reference

pytestmark = pytest.mark.skipif(not cpu.available(), reason="C++ extension not built")

EPS32 = 2.0**-24  # float32 unit roundoff

# (N, Cin, H, W, Cout, kernel, stride, padding)
SHAPES = [
    (2, 3, 7, 9, 17, 3, 1, 1),
    (1, 17, 11, 6, 70, 3, 2, 1),
    (2, 70, 5, 5, 3, 1, 1, 0),
    (1, 16, 9, 8, 64, 3, 1, 0),
    (2, 33, 6, 7, 129, 1, 2, 0),
    (1, 5, 4, 5, 16, (2, 3), (2, 1), (0, 1)),
    # Cout <= 16: output pixels in tiles (a width not a multiple of the tile, strides, 1x1, 5 wide)
    (2, 16, 6, 13, 16, 3, 1, 1),
    (1, 16, 9, 11, 16, 3, 2, 1),
    (2, 9, 5, 10, 7, 1, 2, 0),
    (1, 4, 3, 17, 1, (1, 5), 1, (0, 2)),
    (1, 6, 5, 3, 12, 3, 1, 0),  # one partial tile per row
    (1, 3, 2, 1, 5, 1, 1, 2),  # a tile whose windows lie in the padding alone
]
DENSITIES = (0.0, 0.01, 0.2, 1.0)


def levels():
    """The SIMD levels this CPU runs."""
    return cpu.SIMD_LEVELS[: cpu.SIMD_LEVELS.index(cpu.detected_simd_level()) + 1]


def sparse_input(shape, density, generator):
    """Random values, each nonzero with probability ``density``, channels-last."""
    values = torch.randn(shape, generator=generator)
    keep = torch.rand(shape, generator=generator) < density
    return (values * keep).contiguous(memory_format=torch.channels_last)


def operands(case, density, bias, residual, seed=0):
    n, cin, h, w, cout, kernel, stride, padding = case
    g = torch.Generator().manual_seed(seed)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = sparse_input((n, cin, h, w), density, g)
    weight = torch.randn((cout, cin, kh, kw), generator=g)
    b = torch.randn(cout, generator=g) if bias else None
    out_shape = F.conv2d(x, weight, stride=stride, padding=padding).shape
    r = torch.randn(out_shape, generator=g) if residual else None
    return x, weight, dict(bias=b, stride=stride, padding=padding, residual=r)


def assert_within_bound(out, x, weight, kwargs):
    """|out - exact| <= (terms + 2) * eps32 * (|bias| + sum |x w| + |residual|) per output."""
    exact = reference.forward(x, weight, **kwargs)
    scale = reference.magnitude(x, weight, **kwargs)
    terms = weight[0].numel() + 2
    error = (out.double() - exact).abs()
    bound = terms * EPS32 * scale
    assert out.shape == exact.shape
    assert bool((error <= bound).all()), f"max excess {(error - bound).max().item()}"


def run_all_levels(x, weight, kwargs):
    """The event kernel's output at every SIMD level (asserted bitwise equal) -> one of them."""
    outputs = []
    for level in levels():
        with cpu.limit_simd(level):
            outputs.append(event_conv2d(x, weight, max_density=1.0, **kwargs))
    for level, out in zip(levels()[1:], outputs[1:]):
        assert torch.equal(out, outputs[0]), f"{level} differs from {levels()[0]}"
    return outputs[0]


@pytest.mark.parametrize("bias, residual", [(True, True), (False, False), (True, False), (False, True)])
def test_against_reference_every_level(bias, residual):
    for case in SHAPES:
        for density in DENSITIES:
            x, weight, kwargs = operands(case, density, bias, residual)
            out = run_all_levels(x, weight, kwargs)
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert_within_bound(out, x, weight, kwargs)


def test_zero_input_gives_bias_plus_residual():
    x, weight, kwargs = operands(SHAPES[0], 0.0, True, True)
    out = event_conv2d(x, weight, max_density=1.0, **kwargs)
    expected = kwargs["bias"].reshape(1, -1, 1, 1) + kwargs["residual"]
    assert torch.equal(out, expected)


@pytest.mark.parametrize("cout", [40, 16])  # one pixel at a time, in tiles
def test_thread_counts_agree(cout):
    case = (4, 17, 33, 31, cout, 3, 1, 1)  # large enough that the kernel uses several threads
    x, weight, kwargs = operands(case, 0.1, True, True)
    threads = torch.get_num_threads()
    try:
        outputs = []
        for count in (1, 2):
            torch.set_num_threads(count)
            outputs.append(event_conv2d(x, weight, max_density=1.0, **kwargs))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[0], outputs[1])
    assert_within_bound(outputs[0], x, weight, kwargs)


def test_non_channels_last_input_and_nonfinite_values():
    x, weight, kwargs = operands(SHAPES[1], 0.2, True, False)
    x = x.contiguous()
    out = event_conv2d(x, weight, max_density=1.0, **kwargs)
    assert_within_bound(out, x, weight, kwargs)
    x[0, 0, 0, 0] = float("nan")
    assert bool(event_conv2d(x, weight, max_density=1.0, **kwargs).isnan().any())


@pytest.mark.parametrize("cout", [16, 17])  # in tiles, one pixel at a time
def test_nonfinite_inputs_reach_only_their_outputs(cout):
    x, weight, kwargs = operands((2, 5, 6, 11, cout, 3, 1, 1), 0.3, True, False)
    x[0, 1, 2, 3] = float("inf")
    x[1, 4, 5, 10] = float("nan")
    dense = F.conv2d(x, weight, kwargs["bias"], padding=1)
    for level in levels():
        with cpu.limit_simd(level):
            out = event_conv2d(x, weight, max_density=1.0, **kwargs)
        assert torch.equal(out.isfinite(), dense.isfinite())
        assert torch.equal(out.isnan(), dense.isnan())


@pytest.mark.parametrize("cout", [16, 17])  # in tiles, one pixel at a time
def test_each_image_is_convolved_on_its_own(cout):
    """The kernel works image by image (in bands of output rows for a small batch, its event lists
    in a per-thread buffer): each image's output is that image convolved alone, whatever the batch
    holds (a NaN in another image included, which sends only its own image's bands down the
    one-pixel path; a zero's sign aside)."""
    x, weight, kwargs = operands((5, 6, 7, 9, cout, 3, 1, 1), 0.2, True, True)
    x[2, 1, 3, 4] = float("nan")
    for level in levels():
        with cpu.limit_simd(level):
            out = event_conv2d(x, weight, max_density=1.0, **kwargs)
            for n in range(x.shape[0]):
                alone = dict(kwargs, residual=kwargs["residual"][n : n + 1])
                want = event_conv2d(x[n : n + 1], weight, max_density=1.0, **alone)
                assert torch.equal(out[n : n + 1].isnan(), want.isnan()), (level, n)
                assert torch.equal(out[n : n + 1].nan_to_num(), want.nan_to_num()), (level, n)


@pytest.mark.parametrize("n", [1, 70])  # in bands of output rows, whole images
def test_density_threshold_counts_exactly(n, monkeypatch):
    """The kernel runs at exactly max_density (nonzeros <= int(max_density * numel)) and falls back
    to dense one nonzero above it; -0.0 counts as zero, a NaN as nonzero."""
    x, weight, kwargs = operands((n, 5, 9, 7, 6, 3, 2, 1), 0.2, True, False)
    x[0, 0, 0, 0], x[0, 1, 0, 0] = -0.0, float("nan")
    nonzeros = int((x != 0).sum())
    calls = []
    real = event_conv.dense.conv2d
    monkeypatch.setattr(event_conv.dense, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    event_conv2d(x, weight, max_density=(nonzeros + 0.5) / x.numel(), **kwargs)
    assert calls == []
    event_conv2d(x, weight, max_density=(nonzeros - 0.5) / x.numel(), **kwargs)
    assert calls == [1]


@pytest.mark.parametrize("count_first", [True, False])
@pytest.mark.parametrize("n", [1, 70, 300])  # in bands of output rows, whole images
def test_both_ways_of_counting_decide_exactly(n, count_first):
    """Counting x first, or while convolving and stopping once past the limit: the same decision at
    one nonzero either side of it, and below it the same output bits."""
    x, weight, kwargs = operands((n, 5, 9, 7, 6, 3, 2, 1), 0.2, True, True)
    nonzeros = int((x != 0).sum())
    bias, residual = kwargs["bias"], kwargs["residual"]
    want = event_conv2d(x, weight, max_density=1.0, **kwargs)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):  # the images are handed out as threads come free: any order
            torch.set_num_threads(count)
            for limit in (nonzeros, nonzeros + 1, x.numel() - 1):
                out = event_conv.cpu.forward(x, weight, bias, (2, 2), (1, 1), residual, limit, count_first)
                assert torch.equal(out, want), (count, limit)
            for limit in (nonzeros - 1, nonzeros // 2, 0):
                out = event_conv.cpu.forward(x, weight, bias, (2, 2), (1, 1), residual, limit, count_first)
                assert out is None, (count, limit)
    finally:
        torch.set_num_threads(threads)


def test_counting_first_follows_the_weights_last_call(monkeypatch):
    """A weight whose last call went dense counts x first (a layer's density changes little between
    passes); one whose last call ran the kernel counts while convolving."""
    x, weight, kwargs = operands((70, 5, 9, 7, 6, 3, 2, 1), 0.2, True, False)
    extension = cpu.extension()
    seen = []

    class Spy:
        def event_conv_forward(self, **arguments):
            seen.append(arguments["count_first"])
            return extension.event_conv_forward(**arguments)

    monkeypatch.setattr(event_conv.cpu.cpu, "extension", lambda: Spy())
    for max_density in (0.5, 0.1, 0.1, 0.5, 0.5):
        event_conv2d(x, weight, max_density=max_density, **kwargs)
    assert seen == [False, False, True, True, False]


def test_density_threshold_falls_back_to_dense(monkeypatch):
    x, weight, kwargs = operands(SHAPES[3], 0.2, True, True)
    dense = F.conv2d(x, weight, kwargs["bias"], stride=kwargs["stride"], padding=kwargs["padding"])
    assert torch.equal(event_conv2d(x, weight, max_density=0.1, **kwargs), dense + kwargs["residual"])
    calls = []
    real = event_conv.cpu.forward
    monkeypatch.setattr(event_conv.cpu, "forward", lambda *a: calls.append(1) or real(*a))
    assert torch.equal(event_conv2d(x, weight, max_density=0.0, **kwargs), dense + kwargs["residual"])
    assert calls == []  # 0: dense without scanning x
    assert event_conv.default_max_density(16, 16) == event_conv.TILED_MAX_DENSITY > 0  # tiled
    assert event_conv.default_max_density(16, 32) == event_conv.DEFAULT_MAX_DENSITY > 0
    assert event_conv.default_max_density(16, 64) == event_conv.DEFAULT_MAX_DENSITY > 0
    event_conv2d(x, weight, **kwargs)  # Cin * Cout = 16 * 64: the event kernel at 20 %
    assert calls == [1]


def test_autograd_falls_back_to_dense():
    x, weight, kwargs = operands(SHAPES[0], 0.2, True, False)
    weight.requires_grad_(True)
    out = event_conv2d(x, weight, **kwargs)
    assert out.grad_fn is not None
    out.sum().backward()
    assert weight.grad is not None
    with torch.no_grad():
        assert_within_bound(event_conv2d(x, weight, **kwargs), x, weight.detach(), kwargs)


def test_other_dtypes_fall_back_to_dense():
    x, weight, kwargs = operands(SHAPES[0], 0.2, False, False)
    out = event_conv2d(x.double(), weight.double(), stride=1, padding=1)
    assert out.dtype == torch.float64
    assert torch.equal(out, F.conv2d(x.double(), weight.double(), padding=1))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(groups=2), ValueError, "groups"),
        (dict(dilation=2), ValueError, "dilation"),
        (dict(stride=0), ValueError, "stride"),
        (dict(padding=-1), ValueError, "padding"),
        (dict(stride=(1, 1, 1)), ValueError, "pair"),
        (dict(bias=torch.zeros(3)), ValueError, "bias"),
        (dict(residual=torch.zeros(1, 17, 7, 9)), ValueError, "residual"),
        (dict(max_density=1.5), ValueError, "max_density"),
        (dict(max_density="all"), TypeError, "max_density"),
        (dict(x="spikes"), TypeError, "x must be a torch.Tensor"),
        (dict(weight=torch.zeros(17, 4, 3, 3)), ValueError, "input channels"),
        (dict(weight=torch.zeros(17, 3, 12, 3)), ValueError, "larger than the padded input"),
        (dict(x=torch.zeros(3, 7, 9)), ValueError, r"\[N, Cin, H, W\]"),
    ],
)
def test_bad_arguments(change, error, match):
    x, weight, kwargs = operands(SHAPES[0], 0.2, False, False)
    call = dict(x=x, weight=weight, **kwargs)
    call.update(change)
    with pytest.raises(error, match=match):
        event_conv2d(call.pop("x"), call.pop("weight"), **call)


def test_weights_repacked_after_an_in_place_change():
    x, weight, kwargs = operands(SHAPES[0], 0.2, True, False)
    first = event_conv2d(x, weight, max_density=1.0, **kwargs)
    weight.mul_(2)
    kwargs["bias"].mul_(2)
    second = event_conv2d(x, weight, max_density=1.0, **kwargs)
    assert torch.equal(second, 2 * first)


# ----------------------------------------------------------------------------- the network level
@pytest.fixture(scope="module")
def snn():
    from nn_models import TinyResNet, prepared

    from na_kernels.nn import to_snn

    torch.manual_seed(0)
    network = to_snn(prepared(TinyResNet, p=3), T=4)
    return network.to(memory_format=torch.channels_last)


def _spike_inputs(snn, x):
    """(dense output, event output, {IF layer: (dense spikes, event spikes)}) of one run each."""
    from na_kernels.nn import IFLayer

    spikes = {}

    def keep(module, inputs, output):
        spikes.setdefault(module.name, []).append(output.detach().clone())

    handles = [m.register_forward_hook(keep) for m in snn.network.modules() if isinstance(m, IFLayer)]
    try:
        with torch.no_grad():
            dense = snn.event_driven(False)(x)
            event = snn.event_driven(True)(x)
    finally:
        snn.event_driven(False)
        for handle in handles:
            handle.remove()
    return dense, event, spikes


def test_event_driven_network_matches_the_dense_one(snn, monkeypatch):
    calls = []
    real = event_conv.cpu.forward
    monkeypatch.setattr(event_conv.cpu, "forward", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(event_conv, "DEFAULT_MAX_DENSITY", 1.0)
    monkeypatch.setattr(event_conv, "TILED_MAX_DENSITY", 1.0)
    x = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    dense, event, spikes = _spike_inputs(snn, x)
    assert len(calls) == 7  # every convolution but the stem: 4 in layer1, 3 in layer2
    assert event.shape == dense.shape
    differing = sum(int((d != e).sum()) for d, e in spikes.values())
    total = sum(d.numel() for d, _ in spikes.values())
    assert differing <= 1e-3 * total
    assert torch.allclose(event, dense, atol=1e-2 * float(dense.abs().max()))
