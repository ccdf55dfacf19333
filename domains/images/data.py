"""Image folders as a Lightning datamodule: random high-resolution crops, low resolution made by the model's operator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from domains.images.io import IMAGE_SUFFIXES, ImageFileError, read_image


def list_images(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files under the given folders and files, sorted (folders are not searched recursively)."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise ImageFileError(f"{p}: no such file or folder")
    if not files:
        raise ImageFileError(f"no image files found in {', '.join(str(i) for i in items)}")
    return files


def to_channels(img: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """Convert ``(C, H, W)`` grey/RGB to ``channels`` (grey is replicated, RGB -> Rec. 601 luma)."""
    c = img.shape[0]
    if c == channels:
        return img
    if c == 1 and channels == 3:
        return np.repeat(img, 3, axis=0)
    if c == 3 and channels == 1:
        return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    raise ImageFileError(f"{path}: {c} channels cannot be used for a {channels}-channel model")


class RandomCropDataset(Dataset):
    """``length`` random crops (with flips and 90-degree turns) from images held in memory.

    Item ``index`` is drawn from its own generator seeded with ``(seed, index)``, so a run is
    reproducible whatever the number of workers; :class:`FreshIndexSampler` hands out new
    indices every epoch so each epoch sees new crops.
    """

    def __init__(self, images: list[np.ndarray], crop: int, length: int, seed: int = 0, augment: bool = True) -> None:
        small = [im.shape for im in images if min(im.shape[1:]) < crop]
        if small:
            raise ImageFileError(f"{len(small)} training images are smaller than the crop size {crop} (e.g. {small[0][1:]})")
        self.images, self.crop, self.length, self.seed, self.augment = images, crop, length, seed, augment
        # weight images by area so large images give proportionally more crops
        areas = np.array([im.shape[1] * im.shape[2] for im in images], dtype=np.float64)
        self.p = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        im = self.images[rng.choice(len(self.images), p=self.p)]
        h, w = im.shape[1:]
        i, j = rng.integers(0, h - self.crop + 1), rng.integers(0, w - self.crop + 1)
        patch = im[:, i : i + self.crop, j : j + self.crop]
        if self.augment:
            if rng.random() < 0.5:
                patch = patch[:, :, ::-1]
            patch = np.rot90(patch, k=int(rng.integers(0, 4)), axes=(1, 2))
        return {"hr": torch.from_numpy(np.ascontiguousarray(patch))}


class FreshIndexSampler(Sampler[int]):
    """Yields ``n`` indices a pass, each pass continuing where the previous one stopped.

    Alone, pass ``e`` yields ``e * n + i``. Given ``position`` (the datamodule's count of items a
    trainer has consumed, ``None`` outside a fit), each pass starts there instead: the count is
    restored with the trainer's step from a checkpoint, so a run resumed mid-epoch draws the
    items an uninterrupted run draws, whatever the global random state.
    """

    def __init__(self, n: int, position: Callable[[], int | None] | None = None) -> None:
        self.n, self.position, self.start = n, position, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):  # type: ignore[no-untyped-def]
        consumed = self.position() if self.position is not None else None
        start = self.start if consumed is None else consumed
        self.start = start + self.n
        return iter(range(start, start + self.n))


class PairDataModule(pl.LightningDataModule):
    """The loaders every diffsr datamodule shares: fresh random pairs each epoch, fixed validation.

    Subclasses build ``train_set`` (random, reproducible per index: :class:`FreshIndexSampler`
    hands out new indices every epoch) and ``val_set`` in ``setup`` and set ``batch_size`` and
    ``num_workers``; ``val_batch_size`` is the validation batch (1: items may differ in size).

    The command line links two values to the model (``pipelines.lightning_cli``): the channel
    count :meth:`model_channels` reads from the constructor's arguments goes to the model, and
    the model's size multiple comes back as the ``multiple`` argument.
    """

    train_set: Dataset | None = None
    val_set: Dataset | None = None
    batch_size: int = 8
    num_workers: int = 0
    val_batch_size: int = 1

    @classmethod
    def model_channels(cls, channels: int = 3, **init_args: Any) -> int:
        """Channels of the batches a datamodule built with these constructor arguments yields.

        Here the ``channels`` argument; a subclass whose count follows from other arguments
        (bands, neighbouring slices) overrides this.
        """
        return int(channels)

    def consumed(self) -> int | None:
        """Training items the attached trainer's steps have consumed (all ranks), ``None`` without one."""
        t = self.trainer
        if t is None:
            return None
        return t.global_step * t.accumulate_grad_batches * self.batch_size * t.world_size

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        n = len(self.train_set)  # type: ignore[arg-type]
        # own generator: making the loader's iterator draws no number from the global random
        # state, whose stream (training noise) a resume restores from the checkpoint
        return DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=FreshIndexSampler(n, self.consumed),
            num_workers=self.num_workers, drop_last=True, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=min(self.val_batch_size, len(self.val_set)), num_workers=0)  # type: ignore[arg-type]

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()


