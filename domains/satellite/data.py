"""Multispectral rasters as a Lightning datamodule: random windows, split by location, per-band normalisation.

Each raster is cut into a ``grid`` of blocks. Validation blocks (a list, or a seeded fraction
of each raster's blocks) are held back; a training window may not touch a validation block
nor come within ``gap`` pixels of one, so no validation pixel (nor its immediate
neighbourhood) is ever seen in training. Training windows are drawn uniformly among all
allowed positions whose nodata fraction is at most ``max_nodata_fraction`` (mostly-nodata
windows are never drawn); item ``i`` uses a generator seeded with ``(seed, i)``. Validation
items are non-overlapping windows tiling each validation block, without nodata.

Pixels holding NaN or Inf are missing, like nodata. The per-band normalisation (robust
percentiles, nodata excluded) is computed over the
pixels training windows may cover and exposed as ``normalization``, which
:meth:`toolkit.lightning.DiffusionSR.setup` picks up and stores in the checkpoint.

Batches are ``{"hr": (B, C, H, W)}`` float32 in data units; the model makes the low
resolution with its own operator. Rasters are held in memory in their own dtype (a 7-band
uint16 scene of 627 x 603 takes 5 MB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from domains.images.data import PairDataModule
from domains.satellite.io import RASTER_SUFFIXES, RasterFileError, RasterReader, crop_raster
from domains.satellite.normalize import robust_band_normalization
from toolkit.normalization import Normalization
from toolkit.operators import Operator

__all__ = ["RasterDataModule", "RasterScene", "ReferenceRasterDataModule", "list_rasters", "split_blocks"]

Rect = tuple[int, int, int, int]  # row0, row1, col0, col1 (half-open)


def list_rasters(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """GeoTIFF files under the given folders and files, sorted (folders are not searched recursively)."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in RASTER_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise RasterFileError(f"{p}: no such file or folder")
    if not files:
        raise RasterFileError(f"no GeoTIFF files (.tif, .tiff) found in {', '.join(str(i) for i in items)}")
    return files


def split_blocks(shape: Sequence[int], grid: Sequence[int]) -> dict[tuple[int, int], Rect]:
    """The ``grid = (rows, cols)`` blocks of a ``(height, width)`` raster as ``{(r, c): (row0, row1, col0, col1)}``."""
    h, w = shape
    gr, gc = grid
    re = np.round(np.linspace(0, h, gr + 1)).astype(int)
    ce = np.round(np.linspace(0, w, gc + 1)).astype(int)
    return {(r, c): (int(re[r]), int(re[r + 1]), int(ce[c]), int(ce[c + 1])) for r in range(gr) for c in range(gc)}


def _box_sum(integral: np.ndarray, size: int) -> np.ndarray:
    """Sums over every ``size x size`` window (top-left indexed) from a zero-padded integral image."""
    s = integral
    return s[size:, size:] - s[:-size, size:] - s[size:, :-size] + s[:-size, :-size]


