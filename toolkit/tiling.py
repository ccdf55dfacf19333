"""Tiled denoising: run a denoiser over overlapping tiles and blend them inside every sampling step.

The state is split into overlapping tiles, the network runs on batches of tiles, and the outputs
are blended with Gaussian weights (as MONAI's sliding-window inference does) before the sampler
sees them. Noise is drawn once for the whole state, so overlapping tiles share it: no seams and
no drift between tiles, in 2D and 3D. Peak memory follows the tile size, not the input size.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Tiling:
    """Tile size and overlap (per axis or one for all) and tiles per network call."""

    size: int | tuple[int, ...] = 128
    overlap: int | tuple[int, ...] = 32
    batch: int = 4

    def wrap(self, denoiser: nn.Module) -> TiledDenoiser:
        return TiledDenoiser(denoiser, self.size, self.overlap, self.batch)


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``[0, n)`` with tiles of ``tile`` overlapping by at least ``overlap``."""
    if tile >= n:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, n - tile + 1, stride))
    if starts[-1] != n - tile:
        starts.append(n - tile)
    return starts


def gaussian_weight(size: Sequence[int], sigma_scale: float = 0.125, device: torch.device | None = None) -> torch.Tensor:
    """Separable Gaussian importance map over a tile, peak 1 at the centre.

    Each 1D factor is floored at 1e-3 (not the product), so a tile's edge never outweighs
    another tile's interior, even in a corner.
    """
    w = torch.ones((), device=device)
    for n in size:
        c = (n - 1) / 2
        s = max(n * sigma_scale, 1e-3)
        g = torch.exp(-0.5 * ((torch.arange(n, device=device, dtype=torch.float32) - c) / s) ** 2).clamp(min=1e-3)
        w = w[..., None] * g
    return w


class TiledDenoiser(nn.Module):
    """Wraps a denoiser ``(z, t, cond, drop) -> out`` so that it runs tile by tile.

    Args:
        denoiser: the wrapped network (its attributes, e.g. ``state_channels``, are forwarded).
        tile_size: tile size per spatial axis (or one for all); inputs no larger than a tile
            run in one pass.
        overlap: overlap between neighbouring tiles per axis.
        tile_batch: tiles per network call.
    """

    def __init__(self, denoiser: nn.Module, tile_size: int | Sequence[int], overlap: int | Sequence[int] = 16, tile_batch: int = 4) -> None:
        super().__init__()
        self.denoiser = denoiser
        nd = denoiser.spatial_dims
        self.tile_size = (tile_size,) * nd if isinstance(tile_size, int) else tuple(tile_size)
        self.overlap = (overlap,) * nd if isinstance(overlap, int) else tuple(overlap)
        self.tile_batch = max(1, int(tile_batch))
        multiple = getattr(denoiser, "multiple", 1)
        if any(t % multiple for t in self.tile_size):
            raise ValueError(f"tile size {self.tile_size} must be a multiple of {multiple}")
        if any(o >= t for o, t in zip(self.overlap, self.tile_size)):
            raise ValueError("overlap must be smaller than the tile size")
        self._layouts: dict = {}

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["denoiser"], name)

    def _layout(self, spatial: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> tuple[list[tuple[slice, ...]], torch.Tensor, torch.Tensor]:
        """Tile slices, the tile weight map and the summed weights for a state size (cached: same every step)."""
        key = (spatial, device, dtype)
        if key not in self._layouts:
            tile = tuple(min(ts, n) for ts, n in zip(self.tile_size, spatial))
            starts = [tile_starts(n, ts, ov) for n, ts, ov in zip(spatial, tile, self.overlap)]
            slices = [tuple(slice(s, s + n) for s, n in zip(box, tile)) for box in itertools.product(*starts)]
            weight = gaussian_weight(tile, device=device).to(dtype)
            norm = torch.zeros(spatial, device=device, dtype=dtype)
            for sl in slices:
                norm[sl] += weight
            self._layouts = {key: (slices, weight, norm)}  # keep only the latest size
        return self._layouts[key]

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, drop: torch.Tensor | None = None) -> torch.Tensor:
        spatial = tuple(z.shape[2:])
        if all(ts >= n for ts, n in zip(self.tile_size, spatial)):
            return self.denoiser(z, t, cond, drop)
        slices, weight, norm = self._layout(spatial, z.device, z.dtype)
        out = torch.zeros((z.shape[0], self.denoiser.state_channels, *spatial), device=z.device, dtype=z.dtype)
        b = z.shape[0]
        per_call = max(1, self.tile_batch // b)
        for k in range(0, len(slices), per_call):
            sls = slices[k : k + per_call]
            zt = torch.cat([z[(slice(None), slice(None)) + sl] for sl in sls])
            ct = None if cond is None else torch.cat([cond[(slice(None), slice(None)) + sl] for sl in sls])
            tt = t.repeat(len(sls))
            dt = None if drop is None else drop.repeat(len(sls))
            res = self.denoiser(zt, tt, ct, dt)
            for j, sl in enumerate(sls):
                out[(slice(None), slice(None)) + sl] += res[j * b : (j + 1) * b] * weight
        return out / norm
