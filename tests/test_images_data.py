"""Image I/O (8/16 bit, grey/RGB, PNG/TIFF/JPEG) and the image datamodule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from domains.images.data import ImageDataModule, RandomCropDataset, to_channels
from domains.images.io import ImageFileError, read_image, write_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("suffix,depth", [(".png", 8), (".png", 16), (".tif", 8), (".tif", 16)])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossless_round_trip(suffix: str, depth: int, channels: int, photo: np.ndarray, tmp_path: Path) -> None:
    data = photo[:channels, :37, :53]
    q = np.round(data * (2**depth - 1)) / (2**depth - 1)
    f = tmp_path / f"img{suffix}"
    write_image(f, q, depth)
    back, info = read_image(f)
    assert info.bit_depth == depth and info.channels == channels
    assert np.abs(back - q).max() < 1e-6


def test_jpeg_refuses_16_bit(photo: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ImageFileError, match="16-bit"):
        write_image(tmp_path / "x.jpg", photo, 16)


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ImageFileError, match="broken.png"):
        read_image(bad)
    with pytest.raises(ImageFileError, match="not found"):
        read_image(tmp_path / "none.png")


def test_to_channels(photo: np.ndarray, gray_photo: np.ndarray) -> None:
    assert to_channels(gray_photo, 3, Path("g")).shape[0] == 3
    assert to_channels(photo, 1, Path("c")).shape[0] == 1


def test_random_crops_are_seeded_and_fresh_each_epoch(photo: np.ndarray) -> None:
    ds = RandomCropDataset([photo], crop=32, length=4, seed=3)
    a, b = ds[0]["hr"], RandomCropDataset([photo], crop=32, length=4, seed=3)[0]["hr"]
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    assert not torch.equal(ds[0]["hr"], ds[4]["hr"])  # index 4 is epoch 2's first crop


def test_datamodule_fit_and_val(tmp_path: Path) -> None:
    dm = ImageDataModule(
        train=[str(ROOT / "data" / "natural" / "train")],
        val=str(ROOT / "data" / "natural" / "holdout"),
        channels=3, crop_size=48, val_crop_size=100, batch_size=3, samples_per_epoch=6,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["hr"].shape == (3, 3, 48, 48)
    again = list(loader)
    assert not torch.equal(batches[0]["hr"], again[0]["hr"])  # fresh crops every epoch
    val = list(dm.val_dataloader())
    assert len(val) == 2 and val[0]["hr"].shape[2] % 8 == 0 and val[0]["hr"].shape[2] <= 100
    with pytest.raises(ImageFileError, match="smaller than the crop"):
        ImageDataModule(train=str(ROOT / "data" / "natural" / "train"), crop_size=1024).setup("fit")
