"""Streaming tiled sampling: super-resolve inputs larger than memory, tile by tile, blending inside every step.

:class:`StreamCanvas` is a :class:`toolkit.engine.Canvas`: the engine's one loop
(:func:`toolkit.engine.sample_canvas`) samples here exactly as it does in memory, with the same
steppers, starts, guidance and ensemble; only where the state lives and how noise is drawn differ.

The diffusion state of the whole output lives in float32 arrays, in memory for small inputs and
in files on disk otherwise (mapped only while a region is read or written, so they never add to
the process's resident memory). Each sampling step runs the network over overlapping tiles,
accumulates their Gaussian-weighted ``x0`` predictions, and then updates the state cell by cell
(non-overlapping blocks). The low-resolution input is read window by window through a callback
and the output is handed back the same way, so peak memory follows the tile size, not the input.

Noise is a fixed field keyed by position: blocks of ``noise_block`` samples per axis, each drawn
from its own generator seeded with ``(seed, draw, step, block index)``. Every tile that covers a
voxel sees the same noise there, whatever the tile size, overlap or order: no seams.

Geometry: tiles and cells start on multiples of the operator's factors, so a cell's
low-resolution window is exact; interpolation and decoding run on windows widened by a margin
(edge-replicated at the true border, as the interpolation itself does) and are cropped back, so
they equal the whole-array result. Data consistency is exact per cell for block-local operators
(:attr:`toolkit.operators.Operator.block_local`: area, slice averaging); other operators are
projected on widened windows, an approximation that :func:`stream_upscale` documents.

Reliability: every region handed back is checked to be finite (a ``ValueError`` naming the
likely cause otherwise, so a caller writing a file removes it). The on-disk state lives in a
``diffsr-stream-*`` folder holding its owner's host and process id; it is removed on any
exception, and a folder whose owner died without removing it (SIGKILL) is removed by the next
run in the same folder.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from toolkit.checkpoint import SRModel, upscale_any_size
from toolkit.engine import (
    Canvas,
    Precision,
    SamplerOptions,
    check_options,
    ensemble_flips,
    mirror,
    network_calls,
    network_precision,
    sample_canvas,
)
from toolkit.guidance import classifier_free
from toolkit.noise import NoiseField
from toolkit.tiling import Tiling, gaussian_weight, tile_starts
from toolkit.utils import make_generator, process_alive, upsample

Region = tuple[slice, ...]
ReadLR = Callable[[Region], np.ndarray]
WriteHR = Callable[[Region, np.ndarray], None]

#: low-resolution samples of context on each side of a window (bicubic needs 2)
LR_MARGIN = 2
#: prefix of the on-disk state folders, and the file in each naming its owner (``host pid``)
STATE_PREFIX, OWNER_FILE = "diffsr-stream-", "owner"


# --- state storage -------------------------------------------------------------------------------
class StateArray:
    """A float32 array of shape ``(C, *spatial)`` read and written by spatial region."""

    shape: tuple[int, ...]

    def read(self, region: Region) -> np.ndarray:
        raise NotImplementedError

    def write(self, region: Region, value: np.ndarray) -> None:
        raise NotImplementedError

    def add(self, region: Region, value: np.ndarray) -> None:
        self.write(region, self.read(region) + value)

    def zero(self) -> None:
        raise NotImplementedError


class MemoryArray(StateArray):
    """State held in a numpy array."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(shape)
        self.data = np.zeros(self.shape, dtype=np.float32)

    def read(self, region: Region) -> np.ndarray:
        return self.data[(slice(None), *region)].copy()

    def write(self, region: Region, value: np.ndarray) -> None:
        self.data[(slice(None), *region)] = value

    def add(self, region: Region, value: np.ndarray) -> None:
        self.data[(slice(None), *region)] += value

    def zero(self) -> None:
        self.data.fill(0)


