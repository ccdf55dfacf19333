"""Reference-guided MRI SR on a synthetic contrast pair: a high-resolution T1 guiding a thick-slice "T2-like" scan.

Clinical protocols often acquire one contrast at high resolution (a 1 mm T1) and others as thick
slices (a 1x1x4 mm T2). The reference-guided model of :class:`toolkit.lightning.DiffusionSR`
(``reference_channels``) can take the T1 as a reference on the output grid. The shipped volumes
hold no registered T1/T2 pair, so this module *synthesises* one from a T1 (the limitation: the
"T2" is a deterministic function of the reference, far easier to exploit than a real second
contrast, whose structures and noise the T1 only partly predicts):

* :func:`synthetic_t2`: a non-monotone intensity remapping of the T1 normalised to [0, 1] by its
  foreground's 1st-99th percentiles: background stays dark, CSF-like intensities (low T1) become
  the brightest, white matter (high T1) dark, as on a T2-weighted scan.
* :class:`ContrastPairSliceDataModule`: 2D planes of the volume that contain the thick axis (the
  last), so a 2D model with :class:`toolkit.operators.SliceAverage` along its last axis learns
  thick-slice x4 SR, with the T1 plane as the reference (``{"hr": T2, "ref": T1}``, both
  normalised per volume to [-1, 1]). A contiguous range of planes (with a gap) is held back.
* :func:`evaluate_planes`: the held-back planes degraded by the model's operator, super-resolved with
  the T1 reference, scored (PSNR, SSIM, consistency) against cubic interpolation and its
  projection onto ``{x : A x = y}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from domains.images.data import PairDataModule
from domains.mri.io import read_volume
from domains.mri.normalize import foreground_mask
from toolkit.checkpoint import SRModel, upscale_any_size
from toolkit.metrics import consistency_psnr, psnr, ssim
from toolkit.normalization import Normalization
from toolkit.utils import make_generator, upsample

__all__ = ["ContrastPairSliceDataModule", "evaluate_planes", "normalise_volume", "synthetic_t2"]


def normalise_volume(volume: np.ndarray, low: float = 1.0, high: float = 99.0, foreground_fraction: float = 0.5) -> np.ndarray:
    """``volume`` mapped so its foreground's ``low``..``high`` percentiles become 0..1 (float64, not clipped)."""
    v = np.asarray(volume, dtype=np.float64)
    lo, hi = np.percentile(v[foreground_mask(v, foreground_fraction)], [low, high])
    if not hi > lo:
        raise ValueError("the volume's foreground has a constant intensity")
    return (v - lo) / (hi - lo)


def synthetic_t2(t1: np.ndarray, csf: float = 0.3, wm: float = 0.25) -> np.ndarray:
    """A "T2-like" contrast from a T1 volume by a non-monotone intensity remapping (float64, about [0, 1]).

    With ``u`` the T1 normalised by :func:`normalise_volume` and clipped to [0, 1.2]: ``u / csf``
    below ``csf`` (background dark, rising to the brightest at CSF-like T1), then a linear fall to
    ``wm`` at ``u = 1`` (white matter dark), continued beyond.

    Args:
        t1: ``(X, Y, Z)`` T1-weighted volume.
        csf: normalised T1 intensity mapped to the maximum (1).
        wm: value at the normalised T1 intensity 1 (white matter).
    """
    u = np.clip(normalise_volume(t1), 0.0, 1.2)
    rise = u / csf
    fall = 1.0 - (1.0 - wm) * (u - csf) / (1.0 - csf)
    return np.where(u < csf, rise, fall)


def _to_unit(v: np.ndarray) -> np.ndarray:
    """``v`` mapped to [-1, 1] by its own min and max (float32)."""
    lo, hi = float(v.min()), float(v.max())
    return ((v - lo) / max(hi - lo, 1e-12) * 2 - 1).astype(np.float32)


