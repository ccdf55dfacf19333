"""Rasters under bad input (issue 12): NaN/Inf pixels are missing data, a non-finite output is an error, nothing is left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from test_satellite_pipeline import make_checkpoint

from domains.satellite.data import RasterDataModule
from domains.satellite.io import NonFiniteWarning, RasterFileError
from domains.satellite.normalize import raster_normalization
from domains.satellite.pipeline import upscale_raster
from domains.satellite.plugin import DOMAIN
from pipelines.cli import main
from toolkit.checkpoint import load_model
from toolkit.normalization import Normalization
from toolkit.operators import AreaDownsample
from toolkit.streaming import OWNER_FILE, STATE_PREFIX, remove_stale_state, stream_upscale

if TYPE_CHECKING:
    from conftest import CliFails

NAN_AT = (5, 7)  # a NaN pixel, in a float32 raster without nodata
FAST = ["--steps", "2", "--samples", "1", "--tile", "0"]


def _raster(path: Path, data: np.ndarray, crs: str | None = "EPSG:32616", **profile: object) -> Path:
    transform = Affine(30, 0, 500000, 0, -30, 4000000) if crs else Affine.identity()
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=str(data.dtype), crs=crs, transform=transform, **profile) as ds:
        ds.write(data)
    return path


def _smooth(bands: int = 2, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    return np.stack([100 + 20 * np.sin(xx / (4 + b)) + 10 * np.cos(yy / 5) for b in range(bands)]).astype(np.float32)


@pytest.fixture
def nan_tif(tmp_path: Path) -> Path:
    data = _smooth()
    data[:, NAN_AT[0], NAN_AT[1]] = np.nan
    return _raster(tmp_path / "nan.tif", data)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "f32.ckpt", 2, AreaDownsample(2), Normalization([100.0] * 2, [30.0] * 2))


def _leftovers(folder: Path, allowed: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} <= allowed, sorted(p.name for p in folder.iterdir())


def test_nan_pixel_is_nodata_through_degrade_upscale_evaluate(nan_tif: Path, ckpt: Path, tmp_path: Path) -> None:
    lr, sr, ev = tmp_path / "lr.tif", tmp_path / "sr.tif", tmp_path / "ev"
    with pytest.warns(NonFiniteWarning, match="nan.tif: 1 non-finite pixels treated as nodata"):
        assert main(["degrade", str(nan_tif), str(lr), "--scale", "2"]) == 0
    with rasterio.open(lr) as ds:
        y = ds.read()
    missing = ~np.isfinite(y).all(0)
    assert missing.sum() == 1 and missing[NAN_AT[0] // 2, NAN_AT[1] // 2]  # the block holding the NaN, only

    assert main(["upscale", str(nan_tif), str(sr), "--checkpoint", str(ckpt), *FAST]) == 0
    with rasterio.open(sr) as ds:
        x = ds.read()
    missing = ~np.isfinite(x).all(0)
    block = np.zeros_like(missing)
    block[2 * NAN_AT[0] : 2 * NAN_AT[0] + 2, 2 * NAN_AT[1] : 2 * NAN_AT[1] + 2] = True
    assert (missing == block).all()  # NaN where the input was, nowhere else
    assert np.abs(x[:, ~missing] - 100).max() < 80 and x[:, ~missing].std() > 1  # real values, not zeros

    assert main(["evaluate", "--checkpoint", str(ckpt), "--hr", str(nan_tif), "--out", str(ev), *FAST]) == 0
    report = json.loads((ev / "metrics.json").read_text())
    assert all(np.isfinite(v) for m in report["methods"].values() for v in m.values())
    assert report["files"][0]["valid_fraction"] < 1


def test_training_statistics_ignore_non_finite(nan_tif: Path, tmp_path: Path) -> None:
    clean = _raster(tmp_path / "clean.tif", _smooth())
    with pytest.warns(NonFiniteWarning, match="1 non-finite pixels"):
        norm = raster_normalization(nan_tif), RasterDataModule(str(nan_tif), grid=(2, 2), crop_size=8).compute_normalization()
    assert all(np.isfinite(n.offset).all() and np.isfinite(n.scale).all() for n in norm)
    assert np.allclose(norm[0].offset, raster_normalization(clean).offset, atol=0.5)
    data = _smooth()
    data[1] = np.inf
    empty = _raster(tmp_path / "inf_band.tif", data)
    with pytest.raises(RasterFileError, match=r"inf_band.tif: band\(s\) \[2\] hold no finite value"):
        RasterDataModule(str(empty), grid=(2, 2), crop_size=8).compute_normalization()


def test_non_finite_checkpoint_is_an_error_not_a_file(cli_fails: CliFails, nan_tif: Path, tmp_path: Path) -> None:
    src = _raster(tmp_path / "in.tif", _smooth())
    bad_norm = make_checkpoint(tmp_path / "norm.ckpt", 2, AreaDownsample(2), Normalization([float("nan")] * 2, [30.0] * 2))
    cli_fails(["upscale", str(src), str(tmp_path / "a.tif"), "--checkpoint", str(bad_norm), *FAST], "normali")  # refused on loading or before sampling
    bad_weights = make_checkpoint(tmp_path / "w.ckpt", 2, AreaDownsample(2), Normalization([100.0] * 2, [30.0] * 2))
    blob = torch.load(bad_weights, weights_only=True)  # refused on loading, or found in the output
    for v in blob["state_dict"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    torch.save(blob, bad_weights)
    cli_fails(["upscale", str(src), str(tmp_path / "b.tif"), "--checkpoint", str(bad_weights), *FAST], "weights")
    _leftovers(tmp_path, {"in.tif", "nan.tif", "norm.ckpt", "w.ckpt"})
    # weights that diverged after loading: found in the output; the on-disk state and the uncertainty map's temporary go too
    work = tmp_path / "work"
    work.mkdir()
    model = load_model(make_checkpoint(work / "ok.ckpt", 2, AreaDownsample(2), Normalization([100.0] * 2, [30.0] * 2)))
    (work / "ok.ckpt").unlink()
    with torch.no_grad():
        for w in model.denoiser.parameters():
            w.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"non-finite output \(output at .*weights hold NaN or Inf"):
        upscale_raster(src, tmp_path / "c.tif", model, replace(model.options, samples=2), progress=False,
                       workdir=work, state="disk", uncertainty=tmp_path / "c_std.tif")
    _leftovers(tmp_path, {"in.tif", "nan.tif", "norm.ckpt", "w.ckpt", "work"})
    _leftovers(work, set())


def test_non_finite_guidance_or_normalisation_is_refused_before_sampling(ckpt: Path) -> None:
    model = load_model(ckpt)
    y = _smooth(size=8)

    def run() -> None:
        stream_upscale(model, lambda r: y[(slice(None), *r)], y.shape[1:], lambda r, v: None, options)

    options = replace(model.options, guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="non-finite output .*guidance scale is nan"):
        run()
    options, model.normalization = model.options, Normalization([100.0, float("inf")], [30.0, 30.0])
    with pytest.raises(ValueError, match="non-finite output .*normalisation holds NaN or Inf"):
        run()


def test_stale_state_folder_of_a_killed_run_is_removed(ckpt: Path, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    for name, owner in (("dead", f"{host} {dead.pid}"), ("live", f"{host} {os.getpid()}"), ("other", f"elsewhere {dead.pid}"), ("bare", None)):
        (tmp_path / f"{STATE_PREFIX}{name}").mkdir()
        if owner:
            (tmp_path / f"{STATE_PREFIX}{name}" / OWNER_FILE).write_text(owner)
    model = load_model(ckpt)
    y = _smooth(size=8)
    seen: set[str] = set()

    def write(region: tuple[slice, ...], value: np.ndarray) -> None:  # the run's own folder names this process
        seen.update(p.parent.name for p in tmp_path.glob(f"{STATE_PREFIX}*/{OWNER_FILE}") if p.read_text() == f"{host} {os.getpid()}\n")

    stream_upscale(model, lambda r: y[(slice(None), *r)], y.shape[1:], write, model.options, workdir=tmp_path, state="disk")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{STATE_PREFIX}{n}" for n in ("bare", "live", "other")]
    assert len(seen - {f"{STATE_PREFIX}live"}) == 1  # the run's own, removed after it
    assert remove_stale_state(tmp_path) == []


def test_tiff_without_crs_goes_to_the_raster_domain(tmp_path: Path) -> None:
    seven = _raster(tmp_path / "seven.tif", (_smooth(7) * 50).astype(np.uint16), crs=None)
    assert main(["degrade", str(seven), str(tmp_path / "lr.tif"), "--scale", "2"]) == 0
    with rasterio.open(tmp_path / "lr.tif") as ds:
        assert (ds.count, ds.width, ds.dtypes[0], ds.crs) == (7, 16, "uint16", None) and ds.transform.is_identity
    assert DOMAIN.accepts(_raster(tmp_path / "f.tif", _smooth(1), crs=None))  # float: no picture
    assert not DOMAIN.accepts(_raster(tmp_path / "rgb16.tif", (_smooth(3) * 50).astype(np.uint16), crs=None))  # a 16-bit photo


def test_evaluate_checks_every_raster_before_any_work(cli_fails: CliFails, nan_tif: Path, ckpt: Path, tmp_path: Path) -> None:
    tiny = _raster(tmp_path / "tiny.tif", _smooth(size=4))
    for bad, needle in ((tmp_path / "missing.tif", "missing.tif: file not found"), (tiny, "tiny.tif: raster 4x4 is too small")):
        cli_fails(["evaluate", "--checkpoint", str(ckpt), "--hr", str(nan_tif), str(bad), "--out", str(tmp_path / "ev"), *FAST], needle)
        assert not (tmp_path / "ev").exists()
