"""Per-band robust normalisation of multispectral rasters: percentiles over valid pixels, stored in the checkpoint."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from domains.satellite.io import RasterReader, block_windows
from toolkit.normalization import Normalization

__all__ = ["band_percentiles", "raster_normalization", "robust_band_normalization"]


def band_percentiles(values: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``low`` and ``high`` percentiles of ``values`` ``(C, N)``; each ``(C,)``."""
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [low, high], axis=1)
    return lo, hi


def robust_band_normalization(
    samples: Iterable[tuple[np.ndarray, np.ndarray | None]],
    low: float = 1.0,
    high: float = 99.0,
    max_pixels: int = 2_000_000,
    seed: int = 0,
) -> Normalization:
    """A per-band :class:`Normalization` mapping each band's ``low``..``high`` percentiles to -1..1.

    Percentiles are taken over the valid pixels of all samples together (nodata, and pixels
    with NaN or Inf in any band, excluded), so a training set shares one mapping. Values beyond the percentiles stay outside [-1, 1] rather
    than being clipped (reflectance of clouds and specular targets is kept), and
    ``denormalize`` undoes the mapping exactly.

    Args:
        samples: ``(data, valid)`` pairs: ``data`` ``(C, h, w)`` in data units, ``valid``
            ``(h, w)`` bool or ``None`` (all valid).
        low, high: percentiles (in [0, 100]) mapped to -1 and 1.
        max_pixels: at most this many valid pixels are kept (a seeded uniform subsample).
        seed: seed of the subsample.

    Raises:
        ValueError: no valid pixel, bands that differ in number, or a band whose percentiles
            coincide (a constant band cannot be normalised).
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    chunks = []
    for data, valid in samples:
        data = np.asarray(data)
        flat = data.reshape(data.shape[0], -1)
        if valid is not None:
            flat = flat[:, np.asarray(valid, dtype=bool).reshape(-1)]
        flat = flat[:, np.isfinite(flat).all(axis=0)]
        if chunks and flat.shape[0] != chunks[0].shape[0]:
            raise ValueError(f"samples have {chunks[0].shape[0]} and {flat.shape[0]} bands")
        if flat.shape[1]:
            chunks.append(flat.astype(np.float32, copy=False))
    if not chunks:
        raise ValueError("no valid pixels (finite and not nodata) to compute normalisation statistics from")
    values = np.concatenate(chunks, axis=1)
    if values.shape[1] > max_pixels:
        keep = np.random.default_rng(seed).choice(values.shape[1], size=max_pixels, replace=False)
        values = values[:, np.sort(keep)]
    lo, hi = band_percentiles(values, low, high)
    flat_bands = [b + 1 for b in range(len(lo)) if not hi[b] > lo[b]]
    if flat_bands:
        raise ValueError(f"band(s) {flat_bands} (1-based, of those given) are constant between percentiles {low} and {high}")
    return Normalization(offset=((lo + hi) / 2).tolist(), scale=((hi - lo) / 2).tolist())


def raster_normalization(
    paths: str | Path | Sequence[str | Path],
    bands: Sequence[int] | None = None,
    low: float = 1.0,
    high: float = 99.0,
    max_pixels: int = 2_000_000,
    seed: int = 0,
    chunk: int = 1024,
) -> Normalization:
    """Per-band robust normalisation over whole rasters, read window by window (never whole).

    Each window contributes a seeded random subset of its valid pixels, in proportion to its
    area, so at most about ``max_pixels`` values are held whatever the raster size.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    readers = [RasterReader(p, bands) for p in items]
    try:
        total = sum(r.meta.width * r.meta.height for r in readers)
        keep = min(1.0, max_pixels / max(total, 1))
        rng = np.random.default_rng(seed)

        def samples() -> Iterable[tuple[np.ndarray, np.ndarray]]:
            for r in readers:
                for sl in block_windows(r.meta.shape, chunk):
                    data, valid = r.read(sl)
                    if keep < 1.0:
                        valid = valid & (rng.random(valid.shape) < keep)
                    yield data, valid

        return robust_band_normalization(samples(), low, high, max_pixels=max_pixels, seed=seed)
    finally:
        for r in readers:
            r.close()
