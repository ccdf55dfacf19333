"""One prior, any operator, from the command line: ``upscale`` and ``evaluate`` with ``--zero-shot`` in every domain.

Tiny unconditional priors (a few optimiser steps on real crops of each domain's data) stand in
for trained ones: the properties checked hold for any weights. DDNM on a noise-free input ends
on the measurement's affine set, so ``A(output) = y`` up to the output file's precision (float32
NIfTI: float32 round-off; 16-bit PNG and uint16 GeoTIFF: half a quantisation step); geometry is
kept as the conditional path keeps it; evaluation records what the results table needs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from domains.images.io import read_image, write_image
from domains.mri.data import intensity_spec, volume_normalization
from domains.mri.io import read_volume
from domains.satellite.normalize import raster_normalization
from pipelines.cli import main
from toolkit.denoiser import UNetDenoiser
from toolkit.engine import SamplerOptions
from toolkit.lightning import DiffusionSR
from toolkit.normalization import Normalization
from toolkit.operators import operator_by_name
from toolkit.process import GaussianProcess
from toolkit.spaces import PixelSpace

if TYPE_CHECKING:
    from conftest import CliFails

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
L8 = DATA / "satellite" / "landsat8_ms_30m_7band_128.tif"
MRI = DATA / "mri" / "mni152_09a_t1_crop64.nii.gz"
PHOTO = DATA / "natural" / "holdout" / "skimage_chelsea.png"
FACES = DATA / "faces"
#: DDIM steps of every run here (the identities hold for any number)
STEPS = ["--steps", "2"]


def _train_prior(
    path: Path, batches: list[torch.Tensor], normalization: Normalization, domain: dict[str, Any] | None, data_range: float = 1.0,
    steps: int = 3,
) -> Path:
    """A tiny pixel-space prior trained for ``steps`` AdamW steps on ``batches`` (data units), saved as ``diffsr fit`` saves it."""
    x = batches[0]
    den = UNetDenoiser(x.ndim - 2, x.shape[1], num_channels=[8, 16], attention_levels=[False, False], norm_num_groups=8, num_head_channels=8,
        mid_attention=False,
    )
    module = DiffusionSR(
        den, operator_by_name("area", 2, x.ndim - 2), PixelSpace(), GaussianProcess(parameterization="x0"), normalization,
        sampling=SamplerOptions(steps=2), lr=2e-3, warmup_steps=1, data_range=data_range, prior=True,
    )
    module.domain = domain
    opt = torch.optim.AdamW(module.denoiser.parameters(), lr=2e-3)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        for k in range(steps):
            opt.zero_grad()
            module.training_step({"hr": batches[k % len(batches)]}, k).backward()
            opt.step()
    module.ema.load_state_dict(module.denoiser.state_dict())
    torch.save({"diffsr": module.inference_spec(), "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def priors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny prior per domain: images (RGB crops), mri (3D patches), satellite (7-band Landsat crops), faces (32 px)."""
    d = tmp_path_factory.mktemp("priors")
    photo = torch.from_numpy(read_image(PHOTO)[0])
    out = {"images": _train_prior(d / "images.ckpt", [photo[None, :, 60:92, 100:132], photo[None, :, 150:182, 200:232]], Normalization(), None)}
    vol, _ = read_volume(MRI)
    spec = intensity_spec(0.5, 99.5, 0.5)
    norm = volume_normalization(vol, spec)
    v = torch.from_numpy((vol - norm.offset[0]) / norm.scale[0]).float()
    out["mri"] = _train_prior(
        d / "mri.ckpt", [v[None, None, 16:32, 16:32, 24:40]], Normalization(0.0, 1.0),
        {"kind": "mri", "intensity": spec, "slicewise": None}, data_range=2.0, steps=2,
    )
    with rasterio.open(L8) as ds:
        raster = torch.from_numpy(ds.read(window=((0, 32), (0, 32))).astype(np.float32))[None]
    out["satellite"] = _train_prior(
        d / "satellite.ckpt", [raster], raster_normalization(L8), {"kind": "satellite", "bands": None}, data_range=8000.0, steps=2,
    )
    face = torch.from_numpy(read_image(FACES / "obama_official_256.png")[0])[None]
    small = torch.nn.functional.interpolate(face, size=(32, 32), mode="area")
    out["faces"] = _train_prior(
        d / "faces.ckpt", [small], Normalization(),
        {"kind": "faces", "face_size": 32, "crop_center": [0.476, 0.489], "crop_side": 1.0}, steps=2,
    )
    return out