class DiskArray(StateArray):
    """State in a raw float32 file, mapped only for the duration of each access.

    Unmapping after every access keeps the pages out of the process's resident set (they stay
    in the page cache, which the kernel reclaims as needed), so peak RSS does not grow with the
    array.
    """

    def __init__(self, path: str | Path, shape: Sequence[int]) -> None:
        self.path, self.shape = Path(path), tuple(shape)
        self.nbytes = 4 * math.prod(self.shape)
        self.zero()

    def _map(self) -> np.memmap:
        return np.memmap(self.path, dtype=np.float32, mode="r+", shape=self.shape)

    def read(self, region: Region) -> np.ndarray:
        m = self._map()
        out = np.array(m[(slice(None), *region)])
        del m
        return out

    def write(self, region: Region, value: np.ndarray) -> None:
        m = self._map()
        m[(slice(None), *region)] = value
        del m

    def add(self, region: Region, value: np.ndarray) -> None:
        m = self._map()
        m[(slice(None), *region)] += value
        del m

    def zero(self) -> None:
        with open(self.path, "wb") as f:  # a sparse file of zeros
            f.truncate(self.nbytes)


def remove_stale_state(workdir: str | Path | None = None) -> list[Path]:
    """Remove the state folders in ``workdir`` (default: the temporary folder) whose owner process is gone.

    Only folders whose owner file names this host and a process that no longer exists are
    removed (a run killed with SIGKILL leaves one); folders of live runs, of other hosts, and
    without an owner file are left alone.

    Returns:
        The folders removed.
    """
    host, removed = socket.gethostname(), []
    for folder in Path(workdir or tempfile.gettempdir()).glob(f"{STATE_PREFIX}*"):
        try:
            owner_host, pid = (folder / OWNER_FILE).read_text().split()
            stale = owner_host == host and not process_alive(int(pid))
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _state_folder(stack: ExitStack, workdir: str | Path | None) -> str:
    """A new state folder in ``workdir`` (removed when ``stack`` closes, on success or any exception) naming its owner."""
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix=STATE_PREFIX, dir=workdir))
    Path(folder, OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    return folder


# --- finiteness ----------------------------------------------------------------------------------
def _nonfinite_cause(model: SRModel, options: SamplerOptions, weights: bool = True) -> str | None:
    """What in the model or options is NaN or Inf (the likely cause of a non-finite output), or ``None``."""
    norm = model.normalization
    if not all(math.isfinite(v) for v in [*norm.offset, *norm.scale]):
        return "the checkpoint's normalisation holds NaN or Inf"
    if not math.isfinite(float(options.guidance_scale)):
        return f"the guidance scale is {options.guidance_scale}"
    if weights and not all(bool(torch.isfinite(p).all()) for p in model.denoiser.parameters()):
        return "the checkpoint's weights hold NaN or Inf (a diverged training run?)"
    return None


def _finite_only(write: WriteHR, model: SRModel, options: SamplerOptions, what: str) -> WriteHR:
    """``write`` that refuses a region holding NaN or Inf with a ``ValueError`` naming the likely cause."""

    def checked(region: Region, value: np.ndarray) -> None:
        if not np.isfinite(value).all():
            cause = _nonfinite_cause(model, options) or (
                "NaN or Inf in the checkpoint's weights or normalisation, or a non-finite guidance scale"
            )
            where = ", ".join(f"{s.start}:{s.stop}" for s in region)
            raise ValueError(f"non-finite output ({what} at [{where}]): likely cause: {cause}")
        write(region, value)

    return checked


# --- geometry ------------------------------------------------------------------------------------
def _region(lo: Sequence[int], hi: Sequence[int]) -> Region:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _bounds(region: Region) -> tuple[list[int], list[int]]:
    return [int(s.start) for s in region], [int(s.stop) for s in region]


def read_padded(
    read: Callable[[Region], np.ndarray], shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]
) -> np.ndarray:
    """Read ``[lo, hi)`` of an array of spatial ``shape`` through ``read``, edge-replicating outside it."""
    clo = [min(max(a0_, 0), n - 1) for a0_, n in zip(lo, shape)]
    chi = [max(min(h, n), c + 1) for h, n, c in zip(hi, shape, clo)]
    arr = read(_region(clo, chi))
    pads = [(0, 0)] + [(c - a0_, h - e) for a0_, h, c, e in zip(lo, hi, clo, chi)]
    if any(p != (0, 0) for p in pads):
        arr = np.pad(arr, [(max(a, 0), max(b, 0)) for a, b in pads], mode="edge")
        # windows entirely outside the array (negative pads) are cut back to size
        arr = arr[
            (slice(None), *(slice(max(-a, 0), arr.shape[i + 1] - max(-b, 0)) for i, (a, b) in enumerate(pads[1:])))
        ]
    return arr


