"""Robust MRI intensity normalisation: percentiles within the foreground, stored in the checkpoint."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toolkit.normalization import Normalization


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of a set of intensities."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def foreground_mask(volume: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Head and brain, not the air around them: voxels above ``fraction`` of Otsu's threshold."""
    return volume > fraction * otsu_threshold(volume)


def robust_normalization(
    volumes: Sequence[np.ndarray],
    low: float = 0.5,
    high: float = 99.5,
    foreground_fraction: float | None = 0.5,
) -> Normalization:
    """A single-channel :class:`Normalization` mapping the ``low``..``high`` percentiles to -1..1.

    Percentiles are taken over the voxels of all ``volumes`` (within each volume's foreground,
    voxels above ``foreground_fraction`` of Otsu's threshold, when it is set), so a training set shares one mapping; outliers beyond
    the percentiles stay outside [-1, 1] rather than being clipped, and ``denormalize`` undoes it
    exactly.

    Raises:
        ValueError: no volume, an empty foreground, or a constant intensity range.
    """
    if not volumes:
        raise ValueError("no volumes to compute normalisation statistics from")
    values = []
    for v in volumes:
        v = np.asarray(v, dtype=np.float64)
        values.append(v[foreground_mask(v, foreground_fraction)] if foreground_fraction is not None else v.ravel())
    allv = np.concatenate(values)
    if allv.size == 0:
        raise ValueError("the foreground is empty: lower foreground_fraction or pass None")
    lo, hi = np.percentile(allv, [low, high])
    if not hi > lo:
        raise ValueError(f"intensity range is empty (percentiles {low} and {high} are both {lo})")
    return Normalization(offset=[(lo + hi) / 2], scale=[(hi - lo) / 2])