@pytest.fixture(scope="session")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 31 x 32 x 24 float32 crop of the MNI template (origin moved with the crop; the odd side makes the sampler pad)."""
    img = nib.load(str(MRI))
    data = np.asarray(img.dataobj, dtype=np.float32)[16:47, 16:48, 20:44]
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array([16, 16, 20]) + img.affine[:3, 3]
    path = tmp_path_factory.mktemp("vol") / "head.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _fov(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The corners of the field of view (voxel edges) in scanner mm."""
    return np.stack([affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3], affine[:3, :3] @ (np.asarray(shape) - 0.5) + affine[:3, 3]])


def test_image_upscale_zero_shot_is_consistent(priors: dict[str, Path], tmp_path: Path) -> None:
    """DDNM, noise-free: ``A(output) = y`` up to 16-bit rounding wherever no pixel of a block was clipped to [0, 1]."""
    lr, sr = tmp_path / "lr.png", tmp_path / "sr.png"
    write_image(lr, read_image(PHOTO)[0][:, 100:124, 150:186], 16)
    assert main(["upscale", str(lr), str(sr), "--checkpoint", str(priors["images"]), "--zero-shot", "ddnm", "--operator", "area", "--scale", "2", *STEPS]) == 0
    x = torch.from_numpy(read_image(sr)[0])[None].double()
    y = torch.from_numpy(read_image(lr)[0])[None].double()
    assert x.shape == (1, 3, 48, 72)
    op = operator_by_name("area", 2, 2)
    clipped = op.A(((x <= 0) | (x >= 1)).double()) > 0
    assert (~clipped).double().mean() > 0.95
    assert (op.A(x) - y).abs()[~clipped].max() <= 0.5 / 65535 + 1e-6
    # the methods' options reach them: DDRM with a noise level, its eta and eta_b
    noisy = tmp_path / "ddrm.png"
    assert main(["upscale", str(lr), str(noisy), "--checkpoint", str(priors["images"]), "--zero-shot", "ddrm", "--operator", "gaussian",
                 "--scale", "2", "--sigma-y", "0.02", "--eta", "0.5", "--eta-b", "0.9", *STEPS]) == 0
    assert read_image(noisy)[0].shape == (3, 48, 72)


@pytest.mark.parametrize(("operator", "scale"), [("slice", "1,1,4"), ("kspace", "2")])
def test_volume_upscale_zero_shot_keeps_geometry(priors: dict[str, Path], volume: Path, tmp_path: Path, operator: str, scale: str) -> None:
    """A 3D prior on a NIfTI volume: the finer grid over the same field of view, float32 kept, ``A(output) = y`` to float32 round-off.

    The state is the whole volume (k-space truncation is global: no window of it is exact) while
    the network runs in 16-voxel patches; the slice case also pads the odd axis and crops it again.
    """
    lr, sr = tmp_path / "lr.nii.gz", tmp_path / "sr.nii.gz"
    assert main(["degrade", str(volume), str(lr), "--operator", operator, "--scale", scale]) == 0
    assert main(["upscale", str(lr), str(sr), "--checkpoint", str(priors["mri"]), "--zero-shot", "ddnm", "--operator", operator, "--scale", scale,
                 "--tile", "16", *STEPS]) == 0
    src, out, low = nib.load(str(volume)), nib.load(str(sr)), nib.load(str(lr))
    assert out.shape == tuple(n * f for n, f in zip(low.shape, operator_by_name(operator, 2 if scale == "2" else (1, 1, 4), 3).factors))
    assert out.shape[1:] == src.shape[1:] and out.get_data_dtype() == np.float32
    assert np.abs(_fov(out.affine, out.shape) - _fov(low.affine, low.shape)).max() < 1e-4
    assert np.allclose(out.header.get_zooms()[:3], src.header.get_zooms()[:3], atol=1e-5)
    assert np.abs(out.affine[:3, 3] - src.affine[:3, 3]).max() < 1e-4  # the first voxel's centre is the original's
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
    factors = [int(f) for f in scale.split(",")] if "," in scale else int(scale)
    op = operator_by_name(operator, factors, 3)
    x = torch.from_numpy(np.asarray(out.dataobj, dtype=np.float64))[None, None]
    y = np.asarray(low.dataobj, dtype=np.float64)
    assert np.abs(op.A(x)[0, 0].numpy() - y).max() <= 1e-5 * np.abs(y).max()


