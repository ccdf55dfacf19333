"""Folders of NIfTI volumes as a Lightning datamodule: random 3D patches, split by file (subject).

Each volume is normalised on its own (robust percentiles within its foreground, see
:mod:`domains.mri.normalize`): MRI has no absolute intensity scale, so a model must not depend
on one. The same per-volume normalisation runs at inference on the low-resolution input; the
checkpoint stores its parameters (``intensity``) and inference undoes it on output. The model's
own :class:`toolkit.normalization.Normalization` is therefore the identity.

The low-resolution patch is made on the fly by the model's operator (``DiffusionSR`` applies
it to ``batch["hr"]``), so the degradation that trains the model is the one that constrains its
sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from domains.images.data import PairDataModule
from domains.mri.io import NIFTI_SUFFIXES, MRIFileError, read_volume
from domains.mri.normalize import foreground_mask, robust_normalization
from toolkit.normalization import Normalization


def list_volumes(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """NIfTI files under the given folders and files, sorted (folders are not searched recursively)."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.name.lower().endswith(NIFTI_SUFFIXES)))
        elif p.is_file():
            files.append(p)
        else:
            raise MRIFileError(f"{p}: no such file or folder")
    if not files:
        raise MRIFileError(f"no NIfTI files found in {', '.join(str(i) for i in items)}")
    return files


def intensity_spec(low: float, high: float, foreground_fraction: float | None) -> dict[str, Any]:
    """The per-volume normalisation as plain data (stored in checkpoints under ``intensity``)."""
    return {"type": "robust_percentile", "low": low, "high": high, "foreground_fraction": foreground_fraction}


def volume_normalization(volume: np.ndarray, spec: dict[str, Any]) -> Normalization:
    """The :class:`Normalization` of one volume under an :func:`intensity_spec`."""
    if spec.get("type") != "robust_percentile":
        raise ValueError(f"unknown intensity normalisation {spec.get('type')!r}")
    return robust_normalization([volume], spec["low"], spec["high"], spec["foreground_fraction"])


def resample_isotropic(volume: np.ndarray, zooms: Sequence[float], voxel_size: float) -> np.ndarray | None:
    """Area-average ``volume`` onto an isotropic grid of ``voxel_size`` mm (``None`` if finer than native).

    Used to show the network anatomy at coarser voxel sizes than the training scans have
    (scale augmentation), since the scans it will see may be coarser.
    """
    shape = [max(2, round(n * z / voxel_size)) for n, z in zip(volume.shape, zooms)]
    if any(s > n for s, n in zip(shape, volume.shape)) or tuple(shape) == volume.shape:
        return None
    t = torch.from_numpy(np.ascontiguousarray(volume))[None, None]
    return F.interpolate(t, size=shape, mode="area")[0, 0].numpy()


