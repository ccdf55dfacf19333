"""Sensor model for multispectral rasters: a per-band Gaussian PSF set from the MTF at Nyquist, then decimation.

The modulation transfer function of a Gaussian point-spread function of standard deviation
``sigma`` (in high-resolution pixels) is its Fourier transform,

    MTF(f) = exp(-2 pi^2 sigma^2 f^2),      f in cycles per high-resolution pixel.

Sensors are specified by their MTF at the Nyquist frequency of the *low-resolution* grid, whose
pixels are ``s`` high-resolution pixels wide: ``f_N = 1 / (2 s)``. Solving
``MTF(f_N) = m`` for ``sigma``:

    m = exp(-2 pi^2 sigma^2 / (4 s^2)) = exp(-pi^2 sigma^2 / (2 s^2))
    sigma = (s / pi) * sqrt(-2 ln m).

For example ``m = 0.3`` (a typical value for Landsat 8 OLI and Sentinel-2 MSI bands) gives
``sigma = 0.988`` at ``s = 2`` and ``1.976`` at ``s = 4``. This is the MTF-matched filter of
Wald's protocol (Aiazzi et al., 2006): the low-resolution image is what the sensor would have
recorded at ``s`` times the pixel size. The blur and decimation are
:class:`toolkit.operators.GaussianDownsample` (block-centred low-resolution grid, half-sample
symmetric boundaries, exact transpose and SVD pseudo-inverse), applied band by band: the
operator is block-diagonal over the bands, so ``A^T`` and ``A^+`` are the per-band ones.

Checkpoints find it by its spec type ``sensor_mtf``, declared in the ``diffsr.operators`` entry
points (``pyproject.toml``), so loading one needs no import of this package first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from toolkit.operators import GaussianDownsample, Operator, OperatorSVD
from toolkit.utils import as_factors

__all__ = ["SensorMTFDownsample", "mtf_at_nyquist", "sigma_from_mtf"]


def sigma_from_mtf(mtf_nyquist: float, factor: int) -> float:
    """Gaussian PSF standard deviation (high-resolution pixels) whose MTF at ``1 / (2 factor)`` is ``mtf_nyquist``.

    ``sigma = (factor / pi) * sqrt(-2 ln mtf_nyquist)``; 0 for ``factor == 1`` (no blur on that axis).
    """
    if factor == 1:
        return 0.0
    if not 0.0 < mtf_nyquist < 1.0:
        raise ValueError(f"MTF at Nyquist must be in (0, 1), got {mtf_nyquist}")
    return factor / math.pi * math.sqrt(-2.0 * math.log(mtf_nyquist))


def mtf_at_nyquist(sigma: float, factor: int) -> float:
    """MTF of a Gaussian PSF ``sigma`` at the Nyquist frequency of a grid ``factor`` times coarser (the inverse)."""
    f = 1.0 / (2.0 * factor)
    return math.exp(-2.0 * math.pi**2 * sigma**2 * f**2)


class SensorMTFDownsample(Operator):
    """Per-band Gaussian PSF (from the MTF at Nyquist) then decimation by ``factors``; exact ``A^T``, ``A^+``.

    Acts on ``(B, C, *spatial)``. With one MTF value every band gets the same PSF; with one
    value per band, ``C`` must equal their number. Bands sharing an MTF are blurred together.

    Args:
        factors: integer decimation factor per spatial axis (or one for all).
        mtf: MTF at the low-resolution Nyquist frequency, in (0, 1): one for all bands or one
            per band (e.g. Sentinel-2's published per-band values).
        spatial_dims: number of spatial axes when ``factors`` is an int.
        truncate: PSF half-width in units of sigma.
    """

    def __init__(
        self,
        factors: int | Sequence[int] = 2,
        mtf: float | Sequence[float] = 0.3,
        spatial_dims: int = 2,
        truncate: float = 4.0,
    ) -> None:
        self.factors = as_factors(factors, spatial_dims if isinstance(factors, int) else len(factors))
        if min(self.factors) < 1 or max(self.factors) < 2:
            raise ValueError(f"factors must be >= 1 with at least one > 1, got {self.factors}")
        self.mtf = [float(mtf)] if isinstance(mtf, (int, float)) else [float(m) for m in mtf]
        if not self.mtf:
            raise ValueError("at least one MTF value is needed")
        self.truncate = float(truncate)
        self._ops = {
            m: GaussianDownsample(self.factors, sigma=[sigma_from_mtf(m, f) for f in self.factors], truncate=self.truncate)
            for m in set(self.mtf)
        }

    @property
    def sigmas(self) -> list[list[float]]:
        """PSF standard deviation per band (per spatial axis), in high-resolution pixels."""
        return [list(self._ops[m].sigma) for m in self.mtf]

    def _groups(self, channels: int) -> list[tuple[GaussianDownsample, list[int]]]:
        if len(self.mtf) == 1:
            return [(self._ops[self.mtf[0]], list(range(channels)))]
        if channels != len(self.mtf):
            raise ValueError(f"the sensor model has {len(self.mtf)} per-band MTF values, the data has {channels} bands")
        return [(op, [c for c, m in enumerate(self.mtf) if m == key]) for key, op in self._ops.items()]

    def _per_band(self, t: torch.Tensor, method: str, out_spatial: tuple[int, ...]) -> torch.Tensor:
        groups = self._groups(t.shape[1])
        if len(groups) == 1:
            return getattr(groups[0][0], method)(t)
        out = t.new_empty((t.shape[0], t.shape[1], *out_spatial))
        for op, idx in groups:
            sel = torch.tensor(idx, device=t.device)
            out[:, sel] = getattr(op, method)(t[:, sel])
        return out

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_hr_shape(x.shape[2:])
        return self._per_band(x, "A", self.lr_shape(x.shape[2:]))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self._per_band(y, "A_adjoint", self.hr_shape(y.shape[2:]))

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self._per_band(y, "A_pinv", self.hr_shape(y.shape[2:]))

    def svd(self, hr_shape: Sequence[int], channels: int) -> OperatorSVD:
        """Per group of bands sharing an MTF, the Kronecker SVD of its Gaussian blur and decimation."""
        self.check_hr_shape(hr_shape)
        groups = self._groups(channels)
        parts = [(None if len(groups) == 1 else idx, op.axis_svds(hr_shape)) for op, idx in groups]
        return OperatorSVD(hr_shape, self.lr_shape(hr_shape), parts)

    @property
    def halo(self) -> int:
        """High-resolution pixels beyond a window that reach its outputs (PSF radius plus a block), for windowed use."""
        return max(math.ceil(self.truncate * max(op.sigma) + max(self.factors)) for op in self._ops.values())

    def spec(self) -> dict[str, Any]:
        return {"type": "sensor_mtf", "factors": list(self.factors), "mtf": list(self.mtf), "truncate": self.truncate}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Operator) and other.spec() == self.spec()

    def __hash__(self) -> int:
        return hash(repr(self.spec()))
