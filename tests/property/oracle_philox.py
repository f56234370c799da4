"""Philox4x32-10 and the noise of element i, written from the contract (docs/design.md, "The noise")
and Triton 3.x's ``tl.randint4x`` / ``uint_to_uniform_float`` / ``pair_uniform_to_normal``.

* Block: counter ``(lo32(c), hi32(c), 0, 0)`` for the int64 block counter ``c``, key
  ``(lo32(seed), hi32(seed))`` of the seed's 64 bits (two's complement), ten rounds of
  ``c0' = hi(B*c2) ^ c1 ^ k0, c1' = lo(B*c2), c2' = hi(A*c0) ^ c3 ^ k1, c3' = lo(A*c0)`` with
  A = 0xD2511F53, B = 0xCD9E8D57, then ``k0 += 0x9E3779B9, k1 += 0xBB67AE85`` (mod 2^32).
  uint32 arithmetic is done on numpy uint64 arrays (a 32x32-bit product fits in 64 bits).
* Element ``i`` (flat row-major index, int64) uses the block of counter ``i // 4`` and its
  output ``j = i % 4``.
* ``uniform(w)``: the word read as int32, ``~w`` where negative (so 0 .. 2^31 - 1), converted to
  float32 (round to nearest even), times float32(4.6566127342e-10): one float32 product. [0, 1).
* uniform noise: ``eps = uniform(w_j) - 0.5`` in float32.
* gaussian noise: the pair (a, b) = (0, 1) for j < 2 else (2, 3);
  ``u1 = max(uniform(w_a), float32(1e-7))``, ``u2 = uniform(w_b)``,
  ``theta = float32(6.283185307179586) * u2`` (float32 product),
  ``r = sqrt(-2 * float32(log(float64(u1))))`` with ``-2 * ...`` a float32 product (exact) and the
  square root correctly rounded in float32, and ``eps = r * float32(cos(float64(theta)))`` for even
  j, ``r * float32(sin(float64(theta)))`` for odd j (float32 products). log, cos and sin are numpy's
  float64 functions rounded once to float32: a float64 result within an ulp of the true value
  rounds to the correctly rounded float32 unless the true value lies within 2^-29 relative of a
  float32 rounding boundary, which none of the tested values does (the tests compare bit for bit).
"""

import numpy as np

M32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
ROUND_A, ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
UNIFORM_SCALE = np.float32(4.6566127342e-10)
TWO_PI = np.float32(6.283185307179586)
U1_MIN = np.float32(1.0e-7)


def block(counter_words, key_words, rounds=10):
    """Philox4x32 of uint32 counter words (c0, c1, c2, c3: arrays or ints) and key (k0, k1): 4 uint64 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & M32 for c in counter_words)
    k0, k1 = int(key_words[0]) & 0xFFFFFFFF, int(key_words[1]) & 0xFFFFFFFF
    for _ in range(rounds):
        prod_a = ROUND_A * c0
        prod_b = ROUND_B * c2
        c0, c1, c2, c3 = (
            (prod_b >> SHIFT32) ^ c1 ^ np.uint64(k0),
            prod_b & M32,
            (prod_a >> SHIFT32) ^ c3 ^ np.uint64(k1),
            prod_a & M32,
        )
        k0, k1 = (k0 + KEY_A) & 0xFFFFFFFF, (k1 + KEY_B) & 0xFFFFFFFF
    return c0, c1, c2, c3


def seed_key(seed):
    """(lo32, hi32) of the seed's 64 bits: -1 and 2**64 - 1 are the same key."""
    seed = int(seed) & (2**64 - 1)
    return seed & 0xFFFFFFFF, seed >> 32


def words(seed, counters):
    """The four uint32 words (uint64 arrays) of each int64 block counter in ``counters``."""
    counters = np.asarray(counters, dtype=np.int64).astype(np.uint64)  # two's complement bits
    zero = np.zeros_like(counters)
    return block((counters & M32, counters >> SHIFT32, zero, zero), seed_key(seed))


def uniform(word):
    """Triton's uint_to_uniform_float of uint32 words: float32 in [0, 1)."""
    signed = np.asarray(word, dtype=np.uint64).astype(np.uint32).view(np.int32)
    magnitude = np.where(signed < 0, ~signed, signed)
    return magnitude.astype(np.float32) * UNIFORM_SCALE


def _gaussian(u1, u2, use_sin):
    u1 = np.maximum(u1, U1_MIN)
    theta = TWO_PI * u2
    log_u1 = np.log(u1.astype(np.float64)).astype(np.float32)
    radius = np.sqrt(np.float32(-2.0) * log_u1)  # float32 sqrt: IEEE, correctly rounded
    theta64 = theta.astype(np.float64)
    trig = np.where(use_sin, np.sin(theta64), np.cos(theta64)).astype(np.float32)
    return radius * trig


def element_noise(seed, indices, kind):
    """float32 eps of each flat element index (int64 array): kind "uniform" or "gaussian"."""
    indices = np.asarray(indices, dtype=np.int64)
    w = np.stack(words(seed, indices >> 2), axis=-1)  # [..., 4]
    j = indices & 3
    if kind == "uniform":
        u = uniform(np.take_along_axis(w, j[..., None], axis=-1)[..., 0])
        return u - np.float32(0.5)
    if kind == "gaussian":
        a = j & 2
        u1 = uniform(np.take_along_axis(w, a[..., None], axis=-1)[..., 0])
        u2 = uniform(np.take_along_axis(w, (a + 1)[..., None], axis=-1)[..., 0])
        return _gaussian(u1, u2, (j & 1) == 1)
    raise ValueError(f"kind must be 'uniform' or 'gaussian', got {kind!r}")


def noise(seed, shape, kind):
    """eps of every element of a tensor of ``shape`` (float32 numpy array of that shape)."""
    count = int(np.prod(shape, dtype=np.int64))
    return element_noise(seed, np.arange(count, dtype=np.int64), kind).reshape(shape)
