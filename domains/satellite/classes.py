"""Rasters labelled by class (sensor, era, region) for a noise-aware classifier (classifier guidance, Dhariwal & Nichol 2021).

:class:`RasterClassDataModule` is :class:`domains.satellite.data.RasterDataModule` over the files
of every class together: the same split by location (a ``grid`` of blocks per raster, held-back
blocks and a ``gap`` around them), the same per-band robust normalisation over the training area
(so a classifier and a prior configured with the same files, grid, held-back blocks, gap and
percentiles normalise identically, which guidance requires), and batches
``{"hr": (B, C, H, W), "label": (B,)}``.

Training windows are drawn class-balanced: item ``i`` (seeded with ``(seed, i)``) picks a class
uniformly, then a window uniformly among that class's allowed positions. The class frequencies
do not matter to guidance (``grad log p(c | z)`` does not see the class prior), and balance
keeps a minority class from being ignored. Validation windows tile the held-back blocks of every
raster, each with its raster's class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from domains.satellite.data import RasterDataModule, RasterScene, WindowListDataset, list_rasters
from domains.satellite.io import RasterFileError, RasterReader

__all__ = ["ClassWindowDataset", "LabelledWindows", "RasterClassDataModule"]


class ClassWindowDataset(Dataset):
    """``length`` class-balanced random training windows (with flips and 90-degree turns) and their class."""

    def __init__(
        self, scenes: list[RasterScene], labels: list[int], size: int, length: int, fill: np.ndarray, seed: int = 0, augment: bool = True
    ) -> None:
        self.scenes, self.labels, self.size, self.length = scenes, labels, size, length
        self.fill, self.seed, self.augment = fill, seed, augment
        self.by_class: dict[int, tuple[list[int], np.ndarray]] = {}
        for k in sorted(set(labels)):
            members = [i for i, lab in enumerate(labels) if lab == k and len(scenes[i].positions)]
            if not members:
                continue
            counts = np.array([len(scenes[i].positions) for i in members], dtype=np.float64)
            self.by_class[k] = (members, counts / counts.sum())
        self.classes = sorted(self.by_class)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        k = self.classes[int(rng.integers(len(self.classes)))]
        members, p = self.by_class[k]
        scene = self.scenes[members[rng.choice(len(members), p=p)]]
        i, j = scene.positions[rng.integers(len(scene.positions))]
        patch = scene.window(int(i), int(j), self.size, self.fill)
        if self.augment:
            if rng.random() < 0.5:
                patch = patch[:, :, ::-1]
            patch = np.rot90(patch, k=int(rng.integers(0, 4)), axes=(1, 2))
        return {"hr": torch.from_numpy(np.ascontiguousarray(patch)), "label": torch.tensor(k, dtype=torch.long)}


class LabelledWindows(Dataset):
    """Validation windows (:class:`domains.satellite.data.WindowListDataset`) with their raster's class."""

    def __init__(self, windows: WindowListDataset, labels: list[int]) -> None:
        self.windows, self.labels = windows, labels

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.windows[index]
        scene = self.windows.windows[index][0]
        return {**item, "label": torch.tensor(self.labels[scene], dtype=torch.long)}


