"""Face photos as a Lightning datamodule: face-centred square crops, flips, blind degradation on the fly.

Batches are ``{"hr": (B, C, S, S), "lr": (B, C, S, S)}`` in [0, 1]: the crop and its degraded
version upsampled back to the same grid (see :mod:`domains.faces.degradations`). A batch with
``"lr"`` makes :class:`toolkit.lightning.DiffusionSR` condition on it instead of applying its
operator; the face recipe gives the module an identity operator (``AreaDownsample`` with
factor 1) and no final projection, since the input is already on the output grid.

Crops: the shipped portraits (``data/faces/congress_portraits``, 225x275, one person each) are
centred but not aligned. OpenCV's Haar detector (``haarcascade_frontalface_default``) puts the
median face box of the 700 portraits at (y, x) = (131, 110) px, 143 px wide; the default crop is
the square of the image's width centred there, 1.57 times the face box, the same framing as
:func:`domains.faces.detect.face_square` gives a detected face in a whole photo (margin 1.6).
Already-cropped faces take ``crop_center=(0.5, 0.5)``.

Split: by person. Every file is one person, so files are ranked by the SHA-1 of their name and
the first ``val_count`` are held back (:func:`split_by_person`): a deterministic list that does not
depend on the machine, the order of the folder or the files added later beyond those ranked before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from domains.faces.degradations import FaceDegradation, evaluation_degradation
from domains.images.data import PairDataModule, list_images, to_channels
from domains.images.io import ImageFileError, read_image

#: measured framing of the shipped portraits: face centre at (0.476 H, 0.489 W), side = the width
PORTRAIT_CENTER = (0.476, 0.489)
PORTRAIT_SIDE = 1.0


def person_rank(path: str | Path) -> str:
    """Sort key of the person split: the SHA-1 of the file's stem (one person per file)."""
    return hashlib.sha1(Path(path).stem.encode()).hexdigest()


def split_by_person(files: Sequence[str | Path], val_count: int) -> tuple[list[Path], list[Path]]:
    """Train and held-back files: the ``val_count`` files with the smallest :func:`person_rank` are held back.

    Returns:
        ``(train, val)``, each sorted by name; no file is in both.
    """
    paths = sorted({Path(f) for f in files}, key=lambda p: p.name)
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("two face files share a name; the split is by file name (one person each)")
    if not 0 <= val_count < len(paths):
        raise ValueError(f"val_count must be in [0, {len(paths) - 1}] for {len(paths)} files, got {val_count}")
    held = set(sorted(paths, key=person_rank)[:val_count])
    return [p for p in paths if p not in held], [p for p in paths if p in held]


def crop_box(hw: Sequence[int], center: Sequence[float], side: float) -> tuple[float, float, float]:
    """``(top, left, side)`` in pixels of the square of ``side`` times the shorter side centred at
    ``center`` (fractions of ``(H, W)``), moved inside the image (and shrunk if it must be)."""
    h, w = int(hw[0]), int(hw[1])
    s = min(side * min(h, w), h, w)
    top = min(max(center[0] * h - s / 2, 0.0), h - s)
    left = min(max(center[1] * w - s / 2, 0.0), w - s)
    return top, left, s


