"""Degrade then upscale every shipped raster and check the georeferencing with rasterio; bad input leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from domains.satellite.io import RasterFileError
from domains.satellite.normalize import raster_normalization
from domains.satellite.operators import SensorMTFDownsample
from domains.satellite.pipeline import degrade_raster, evaluate_rasters, upscale_raster
from toolkit.checkpoint import SRModel, load_model
from toolkit.denoiser import UNetDenoiser
from toolkit.engine import SamplerOptions
from toolkit.lightning import DiffusionSR
from toolkit.normalization import Normalization
from toolkit.operators import AreaDownsample, Operator
from toolkit.process import GaussianProcess
from toolkit.spaces import ResidualSpace
from toolkit.tiling import Tiling

DATA = Path(__file__).resolve().parents[1] / "data" / "satellite"
L8 = DATA / "landsat8_ms_30m_7band_128.tif"
L8_SCENE = DATA / "landsat8_ms_30m_7band_scene.tif"
PAN = DATA / "landsat8_pan_15m_256.tif"
L7 = DATA / "landsat7_rgb_byte_256.tif"
TENTH = DATA / "rasterio_rgb-byte-tenth.tif"
TILING = Tiling(64, 16, 8)


def make_checkpoint(path: Path, channels: int, operator: Operator, normalization: Normalization, seed: int = 0) -> Path:
    """A tiny untrained model (weights perturbed so its output is not plain interpolation) saved as a diffsr checkpoint."""
    den = UNetDenoiser(2, channels, num_channels=[8, 16, 16], attention_levels=[False, False, False], norm_num_groups=8, num_head_channels=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    module = DiffusionSR(
        den, operator, ResidualSpace(0.25), GaussianProcess(parameterization="x0"), normalization,
        sampling=SamplerOptions(steps=2, t_start=200, start="regression"),
    )
    module.ema.load_state_dict(den.state_dict())
    torch.save({"diffsr": module.inference_spec(), "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SRModel]:
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "l8_mtf": load_model(make_checkpoint(d / "l8.ckpt", 7, SensorMTFDownsample(2), raster_normalization(L8))),
        "l8_b234": load_model(make_checkpoint(d / "b234.ckpt", 3, AreaDownsample(2), raster_normalization(L8, bands=[2, 3, 4]))),
        "pan": load_model(make_checkpoint(d / "pan.ckpt", 1, AreaDownsample(2), raster_normalization(PAN))),
        "rgb": load_model(make_checkpoint(d / "rgb.ckpt", 3, AreaDownsample(2), raster_normalization(L7))),
    }


def _no_leftovers(folder: Path, allowed: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} <= allowed, sorted(p.name for p in folder.iterdir())


def _check_geometry(src: Path, dst: Path, factor: int) -> None:
    """``dst`` lies on the grid ``factor`` times finer than ``src``, with everything else kept."""
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        assert b.crs == a.crs
        assert b.transform.almost_equals(a.transform @ Affine.scale(1 / factor), precision=1e-9)
        assert (b.width, b.height) == (a.width * factor, a.height * factor)
        px = abs(b.transform.a) + abs(b.transform.b)
        assert np.allclose(tuple(b.bounds), tuple(a.bounds), atol=1e-6 * px, rtol=0)
        assert (b.count, b.dtypes, b.nodata, b.descriptions) == (a.count, a.dtypes, a.nodata, a.descriptions)
        assert b.block_shapes[0] == (256, 256) and b.compression.value == "DEFLATE"  # 256 x 256 tiles
        if a.nodata is not None:
            lr_valid = a.dataset_mask() > 0
            hr_valid = b.dataset_mask() > 0
            np.testing.assert_array_equal(hr_valid, np.repeat(np.repeat(lr_valid, factor, 0), factor, 1))


@pytest.mark.parametrize(
    ("src", "model_key", "operator"),
    [(L8, "l8_mtf", "mtf"), (PAN, "pan", "area"), (L7, "rgb", "area"), (TENTH, "rgb", "area")],
    ids=lambda v: v.name if isinstance(v, Path) else str(v),
)
def test_degrade_then_upscale_every_raster(tmp_path: Path, models: dict[str, SRModel], src: Path, model_key: str, operator: str) -> None:
    lr = degrade_raster(src, tmp_path / "lr.tif", 2, operator)  # type: ignore[arg-type]
    with rasterio.open(src) as a, rasterio.open(lr) as b:
        assert b.crs == a.crs and b.transform == a.transform @ Affine.scale(2)
        assert (b.width, b.height) == (a.width // 2, a.height // 2)
        assert (b.count, b.dtypes, b.nodata, b.descriptions) == (a.count, a.dtypes, a.nodata, a.descriptions)
    sr = upscale_raster(lr, tmp_path / "sr.tif", models[model_key], tiling=TILING, progress=False)
    _check_geometry(lr, sr, 2)
    with rasterio.open(sr) as ds, rasterio.open(src) as ref:
        out = ds.read(masked=True).astype(np.float64)
        truth = ref.read(window=((0, ds.height), (0, ds.width)), masked=True).astype(np.float64)
    err = np.abs(out - truth).mean() / (truth.max() - truth.min())
    assert err < 0.1  # an untrained tiny model is about bicubic: the values are in place
    _no_leftovers(tmp_path, {"lr.tif", "sr.tif"})


def test_degrade_the_whole_scene_window_by_window(tmp_path: Path) -> None:
    whole = degrade_raster(L8_SCENE, tmp_path / "whole.tif", 2, "mtf", window=1024)
    windowed = degrade_raster(L8_SCENE, tmp_path / "windows.tif", 2, "mtf", window=96)
    with rasterio.open(whole) as a, rasterio.open(windowed) as b, rasterio.open(L8_SCENE) as s:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.transform == s.transform @ Affine.scale(2) and (a.height, a.width) == (301, 313)
        x = torch.from_numpy(s.read(window=((0, 602), (0, 626))).astype(np.float64))[None]
    expected = np.clip(np.round(SensorMTFDownsample(2).A(x)[0].numpy()), 0, 65535)
    with rasterio.open(whole) as a:
        np.testing.assert_array_equal(a.read(), expected.astype(np.uint16))


def test_rotated_raster_keeps_its_rotation(tmp_path: Path, models: dict[str, SRModel]) -> None:
    rotated = tmp_path / "rotated.tif"
    with rasterio.open(L8) as ds:
        profile = ds.profile.copy()
        data = ds.read()
        descriptions = ds.descriptions
    transform = Affine.translation(461475.0, 3394545.0) @ Affine.rotation(25.0) @ Affine.scale(30.0, -30.0)
    profile.update(transform=transform)
    with rasterio.open(rotated, "w", **profile) as ds:
        ds.write(data)
        for i, d in enumerate(descriptions, 1):
            ds.set_band_description(i, d)
    lr = degrade_raster(rotated, tmp_path / "lr.tif", 2, "mtf")
    sr = upscale_raster(lr, tmp_path / "sr.tif", models["l8_mtf"], tiling=TILING, progress=False)
    _check_geometry(lr, sr, 2)
    with rasterio.open(sr) as ds:
        t = ds.transform
    assert np.degrees(np.arctan2(t.d, t.a)) == pytest.approx(25.0, abs=1e-9)
    assert np.hypot(t.a, t.d) == pytest.approx(30.0, rel=1e-12)  # 60 m LR pixels -> 30 m
    assert t.c == pytest.approx(461475.0) and t.f == pytest.approx(3394545.0)


def test_band_selection(tmp_path: Path, models: dict[str, SRModel]) -> None:
    lr = degrade_raster(L8, tmp_path / "lr.tif", 2, "area", bands=[2, 3, 4])
    with rasterio.open(lr) as ds:
        assert ds.count == 3 and ds.descriptions == ("B2", "B3", "B4")
    lr7 = degrade_raster(L8, tmp_path / "lr7.tif", 2, "area")
    sr = upscale_raster(lr7, tmp_path / "sr.tif", models["l8_b234"], bands=[2, 3, 4], tiling=TILING, progress=False)
    with rasterio.open(sr) as ds:
        assert ds.count == 3 and ds.descriptions == ("B2", "B3", "B4") and ds.dtypes[0] == "uint16"


def test_disk_state_gives_the_same_output(tmp_path: Path, models: dict[str, SRModel]) -> None:
    lr = degrade_raster(TENTH, tmp_path / "lr.tif", 2, "area")
    a = upscale_raster(lr, tmp_path / "mem.tif", models["rgb"], tiling=TILING, progress=False, state="memory")
    b = upscale_raster(lr, tmp_path / "disk.tif", models["rgb"], tiling=TILING, progress=False, state="disk", workdir=tmp_path)
    with rasterio.open(a) as x, rasterio.open(b) as y:
        np.testing.assert_array_equal(x.read(), y.read())
    _no_leftovers(tmp_path, {"lr.tif", "mem.tif", "disk.tif"})


def test_uncertainty_map(tmp_path: Path, models: dict[str, SRModel]) -> None:
    lr = degrade_raster(TENTH, tmp_path / "lr.tif", 2, "area")
    model = models["rgb"]
    opts = model.options.updated(samples=2)
    sr = upscale_raster(lr, tmp_path / "sr.tif", model, opts, tiling=TILING, progress=False, uncertainty=tmp_path / "std.tif")
    _check_geometry(lr, sr, 2)
    with rasterio.open(tmp_path / "std.tif") as ds, rasterio.open(sr) as out:
        std = ds.read()
        assert ds.dtypes[0] == "float32" and ds.transform == out.transform and ds.crs == out.crs and np.isnan(ds.nodata)
        invalid = out.dataset_mask() == 0
    assert np.isnan(std[:, invalid]).all() and (std[:, ~invalid] >= 0).all() and std[:, ~invalid].max() > 0
    with pytest.raises(ValueError, match="2 or more samples"):
        upscale_raster(lr, tmp_path / "sr2.tif", model, tiling=TILING, progress=False, uncertainty=tmp_path / "std2.tif")
    _no_leftovers(tmp_path, {"lr.tif", "sr.tif", "std.tif"})


# --- bad input: a clear error and no output file ----------------------------------------------------------
def test_band_count_mismatch(tmp_path: Path, models: dict[str, SRModel]) -> None:
    with pytest.raises(RasterFileError, match=r"has 7 band\(s\) but the checkpoint was trained on 3 \(select bands"):
        upscale_raster(L8, tmp_path / "out.tif", models["l8_b234"], tiling=TILING, progress=False)
    with pytest.raises(RasterFileError, match=r"has 3 band\(s\) but the checkpoint was trained on 7"):
        upscale_raster(L7, tmp_path / "out.tif", models["l8_mtf"], tiling=TILING, progress=False)
    _no_leftovers(tmp_path, set())


def test_no_crs_stays_without_georeferencing(tmp_path: Path, models: dict[str, SRModel]) -> None:
    """A raster without CRS or geotransform is still a raster: processed in pixels, written without either."""
    src = tmp_path / "nocrs.tif"
    with rasterio.open(src, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8") as ds:
        ds.write(np.full((3, 32, 32), 90, dtype=np.uint8))
    upscale_raster(src, tmp_path / "out.tif", models["rgb"], tiling=TILING, progress=False)
    degrade_raster(src, tmp_path / "lr.tif", 2)
    for name, size in (("out.tif", 64), ("lr.tif", 16)):
        with rasterio.open(tmp_path / name) as ds:
            assert ds.crs is None and ds.transform.is_identity and (ds.width, ds.height) == (size, size)
    _no_leftovers(tmp_path, {"nocrs.tif", "out.tif", "lr.tif"})


def test_corrupt_file(tmp_path: Path, models: dict[str, SRModel]) -> None:
    src = tmp_path / "corrupt.tif"
    raw = L7.read_bytes()
    src.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(RasterFileError, match="corrupt.tif"):
        upscale_raster(src, tmp_path / "out.tif", models["rgb"], tiling=TILING, progress=False)
    with pytest.raises(RasterFileError, match="corrupt.tif"):
        degrade_raster(src, tmp_path / "lr.tif", 2)
    _no_leftovers(tmp_path, {"corrupt.tif"})


def test_all_nodata(tmp_path: Path, models: dict[str, SRModel]) -> None:
    src = tmp_path / "empty.tif"
    shutil.copy(L7, src)
    with rasterio.open(src, "r+") as ds:
        ds.write(np.zeros((3, 256, 256), dtype=np.uint8))
    with pytest.raises(RasterFileError, match="every pixel is nodata"):
        upscale_raster(src, tmp_path / "out.tif", models["rgb"], tiling=TILING, progress=False)
    with pytest.raises(RasterFileError, match="every pixel is nodata"):
        degrade_raster(src, tmp_path / "lr.tif", 2)
    _no_leftovers(tmp_path, {"empty.tif"})


def test_existing_output_and_failure_midway(tmp_path: Path, models: dict[str, SRModel], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        upscale_raster(L7, out, models["rgb"], tiling=TILING, progress=False)
    with pytest.raises(FileExistsError):
        degrade_raster(L7, out, 2)
    assert out.read_bytes() == b"keep me"
    model = models["rgb"]

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("network failed")

    monkeypatch.setattr(model.denoiser, "forward", broken)
    with pytest.raises(RuntimeError, match="network failed"):
        upscale_raster(L7, out, model, tiling=TILING, progress=False, overwrite=True)
    assert out.read_bytes() == b"keep me"
    _no_leftovers(tmp_path, {"out.tif"})


# --- evaluation ----------------------------------------------------------------------------------------------
def test_evaluate_rasters_writes_metrics_and_report(tmp_path: Path, models: dict[str, SRModel]) -> None:
    report = evaluate_rasters(models["l8_mtf"], [L8], tmp_path / "eval", tiling=TILING)
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["methods"] == report["methods"] and m["scale"] == 2 and m["operator"]["type"] == "sensor_mtf"
    f = m["files"][0]
    for method in ("diffsr", "bicubic", "bicubic_projected"):
        assert len(f[method]["psnr_per_band"]) == 7 and len(f[method]["ssim_per_band"]) == 7
        assert {"psnr", "ssim", "sam_deg", "ergas", "consistency_psnr"} <= set(f[method])
    # projection onto A x = y makes the input consistent; bicubic alone is not
    assert f["bicubic_projected"]["consistency_psnr"] > f["bicubic"]["consistency_psnr"] + 10
    assert f["diffsr"]["psnr"] > 20 and 0 < f["diffsr"]["sam_deg"] < 10
    assert m["data_range_per_band"] == pytest.approx([2 * s for s in models["l8_mtf"].normalization.scale])
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "SAM (deg)" in html and "B7" in html
    assert (tmp_path / "eval" / "crops" / "000_diffsr.png").is_file()


def test_evaluate_rasters_with_nodata(tmp_path: Path, models: dict[str, SRModel]) -> None:
    report = evaluate_rasters(models["rgb"], [TENTH], tmp_path / "eval", tiling=TILING, report=False)
    f = report["files"][0]
    assert 0.4 < f["valid_fraction"] < 0.7  # nodata and what it reaches are left out
    assert np.isfinite(f["diffsr"]["psnr"]) and np.isfinite(f["diffsr"]["sam_deg"])
