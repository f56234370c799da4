"""The C++ kernels' output cache (na_kernels/cpu/output_cache.py): a block is reused only once
nothing can reach the storage over it, outputs are what torch.empty_strided would give, and the
limit, the release and the environment setting do what they say."""

import gc

import pytest
import torch

from na_kernels import cpu, integrate_fire, noisy_quant
from na_kernels.cpu import output_cache
from na_kernels.cpu.output_cache import CACHE_FROM_BYTES, OutputCache

needs_cpp = pytest.mark.skipif(not cpu.available(), reason="C++ extension not built")
BIG = CACHE_FROM_BYTES // 4 * 3  # float32 elements: 3 MiB, above the threshold


def _address(t):
    return t.untyped_storage().data_ptr()


@pytest.fixture
def cache_on():
    """The process's cache turned on (it is off by default) for one test, then back as it was."""
    previous = output_cache.CACHE.limit_bytes
    cpu.set_cache_limit(64)
    yield output_cache.CACHE
    output_cache.CACHE.set_limit(previous)


def test_small_outputs_are_plain_torch_tensors():
    cache = OutputCache(64 << 20)
    t = cache.empty_strided((10, 3), (3, 1), dtype=torch.float32)
    assert cache.info()["live_blocks"] == 0 and cache.info()["misses"] == 0
    assert t.shape == (10, 3) and t.stride() == (3, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int32])