def test_geotiff_upscale_zero_shot_mtf(cli_fails: CliFails, priors: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sensor MTF operator on a 7-band uint16 GeoTIFF: CRS and scaled transform kept, ``A(output) = y`` to the rounding;
    a raster whose zero-shot state would not fit in memory is refused before any work."""
    lr, sr = tmp_path / "lr.tif", tmp_path / "sr.tif"
    assert main(["degrade", str(L8), str(lr), "--operator", "mtf", "--scale", "2"]) == 0
    assert main(["upscale", str(lr), str(sr), "--checkpoint", str(priors["satellite"]), "--zero-shot", "ddnm", "--operator", "mtf",
                 "--scale", "2", "--tile", "32", *STEPS]) == 0
    with rasterio.open(lr) as a, rasterio.open(sr) as b:
        assert b.crs == a.crs and b.count == 7 and b.dtypes == a.dtypes
        assert b.transform.almost_equals(a.transform @ Affine.scale(0.5), precision=1e-9)
        assert (b.width, b.height) == (2 * a.width, 2 * a.height)
        x, y = torch.from_numpy(b.read().astype(np.float64))[None], a.read().astype(np.float64)
    ax = operator_by_name("mtf", 2, 2).A(x)[0].numpy()
    # DDNM matches the input exactly; rounding each output pixel to uint16 moves A(x) by at most half a unit
    # (the PSF's weights are positive and sum to 1)
    assert np.abs(ax - y).max() <= 0.5 + 1e-6
    monkeypatch.setattr("domains.satellite.pipeline.available_memory", lambda: 2**20)
    cli_fails(["upscale", str(lr), str(tmp_path / "big.tif"), "--checkpoint", str(priors["satellite"]), "--zero-shot", "ddnm",
               "--operator", "mtf", "--scale", "2"], "lr.tif", "in memory", "GiB")
    assert not (tmp_path / "big.tif").exists()


def test_evaluate_images_zero_shot_records_the_run(priors: dict[str, Path], tmp_path: Path) -> None:
    """metrics.json: per method PSNR, SSIM, consistency; the baselines; the run (prior, method, operator, noise, network calls, seconds)."""
    hr = tmp_path / "hr.png"
    write_image(hr, read_image(PHOTO)[0][:, 100:148, 150:214], 8)
    out = tmp_path / "ev"
    args = ["evaluate", "--checkpoint", str(priors["images"]), "--hr", str(hr), "--out", str(out), "--zero-shot", "ddnm",
            "--operator", "area", "--scale", "2", "--sigma-y", "0.02", "--degradation-seed", "3", *STEPS]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["methods"]) == {"diffsr", "bicubic", "bicubic_projected"}
    for method in m["methods"].values():
        assert set(method) == {"psnr", "ssim", "consistency_psnr"} and all(np.isfinite(v) for v in method.values())
    assert m["prior"] is True and m["sigma_y"] == 0.02 and m["noise_seed"] == 3 and m["noise_std"] == [pytest.approx(0.02)]  # [0, 1] images
    assert m["zero_shot"]["method"] == "ddnm" and m["zero_shot"]["sigma_y"] == 0.02
    assert m["zero_shot"]["operator"] == {"type": "area", "factors": [2, 2]} == m["operator"]
    assert m["network_calls"] == 2 and m["samples"] == 1 and m["seconds"] > 0
    # the noise is seeded: the same seed, the same noisy input (bicubic's scores); another seed, another
    again = tmp_path / "again"
    assert main([*args[:6], str(again), *args[7:]]) == 0
    assert json.loads((again / "metrics.json").read_text())["methods"]["bicubic"] == m["methods"]["bicubic"]
    other = tmp_path / "other"
    assert main([*args[:6], str(other), *args[7:-3], "4", *STEPS]) == 0
    assert json.loads((other / "metrics.json").read_text())["methods"]["bicubic"] != m["methods"]["bicubic"]


def test_evaluate_volume_zero_shot(priors: dict[str, Path], volume: Path, tmp_path: Path) -> None:
    """k-space truncation x2 (a global operator) on the whole volume: DDNM's output explains the input exactly."""
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(priors["mri"]), "--hr", str(volume), "--out", str(out), "--zero-shot", "ddnm",
                 "--operator", "kspace", "--scale", "2", *STEPS]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["methods"]) == {"diffsr", "trilinear", "cubic", "cubic_projected"}
    assert m["methods"]["diffsr"]["consistency_psnr"] > 80 and m["methods"]["cubic_projected"]["consistency_psnr"] > 80
    assert m["operator"] == {"type": "fourier_crop", "factors": [2, 2, 2]} and m["factors"] == [2, 2, 2]
    assert m["prior"] is True and m["zero_shot"]["method"] == "ddnm" and m["network_calls"] == 2 and m["sigma_y"] == 0.0


