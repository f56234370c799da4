"""A SpikingNetwork's buffers kept from one pass to the next (``reuse_buffers``,
``na_kernels.cpu.workspace``): bitwise the results of the run without reuse at every SIMD level,
dense and event-driven; nothing a caller, a hook or the statistics hold is overwritten; the
memory is bounded and let go when it should be; save / load and pickling are unaffected."""

import contextlib
import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nn_models import TinyResNet, prepared
from torch import nn

from na_kernels import cpu
from na_kernels.cpu import workspace
from na_kernels.nn import ExitRule, IFLayer, load_snn, to_snn
from na_kernels.ops import event_conv
from na_kernels.ops.event_conv import dense
from na_kernels.snn.early_exit import select_rows

CL = torch.channels_last
T_MAX = 6  # the early exits' longest run
pytestmark = pytest.mark.skipif(not cpu.available(), reason="the C++ extension is not built")


def levels():
    return cpu.SIMD_LEVELS[: cpu.SIMD_LEVELS.index(cpu.detected_simd_level()) + 1]


@pytest.fixture(autouse=True)
def every_output_reused(monkeypatch):
    """TinyResNet's outputs are small: let every one of them take a workspace buffer."""
    monkeypatch.setattr(workspace, "FROM_BYTES", 0)


@pytest.fixture(scope="module")
def snn():
    torch.manual_seed(0)
    return to_snn(prepared(TinyResNet, p=3), T=4)


def _network(snn, mode):
    network = copy.deepcopy(snn)
    if mode != "contiguous":
        network = network.to(memory_format=CL)
    return network.event_driven(mode == "event")


def _input(seed, mode="channels_last"):
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return x if mode == "contiguous" else x.contiguous(memory_format=CL)


@pytest.fixture
def event_everywhere(monkeypatch):
    """The event kernel at every density."""
    monkeypatch.setattr(event_conv, "DEFAULT_MAX_DENSITY", 1.0)
    monkeypatch.setattr(event_conv, "TILED_MAX_DENSITY", 1.0)


@pytest.mark.parametrize("mode", ["contiguous", "channels_last", "event"])
def test_bitwise_the_run_without_reuse_at_every_level(snn, mode, event_everywhere):
    network = _network(snn, mode)
    for level in levels():
        with cpu.limit_simd(level), torch.no_grad():
            want = [network.reuse_buffers(0)(_input(seed, mode)) for seed in (1, 2, 1)]
            network.reuse_buffers()
            got = [network(_input(seed, mode)) for seed in (1, 2, 1)]
            info = network.workspace.info()
        assert info["hits"] > 0 and info["buffers"] > 0, info  # the buffers were reused
        for g, w in zip(got, want):
            assert torch.equal(g, w), level


def test_bf16_fast_mode_is_bitwise_the_run_without_reuse(snn, monkeypatch):
    from na_kernels.snn import fused

    network = copy.deepcopy(snn).to(torch.bfloat16).to(memory_format=CL)
    x = [_input(seed).to(torch.bfloat16) for seed in (1, 2)]
    with torch.no_grad():
        want = [network.reuse_buffers(0)(v) for v in x]
        network.reuse_buffers()
        fusable, calls = fused._fusable, []
        monkeypatch.setattr(fused, "_fusable", lambda *a: calls.append(fusable(*a)) or calls[-1])
        got = [network(v) for v in x]
    assert calls and all(calls)  # the adds stayed fused: one bf16 rounding, as without reuse
    assert network.workspace.info()["hits"] > 0
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_a_repeated_pass_takes_no_new_buffer(snn, event_everywhere):
    network = _network(snn, "event")
    with torch.no_grad():
        network(_input(1))
        before = network.workspace.info()
        network(_input(2))
        after = network.workspace.info()
    assert after["misses"] == before["misses"] and after["buffers"] == before["buffers"]
    assert after["hits"] > before["hits"]
    assert after["idle_buffers"] == after["buffers"]  # nothing handed out is alive after the pass
    assert 0 < after["held_bytes"] <= after["limit_bytes"]


