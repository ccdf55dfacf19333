"""Operators: adjointness <Ax, y> = <x, A^T y>, exact pseudo-inverse, projection, at 2D and 3D on non-square shapes."""

from __future__ import annotations

import pytest
import torch

from toolkit.operators import (
    AreaDownsample,
    FourierCrop,
    GaussianDownsample,
    SeparableOperator,
    SliceAverage,
    operator_from_spec,
)

OPERATORS_2D = [
    AreaDownsample(2),
    AreaDownsample((2, 3)),
    AreaDownsample((4, 1)),
    GaussianDownsample(2),
    GaussianDownsample((3, 2), sigma=(1.0, 0.7)),
    GaussianDownsample(4, sigma=1.5),
]
OPERATORS_3D = [
    AreaDownsample((1, 1, 4)),
    AreaDownsample((2, 2, 2)),
    GaussianDownsample((2, 2, 4)),
    GaussianDownsample((1, 2, 2), sigma=(0.0, 1.0, 1.0)),
    SliceAverage(4, axis=-1),
    SliceAverage(4, axis=0, thickness=2),
    SliceAverage(3, axis=1, thickness=1),
    FourierCrop((1, 2, 4)),
    FourierCrop((3, 1, 2)),
    FourierCrop(2),
]


def _crop(x: torch.Tensor, op: SeparableOperator) -> torch.Tensor:
    sl = tuple(slice(0, n - n % f) for n, f in zip(x.shape[2:], op.factors))
    return x[(slice(None), slice(None)) + sl]


