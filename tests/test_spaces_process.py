"""State spaces round-trip exactly; the Gaussian process's schedules and parameterizations agree."""

from __future__ import annotations

import pytest
import torch

from toolkit.operators import AreaDownsample
from toolkit.process import GaussianProcess, alpha_bar_schedule
from toolkit.spaces import PixelSpace, ResidualSpace, space_from_spec


@pytest.mark.parametrize("space", [PixelSpace(), ResidualSpace(), ResidualSpace(0.25)], ids=lambda s: str(s.spec()))
def test_round_trip_2d_3d(space, x2d: torch.Tensor, x3d: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    for x, op in ((x2d, AreaDownsample(2)), (x3d, AreaDownsample((2, 2, 4)))):
        y = op.A(x)
        z = space.encode(x, y)
        assert z.shape == x.shape
        assert space.reconstruction_error(x, y) < 1e-12
        assert space.linear
    assert space_from_spec(space.spec()).spec() == space.spec()


def test_residual_is_small_for_smooth_content(x2d: torch.Tensor) -> None:
    op = AreaDownsample(2)
    y = op.A(x2d)
    r = ResidualSpace().encode(x2d, y)
    assert r.abs().mean() < 0.25 * (x2d - x2d.mean()).abs().mean()


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules(kind: str) -> None:
    ab = alpha_bar_schedule(kind, 1000)
    assert ab.dtype == torch.float64
    assert torch.all(ab[1:] < ab[:-1])
    assert 0.99 < ab[0] < 1 and ab[-1] < 1e-3


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_parameterizations_recover_x0_and_eps(param: str, x2d: torch.Tensor) -> None:
    proc = GaussianProcess("cosine", parameterization=param)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x2d.shape, generator=g, dtype=x2d.dtype)
    for t in (0, 300, 999):
        tt = torch.tensor([t])
        z_t = proc.q_sample(x2d, tt, noise)
        target = proc.target(x2d, noise, tt)
        x0, eps = proc.predict(target, z_t, tt.float())
        assert torch.allclose(x0, x2d, atol=1e-6 if t < 999 else 1e-3)
        assert torch.allclose(eps, noise, atol=1e-6 if t > 0 else 1e-3)


def test_sampling_schedule() -> None:
    proc = GaussianProcess()
    sch = proc.sampling_schedule(20)
    assert sch.t[0] == 999 and sch.t[-1] == 0 and len(sch) == 20
    assert sch.alpha[-1] == 1.0 and sch.sigma[-1] == 0.0 and len(sch.alpha) == 21
    assert all(abs(a**2 + s**2 - 1) < 1e-12 for a, s in zip(sch.alpha, sch.sigma))
    assert len(proc.sampling_schedule(5, t_start=400)) == 5 and proc.sampling_schedule(5, t_start=400).t[0] == 400


def test_min_snr_weights_are_bounded() -> None:
    proc = GaussianProcess(parameterization="eps", loss_weighting="min_snr", min_snr_gamma=5.0)
    w = proc.loss_weights(torch.arange(0, 1000, 50))
    assert torch.all(w <= 1.0 + 1e-6) and torch.all(w > 0)
