"""Multispectral quality metrics over valid pixels: per-band PSNR and SSIM, SAM (degrees), ERGAS, consistency.

All functions take ``(B, C, H, W)`` tensors in data units and an optional ``(B, H, W)`` or
``(H, W)`` validity mask (nodata excluded). SSIM and SAM come from torchmetrics (their
per-pixel maps, averaged over valid pixels); PSNR and ERGAS are computed here because
torchmetrics cannot mask them, and equal torchmetrics' values when every pixel is valid.

Data range. PSNR and SSIM need the span of the signal. A uint16 raster's dtype range (65535)
says nothing about a band whose reflectance spans a few thousand counts, and it makes SSIM's
stabilising constants ``(0.01 L)^2, (0.03 L)^2`` swamp the local variances (every SSIM near 1).
:func:`band_data_range` therefore takes each band's span from the model's normalisation: twice
its scale, i.e. the 1st to 99th percentile span of that band over the training area. PSNR is
then the PSNR of the band mapped to unit range by that (fixed, stored) mapping, comparable
across files, methods and bands. Differences between methods (diffsr vs bicubic) do not depend
on the range for PSNR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import spectral_angle_mapper, structural_similarity_index_measure

from toolkit.normalization import Normalization
from toolkit.operators import Operator

__all__ = ["band_data_range", "band_psnr", "band_ssim", "consistency_band_psnr", "ergas", "sam_degrees"]


def band_data_range(normalization: Normalization, channels: int) -> list[float]:
    """Per-band data range for PSNR/SSIM: ``2 * scale`` of the normalisation (the robust percentile span)."""
    scale = normalization.scale if len(normalization.scale) == channels else normalization.scale * channels
    return [2.0 * s for s in scale]


def _mask(valid: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` float64 mask (ones when ``valid`` is None)."""
    if valid is None:
        return torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=torch.float64, device=x.device)
    v = valid.to(device=x.device)
    if v.ndim == 2:
        v = v[None].expand(x.shape[0], -1, -1)
    return v[:, None].to(torch.float64)


def _ranges(data_range: float | Sequence[float], x: torch.Tensor) -> torch.Tensor:
    r = torch.as_tensor(data_range, dtype=torch.float64, device=x.device).reshape(-1)
    if r.numel() not in (1, x.shape[1]):
        raise ValueError(f"{r.numel()} data ranges given for {x.shape[1]} bands")
    return r.expand(x.shape[1])


def _masked_mean(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of ``v`` ``(B, C, H, W)`` over pixels where ``m`` ``(B, 1, H, W)`` is one: ``(B, C)``."""
    n = m.sum(dim=(2, 3)).clamp(min=1)
    return torch.where(m > 0, v, torch.zeros((), dtype=v.dtype, device=v.device)).sum(dim=(2, 3)) / n


def band_psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float | Sequence[float], valid: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB per sample and band, ``(B, C)``: ``10 log10(L_c^2 / MSE_c)`` over valid pixels."""
    p, t = pred.double(), target.double()
    mse = _masked_mean((p - t) ** 2, _mask(valid, p))
    r = _ranges(data_range, p)
    return 10 * torch.log10(r[None] ** 2 / mse.clamp(min=1e-20))


def band_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float | Sequence[float], valid: torch.Tensor | None = None) -> torch.Tensor:
    """SSIM (Gaussian window 11, sigma 1.5) per sample and band, ``(B, C)``, averaged over valid pixels.

    Each band is scaled by its data range first, so one call handles per-band ranges. With a
    mask, the SSIM map is averaged over pixels whose whole window is valid (the mask eroded by
    the window radius), so values under nodata never leak in; if no such pixel exists, over
    the valid pixels.
    """
    p, t = pred.double(), target.double()
    r = _ranges(data_range, p).reshape(1, -1, 1, 1)
    b, c, h, w = p.shape
    kernel = min(11, h, w)
    kernel -= 1 - kernel % 2
    m = _mask(valid, p)
    p = torch.where(m > 0, p, t)  # keep NaN/garbage under nodata out of the filter
    _, full = structural_similarity_index_measure(
        (p / r).reshape(b * c, 1, h, w), (t / r).reshape(b * c, 1, h, w),
        data_range=1.0, reduction="none", kernel_size=kernel, return_full_image=True,
    )
    if valid is not None:
        inner = 1.0 - F.max_pool2d(1.0 - m, kernel, stride=1, padding=kernel // 2)
        m = torch.where(inner.sum(dim=(1, 2, 3), keepdim=True) > 0, inner, m)
    return _masked_mean(full.reshape(b, c, h, w), m)


def sam_degrees(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean spectral angle in degrees per sample, ``(B,)``, over valid pixels (needs 2 bands or more).

    A pixel whose spectrum is all zero in one image only counts as 90 degrees; in both, as 0.
    """
    if pred.shape[1] < 2:
        raise ValueError("the spectral angle needs at least 2 bands")
    p, t = pred.double(), target.double()
    angle = spectral_angle_mapper(p, t, reduction="none")  # (B, H, W) radians; NaN where a spectrum is all zero
    zero_p, zero_t = p.abs().amax(1) == 0, t.abs().amax(1) == 0
    angle = torch.where(zero_p & zero_t, 0.0, torch.where(zero_p | zero_t, math.pi / 2, angle))
    return _masked_mean(torch.rad2deg(angle)[:, None], _mask(valid, pred))[:, 0]


def ergas(pred: torch.Tensor, target: torch.Tensor, scale: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """ERGAS (Wald, 2000) per sample, ``(B,)``: ``100 (h / l) sqrt(mean_c (RMSE_c / mu_c)^2)`` with ``h / l = 1 / scale``.

    ``scale`` is the resolution ratio (low-resolution pixel size over high-resolution pixel
    size, e.g. 2 for x2), torchmetrics' ``ratio``. Lower is better. Band means ``mu_c`` are
    those of the target over valid pixels, in data units.
    """
    p, t = pred.double(), target.double()
    m = _mask(valid, p)
    rmse = _masked_mean((p - t) ** 2, m).sqrt()
    mu = _masked_mean(t, m)
    return 100.0 / float(scale) * ((rmse / mu) ** 2).mean(dim=1).sqrt()


def consistency_band_psnr(
    operator: Operator,
    sr: torch.Tensor,
    y: torch.Tensor,
    data_range: float | Sequence[float],
    valid_lr: torch.Tensor | None = None,
) -> torch.Tensor:
    """PSNR of ``A(sr)`` against the low-resolution input ``y`` per sample and band, ``(B, C)``, capped at 100 dB."""
    return band_psnr(operator.A(sr.double()), y.double(), data_range, valid_lr).clamp(max=100.0)
