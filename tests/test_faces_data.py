"""The face datamodule on the shipped portraits: the split by person, crops, batch shapes, reproducibility."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from domains.faces.data import FaceDataModule, crop_box, split_by_person
from domains.faces.degradations import FaceDegradation
from domains.images.data import list_images

ROOT = Path(__file__).resolve().parents[1]
PORTRAITS = ROOT / "data" / "faces" / "congress_portraits"


def test_split_by_person_is_disjoint_and_deterministic() -> None:
    files = list_images(PORTRAITS)
    assert len(files) == 700
    train, val = split_by_person(files, 40)
    assert len(val) == 40 and len(train) == 660
    assert not {p.name for p in train} & {p.name for p in val}
    assert {p.name for p in train} | {p.name for p in val} == {p.name for p in files}
    shuffled = files[:]
    random.Random(0).shuffle(shuffled)
    assert split_by_person(shuffled, 40) == (train, val)
    # holding back more people keeps the first ones held back
    assert set(val) <= set(split_by_person(files, 60)[1])
    with pytest.raises(ValueError):
        split_by_person(files, 700)


def test_crop_box_stays_inside() -> None:
    top, left, side = crop_box((275, 225), (0.476, 0.489), 1.0)
    assert side == 225 and left == 0 and 0 <= top <= 50
    top, left, side = crop_box((100, 300), (0.9, 0.02), 1.5)
    assert side == 100 and top == 0 and left == 0


def test_datamodule_batches(tmp_path: Path) -> None:
    files = list_images(PORTRAITS)[:24]  # a small real subset: 4 people held back
    dm = FaceDataModule(root=[str(f) for f in files], size=32, val_count=4, val_samples=3, batch_size=3, samples_per_epoch=6,
                        degradation=FaceDegradation(scale_range=(1, 8)))
    assert len(dm.train_files) == 20 and len(dm.val_files) == 4
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"hr", "lr"}
    assert batch["hr"].shape == batch["lr"].shape == (3, 3, 32, 32)
    for x in batch.values():
        assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert not torch.equal(batch["hr"], batch["lr"])
    # items are reproducible (seeded by index), and the next epoch draws new ones
    assert dm.train_set is not None
    a, b = dm.train_set[2], dm.train_set[2]
    assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
    assert not torch.equal(dm.train_set[2]["lr"], dm.train_set[8]["lr"])
    val = next(iter(dm.val_dataloader()))
    assert val["hr"].shape == val["lr"].shape == (3, 3, 32, 32)
    assert torch.equal(val["lr"], next(iter(dm.val_dataloader()))["lr"])
    # the face size travels in checkpoints as plain data
    assert dm.state_dict()["face_size"] == 32


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        FaceDataModule(root=str(PORTRAITS), size=100)
