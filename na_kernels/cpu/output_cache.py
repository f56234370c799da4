"""A cache of the C++ kernels' large output blocks, so that a repeated call does not run on fresh
memory.

Why: a fresh tensor of a few MiB or more is fresh memory from glibc (an ``mmap`` above its
threshold, or a heap it trims on every free), and the kernel's first write to each 4 KiB page of
it traps to the OS, which zeroes the page. For the ops' big outputs that costs as much as the
kernel itself, and whether it happens depends on the allocator's history in the process, not on
the call. So outputs of ``CACHE_FROM_BYTES`` or more come from blocks this module maps itself
(private anonymous memory, with transparent huge pages asked for where a block is large) and
takes back when the output's storage is freed; the next output of the same size class reuses a
block whose pages are already there.

Sound liveness: an output is a tensor over a ``memoryview`` of its block (``torch.frombuffer``),
and torch holds that memoryview until the storage itself is freed, whatever still refers to it
(views, ``untyped_storage()`` objects, autograd's saved tensors, numpy arrays). Only the
memoryview's death returns the block, so a block is never handed out twice while in use.

The cache is off by default: outputs come from ``torch.empty_strided``, and a process that wants
its outputs on warm pages preloads an allocator that keeps them (tcmalloc or jemalloc, as torch's
own ``torch.backends.xeon.run_cpu`` launcher does; README.md, "CPU memory"), which also serves
torch's own allocations. ``NA_KERNELS_CPU_CACHE_MB=N`` or ``set_cache_limit(N)`` turns it on
with up to N MiB of idle blocks, the least recently freed let go first (as soon as a block is
freed past the limit, not at the next allocation), so the sizes in use stay cached when a
program moves on to other shapes. ``empty_cache()`` lets them all go and ``cache_info()`` says
what is held. The cached blocks are invisible to torch's memory tools. One difference from a torch-allocated
tensor: an output's
storage cannot grow in place (``resize_`` to more elements raises torch's "not resizable" error).
"""

import collections
import contextlib
import ctypes
import mmap
import os
import threading
import weakref

import torch

from .._layout import numel
from . import workspace as _workspace

CACHE_FROM_BYTES = 1 << 20  # below this, glibc's own reuse is good enough
SIZE_CLASS_BYTES = 1 << 20  # a block serves outputs rounded up to the same MiB
HUGE_PAGE_BYTES = 1 << 21
HUGE_PAGES_FROM_BYTES = 2 * HUGE_PAGE_BYTES
DEFAULT_CACHE_MB = 0  # off: see the module docstring
_PRIVATE = getattr(mmap, "MAP_PRIVATE", None)  # None off POSIX: the cache is off there


def _limit_from_environment():
    text = os.environ.get("NA_KERNELS_CPU_CACHE_MB", "").strip()
    if not text:
        return DEFAULT_CACHE_MB << 20
    try:
        megabytes = int(text)
    except ValueError:
        megabytes = -1
    if megabytes < 0:
        raise ValueError(
            f"NA_KERNELS_CPU_CACHE_MB must be a whole number of MiB >= 0 (0 turns the output cache off), got {text!r}"
        )
    return megabytes << 20


