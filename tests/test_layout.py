"""na_kernels._layout, the stride algebra of both ops, against torch's own answers: contiguous,
channels-last, expanded over T (stride 0), sliced x[::2], size-1 and zero-size dims; the
channel rule (element m in channel (m // channel_stride) % channels) against the channel index
torch stores at each memory position; integrate_fire's Layout and noisy_quant's operands."""

import pytest
import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false as is_non_overlapping_and_dense

import na_kernels
from na_kernels import _layout
from na_kernels._layout import Layout


def _views():
    """(name, tensor) of every layout the ops meet."""
    base = torch.randn(4, 6, 5, 3)
    return [
        ("contiguous", base),
        ("channels_last", base.contiguous(memory_format=torch.channels_last)),
        ("transposed", base.transpose(1, 3)),
        ("sliced [::2]", base[::2]),
        ("sliced inner [..., ::2]", base[..., ::2]),
        ("expanded (stride 0)", base[:1].expand(4, 6, 5, 3)),
        ("size-1 dims", torch.randn(1, 6, 1, 3)),
        ("size-1 dim with an odd stride", torch.randn(6, 3).unsqueeze(1).as_strided((6, 1, 3), (3, 7, 1))),
        ("zero-size", torch.randn(4, 0, 5)),
        ("zero-size sliced", torch.randn(4, 6, 5)[:, :0, ::2]),
        ("scalar", torch.tensor(1.0)),
        ("one element", torch.randn(1, 1)),
    ]


VIEWS = _views()
IDS = [name for name, _ in VIEWS]


@pytest.mark.parametrize("shape", [(), (1,), (5,), (0,), (2, 0, 3), (4, 1, 1, 3), (1, 1), (3, 5, 7, 2)])
def test_contiguous_strides_match_torch(shape):
    assert _layout.contiguous_strides(shape) == torch.empty(shape).stride()
    assert _layout.numel(shape) == torch.empty(shape).numel()


@pytest.mark.parametrize("name,t", VIEWS, ids=IDS)
def test_is_contiguous_matches_torch(name, t):
    assert _layout.is_contiguous(tuple(t.shape), t.stride()) == t.is_contiguous()


@pytest.mark.parametrize("name,t", VIEWS, ids=IDS)
def test_is_dense_matches_torch(name, t):
    if t.numel() == 0:
        pytest.skip("torch calls every empty tensor dense; _layout only meets them as contiguous")
    assert _layout.is_dense(tuple(t.shape), t.stride()) == is_non_overlapping_and_dense(t)


@pytest.mark.parametrize("name,t", VIEWS, ids=IDS)
def test_restride(name, t):
    same = _layout.restride(t, t.stride())
    assert same is t
    strides = _layout.contiguous_strides(t.shape)
    out = _layout.restride(t, strides)
    assert out.stride() == strides and torch.equal(out, t)
    if not t.is_contiguous():
        assert out.data_ptr() != t.data_ptr()


