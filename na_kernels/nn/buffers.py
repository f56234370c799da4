"""Buffers whose dtype is part of their meaning: thresholds, counters, statistics.

``module.to(torch.bfloat16)`` (or ``.half()``, ``.to(x)``) casts every floating-point buffer.
That is right for a layer's weights and wrong for an IF layer's θ (the kernels compare in
float32, so θ rounded to bfloat16 would move every threshold) and for float64 statistics
(a count of synaptic operations in bfloat16 stops growing past 2^8 times its increments).
``FixedDtypeBuffers`` keeps the named buffers' dtype under such casts: device moves still apply.
"""

from torch import nn


class FixedDtypeBuffers(nn.Module):
    """An ``nn.Module`` whose buffers named in ``fixed_dtype_buffers`` keep their dtype (and
    value) when the module is cast: after ``_apply(fn)`` each such buffer is its value before
    the cast, moved to the device ``fn`` chose. Other buffers and parameters cast as usual."""

    fixed_dtype_buffers = ()

    def _apply(self, fn, recurse=True):
        kept = {name: self._buffers.get(name) for name in self.fixed_dtype_buffers}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers.get(name)
            if before is not None and after is not None and after.dtype != before.dtype:
                self._buffers[name] = before.to(device=after.device)
        return self