class RasterClassDataModule(RasterDataModule):
    """GeoTIFF rasters grouped into named classes, split by location as :class:`RasterDataModule` splits them.

    Args:
        classes: ``{name: [folders and/or GeoTIFF files]}``, in class-index order (a file may
            belong to one class only).
        **kwargs: the arguments of :class:`domains.satellite.data.RasterDataModule` but ``train``
            (the files of every class): ``bands``, ``grid``, ``val_blocks``, ``gap``,
            ``crop_size``, ``percentiles``, ...

    Attributes:
        class_names: the class names, index order (``NoisyClassifier`` takes them).
    """

    def __init__(
        self,
        classes: dict[str, list[str]],
        bands: list[int] | None = None,
        grid: tuple[int, int] = (4, 4),
        val_blocks: list[tuple[int, int]] | None = None,
        val_fraction: float | None = None,
        gap: int = 8,
        crop_size: int = 64,
        val_crop_size: int = 128,
        multiple: int = 8,
        max_nodata_fraction: float = 0.25,
        batch_size: int = 8,
        samples_per_epoch: int = 1600,
        percentiles: tuple[float, float] = (1.0, 99.0),
        augment: bool = True,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        if not isinstance(classes, dict) or len(classes) < 2:
            raise ValueError(f"classes must name 2 or more classes ({{name: [files or folders]}}), got {classes!r}")
        self.class_files: dict[str, list[Path]] = {}
        owner: dict[Path, str] = {}
        for name, sources in classes.items():
            files = list_rasters(sources)
            for f in files:
                if f.resolve() in owner:
                    raise ValueError(f"{f}: in classes {owner[f.resolve()]!r} and {name!r}; a raster belongs to one class")
                owner[f.resolve()] = str(name)
            self.class_files[str(name)] = files
        self.class_names = list(self.class_files)
        self._owner = owner
        train = [str(f) for files in self.class_files.values() for f in files]
        super().__init__(
            train=train, bands=bands, grid=grid, val_blocks=val_blocks, val_fraction=val_fraction, gap=gap,
            crop_size=crop_size, val_crop_size=val_crop_size, multiple=multiple, max_nodata_fraction=max_nodata_fraction,
            batch_size=batch_size, samples_per_epoch=samples_per_epoch, percentiles=percentiles, augment=augment,
            num_workers=num_workers, seed=seed,
        )
        self.classes = {k: [str(f) for f in v] for k, v in self.class_files.items()}

    @classmethod
    def model_channels(  # type: ignore[override]
        cls, classes: dict[str, list[str]], bands: list[int] | None = None, **init_args: Any
    ) -> int:
        """Channels of the batches: the selected bands, or every band of the first raster (its header is read)."""
        if bands is not None:
            return len(bands)
        first = next(iter(classes.values()))
        with RasterReader(list_rasters(first)[0], None) as r:
            return len(r.meta.bands)

    def scene_labels(self) -> list[int]:
        """The class index of every scene, in :meth:`prepare_scenes` order."""
        index = {name: k for k, name in enumerate(self.class_names)}
        labels = []
        for s in self.prepare_scenes():
            name = self._owner.get(s.path.resolve())
            if name is None:  # cannot happen: the scenes are the classes' files
                raise RasterFileError(f"{s.path}: in no class")
            labels.append(index[name])
        return labels

    @property
    def domain_spec(self) -> dict[str, Any]:
        return {"kind": "satellite", "bands": self.bands, "classes": list(self.class_names)}

    def setup(self, stage: str) -> None:
        fresh_train, fresh_val = self.train_set is None, self.val_set is None
        super().setup(stage)
        labels = self.scene_labels()
        scenes = self.prepare_scenes()
        if stage == "fit" and fresh_train and self.train_set is not None:
            assert self.normalization is not None
            fill = np.asarray(self.normalization.offset, dtype=np.float32)
            if fill.size == 1:
                fill = np.repeat(fill, scenes[0].data.shape[0])
            keep = [k for k, s in enumerate(scenes) if len(s.positions)]
            missing = sorted({self.class_names[labels[k]] for k in range(len(scenes))} - {self.class_names[labels[k]] for k in keep})
            if missing:
                raise RasterFileError(f"class(es) {missing}: no training window of {self.crop_size} px fits outside the held-back blocks")
            self.train_set = ClassWindowDataset(  # type: ignore[assignment]
                scenes, labels, self.crop_size, self.samples_per_epoch, fill, self.seed, self.augment
            )
        if fresh_val and isinstance(self.val_set, WindowListDataset):
            self.val_set = LabelledWindows(self.val_set, labels)  # type: ignore[assignment]
