"""The orthonormal wavelet packet transform and the wavelet state space, in 2D and 3D, on real data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from toolkit import wavelets
from toolkit.checkpoint import load_model
from toolkit.denoiser import UNetDenoiser, fit_denoiser_to_space
from toolkit.engine import SamplerOptions
from toolkit.lightning import DiffusionSR
from toolkit.operators import AreaDownsample
from toolkit.spaces import WaveletSpace, space_from_spec
from toolkit.utils import make_generator

ROOT = Path(__file__).resolve().parents[1]
WAVELETS = ["haar", "db2", "db4", "sym4", "coif1"]


def _real(photo: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor of ``shape`` cut from the real photo (channels cycled, 3D from stacked rows)."""
    assert photo is not None
    b, c, *s = shape
    rows = []
    for i in range(b * c * (s[0] if len(s) == 3 else 1)):
        ch = photo[i % photo.shape[0]]
        r, c = (7 * i) % (ch.shape[0] - s[-2]), (3 * i) % (ch.shape[1] - s[-1])
        rows.append(ch[r : r + s[-2], c : c + s[-1]])
    return torch.stack(rows).reshape(shape).float() * 2 - 1


@pytest.fixture
def photo_t(photo) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.from_numpy(photo)


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize(
    "shape",
    [(2, 3, 24, 36), (1, 4, 13, 22), (1, 1, 9, 5), (1, 2, 7, 10, 13), (2, 7, 8, 12, 6)],
    ids=["rgb-2d", "4band-odd-2d", "odd-2d", "odd-3d", "7band-3d"],
)
def test_round_trip_and_energy(photo_t: torch.Tensor, wavelet: str, levels: int, shape: tuple[int, ...]) -> None:
    """``idwt(dwt(x)) = x`` to 1e-5 in float32 and ``||dwt(x)|| = ||x||`` (orthonormal), odd sizes included."""
    x = _real(photo_t, shape)
    z = wavelets.dwt(x, wavelet, levels)
    nd = x.ndim - 2
    assert z.shape[1] == shape[1] * wavelets.bands(nd, levels)
    assert tuple(z.shape[2:]) == tuple(math.ceil(n / 2**levels) for n in shape[2:])
    back = wavelets.idwt(z, wavelet, levels, shape[2:])
    assert back.shape == x.shape
    assert (back - x).abs().max() < 1e-5
    assert abs(float(z.double().pow(2).sum() / x.double().pow(2).sum()) - 1) < 1e-5


@pytest.mark.parametrize("nd", [2, 3])
def test_inverse_is_the_adjoint(nd: int) -> None:
    """<W x, z> = <x, W^T z> with ``idwt`` as ``W^T``: the analysis matrix is orthogonal."""
    g = make_generator(0)
    shape = (2, 2, 12, 20) if nd == 2 else (1, 2, 8, 12, 4)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    z = torch.randn(wavelets.dwt(x, "db4", 2).shape, generator=g, dtype=torch.float64)
    lhs = (wavelets.dwt(x, "db4", 2) * z).sum()
    rhs = (x * wavelets.idwt(z, "db4", 2)).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(x.abs().sum())


def test_haar_closed_form_and_lowpass(photo_t: torch.Tensor) -> None:
    """Haar level 1: the low band is twice the 2x2 block mean; a constant image is all low band."""
    x = _real(photo_t, (1, 3, 10, 14)).double()
    z = wavelets.dwt(x, "haar", 1)
    low = z.reshape(1, 3, 4, 5, 7)[:, :, 0]
    block_mean = torch.nn.functional.avg_pool2d(x, 2)
    assert torch.allclose(low, 2 * block_mean, atol=1e-12)
    const = torch.full((1, 2, 8, 8, 8), 0.3, dtype=torch.float64)
    for w in WAVELETS:
        bands = wavelets.dwt(const, w, 1).reshape(1, 2, 8, 4, 4, 4)
        assert torch.allclose(bands[:, :, 0], torch.full_like(bands[:, :, 0], 0.3 * wavelets.lowpass_gain(3, 1)), atol=1e-10)
        assert bands[:, :, 1:].abs().max() < 1e-10


def test_differentiable() -> None:
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: wavelets.dwt(t, "db2", 1), (x,))
    z = torch.randn(1, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: wavelets.idwt(t, "db2", 1, (6, 5)), (z,))


def test_bad_wavelets() -> None:
    with pytest.raises(ValueError, match="unknown wavelet"):
        WaveletSpace("nope")
    with pytest.raises(ValueError, match="not orthogonal"):
        WaveletSpace("bior2.2")
    with pytest.raises(ValueError, match="mode"):
        WaveletSpace(mode="lowpass")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["full", "high", "residual"])
