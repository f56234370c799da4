"""A workspace: memory one owner (a ``SpikingNetwork``) keeps for its kernels' outputs from one call
to the next, so that a repeated pass does not run on fresh memory.

Why: a layer output of a few MiB or more is fresh memory from glibc on every call (an ``mmap``
above its threshold, or a heap it trims on free), and the kernel's first write to each page traps
to the OS, which zeroes it. Inside ``with workspace.active():`` the C++ kernels' outputs of
``FROM_BYTES`` or more (``output_cache.empty_strided``) come from the workspace's buffers instead.

Sound liveness: the workspace keeps one private tensor per buffer and hands out only new tensors
over its storage. Every tensor that can reach the memory (a handed-out output, its views, an
``untyped_storage()`` object, autograd's saved tensors, a numpy array) holds a reference to the
storage, so a buffer is handed out again only when its storage's use count says the workspace's
own tensor is its last holder: nothing anyone kept is ever overwritten.

Sizes: an output takes the smallest idle buffer of at least its size and at most ``FIT`` (2)
times it, else a new buffer of its exact size. So a pass on a smaller batch runs in the buffers a
larger one left, down to half their size (an early exit's batch shrinks chunk by chunk); a
handed-out tensor never pins more than twice its bytes; and smaller passes add buffers for an
output only at each halving of its size (n, under n/2, under n/4, ...: under 2n together).

Memory held between calls: at most ``limit_bytes`` (past it, outputs are ordinary fresh tensors);
in a repeated pass, the buffers of the outputs that pass had alive at once. ``release()`` lets it
all go (memory still in use by a caller stays with that caller).
"""

import bisect
import contextlib
import contextvars
import threading

import torch

FROM_BYTES = 1 << 20  # below this, glibc's own reuse is good enough
FIT = 2  # a buffer serves a request of n bytes when n <= its size <= FIT * n
_ACTIVE = contextvars.ContextVar("na_kernels_workspace", default=None)
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _idle(buffer) -> bool:
    """Whether only the workspace's own tensor holds ``buffer``'s storage (the temporary storage
    object of the query holds one more reference)."""
    return _use_count(buffer.untyped_storage()._cdata) == 2


class Workspace:
    """Buffers (uint8 tensors), handed out as outputs while no one else holds them: a request of n
    bytes takes the smallest idle one of n to ``FIT * n`` bytes."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = int(limit_bytes)
        self._sizes = []  # nbytes of each buffer, ascending
        self._buffers = []  # the uint8 tensors, in the order of _sizes
        self.held_bytes = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()  # an idle check and the hand-out are one step

    def empty_strided(self, shape, strides, dtype, extent):
        """A tensor of ``shape`` / ``strides`` / ``dtype`` covering ``extent`` elements: over the
        smallest idle buffer that fits (``FIT``), a new held one of its byte size, or (past the
        limit) a fresh one; never None."""
        nbytes = extent * dtype.itemsize
        with self._lock:
            start = bisect.bisect_left(self._sizes, nbytes)
            end = bisect.bisect_right(self._sizes, FIT * nbytes)
            for buffer in self._buffers[start:end]:
                if _idle(buffer):
                    self.hits += 1
                    return self._over(buffer, shape, strides, dtype)
            self.misses += 1
            if _use_count is None or self.held_bytes + nbytes > self.limit_bytes:
                return torch.empty_strided(shape, strides, dtype=dtype)
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            at = bisect.bisect_right(self._sizes, nbytes)
            self._sizes.insert(at, nbytes)
            self._buffers.insert(at, buffer)
            self.held_bytes += nbytes
            return self._over(buffer, shape, strides, dtype)

    @staticmethod
    def _over(buffer, shape, strides, dtype):
        return torch.empty(0, dtype=dtype).set_(buffer.untyped_storage(), 0, shape, strides)

    def release(self) -> None:
        """Let every buffer go (outputs still in use keep their memory until they are freed)."""
        self._sizes, self._buffers = [], []
        self.held_bytes = 0
        self.hits = self.misses = 0

    def info(self) -> dict:
        """{"held_bytes", "buffers", "idle_buffers", "limit_bytes", "hits", "misses"} (outputs over a
        kept buffer / not, since the last ``release``)."""
        buffers = list(self._buffers)
        return {
            "held_bytes": self.held_bytes,
            "buffers": len(buffers),
            "idle_buffers": sum(_idle(b) for b in buffers) if _use_count else 0,
            "limit_bytes": self.limit_bytes,
            "hits": self.hits,
            "misses": self.misses,
        }

    @contextlib.contextmanager
    def active(self):
        """While active (in this thread / context), the kernels' large outputs come from here."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    # never pickled or copied with its owner: a copy starts empty
    def __getstate__(self):
        return {"limit_bytes": self.limit_bytes}

    def __setstate__(self, state):
        self.__init__(state["limit_bytes"])

    def __deepcopy__(self, memo):
        return Workspace(self.limit_bytes)


def current():
    """The active workspace, or None."""
    return _ACTIVE.get()
