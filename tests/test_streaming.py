"""Streaming tiled sampling: tiling and on-disk state change nothing, the noise field is positional."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from toolkit.checkpoint import SRModel
from toolkit.engine import SamplerOptions
from toolkit.normalization import Normalization
from toolkit.operators import AreaDownsample, GaussianDownsample, SliceAverage
from toolkit.process import GaussianProcess
from toolkit.spaces import PixelSpace, ResidualSpace
from toolkit.streaming import NoiseField, StreamLayout, read_padded, stream_upscale
from toolkit.tiling import Tiling


class PointwiseDenoiser(nn.Module):
    """A network whose output at a voxel depends only on that voxel: tiling must not change anything."""

    multiple = 4

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.spatial_dims, self.channels, self.state_channels = spatial_dims, channels, channels
        self.mix = nn.Conv1d(2 * channels, channels, 1)
        torch.nn.init.normal_(self.mix.weight, 0, 0.5, generator=torch.Generator().manual_seed(0))

    def forward(
        self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = torch.cat([z, cond], 1)
        out = self.mix(h.flatten(2)).reshape(z.shape)
        return torch.tanh(out) * (t.reshape(-1, *[1] * (z.ndim - 1)) / 1000 + 0.1)


def _model(op, spatial_dims: int, channels: int, space=None) -> SRModel:  # type: ignore[no-untyped-def]
    return SRModel(
        PointwiseDenoiser(spatial_dims, channels).eval(),
        op,
        space or ResidualSpace(0.25),
        GaussianProcess(parameterization="x0"),
        Normalization([0.5] * channels, [0.5] * channels),
        SamplerOptions(steps=3),
    )


def _run(
    model: SRModel, y: np.ndarray, opts: SamplerOptions, tiling: Tiling, state: str, seed: int = 1, **kw: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    hr = model.operator.hr_shape(y.shape[1:])
    out = np.full((y.shape[0], *hr), np.nan, np.float32)
    std = np.full_like(out, np.nan) if opts.samples > 1 else None

    def write(target: np.ndarray):  # type: ignore[no-untyped-def]
        def w(region, value):  # type: ignore[no-untyped-def]
            assert np.isnan(target[(slice(None), *region)]).all(), "a voxel was written twice"
            target[(slice(None), *region)] = value

        return w

    stream_upscale(
        model,
        lambda r: y[(slice(None), *r)],
        y.shape[1:],
        write(out),
        opts,
        seed,
        tiling,
        write_std=None if std is None else write(std),
        state=state,  # type: ignore[arg-type]
        **kw,
    )
    assert not np.isnan(out).any(), "a voxel was never written"
    return out, std


OPTIONS = [
    SamplerOptions(steps=3),
    SamplerOptions(steps=4, eta=1.0),
    SamplerOptions(steps=3, sampler="dpmpp", t_start=300, start="regression"),
    SamplerOptions(steps=3, t_start=200, start="interpolation", consistency="every_step"),
    SamplerOptions(steps=2, samples=3, flip_ensemble=True, eta=0.5),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: f"{o.sampler}-{o.consistency}-{o.samples}")
def test_tiles_and_disk_state_change_nothing_3d(photo: np.ndarray, opts: SamplerOptions) -> None:
    """Thick slices x4 along the last axis of a real-photo block: small tiles on disk equal one tile in memory."""
    y = np.stack([photo[0, 100 + 2 * k : 118 + 2 * k, 150:170] for k in range(7)], axis=-1)[None]  # (1, 18, 20, 7)
    model = _model(SliceAverage(4, axis=-1, spatial_dims=3), 3, 1)
    whole, std_w = _run(model, y, opts, Tiling(64, 16), "memory")
    tiled, std_t = _run(model, y, opts, Tiling(8, 4, batch=3), "disk")
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    if std_w is not None:
        np.testing.assert_allclose(std_t, std_w, atol=2e-5)
        assert std_w.mean() > 1e-3
    # data consistency is exact (the final projection is block-local)
    ay = model.operator.A(torch.from_numpy(tiled)[None].double())[0].numpy()
    np.testing.assert_allclose(ay, y, atol=1e-5)


def test_tiles_change_nothing_2d_multiband(photo: np.ndarray) -> None:
    """3 bands, 2D, area x2, odd non-square size (the state is padded to the network's multiple)."""
    y = photo[:, 40:61, 60:93].copy()  # (3, 21, 33)
    model = _model(AreaDownsample(2), 2, 3)
    opts = SamplerOptions(steps=3, eta=1.0)
    whole, _ = _run(model, y, opts, Tiling(256, 16), "memory")
    tiled, _ = _run(model, y, opts, Tiling(12, 4, batch=2), "disk")
    assert whole.shape == (3, 42, 66)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    np.testing.assert_allclose(AreaDownsample(2).A(torch.from_numpy(tiled)[None])[0].numpy(), y, atol=1e-5)


def test_pixel_space_and_seed(photo: np.ndarray) -> None:
    y = photo[:1, 40:56, 60:80].copy()
    model = _model(AreaDownsample(2), 2, 1, PixelSpace())
    opts = SamplerOptions(steps=3, eta=1.0)
    a, _ = _run(model, y, opts, Tiling(16, 8), "memory", seed=3)
    b, _ = _run(model, y, opts, Tiling(16, 8), "memory", seed=3)
    c, _ = _run(model, y, opts, Tiling(16, 8), "memory", seed=4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_non_local_operator_is_projected_whole(photo: np.ndarray) -> None:
    """Gaussian blur + decimation is not block-local: projected on the whole output when it fits (exact),
    on widened windows when it does not (close, not exact); samples and their spread either way."""
    y = photo[:1, 40:72, 60:92].copy()
    op = GaussianDownsample(2, sigma=1.0)
    model = _model(op, 2, 1)

    def err(out: np.ndarray) -> np.ndarray:
        return np.abs(op.A(torch.from_numpy(out)[None].double())[0].numpy() - y)

    exact, _ = _run(model, y, SamplerOptions(steps=2), Tiling(16, 8), "memory")
    assert err(exact).max() < 1e-5
    windowed, _ = _run(model, y, SamplerOptions(steps=2), Tiling(16, 8), "memory", exact_projection_mb=0)
    assert err(windowed).mean() < 2e-3 and err(windowed).max() > 1e-4
    mean, std = _run(model, y, SamplerOptions(steps=2, samples=3, eta=1.0), Tiling(16, 8), "disk")
    assert err(mean).max() < 1e-5 and std is not None and std.mean() > 1e-3
    with pytest.raises(ValueError, match="block-local"):
        _run(model, y, SamplerOptions(steps=2, consistency="every_step"), Tiling(16, 8), "memory")


def test_noise_field_is_positional() -> None:
    field = NoiseField(seed=5, channels=2, block=8)
    whole = field.region((0, 1), [0, 0, 0], [20, 13, 9])
    part = field.region((0, 1), [5, 3, 2], [17, 13, 7])
    np.testing.assert_array_equal(part, whole[:, 5:17, 3:13, 2:7])
    assert abs(whole.std() - 1) < 0.05
    assert not np.allclose(field.region((0, 2), [0, 0, 0], [20, 13, 9]), whole)


def test_layout_and_padded_reads() -> None:
    layout = StreamLayout((40, 36, 28), (1, 1, 4), 4, Tiling(16, 6))
    assert all(s.start % 4 == 0 for t in layout.tiles for s in t[2:])
    cover = np.zeros(layout.shape, dtype=int)
    for cell in layout.cells:
        cover[cell] += 1
    assert (cover == 1).all()
    tiles = np.zeros(layout.shape, dtype=int)
    for tile in layout.tiles:
        tiles[tile] += 1
    assert tiles.min() >= 1
    arr = np.arange(24, dtype=np.float32).reshape(1, 4, 6)
    got = read_padded(lambda r: arr[(slice(None), *r)], (4, 6), [-2, 3], [3, 9])
    np.testing.assert_array_equal(got, np.pad(arr, [(0, 0), (2, 0), (0, 3)], mode="edge")[:, 0:5, 3:9])