class CenterCropDataset(Dataset):
    """One deterministic centre crop per image (validation), size a multiple of ``multiple``."""

    def __init__(self, images: list[np.ndarray], crop: int, multiple: int) -> None:
        self.items = []
        for im in images:
            h, w = im.shape[1:]
            ch = min(crop, h) // multiple * multiple
            cw = min(crop, w) // multiple * multiple
            i, j = (h - ch) // 2, (w - cw) // 2
            self.items.append(torch.from_numpy(np.ascontiguousarray(im[:, i : i + ch, j : j + cw])))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"hr": self.items[index]}


class ImageDataModule(PairDataModule):
    """Folders (or lists) of PNG/JPEG/TIFF photos, 8 or 16 bit, grey or RGB, as ``{"hr": (C, H, W)}`` in [0, 1].

    Args:
        train: folders and/or files of training images.
        val: folders and/or files of validation images (never used for training).
        channels: channels the model takes (grey images are replicated to RGB and vice versa).
        crop_size: training crop size (a multiple of the scale times the UNet's downsampling).
        val_crop_size: validation centre crop size.
        batch_size: training batch size.
        samples_per_epoch: random crops per epoch.
        num_workers: DataLoader workers.
        multiple: sizes the model takes are multiples of this: validation crops are cut to it and
            ``crop_size`` must be one. Linked from the model by ``diffsr fit`` (not set in configs).
        seed: seed of the crop sampler.
    """

    def __init__(
        self,
        train: str | list[str],
        val: str | list[str] | None = None,
        channels: int = 3,
        crop_size: int = 64,
        val_crop_size: int = 128,
        batch_size: int = 8,
        samples_per_epoch: int = 800,
        num_workers: int = 0,
        multiple: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_sources, self.val_sources = train, val
        self.channels, self.crop_size, self.val_crop_size = channels, crop_size, val_crop_size
        self.batch_size, self.samples_per_epoch = batch_size, samples_per_epoch
        self.num_workers, self.multiple, self.seed = num_workers, int(multiple), seed
        if self.crop_size % self.multiple:
            raise ValueError(f"crop_size {self.crop_size} must be a multiple of {self.multiple} (the model's size multiple)")
        self.train_set: RandomCropDataset | None = None
        self.val_set: CenterCropDataset | None = None

    def _load(self, sources: str | list[str]) -> list[np.ndarray]:
        return [to_channels(read_image(f)[0], self.channels, f) for f in list_images(sources)]

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = RandomCropDataset(self._load(self.train_sources), self.crop_size, self.samples_per_epoch, self.seed)
        if self.val_sources is not None and self.val_set is None:
            self.val_set = CenterCropDataset(self._load(self.val_sources), self.val_crop_size, self.multiple)