@contextlib.contextmanager
def _hooks_keeping(network):
    """Forward hooks on every IF layer and convolution of ``network`` while active: yields (kept,
    modules), kept filling with (tensor, its clone at the time) for each call's output and input."""
    kept = []

    def keep(module, args, out):
        kept.append((out, out.clone()))
        kept.append((args[0], args[0].clone()))

    modules = [m for m in network.network.modules() if isinstance(m, (IFLayer, nn.Conv2d))]
    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        yield kept, modules
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("mode", ["channels_last", "event"])
def test_what_hooks_and_callers_keep_is_not_overwritten(snn, mode, event_everywhere):
    network = _network(snn, mode)
    with _hooks_keeping(network) as (kept, modules), torch.no_grad():
        first = network(_input(1))
        first_copy = first.clone()
        for seed in (2, 3):
            network(_input(seed))
    assert len(kept) == 2 * 3 * len(modules)
    for tensor, copy_then in kept:
        assert torch.equal(tensor, copy_then)
    assert torch.equal(first, first_copy)

    # a view, a storage object or a numpy array of an output holds its buffer the same way
    held = {}

    def keep_views(module, args, out):
        held.setdefault("view", out[:1])
        held.setdefault("numpy", out.numpy())
        held.setdefault("storage", out.untyped_storage())

    handles = [m.register_forward_hook(keep_views) for m in modules[1:2]]
    with torch.no_grad():
        network(_input(4))
        view, array, storage = held["view"].clone(), held["numpy"].copy(), held["storage"]
        snapshot = bytes(storage)
        for seed in (5, 6):
            network(_input(seed))
    for handle in handles:
        handle.remove()
    assert torch.equal(held["view"], view) and np.array_equal(held["numpy"], array)
    assert bytes(storage) == snapshot


def test_statistics_agree_with_the_run_without_reuse(snn, event_everywhere):
    stats = []
    for limit in (0, 1024):
        network = _network(snn, "event").reuse_buffers(limit)
        network.record_statistics(True)
        network.reset_statistics()
        with torch.no_grad():
            outs = [network(_input(seed)) for seed in (1, 2)]
        stats.append((network.statistics(), outs))
    (want, want_outs), (got, got_outs) = stats
    assert got == want and got["if_layers"] and got["samples"] == 6
    assert all(torch.equal(g, w) for g, w in zip(got_outs, want_outs))


def test_chunks_early_exit_and_autograd(snn, event_everywhere):
    network = _network(snn, "event")
    plain = copy.deepcopy(network).reuse_buffers(0)
    with torch.no_grad():
        assert torch.equal(network(_input(1), chunk=3), plain(_input(1), chunk=3))
        assert torch.equal(network(_input(1), chunk=1), plain(_input(1), chunk=1))
    got = network.run_early_exit(_input(2), 0.5, chunk=2)
    want = plain.run_early_exit(_input(2), 0.5, chunk=2)
    assert torch.equal(got.outputs, want.outputs) and torch.equal(got.exit_steps, want.exit_steps)
    network.release_buffers()
    network(_input(3))  # with autograd on: no workspace
    assert network.workspace.info()["buffers"] == 0


def test_memory_is_bounded_and_let_go(snn, event_everywhere):
    network = _network(snn, "event").reuse_buffers(0)
    with torch.no_grad():
        network(_input(1))
    assert network.workspace.info()["held_bytes"] == 0
    network.reuse_buffers()
    with torch.no_grad():
        network(_input(1))
    held = network.workspace.info()["held_bytes"]
    network.workspace.limit_bytes = held // 2  # a smaller cap: the rest are fresh outputs
    network.release_buffers()
    with torch.no_grad():
        network(_input(1))
    info = network.workspace.info()
    assert 0 < info["held_bytes"] <= held // 2 and info["misses"] > info["buffers"]

    def filled(net):
        with torch.no_grad():
            net(_input(1))
        return net.workspace.info()["buffers"] > 0

    network.reuse_buffers()
    assert filled(network)
    network.release_buffers()
    assert network.workspace.info()["buffers"] == 0
    assert filled(network)
    network.to(torch.float32)
    assert network.workspace.info()["buffers"] == 0
    assert filled(network)
    network.event_driven(False)
    assert network.workspace.info()["buffers"] == 0
    assert filled(network)
    before = network.workspace.info()
    with torch.no_grad():
        network(torch.randn(2, 3, 16, 16).contiguous(memory_format=CL))  # a smaller batch: in the same buffers
    after = network.workspace.info()
    assert after["hits"] > before["hits"] and after["buffers"] >= before["buffers"]
    with torch.no_grad():
        network(torch.randn(4, 3, 16, 16).contiguous(memory_format=CL))  # a larger one: all anew
    assert network.workspace.info()["misses"] == network.workspace.info()["buffers"]
    with torch.no_grad():
        network(_input(1), T=8)  # more steps per call: all anew
    assert network.workspace.info()["misses"] == network.workspace.info()["buffers"]


