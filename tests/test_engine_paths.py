"""One loop: the in-memory and the streamed path drive the same steppers, starts, guidance and ensemble.

With a network whose output at a voxel depends only on that voxel, tiling changes nothing, so the
two paths must agree wherever they draw the same noise: the in-memory path is given the streamed
path's positional noise field. Every registered sampler, pixel and residual space, 2D and 3D.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_streaming import _model, _run

from toolkit.engine import SamplerOptions
from toolkit.noise import NoiseField
from toolkit.operators import AreaDownsample, SliceAverage
from toolkit.samplers import sampler_names
from toolkit.spaces import PixelSpace, ResidualSpace
from toolkit.tiling import Tiling

SEED = 11
#: from pure noise; and a regression start with every-step DDNM, two flipped samples and stochastic DDIM
VARIANTS = {
    "noise": {"steps": 4, "eta": 0.5},
    "regression-ddnm-ensemble": {
        "steps": 4, "eta": 0.5, "t_start": 600, "start": "regression", "consistency": "every_step",
        "samples": 2, "flip_ensemble": True,
    },
    "sdedit": {"steps": 3, "eta": 1.0, "t_start": 300, "start": "interpolation", "guidance_scale": 1.5},
}


def _y(spatial_dims: int, channels: int) -> np.ndarray:
    shape = (channels, 10, 7) if spatial_dims == 2 else (channels, 6, 5, 4)
    return np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)


CASES = [
    (sampler, dims, space, "regression-ddnm-ensemble")
    for sampler in sampler_names()
    for dims in (2, 3)
    for space in ("pixel", "residual")
] + [(sampler, 2, "residual", variant) for sampler in sampler_names() for variant in ("noise", "sdedit")]


@pytest.mark.parametrize(("sampler", "spatial_dims", "space", "variant"), CASES, ids=lambda v: str(v))
def test_memory_and_streamed_paths_agree(sampler: str, spatial_dims: int, space: str, variant: str) -> None:
    channels = 2 if spatial_dims == 2 else 1
    op = AreaDownsample(2) if spatial_dims == 2 else SliceAverage(2, axis=-1, spatial_dims=3)
    model = _model(op, spatial_dims, channels, PixelSpace() if space == "pixel" else ResidualSpace(0.25))
    opts = SamplerOptions(sampler=sampler, **VARIANTS[variant])  # type: ignore[arg-type]
    y = _y(spatial_dims, channels)
    streamed, std_s = _run(model, y, opts, Tiling(8, 4, batch=3), "disk", seed=SEED)
    field = NoiseField(SEED, model.denoiser.state_channels)
    mem, std_m = model.upscale_with_uncertainty(torch.from_numpy(y)[None], field, opts)  # type: ignore[arg-type]
    np.testing.assert_allclose(mem[0].numpy(), streamed, atol=1e-5)
    assert (std_s is None) == (std_m is None)
    if std_s is not None and std_m is not None:
        np.testing.assert_allclose(std_m[0].numpy(), std_s, atol=1e-5)
    assert np.abs(streamed - streamed.mean()).max() > 1e-3  # not a constant


@pytest.mark.parametrize("sampler", sampler_names())
def test_no_float64_reaches_a_device_without_it(sampler: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Apple MPS has no float64: tables stay float64 on the CPU and reach such a device as float32.

    The sampling path runs on PyTorch's ``meta`` device (shapes only), declared here to lack float64
    like MPS, while a dispatch hook records every float64 tensor made there: none may be.
    """
    from test_streaming import PointwiseDenoiser
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    import toolkit.utils
    from toolkit.engine import sample_sr
    from toolkit.operators import GaussianDownsample
    from toolkit.process import GaussianProcess
    from toolkit.utils import make_generator

    class Float64OnMeta(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type == "meta" and t.dtype == torch.float64:
                    self.ops.add(str(func))
            return out

    monkeypatch.setattr(toolkit.utils, "has_float64", lambda d: torch.device(d).type not in ("mps", "meta"))
    net = PointwiseDenoiser(2, 2).to("meta")
    y = torch.empty(1, 2, 6, 5, device="meta")
    opts = SamplerOptions(
        sampler=sampler, steps=3, eta=0.5, t_start=500, start="regression", consistency="every_step",
        guidance_scale=2.0, samples=2,
    )
    for op in (AreaDownsample(2), GaussianDownsample(2)):
        watch = Float64OnMeta()
        with watch:
            out = sample_sr(net, GaussianProcess(parameterization="v"), ResidualSpace(0.5), op, y, opts, make_generator(0))
        assert out.shape == (1, 2, 12, 10) and out.dtype == torch.float32
        assert not watch.ops, f"float64 tensors made on the device by {sorted(watch.ops)}"
