"""``integrate_fire(..., overwrite=True)``: where the call allows it (the C++ kernels, plain eager
mode, no gradient, x_seq dense over its T steps) the spikes take x_seq's memory and are bit for
bit the spikes of a call without it, at every SIMD level (the call without it streaming large
spikes around the cache, the one with it storing them through the cache); everywhere
else x_seq is left as it was."""

import pytest
import torch

import na_kernels
from na_kernels import cpu
from na_kernels.ops.integrate_fire import integrate_fire_carried

CL = torch.channels_last


def _calls(x_seq, theta, **options):
    """(spikes, counts, v_final) without overwrite, then with it on a copy: (want, got, copy)."""
    want = na_kernels.integrate_fire(x_seq, theta, return_v=True, **options)
    copy = x_seq.clone(memory_format=torch.preserve_format) if x_seq.dim() != 5 else None
    if copy is None:  # a channels-last [T*B, C, H, W] seen as [T, B, C, H, W]
        copy = x_seq.reshape((-1,) + tuple(x_seq.shape[2:])).clone(memory_format=torch.preserve_format)
        copy = copy.reshape(x_seq.shape)
    got = na_kernels.integrate_fire(copy, theta, return_v=True, overwrite=True, **options)
    return want, got, copy


def _cases():
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        yield dtype, torch.randn(8, 1 << 18, generator=gen).to(dtype)  # >= 4 MiB fp32: streamed without overwrite
        yield dtype, torch.randn(1, 1040, generator=gen).to(dtype)  # T = 1
        yield dtype, torch.randn(5, 3, 17, generator=gen).to(dtype)  # tails
        cl = torch.randn(12, 6, 5, 7, generator=gen).to(dtype).contiguous(memory_format=CL)
        yield dtype, cl.reshape(4, 3, 6, 5, 7)  # channels-last steps


@pytest.mark.skipif(not cpu.available(), reason="C++ extension not built")
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per-channel"])
def test_overwrite_is_bitwise_and_takes_the_input_memory(simd_level, per_channel):
    for dtype, x_seq in _cases():
        channels = x_seq.shape[2] if x_seq.dim() > 2 else 1
        theta = torch.rand(channels) + 0.5 if per_channel and x_seq.dim() > 2 else 0.75
        want, got, copy = _calls(x_seq, theta)
        assert got[0].data_ptr() == copy.data_ptr(), (dtype, tuple(x_seq.shape))
        assert got[0].stride() == want[0].stride()
        for a, b in zip(want, got):
            assert torch.equal(
                a.view(torch.int16) if a.dtype.itemsize == 2 else a, b.view(torch.int16) if b.dtype.itemsize == 2 else b
            )


@pytest.mark.skipif(not cpu.available(), reason="C++ extension not built")
def test_carried_state_overwrites_too():
    x = torch.randn(6, 4, 33)
    first = na_kernels.integrate_fire(x[:3], 0.5, return_v=True)
    want = integrate_fire_carried(x[3:], 0.5, first[2], return_v=True)
    rest = x[3:].clone()
    got = integrate_fire_carried(rest, 0.5, first[2], return_v=True, overwrite=True)
    assert got[0].data_ptr() == rest.data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_where_it_cannot_the_input_is_kept():
    x = torch.randn(4, 2, 16)
    cases = {
        "reference backend": (x.clone(), "reference", False),
        "gradient": (x.clone().requires_grad_(), "auto", True),
        "steps repeated (stride 0)": (torch.randn(2, 16).unsqueeze(0).expand(4, 2, 16), "auto", False),
        "steps apart (sliced)": (torch.randn(8, 2, 16)[::2], "auto", False),
    }
    for name, (x_seq, backend, grad) in cases.items():
        before = x_seq.detach().clone()
        with na_kernels.use_backend(backend), torch.set_grad_enabled(grad):
            spikes, _ = na_kernels.integrate_fire(x_seq, 0.5, overwrite=True)
        assert spikes.data_ptr() != x_seq.data_ptr(), name
        assert torch.equal(x_seq.detach(), before), name
        want, _ = na_kernels.integrate_fire(before, 0.5)
        assert torch.equal(spikes.detach(), want), name