@pytest.mark.parametrize(
    "shape, strides",
    [
        ((BIG,), (1,)),
        ((3, BIG // 3 + 1), (BIG // 3 + 1, 1)),
        ((2, 5, 7, BIG // 64), (5 * 7 * (BIG // 64), 1, 5 * (BIG // 64), 5)),
        ((4, BIG // 8), (0, 1)),
    ],
)
def test_cached_output_has_the_asked_shape_strides_and_dtype(dtype, shape, strides):
    cache = OutputCache(64 << 20)
    t = cache.empty_strided(shape, strides, dtype=dtype)
    assert (t.shape, t.stride(), t.dtype, t.device.type) == (shape, strides, dtype, "cpu")
    t.fill_(1)  # every element is writable, inside the block
    assert torch.all(t == 1)
    assert _address(t) % 64 == 0  # the kernels' streaming stores need 64-byte rows


def test_a_block_comes_back_only_when_its_storage_is_freed():
    cache = OutputCache(64 << 20)
    first = cache.empty_strided((BIG,), (1,), dtype=torch.float32)
    address = _address(first)
    holders = {"view": first[5:], "storage": first.untyped_storage(), "saved": first.view(2, -1)}
    del first
    for name in list(holders):
        gc.collect()
        other = cache.empty_strided((BIG,), (1,), dtype=torch.float32)
        assert _address(other) != address, f"block reused while a {name} still held it"
        del other
        holders.pop(name)
    gc.collect()
    again = cache.empty_strided((BIG,), (1,), dtype=torch.float32)
    assert _address(again) == address
    assert cache.info()["hits"] >= 1


def test_a_block_serves_only_its_own_size_class():
    cache = OutputCache(64 << 20)
    t = cache.empty_strided((BIG,), (1,), dtype=torch.float32)
    address = _address(t)
    del t
    bigger = cache.empty_strided((4 * BIG,), (1,), dtype=torch.float32)
    assert _address(bigger) != address


def test_idle_blocks_stay_within_the_limit_and_empty_releases_them():
    size = -(-BIG * 4 // output_cache.SIZE_CLASS_BYTES) * output_cache.SIZE_CLASS_BYTES
    cache = OutputCache(2 * size)
    outputs = [cache.empty_strided((BIG,), (1,), dtype=torch.float32) for _ in range(5)]
    del outputs
    gc.collect()
    info = cache.info()
    assert info["idle_blocks"] == 2 and info["idle_bytes"] == 2 * size <= info["limit_bytes"]
    assert info["live_blocks"] == 0
    cache.empty()
    assert cache.info()["idle_bytes"] == 0 and cache.info()["idle_blocks"] == 0


def test_the_least_recently_freed_blocks_go_first():
    other = (BIG + output_cache.SIZE_CLASS_BYTES // 4,)  # float32: the next size class
    cache = OutputCache(2 * other[0] * 4)  # two blocks of it
    old = [cache.empty_strided((BIG,), (1,), dtype=torch.float32) for _ in range(2)]
    del old  # two idle blocks of the first size
    new = [cache.empty_strided(other, (1,), dtype=torch.float32) for _ in range(2)]
    addresses = {_address(t) for t in new}
    del new  # these evict the older ones
    gc.collect()
    assert cache.info()["idle_blocks"] == 2
    hits = cache.info()["hits"]
    again = [cache.empty_strided(other, (1,), dtype=torch.float32) for _ in range(2)]
    assert {_address(t) for t in again} == addresses and cache.info()["hits"] == hits + 2


def test_freed_blocks_are_trimmed_when_freed_not_at_the_next_allocation():
    size = -(-BIG * 4 // output_cache.SIZE_CLASS_BYTES) * output_cache.SIZE_CLASS_BYTES
    cache = OutputCache(size)  # room for one idle block
    outputs = [cache.empty_strided((BIG,), (1,), dtype=torch.float32) for _ in range(3)]
    del outputs
    gc.collect()
    # no allocation and no info() since: the blocks past the limit are gone already
    assert not cache._returned and len(cache._idle) == 1 and cache._idle_bytes == size


def test_a_block_freed_while_the_lock_is_held_is_trimmed_when_it_is_released():
    cache = OutputCache(0)
    cache.limit_bytes = 64 << 20
    t = cache.empty_strided((BIG,), (1,), dtype=torch.float32)
    cache.limit_bytes = 0
    with cache._locked():
        del t  # its callback cannot take the lock: the block waits in the queue
        gc.collect()
        assert len(cache._returned) == 1
    assert not cache._returned and cache._idle == []


def test_set_limit_trims_at_once():
    cache = OutputCache(64 << 20)
    outputs = [cache.empty_strided((BIG,), (1,), dtype=torch.float32) for _ in range(2)]
    del outputs
    gc.collect()
    assert len(cache._idle) == 2
    cache.set_limit(0)
    assert cache._idle == [] and cache._idle_bytes == 0


def test_the_cache_is_off_by_default(monkeypatch):
    monkeypatch.delenv("NA_KERNELS_CPU_CACHE_MB", raising=False)
    assert output_cache.DEFAULT_CACHE_MB == 0 and output_cache._limit_from_environment() == 0


@pytest.mark.parametrize("value", [-1, 1.5, "64", True, None])
def test_set_cache_limit_takes_a_whole_number_of_megabytes(value):
    with pytest.raises(ValueError, match="megabytes must be a whole number of MiB >= 0"):
        cpu.set_cache_limit(value)


def test_set_cache_limit_turns_the_cache_on_and_off():
    previous = output_cache.CACHE.limit_bytes
    try:
        cpu.set_cache_limit(5)
        assert cpu.cache_info()["limit_bytes"] == 5 << 20
        cpu.set_cache_limit(0)
        assert cpu.cache_info()["limit_bytes"] == 0 and cpu.cache_info()["idle_bytes"] == 0
    finally:
        output_cache.CACHE.set_limit(previous)


def test_limit_zero_turns_the_cache_off():
    cache = OutputCache(0)
    t = cache.empty_strided((BIG,), (1,), dtype=torch.float32)
    t.resize_(2 * BIG)  # a torch-allocated storage grows
    assert cache.info()["misses"] == 0 and cache.info()["live_blocks"] == 0


def test_cached_output_cannot_grow_in_place():
    cache = OutputCache(64 << 20)
    t = cache.empty_strided((BIG,), (1,), dtype=torch.float32)
    t.resize_(BIG // 2)  # shrinking is fine
    with pytest.raises(RuntimeError, match="not resizable"):
        t.resize_(2 * BIG)


@pytest.mark.parametrize("text, message", [("-1", "got '-1'"), ("lots", "got 'lots'"), ("1.5", "got '1.5'")])
def test_environment_limit_must_be_a_whole_number(text, message, monkeypatch):
    # what importing na_kernels.cpu.output_cache does with NA_KERNELS_CPU_CACHE_MB
    monkeypatch.setenv("NA_KERNELS_CPU_CACHE_MB", text)
    with pytest.raises(ValueError, match="NA_KERNELS_CPU_CACHE_MB must be a whole number of MiB >= 0") as error:
        output_cache._limit_from_environment()
    assert message in str(error.value)


def test_environment_limit_is_read(monkeypatch):
    monkeypatch.setenv("NA_KERNELS_CPU_CACHE_MB", "3")
    assert OutputCache(output_cache._limit_from_environment()).info()["limit_bytes"] == 3 << 20
    monkeypatch.delenv("NA_KERNELS_CPU_CACHE_MB")
    assert output_cache._limit_from_environment() == output_cache.DEFAULT_CACHE_MB << 20


@needs_cpp
def test_ops_reuse_blocks_and_give_the_same_results(cache_on):
    x = torch.rand(8, BIG // 8) * 0.8
    xq = torch.randn(BIG) * 3
    first = integrate_fire(x, 1.0)
    first_q = noisy_quant(xq, 3, lam=4.0, seed=7)
    before = cpu.cache_info()["hits"]
    for _ in range(3):
        again = integrate_fire(x, 1.0)
        again_q = noisy_quant(xq, 3, lam=4.0, seed=7)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
        assert torch.equal(first_q, again_q)
        del again, again_q
    assert cpu.cache_info()["hits"] > before


@needs_cpp
def test_backward_outputs_and_saved_h_are_sound(cache_on):
    x = (torch.rand(4, BIG // 4) * 0.8).requires_grad_(True)
    spikes, _ = integrate_fire(x, 1.0)
    expected = torch.autograd.grad(spikes.sum(), x, retain_graph=True)[0]
    # outputs made while the graph's saved h is alive must not land on h's block
    for _ in range(3):
        noise = integrate_fire(torch.rand(4, BIG // 4), 1.0)
        del noise
    assert torch.equal(torch.autograd.grad(spikes.sum(), x)[0], expected)


def test_empty_cache_and_cache_info_are_public():
    cpu.empty_cache()
    info = cpu.cache_info()
    assert info["idle_bytes"] == 0
    assert set(info) == {"idle_bytes", "idle_blocks", "live_blocks", "limit_bytes", "hits", "misses"}


@needs_cpp
def test_threads_sharing_the_cache_never_share_a_block(cache_on):
    import threading

    inputs = [torch.rand(4, BIG // 4 + 8 * i) * 0.8 for i in range(4)]
    expected = [integrate_fire(x, 0.9)[0] for x in inputs]
    errors = []

    def work(i):
        try:
            held = []
            for _ in range(12):
                spikes = integrate_fire(inputs[i], 0.9)[0]
                held.append(spikes)
                if len(held) > 2:
                    held.pop(0)  # returns a block while other threads take theirs
                if not torch.equal(spikes, expected[i]):
                    errors.append(i)
            for spikes in held:  # still intact after the other threads' calls
                if not torch.equal(spikes, expected[i]):
                    errors.append(i)
        except Exception as error:  # surfaced below
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_can_allocate_while_a_parent_thread_held_the_lock(cache_on):
    import os
    import threading

    release = threading.Event()
    taken = threading.Event()

    def hold():
        with output_cache.CACHE._lock:
            taken.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait()
    try:
        pid = os.fork()
        if pid == 0:  # the child: without the fork handler this allocation would wait forever
            code = 0
            try:
                output_cache.CACHE.empty_strided((BIG,), (1,), dtype=torch.float32)[:1].fill_(1)  # serial: no OpenMP
            except BaseException:
                code = 1
            os._exit(code)
        import time

        done, status = 0, 0
        for _ in range(200):  # up to 20 s
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert done and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the child hung or failed"
    finally:
        release.set()
        holder.join()
