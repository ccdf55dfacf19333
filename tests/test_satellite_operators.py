"""Sensor-model operator and multispectral metrics: adjointness, exact pseudo-inverse, MTF formula, torchmetrics agreement."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import (
    error_relative_global_dimensionless_synthesis,
    peak_signal_noise_ratio,
    spectral_angle_mapper,
    structural_similarity_index_measure,
)

from domains.satellite.io import read_raster
from domains.satellite.metrics import band_data_range, band_psnr, band_ssim, consistency_band_psnr, ergas, sam_degrees
from domains.satellite.operators import SensorMTFDownsample, mtf_at_nyquist, sigma_from_mtf
from toolkit.normalization import Normalization
from toolkit.operators import AreaDownsample, operator_from_spec

DATA = Path(__file__).resolve().parents[1] / "data" / "satellite"

OPERATORS = [
    SensorMTFDownsample(2),
    SensorMTFDownsample(4, mtf=0.25),
    SensorMTFDownsample((2, 3), mtf=[0.3, 0.2, 0.35, 0.3, 0.28]),
    SensorMTFDownsample(2, mtf=[0.3, 0.2, 0.3, 0.4, 0.25, 0.2, 0.3]),
    SensorMTFDownsample((2, 2, 2), mtf=0.3, spatial_dims=3),
]


@pytest.fixture(scope="module")
def landsat() -> torch.Tensor:
    """The real 7-band Landsat 8 crop (1, 7, 128, 128) in float64 data units."""
    data, _, _ = read_raster(DATA / "landsat8_ms_30m_7band_128.tif")
    return torch.from_numpy(data)[None].double()


def _sample(op: SensorMTFDownsample, landsat: torch.Tensor, channels: int) -> torch.Tensor:
    """A non-square real block with ``channels`` bands (cycled from the 7 Landsat bands), 2D or 3D."""
    bands = [b % 7 for b in range(channels)]
    x = landsat[:, bands, 10:34, 20:56]  # 24 x 36
    if op.spatial_dims == 3:
        x = torch.stack([landsat[:, bands, 10 + k : 22 + k, 20:36] for k in range(0, 20, 2)], dim=-1)  # 12 x 16 x 10
    sl = tuple(slice(0, n - n % f) for n, f in zip(x.shape[2:], op.factors))
    return (x[(slice(None), slice(None), *sl)] - 9000.0) / 1000.0


@pytest.mark.parametrize("op", OPERATORS, ids=lambda o: str(o.spec()))
@pytest.mark.parametrize("batch", [1, 2])
def test_adjoint_and_pinv(op: SensorMTFDownsample, landsat: torch.Tensor, batch: int) -> None:
    channels = len(op.mtf) if len(op.mtf) > 1 else 4
    x = _sample(op, landsat, channels).expand(batch, -1, *[-1] * op.spatial_dims).contiguous()
    y = torch.randn(op.A(x).shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lhs, rhs = (op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)
    assert torch.allclose(op.A(op.A_pinv(y)), y, atol=1e-9)
    xp = op.A_pinv(y)
    assert torch.allclose(op.A_pinv(op.A(xp)), xp, atol=1e-9)  # minimum-norm: A^+ A A^+ = A^+
    assert torch.allclose(op.A(op.project(x, y)), y, atol=1e-9)


def test_band_count_must_match_per_band_mtf(landsat: torch.Tensor) -> None:
    op = SensorMTFDownsample(2, mtf=[0.3, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 per-band MTF values, the data has 7 bands"):
        op.A(landsat[:, :, :32, :32])


def test_per_band_psf_differs_by_band(landsat: torch.Tensor) -> None:
    x = landsat[:, :2, :32, :32]
    op = SensorMTFDownsample(2, mtf=[0.1, 0.5])
    y = op.A(x)
    assert torch.allclose(y[:, :1], SensorMTFDownsample(2, mtf=0.1).A(x[:, :1]))
    assert torch.allclose(y[:, 1:], SensorMTFDownsample(2, mtf=0.5).A(x[:, 1:]))


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("m", [0.1, 0.3, 0.6])
def test_sigma_gives_the_mtf_at_nyquist(factor: int, m: float) -> None:
    sigma = sigma_from_mtf(m, factor)
    assert mtf_at_nyquist(sigma, factor) == pytest.approx(m, rel=1e-12)
    # the discrete kernel's frequency response at the LR Nyquist frequency is close to m too
    op = SensorMTFDownsample(factor, mtf=m)
    n = 64 * factor
    row = op._ops[m].axis_matrix(0, n)[n // factor // 2].numpy()
    f = 1.0 / (2 * factor)
    response = abs(np.sum(row * np.exp(-2j * math.pi * f * np.arange(n))))
    assert response == pytest.approx(m, abs=0.01)
    assert sigma_from_mtf(0.3, 2) == pytest.approx(0.98788, abs=1e-5)


def test_invalid_mtf() -> None:
    with pytest.raises(ValueError, match="MTF at Nyquist"):
        SensorMTFDownsample(2, mtf=1.0)
    with pytest.raises(ValueError, match="factors"):
        SensorMTFDownsample(1)


def test_spec_round_trip_through_the_registry() -> None:
    op = SensorMTFDownsample((2, 4), mtf=[0.3, 0.25])
    spec = op.spec()
    assert spec == {"type": "sensor_mtf", "factors": [2, 4], "mtf": [0.3, 0.25], "truncate": 4.0}
    rebuilt = operator_from_spec(spec)
    assert isinstance(rebuilt, SensorMTFDownsample) and rebuilt == op
    x = torch.randn(1, 2, 16, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rebuilt.A(x), op.A(x))


# --- metrics ------------------------------------------------------------------------------------------
def test_metrics_agree_with_torchmetrics_when_all_valid(landsat: torch.Tensor) -> None:
    hr = landsat[:, :, :64, :48]
    pred = hr + torch.randn(hr.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    r = 8000.0
    ours = band_psnr(pred, hr, r)[0]
    ref = torch.stack([peak_signal_noise_ratio(pred[:, c], hr[:, c], data_range=r) for c in range(7)])
    assert torch.allclose(ours, ref.double(), atol=1e-6)
    s = band_ssim(pred, hr, r)[0]
    s_ref = torch.stack([structural_similarity_index_measure(pred[:, c : c + 1], hr[:, c : c + 1], data_range=r) for c in range(7)])
    assert torch.allclose(s, s_ref.double(), atol=1e-6)
    sam = sam_degrees(pred, hr)[0]
    assert float(sam) == pytest.approx(math.degrees(float(spectral_angle_mapper(pred, hr))), rel=1e-6)
    e = ergas(pred, hr, 2)[0]
    assert float(e) == pytest.approx(float(error_relative_global_dimensionless_synthesis(pred, hr, ratio=2)), rel=1e-6)


def test_metrics_ignore_invalid_pixels(landsat: torch.Tensor) -> None:
    hr = landsat[:, :, :32, :32]
    pred = hr.clone()
    valid = torch.ones(32, 32, dtype=torch.bool)
    valid[:, :8] = False
    pred[..., :8] = 0.0  # garbage where the data is invalid
    assert (band_psnr(pred, hr, 8000.0, valid) > 150).all()
    assert float(sam_degrees(pred, hr, valid)[0]) == pytest.approx(0.0, abs=1e-4)
    assert float(ergas(pred, hr, 2, valid)[0]) == pytest.approx(0.0, abs=1e-9)
    assert torch.allclose(band_ssim(pred, hr, 8000.0, valid), torch.ones(1, 7, dtype=torch.float64))
    op = AreaDownsample(2)
    assert (consistency_band_psnr(op, hr, op.A(hr), 8000.0) == 100.0).all()


def test_band_data_range_from_normalization() -> None:
    assert band_data_range(Normalization([1.0, 2.0], [10.0, 20.0]), 2) == [20.0, 40.0]
    assert band_data_range(Normalization(0.5, 0.5), 3) == [1.0, 1.0, 1.0]
