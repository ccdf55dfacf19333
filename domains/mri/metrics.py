"""Volume metrics within the foreground, and the interpolation baselines SR is compared against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure


def masked_psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """PSNR in dB over the voxels of ``mask`` (the head, not the air around it)."""
    mse = float(np.mean((pred[mask].astype(np.float64) - target[mask].astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def masked_ssim(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """3D SSIM (Gaussian window 7, sigma 1.5) averaged over the voxels of ``mask``."""
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None, None]
    kernel = min(7, *pred.shape)
    kernel -= 1 - kernel % 2
    _, full = structural_similarity_index_measure(
        p, t, data_range=data_range, kernel_size=kernel, sigma=1.5, return_full_image=True, reduction="none"
    )
    full = full[0, 0].numpy()
    # torchmetrics crops the border the window cannot cover: crop the mask the same way
    crop = tuple(slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(mask.shape, full.shape))
    return float(full[mask[crop]].mean())


def trilinear(lr: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Trilinear interpolation onto the grid ``factors`` times finer (block-centred, edges clamped)."""
    t = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))[None, None]
    size = [n * f for n, f in zip(lr.shape, factors)]
    return F.interpolate(t, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()


def cubic_spline(lr: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Cubic B-spline interpolation (scipy, order 3) onto the grid ``factors`` times finer.

    Sample ``j`` of the fine grid sits at ``(j + 0.5) / f - 0.5`` of the coarse one (the same
    block-centred geometry as the operators and the affines); the boundary mirrors.
    """
    from scipy import ndimage

    out = np.asarray(lr, dtype=np.float64)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        n = out.shape[axis]
        coords = (np.arange(n * f) + 0.5) / f - 0.5
        out = np.moveaxis(out, axis, 0)
        grid = np.meshgrid(coords, *[np.arange(m) for m in out.shape[1:]], indexing="ij")
        out = ndimage.map_coordinates(out, grid, order=3, mode="mirror")
        out = np.moveaxis(out, 0, axis)
    return out.astype(np.float32)