def _check_adjoint(op: SeparableOperator, x: torch.Tensor) -> None:
    x = _crop(x, op)
    y = torch.randn(op.A(x).shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    lhs = (op.A(x) * y).sum()
    rhs = (x * op.A_adjoint(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10), (lhs, rhs)


def _check_pinv(op: SeparableOperator, x: torch.Tensor) -> None:
    y = op.A(_crop(x, op))
    assert torch.allclose(op.A(op.A_pinv(y)), y, atol=1e-9)
    # A^+ is the minimum-norm solution: it lies in the range of A^T (orthogonal to the null space)
    xp = op.A_pinv(y)
    assert torch.allclose(op.A_pinv(op.A(xp)), xp, atol=1e-9)


@pytest.mark.parametrize("op", OPERATORS_2D, ids=lambda o: str(o.spec()))
def test_adjoint_and_pinv_2d(op: SeparableOperator, x2d: torch.Tensor) -> None:
    _check_adjoint(op, x2d)
    _check_pinv(op, x2d)


@pytest.mark.parametrize("op", OPERATORS_3D, ids=lambda o: str(o.spec()))
def test_adjoint_and_pinv_3d(op: SeparableOperator, x3d: torch.Tensor) -> None:
    _check_adjoint(op, x3d)
    _check_pinv(op, x3d)


@pytest.mark.parametrize("factors", [2, (2, 3), (1, 4)])
def test_area_fast_path_matches_matrices(factors: int | tuple[int, int], x2d: torch.Tensor) -> None:
    op = AreaDownsample(factors)
    x = _crop(x2d, op)
    y = op.A(x)
    mats = op._matrices(x.shape[2:], "A", x.device, x.dtype)
    assert torch.allclose(y, op._apply(x, mats), atol=1e-12)
    mats_t = op._matrices(x.shape[2:], "AT", x.device, x.dtype)
    assert torch.allclose(op.A_adjoint(y), op._apply(y, mats_t), atol=1e-12)
    mats_p = op._matrices(x.shape[2:], "pinv", x.device, x.dtype)
    assert torch.allclose(op.A_pinv(y), op._apply(y, mats_p), atol=1e-12)


def test_area_is_block_mean(x2d: torch.Tensor) -> None:
    y = AreaDownsample((2, 3)).A(x2d)
    assert y.shape == (1, 3, 12, 12)
    assert torch.allclose(y[0, 1, 4, 5], x2d[0, 1, 8:10, 15:18].mean())


def test_gaussian_rows_sum_to_one_and_keep_constants(x2d: torch.Tensor) -> None:
    op = GaussianDownsample((2, 3), sigma=(1.0, 1.5))
    const = torch.full_like(x2d, 0.37)
    assert torch.allclose(op.A(const), torch.full_like(op.A(const), 0.37), atol=1e-12)


def test_gaussian_is_centred_like_area() -> None:
    """A ramp keeps its value at the block centre: the low-resolution grids of both operators coincide."""
    ramp = torch.arange(32, dtype=torch.float64).reshape(1, 1, 32).expand(1, 1, 32)[..., None].expand(1, 1, 32, 8)
    for f in (2, 3, 4):
        n = 32 - 32 % f
        r = ramp[:, :, :n]
        g = GaussianDownsample((f, 1), sigma=(0.8, 0.1)).A(r)[0, 0, 2:-2, 0]
        a = AreaDownsample((f, 1)).A(r)[0, 0, 2:-2, 0]
        assert torch.allclose(g, a, atol=1e-6)


def test_projection_is_orthogonal_and_moves_closer(x2d: torch.Tensor) -> None:
    op = GaussianDownsample(2)
    x = _crop(x2d, op)
    y = op.A(x)
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    p = op.project(noisy, y)
    assert torch.allclose(op.A(p), y, atol=1e-10)
    assert torch.allclose(op.project(p, y), p, atol=1e-10)  # idempotent
    assert (p - x).norm() < (noisy - x).norm()


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        AreaDownsample(2).A(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match="spatial dims"):
        AreaDownsample(2).A(torch.zeros(1, 1, 4, 4, 4))


@pytest.mark.parametrize("op", OPERATORS_2D + OPERATORS_3D, ids=lambda o: str(o.spec()))
def test_spec_round_trip(op: SeparableOperator) -> None:
    assert operator_from_spec(op.spec()) == op
    with pytest.raises(ValueError, match="unknown operator"):
        operator_from_spec({"type": "os.system"})


@pytest.mark.parametrize("n,f", [(24, 2), (24, 4), (21, 3), (20, 4), (30, 5)])
def test_fourier_crop_pinv_gives_back_the_low_pass_part(n: int, f: int) -> None:
    """A^+ A x keeps every frequency below m/2 exactly (m = n/f) and removes every one above."""
    op = FourierCrop((f, 1), spatial_dims=2)
    x = torch.randn(2, 1, n, 5, generator=torch.Generator().manual_seed(n * f), dtype=torch.float64)
    p = op.A_pinv(op.A(x))
    m = n // f
    k = torch.fft.fftfreq(n, d=1.0 / n).abs()
    X, P = torch.fft.fft(x, dim=2), torch.fft.fft(p, dim=2)
    below, above = k < m / 2, k > m / 2
    assert torch.allclose(P[:, :, below], X[:, :, below], atol=1e-9)
    assert P[:, :, above].abs().max() < 1e-9
    # a band-limited volume passes unchanged
    low = torch.fft.ifft(X * below[None, None, :, None], dim=2).real
    assert torch.allclose(op.A_pinv(op.A(low)), low, atol=1e-9)


def test_fourier_crop_keeps_constants_and_centres_like_area(x3d: torch.Tensor) -> None:
    op = FourierCrop((2, 2, 4))
    const = torch.full_like(x3d, 0.25)
    assert torch.allclose(op.A(const), torch.full_like(op.A(const), 0.25), atol=1e-12)
    # a band-limited ramp-like signal (one cosine period) is sampled at the block centres
    n, f = 24, 4
    j = torch.arange(n, dtype=torch.float64)
    sig = torch.cos(2 * torch.pi * j / n).reshape(1, 1, n)
    lr = FourierCrop((f,), spatial_dims=1).A(sig)
    centres = torch.arange(n // f, dtype=torch.float64) * f + (f - 1) / 2
    assert torch.allclose(lr[0, 0], torch.cos(2 * torch.pi * centres / n), atol=1e-12)


def test_slice_average_with_gap(x3d: torch.Tensor) -> None:
    op = SliceAverage(4, axis=-1, thickness=2)
    y = op.A(x3d)
    assert y.shape == (2, 1, 12, 16, 5)
    assert torch.allclose(y[..., 1], x3d[..., 5:7].mean(-1))