@pytest.mark.parametrize("nd", [2, 3])
def test_space_round_trip_shapes_and_spec(photo_t: torch.Tensor, mode: str, nd: int) -> None:
    """encode/decode exact inverses (``high``: exact when the low band is the input's), shapes, spec."""
    shape = (2, 3, 16, 24) if nd == 2 else (1, 2, 8, 12, 16)
    x = _real(photo_t, shape)
    op = AreaDownsample(2, nd)
    y = op.A(x)
    space = WaveletSpace("haar", 1, mode, 0.25)  # type: ignore[arg-type]
    z = space.encode(x, y)
    assert tuple(z.shape[1:]) == space.state_shape(shape[1], shape[2:])
    assert tuple(space.condition(y, shape[2:]).shape[1:]) == (space.cond_channels(shape[1], nd), *z.shape[2:])
    assert space.reconstruction_error(x, y) < 1e-5
    assert space.linear and space.stride == 2
    assert space_from_spec(space.spec()).spec() == space.spec()


@pytest.mark.parametrize("nd", [2, 3])
def test_high_band_space_is_consistent_by_construction(photo_t: torch.Tensor, nd: int) -> None:
    """Haar high-band mode with area x2: ``A(decode(z)) = y`` for *any* state ``z``."""
    shape = (2, 4, 12, 20) if nd == 2 else (1, 3, 8, 12, 6)
    x = _real(photo_t, shape)
    op = AreaDownsample(2, nd)
    y = op.A(x)
    space = WaveletSpace("haar", 1, "high", 0.25)
    z = torch.randn(space.encode(x, y).shape, generator=make_generator(1))
    assert (op.A(space.decode(z, y, shape[2:])) - y).abs().max() < 1e-5
    # a longer wavelet's low band is not the block mean: the space says so through its error
    assert WaveletSpace("db4", 1, "high").reconstruction_error(x, y) > 1e-3


def test_wavelet_model_trains_samples_and_reloads(tmp_path: Path, photo_t: torch.Tensor) -> None:
    """A DiffusionSR with a wavelet space: the UNet's channels follow the space; checkpoint round trip."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from toolkit.callbacks import FinalCheckpoint

    den = UNetDenoiser(2, 3, num_channels=[8, 16], attention_levels=[False, False], norm_num_groups=8, num_head_channels=8)
    model = DiffusionSR(den, AreaDownsample(2, 2), WaveletSpace("db2", 1, "high", 0.25), sampling=SamplerOptions(steps=2, consistency="none"))
    assert (model.denoiser.state_channels, model.denoiser.cond_channels) == (9, 12)
    data = [{"hr": (_real(photo_t, (1, 3, 16, 16))[0] + 1) / 2} for _ in range(4)]
    trainer = pl.Trainer(
        max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=str(tmp_path), callbacks=[FinalCheckpoint("last.ckpt")],
        limit_val_batches=0, accelerator="cpu",
    )
    trainer.fit(model, DataLoader(data, batch_size=2))
    loaded = load_model(tmp_path / "last.ckpt")
    assert isinstance(loaded.space, WaveletSpace) and loaded.space.wavelet == "db2" and loaded.multiple == 4
    y = torch.rand(1, 3, 10, 14)
    a = loaded.upscale(y, make_generator(3))
    b = loaded.upscale(y, make_generator(3))
    assert a.shape == (1, 3, 20, 28) and torch.equal(a, b)


WAVELET_CONFIGS = sorted((ROOT / "configs").glob("*/wavelet_*.yaml"))


@pytest.mark.parametrize("config", WAVELET_CONFIGS, ids=[f"{p.parent.name}/{p.stem}" for p in WAVELET_CONFIGS])
def test_wavelet_configs_fast_dev_run(tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wavelet config runs one training and one validation batch through the CLI."""
    from pipelines.cli import main

    monkeypatch.chdir(ROOT)  # the configs name data/ relative to the repository
    main([
        "fit", "--config", str(config), "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu", "--model.init_args.sampling.steps", "2",
    ])