def _batch(seed, mode="channels_last"):
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return x if mode == "contiguous" else x.contiguous(memory_format=CL)


def _mixed_rule(network, x):
    """A confidence threshold whose exits fall between step 4 and T_MAX (the median top
    probability at step 4 of the fixed run): samples leave the batch mid-run."""
    with torch.no_grad():
        fixed = network.reuse_buffers(0)(x, T=T_MAX)
    network.reuse_buffers()
    return ExitRule(confidence=float(torch.softmax(fixed[3].float(), -1).amax(-1).median()))


def _exit_fields(result):
    return (result.exit_steps, result.steps_run, result.predictions, result.outputs)


@pytest.mark.parametrize("mode", ["contiguous", "channels_last", "event"])
def test_early_exit_bitwise_the_run_without_reuse_at_every_level(snn, mode, event_everywhere):
    network = _network(snn, mode)
    network.record_statistics(True)
    rule = _mixed_rule(network, _batch(1, mode))
    for level in levels():
        for chunk in (1, 2, 4):
            with cpu.limit_simd(level):
                network.reuse_buffers(0)
                want = [
                    network.run_early_exit(_batch(seed, mode), rule, T_max=T_MAX, chunk=chunk) for seed in (1, 2, 1)
                ]
                network.reuse_buffers()
                got = [network.run_early_exit(_batch(seed, mode), rule, T_max=T_MAX, chunk=chunk) for seed in (1, 2, 1)]
            info = network.workspace.info()
            assert info["hits"] > info["misses"] > 0, info  # the chunks ran in kept buffers
            assert (want[0].steps_run < T_MAX).any()  # samples left the batch mid-run
            assert (want[0].exit_steps == T_MAX).any() or chunk > 1
            for g, w in zip(got, want):
                assert all(torch.equal(a, b) for a, b in zip(_exit_fields(g), _exit_fields(w))), (level, chunk)
                assert g.statistics == w.statistics and g.statistics["samples"] == 8


def test_a_repeated_early_exit_takes_no_new_buffer(snn, event_everywhere):
    network = _network(snn, "event")
    rule = _mixed_rule(network, _batch(1))
    with torch.no_grad():
        network(_batch(1), T=T_MAX)  # a fixed-T pass first: the early exits keep its buffers
    kept = network.workspace.info()["buffers"]
    first = network.run_early_exit(_batch(1), rule, T_max=T_MAX, chunk=1)
    assert (first.steps_run < T_MAX).any()
    before = network.workspace.info()
    assert before["buffers"] > kept  # the fixed pass's buffers were not let go
    again = network.run_early_exit(_batch(1), rule, T_max=T_MAX, chunk=1)
    after = network.workspace.info()
    assert after["misses"] == before["misses"] and after["buffers"] == before["buffers"]
    assert after["hits"] > before["hits"]
    assert after["idle_buffers"] == after["buffers"]  # nothing handed out is alive after the run
    assert torch.equal(again.outputs, first.outputs)
    with torch.no_grad():
        network(_batch(2), T=T_MAX)
    assert network.workspace.info()["misses"] == after["misses"]  # nor the fixed pass after it


def test_early_exit_memory_stays_under_the_cap(snn, event_everywhere):
    network = _network(snn, "event")
    rule = _mixed_rule(network, _batch(1))
    want = [network.reuse_buffers(0).run_early_exit(_batch(seed), rule, T_max=T_MAX, chunk=1) for seed in (1, 2)]
    network.reuse_buffers()
    network.run_early_exit(_batch(1), rule, T_max=T_MAX, chunk=1)
    held = network.workspace.info()["held_bytes"]
    network.reuse_buffers(0)
    network.workspace.limit_bytes = held // 3
    got = [network.run_early_exit(_batch(seed), rule, T_max=T_MAX, chunk=1) for seed in (1, 2)]
    info = network.workspace.info()
    assert 0 < info["held_bytes"] <= held // 3 and info["misses"] > info["buffers"]
    for g, w in zip(got, want):
        assert all(torch.equal(a, b) for a, b in zip(_exit_fields(g), _exit_fields(w)))