class RandomPatchDataset(Dataset):
    """``length`` random 3D patches from volumes held in memory (flips and an in-plane swap).

    Patch centres fall in the foreground with probability ``foreground_prob`` (air-only patches
    teach nothing). Item ``index`` draws from a generator seeded with ``(seed, index)``, so runs
    are reproducible whatever the number of workers.

    Args:
        volumes: normalised ``(X, Y, Z)`` float32 volumes.
        patch: patch size per axis.
        length: patches per epoch.
        flip_axes: axes that may be mirrored.
        swap_axes: a pair of axes that may be exchanged (the in-plane axes of thick-slice
            data), or ``None``; patches must be equal along them.
    """

    def __init__(
        self,
        volumes: list[np.ndarray],
        masks: list[np.ndarray],
        patch: tuple[int, int, int],
        length: int,
        seed: int = 0,
        foreground_prob: float = 0.9,
        flip_axes: Sequence[int] = (0, 1, 2),
        swap_axes: tuple[int, int] | None = (0, 1),
        slab_axis: int | None = None,
    ) -> None:
        small = [v.shape for v in volumes if any(n < p for n, p in zip(v.shape, patch))]
        if small:
            raise MRIFileError(f"{len(small)} training volume(s) are smaller than the patch {patch} (e.g. {small[0]})")
        self.volumes, self.patch, self.length, self.seed = volumes, patch, length, seed
        self.foreground_prob, self.flip_axes = foreground_prob, tuple(flip_axes)
        self.slab_axis = slab_axis
        if swap_axes is not None and slab_axis is None and patch[swap_axes[0]] != patch[swap_axes[1]]:
            swap_axes = None  # a patch can only swap axes of equal length
        self.swap_axes = swap_axes
        self.centres = [np.argwhere(m)[:: max(1, int(m.sum()) // 200_000)] for m in masks]
        sizes = np.array([v.size for v in volumes], dtype=np.float64)
        self.p = sizes / sizes.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        k = int(rng.choice(len(self.volumes), p=self.p))
        vol, centres = self.volumes[k], self.centres[k]
        if self.slab_axis is not None and self.swap_axes is not None and rng.random() < 0.5:
            # slice-wise: the other in-plane orientation (a view, no copy)
            vol, centres = np.swapaxes(vol, *self.swap_axes), centres[:, _swapped(self.swap_axes)]
        if len(centres) and rng.random() < self.foreground_prob:
            c = centres[rng.integers(len(centres))]
            start = [int(np.clip(ci - p // 2, 0, n - p)) for ci, p, n in zip(c, self.patch, vol.shape)]
        else:
            start = [int(rng.integers(0, n - p + 1)) for n, p in zip(vol.shape, self.patch)]
        patch = vol[tuple(slice(s, s + p) for s, p in zip(start, self.patch))]
        for axis in self.flip_axes:
            if rng.random() < 0.5:
                patch = np.flip(patch, axis)
        if self.slab_axis is not None:  # neighbouring planes become channels: (2n+1, *plane)
            return {"hr": torch.from_numpy(np.ascontiguousarray(np.moveaxis(patch, self.slab_axis, 0)))}
        if self.swap_axes is not None and rng.random() < 0.5:
            patch = np.swapaxes(patch, *self.swap_axes)
        return {"hr": torch.from_numpy(np.ascontiguousarray(patch))[None]}


class CentrePatchDataset(Dataset):
    """One centre patch per volume (validation), each side a multiple of ``multiple``."""

    def __init__(
        self,
        volumes: list[np.ndarray],
        patch: tuple[int, int, int],
        multiple: Sequence[int],
        slab_axis: int | None = None,
    ) -> None:
        self.items = []
        for v in volumes:
            size = [min(p, n) // m * m for p, n, m in zip(patch, v.shape, multiple)]
            start = [(n - s) // 2 for n, s in zip(v.shape, size)]
            crop = v[tuple(slice(a, a + s) for a, s in zip(start, size))]
            item = np.moveaxis(crop, slab_axis, 0) if slab_axis is not None else crop[None]
            self.items.append(torch.from_numpy(np.ascontiguousarray(item)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"hr": self.items[index]}


class VolumeDataModule(PairDataModule):
    """NIfTI volumes (3D, or every volume of a 4D file) as ``{"hr": (1, X, Y, Z)}`` normalised patches.

    Training and validation files are given separately, so the split is by file (subject),
    never by patch; a file in both is refused.

    Args:
        train: folders and/or files of training volumes.
        val: folders and/or files of validation volumes (other subjects).
        patch_size: training patch (one int for a cube, or per axis).
        val_patch_size: validation centre patch.
        batch_size: training batch size.
        samples_per_epoch: random patches per epoch.
        voxel_sizes: also train on each volume area-resampled to these isotropic voxel sizes
            (mm) where coarser than the scan (scale augmentation); ``None`` for none.
        low, high: the percentiles mapped to -1 and 1 in each volume.
        foreground_fraction: the percentiles are taken over voxels above this fraction of the
            volume's Otsu threshold (``None``: all voxels).
        flip_axes: axes mirrored at random.
        swap_axes: two axes exchanged at random (``None``: none); keep the thick axis out.
        multiple: sizes the model takes are multiples of this (per axis, or one for all):
            validation patches are cut to it. Linked from the model by ``diffsr fit``.
        slicewise_neighbours: ``None`` for 3D patches; ``n`` for the 2D slice-wise mode: planes
            through the thick axis with ``n`` neighbouring planes on each side as channels
            (batches ``(2n+1, plane, thick)``); planes are taken across axis ``swap_axes[1]``
            and, swapped at random, across ``swap_axes[0]`` (coronal and sagittal).
        smore_axis: SMORE (Zhao et al. 2020), for the slice-wise mode: the training volumes are
            thick-slice scans whose thick axis is this one (``None``: off). Each is learnt from
            itself: its in-plane planes are high-resolution along both in-plane axes, so each
            volume is rearranged (twice: either in-plane axis in turn) so that one in-plane axis
            lies where the model's thick axis is (the last) and the thick axis lies across the
            planes (the neighbours' axis); the model's operator then degrades the in-plane axis as
            a thick slice would. No swap or voxel-size augmentation (both would move the thick axis).
            The neighbouring planes of these pairs are a thick slice apart (at inference, one in-plane
            voxel): a model with ``slicewise_neighbours=0`` sees no such mismatch.
        num_workers: DataLoader workers.
        seed: seed of the patch sampler.
    """

    def __init__(
        self,
        train: str | list[str],
        val: str | list[str] | None = None,
        patch_size: int | list[int] = 32,
        val_patch_size: int | list[int] = 48,
        batch_size: int = 4,
        samples_per_epoch: int = 400,
        voxel_sizes: list[float] | None = None,
        low: float = 0.5,
        high: float = 99.5,
        foreground_fraction: float | None = 0.5,
        flip_axes: list[int] = [0, 1, 2],  # noqa: B006 - LightningCLI needs a plain default
        swap_axes: list[int] | None = [0, 1],  # noqa: B006
        multiple: int | list[int] = 8,
        slicewise_neighbours: int | None = None,
        smore_axis: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if smore_axis is not None and (slicewise_neighbours is None or int(smore_axis) not in (0, 1, 2)):
            raise ValueError(f"smore_axis {smore_axis!r}: needs the slice-wise mode (slicewise_neighbours) and an axis 0, 1 or 2")
        self.smore_axis = None if smore_axis is None else int(smore_axis)
        self.train_sources, self.val_sources = train, val
        self.patch_size = _triple(patch_size)
        self.val_patch_size = _triple(val_patch_size)
        self.batch_size, self.samples_per_epoch = batch_size, samples_per_epoch
        self.voxel_sizes = list(voxel_sizes or [])
        self.intensity = intensity_spec(low, high, foreground_fraction)
        self.flip_axes, self.swap_axes = list(flip_axes), (tuple(swap_axes) if swap_axes else None)
        self.multiple = _triple(multiple)
        self.num_workers, self.seed = num_workers, seed
        self.slab_axis: int | None = None
        if slicewise_neighbours is not None:
            if self.swap_axes is None:
                raise ValueError(
                    "the slice-wise mode needs swap_axes: the two in-plane axes [a, b]; planes are cut across b"
                )
            self.slab_axis = self.swap_axes[1]
            thickness = 2 * int(slicewise_neighbours) + 1
            self.patch_size = _with(self.patch_size, self.slab_axis, thickness)
            self.val_patch_size = _with(self.val_patch_size, self.slab_axis, thickness)
            self.multiple = _with(self.multiple, self.slab_axis, 1)
        self.slicewise = (
            None
            if slicewise_neighbours is None
            else {
                "neighbours": int(slicewise_neighbours),
                "plane_axes": list(self.swap_axes or ()),
            }
        )
        # the model sees per-volume normalised intensities: its own normalisation is the identity
        channels = self.model_channels(slicewise_neighbours)
        self.normalization = Normalization(offset=[0.0] * channels, scale=[1.0] * channels)

        self.train_set: RandomPatchDataset | None = None
        self.val_set: CentrePatchDataset | None = None

    @classmethod
    def model_channels(cls, slicewise_neighbours: int | None = None, **init_args: Any) -> int:  # type: ignore[override]
        """Channels of the batches: 1 for 3D patches, ``2 n + 1`` planes in the slice-wise mode."""
        return 1 if slicewise_neighbours is None else 2 * int(slicewise_neighbours) + 1

    @property
    def domain_spec(self) -> dict[str, Any]:
        """What inference on a whole volume needs (stored in the checkpoint by ``DiffusionSR``)."""
        return {"kind": "mri", "intensity": self.intensity, "slicewise": self.slicewise}

    def _load(self, sources: str | list[str], augment_scale: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for f in list_volumes(sources):
            import nibabel as nib

            shape = nib.load(str(f)).shape
            indices = list(range(shape[3])) if len(shape) == 4 else [None]
            for idx in indices:
                vol, meta = read_volume(f, idx)
                versions = [vol]
                if augment_scale and self.smore_axis is not None:
                    slab = int(self.slab_axis)  # type: ignore[arg-type]
                    versions = smore_arrangements(vol, self.smore_axis, slab, max(a for a in range(3) if a != slab))
                elif augment_scale:
                    versions += [
                        r for s in self.voxel_sizes if (r := resample_isotropic(vol, meta.zooms, s)) is not None
                    ]
                for v in versions:
                    norm = volume_normalization(v, self.intensity)
                    x = norm.normalize(torch.from_numpy(v)[None, None])[0, 0].numpy().astype(np.float32)
                    fg = (
                        foreground_mask(v)
                        if self.intensity["foreground_fraction"] is not None
                        else np.ones(v.shape, bool)
                    )
                    out.append((x, fg))
        return out

    def setup(self, stage: str) -> None:
        if self.val_sources is not None:
            both = {p.resolve() for p in list_volumes(self.train_sources)} & {
                p.resolve() for p in list_volumes(self.val_sources)
            }
            if both:
                raise MRIFileError(f"{sorted(both)[0]}: in both the training and the validation set (split by subject)")
        if stage == "fit" and self.train_set is None:
            loaded = self._load(self.train_sources, augment_scale=True)
            self.train_set = RandomPatchDataset(
                [v for v, _ in loaded],
                [m for _, m in loaded],
                self.patch_size,
                self.samples_per_epoch,
                self.seed,
                flip_axes=self.flip_axes,
                swap_axes=None if self.smore_axis is not None else self.swap_axes,
                slab_axis=self.slab_axis,  # type: ignore[arg-type]
            )
        if self.val_sources is not None and self.val_set is None:
            self.val_set = CentrePatchDataset(
                [v for v, _ in self._load(self.val_sources, False)], self.val_patch_size, self.multiple, self.slab_axis
            )



def smore_arrangements(vol: np.ndarray, thick_axis: int, slab_axis: int = 1, model_thick_axis: int = 2) -> list[np.ndarray]:
    """The two views of a thick-slice volume in which an in-plane axis plays the thick one (SMORE).

    In each, ``thick_axis`` of ``vol`` moves to ``slab_axis`` (across the planes) and one of the two
    in-plane axes to ``model_thick_axis`` (the axis the model's operator degrades), the other to
    the remaining position: ``(in-plane a, thick, in-plane b)`` and ``(in-plane b, thick, in-plane a)``
    for the default layout.
    """
    inplane = [a for a in range(3) if a != thick_axis]
    views = []
    for a, b in (inplane, inplane[::-1]):
        order = [0, 0, 0]
        order[slab_axis], order[model_thick_axis] = thick_axis, b
        order[3 - slab_axis - model_thick_axis] = a
        views.append(np.ascontiguousarray(vol.transpose(order)))
    return views


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    t = (int(v),) * 3 if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) != 3:
        raise ValueError(f"expected one size or three, got {v}")
    return t  # type: ignore[return-value]


def _with(t: tuple[int, int, int], axis: int, value: int) -> tuple[int, int, int]:
    out = list(t)
    out[axis] = value
    return tuple(out)  # type: ignore[return-value]


def _swapped(axes: Sequence[int]) -> list[int]:
    order = [0, 1, 2]
    order[axes[0]], order[axes[1]] = order[axes[1]], order[axes[0]]
    return order
