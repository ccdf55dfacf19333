"""The command line routes GeoTIFFs and faces to their domains: georeferencing kept, faces restored, errors in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import rasterio
from test_satellite_pipeline import make_checkpoint

from domains.images.io import read_image
from domains.satellite.normalize import raster_normalization
from domains.satellite.operators import SensorMTFDownsample
from pipelines.cli import main

if TYPE_CHECKING:
    from conftest import CliFails

ROOT = Path(__file__).resolve().parents[1]
L8 = ROOT / "data" / "satellite" / "landsat8_ms_30m_7band_128.tif"
FACES = ROOT / "data" / "faces"


@pytest.fixture(scope="module")
def sat_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("sat") / "l8.ckpt", 7, SensorMTFDownsample(2), raster_normalization(L8))


def test_geotiff_degrade_upscale_evaluate(cli_fails: CliFails, sat_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lr, sr = tmp_path / "lr.tif", tmp_path / "sr.tif"
    assert main(["degrade", str(L8), str(lr), "--scale", "2", "--operator", "mtf"]) == 0
    assert main(["upscale", str(lr), str(sr), "--checkpoint", str(sat_ckpt), "--steps", "2", "--samples", "1", "--tile", "32"]) == 0
    with rasterio.open(L8) as a, rasterio.open(sr) as b:
        assert b.crs == a.crs and b.count == 7 and b.dtypes == a.dtypes
        assert b.transform.almost_equals(a.transform)  # degrade halves the grid, upscale restores it
        assert (b.width, b.height) == (a.width, a.height)
        assert np.allclose(b.bounds, a.bounds, atol=1e-6 * abs(a.transform.a))
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(sat_ckpt), "--hr", str(L8), "--out", str(out), "--steps", "2", "--samples", "1", "--tile", "32"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert {"diffsr", "bicubic"} <= set(report["methods"])
    # a 3-band selection against a 7-band checkpoint: one line, no output
    cli_fails(["upscale", str(lr), str(tmp_path / "bad.tif"), "--checkpoint", str(sat_ckpt), "--bands", "2,3,4"], "band")
    assert not (tmp_path / "bad.tif").exists()


def test_faces_through_the_cli(cli_fails: CliFails, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.chdir(tmp_path)
    main([
        "fit", "--config", str(ROOT / "configs" / "faces" / "restore_128.yaml"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2", "--trainer.max_time", "null",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu", "--trainer.limit_val_batches", "0",
        "--model.init_args.denoiser.init_args.num_channels=[8, 16]",
        "--model.init_args.denoiser.init_args.attention_levels=[false, false]",
        "--model.init_args.denoiser.init_args.norm_num_groups=8",
        "--model.init_args.denoiser.init_args.num_head_channels=8",
        "--data.init_args.root", str(FACES / "congress_portraits"),
        "--data.init_args.size", "32", "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "4",
    ])
    ckpt = tmp_path / "last.ckpt"
    face = FACES / "obama_official_256.png"
    deg = tmp_path / "deg.png"
    assert main(["degrade", str(face), str(deg), "--faces", "--seed", "3", "--size", "32"]) == 0
    out = tmp_path / "restored.png"
    assert main(["upscale", str(deg), str(out), "--checkpoint", str(ckpt), "--steps", "2"]) == 0
    assert read_image(out)[0].shape[0] == 3
    photo = ROOT / "data" / "natural" / "train" / "skimage_astronaut.png"
    whole = tmp_path / "whole.png"
    assert main(["upscale", str(photo), str(whole), "--checkpoint", str(ckpt), "--whole-photo", "--scale", "2", "--steps", "1"]) == 0
    assert read_image(whole)[0].shape == (3, 1024, 1024)
    ev = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--hr", str(face), str(FACES / "biden_official_256.png"), "--out", str(ev), "--steps", "1", "--degradation-seed", "2"]) == 0
    assert set(json.loads((ev / "metrics.json").read_text())["methods"]) == {"restored", "bicubic"}
    # no face in whole-photo mode: one line, nothing written
    brick = ROOT / "data" / "natural" / "train" / "skimage_brick.png"
    cli_fails(["upscale", str(brick), str(tmp_path / "none.png"), "--checkpoint", str(ckpt), "--whole-photo"], "brick")
    assert not (tmp_path / "none.png").exists()