def test_evaluate_raster_zero_shot_mtf_x4(priors: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(priors["satellite"]), "--hr", str(L8), "--out", str(out), "--zero-shot", "ddnm",
                 "--operator", "mtf", "--scale", "4", "--mtf", "0.25", "--sigma-y", "0.001", "--tile", "64", *STEPS]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"diffsr", "bicubic", "bicubic_projected"} == set(m["methods"])
    assert m["operator"]["type"] == "sensor_mtf" and m["scale"] == 4 and m["zero_shot"]["operator"] == m["operator"]
    assert m["prior"] is True and m["sigma_y"] == 0.001 and m["network_calls"] == 2 and m["seconds"] > 0
    span = raster_normalization(L8).scale  # each band's percentile span maps onto [-1, 1]
    assert m["noise_std"] == pytest.approx([0.001 * 2 * s for s in span]) and len(span) == 7


def test_faces_zero_shot_known_operator(priors: dict[str, Path], tmp_path: Path) -> None:
    """Faces degraded with the KNOWN operator plus noise: the truth's consistency is the noise level, -20 log10(sigma_y)."""
    out = tmp_path / "ev"
    faces = [FACES / "obama_official_256.png", FACES / "biden_official_256.png", FACES / "eileen_collins_nasa_256.png"]
    assert main(["evaluate", "--checkpoint", str(priors["faces"]), "--hr", *map(str, faces), "--out", str(out), "--zero-shot", "ddnm",
                 "--operator", "area", "--scale", "4", "--sigma-y", "0.02", *STEPS]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["methods"]) == {"restored", "bicubic", "bicubic_projected"}
    assert m["degradation"]["type"] == "known_operator" and m["degradation"]["operator"] == {"type": "area", "factors": [4, 4]}
    assert abs(m["truth_consistency_psnr"] - 20 * np.log10(1 / 0.02)) < 1.5  # 3 x 8 x 8 noise draws per face
    assert m["prior"] is True and m["network_calls"] == 2 and (out / "panel.png").is_file()
    # a face crop upscaled zero-shot on the operator's grid
    crop = tmp_path / "face.png"
    write_image(crop, torch.nn.functional.interpolate(torch.from_numpy(read_image(faces[0])[0])[None], size=(8, 8), mode="area")[0].numpy(), 8)
    assert main(["upscale", str(crop), str(tmp_path / "sr.png"), "--checkpoint", str(priors["faces"]), "--zero-shot", "ddnm",
                 "--operator", "area", "--scale", "4", *STEPS]) == 0
    assert read_image(tmp_path / "sr.png")[0].shape == (3, 32, 32)