@pytest.mark.parametrize("mode", ["channels_last", "event"])
def test_early_exit_overwrites_nothing_kept(snn, mode, event_everywhere):
    network = _network(snn, mode)
    rule = _mixed_rule(network, _batch(1, mode))
    with _hooks_keeping(network) as (kept, modules):
        results = [network.run_early_exit(_batch(seed, mode), rule, T_max=T_MAX, chunk=2) for seed in (1, 2, 3)]
    copies = [[t.clone() for t in _exit_fields(r)] for r in results]
    for seed in (4, 5):
        network.run_early_exit(_batch(seed, mode), rule, T_max=T_MAX, chunk=1)
    assert len(kept) > 2 * 3 * len(modules)  # a call per chunk
    for tensor, copy_then in kept:
        assert torch.equal(tensor, copy_then)
    for result, copied in zip(results, copies):
        assert all(torch.equal(a, b) for a, b in zip(_exit_fields(result), copied))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "other"])
def test_select_rows_is_index_select_in_the_values_order(layout):
    value = torch.randn(6, 4, 5, 3)
    if layout == "channels_last":
        value = value.contiguous(memory_format=CL)
    elif layout == "other":
        value = value.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)  # dim 0 not outermost
    keep = torch.tensor([4, 1, 5])
    want = value.index_select(0, keep)
    space = workspace.Workspace(1 << 20)
    for active in (False, True):
        with space.active() if active else contextlib.nullcontext():
            got = select_rows(value, keep)
        assert torch.equal(got, want)
        if layout == "other":
            assert got.stride() == want.stride()
        else:
            assert got.stride() == value[:3].stride()  # the value's own order
        assert space.info()["buffers"] == int(active and layout != "other")  # into the workspace


def test_a_buffer_serves_requests_of_half_its_size_to_its_size():
    for nbytes, reused in ((512, False), (257, False), (256, True), (200, True), (128, True), (127, False)):
        space = workspace.Workspace(1 << 20)
        ptr = space.empty_strided((64,), (1,), torch.float32, 64).data_ptr()  # an idle 256-byte buffer
        b = space.empty_strided((nbytes,), (1,), torch.uint8, nbytes)
        assert (b.data_ptr() == ptr) == reused, nbytes
        assert space.info()["buffers"] == 1 + (not reused) and b.untyped_storage().nbytes() >= nbytes
    # the smallest idle buffer that fits first; a request no idle buffer fits gets one of its own size
    space = workspace.Workspace(1 << 20)
    held = [space.empty_strided((n,), (1,), torch.uint8, n) for n in (300, 256)]
    del held  # two idle buffers
    c, d, e = (space.empty_strided((200,), (1,), torch.uint8, 200) for _ in range(3))
    assert [t.untyped_storage().nbytes() for t in (c, d, e)] == [256, 300, 200]
    assert space.info()["held_bytes"] == 756


def test_save_load_pickle_and_copies_carry_no_buffers(snn, tmp_path):
    network = _network(snn, "channels_last")
    with torch.no_grad():
        want = network(_input(1))
    assert network.workspace.info()["buffers"] > 0
    network.save(tmp_path / "net.snn")
    loaded = load_snn(tmp_path / "net.snn").to(memory_format=CL)
    with torch.no_grad():
        assert torch.equal(loaded(_input(1)), want)
    for other in (copy.deepcopy(network), pickle.loads(pickle.dumps(network))):
        assert other.workspace.info()["buffers"] == 0
        assert other.workspace.limit_bytes == network.workspace.limit_bytes
    buffer = io.BytesIO()
    torch.save(network, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=False).workspace.info()["buffers"] == 0