def _memory_order(t):
    """The elements of a dense tensor in the order they lie in memory."""
    return torch.as_strided(t, (t.numel(),), (1,), t.storage_offset())


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted", "one channel"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4, 1, 1), (1, 7, 2, 3), (2, 1, 3, 3)])
def test_channel_stride_rule(layout, shape):
    """Element m (memory order) is in channel (m // channel_stride) % channels, channels along dim 1."""
    channels = 1 if layout == "one channel" else shape[1]
    index = torch.arange(shape[1]).view(1, -1, 1, 1).expand(shape) if channels > 1 else torch.zeros(shape)
    if layout == "channels_last":
        t = index.contiguous(memory_format=torch.channels_last)
    elif layout == "permuted":
        t = index.permute(3, 1, 0, 2).contiguous().permute(2, 1, 3, 0)  # dims in memory: W, C, B, H
    else:
        t = index.contiguous()
    assert tuple(t.shape) == shape and _layout.is_dense(tuple(t.shape), t.stride())
    stride = _layout.channel_stride(tuple(t.shape), t.stride(), channels)
    m = torch.arange(t.numel())
    assert torch.equal((m // stride) % channels, _memory_order(t).to(torch.int64))


def test_flat_channels_is_noisy_quants_geometry():
    x = torch.randn(3, 4, 5, 6).transpose(2, 3)  # read as contiguous: rows of 30 elements per channel
    xc, lam32, stride, channels = _layout.flat_channels(x, torch.rand(4, dtype=torch.bfloat16) + 0.5)
    assert xc.is_contiguous() and torch.equal(xc, x)
    assert lam32.dtype == torch.float32 and lam32.shape == (4,) and (stride, channels) == (30, 4)
    _, lam32, stride, channels = _layout.flat_channels(x, torch.tensor(1.5))
    assert lam32.shape == (1,) and (stride, channels) == (x.numel(), 1)
    _, _, stride, channels = _layout.flat_channels(torch.randn(0, 4), torch.ones(4))
    assert stride >= 1 and channels == 4


def test_channel_vector():
    theta = torch.rand(5)
    assert _layout.channel_vector(theta) is not theta and _layout.channel_vector(theta).data_ptr() == theta.data_ptr()
    for t in (torch.tensor(2.0), torch.rand(5, dtype=torch.float16), torch.rand(10)[::2], torch.rand(1, 1)):
        v = _layout.channel_vector(t)
        assert v.dtype == torch.float32 and v.dim() == 1 and v.is_contiguous() and torch.equal(v, t.float().flatten())


def _sequences():
    x = torch.randn(4, 2, 3, 5, 6)
    steps_cl = torch.randn(8, 3, 5, 6).contiguous(memory_format=torch.channels_last).reshape(4, 2, 3, 5, 6)
    return [
        ("contiguous", x, True),
        ("channels_last steps", steps_cl, True),
        ("expanded over T (stride 0)", x[0].expand(4, 2, 3, 5, 6), True),
        ("sliced over T [::2]", x[::2], True),
        ("steps transposed (dense)", x.transpose(2, 4), True),
        ("steps sliced (not dense)", x[:, :, :, ::2], False),
        ("size-1 dims", torch.randn(3, 1, 4, 1), True),
        ("zero-size step", torch.randn(3, 0, 4), True),
    ]


@pytest.mark.parametrize("name,x_seq,in_place", _sequences(), ids=[n for n, _, _ in _sequences()])
def test_integrate_fire_layout(name, x_seq, in_place):
    channels = x_seq.shape[2]
    layout = Layout.of_input(x_seq, channels)
    assert layout.in_place == in_place
    assert layout.neurons == x_seq[0].numel()
    read = layout.read(x_seq)
    assert torch.equal(read, x_seq) and (read is x_seq) == in_place
    step = x_seq[0]
    want_strides = step.stride() if in_place and not step.is_contiguous() else torch.empty(step.shape).stride()
    assert layout.step_strides == tuple(want_strides)
    spikes = layout.empty_seq(x_seq.shape[0], torch.float16, "cpu")
    assert spikes.shape == x_seq.shape and spikes.stride() == (max(layout.neurons, 1),) + tuple(want_strides)
    assert layout.as_step(step).stride() == tuple(want_strides) and torch.equal(layout.as_step(step), step)
    assert torch.equal(layout.as_seq(x_seq), x_seq) and layout.as_seq(x_seq).stride() == spikes.stride()
    if layout.neurons:  # the channel rule holds in the layout's memory order
        index = torch.arange(channels).view(1, -1, *([1] * (step.dim() - 2))).expand(step.shape)
        in_layout = layout.as_step(index.contiguous())
        m = torch.arange(layout.neurons)
        assert torch.equal((m // layout.channel_stride) % channels, _memory_order(in_layout))


def test_integrate_fire_outputs_share_the_layout():
    x_seq = torch.randn(8, 3, 5, 6).contiguous(memory_format=torch.channels_last).reshape(4, 2, 3, 5, 6)
    layout = Layout.of_input(x_seq, 3)
    spikes, counts, v_final, h = _layout.forward_outputs(layout, x_seq, True)
    assert spikes.stride()[1:] == x_seq.stride()[1:] and h.stride() == spikes.stride()
    assert counts.dtype == torch.int32 and counts.stride() == v_final.stride() == x_seq.stride()[1:]
    assert _layout.forward_outputs(layout, x_seq, False)[3].numel() == 0
    grad_x, grad_v_init = _layout.backward_outputs(layout, 4, torch.bfloat16, x_seq.device, True, False)
    assert grad_x.dtype == torch.bfloat16 and grad_x.stride() == spikes.stride() and grad_v_init.numel() == 0


# ------------------------------------------------------------------- fresh forward outputs


def test_forward_outputs_are_exact_and_independent_across_calls():
    x = torch.randn(8, 2**15)
    with na_kernels.use_backend("cpu"):
        first = [t.clone() for t in na_kernels.integrate_fire(x, 1.0, return_v=True)]
        kept = na_kernels.integrate_fire(x, 1.0, return_v=True)
        for _ in range(3):
            again = na_kernels.integrate_fire(x * 0.5, 1.0, return_v=True)
    for got, want in zip(kept, first):
        assert torch.equal(got, want)  # a live output is never written by a later call
    with na_kernels.use_backend("reference"):
        want = na_kernels.integrate_fire(x * 0.5, 1.0, return_v=True)
    for got, ref in zip(again, want):
        assert torch.equal(got, ref)
