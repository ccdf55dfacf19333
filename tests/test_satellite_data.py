"""RasterDataModule on the shipped scene: spatially disjoint split with a gap, nodata skipping, seeded windows; configs through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from domains.satellite.data import RasterDataModule, split_blocks
from domains.satellite.io import RasterFileError, read_raster
from domains.satellite.normalize import robust_band_normalization
from pipelines.cli import lightning_main, main
from toolkit.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "satellite"
SCENE = DATA / "landsat8_ms_30m_7band_scene.tif"
TENTH = DATA / "rasterio_rgb-byte-tenth.tif"


def _dm(**kwargs: object) -> RasterDataModule:
    args: dict[str, object] = {"train": str(SCENE), "grid": (4, 4), "val_blocks": [(3, 1)], "gap": 8, "crop_size": 32,
                               "samples_per_epoch": 16, "batch_size": 4}
    args.update(kwargs)
    dm = RasterDataModule(**args)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def test_split_blocks_partition_the_raster() -> None:
    blocks = split_blocks((603, 627), (4, 4))
    assert blocks[(3, 1)] == (452, 603, 157, 314)
    cover = np.zeros((603, 627), dtype=int)
    for r0, r1, c0, c1 in blocks.values():
        cover[r0:r1, c0:c1] += 1
    assert (cover == 1).all()


def test_training_windows_never_touch_the_validation_block() -> None:
    dm = _dm(val_crop_size=160)
    scene = dm.scenes[0]  # type: ignore[index]
    (r0, r1, c0, c1), = scene.val_rects
    c, g = dm.crop_size, dm.gap
    i, j = scene.positions[:, 0], scene.positions[:, 1]
    apart = (i + c <= r0 - g) | (i >= r1 + g) | (j + c <= c0 - g) | (j >= c1 + g)
    assert apart.all()
    # and the positions are all there is: every window that keeps the gap is allowed
    n_rows, n_cols = 603 - c + 1, 627 - c + 1
    ii, jj = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    ok = (ii + c <= r0 - g) | (ii >= r1 + g) | (jj + c <= c0 - g) | (jj >= c1 + g)
    assert len(scene.positions) == int(ok.sum())
    # validation windows lie inside the held-back block
    for _, vi, vj, h, w in dm.validation_windows():
        assert r0 <= vi and vi + h <= r1 and c0 <= vj and vj + w <= c1 and h % 8 == 0 and w % 8 == 0
    assert dm.val_set is not None and len(dm.val_set) == 1 and dm.val_set[0]["hr"].shape == (7, 144, 152)
    assert [w[3:] for w in _dm(val_crop_size=128).validation_windows()] == [(72, 72)] * 4


def test_items_are_seeded_and_in_data_units() -> None:
    dm = _dm()
    a, b = dm.train_set[3]["hr"], dm.train_set[3]["hr"]  # type: ignore[index]
    assert torch.equal(a, b) and a.shape == (7, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, dm.train_set[4]["hr"])  # type: ignore[index]
    assert 4000 < float(a.mean()) < 30000  # uint16 DN, not rescaled
    batch = next(iter(dm.train_dataloader()))
    assert batch["hr"].shape == (4, 7, 32, 32)
    assert torch.equal(_dm().train_set[3]["hr"], a)  # type: ignore[index]


def test_normalization_from_the_training_area_only() -> None:
    dm = _dm(bands=[2, 3, 4])
    data, valid, _ = read_raster(SCENE, bands=[2, 3, 4])
    area = dm.scenes[0].train_area  # type: ignore[index]
    assert not area[452:603, 157:314].any() and not area[444, 200] and area[443, 200]
    expected = robust_band_normalization([(data, valid & area)])
    assert dm.normalization is not None and len(dm.normalization.offset) == 3
    np.testing.assert_allclose(dm.normalization.offset, expected.offset)
    np.testing.assert_allclose(dm.normalization.scale, expected.scale)


def test_mostly_nodata_windows_are_skipped() -> None:
    dm = _dm(train=str(TENTH), grid=(2, 2), val_blocks=None, crop_size=16, max_nodata_fraction=0.1)
    scene = dm.scenes[0]  # type: ignore[index]
    for i, j in scene.positions:
        assert (~scene.valid[i : i + 16, j : j + 16]).mean() <= 0.1
    assert 0 < len(scene.positions) < (71 - 15) * (79 - 15)
    item = dm.train_set[0]["hr"]  # type: ignore[index]
    assert item.shape == (3, 16, 16) and dm.val_set is None


def test_val_fraction_is_seeded_and_bad_settings_are_clear() -> None:
    a = RasterDataModule(str(SCENE), grid=(3, 3), val_fraction=0.25, seed=1, crop_size=32)
    b = RasterDataModule(str(SCENE), grid=(3, 3), val_fraction=0.25, seed=1, crop_size=32)
    assert a._held_back(0) == b._held_back(0) and len(a._held_back(0)) == 2
    with pytest.raises(ValueError, match="outside the 4x4 grid"):
        RasterDataModule(str(SCENE), val_blocks=[(4, 0)])
    with pytest.raises(RasterFileError, match="no training window"):
        _dm(grid=(1, 1), val_blocks=[(0, 0)])
    with pytest.raises(RasterFileError, match="no GeoTIFF files"):
        _dm(train=str(ROOT / "configs"))


# --- the configs through the command line ---------------------------------------------------------------
TINY = [
    "--model.init_args.denoiser.init_args.num_channels=[8, 16, 16]",
    "--model.init_args.denoiser.init_args.norm_num_groups=8",
    "--model.init_args.denoiser.init_args.num_head_channels=8",
    "--model.init_args.sampling.steps=2",
    "--model.init_args.sampling.samples=1",
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=2",
    "--trainer.max_time=null",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
    "--data.init_args.samples_per_epoch=4",
    "--data.init_args.batch_size=2",
    "--data.init_args.crop_size=32",
    "--data.init_args.val_crop_size=32",
]


@pytest.mark.parametrize("name", ["sr_x2", "sr_x4"])
def test_configs_parse(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the config's data paths are relative to the repository (other tests change directory)
    cli = lightning_main(["--config", str(ROOT / "configs" / "satellite" / f"{name}.yaml"), "--trainer.logger=false"], run=False)
    assert cli.datamodule.val_blocks == [(3, 1)]
    assert cli.model.operator.spec()["type"] == "sensor_mtf" and cli.model.denoiser.channels == 7


def test_fit_then_upscale_a_geotiff(tmp_path: Path) -> None:
    """The x2 config with bands 2-4, a tiny network and two steps: fit -> checkpoint -> degrade -> upscale."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        main(["fit", "--config", str(ROOT / "configs" / "satellite" / "sr_x2.yaml"), "--trainer.default_root_dir", str(tmp_path),
              "--data.init_args.train", str(SCENE), "--data.init_args.bands=[2, 3, 4]", *TINY])
    finally:
        os.chdir(cwd)
    ckpt = tmp_path / "last.ckpt"
    model = load_model(ckpt)
    assert model.channels == 3 and model.operator.spec()["type"] == "sensor_mtf"
    assert len(model.normalization.offset) == 3 and 5000 < model.normalization.offset[0] < 15000
    from domains.satellite.pipeline import degrade_raster, upscale_raster
    from toolkit.tiling import Tiling

    lr = degrade_raster(DATA / "landsat8_ms_30m_7band_128.tif", tmp_path / "lr.tif", 2, "mtf", bands=[2, 3, 4])
    sr = upscale_raster(lr, tmp_path / "sr.tif", model, tiling=Tiling(64, 16, 8), progress=False,
                        options=model.options.updated(steps=2, samples=1))
    with rasterio.open(sr) as ds:
        assert ds.count == 3 and ds.descriptions == ("B2", "B3", "B4") and (ds.height, ds.width) == (128, 128)