def test_workspace_hands_out_only_idle_buffers():
    space = workspace.Workspace(1 << 20)
    with space.active():
        a = space.empty_strided((4, 8), (8, 1), torch.float32, 32)
        b = space.empty_strided((4, 8), (8, 1), torch.float32, 32)
        assert a.data_ptr() != b.data_ptr()
        ptr = a.data_ptr()
        view = a[1:]
        del a
        c = space.empty_strided((4, 8), (8, 1), torch.float32, 32)
        assert c.data_ptr() != ptr  # the view still holds it
        del view, c
        d = space.empty_strided((2, 16), (1, 2), torch.int32, 32)  # the same bytes, any shape and dtype
        assert d.data_ptr() == ptr and d.stride() == (1, 2) and d.dtype == torch.int32
    assert workspace.current() is None
    small = workspace.Workspace(100)
    e = small.empty_strided((4, 8), (8, 1), torch.float32, 32)  # 128 bytes: past the cap, fresh
    assert small.info()["held_bytes"] == 0 and e.shape == (4, 8)


def test_without_torchs_use_count_every_output_is_fresh(monkeypatch):
    """torch._C._storage_Use_Count is private API: where a torch lacks it, the workspace keeps
    nothing and hands out fresh tensors (it cannot tell an idle buffer from a held one)."""
    monkeypatch.setattr(workspace, "_use_count", None)
    space = workspace.Workspace(1 << 20)
    a = space.empty_strided((4, 8), (8, 1), torch.float32, 32)
    ptr = a.data_ptr()
    b = space.empty_strided((4, 8), (8, 1), torch.float32, 32)
    assert b.data_ptr() != ptr and a.shape == b.shape == (4, 8)
    assert space.info()["held_bytes"] == 0 and space.info()["buffers"] == 0


def test_two_threads_never_get_one_buffer(monkeypatch):
    """Two threads asking at once for a buffer's size while one idle buffer is kept: each gets its
    own memory. Each idle check waits (up to 1 s) for the other thread's before it answers, so
    without the workspace's lock both would see the same buffer idle."""
    import threading

    space = workspace.Workspace(1 << 20)
    first = space.empty_strided((4, 8), (8, 1), torch.float32, 32)
    del first  # one idle buffer
    both_checking = threading.Barrier(2, timeout=1.0)
    idle = workspace._idle

    def idle_when_both_check(buffer):
        answer = idle(buffer)
        try:
            both_checking.wait()
        except threading.BrokenBarrierError:
            pass
        return answer

    monkeypatch.setattr(workspace, "_idle", idle_when_both_check)
    got = [None, None]

    def take(i):
        got[i] = space.empty_strided((4, 8), (8, 1), torch.float32, 32)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got[0].data_ptr() != got[1].data_ptr()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("stride, padding, kernel", [(1, 1, 3), (2, 1, 3), (2, 0, 1), (1, 2, 5)])
@pytest.mark.parametrize("residual", [False, True])
def test_dense_conv_into_the_workspace_is_bitwise_conv2d(layout, stride, padding, kernel, residual):
    g = torch.Generator().manual_seed(kernel + stride)
    x = torch.randn(3, 5, 9, 11, generator=g) * (torch.rand(3, 5, 9, 11, generator=g) < 0.5)
    x[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    weight = torch.randn(7, 5, kernel, kernel, generator=g)
    weight[0] = 0.0  # outputs of exactly +0.0 (no bias there)
    bias = torch.randn(7, generator=g)
    bias[0] = 0.0
    memory_format = CL if layout == "channels_last" else torch.contiguous_format
    x, weight = x.contiguous(memory_format=memory_format), weight.contiguous(memory_format=memory_format)
    want = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    r = torch.randn(want.shape, generator=g).contiguous(memory_format=memory_format) if residual else None
    if residual:
        want = want + r
    space = workspace.Workspace(1 << 24)
    space.empty_strided(want.shape, want.stride(), torch.float32, want.numel()).fill_(1.0)  # a used buffer
    with torch.no_grad(), space.active():
        got = dense.conv2d(x, weight, bias, (stride, stride), (padding, padding), r)
    assert space.info()["buffers"] == 1
    assert got.stride() == want.stride()
    bits = lambda t: t.contiguous().view(torch.int32)  # noqa: E731  (signs of zeros and NaN payloads too)
    assert torch.equal(bits(got), bits(want))