def _integral(mask: np.ndarray) -> np.ndarray:
    out = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    out[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    return out


@dataclass
class RasterScene:
    """A raster in memory with its validity, validation blocks and the positions training windows may take."""

    path: Path
    data: np.ndarray  # (C, H, W) in the raster's dtype
    valid: np.ndarray  # (H, W) bool
    val_rects: list[Rect]
    train_area: np.ndarray  # (H, W) bool: pixels outside the validation blocks widened by the gap
    positions: np.ndarray  # (N, 2) allowed training-window top-left corners
    ref: np.ndarray | None = None  # (R, H, W) float32 reference on this raster's grid (reference-guided SR)

    def window(self, i: int, j: int, size: int, fill: np.ndarray) -> np.ndarray:
        """``(C, size, size)`` float32 window at ``(i, j)``, nodata pixels replaced by ``fill`` ``(C,)``."""
        patch = self.data[:, i : i + size, j : j + size].astype(np.float32)
        ok = self.valid[i : i + size, j : j + size]
        if not ok.all():
            patch = np.where(ok[None], patch, fill[:, None, None])
        return patch

    def ref_window(self, i: int, j: int, h: int, w: int) -> np.ndarray:
        """``(R, h, w)`` float32 reference window at ``(i, j)``."""
        assert self.ref is not None
        return self.ref[:, i : i + h, j : j + w]


def _augmented(patch: np.ndarray, flip: bool, turns: int) -> np.ndarray:
    """``patch`` ``(C, H, W)`` mirrored left-right (``flip``) then turned ``turns`` quarter turns."""
    if flip:
        patch = patch[:, :, ::-1]
    return np.rot90(patch, k=turns, axes=(1, 2))


class RandomWindowDataset(Dataset):
    """``length`` random training windows (with flips and 90-degree turns); item ``i`` seeded with ``(seed, i)``."""

    def __init__(self, scenes: list[RasterScene], size: int, length: int, fill: np.ndarray, seed: int = 0, augment: bool = True) -> None:
        self.scenes, self.size, self.length, self.fill, self.seed, self.augment = scenes, size, length, fill, seed, augment
        counts = np.array([len(s.positions) for s in scenes], dtype=np.float64)
        self.p = counts / counts.sum()  # every allowed window equally likely

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        scene = self.scenes[rng.choice(len(self.scenes), p=self.p)]
        i, j = scene.positions[rng.integers(len(scene.positions))]
        patch = scene.window(int(i), int(j), self.size, self.fill)
        ref = None if scene.ref is None else scene.ref_window(int(i), int(j), self.size, self.size)
        if self.augment:
            flip, turns = bool(rng.random() < 0.5), int(rng.integers(0, 4))
            patch = _augmented(patch, flip, turns)
            ref = None if ref is None else _augmented(ref, flip, turns)
        item = {"hr": torch.from_numpy(np.ascontiguousarray(patch))}
        if ref is not None:  # the same window, flips and turns
            item["ref"] = torch.from_numpy(np.ascontiguousarray(ref))
        return item


class WindowListDataset(Dataset):
    """Fixed windows ``(scene, row, col, height, width)`` (validation)."""

    def __init__(self, scenes: list[RasterScene], windows: list[tuple[int, int, int, int, int]]) -> None:
        self.scenes, self.windows = scenes, windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k, i, j, h, w = self.windows[index]
        patch = self.scenes[k].data[:, i : i + h, j : j + w].astype(np.float32)
        item = {"hr": torch.from_numpy(np.ascontiguousarray(patch))}
        if self.scenes[k].ref is not None:
            item["ref"] = torch.from_numpy(np.ascontiguousarray(self.scenes[k].ref_window(i, j, h, w)))
        return item


class RasterDataModule(PairDataModule):
    """GeoTIFF rasters (a folder or list), any band count and dtype, split into spatially disjoint train and validation blocks.

    Args:
        train: folders and/or GeoTIFF files.
        bands: 1-based band indexes to use (e.g. ``[2, 3, 4]``); ``None`` uses all bands.
        grid: ``(rows, cols)`` blocks each raster is cut into.
        val_blocks: ``[[row, col], ...]`` blocks held back for validation in every raster.
        val_fraction: or this fraction of each raster's blocks (at least one), chosen with ``seed``;
            ignored when ``val_blocks`` is given. Neither: no validation.
        gap: pixels between a validation block and any training window.
        crop_size: training window size (a multiple of the scale times the UNet's downsampling).
        val_crop_size: validation windows tile each validation block evenly, at most this size.
        multiple: sizes the model takes are multiples of this (its UNet's downsampling times its
            state space's stride, and its scale): validation windows are cut to it and
            ``crop_size`` must be one. Linked from the model by ``diffsr fit``.
        max_nodata_fraction: training windows with more nodata than this are never drawn.
        batch_size: training batch size.
        samples_per_epoch: random windows per epoch.
        percentiles: ``(low, high)`` percentiles mapped to -1 and 1 per band.
        augment: random flips and 90-degree turns of training windows.
        num_workers: DataLoader workers.
        seed: seed of the window sampler and of ``val_fraction``.
    """

    def __init__(
        self,
        train: str | list[str],
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
        super().__init__()
        self.sources, self.bands = train, None if bands is None else [int(b) for b in bands]
        self.grid = (int(grid[0]), int(grid[1]))
        self.val_blocks = None if val_blocks is None else [(int(r), int(c)) for r, c in val_blocks]
        self.val_fraction, self.gap = val_fraction, int(gap)
        self.crop_size, self.val_crop_size, self.multiple = int(crop_size), int(val_crop_size), int(multiple)
        self.max_nodata_fraction = float(max_nodata_fraction)
        self.batch_size, self.samples_per_epoch = batch_size, samples_per_epoch
        self.percentiles, self.augment, self.num_workers, self.seed = tuple(percentiles), augment, num_workers, seed
        if self.crop_size % self.multiple:
            raise ValueError(f"crop_size {self.crop_size} must be a multiple of {self.multiple}")
        if self.val_blocks:
            bad = [b for b in self.val_blocks if not (0 <= b[0] < self.grid[0] and 0 <= b[1] < self.grid[1])]
            if bad:
                raise ValueError(f"validation block(s) {bad} are outside the {self.grid[0]}x{self.grid[1]} grid")
        self.scenes: list[RasterScene] | None = None
        self.normalization: Normalization | None = None
        self.train_set: RandomWindowDataset | None = None
        self.val_set: WindowListDataset | None = None

    # --- splitting ------------------------------------------------------------------------------
    def _held_back(self, index: int) -> list[tuple[int, int]]:
        if self.val_blocks is not None:
            return list(self.val_blocks)
        if self.val_fraction:
            n = self.grid[0] * self.grid[1]
            k = max(1, round(self.val_fraction * n))
            pick = np.random.default_rng((self.seed, 1, index)).choice(n, size=k, replace=False)
            return [(int(p) // self.grid[1], int(p) % self.grid[1]) for p in sorted(pick)]
        return []

    def _scene(self, index: int, path: Path) -> RasterScene:
        with RasterReader(path, self.bands) as r:
            r.check_has_data()  # a clear error for an all-nodata raster or a band without a finite value
            data = r.read_data(native=True)
            valid = r.read_valid()
        h, w = valid.shape
        c = self.crop_size
        if min(h, w) < c:
            raise RasterFileError(f"{path}: raster {h}x{w} is smaller than the training window {c}")
        blocks = split_blocks((h, w), self.grid)
        rects = [blocks[b] for b in self._held_back(index)]
        near = np.zeros((h, w), dtype=bool)  # validation blocks widened by the gap
        g = self.gap
        for r0, r1, c0, c1 in rects:
            near[max(0, r0 - g) : r1 + g, max(0, c0 - g) : c1 + g] = True
        touches = _box_sum(_integral(near), c) > 0
        nodata = _box_sum(_integral(~valid), c) > self.max_nodata_fraction * c * c
        positions = np.argwhere(~touches & ~nodata)
        return RasterScene(path, data, valid, rects, ~near, positions)

    def prepare_scenes(self) -> list[RasterScene]:
        """Read the rasters and split them (done once; also by :meth:`setup`)."""
        if self.scenes is None:
            scenes = [self._scene(k, p) for k, p in enumerate(list_rasters(self.sources))]
            counts = {s.data.shape[0] for s in scenes}
            if len(counts) != 1:
                raise RasterFileError(f"the rasters have different band counts {sorted(counts)}; select bands with 'bands'")
            if not any(len(s.positions) for s in scenes):
                raise RasterFileError(
                    f"no training window of {self.crop_size} px fits outside the validation blocks (gap {self.gap}) "
                    f"with at most {self.max_nodata_fraction:.0%} nodata"
                )
            self.scenes = scenes
        return self.scenes

    def compute_normalization(self) -> Normalization:
        """Per-band robust normalisation over the training area's valid pixels (validation blocks and gap excluded)."""
        scenes = self.prepare_scenes()
        low, high = self.percentiles
        samples = [(s.data, s.valid & s.train_area) for s in scenes if len(s.positions)]
        return robust_band_normalization(samples, low, high, seed=self.seed)

    def validation_windows(self) -> list[tuple[int, int, int, int, int]]:
        """``(scene, row, col, height, width)`` windows tiling each validation block, without nodata.

        A block is split evenly into ``ceil(side / val_crop_size)`` windows per axis, each cut to
        a multiple of ``multiple`` (from its top-left corner).
        """
        out = []
        m, size = self.multiple, self.val_crop_size
        for k, s in enumerate(self.prepare_scenes()):
            for r0, r1, c0, c1 in s.val_rects:
                nr, nc = -(-(r1 - r0) // size), -(-(c1 - c0) // size)
                hs, ws = (r1 - r0) // nr, (c1 - c0) // nc
                h, w = hs // m * m, ws // m * m
                if not (h and w):
                    continue
                for a in range(nr):
                    for b in range(nc):
                        i, j = r0 + a * hs, c0 + b * ws
                        if s.valid[i : i + h, j : j + w].all():
                            out.append((k, i, j, h, w))
        return out

    def write_validation_rasters(self, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
        """Write each validation block as a GeoTIFF (selected bands, transform shifted) for ``evaluate``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        grid_blocks = {}
        paths = []
        for s in self.prepare_scenes():
            grid_blocks = split_blocks(s.valid.shape, self.grid)
            names = {v: k for k, v in grid_blocks.items()}
            for rect in s.val_rects:
                r, c = names[rect]
                dst = out / f"{s.path.stem}_block_r{r}c{c}.tif"
                crop_raster(s.path, dst, (slice(rect[0], rect[1]), slice(rect[2], rect[3])), self.bands, overwrite)
                paths.append(dst)
        return paths

    # --- Lightning ----------------------------------------------------------------------------------
    @classmethod
    def model_channels(  # type: ignore[override]
        cls, train: str | list[str], bands: list[int] | None = None, **init_args: Any
    ) -> int:
        """Channels of the batches: the selected bands, or every band of the first raster (its header is read)."""
        if bands is not None:
            return len(bands)
        with RasterReader(list_rasters(train)[0], None) as r:
            return len(r.meta.bands)

    @property
    def domain_spec(self) -> dict[str, Any]:
        """Stored in the checkpoint by ``DiffusionSR``: inference selects the same bands."""
        return {"kind": "satellite", "bands": self.bands}

    def setup(self, stage: str) -> None:
        scenes = self.prepare_scenes()
        if self.normalization is None:
            self.normalization = self.compute_normalization()
        fill = np.asarray(self.normalization.offset, dtype=np.float32)
        if fill.size == 1:
            fill = np.repeat(fill, scenes[0].data.shape[0])
        if stage == "fit" and self.train_set is None:
            self.train_set = RandomWindowDataset(
                [s for s in scenes if len(s.positions)], self.crop_size, self.samples_per_epoch, fill, self.seed, self.augment
            )
        if self.val_set is None:
            windows = self.validation_windows()
            self.val_set = WindowListDataset(scenes, windows) if windows else None



class ReferenceRasterDataModule(RasterDataModule):
    """:class:`RasterDataModule` whose batches also carry a co-registered reference: reference-guided SR.

    Each training raster has a reference raster (``reference``: one file per raster of ``train``,
    in the sorted order :func:`list_rasters` gives), brought onto that raster's grid by
    :func:`domains.satellite.reference.load_reference`: its CRS, orientation, pixel size and extent
    are checked, a sub-pixel offset between the grids (USGS Landsat's half pan pixel) is resampled
    away by cubic convolution at the offset measured from the geotransforms, and a reference finer
    than the raster by ``reference_operator``'s factors (the 15 m pan beside the 30 m bands) is
    degraded by that operator onto the raster's grid. That is Wald's protocol: the 30 m bands are
    the target, the model's operator makes the 60 m input from them, and the pan degraded to 30 m
    is the reference on the target grid. At inference the real 30 m bands are the input and the
    real 15 m pan is the reference on the 15 m output grid.

    Batches are ``{"hr": (B, C, H, W), "ref": (B, R, H, W)}`` in data units, the same window,
    flips and turns. A pixel where the reference has nodata counts as missing (training windows
    avoid it as they avoid nodata). ``reference_normalization`` (robust per-band percentiles of
    the reference over the training area) is picked up by :class:`toolkit.lightning.DiffusionSR`
    and stored in the checkpoint; ``reference_channels`` is checked against the model's.

    Args:
        reference: reference GeoTIFF(s), one per training raster.
        reference_bands: 1-based bands of the references (default all).
        reference_operator: degrades a finer reference onto the rasters' grid (use the model's
            operator, e.g. ``SensorMTFDownsample(2, 0.3)``); ``None``: references must be on the
            rasters' pixel size already.
        bands, grid, val_blocks, val_fraction, gap, crop_size, val_crop_size, multiple,
        max_nodata_fraction, batch_size, samples_per_epoch, percentiles, augment, num_workers, seed:
            as :class:`RasterDataModule`.
    """

    def __init__(
        self,
        train: str | list[str],
        reference: str | list[str],
        reference_bands: list[int] | None = None,
        reference_operator: Operator | None = None,
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
        super().__init__(
            train, bands, grid, val_blocks, val_fraction, gap, crop_size, val_crop_size, multiple, max_nodata_fraction,
            batch_size, samples_per_epoch, percentiles, augment, num_workers, seed,
        )
        self.references = [reference] if isinstance(reference, (str, Path)) else list(reference)
        self.reference_bands = None if reference_bands is None else [int(b) for b in reference_bands]
        self.reference_operator = reference_operator
        self.reference_normalization: Normalization | None = None

    @property
    def reference_channels(self) -> int:
        """Bands of the references (read from the first one's header)."""
        if self.reference_bands is not None:
            return len(self.reference_bands)
        with RasterReader(self.references[0], None) as r:
            return len(r.meta.bands)

    def _scene(self, index: int, path: Path) -> RasterScene:
        from domains.satellite.reference import load_reference

        files = list_rasters(self.sources)
        if len(self.references) != len(files):
            raise RasterFileError(f"{len(self.references)} reference(s) for {len(files)} training raster(s): give one per raster, in sorted order")
        with RasterReader(path, self.bands) as r:
            grid = r.meta
        ref, ref_valid = load_reference(self.references[index], grid, self.reference_bands, self.reference_operator)
        scene = super()._scene(index, path)
        if not ref_valid.all():  # windows avoid the reference's nodata as they avoid the raster's
            scene.valid = scene.valid & ref_valid
            c = self.crop_size
            nodata = _box_sum(_integral(~scene.valid), c) > self.max_nodata_fraction * c * c
            keep = ~nodata[scene.positions[:, 0], scene.positions[:, 1]]
            scene.positions = scene.positions[keep]
        scene.ref = ref
        return scene

    def compute_reference_normalization(self) -> Normalization:
        """Per-band robust normalisation of the references over the training area (as :meth:`compute_normalization`)."""
        scenes = self.prepare_scenes()
        low, high = self.percentiles
        samples = [(s.ref, s.valid & s.train_area) for s in scenes if len(s.positions) and s.ref is not None]
        return robust_band_normalization(samples, low, high, seed=self.seed)

    def setup(self, stage: str) -> None:
        self.prepare_scenes()
        if self.reference_normalization is None:
            self.reference_normalization = self.compute_reference_normalization()
        super().setup(stage)
