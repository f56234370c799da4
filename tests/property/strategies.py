"""hypothesis strategies for the property tests: shapes near the kernels' boundaries, memory layouts,
edge seeds, and input recipes (a numpy seed plus a mix of value families) so that large tensors cost
one draw, not one per element."""

import numpy as np
import torch
from hypothesis import strategies as st

from na_kernels import cpu

# per-dim sizes: 0, tiny, around 4 (a Philox block), 16 (AVX-512 lanes), 64, 256 (C++ noise batch)
SMALL_DIMS = [0, 1, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 33, 64, 255, 257]
# one long dim around Triton's 1024-element tile and the C++ kernels' 32768-element thread cut-over
BIG_DIMS = [1023, 1024, 1025, 4097, 32767, 32768, 32769]
EDGE_SEEDS = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, -1, -(2**63), 2**64 - 1]
LAYOUTS = ["contiguous", "permuted", "channels_last", "expanded", "sliced", "offset"]


@st.composite
def shapes(draw, min_rank, max_rank, max_numel, big=0, first_dims=None):
    """A shape of rank min_rank..max_rank with at most max_numel elements (zero-size dims included);
    with ``big`` = n > 0, one example in n has one dim from BIG_DIMS. ``first_dims``: sizes for dim 0."""
    rank = draw(st.integers(min_rank, max_rank))
    dims, budget = [], max_numel
    for d in range(rank):
        pool = first_dims if (d == 0 and first_dims is not None) else SMALL_DIMS
        size = draw(st.sampled_from([s for s in pool if s <= max(budget, 1)] or [1]))
        dims.append(size)
        budget //= max(size, 1)
    if big and draw(st.integers(0, big - 1)) == 0:
        low = 0 if first_dims is None else 1  # never a long time axis
        if rank > low:
            at = draw(st.integers(low, rank - 1))
            dims = [min(s, 2) for s in dims]
            dims[at] = draw(st.sampled_from(BIG_DIMS))
    return tuple(dims)


def seeds():
    """Noise seeds: the edges of 32 and 64 bits (negative ones too) or any 64-bit value."""
    return st.one_of(st.sampled_from(EDGE_SEEDS), st.integers(-(2**63), 2**64 - 1))


def seed_argument(seed, as_tensor):
    """The seed as an int, or as the 1-element int64 tensor of the same 64 bits."""
    if not as_tensor:
        return seed
    signed = seed - 2**64 if seed >= 2**63 else seed
    return torch.tensor([signed], dtype=torch.int64)


@st.composite
def layouts(draw, rank):
    """(layout name, parameters) that ``make_tensor`` turns into strides for a logical shape."""
    name = draw(st.sampled_from(LAYOUTS))
    if name == "permuted":
        return name, draw(st.permutations(list(range(rank))))
    if name in ("expanded", "sliced"):
        return name, draw(st.integers(0, rank - 1))
    return name, None


def make_tensor(values, dtype, layout, device):
    """A tensor whose logical values are ``values`` (float32 numpy, rounded to dtype by torch) laid out
    as ``layout`` in memory. "expanded" needs ``values`` constant along the chosen dim (see values())."""
    name, arg = layout
    rank = values.ndim
    base = torch.from_numpy(np.array(values, dtype=np.float32, order="C", copy=True)).to(dtype)
    if name == "permuted" and rank > 1:
        perm = list(arg)
        inverse = [perm.index(i) for i in range(rank)]
        return base.permute(perm).contiguous().permute(inverse).to(device)
    if name == "channels_last" and rank >= 3:
        # dim 1 innermost in memory (NHWC for rank 4); for a sequence that is dim 2
        perm = [0] + list(range(2, rank)) + [1]
        inverse = [perm.index(i) for i in range(rank)]
        return base.permute(perm).contiguous().permute(inverse).to(device)
    if name == "expanded" and rank >= 1:
        d = arg
        one = base.narrow(d, 0, 1) if base.shape[d] > 0 else base
        return one.to(device).expand(base.shape)
    if name == "sliced" and rank >= 1:
        d = arg
        doubled = torch.repeat_interleave(base, 2, dim=d) if base.shape[d] > 0 else base
        return doubled.to(device)[(slice(None),) * d + (slice(None, None, 2),)]
    if name == "offset":
        flat = torch.cat([torch.zeros(3, dtype=dtype), base.reshape(-1)]).to(device)
        return flat[3:].view(base.shape)
    return base.to(device)


def expand_values(values, layout):
    """For an "expanded" layout: values made constant along the expanded dim (the tensor repeats index 0)."""
    name, d = layout
    if name != "expanded" or values.ndim == 0 or values.shape[d] == 0:
        return values
    first = np.take(values, [0], axis=d)
    return np.array(np.broadcast_to(first, values.shape), dtype=np.float32, order="C", copy=True)


SPECIALS = np.array(
    [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -1e-40, 2.0**-126, 6e-8, -6e-8, 3e38, -3e38, 65504.0, 1e30],
    dtype=np.float32,
)
FINITE_SPECIALS = SPECIALS[np.isfinite(SPECIALS) & (np.abs(SPECIALS) < 1e20)]


@st.composite
def recipes(draw, allow_non_finite=True):
    """How to fill a tensor: (numpy seed, fraction at ties, fraction on a dyadic grid, fraction of
    special values, whether the specials include NaN/inf/huge values)."""
    non_finite = allow_non_finite and draw(st.integers(0, 4)) == 0
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)),
        ties=draw(st.sampled_from([0.0, 0.3, 1.0])),
        grid=draw(st.sampled_from([0.0, 0.3, 1.0])),
        specials=draw(st.sampled_from([0.0, 0.05, 0.5])),
        non_finite=non_finite,
    )


def fill(shape, recipe, scale, ties, rng=None):
    """float32 values of ``shape``: normal values of size ``scale``, overwritten by the recipe's ties
    (float32 values ``ties`` and their neighbours), dyadic grid values and specials."""
    rng = rng or np.random.default_rng(recipe["seed"])
    n = int(np.prod(shape, dtype=np.int64))
    v = (rng.standard_normal(n) * 0.8 + 0.4).astype(np.float32) * np.float32(scale)
    if ties is not None and len(ties) and recipe["ties"]:
        pick = rng.random(n) < recipe["ties"]
        tie = np.asarray(ties, dtype=np.float32)[rng.integers(0, len(ties), n)]
        step = rng.integers(-1, 2, n)
        tie = np.where(
            step > 0,
            np.nextafter(tie, np.float32(np.inf)),
            np.where(step < 0, np.nextafter(tie, np.float32(-np.inf)), tie),
        )
        v = np.where(pick, tie, v).astype(np.float32)
    if recipe["grid"]:
        pick = rng.random(n) < recipe["grid"]
        v = np.where(pick, (np.round(v * 1024) / 1024).astype(np.float32), v)
    if recipe["specials"]:
        pool = SPECIALS if recipe["non_finite"] else FINITE_SPECIALS
        pick = rng.random(n) < recipe["specials"]
        v = np.where(pick, pool[rng.integers(0, len(pool), n)], v)
    return v.reshape(shape).astype(np.float32)


def simd_levels(backend):
    """The C++ SIMD levels this CPU can run (None for the other backends: one pass)."""
    if backend != "cpu":
        return [None]
    return list(cpu.SIMD_LEVELS[: cpu.SIMD_LEVELS.index(cpu.detected_simd_level()) + 1])