class _PlaneDataset(Dataset):
    """Random ``size x size`` windows of the training planes (or the fixed validation items)."""

    def __init__(
        self, hr: np.ndarray, ref: np.ndarray, planes: Sequence[int], size: Sequence[int], length: int, seed: int,
        box: tuple[int, int, int, int], with_reference: bool = True,
    ) -> None:
        self.hr, self.ref, self.planes, self.size, self.length, self.seed, self.box = hr, ref, list(planes), size, length, seed, box
        self.with_reference = with_reference

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        p = self.planes[int(rng.integers(len(self.planes)))]
        x0, x1, z0, z1 = self.box
        h, w = self.size
        i = int(rng.integers(x0, max(x0, x1 - h) + 1))
        j = int(rng.integers(z0, max(z0, z1 - w) + 1))
        hr = self.hr[i : i + h, p, j : j + w]
        ref = self.ref[i : i + h, p, j : j + w]
        if rng.random() < 0.5:  # left-right mirror (the first axis); the thick axis keeps its direction
            hr, ref = hr[::-1], ref[::-1]
        item = {"hr": torch.from_numpy(np.ascontiguousarray(hr))[None]}
        if self.with_reference:
            item["ref"] = torch.from_numpy(np.ascontiguousarray(ref))[None]
        return item