def test_measurement_noise_is_seeded_per_channel() -> None:
    """std ``sigma_y`` times each channel's span (2 x the normalisation's scale), one generator in call order."""
    from domains.base import MeasurementNoise

    noise = MeasurementNoise(0.05, [1.0, 300.0], seed=7)
    zero = torch.zeros(2, 2, 64, 64)
    a, b = noise(zero), noise(zero)
    std = a.double().transpose(0, 1).flatten(1).std(1)
    assert torch.allclose(std, torch.tensor([0.05, 15.0], dtype=torch.float64), rtol=0.05)  # 8192 draws: 1.6 % error
    assert not torch.equal(a, b) and torch.equal(MeasurementNoise(0.05, [1.0, 300.0], seed=7)(zero), a)
    assert MeasurementNoise(0.0)(zero) is zero


def test_refusals_are_one_line_and_write_nothing(cli_fails: CliFails, priors: dict[str, Path], tmp_path: Path) -> None:
    lr = tmp_path / "lr.png"
    write_image(lr, read_image(PHOTO)[0][:, 100:124, 150:186], 8)
    out = tmp_path / "sr.png"
    ckpt = str(priors["images"])
    # a prior without --zero-shot: upscale and evaluate, in every domain's path
    cli_fails(["upscale", str(lr), str(out), "--checkpoint", ckpt], ckpt, "prior", "--zero-shot")
    cli_fails(["evaluate", "--checkpoint", ckpt, "--hr", str(lr), "--out", str(tmp_path / "ev")], ckpt, "prior")
    cli_fails(["upscale", str(lr), str(out), "--checkpoint", str(priors["faces"])], str(priors["faces"]), "prior")
    # --zero-shot without the operator or the scale; zero-shot options without --zero-shot
    cli_fails(["upscale", str(lr), str(out), "--checkpoint", ckpt, "--zero-shot", "ddnm", "--scale", "2"], ckpt, "--operator")
    cli_fails(["upscale", str(lr), str(out), "--checkpoint", ckpt, "--zero-shot", "ddnm", "--operator", "area"], ckpt, "--scale")
    cli_fails(["upscale", str(lr), str(out), "--checkpoint", ckpt, "--operator", "area"], "--operator", "--zero-shot")
    cli_fails(["upscale", str(lr), str(out), "--checkpoint", ckpt, "--sigma-y", "0.1"], "--sigma-y", "--zero-shot")
    cli_fails(["evaluate", "--checkpoint", ckpt, "--hr", str(lr), "--out", str(tmp_path / "ev"), "--scale", "2"], "--scale", "--zero-shot")
    cli_fails(["upscale", str(lr), str(out), "--checkpoint", ckpt, "--zero-shot", "ddnm", "--operator", "area", "--scale", "2", "--sigma-y", "-1"], "--sigma-y")
    # factors that do not fit the model's axes
    cli_fails(["upscale", str(lr), str(out), "--checkpoint", ckpt, "--zero-shot", "ddnm", "--operator", "area", "--scale", "1,1,4"], ckpt, "factors")
    assert not out.exists() and not (tmp_path / "ev").exists()


def test_conditional_checkpoints_with_zero_shot(cli_fails: CliFails, tmp_path: Path) -> None:
    """A residual-space checkpoint is refused (its space uses the input); a pixel-space one runs with its null condition."""
    from test_satellite_pipeline import make_checkpoint

    from toolkit.operators import AreaDownsample

    lr = tmp_path / "lr.png"
    write_image(lr, read_image(PHOTO)[0][:, 100:124, 150:186], 16)
    residual = make_checkpoint(tmp_path / "residual.ckpt", 3, AreaDownsample(2), Normalization())
    cli_fails(["upscale", str(lr), str(tmp_path / "a.png"), "--checkpoint", str(residual), "--zero-shot", "ddnm", "--operator", "area", "--scale", "2"],
              str(residual), "state space", "prior")
    assert not (tmp_path / "a.png").exists()
    den = UNetDenoiser(2, 3, num_channels=[8, 16], attention_levels=[False, False], norm_num_groups=8, num_head_channels=8, mid_attention=False)
    module = DiffusionSR(den, AreaDownsample(2), PixelSpace(), GaussianProcess(parameterization="x0"), sampling=SamplerOptions(steps=2))
    pixel = tmp_path / "pixel.ckpt"
    torch.save({"diffsr": module.inference_spec(), "state_dict": module.state_dict()}, pixel)
    out = tmp_path / "b.png"
    assert main(["upscale", str(lr), str(out), "--checkpoint", str(pixel), "--zero-shot", "ddnm", "--operator", "area", "--scale", "4"]) == 0
    x = torch.from_numpy(read_image(out)[0])[None].double()
    assert x.shape == (1, 3, 96, 144)
    op = AreaDownsample(4)
    clipped = op.A(((x <= 0) | (x >= 1)).double()) > 0
    y = torch.from_numpy(read_image(lr)[0])[None].double()
    assert (op.A(x) - y).abs()[~clipped].max() <= 0.5 / 65535 + 1e-6