class _Block:
    """``size`` bytes of private anonymous memory starting at ``offset`` in ``memory``: the start
    is 2 MiB-aligned where the block is large enough for huge pages."""

    __slots__ = ("memory", "offset", "size")

    def __init__(self, size):
        huge = size >= HUGE_PAGES_FROM_BYTES
        slack = HUGE_PAGE_BYTES if huge else 0
        self.memory = mmap.mmap(-1, size + slack, flags=_PRIVATE)
        self.size = size
        self.offset = 0
        if huge:
            anchor = ctypes.c_char.from_buffer(self.memory)
            address = ctypes.addressof(anchor)
            del anchor  # the export must end, or the mapping could never be closed
            self.offset = -address % HUGE_PAGE_BYTES
            if hasattr(self.memory, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
                self.memory.madvise(mmap.MADV_HUGEPAGE, self.offset, size)


class OutputCache:
    """Blocks of memory for outputs: ``live`` ones lie under an output, ``idle`` ones (oldest
    first) wait for the next output of their size class. A freed output's block is queued by a
    weakref callback, which may run on any thread and at any allocation (a garbage collection can
    free a tensor), so it never waits for the lock: it settles the queue into the idle list (the
    oldest idle blocks let go past the limit) when the lock is free, and otherwise the thread
    holding the lock settles it when it lets go (``_trim``)."""

    def __init__(self, limit_bytes):
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._returned = collections.deque()  # blocks whose output was freed, not yet settled
        self._idle = []  # [_Block], oldest first
        self._idle_bytes = 0
        self._live = {}  # id of a weakref to an output's memoryview -> (the weakref, its _Block)
        self.hits = 0
        self.misses = 0

    def empty_strided(self, shape, strides, *, dtype, device=None):
        """``torch.empty_strided(shape, strides, dtype=dtype)`` on the CPU (``device`` is there
        for the same signature), from a cached block when the storage is ``CACHE_FROM_BYTES`` or
        more. Strides must be non-negative."""
        shape, strides = tuple(shape), tuple(strides)
        extent = _extent(shape, strides)
        nbytes = extent * dtype.itemsize
        if nbytes < CACHE_FROM_BYTES or self.limit_bytes == 0 or _PRIVATE is None:
            return torch.empty_strided(shape, strides, dtype=dtype)
        size = -(-nbytes // SIZE_CLASS_BYTES) * SIZE_CLASS_BYTES
        block = self._take(size)
        view = memoryview(block.memory)[block.offset : block.offset + nbytes]
        ref = weakref.ref(view, self._on_freed)
        self._live[id(ref)] = (ref, block)  # the ref must live for its callback to run
        return torch.frombuffer(view, dtype=dtype, count=extent).as_strided(shape, strides)

    @contextlib.contextmanager
    def _locked(self):
        """The lock, the queue settled on entry, and the blocks freed meanwhile settled on exit."""
        with self._lock:
            self._settle()
            yield
        self._trim()

    def _take(self, size):
        with self._locked():
            for i in range(len(self._idle) - 1, -1, -1):  # the most recently freed block of the class
                if self._idle[i].size == size:
                    self._idle_bytes -= size
                    self.hits += 1
                    block = self._idle.pop(i)
                    break
            else:
                block = None
                self.misses += 1
        return block if block is not None else _Block(size)

    def _on_freed(self, ref):
        # torch freed an output's storage: queue its block (deque.append needs no lock)
        _, block = self._live.pop(id(ref), (None, None))
        if block is not None:
            self._returned.append(block)
            self._trim()

    def _trim(self):
        """Settle the queue now unless another caller holds the lock: that caller, or this thread
        once it lets the lock go, runs this again after releasing it, so no freed block waits for
        the next allocation. (A block queued while the lock is held is seen by the holder's
        ``_trim``: the queueing happens before the failed acquire, which happens before the
        release.)"""
        while self._returned and self._lock.acquire(blocking=False):
            try:
                self._settle()
            finally:
                self._lock.release()

    def _settle(self):
        """(under the lock) the queued blocks become idle; the oldest go past the limit."""
        while self._returned:
            block = self._returned.popleft()
            self._idle.append(block)
            self._idle_bytes += block.size
        while self._idle_bytes > self.limit_bytes:
            self._idle_bytes -= self._idle.pop(0).size  # its mapping closes with the last reference

    def after_fork_in_child(self):
        """A forked child starts with a free lock (another thread of the parent may have held it);
        its blocks are private copies of the parent's."""
        self._lock = threading.Lock()

    def set_limit(self, limit_bytes):
        """Keep up to ``limit_bytes`` of idle blocks (0: the cache is off); the oldest past it go now."""
        with self._locked():
            self.limit_bytes = limit_bytes
            self._settle()

    def empty(self):
        """Let every idle block go (its memory goes back to the OS); outputs in use keep theirs."""
        with self._locked():
            self._idle = []
            self._idle_bytes = 0

    def info(self):
        with self._locked():
            return {
                "idle_bytes": self._idle_bytes,
                "idle_blocks": len(self._idle),
                "live_blocks": len(self._live),
                "limit_bytes": self.limit_bytes,
                "hits": self.hits,
                "misses": self.misses,
            }


CACHE = OutputCache(_limit_from_environment())
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=CACHE.after_fork_in_child)


def _extent(shape, strides):
    """Elements from a tensor's first to its last one in memory (non-negative strides), 0 if empty."""
    return 0 if numel(shape) == 0 else 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))


def empty_strided(shape, strides, *, dtype, device=None):
    """An output of the C++ kernels: from the active ``workspace`` (``workspace.FROM_BYTES`` or
    more), else from the cache (``OutputCache.empty_strided``)."""
    held = _workspace.current()
    if held is not None:
        shape, strides = tuple(shape), tuple(strides)
        extent = _extent(shape, strides)
        if extent * dtype.itemsize >= _workspace.FROM_BYTES:
            return held.empty_strided(shape, strides, dtype, extent)
    return CACHE.empty_strided(shape, strides, dtype=dtype)


def empty_like_dense(t):
    """An output with t's shape, strides and dtype (t dense: its elements fill its storage)."""
    return empty_strided(t.shape, t.stride(), dtype=t.dtype)


def set_cache_limit(megabytes):
    """Turn the output cache on with up to ``megabytes`` MiB of idle blocks (a whole number >= 0;
    0 turns it off and lets the idle blocks go), as ``NA_KERNELS_CPU_CACHE_MB`` does at start-up."""
    if isinstance(megabytes, bool) or not isinstance(megabytes, int) or megabytes < 0:
        raise ValueError(
            f"megabytes must be a whole number of MiB >= 0 (0 turns the output cache off), got {megabytes!r}"
        )
    CACHE.set_limit(megabytes << 20)


def empty_cache():
    """Release the idle output blocks the C++ kernels keep for reuse (their memory goes back to
    the OS). Outputs still in use are unaffected and return their blocks when freed."""
    CACHE.empty()


def cache_info():
    """What the output cache holds: {"idle_bytes", "idle_blocks", "live_blocks", "limit_bytes",
    "hits", "misses"} (limit from ``set_cache_limit`` or ``NA_KERNELS_CPU_CACHE_MB``; 0, off, by default)."""
    return CACHE.info()