class _FixedPlanes(Dataset):
    def __init__(self, items: list[dict[str, torch.Tensor]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


class ContrastPairSliceDataModule(PairDataModule):
    """2D planes of a synthetic contrast pair (:func:`synthetic_t2` of a T1, guided by the T1) for thick-slice SR.

    Planes are taken along ``plane_axis`` (default 1: coronal planes of an RAS volume, holding the
    first and the thick, last, axis). Planes ``[val_start, val_stop)`` (fractions of the axis) are
    held back, with ``gap`` planes on either side never trained on. Both contrasts are mapped to
    [-1, 1] per volume (min-max), so the model's and the reference's normalisations are the identity.

    Args:
        volume: a T1-weighted NIfTI volume.
        plane_axis: the axis the 2D planes are taken along (0 or 1; the thick axis is the last).
        val_range: the held-back planes as fractions ``(start, stop)`` of the axis.
        gap: planes between the held-back ones and any training plane.
        crop_size: training window ``(rows, cols)`` (multiples of ``multiple``).
        multiple: sizes the model takes (linked from the model by ``diffsr fit``).
        batch_size: training batch size.
        samples_per_epoch: random windows per epoch.
        val_planes: held-back planes used for validation (evenly spread).
        seed: window sampler seed.
        with_reference: batches carry the T1 as ``"ref"`` (False: the same data for an unguided
            model, the fair comparison).
    """

    def __init__(
        self,
        volume: str,
        plane_axis: int = 1,
        val_range: tuple[float, float] = (0.55, 0.7),
        gap: int = 4,
        crop_size: tuple[int, int] = (48, 48),
        multiple: int = 8,
        batch_size: int = 8,
        samples_per_epoch: int = 1600,
        val_planes: int = 2,
        seed: int = 0,
        with_reference: bool = True,
    ) -> None:
        super().__init__()
        #: reference channels of the batches (the T1), 0 without
        self.reference_channels = 1 if with_reference else 0
        if plane_axis not in (0, 1):
            raise ValueError(f"plane_axis must be 0 or 1 (the thick axis is the last), not {plane_axis}")
        self.path, self.plane_axis = Path(volume), int(plane_axis)
        self.val_range, self.gap = (float(val_range[0]), float(val_range[1])), int(gap)
        self.crop_size, self.multiple = (int(crop_size[0]), int(crop_size[1])), int(multiple)
        self.batch_size, self.samples_per_epoch, self.val_planes, self.seed = batch_size, samples_per_epoch, val_planes, seed
        if any(c % self.multiple for c in self.crop_size):
            raise ValueError(f"crop_size {self.crop_size} must be multiples of {self.multiple}")
        self.normalization = Normalization(0.0, 1.0)
        self.reference_normalization = Normalization(0.0, 1.0)
        self.t2: np.ndarray | None = None
        self.t1: np.ndarray | None = None

    @classmethod
    def model_channels(cls, **init_args: Any) -> int:  # type: ignore[override]
        """One channel: the T2-like contrast."""
        return 1

    @property
    def domain_spec(self) -> dict[str, Any]:
        return {"kind": "mri", "synthetic_pair": "t2_from_t1", "plane_axis": self.plane_axis}

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """``(T2-like, T1)`` volumes in [-1, 1], with the planes on axis 1 (read once)."""
        if self.t2 is None or self.t1 is None:
            t1, _ = read_volume(self.path)
            if self.plane_axis == 0:
                t1 = np.swapaxes(t1, 0, 1)
            self.t2, self.t1 = _to_unit(synthetic_t2(t1)), _to_unit(normalise_volume(t1))
        return self.t2, self.t1

    def split(self) -> tuple[list[int], list[int]]:
        """Training and held-back plane indices."""
        n = self.load()[0].shape[1]
        a, b = int(round(self.val_range[0] * n)), int(round(self.val_range[1] * n))
        held = list(range(a, b))
        train = [p for p in range(n) if p < a - self.gap or p >= b + self.gap]
        return train, held

    def _box(self) -> tuple[int, int, int, int]:
        """Rows and columns of the foreground's bounding box (windows are drawn inside it)."""
        t1 = self.load()[1]
        fg = np.any(t1 > -0.8, axis=1)
        rows, cols = np.nonzero(fg.any(axis=1))[0], np.nonzero(fg.any(axis=0))[0]
        return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1

    def held_back_planes(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(T2, T1)`` ``(X', Z')`` held-back planes (evenly spread, ``val_planes`` of them), cropped to ``multiple``."""
        t2, t1 = self.load()
        _, held = self.split()
        pick = [held[int(k)] for k in np.linspace(0, len(held) - 1, max(1, self.val_planes)).round()]
        x, z = t2.shape[0] // self.multiple * self.multiple, t2.shape[2] // self.multiple * self.multiple
        return [(t2[:x, p, :z], t1[:x, p, :z]) for p in pick]

    def setup(self, stage: str) -> None:
        t2, t1 = self.load()
        train, _ = self.split()
        with_ref = bool(self.reference_channels)
        self.train_set = _PlaneDataset(t2, t1, train, self.crop_size, self.samples_per_epoch, self.seed, self._box(), with_ref)
        items = []
        for a, b in self.held_back_planes():
            item = {"hr": torch.from_numpy(np.ascontiguousarray(a))[None]}
            if with_ref:
                item["ref"] = torch.from_numpy(np.ascontiguousarray(b))[None]
            items.append(item)
        self.val_set = _FixedPlanes(items)


def evaluate_planes(
    model: SRModel, planes: Sequence[tuple[np.ndarray, np.ndarray]], seed: int = 0, use_reference: bool = True
) -> dict[str, Any]:
    """Degrade each held-back ``(T2, T1)`` plane by the model's operator and score the model against cubic interpolation.

    Returns ``{"methods": {name: {psnr, ssim, consistency_psnr}}, "seconds": ...}`` (means over the
    planes; data range 2: the [-1, 1] units). ``use_reference`` False runs a model trained without one.
    """
    op = model.require_operator()
    scores: dict[str, list[tuple[float, float, float]]] = {"diffsr": [], "bicubic": [], "bicubic_projected": []}
    seconds = 0.0
    for k, (hr_np, ref_np) in enumerate(planes):
        hr = torch.from_numpy(hr_np).double()[None, None]
        ref = torch.from_numpy(ref_np).float()[None, None] if use_reference else None
        y = op.A(hr)
        t0 = time.perf_counter()
        sr, _ = upscale_any_size(model, y.float(), model.options, make_generator(seed + k), reference=ref)
        seconds += time.perf_counter() - t0
        bic = upsample(y, hr.shape[2:])
        for name, pred in (("diffsr", sr.double()), ("bicubic", bic), ("bicubic_projected", op.project(bic, y))):
            c = float(consistency_psnr(op, pred, y, 2.0).clamp(max=100).mean())
            scores[name].append((float(psnr(pred, hr, 2.0).mean()), float(ssim(pred, hr, 2.0).mean()), c))
    methods = {
        name: {key: float(np.mean([v[i] for v in vals])) for i, key in enumerate(("psnr", "ssim", "consistency_psnr"))}
        for name, vals in scores.items()
    }
    return {"methods": methods, "planes": len(planes), "seconds": seconds if math.isfinite(seconds) else None}