def test_slicewise_prior_within_its_planes(cli_fails: CliFails, volume: Path, tmp_path: Path) -> None:
    """A slice-wise 2D prior (planes with their neighbours as channels) takes factors within its planes only."""
    vol = torch.from_numpy(np.asarray(nib.load(str(volume)).dataobj, dtype=np.float32))
    spec = intensity_spec(0.5, 99.5, 0.5)
    norm = volume_normalization(vol.numpy(), spec)
    planes = ((vol - norm.offset[0]) / norm.scale[0]).permute(1, 0, 2)[8:11, :30][None]  # (1, 3 neighbours, 30, 24)
    ckpt = _train_prior(tmp_path / "prior2d.ckpt", [planes], Normalization(0.0, 1.0),
                        {"kind": "mri", "intensity": spec, "slicewise": {"neighbours": 1, "plane_axes": [0, 1]}}, data_range=2.0, steps=1)
    lr, sr = tmp_path / "lr.nii.gz", tmp_path / "sr.nii.gz"
    assert main(["degrade", str(volume), str(lr), "--operator", "slice", "--scale", "1,1,4"]) == 0
    assert main(["upscale", str(lr), str(sr), "--checkpoint", str(ckpt), "--zero-shot", "ddnm", "--operator", "slice", "--scale", "1,1,4", *STEPS]) == 0
    x = torch.from_numpy(np.asarray(nib.load(str(sr)).dataobj, dtype=np.float64))[None, None]
    y = np.asarray(nib.load(str(lr)).dataobj, dtype=np.float64)
    assert x.shape[2:] == nib.load(str(volume)).shape
    # both plane orientations satisfy A x = y, so their mean does
    assert np.abs(operator_by_name("slice", (1, 1, 4), 3).A(x)[0, 0].numpy() - y).max() <= 1e-5 * np.abs(y).max()
    cli_fails(["upscale", str(lr), str(tmp_path / "iso.nii.gz"), "--checkpoint", str(ckpt), "--zero-shot", "ddnm", "--operator", "area",
               "--scale", "2"], str(ckpt), "slice-wise", "3D prior")
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--hr", str(volume), "--out", str(out), "--zero-shot", "ddnm", "--operator", "slice",
                 "--scale", "1,1,4", *STEPS]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["operator"]["type"] == "slice_average" and m["operator"]["axis"] in (2, -1) and m["factors"] == [1, 1, 4]
    assert m["methods"]["diffsr"]["consistency_psnr"] > 80 and m["prior"] is True


def test_consistency_option_reaches_the_sampler(priors: dict[str, Path], tmp_path: Path) -> None:
    """``--consistency none|every_step`` reaches the sampling options the run records; an unknown value is refused."""
    lr = tmp_path / "lr.png"
    write_image(lr, read_image(PHOTO)[0][:, 100:124, 150:186], 16)
    for mode in ("none", "every_step"):
        out = tmp_path / f"{mode}.json"
        assert main([
            "evaluate", "--checkpoint", str(priors["images"]), "--hr", str(lr), "--out", str(tmp_path / mode),
            "--zero-shot", "ddnm", "--operator", "area", "--scale", "2", "--consistency", mode, *STEPS,
        ]) == 0  # fmt: skip
        out.write_text((tmp_path / mode / "metrics.json").read_text())
        assert json.loads(out.read_text())["sampler"]["consistency"] == mode
    assert main(["upscale", str(lr), str(tmp_path / "x.png"), "--checkpoint", str(priors["images"]), "--consistency", "always"]) == 2
    assert not (tmp_path / "x.png").exists()
