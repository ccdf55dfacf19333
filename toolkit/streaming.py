"""Streaming tiled sampling: super-resolve inputs larger than memory, tile by tile, blending inside every step.

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
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from toolkit.checkpoint import SRModel, upscale_any_size
from toolkit.engine import SamplerOptions, _flip_dims
from toolkit.guidance import classifier_free
from toolkit.samplers import ddim_coefficients, dpmpp_2m_update
from toolkit.tiling import Tiling, gaussian_weight, tile_starts
from toolkit.utils import make_generator, upsample

Region = tuple[slice, ...]
ReadLR = Callable[[Region], np.ndarray]
WriteHR = Callable[[Region, np.ndarray], None]

#: low-resolution samples of context on each side of a window (bicubic needs 2)
LR_MARGIN = 2


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


# --- noise field ---------------------------------------------------------------------------------
class NoiseField:
    """Standard normal noise over an unbounded grid, the same wherever it is read from.

    Block ``b`` (``block`` samples per axis) of draw ``key`` comes from
    ``numpy.random.default_rng((seed, *key, *b))``.
    """

    def __init__(self, seed: int, channels: int, block: int = 32) -> None:
        self.seed, self.channels, self.block = int(seed), int(channels), int(block)

    def region(self, key: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """Noise of draw ``key`` over ``[lo, hi)``: ``(C, *(hi - lo))`` float32."""
        b = self.block
        out = np.empty((self.channels, *(h - a0_ for a0_, h in zip(lo, hi))), dtype=np.float32)
        ranges = [range(a0_ // b, (h - 1) // b + 1) for a0_, h in zip(lo, hi)]
        for idx in itertools.product(*ranges):
            rng = np.random.default_rng([self.seed, *[int(k) for k in key], *idx])
            block = rng.standard_normal((self.channels, *([b] * len(idx))), dtype=np.float32)
            src, dst = [slice(None)], [slice(None)]
            for i, a0_, h in zip(idx, lo, hi):
                a, e = max(i * b, a0_), min((i + 1) * b, h)
                src.append(slice(a - i * b, e - i * b))
                dst.append(slice(a - a0_, e - a0_))
            out[tuple(dst)] = block[tuple(src)]
        return out


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
        return np.flip(arr, [1 + a for a in self.flips]) if self.flips else arr

    def out_region(self, region: Region, hr_shape: Sequence[int]) -> Region:
        return self._true(region, hr_shape)

    def out_value(self, value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.flip(value, [1 + a for a in self.flips])) if self.flips else value


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


# --- the sampler ---------------------------------------------------------------------------------
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
    precision: str = "32",
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
        options: sampler options (``ddim``/``ddpm``/``dpmpp``, steps, truncated start, guidance,
            consistency, samples, flip ensemble).
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

    A state space on a coarser grid than the output (wavelet, latent: ``space.stride > 1``) is not
    streamed: the input is read whole and sampled in memory, the network still running tile by
    tile (:func:`toolkit.checkpoint.upscale_any_size`), and the output written once.

    Raises:
        ValueError: DDNM consistency at every step with an operator that is not block-local.
    """
    if model.space.stride != 1:
        _upscale_whole(model, read_lr, lr_shape, write_hr, options, seed, tiling, write_std, progress, precision)
        return
    op, space, process, norm = model.operator, model.space, model.process, model.normalization
    denoiser = model.denoiser
    device = next(denoiser.parameters()).device
    lr_shape = tuple(int(n) for n in lr_shape)
    hr_shape = op.hr_shape(lr_shape)
    factors = op.factors
    if options.consistency == "every_step" and not op.block_local:
        raise ValueError(
            f"consistency 'every_step' with a streamed {type(op).__name__} is not supported (not block-local)"
        )
    layout = StreamLayout(hr_shape, factors, denoiser.multiple, tiling)
    nd, cz = len(hr_shape), denoiser.state_channels
    k_samples = max(1, int(options.samples))
    noise = NoiseField(seed, cz, noise_block)
    timesteps, alpha_bars = process.sampling_schedule(
        max(1, options.steps - 1) if options.t_start is not None and options.start == "regression" else options.steps,
        options.t_start,
    )
    ab_all = alpha_bars.tolist()
    autocast_dtype = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    n_arrays = 2 + (options.sampler == "dpmpp") + (2 if k_samples > 1 else 0)
    nbytes = 4 * (cz * n_arrays + 1) * math.prod(layout.shape)
    on_disk = state == "disk" or (state == "auto" and nbytes > memory_limit_mb * 2**20)
    m_hr = [LR_MARGIN * f for f in factors]
    whole_projection = (
        options.consistency != "none"
        and not op.block_local
        and 4 * model.channels * math.prod(hr_shape) <= exact_projection_mb * 2**20
    )

    from tqdm.auto import tqdm

    with ExitStack() as stack:
        folder = (
            stack.enter_context(tempfile.TemporaryDirectory(prefix="diffsr-stream-", dir=workdir)) if on_disk else None
        )

        def array(name: str, channels: int, shape: Sequence[int]) -> StateArray:
            if folder is None:
                return MemoryArray((channels, *shape))
            return DiskArray(os.path.join(folder, name), (channels, *shape))

        z_arr, acc = array("z", cz, layout.shape), array("acc", cz, layout.shape)
        norm_arr = array("norm", 1, layout.shape)
        for cell in layout.cells:
            norm_arr.write(cell, layout.norm(cell))
        x0_prev = array("x0_prev", cz, layout.shape) if options.sampler == "dpmpp" else None
        mean = array("mean", model.channels, hr_shape) if k_samples > 1 else None
        m2 = array("m2", model.channels, hr_shape) if k_samples > 1 else None
        n_model_calls = len(timesteps) + (options.t_start is not None and options.start == "regression")
        bar = stack.enter_context(
            tqdm(total=k_samples * n_model_calls, desc="sampling", unit="step", disable=not progress, leave=False)
        )

        for k in range(k_samples):
            flips = tuple(d - 2 for d in _flip_dims(k, nd)) if options.flip_ensemble else ()
            frame = _Frame(read_lr, lr_shape, flips)

            def lr_window(lo: Sequence[int], hi: Sequence[int], frame: _Frame = frame) -> torch.Tensor:
                """Normalised low-resolution input over HR ``[lo, hi)`` widened by the margin, ``(1, C, *)``."""
                llo = [a0_ // f - LR_MARGIN for a0_, f in zip(lo, factors)]
                lhi = [h // f + LR_MARGIN for h, f in zip(hi, factors)]
                y = read_padded(frame.read, lr_shape, llo, lhi)
                return norm.normalize(torch.from_numpy(np.ascontiguousarray(y))[None].to(device))

            def widened(lo: Sequence[int], hi: Sequence[int]) -> tuple[list[int], list[int], Region]:
                wlo = [a0_ - m for a0_, m in zip(lo, m_hr)]
                whi = [h + m for h, m in zip(hi, m_hr)]
                inner = (slice(None), slice(None), *_region(m_hr, [m + h - a0_ for m, a0_, h in zip(m_hr, lo, hi)]))
                return wlo, whi, inner

            def cond_window(lo: Sequence[int], hi: Sequence[int]) -> torch.Tensor:
                """Interpolated condition over ``[lo, hi)`` ``(1, C, *)``."""
                y = lr_window(lo, hi)
                wlo, whi, inner = widened(lo, hi)
                return space.condition(y, [h - a0_ for a0_, h in zip(wlo, whi)])[inner]

            def decode_window(
                z: np.ndarray, lo: Sequence[int], hi: Sequence[int]
            ) -> tuple[torch.Tensor, torch.Tensor, Region]:
                """Decode a state window: returns the widened image, the widened LR and the crop back."""
                y = lr_window(lo, hi)
                wlo, whi, inner = widened(lo, hi)
                zt = torch.from_numpy(z)[None].to(device)
                pads = []
                for m in reversed(m_hr):
                    pads += [m, m]
                zt = torch.nn.functional.pad(zt, pads, mode="replicate") if any(m_hr) else zt
                return space.decode(zt, y), y, inner

            def run_network(t_value: int) -> None:
                """Blend the network's ``x0`` over all tiles into ``acc`` (``acc`` zeroed first)."""
                acc.zero()
                t_tensor = torch.full((1,), float(t_value), device=device)
                per_call = max(1, tiling.batch)
                for start in range(0, len(layout.tiles), per_call):
                    tiles = layout.tiles[start : start + per_call]
                    zs, cs = [], []
                    for tile in tiles:
                        lo, hi = _bounds(tile)
                        zs.append(torch.from_numpy(z_arr.read(tile)).to(device))
                        cs.append(cond_window(lo, hi)[0])
                    zb, cb = torch.stack(zs), torch.stack(cs)
                    model_fn = classifier_free(denoiser, process, cb, options.guidance_scale)
                    with (
                        torch.no_grad(),
                        torch.autocast(
                            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
                        ),
                    ):
                        x0, _ = model_fn(zb, t_tensor.expand(len(tiles)))
                    x0 = x0.float().cpu().numpy()
                    for j, tile in enumerate(tiles):
                        acc.add(tile, x0[j] * layout.weight)
                bar.update(1)

            def blended(cell: Region) -> np.ndarray:
                return acc.read(cell) / norm_arr.read(cell)

            # -- start ------------------------------------------------------------------------
            for cell in layout.cells:
                lo, hi = _bounds(cell)
                z_arr.write(cell, noise.region((k, 0), lo, hi))
            if options.t_start is not None:
                if options.start == "regression":
                    run_network(process.timesteps - 1)
                a0, s0 = math.sqrt(ab_all[0]), math.sqrt(1 - ab_all[0])
                for cell in layout.cells:
                    lo, hi = _bounds(cell)
                    if options.start == "regression":
                        estimate = blended(cell)
                    else:  # SDEdit: the interpolated input, encoded
                        y = lr_window(lo, hi)
                        wlo, whi, inner = widened(lo, hi)
                        estimate = (
                            space.encode(upsample(y, [h - a0_ for a0_, h in zip(wlo, whi)]), y)[inner][0].cpu().numpy()
                        )
                    z_arr.write(cell, a0 * estimate + s0 * noise.region((k, 1), lo, hi))

            # -- steps ------------------------------------------------------------------------
            h_prev = 0.0
            for i, t in enumerate(timesteps.tolist()):
                run_network(t)
                ab, ab_next = ab_all[i], ab_all[i + 1]
                a, s = math.sqrt(ab), math.sqrt(1 - ab)
                h_step = 0.0
                for cell in layout.cells:
                    lo, hi = _bounds(cell)
                    x0 = blended(cell)
                    z = z_arr.read(cell)
                    if options.consistency == "every_step":
                        # DDNM: project the decoded x0 onto {x : A x = y}; eps follows so z is unchanged
                        x, y, inner = decode_window(x0, lo, hi)
                        x0_new = space.encode(op.project(x, y), y)[inner][0].cpu().numpy()
                        eps = (z - a * x0) / s + a / s * (x0 - x0_new)
                        x0 = x0_new
                    else:
                        eps = (z - a * x0) / s
                    if options.sampler == "dpmpp":
                        assert x0_prev is not None
                        prev = torch.from_numpy(x0_prev.read(cell)) if i > 0 else None
                        z_new, h_step = dpmpp_2m_update(
                            torch.from_numpy(z), torch.from_numpy(x0), prev, ab, ab_next, h_prev
                        )
                        z_new_np = z_new.numpy()
                        x0_prev.write(cell, x0)
                    else:
                        eta = 1.0 if options.sampler == "ddpm" else options.eta
                        c_x0, c_eps, sigma = ddim_coefficients(ab, ab_next, eta)
                        z_new_np = c_x0 * x0 + c_eps * eps
                        if sigma > 0:
                            z_new_np = z_new_np + sigma * noise.region((k, 2 + i), lo, hi)
                    z_arr.write(cell, z_new_np.astype(np.float32))
                h_prev = h_step or h_prev

            def emit(region: Region, value: np.ndarray, k: int = k) -> None:
                """Hand one finished output region on: written (one sample) or accumulated."""
                if k_samples == 1:
                    write_hr(region, np.ascontiguousarray(value))
                    return
                assert mean is not None and m2 is not None
                # Welford: running mean and sum of squared deviations, in the true frame
                mu = mean.read(region)
                delta = value - mu
                mu = mu + delta / (k + 1)
                mean.write(region, mu)
                m2.add(region, delta * (value - mu))

            # -- decode, project, accumulate ------------------------------------------------
            whole = MemoryArray((model.channels, *hr_shape)) if whole_projection else None
            regions: list[Region] = []
            for cell in layout.cells:
                lo, hi = _bounds(cell)
                if any(a0_ >= n for a0_, n in zip(lo, hr_shape)):
                    continue  # padding only
                x, y, inner = decode_window(z_arr.read(cell), lo, hi)
                if options.consistency != "none" and whole is None:
                    x = op.project(x, y)  # exact inside the window for block-local operators
                x_np = norm.denormalize(x[inner])[0].float().cpu().numpy()
                hi_c = [min(h, n) for h, n in zip(hi, hr_shape)]
                x_np = x_np[(slice(None), *(slice(0, h - a0_) for a0_, h in zip(lo, hi_c)))]
                region = frame.out_region(_region(lo, hi_c), hr_shape)
                if whole is not None:
                    whole.write(region, frame.out_value(x_np))
                    regions.append(region)
                else:
                    emit(region, frame.out_value(x_np))
            if whole is not None:
                # the whole sample projected at once, in data units (the normalisation is an affine
                # map per channel and these operators act per channel and keep constants)
                everything = tuple(slice(0, n) for n in hr_shape)
                x_all = torch.from_numpy(whole.read(everything))[None].double()
                y_all = np.asarray(read_lr(tuple(slice(0, n) for n in lr_shape)), dtype=np.float64)
                x_all = op.project(x_all, torch.from_numpy(y_all)[None])[0].float().numpy()
                for region in regions:
                    emit(region, x_all[(slice(None), *region)])
        if k_samples > 1:
            assert mean is not None and m2 is not None
            for cell in layout.cells:
                lo, hi = _bounds(cell)
                if any(a0_ >= n for a0_, n in zip(lo, hr_shape)):
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
    precision: str,
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
            total=options.steps * max(1, options.samples), desc="sampling", unit="step", disable=not progress, leave=False
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
