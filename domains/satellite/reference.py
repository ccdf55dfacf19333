"""Reference-guided raster SR: a sharper co-registered raster (a panchromatic band) brought onto the output grid.

A reference-guided checkpoint (``reference: {channels, normalization}`` in its description) sees,
besides the low-resolution input, a reference on the *output* grid (:mod:`toolkit.lightning`).
This module reads such a reference from a file and puts it exactly on a target grid:

* **checks** (one line naming the file, :class:`domains.base.InputError`): the same CRS as the
  input; no rotation or shear different from the grid's; a pixel size equal to the grid's (or, with
  ``operator``, the grid's divided by the operator's factors: see below) to 1e-6 relative; and an
  extent that holds every output pixel centre (to 1e-6 px);
* **alignment**: the reference's own grid may sit a fraction of a pixel off the target grid. USGS
  Landsat products place the 15 m panchromatic grid half a pan pixel up and left of the 30 m grid
  (pan origin ``(x0 - 7.5, y0 + 7.5)``), so pan pixel centres fall on the *corners* of the exact
  2x grid of the multispectral footprint. The offset is measured from the two geotransforms
  (:func:`grid_offset`) and resampled away with a separable cubic convolution (Keys, a = -0.5) at
  that fractional offset (for the half pixel: taps ``-1/16, 9/16, 9/16, -1/16``); a whole-pixel
  offset is a plain crop (no interpolation). Output pixel centres beyond the last reference centre
  (at most half a pixel, the USGS case on the right or bottom edge) take edge-replicated taps.
  A reference larger than the input (the whole pan scene for a crop of the MS) is cropped.
* **Wald protocol** (:func:`load_reference` with ``operator``): a reference whose pixel is the
  target's divided by the operator's factors (the 15 m pan for a 30 m target) is aligned onto the
  exact finer grid and degraded by the operator (the model's sensor MTF and decimation), so it
  sits on the target grid the way the 30 m multispectral sits on the 60 m one.

Classical pansharpening (the baselines of ``diffsr evaluate`` with a reference): :func:`brovey`
(rio-pansharpen's weighted Brovey, generalised to any bands) and :func:`gram_schmidt` (Laben &
Brower 2000, in its component-substitution form). Both take the multispectral bands upsampled to
the pan grid and the pan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from domains.base import InputError
from domains.satellite.io import RasterFileError, RasterMeta, RasterReader
from toolkit.operators import Operator

__all__ = [
    "brovey",
    "brovey_weights",
    "cubic_shift_resample",
    "gram_schmidt",
    "grid_offset",
    "load_reference",
]

#: relative tolerance on pixel sizes and rotation terms
PIXEL_RTOL = 1e-6
#: tolerance (reference pixels) on the position of output centres and on whole-pixel offsets
OFFSET_TOL = 1e-6


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def grid_offset(ref: RasterMeta, grid: RasterMeta, what: str = "reference") -> tuple[float, float]:
    """Where the target ``grid``'s first pixel centre lies in ``ref``'s pixel-centre indices: ``(row, col)``.

    Output pixel ``(i, j)`` is then reference position ``(row + i, col + j)`` (integers are pixel
    centres): ``(0.5, 0.5)`` for the USGS pan beside the exact 2x grid of the 30 m bands.

    Raises:
        InputError: another CRS, another orientation or pixel size, or an extent that does not
            hold every output pixel centre (one line naming ``ref.path``).
    """
    name = f"{ref.path}: the {what}"
    if ref.georeferenced != grid.georeferenced:
        has, lacks = ("is", "is not") if ref.georeferenced else ("is not", "is")
        raise InputError(f"{name} {has} georeferenced but the input {lacks}: both need a CRS and geotransform, or neither")
    if not ref.georeferenced:
        if ref.shape != grid.shape:
            raise InputError(
                f"{name} has no georeferencing and is {ref.height}x{ref.width}; without a CRS it must be exactly on the "
                f"output grid ({grid.height}x{grid.width})"
            )
        return 0.0, 0.0
    if ref.crs != grid.crs:
        raise InputError(f"{name} is in {ref.crs}, the input in {grid.crs}: reproject it onto the output grid first")
    rt, gt = ref.transform, grid.transform
    size = max(abs(gt.a), abs(gt.e), abs(gt.b), abs(gt.d))
    if any(abs(r - g) > PIXEL_RTOL * size for r, g in ((rt.b, gt.b), (rt.d, gt.d))):
        raise InputError(f"{name} is rotated differently from the output grid (terms b, d {rt.b}, {rt.d} vs {gt.b}, {gt.d})")
    if any(abs(r - g) > PIXEL_RTOL * size for r, g in ((rt.a, gt.a), (rt.e, gt.e))):
        raise InputError(
            f"{name} has {_fmt(abs(rt.a))} x {_fmt(abs(rt.e))} pixels; the output grid needs "
            f"{_fmt(abs(gt.a))} x {_fmt(abs(gt.e))} (the input's pixel divided by the model's scale)"
        )
    # the output's first pixel centre in the reference's pixel-corner coordinates, then centre indices
    col, row = ~rt @ (gt @ (0.5, 0.5))
    row, col = row - 0.5, col - 0.5
    last_row, last_col = row + grid.height - 1, col + grid.width - 1
    lo, hi_r, hi_c = -0.5 - OFFSET_TOL, ref.height - 0.5 + OFFSET_TOL, ref.width - 0.5 + OFFSET_TOL
    if row < lo or col < lo or last_row > hi_r or last_col > hi_c:
        b = grid.bounds
        rb = ref.bounds
        raise InputError(
            f"{name} covers ({', '.join(_fmt(v) for v in rb)}), which does not hold the output grid's pixel centres "
            f"within ({', '.join(_fmt(v) for v in b)}) (left, bottom, right, top): give a reference over the input's extent"
        )
    return float(row), float(col)


def _keys(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``t``."""
    t = np.abs(t)
    return np.where(
        t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1, np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0)
    )


