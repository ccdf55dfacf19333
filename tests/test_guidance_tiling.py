"""Classifier-free guidance, DDNM data consistency, and tiled denoising with blending."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toolkit.denoiser import UNetDenoiser
from toolkit.engine import SamplerOptions, sample_sr
from toolkit.guidance import classifier_free
from toolkit.operators import AreaDownsample, GaussianDownsample
from toolkit.process import GaussianProcess
from toolkit.spaces import PixelSpace, ResidualSpace
from toolkit.tiling import TiledDenoiser, Tiling, gaussian_weight, tile_starts
from toolkit.utils import make_generator, upsample


def _randomised(net: UNetDenoiser, seed: int = 0) -> UNetDenoiser:
    """MONAI zero-initialises the output layer; give every weight a value so outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_null_condition_replaces_dropped_samples() -> None:
    net = _randomised(UNetDenoiser(2, channels=1, num_channels=(8, 8), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8))
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10.0, 500.0])
    with torch.no_grad():
        mixed = net(z, t, cond, torch.tensor([False, True]))
        assert torch.allclose(mixed[:1], net(z[:1], t[:1], cond[:1]), atol=1e-5)
        assert torch.allclose(mixed[1:], net(z[1:], t[1:], None), atol=1e-5)
        assert not torch.allclose(mixed[1:], net(z[1:], t[1:], cond[1:]), atol=1e-3)


def test_classifier_free_guidance_formula() -> None:
    net = _randomised(UNetDenoiser(2, channels=1, num_channels=(8, 8), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8))
    proc = GaussianProcess(parameterization="eps")
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([300.0, 300.0])
    w = 2.5
    with torch.no_grad():
        _, eps = classifier_free(net, proc, cond, w)(z, t)
        expected = (1 - w) * net(z, t, None) + w * net(z, t, cond)
    assert torch.allclose(eps, expected, atol=1e-5)


def test_ddnm_makes_every_prediction_consistent(x2d: torch.Tensor) -> None:
    """The loop's every-step DDNM correction: the corrected x0 explains y, and eps follows it so z = a x0 + s eps."""
    from toolkit.engine import MemoryCanvas

    op = GaussianDownsample(2)
    proc = GaussianProcess()
    x = x2d[:, :, :24, :36].float()
    y = op.A(x)
    space = ResidualSpace(0.5)
    canvas = MemoryCanvas(_Pointwise(), proc, space, op, y, SamplerOptions(consistency="every_step"), make_generator(0))
    x0 = canvas.consistent(torch.zeros_like(x) + 0.3, canvas.cells[0])
    assert torch.allclose(op.A(space.decode(x0, y)), y, atol=1e-5)
    t = torch.tensor([400.0])
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    a, s = proc.coefficients(t, z)
    assert torch.allclose(a * x0 + s * proc.eps_from_x0(z, x0, t), z, atol=1e-5)


def test_every_step_consistency_refuses_a_nonlinear_space(x2d: torch.Tensor) -> None:
    class Curved(PixelSpace):
        linear = False

    y = AreaDownsample(2).A(x2d.float())
    with pytest.raises(ValueError, match="needs a linear state space; Curved"):
        sample_sr(_Pointwise(), GaussianProcess(), Curved(), AreaDownsample(2), y, SamplerOptions(steps=2, consistency="every_step"), make_generator(0))


def test_tile_starts_cover_with_overlap() -> None:
    assert tile_starts(100, 128, 16) == [0]
    st = tile_starts(300, 128, 32)
    assert st[0] == 0 and st[-1] == 300 - 128
    assert all(b - a <= 96 for a, b in zip(st, st[1:]))
    w = gaussian_weight((16, 12))
    assert w.shape == (16, 12) and float(w.min()) > 0 and float(w.max()) <= 1


class _Pointwise(nn.Module):
    """A per-pixel network: tiling must reproduce it exactly."""

    spatial_dims = 2
    state_channels = 2
    multiple = 4

    def forward(self, z, t, cond, drop=None):  # type: ignore[no-untyped-def]
        return torch.tanh(z * 0.7 + cond.sum(1, keepdim=True) * 0.1) + t.reshape(-1, 1, 1, 1) * 1e-3