def test_wavelet_model_upscales_a_geotiff_with_its_georeferencing(tmp_path: Path) -> None:
    """A coarse-grid space goes through the satellite pipeline (sampled whole): CRS, transform, size kept."""
    import rasterio

    from domains.satellite.normalize import raster_normalization
    from pipelines.cli import main

    l8 = ROOT / "data" / "satellite" / "landsat8_ms_30m_7band_128.tif"
    den = UNetDenoiser(2, 7, num_channels=[8, 16], attention_levels=[False, False], norm_num_groups=8, num_head_channels=8)
    module = DiffusionSR(
        den, AreaDownsample(2, 2), WaveletSpace("haar", 1, "high", 0.25), normalization=raster_normalization(l8),
        sampling=SamplerOptions(steps=2),
    )  # fmt: skip
    ckpt = tmp_path / "wav.ckpt"
    torch.save({"diffsr": module.inference_spec(), "state_dict": module.state_dict()}, ckpt)
    lr, sr = tmp_path / "lr.tif", tmp_path / "sr.tif"
    assert main(["degrade", str(l8), str(lr), "--scale", "2"]) == 0
    assert main(["upscale", str(lr), str(sr), "--checkpoint", str(ckpt), "--steps", "2", "--samples", "1", "--tile", "32"]) == 0
    with rasterio.open(l8) as a, rasterio.open(sr) as b, rasterio.open(lr) as y:
        assert b.crs == a.crs and b.count == 7 and b.dtypes == a.dtypes
        assert (b.width, b.height) == (a.width, a.height)
        assert b.transform.almost_equals(a.transform)
        # Haar high bands with area x2: the output's block means are the input (up to uint16 rounding)
        out = torch.from_numpy(b.read().astype("float64"))[None]
        assert (AreaDownsample(2, 2).A(out)[0] - torch.from_numpy(y.read().astype("float64"))).abs().max() <= 1.0


def test_wavelet_model_upscales_a_nifti_with_its_affine(tmp_path: Path) -> None:
    """A 3D wavelet model on a thick-slice volume: the output grid is the original's (voxel centres to 1e-4 mm)."""
    import nibabel as nib
    import numpy as np

    from domains.mri.data import intensity_spec
    from pipelines.cli import main
    from toolkit.normalization import Normalization
    from toolkit.operators import SliceAverage

    src = ROOT / "data" / "mri" / "mni152_09a_t1_crop64.nii.gz"
    den = UNetDenoiser(3, 1, num_channels=[8, 16], attention_levels=[False, False], norm_num_groups=8, num_head_channels=8, mid_attention=False)
    module = DiffusionSR(den, SliceAverage(4), WaveletSpace("haar", 1, "residual", 0.25), normalization=Normalization([0.0], [1.0]), sampling=SamplerOptions(steps=2))
    module.domain = {"kind": "mri", "intensity": intensity_spec(0.5, 99.5, 0.5), "slicewise": None}
    ckpt = tmp_path / "wav3d.ckpt"
    torch.save({"diffsr": module.inference_spec(), "state_dict": module.state_dict()}, ckpt)
    lr, out = tmp_path / "lr.nii.gz", tmp_path / "sr.nii.gz"
    assert main(["degrade", str(src), str(lr), "--scale", "1,1,4", "--operator", "slice"]) == 0
    assert main(["upscale", str(lr), str(out), "--checkpoint", str(ckpt), "--steps", "1", "--samples", "1", "--scale", "1,1,4"]) == 0
    a, b = nib.load(str(src)), nib.load(str(out))
    shape = (a.shape[0], a.shape[1], a.shape[2] // 4 * 4)
    assert b.shape == shape
    assert np.allclose(b.affine, a.affine, atol=1e-4)


def test_coarse_grid_sampling_is_consistent_for_a_blur_on_odd_sizes(photo_t: torch.Tensor) -> None:
    """Padded to the network's multiple and cropped back, the output still explains its true input: A(x) = y."""
    from toolkit.checkpoint import SRModel, upscale_any_size
    from toolkit.normalization import Normalization
    from toolkit.operators import GaussianDownsample
    from toolkit.process import GaussianProcess

    den = UNetDenoiser(2, 2, num_channels=[8, 16], attention_levels=[False, False], norm_num_groups=8, num_head_channels=8)
    space = WaveletSpace("db2", 1, "residual", 0.25)
    op = GaussianDownsample(2, sigma=1.0)
    model = SRModel(den, op, space, GaussianProcess(), Normalization([0.5, 0.5], [0.5, 0.5]), SamplerOptions(steps=2))
    model.denoiser = fit_denoiser_to_space(den, space).eval()
    y = (_real(photo_t, (1, 2, 13, 19)) + 1) / 2  # odd: padded to multiples of 2 (HR multiples of 4)
    x, _ = upscale_any_size(model, y, model.options, make_generator(0))
    assert x.shape == (1, 2, 26, 38) and model.multiple == 4
    assert (op.A(x.double()) - y.double()).abs().max() < 1e-5