class _Frame:
    """The low-resolution input and the output seen through the mirror of one flip-ensemble member."""

    def __init__(self, read_lr: ReadLR, lr_shape: tuple[int, ...], flips: tuple[int, ...]) -> None:
        self.read_lr, self.lr_shape, self.flips = read_lr, lr_shape, flips  # flips: spatial axes

    def _true(self, region: Region, shape: Sequence[int]) -> Region:
        out = list(region)
        for a in self.flips:
            s = region[a]
            out[a] = slice(shape[a] - s.stop, shape[a] - s.start)
        return tuple(out)

    def read(self, region: Region) -> np.ndarray:
        arr = self.read_lr(self._true(region, self.lr_shape))
        return mirror(arr, self.flips, first_spatial=1)

    def out_region(self, region: Region, hr_shape: Sequence[int]) -> Region:
        return self._true(region, hr_shape)

    def out_value(self, value: np.ndarray) -> np.ndarray:
        return mirror(value, self.flips, first_spatial=1)


class StreamLayout:
    """Padded state shape, tiles (overlapping) and cells (a partition) for one input size."""

    def __init__(self, hr_shape: Sequence[int], factors: Sequence[int], multiple: int, tiling: Tiling) -> None:
        nd = len(hr_shape)
        size = (tiling.size,) * nd if isinstance(tiling.size, int) else tuple(tiling.size)
        overlap = (tiling.overlap,) * nd if isinstance(tiling.overlap, int) else tuple(tiling.overlap)
        self.hr_shape = tuple(int(n) for n in hr_shape)
        units = [math.lcm(multiple, f) for f in factors]
        tile, shape = [], []
        for n, t, u in zip(self.hr_shape, size, units):
            t = max(u, t // u * u)
            if n < t:  # one tile along this axis: pad the state to a multiple of the unit
                t = -(-n // u) * u
                shape.append(t)
            else:
                shape.append(n)
            tile.append(t)
        self.shape, self.tile = tuple(shape), tuple(tile)
        self.overlap = tuple(min(-(-o // f) * f, t - f) if t > f else 0 for o, f, t in zip(overlap, factors, tile))
        starts = [tile_starts(n, t, o) for n, t, o in zip(self.shape, self.tile, self.overlap)]
        self.tiles = [_region(box, [b + t for b, t in zip(box, self.tile)]) for box in itertools.product(*starts)]
        cell_starts = [list(range(0, n, t)) for n, t in zip(self.shape, self.tile)]
        self.cells = [
            _region(box, [min(b + t, n) for b, t, n in zip(box, self.tile, self.shape)])
            for box in itertools.product(*cell_starts)
        ]
        self.weight = gaussian_weight(self.tile).numpy().astype(np.float32)

    def norm(self, cell: Region) -> np.ndarray:
        """Summed tile weights over ``cell`` ``(1, *cell)``."""
        lo, hi = _bounds(cell)
        out = np.zeros((1, *(h - a0_ for a0_, h in zip(lo, hi))), dtype=np.float32)
        for tile in self.tiles:
            tlo, thi = _bounds(tile)
            a = [max(x, y) for x, y in zip(lo, tlo)]
            b = [min(x, y) for x, y in zip(hi, thi)]
            if all(x < y for x, y in zip(a, b)):
                out[(slice(None), *_region([x - y for x, y in zip(a, lo)], [x - y for x, y in zip(b, lo)]))] += (
                    self.weight[_region([x - y for x, y in zip(a, tlo)], [x - y for x, y in zip(b, tlo)])]
                )
        return out


def welford(mean: np.ndarray, m2: np.ndarray, value: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Running mean and sum of squared deviations after sample ``k`` (0-based)."""
    delta = value - mean
    mean = mean + delta / (k + 1)
    return mean, m2 + delta * (value - mean)


# --- the streamed canvas -----------------------------------------------------------------------------
class StreamCanvas(Canvas):
    """One ensemble member's sampling state over a :class:`StreamLayout`, read and written cell by cell.

    The engine's loop (:func:`toolkit.engine.sample_canvas`) drives it exactly as it drives the
    in-memory canvas; what differs is only where the state lives (float32 arrays, in memory or on
    disk), how the network sees it (overlapping tiles whose ``x0`` predictions are blended with
    Gaussian weights into ``acc``) and how noise is drawn (the positional field, keyed by
    ``(member, draw)``).
    """

    def __init__(
        self,
        model: SRModel,
        layout: StreamLayout,
        frame: _Frame,
        lr_shape: tuple[int, ...],
        options: SamplerOptions,
        noise: NoiseField,
        member: int,
        arrays: Callable[[str, int, Sequence[int]], StateArray],
        fields: dict[str, StateArray],
        emit_region: Callable[[Region, np.ndarray], None],
        tiling: Tiling,
        precision: Precision,
        whole_projection: bool,
        read_whole_lr: Callable[[], np.ndarray],
    ) -> None:
        self.model, self.layout, self.frame, self.lr_shape = model, layout, frame, lr_shape
        self.options, self.field, self.member = options, noise, member
        self.arrays, self.fields, self.emit_region = arrays, fields, emit_region
        self.tiling, self.precision, self.read_whole_lr = tiling, precision, read_whole_lr
        self.device = next(model.denoiser.parameters()).device
        self.hr_shape = model.operator.hr_shape(lr_shape)
        self.factors = model.operator.factors
        self.m_hr = [LR_MARGIN * f for f in self.factors]
        self.cells = layout.cells
        self.whole = MemoryArray((model.channels, *self.hr_shape)) if whole_projection else None
        self.regions: list[Region] = []

    # -- storage --------------------------------------------------------------------------------
    def allocate(self, names: Sequence[str]) -> None:
        cz = self.model.denoiser.state_channels
        for name in [*names, "acc"]:
            if name != "x0" and name not in self.fields:
                self.fields[name] = self.arrays(name, cz, self.layout.shape)
        if "norm" not in self.fields:
            self.fields["norm"] = self.arrays("norm", 1, self.layout.shape)
            for cell in self.layout.cells:
                self.fields["norm"].write(cell, self.layout.norm(cell))

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arr))[None].to(self.device)

    def read(self, name: str, cell: Region) -> torch.Tensor:
        if name == "x0":  # the blended prediction
            return self._tensor(self.fields["acc"].read(cell) / self.fields["norm"].read(cell))
        return self._tensor(self.fields[name].read(cell))

    def write(self, name: str, cell: Region, value: torch.Tensor) -> None:
        self.fields[name].write(cell, value[0].float().cpu().numpy())

    def noise(self, draw: int, cell: Region) -> torch.Tensor:
        lo, hi = _bounds(cell)
        return self._tensor(self.field.region((self.member, draw), lo, hi))

    # -- windows --------------------------------------------------------------------------------
    def lr_window(self, lo: Sequence[int], hi: Sequence[int]) -> torch.Tensor:
        """Normalised low-resolution input over HR ``[lo, hi)`` widened by the margin, ``(1, C, *)``."""
        llo = [a // f - LR_MARGIN for a, f in zip(lo, self.factors)]
        lhi = [h // f + LR_MARGIN for h, f in zip(hi, self.factors)]
        y = read_padded(self.frame.read, self.lr_shape, llo, lhi)
        return self.model.normalization.normalize(torch.from_numpy(np.ascontiguousarray(y))[None].to(self.device))

    def widened(self, lo: Sequence[int], hi: Sequence[int]) -> tuple[list[int], Region]:
        """The widened window's shape and the crop back to ``[lo, hi)``."""
        shape = [h - a + 2 * m for a, h, m in zip(lo, hi, self.m_hr)]
        inner = (slice(None), slice(None), *_region(self.m_hr, [m + h - a for m, a, h in zip(self.m_hr, lo, hi)]))
        return shape, inner

    def decode_window(self, z: torch.Tensor, cell: Region) -> tuple[torch.Tensor, torch.Tensor, Region]:
        """Decode a state window: the widened image, the widened LR and the crop back."""
        lo, hi = _bounds(cell)
        y = self.lr_window(lo, hi)
        _, inner = self.widened(lo, hi)
        pads = [m for m in reversed(self.m_hr) for _ in (0, 1)]
        zt = torch.nn.functional.pad(z, pads, mode="replicate") if any(self.m_hr) else z
        return self.model.space.decode(zt, y), y, inner

    # -- the loop's questions -------------------------------------------------------------------
    def predict(self, t: float, loss: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Blend the guided network's ``x0`` over all tiles into ``acc`` (no gradients: zero-shot is refused here)."""
        if loss is not None:
            raise ValueError("a gradient through the network (DPS) needs the whole array in memory, not a streamed one")
        acc, layout, space = self.fields["acc"], self.layout, self.model.space
        acc.zero()
        per_call = max(1, self.tiling.batch)
        for start in range(0, len(layout.tiles), per_call):
            tiles = layout.tiles[start : start + per_call]
            zs, cs = [], []
            for tile in tiles:
                lo, hi = _bounds(tile)
                zs.append(self.read("z", tile)[0])
                shape, inner = self.widened(lo, hi)
                cs.append(space.condition(self.lr_window(lo, hi), shape)[inner][0])
            zb, cb = torch.stack(zs), torch.stack(cs)
            model_fn = classifier_free(self.model.denoiser, self.model.process, cb, self.options.guidance_scale)
            with network_precision(self.device, self.precision):
                x0, _ = model_fn(zb, torch.full((len(tiles),), float(t), device=self.device))
            x0_np = x0.float().cpu().numpy()
            for j, tile in enumerate(tiles):
                acc.add(tile, x0_np[j] * layout.weight)

    def interpolated(self, cell: Region) -> torch.Tensor:
        lo, hi = _bounds(cell)
        y = self.lr_window(lo, hi)
        shape, inner = self.widened(lo, hi)
        return self.model.space.encode(upsample(y, shape), y)[inner]

    def consistent(self, x0: torch.Tensor, cell: Region) -> torch.Tensor:
        x, y, inner = self.decode_window(x0, cell)
        return self.model.space.encode(self.model.operator.project(x, y), y)[inner]

    def emit(self, cell: Region, z: torch.Tensor) -> None:
        lo, hi = _bounds(cell)
        if any(a >= n for a, n in zip(lo, self.hr_shape)):
            return  # padding only
        x, y, inner = self.decode_window(z, cell)
        if self.options.final_projection and self.whole is None:
            x = self.model.operator.project(x, y)  # exact inside the window for block-local operators
        x_np = self.model.normalization.denormalize(x[inner])[0].float().cpu().numpy()
        hi_c = [min(h, n) for h, n in zip(hi, self.hr_shape)]
        x_np = x_np[(slice(None), *(slice(0, h - a) for a, h in zip(lo, hi_c)))]
        region = self.frame.out_region(_region(lo, hi_c), self.hr_shape)
        if self.whole is not None:
            self.whole.write(region, self.frame.out_value(x_np))
            self.regions.append(region)
        else:
            self.emit_region(region, self.frame.out_value(x_np))

    def finish(self) -> None:
        if self.whole is None:
            return
        # the whole sample projected at once, in data units (the normalisation is an affine map per
        # channel and these operators act per channel and keep constants)
        everything = tuple(slice(0, n) for n in self.hr_shape)
        x_all = torch.from_numpy(self.whole.read(everything))[None].double()
        y_all = torch.from_numpy(np.asarray(self.read_whole_lr(), dtype=np.float64))[None]
        projected = self.model.operator.project(x_all, y_all)[0].float().numpy()
        for region in self.regions:
            self.emit_region(region, projected[(slice(None), *region)])


# --- the sampler -----------------------------------------------------------------------------------
def stream_upscale(
    model: SRModel,
    read_lr: ReadLR,
    lr_shape: Sequence[int],
    write_hr: WriteHR,
    options: SamplerOptions,
    seed: int = 0,
    tiling: Tiling = Tiling(),
    write_std: WriteHR | None = None,
    workdir: str | Path | None = None,
    progress: bool = False,
    precision: Precision = "32",
    state: Literal["auto", "memory", "disk"] = "auto",
    memory_limit_mb: float = 64.0,
    noise_block: int = 32,
    exact_projection_mb: float = 1024.0,
) -> None:
    """Super-resolve an input read window by window; the output is written window by window.

    Args:
        model: the trained model (its operator, space, process, normalisation and network).
        read_lr: ``read_lr(region)`` returns the low-resolution input over the spatial ``region``
            (slices within ``lr_shape``) as ``(C, *window)`` float32 in data units.
        lr_shape: spatial shape of the low-resolution input.
        write_hr: receives ``(region, (C, *window))`` float32 in data units for non-overlapping
            regions that cover the output once (the mean over ``options.samples`` samples).
        options: sampler options (any registered sampler, steps, truncated start, guidance,
            consistency, samples, flip ensemble), as in memory.
        seed: seed of the noise field.
        tiling: tile size and overlap (rounded to multiples of the network's downsampling and the
            operator's factors) and tiles per network call.
        write_std: receives the per-voxel standard deviation over the samples (samples > 1).
        workdir: folder for the on-disk state (default: the system's temporary folder).
        state: keep the state in ``memory``, on ``disk``, or ``auto`` (disk above ``memory_limit_mb``).
        noise_block: side of the noise field's blocks.
        exact_projection_mb: the final projection of an operator that is not block-local (a
            blur before downsampling: every output pixel depends on inputs beyond its cell) is
            made on the whole image, exactly, when the output takes at most this much memory
            (float32); above it, window by window on widened windows (approximate at cell edges).

    A state space on a coarser grid than the output (wavelet, latent: ``space.stride > 1``) and a
    classifier-guided model (``model.guide``: the classifier sees the whole state) are not streamed: the input is read whole and sampled in memory, the network still running tile by
    tile (:func:`toolkit.checkpoint.upscale_any_size`), and the output written once.

    Raises:
        ValueError: DDNM consistency at every step with an operator that is not block-local, or
            with a state space that is not linear; a non-finite normalisation or guidance scale
            (before sampling); a non-finite output region (before it is handed on).
    """
    check_options(options, model.space)
    remove_stale_state(workdir)
    cause = _nonfinite_cause(model, options, weights=False)
    if cause:
        raise ValueError(f"non-finite output (refused before sampling): {cause}")
    write_hr = _finite_only(write_hr, model, options, "output")
    if write_std is not None:
        write_std = _finite_only(write_std, model, options, "standard deviation")
    if model.space.stride != 1 or model.guide is not None:  # a coarser state grid, or classifier guidance (its classifier sees the whole state): in memory
        _upscale_whole(model, read_lr, lr_shape, write_hr, options, seed, tiling, write_std, progress, precision)
        return
    op, denoiser = model.operator, model.denoiser
    lr_shape = tuple(int(n) for n in lr_shape)
    hr_shape = op.hr_shape(lr_shape)
    if options.consistency == "every_step" and not op.block_local:
        raise ValueError(
            f"consistency 'every_step' with a streamed {type(op).__name__} is not supported (not block-local)"
        )
    layout = StreamLayout(hr_shape, op.factors, denoiser.multiple, tiling)
    k_samples = max(1, int(options.samples))
    noise = NoiseField(seed, denoiser.state_channels, noise_block)
    n_arrays = 3 + 2 + (2 if k_samples > 1 else 0)  # z, acc, history (up to 2), mean and m2
    nbytes = 4 * (denoiser.state_channels * n_arrays + 1) * math.prod(layout.shape)
    on_disk = state == "disk" or (state == "auto" and nbytes > memory_limit_mb * 2**20)
    whole_projection = (
        options.final_projection
        and not op.block_local
        and 4 * model.channels * math.prod(hr_shape) <= exact_projection_mb * 2**20
    )
    n_calls = network_calls(model.process, options)

    from tqdm.auto import tqdm

    with ExitStack() as stack:
        folder = _state_folder(stack, workdir) if on_disk else None

        def array(name: str, channels: int, shape: Sequence[int]) -> StateArray:
            if folder is None:
                return MemoryArray((channels, *shape))
            return DiskArray(os.path.join(folder, name), (channels, *shape))

        fields: dict[str, StateArray] = {}
        mean = array("mean", model.channels, hr_shape) if k_samples > 1 else None
        m2 = array("m2", model.channels, hr_shape) if k_samples > 1 else None
        bar = stack.enter_context(
            tqdm(total=k_samples * n_calls, desc="sampling", unit="step", disable=not progress, leave=False)
        )
        whole_lr = tuple(slice(0, n) for n in lr_shape)

        for k, flips in enumerate(ensemble_flips(options, len(hr_shape))):

            def emit(region: Region, value: np.ndarray, k: int = k) -> None:
                """Hand one finished output region on: written (one sample) or accumulated."""
                if k_samples == 1:
                    write_hr(region, np.ascontiguousarray(value))
                    return
                assert mean is not None and m2 is not None
                mu, sq = welford(mean.read(region), m2.read(region), value, k)
                mean.write(region, mu)
                m2.write(region, sq)

            canvas = StreamCanvas(
                model, layout, _Frame(read_lr, lr_shape, flips), lr_shape, options, noise, k, array, fields, emit,
                tiling, precision, whole_projection, lambda: read_lr(whole_lr),
            )
            sample_canvas(canvas, model.process, options, lambda i, z, x0: bar.update(1))
        if k_samples > 1:
            assert mean is not None and m2 is not None
            for cell in layout.cells:
                lo, hi = _bounds(cell)
                if any(a >= n for a, n in zip(lo, hr_shape)):
                    continue
                region = _region(lo, [min(h, n) for h, n in zip(hi, hr_shape)])
                write_hr(region, mean.read(region))
                if write_std is not None:
                    write_std(region, np.sqrt(m2.read(region) / (k_samples - 1)))

def _upscale_whole(
    model: SRModel,
    read_lr: ReadLR,
    lr_shape: Sequence[int],
    write_hr: WriteHR,
    options: SamplerOptions,
    seed: int,
    tiling: Tiling,
    write_std: WriteHR | None,
    progress: bool,
    precision: Precision,
) -> None:
    """The in-memory path of :func:`stream_upscale` (spaces whose state is on a coarser grid).

    A space that encodes and decodes in tiles of its own (a latent space's autoencoder) but was
    saved with ``tile = 0`` (one pass) gets the network's tile size for this call, scaled to
    image pixels, so an input larger than one pass still goes through in pieces.
    """
    from tqdm.auto import tqdm

    device = next(model.denoiser.parameters()).device
    y = torch.from_numpy(np.ascontiguousarray(read_lr(tuple(slice(0, int(n)) for n in lr_shape)), dtype=np.float32))
    space, saved = model.space, (getattr(model.space, "tile", None), getattr(model.space, "overlap", None))
    if saved[0] == 0:
        side = min((tiling.size,) if isinstance(tiling.size, int) else tiling.size) * space.stride
        over = min((tiling.overlap,) if isinstance(tiling.overlap, int) else tiling.overlap) * space.stride
        space.tile, space.overlap = side, min(side - space.stride, max(32, over) // space.stride * space.stride)  # type: ignore[attr-defined]
    try:
        with tqdm(
            total=network_calls(model.process, options) * max(1, options.samples), desc="sampling", unit="step", disable=not progress, leave=False
        ) as bar:
            x, std = upscale_any_size(
                model, y[None], options, make_generator(seed, device), lambda i, z, x0: bar.update(1), tiling, precision
            )
    finally:
        if saved[0] == 0:
            space.tile, space.overlap = saved  # type: ignore[attr-defined]
    region = tuple(slice(0, n) for n in x.shape[2:])
    write_hr(region, np.ascontiguousarray(x[0].numpy()))
    if write_std is not None and std is not None:
        write_std(region, np.ascontiguousarray(std[0].numpy()))