def test_tiling_is_exact_for_pointwise_networks() -> None:
    net = _Pointwise()
    z = torch.randn(2, 2, 40, 56, generator=torch.Generator().manual_seed(0))
    c = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10.0, 20.0])
    tiled = TiledDenoiser(net, 16, 4, tile_batch=3)
    assert torch.allclose(tiled(z, t, c), net(z, t, c), atol=1e-6)


class _LocalConv(nn.Module):
    """A small convolutional network (receptive field 5 px): tiles with enough overlap must agree with one pass."""

    spatial_dims = 2
    state_channels = 3
    multiple = 4

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(6, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))

    def forward(self, z, t, cond, drop=None):  # type: ignore[no-untyped-def]
        return self.c2(torch.tanh(self.c1(torch.cat([z, cond], 1))))


def test_tiled_sampling_matches_one_pass_without_seams(photo) -> None:  # type: ignore[no-untyped-def]
    """Same seed, same noise across tiles, blending inside every step: tiled sampling equals one pass
    up to the zero-padding at tile borders, which the Gaussian weights suppress."""
    net = _LocalConv().eval()
    x = torch.from_numpy(photo[:, 64:160, 96:224].copy())[None] * 2 - 1
    op = AreaDownsample(2)
    y = op.A(x)
    proc = GaussianProcess()
    opts = SamplerOptions(steps=4, consistency="none")
    whole = sample_sr(net, proc, PixelSpace(), op, y, opts, make_generator(3))
    tiled = sample_sr(net, proc, PixelSpace(), op, y, opts, make_generator(3), tiling=Tiling(32, 16, 4))
    assert tiled.shape == whole.shape == x.shape
    err = (tiled - whole).abs()
    assert float(err.max()) < 0.05 * float(whole.abs().max())
    assert float(err.mean()) < 0.005 * float(whole.abs().mean())


def test_tiled_unet_sampling_runs_in_3d() -> None:
    net = UNetDenoiser(3, channels=1, num_channels=(8, 8), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8)
    op = AreaDownsample((1, 1, 2))
    y = torch.rand(1, 1, 12, 10, 6) * 2 - 1
    out = sample_sr(net, GaussianProcess(), ResidualSpace(), op, y, SamplerOptions(steps=2), make_generator(0), tiling=Tiling(8, 4, 2))
    assert out.shape == (1, 1, 12, 10, 12)
    assert torch.allclose(op.A(out), y, atol=1e-5)  # final projection: exactly consistent


def test_sample_mean_and_uncertainty_are_consistent() -> None:
    """The mean of K (flipped) samples still explains its input exactly; its spread is a real std."""
    from toolkit.engine import sample_sr_with_uncertainty

    net = _LocalConv().eval()
    op = AreaDownsample(2)
    y = torch.rand(2, 3, 10, 14, generator=torch.Generator().manual_seed(0)) * 2 - 1
    opts = SamplerOptions(steps=3, samples=4, flip_ensemble=True, eta=1.0)
    mean, std = sample_sr_with_uncertainty(net, GaussianProcess(), PixelSpace(), op, y, opts, make_generator(0))
    assert mean.shape == std.shape == (2, 3, 20, 28)
    assert torch.allclose(op.A(mean), y, atol=1e-5)
    assert float(std.min()) >= 0 and float(std.mean()) > 0
    one, none = sample_sr_with_uncertainty(net, GaussianProcess(), PixelSpace(), op, y, SamplerOptions(steps=3), make_generator(0))
    assert none is None and one.shape == mean.shape


class _CondOnly(nn.Module):
    """x0 prediction that ignores the noisy state: every sampler must return exactly it."""

    spatial_dims = 2
    state_channels = 3
    multiple = 1

    def forward(self, z, t, cond, drop=None):  # type: ignore[no-untyped-def]
        return 0.5 * torch.tanh(cond) + 0 * z


@pytest.mark.parametrize("start", ["regression", "interpolation"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp"])
def test_truncated_starts_return_the_models_estimate(start: str, sampler: str) -> None:
    op = AreaDownsample(2)
    proc = GaussianProcess(parameterization="x0")
    y = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    opts = SamplerOptions(sampler=sampler, steps=5, t_start=300, start=start, consistency="none", eta=1.0)
    out = sample_sr(_CondOnly(), proc, PixelSpace(), op, y, opts, make_generator(5))
    assert torch.allclose(out, 0.5 * torch.tanh(upsample(y, (16, 24))), atol=1e-5)
