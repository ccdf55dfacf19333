"""Positional noise: a standard normal field over an unbounded grid, the same wherever it is read from.

The streamed sampler draws its noise here so that every tile covering a voxel sees the same value,
whatever the tile size, overlap or order; the in-memory sampler can draw from the same field, so
the two paths give the same result for the same seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


class NoiseField:
    """Standard normal noise over an unbounded grid, the same wherever it is read from.

    Block ``b`` (``block`` samples per axis) of draw ``key`` comes from
    ``numpy.random.default_rng((seed, *key, *b))``.
    """

    def __init__(self, seed: int, channels: int, block: int = 32) -> None:
        self.seed, self.channels, self.block = int(seed), int(channels), int(block)

    def region(self, key: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """Noise of draw ``key`` over ``[lo, hi)``: ``(C, *(hi - lo))`` float32."""
        b = self.block
        out = np.empty((self.channels, *(h - a0_ for a0_, h in zip(lo, hi))), dtype=np.float32)
        ranges = [range(a0_ // b, (h - 1) // b + 1) for a0_, h in zip(lo, hi)]
        for idx in itertools.product(*ranges):
            rng = np.random.default_rng([self.seed, *[int(k) for k in key], *idx])
            block = rng.standard_normal((self.channels, *([b] * len(idx))), dtype=np.float32)
            src, dst = [slice(None)], [slice(None)]
            for i, a0_, h in zip(idx, lo, hi):
                a, e = max(i * b, a0_), min((i + 1) * b, h)
                src.append(slice(a - i * b, e - i * b))
                dst.append(slice(a - a0_, e - a0_))
            out[tuple(dst)] = block[tuple(src)]
        return out