def _axis_taps(start: float, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(count, k)`` (edge-clamped into ``[0, size)``) and weights ``(count, k)`` sampling positions ``start + i``."""
    pos = start + np.arange(count, dtype=np.float64)
    base = np.floor(pos + OFFSET_TOL)
    frac = pos - base
    if np.all(np.abs(frac) < OFFSET_TOL):  # a whole-pixel offset: a crop
        return np.clip(base, 0, size - 1).astype(np.int64)[:, None], np.ones((count, 1))
    offsets = np.arange(-1, 3)
    idx = np.clip(base[:, None] + offsets[None], 0, size - 1).astype(np.int64)
    w = _keys(frac[:, None] - offsets[None])
    return idx, w / w.sum(axis=1, keepdims=True)


def cubic_shift_resample(data: np.ndarray, start: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """``data`` ``(C, h, w)`` sampled at positions ``(start[0] + i, start[1] + j)`` for an output of ``shape``.

    Separable Keys cubic convolution (a = -0.5; exact for polynomials up to degree 2); taps beyond
    the array repeat its edge; whole-pixel starts are a plain crop. Returns ``(C, *shape)`` float64.
    """
    ri, rw = _axis_taps(start[0], shape[0], data.shape[1])
    ci, cw = _axis_taps(start[1], shape[1], data.shape[2])
    x = data.astype(np.float64)
    rows = np.zeros((x.shape[0], shape[0], x.shape[2]))
    for k in range(ri.shape[1]):
        rows += rw[None, :, k, None] * x[:, ri[:, k], :]
    out = np.zeros((x.shape[0], shape[0], shape[1]))
    for k in range(ci.shape[1]):
        out += cw[None, None, :, k] * rows[:, :, ci[:, k]]
    return out


def load_reference(
    path: str | Path,
    grid: RasterMeta,
    bands: Sequence[int] | None = None,
    operator: Operator | None = None,
    what: str = "reference",
    channels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference ``path`` on the target ``grid``: ``(R, H, W)`` float32 data units and validity ``(H, W)`` bool.

    With ``operator``, a reference whose pixel is the grid's divided by the operator's factors is
    aligned onto the exact finer grid and degraded by ``operator`` (Wald's protocol: the 15 m pan
    for a 30 m target); a reference on the grid's own pixel size is aligned directly in either case.
    Nodata pixels of the reference are filled with the band's mean before resampling; an output
    pixel is invalid when an invalid reference pixel reaches it (through the cubic taps and the operator).
    ``channels``: the band count the model takes (refused otherwise).

    Raises:
        InputError: a reference on the wrong grid (see :func:`grid_offset`), unreadable, or without data.
    """
    try:
        reader = RasterReader(path, bands)
    except RasterFileError as exc:
        raise InputError(str(exc)) from None
    with reader:
        meta = reader.meta
        if channels is not None and meta.count != channels:
            raise InputError(f"{path}: the {what} has {meta.count} band(s); the checkpoint was trained with {channels}")
        target, finer, margins = grid, None, (0, 0, 0, 0)
        if operator is not None and meta.georeferenced and grid.georeferenced:
            fr, fc = operator.factors
            ga, ge = abs(grid.transform.a), abs(grid.transform.e)
            if abs(abs(meta.transform.a) * fc - ga) <= PIXEL_RTOL * ga and abs(abs(meta.transform.e) * fr - ge) <= PIXEL_RTOL * ge:
                finer = (fr, fc)
                target = grid.rescaled(finer)
        row, col = grid_offset(meta, target, what)
        if finer is not None:  # degrade with context: the operator's reach around the grid, where the reference has it
            assert operator is not None
            fr, fc = finer
            try:
                halo = operator.halo or 0  # None: a global operator, degraded over the grid alone
            except NotImplementedError:
                halo = 0
            m_r, m_c = -(-halo // fr) + 1, -(-halo // fc) + 1
            top = min(m_r, math.floor((row + 0.5 + OFFSET_TOL) / fr))
            left = min(m_c, math.floor((col + 0.5 + OFFSET_TOL) / fc))
            bottom = min(m_r, math.floor((meta.height - 0.5 - (row + target.height - 1) + OFFSET_TOL) / fr))
            right = min(m_c, math.floor((meta.width - 0.5 - (col + target.width - 1) + OFFSET_TOL) / fc))
            margins = (top, bottom, left, right)
            from affine import Affine

            wide = grid.resized(grid.height + top + bottom, grid.width + left + right, grid.transform @ Affine.translation(-left, -top))
            target = wide.rescaled(finer)
            row, col = row - top * fr, col - left * fc
        try:
            reader.check_has_data()
        except RasterFileError as exc:
            raise InputError(str(exc)) from None
        # read only the rows and columns the taps reach
        r0, c0 = max(0, math.floor(row) - 1), max(0, math.floor(col) - 1)
        r1 = min(meta.height, math.floor(row + target.height - 1) + 3)
        c1 = min(meta.width, math.floor(col + target.width - 1) + 3)
        data, valid = reader.read((slice(r0, r1), slice(c0, c1)))
    data = data.astype(np.float64)
    if not valid.all():
        means = np.array([band[valid].mean() for band in data])
        data = np.where(valid[None], data, means[:, None, None])
    start = (row - r0, col - c0)
    out = cubic_shift_resample(data, start, target.shape)
    bad = cubic_shift_resample((~valid).astype(np.float64)[None], start, target.shape)[0] != 0
    if finer is not None:
        assert operator is not None
        top, bottom, left, right = margins
        out = operator.A(torch.from_numpy(out)[None])[0].numpy()
        reach = operator.A(torch.from_numpy(bad.astype(np.float64))[None, None])[0, 0].numpy()
        bad = np.abs(reach) > 1e-12
        crop = (slice(top, top + grid.height), slice(left, left + grid.width))
        out, bad = out[(slice(None), *crop)], bad[crop]
        if tuple(out.shape[1:]) != tuple(grid.shape):
            raise InputError(f"{path}: the {what} degraded onto the output grid is {out.shape[1:]}, not {grid.shape}")
    return out.astype(np.float32), ~bad


# --- classical pansharpening -----------------------------------------------------------------------------
def brovey_weights(descriptions: Sequence[str | None], blue_weight: float = 0.2) -> list[float]:
    """Weights of the pseudo-pan of :func:`brovey`: rio-pansharpen's for bands named B2, B3, B4 (Landsat 8's
    blue, green, red: ``(R + G + w B) / (2 + w)`` with ``w = blue_weight``, the pan band barely covering
    blue), else equal weights over all bands."""
    names = [(d or "").upper() for d in descriptions]
    if all(n in names for n in ("B2", "B3", "B4")):
        w = [0.0] * len(names)
        w[names.index("B4")], w[names.index("B3")], w[names.index("B2")] = 1.0, 1.0, float(blue_weight)
        return w
    return [1.0] * len(names)


def _weights(weights: Sequence[float] | None, channels: int) -> torch.Tensor:
    w = torch.ones(channels, dtype=torch.float64) if weights is None else torch.as_tensor(list(weights), dtype=torch.float64)
    if w.numel() != channels or float(w.sum()) <= 0 or bool((w < 0).any()):
        raise ValueError(f"pseudo-pan weights {w.tolist()}: need {channels} non-negative values with a positive sum")
    return (w / w.sum()).reshape(1, -1, 1, 1)


def brovey(ms_up: torch.Tensor, pan: torch.Tensor, weights: Sequence[float] | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Weighted Brovey transform (rio-pansharpen): every band times ``pan / pseudo_pan``.

    ``pseudo_pan = sum_k w_k MS_k / sum_k w_k`` (rio-pansharpen: ``(R + G + w B) / (2 + w)``); the
    ratio multiplies every band, as its ``Brovey`` does (pixels where the pseudo-pan is below ``eps``
    keep the upsampled bands).

    Args:
        ms_up: ``(B, C, H, W)`` multispectral bands upsampled onto the pan grid, data units.
        pan: ``(B, 1, H, W)`` panchromatic band, data units.
        weights: ``C`` pseudo-pan weights (default equal; :func:`brovey_weights` for Landsat 8).

    Returns:
        ``(B, C, H, W)`` float64.
    """
    ms, p = ms_up.double(), pan.double()
    pseudo = (ms * _weights(weights, ms.shape[1])).sum(1, keepdim=True)
    ratio = torch.where(pseudo.abs() > eps, p / torch.where(pseudo.abs() > eps, pseudo, torch.ones_like(pseudo)), torch.ones_like(p))
    return ms * ratio


def gram_schmidt(ms_up: torch.Tensor, pan: torch.Tensor, weights: Sequence[float] | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Gram-Schmidt pansharpening (Laben & Brower 2000), component-substitution form (Aiazzi et al. 2007).

    The first Gram-Schmidt component is a simulated low-resolution pan ``I = sum_k w_k MS_k``
    (mode 1: the bands' mean); the pan, matched to ``I``'s mean and standard deviation, replaces it,
    and inverting the orthogonalisation adds to each band ``g_k (P - I)`` with
    ``g_k = cov(MS_k, I) / var(I)``. Statistics are per image over ``valid`` pixels.

    Args:
        ms_up: ``(B, C, H, W)`` multispectral bands upsampled onto the pan grid, data units.
        pan: ``(B, 1, H, W)`` panchromatic band.
        weights: ``C`` weights of the simulated pan (default equal: GS mode 1).
        valid: ``(B, H, W)`` or ``(H, W)`` bool pixels to take statistics over (default all).

    Returns:
        ``(B, C, H, W)`` float64.
    """
    ms, p = ms_up.double(), pan.double()
    b = ms.shape[0]
    m = torch.ones_like(p) if valid is None else valid.to(p.device).reshape(-1 if valid.ndim == 3 else 1, 1, *p.shape[2:]).expand_as(p).double()
    n = m.sum(dim=(2, 3), keepdim=True).clamp(min=1)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return (t * m).sum(dim=(2, 3), keepdim=True) / n

    intensity = (ms * _weights(weights, ms.shape[1])).sum(1, keepdim=True)
    i_mean, p_mean = mean(intensity), mean(p)
    i_c, p_c = intensity - i_mean, p - p_mean
    var_i = mean(i_c**2).clamp(min=1e-12)
    p_matched = p_c * (var_i / mean(p_c**2).clamp(min=1e-12)).sqrt() + i_mean
    gains = mean((ms - mean(ms)) * i_c) / var_i  # (B, C, 1, 1)
    assert gains.shape[:2] == (b, ms.shape[1])
    return ms + gains * (p_matched - intensity)