def resize(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Antialiased bicubic resize of ``(B, C, h, w)`` to ``size``, clamped to [0, 1]."""
    size = (size, size) if isinstance(size, int) else tuple(int(n) for n in size)
    if tuple(x.shape[2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def crop_square(img: torch.Tensor, box: tuple[float, float, float], size: int) -> torch.Tensor:
    """Cut ``box`` (``top, left, side``, rounded to whole pixels) from ``(C, H, W)`` and resize to ``(C, size, size)``."""
    top, left, side = (int(round(v)) for v in box)
    side = max(1, min(side, img.shape[1] - top, img.shape[2] - left))
    return resize(img[None, :, top : top + side, left : left + side], size)[0]


def load_face(path: Path, channels: int) -> torch.Tensor:
    """A face photo as ``(channels, H, W)`` float32 in [0, 1] (grey replicated to RGB)."""
    data, _ = read_image(path)
    return torch.from_numpy(np.ascontiguousarray(to_channels(data, channels, path)))


class FaceTrainDataset(Dataset):
    """``length`` jittered, flipped, degraded face crops; item ``i`` is drawn from ``default_rng((seed, i))``.

    Args:
        files: face photos.
        size: model size ``S``.
        channels: image channels.
        degradation: makes ``"lr"``.
        center, side: the face crop (see :func:`crop_box`).
        jitter: random scale (``1 +- jitter``) and shift (``+- jitter * side``) of the crop.
        flip: random horizontal flips.
        length: items per epoch.
        seed: seed of every draw.
    """

    def __init__(
        self,
        files: Sequence[Path],
        size: int,
        channels: int,
        degradation: FaceDegradation,
        center: Sequence[float],
        side: float,
        jitter: float,
        flip: bool,
        length: int,
        seed: int,
    ) -> None:
        if not files:
            raise ImageFileError("no training faces")
        self.files, self.size, self.channels = list(files), size, channels
        self.degradation, self.center, self.side = degradation, tuple(center), side
        self.jitter, self.flip, self.length, self.seed = jitter, flip, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        img = load_face(self.files[int(rng.integers(len(self.files)))], self.channels)
        h, w = img.shape[1:]
        j = self.jitter
        side = self.side * float(rng.uniform(1 - j, 1 + j))
        cy = self.center[0] + float(rng.uniform(-j, j)) * side * min(h, w) / h
        cx = self.center[1] + float(rng.uniform(-j, j)) * side * min(h, w) / w
        hr = crop_square(img, crop_box((h, w), (cy, cx), side), self.size)
        if self.flip and rng.random() < 0.5:
            hr = hr.flip(-1)
        lr = self.degradation.degrade(hr[None], rng).grid[0]  # on the model grid whatever ``output`` says
        return {"hr": hr, "lr": lr}


class FaceEvalDataset(Dataset):
    """One fixed crop per face with a fixed degradation: item ``i`` seeded with ``(seed, i)``; also the LR image."""

    def __init__(
        self,
        files: Sequence[Path],
        size: int,
        channels: int,
        degradation: FaceDegradation,
        center: Sequence[float],
        side: float,
        seed: int,
    ) -> None:
        self.files, self.size, self.channels = list(files), size, channels
        self.degradation, self.center, self.side, self.seed = degradation, tuple(center), side, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        img = load_face(self.files[index], self.channels)
        hr = crop_square(img, crop_box(img.shape[1:], self.center, self.side), self.size)
        d = self.degradation.degrade(hr[None], np.random.default_rng((self.seed, index)))
        return {"hr": hr, "lr": d.grid[0]}


class FaceDataModule(PairDataModule):
    """Face photos (one person per file) as ``{"hr", "lr"}`` batches of ``(C, S, S)`` in [0, 1].

    Args:
        root: folder (or folders / files) of face photos.
        size: model size ``S`` (128; 256 as an option); a multiple of ``multiple``.
        channels: 3 for RGB (grey photos are replicated).
        val_count: people held back (:func:`split_by_person`); never trained on.
        crop_center: face centre as fractions of ``(H, W)`` (default: the portraits' measured framing).
        crop_side: crop side as a fraction of the shorter image side.
        jitter: random scale and shift of training crops.
        flip: random horizontal flips of training crops.
        degradation: training degradation (default: :class:`FaceDegradation`'s defaults).
        val_degradation: validation degradation (default: x4, one stage, area resize:
            :func:`~domains.faces.degradations.evaluation_degradation`).
        val_samples: held-back faces used by the validation loop (each is sampled: costly on a CPU);
            ``None`` for all.
        batch_size: training batch size.
        samples_per_epoch: training crops per epoch.
        num_workers: DataLoader workers.
        seed: seed of every draw (training crops, flips, degradations; validation uses ``seed + 1``).
        multiple: sizes the model takes are multiples of this (its UNet's downsampling times its
            state space's stride); ``size`` must be one. Linked from the model by ``diffsr fit``.
    """

    val_batch_size = 8

    def __init__(
        self,
        root: str | list[str] = "data/faces/congress_portraits",
        size: int = 128,
        channels: int = 3,
        val_count: int = 40,
        crop_center: tuple[float, float] = PORTRAIT_CENTER,
        crop_side: float = PORTRAIT_SIDE,
        jitter: float = 0.05,
        flip: bool = True,
        degradation: FaceDegradation | None = None,
        val_degradation: FaceDegradation | None = None,
        val_samples: int | None = 8,
        batch_size: int = 8,
        samples_per_epoch: int = 800,
        num_workers: int = 0,
        seed: int = 0,
        multiple: int = 8,
    ) -> None:
        super().__init__()
        self.multiple = int(multiple)
        if size < 16 or size % self.multiple:
            raise ValueError(f"size must be a multiple of {self.multiple} and at least 16, got {size}")
        self.root, self.size, self.channels, self.val_count = root, int(size), int(channels), int(val_count)
        self.crop_center, self.crop_side, self.jitter, self.flip = tuple(crop_center), float(crop_side), float(jitter), flip
        self.degradation = degradation or FaceDegradation()
        self.val_degradation = val_degradation or evaluation_degradation(4)
        self.val_samples, self.batch_size, self.samples_per_epoch = val_samples, batch_size, samples_per_epoch
        self.num_workers, self.seed = num_workers, seed
        self.train_files, self.val_files = split_by_person(list_images(root), self.val_count)
        self.train_set: FaceTrainDataset | None = None
        self.val_set: FaceEvalDataset | None = None

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = FaceTrainDataset(
                self.train_files, self.size, self.channels, self.degradation, self.crop_center, self.crop_side,
                self.jitter, self.flip, self.samples_per_epoch, self.seed,
            )
        if self.val_set is None and self.val_files:
            files = self.val_files[: self.val_samples] if self.val_samples is not None else self.val_files
            self.val_set = FaceEvalDataset(
                files, self.size, self.channels, self.val_degradation, self.crop_center, self.crop_side, self.seed + 1
            )


    @property
    def domain_spec(self) -> dict[str, Any]:
        """Stored in the checkpoint by ``DiffusionSR``: marks it a face model, with the size and framing inference reproduces."""
        return {"kind": "faces", "face_size": self.size, "crop_center": list(self.crop_center), "crop_side": self.crop_side}

    def state_dict(self) -> dict[str, Any]:
        """Stored in checkpoints (plain data): the face size and framing inference must reproduce."""
        return {"face_size": self.size, "channels": self.channels, "crop_center": list(self.crop_center),
                "crop_side": self.crop_side, "val_count": self.val_count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if int(state_dict.get("face_size", self.size)) != self.size:
            raise ValueError(f"checkpoint was trained at face size {state_dict['face_size']}, the datamodule is {self.size}")
