"""GeoTIFF in, GeoTIFF out: degrade, upscale (streamed window by window) and evaluate multispectral rasters.

* :func:`degrade_raster` writes ``A(x)`` on the coarser grid (``transform @ Affine.scale(s)``).
* :func:`upscale_raster` streams the input through :func:`toolkit.streaming.stream_upscale`:
  windows of the input are read, the diffusion state of the output lives on disk for large
  scenes, and output windows are written into a tiled, compressed GeoTIFF
  (``transform @ Affine.scale(1 / s)``, same CRS and bounds, dtype, nodata and band metadata).
* :func:`evaluate_rasters` degrades references with the model's operator, upscales them and
  scores per-band PSNR and SSIM, SAM, ERGAS and consistency against bicubic (and, for a
  reference-guided model, against Brovey and Gram-Schmidt pansharpening).

Reference-guided checkpoints (``--reference PAN.tif``): the reference is checked against the
output grid and aligned onto it (:mod:`domains.satellite.reference`), and the raster is sampled
whole in memory, as zero-shot runs and test-time adaptation (``adapt``) are: the streamed canvas
takes none of them, and a raster too large for memory is refused before any work.

Zero-shot (a model told its operator, e.g. ``--zero-shot ddnm --operator mtf --scale 4``): the
streamed sampler refuses zero-shot methods (they need the whole state), so the raster is read
whole and sampled in memory, the network still run tile by tile (:func:`sample_whole`); a
raster whose state would not fit in memory (:func:`check_in_memory`) is refused before any work.

Nodata: nodata pixels of the input, and pixels holding NaN or Inf in any band (counted in a
warning), are filled with the band's normalisation offset (its robust mid-range) before the
model sees them, and the output is nodata (NaN in a float raster without nodata) wherever the
input pixel it lies in was missing (nearest-neighbour upsampled mask). A raster without a CRS
is processed as it is: the output has no CRS either (and no geotransform if it had none). Every output is written to a
temporary file beside the target and renamed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from domains.base import InputError, MeasurementNoise, check_evaluation, run_record
from domains.files import atomic_target, write_atomic
from domains.satellite.io import (
    RasterFileError,
    RasterMeta,
    RasterReader,
    RasterWriter,
    block_windows,
    to_dtype,
)
from domains.satellite.metrics import band_data_range, band_psnr, band_ssim, consistency_band_psnr, ergas, sam_degrees
from domains.satellite.operators import SensorMTFDownsample
from domains.satellite.reference import brovey, brovey_weights, gram_schmidt, load_reference
from toolkit.checkpoint import SRModel
from toolkit.engine import SamplerOptions
from toolkit.operators import AreaDownsample, Operator
from toolkit.tiling import Tiling
from toolkit.utils import as_factors, upsample

__all__ = ["check_in_memory", "degrade_raster", "evaluate_rasters", "make_raster_operator", "sample_whole", "upscale_raster"]

OperatorName = Literal["area", "mtf"]
#: GDAL's block cache (MB) while streaming: bounded, so peak memory does not follow the raster
GDAL_CACHE_MB = 64
#: default network tiles (output pixels), and one tile the size of any raster (no tiling)
RASTER_TILING = Tiling(128, 32, 4)
ONE_PASS = Tiling(1 << 16, 0, 1)
Region = tuple[slice, ...]
#: float32 arrays of the output's size a zero-shot run holds at once (the state, the prediction,
#: the noise, the step's temporaries and the output), to size :func:`check_in_memory`
ZERO_SHOT_ARRAYS = 12
#: the memory assumed available where the system does not say (bytes)
FALLBACK_MEMORY = 4 * 2**30


def make_raster_operator(kind: str, scale: int | Sequence[int], mtf: float | Sequence[float] = 0.3) -> Operator:
    """``area`` (box average) or ``mtf`` (per-band Gaussian PSF from the MTF at Nyquist, then decimation)."""
    if kind == "area":
        return AreaDownsample(scale, spatial_dims=2)
    if kind == "mtf":
        return SensorMTFDownsample(scale, mtf=mtf, spatial_dims=2)
    raise ValueError(f"unknown raster operator {kind!r} (area or mtf)")


def _env() -> Any:
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)




def _fill(data: np.ndarray, valid: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """``data`` ``(C, h, w)`` with invalid pixels set to ``values`` (one per band)."""
    if valid.all():
        return data
    fill = np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)
    return np.where(valid[None], data, np.broadcast_to(fill, data.shape)).astype(np.float32)


def _band_fill(model: SRModel) -> list[float]:
    off = model.normalization.offset
    return off * model.channels if len(off) == 1 else list(off)


# --- degrade ----------------------------------------------------------------------------------------
def degrade_raster(
    src: str | Path,
    dst: str | Path,
    scale: int | Sequence[int] = 2,
    operator: OperatorName = "area",
    overwrite: bool = False,
    bands: Sequence[int] | None = None,
    mtf: float | Sequence[float] = 0.3,
    window: int = 512,
) -> Path:
    """Write the low-resolution GeoTIFF ``A(x)`` of ``src`` on the grid ``scale`` times coarser.

    Sizes not divisible by ``scale`` are cropped at the bottom/right first (the origin stays).
    The raster is processed in windows of ``window`` low-resolution pixels with enough context
    that the result equals the whole-raster operator. A low-resolution pixel is nodata when any
    nodata or non-finite pixel reaches it through the operator.

    Args:
        src: GeoTIFF (any band count; uint8, uint16, int16 or float32).
        dst: output GeoTIFF (same bands, dtype, nodata and band metadata).
        scale: integer factor (or ``(rows, cols)``).
        operator: ``area`` or ``mtf``.
        overwrite: replace an existing ``dst``.
        bands: 1-based band indexes to keep (default all).
        mtf: MTF at Nyquist for ``mtf`` (one, or one per selected band).
        window: low-resolution window side.

    Raises:
        RasterFileError: unreadable or all-nodata input, or one smaller than ``scale``.
        FileExistsError: ``dst`` exists and not ``overwrite``.
    """
    dst = Path(dst)
    atomic_target(dst, overwrite)
    op = make_raster_operator(operator, as_factors(scale, 2) if isinstance(scale, int) else tuple(scale), mtf)
    fr, fc = op.factors
    with _env(), RasterReader(src, bands) as reader:
        meta = reader.meta
        reader.check_has_data()
        lr_meta = meta.rescaled(op.factors, finer=False)
        h, w = lr_meta.shape
        if h == 0 or w == 0:
            raise RasterFileError(f"{src}: raster {meta.height}x{meta.width} is smaller than the factors {op.factors}")
        # the operator's declared reach makes windowed A equal whole-raster A; a global one needs one window
        halo, window = (0, max(h, w)) if op.halo is None else (op.halo, window)
        hr_rows, hr_cols = h * fr, w * fc

        def write(tmp: Path) -> None:
            with RasterWriter(tmp, lr_meta) as out:
                for rows, cols in block_windows((h, w), window):
                    r0 = max(0, rows.start * fr - -(-halo // fr) * fr)
                    c0 = max(0, cols.start * fc - -(-halo // fc) * fc)
                    r1 = min(hr_rows, rows.stop * fr + -(-halo // fr) * fr)
                    c1 = min(hr_cols, cols.stop * fc + -(-halo // fc) * fc)
                    data, valid = reader.read((slice(r0, r1), slice(c0, c1)))
                    x = torch.from_numpy(np.where(valid[None], data, 0.0))[None].double()
                    y = op.A(x)[0].numpy()
                    bad = op.A(torch.from_numpy((~valid).astype(np.float64))[None, None].expand(1, meta.count, -1, -1).contiguous())
                    lr_valid = bad[0].amax(0).numpy() <= 1e-12
                    crop = (slice(rows.start - r0 // fr, rows.stop - r0 // fr), slice(cols.start - c0 // fc, cols.stop - c0 // fc))
                    out.write((rows, cols), y[(slice(None), *crop)], lr_valid[crop] if meta.marks_missing else None)

        write_atomic(dst, write, overwrite=overwrite)
    return dst


# --- upscale ----------------------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes of physical memory available now (``FALLBACK_MEMORY`` where the system does not say)."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return FALLBACK_MEMORY


def check_in_memory(
    path: str | Path, model: SRModel, lr_shape: Sequence[int], samples: int = 1, limit: int | None = None, why: str = "a zero-shot run"
) -> None:
    """Refuse a run (``why``: a zero-shot run, a reference-guided one) whose in-memory state would take over ``limit`` bytes (default: half the available memory).

    The estimate is :data:`ZERO_SHOT_ARRAYS` float32 arrays of the output's size per sample
    (the ensemble runs as one batch).
    """
    hr = model.require_operator().hr_shape(lr_shape)
    need = 4 * ZERO_SHOT_ARRAYS * model.channels * int(np.prod(hr)) * max(1, int(samples))
    limit = available_memory() // 2 if limit is None else limit
    if need > limit:
        raise RasterFileError(
            f"{path}: {why} holds the whole raster in memory (about {need / 2**30:.1f} GiB for a "
            f"{hr[0]}x{hr[1]}x{model.channels} output, {limit / 2**30:.1f} GiB allowed): upscale a window of it"
            + (", or use a conditional checkpoint, which streams" if why == "a zero-shot run" else " (the streamed path takes no reference or adaptation)")
        )


def sample_whole(
    model: SRModel, y: np.ndarray, options: SamplerOptions, seed: int, tiling: Tiling, progress: bool, precision: str,
    reference: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Super-resolve ``y`` ``(C, h, w)`` (data units, nodata filled) in memory: the output and its std (``None``
    for one sample), ``(C, H, W)`` float32. The whole state is one tensor (a zero-shot method's, or a
    reference-guided model's); the network runs in ``tiling``'s tiles (:func:`toolkit.checkpoint.upscale_any_size`).
    ``reference`` ``(R, H, W)``: the reference on the output grid (data units) of a reference-guided model."""
    from domains.images.pipeline import _progress, upscale_array
    from toolkit.checkpoint import upscale_any_size
    from toolkit.engine import network_calls
    from toolkit.utils import make_generator

    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[None]
    if reference is None:
        x, std = upscale_array(model, yt, options, seed, progress, "sampling", tiling, precision)
    else:
        ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))[None]
        device = next(model.denoiser.parameters()).device
        bar = _progress(network_calls(model.process, options), "sampling", progress)
        try:
            x, std = upscale_any_size(
                model, yt, options, make_generator(seed, device), lambda i, z, x0: bar.update(1), tiling,
                precision,  # type: ignore[arg-type]
                reference=ref,
            )
        finally:
            bar.close()
    return x[0].numpy(), None if std is None else std[0].numpy()


def _check_model(model: SRModel, meta: RasterMeta) -> None:
    if model.spatial_dims != 2:
        raise RasterFileError(f"{meta.path}: a raster cannot go through a {model.spatial_dims}D checkpoint")
    if meta.count != model.channels:
        hint = "" if meta.count < model.channels else " (select bands with bands=[...], 1-based)"
        raise RasterFileError(
            f"{meta.path}: raster has {meta.count} band(s) but the checkpoint was trained on {model.channels}{hint}"
        )


def _check_reference_use(model: SRModel, reference: str | Path | None) -> None:
    """Refuse a reference a checkpoint was not trained with, or a missing one it needs (one line naming both)."""
    if model.reference_channels and reference is None:
        raise InputError(
            f"{model.source} is reference-guided ({model.reference_channels} band(s) on the output grid): "
            "give --reference FILE (e.g. the panchromatic band)"
        )
    if reference is not None and not model.reference_channels:
        raise InputError(f"{reference}: {model.source} was trained without a reference; --reference cannot be used with it")


def _reference_filled(ref: np.ndarray, valid: np.ndarray, model: SRModel) -> np.ndarray:
    """``ref`` with the pixels nodata reaches set to its normalisation offset (the model sees mid-range there)."""
    if valid.all():
        return ref
    norm = model.reference_normalization
    off = norm.offset if norm is not None else [0.5]
    return _fill(ref, valid, off * ref.shape[0] if len(off) == 1 else off)


def _nearest_mask(reader: RasterReader, region: Region, factors: Sequence[int]) -> np.ndarray:
    """Validity of HR ``region`` from the LR mask (nearest neighbour), ``(h, w)`` bool."""
    (rows, cols), (fr, fc) = region, factors
    lr = (slice(rows.start // fr, -(-rows.stop // fr)), slice(cols.start // fc, -(-cols.stop // fc)))
    m = reader.read_valid(lr)
    m = np.repeat(np.repeat(m, fr, axis=0), fc, axis=1)
    return m[rows.start - lr[0].start * fr : rows.stop - lr[0].start * fr, cols.start - lr[1].start * fc : cols.stop - lr[1].start * fc]


def upscale_raster(
    src: str | Path,
    dst: str | Path,
    model: SRModel,
    options: SamplerOptions | None = None,
    seed: int = 0,
    tiling: Tiling = Tiling(),
    overwrite: bool = False,
    bands: Sequence[int] | None = None,
    progress: bool = True,
    precision: str = "32",
    workdir: str | Path | None = None,
    state: Literal["auto", "memory", "disk"] = "auto",
    uncertainty: str | Path | None = None,
    reference: str | Path | None = None,
    adapt: Callable[[SRModel, torch.Tensor], SRModel] | None = None,
) -> Path:
    """Super-resolve a GeoTIFF window by window into a tiled, compressed GeoTIFF on the finer grid.

    The output has the input's CRS, bounds, band count, dtype (values rounded and clipped),
    nodata, band descriptions and tags, and the transform ``transform @ Affine.scale(1 / s)``
    (right for rotated rasters too). Neither the input nor the output is ever held whole: the
    diffusion state is on disk (in ``workdir``) for large scenes, and output blocks are written
    as soon as they are complete. A zero-shot model (``options.zero_shot``) is the exception:
    the raster is sampled whole in memory (:func:`sample_whole`), and refused when it would not
    fit (:func:`check_in_memory`).

    Args:
        src: input GeoTIFF / COG.
        dst: output GeoTIFF.
        model: the trained model; its band count must equal the (selected) bands.
        options: sampler options (default: the checkpoint's).
        seed: seed of the noise field.
        tiling: network tile size and overlap (in output pixels) and tiles per call.
        overwrite: replace an existing ``dst``.
        bands: 1-based band indexes to use (default all).
        progress: show a progress bar.
        precision: ``32``, ``bf16`` or ``fp16`` (autocast of the network).
        workdir: folder for the on-disk diffusion state (default: the system's temporary folder).
        state: where the state lives (``auto``: on disk above 256 MB).
        uncertainty: also write the per-pixel standard deviation over ``options.samples``
            (2 or more) samples, per band in data units, as a float32 GeoTIFF on the same grid
            (NaN where the input was nodata): where the samples disagree, the model guesses.
        reference: a reference-guided checkpoint's reference (the 15 m pan for 30 m bands): its
            CRS, orientation, pixel size (the output's: the input's divided by the scale) and extent
            are checked against the output grid, and a sub-pixel offset (USGS's half pan pixel) is
            resampled away (:func:`domains.satellite.reference.load_reference`). The raster is then
            sampled whole in memory (the streamed canvas takes no reference), refused when too large.
        adapt: test-time adaptation, ``(model, y) -> model`` with ``y`` ``(1, C, h, w)`` the whole
            input in data units (:meth:`domains.base.UpscaleRequest.adapted`); in memory only, as above.

    Raises:
        RasterFileError: bad input or a band count that does not match the checkpoint; nothing is written.
        InputError: a reference on the wrong grid, one given to a model trained without one, or
            missing for a model trained with one.
        FileExistsError: ``dst`` exists and not ``overwrite``.
    """
    from toolkit.streaming import stream_upscale

    dst = Path(dst)
    atomic_target(dst, overwrite)
    opts = options or model.options
    if uncertainty is not None:
        atomic_target(Path(uncertainty), overwrite)
        if opts.samples < 2:
            raise ValueError(f"{uncertainty}: an uncertainty map needs 2 or more samples (options.samples is {opts.samples})")
    with _env(), RasterReader(src, bands) as reader:
        meta = reader.meta
        _check_model(model, meta)
        reader.check_has_data()
        factors = model.require_operator().factors
        hr_meta = meta.rescaled(factors)
        fill = _band_fill(model)
        _check_reference_use(model, reference)
        in_memory = opts.zero_shot is not None or reference is not None or adapt is not None or model.guide is not None
        if opts.zero_shot is not None:
            check_in_memory(src, model, meta.shape, opts.samples)
        elif in_memory:
            check_in_memory(src, model, meta.shape, opts.samples, why="a reference-guided or adapted run")
        ref = None
        if reference is not None:
            ref = _reference_filled(*load_reference(reference, hr_meta, channels=model.reference_channels), model)

        def read_lr(region: Region) -> np.ndarray:
            data, valid = reader.read(region)  # type: ignore[arg-type]
            return _fill(data, valid, fill)

        def valid_of(region: Region) -> np.ndarray | None:
            return _nearest_mask(reader, region, factors) if meta.marks_missing else None

        def write(tmp: Path) -> None:
            with RasterWriter(tmp, hr_meta) as out:

                def write_hr(region: Region, value: np.ndarray) -> None:
                    out.write(region, value, valid_of(region))  # type: ignore[arg-type]

                def run(write_std: Callable[[Region, np.ndarray], None] | None) -> None:
                    if in_memory:  # the whole raster in memory (the streamed path takes no zero-shot, reference or adaptation)
                        y = read_lr(tuple(slice(0, n) for n in meta.shape))
                        run_model = model if adapt is None else adapt(model, torch.from_numpy(y)[None])
                        x, std = sample_whole(run_model, y, opts, seed, tiling, progress, precision, ref)
                        write_hr(tuple(slice(0, n) for n in x.shape[1:]), x)
                        if write_std is not None and std is not None:
                            write_std(tuple(slice(0, n) for n in std.shape[1:]), std)
                        return
                    stream_upscale(
                        model, read_lr, meta.shape, write_hr, opts, seed=seed, tiling=tiling, write_std=write_std,
                        workdir=workdir, progress=progress, precision=precision, state=state,
                    )

                if uncertainty is None:
                    run(None)
                    return
                std_meta = replace(hr_meta, dtype="float32", nodata=float("nan") if meta.nodata is not None else None,
                                   scales=(), offsets=(), colorinterp=())

                def write_with_std(tmp_std: Path) -> None:
                    with RasterWriter(tmp_std, std_meta) as std_out:
                        run(lambda region, value: std_out.write(region, value, valid_of(region)))  # type: ignore[arg-type]

                write_atomic(Path(uncertainty), write_with_std, overwrite=overwrite)

        write_atomic(dst, write, overwrite=overwrite)
    return dst


# --- evaluate ---------------------------------------------------------------------------------------
def _display_bands(meta: RasterMeta) -> list[int]:
    """0-based bands shown in the report: B4, B3, B2 when so named (Landsat 8 true colour), else the first three (or one)."""
    names = [(d or "").upper() for d in meta.descriptions]
    if all(n in names for n in ("B4", "B3", "B2")):
        return [names.index(n) for n in ("B4", "B3", "B2")]
    return [0, 1, 2] if meta.count >= 3 else [0]


def _stretch(img: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.clip((img - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None], 0, 1).astype(np.float32)


def _sr_in_memory(
    model: SRModel, y: np.ndarray, options: SamplerOptions, seed: int, tiling: Tiling, progress: bool, precision: str,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Run the streaming sampler over an in-memory LR array ``(C, h, w)`` (a zero-shot model, or one with a
    ``reference``: :func:`sample_whole`); returns ``(C, H, W)`` float32."""
    from toolkit.streaming import stream_upscale

    if options.zero_shot is not None or reference is not None:
        return sample_whole(model, y, options, seed, tiling, progress, precision, reference)[0]

    hr = np.full((y.shape[0], *model.operator.hr_shape(y.shape[1:])), np.nan, dtype=np.float32)

    def write_hr(region: Region, value: np.ndarray) -> None:
        hr[(slice(None), *region)] = value

    stream_upscale(
        model, lambda region: y[(slice(None), *region)], y.shape[1:], write_hr, options,
        seed=seed, tiling=tiling, progress=progress, precision=precision, state="memory",
    )
    return hr


def _as_written(x: np.ndarray, meta: RasterMeta, valid: torch.Tensor) -> torch.Tensor:
    """What :func:`upscale_raster` would write, ``(1, C, H, W)`` float64: rounded, clipped, valid values kept off nodata."""
    return torch.from_numpy(to_dtype(x, meta.dtype, meta.nodata, valid.numpy()).astype(np.float64))[None]


def _method_metrics(
    model: SRModel, pred: torch.Tensor, hr: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, valid_lr: torch.Tensor,
    ranges: list[float], scale: int,
) -> dict[str, Any]:
    p = band_psnr(pred, hr, ranges, valid)[0]
    s = band_ssim(pred, hr, ranges, valid)[0]
    c = consistency_band_psnr(model.operator, pred, y, ranges, valid_lr)[0]
    out: dict[str, Any] = {
        "psnr": float(p.mean()),
        "ssim": float(s.mean()),
        "ergas": float(ergas(pred, hr, scale, valid)[0]),
        "consistency_psnr": float(c.mean()),
        "psnr_per_band": [float(v) for v in p],
        "ssim_per_band": [float(v) for v in s],
        "consistency_psnr_per_band": [float(v) for v in c],
    }
    if hr.shape[1] >= 2:
        out["sam_deg"] = float(sam_degrees(pred, hr, valid)[0])
    return out


def evaluate_rasters(
    model: SRModel,
    hr_files: Sequence[str | Path],
    out_dir: str | Path,
    options: SamplerOptions | None = None,
    seed: int = 0,
    tiling: Tiling = Tiling(),
    bands: Sequence[int] | None = None,
    progress: bool = False,
    precision: str = "32",
    data_range: float | Sequence[float] | None = None,
    overwrite: bool = False,
    report: bool = True,
    noise: MeasurementNoise | None = None,
    references: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Degrade each reference with the model's operator, upscale it, and compare with bicubic.

    The low-resolution input and every output are rounded to the raster's dtype, as
    :func:`degrade_raster` and :func:`upscale_raster` would write them, so the figures are those
    of the files. Metrics are over valid pixels (nodata, and pixels a nodata pixel reaches
    through the operator, excluded): per-band PSNR and SSIM (data range per band: the model's
    normalisation span, see :mod:`domains.satellite.metrics`), SAM in degrees, ERGAS with the
    resolution ratio, and consistency (PSNR of ``A(output)`` against the input). Methods:
    ``diffsr``, ``bicubic``, and ``bicubic_projected`` (bicubic projected onto
    ``{x : A x = y}``, which shows what the model adds beyond data consistency).

    Reference-guided models (``references``, one per file of ``hr_files``, same order; Wald's
    protocol): a reference on the file's pixel size is aligned onto its grid; one finer by the
    model's factors (the 15 m pan beside a 30 m block, or the whole pan scene: it is cropped) is
    aligned onto the exact finer grid and degraded by the model's operator
    (:func:`domains.satellite.reference.load_reference`). The model sees it beside the degraded
    input, and two classical pansharpening baselines join the table, both given the bicubic
    upsampling of the degraded input and the degraded reference: ``brovey`` (rio-pansharpen's
    weighted Brovey; B4, B3 and 0.2 B2 make the pseudo-pan for Landsat 8 bands) and
    ``gram_schmidt`` (Laben & Brower, with the same pseudo-pan as the simulated pan: GS's "mode 1",
    the mean of all bands, puts Landsat's SWIR bands in it and scored 27.2 dB against 30.5 dB on
    a window of the held-back block of the Landsat 8 scene). Their first reference
    band is the pan. Pixels the reference's nodata reaches are excluded from every metric.

    ``noise`` (:class:`domains.base.MeasurementNoise`, in the raster's data units) is added to
    each degraded reference before it is rounded to the raster's dtype; ``metrics.json`` also
    holds :func:`domains.base.run_record`. A zero-shot model samples each reference whole in
    memory (:func:`sample_whole`), refused when it would not fit (:func:`check_in_memory`).

    Writes ``out_dir/metrics.json`` and, with ``report``, ``out_dir/report.html`` with PNG crops.
    Every reference (header, bands, size, that it has data) and the output folder are checked
    before any work (:func:`domains.base.check_evaluation`); the folder is made only then.

    Raises:
        RasterFileError: bad input or a band count that does not match the checkpoint.
        FileExistsError: a report exists in ``out_dir`` and not ``overwrite``.
    """
    opts = options or model.options
    op = model.require_operator()
    fr, fc = op.factors
    noise = noise or MeasurementNoise(0.0)
    refs = list(references or [])
    _check_reference_use(model, refs[0] if refs else None)
    if refs and len(refs) != len(hr_files):
        raise InputError(f"{refs[0]}: {len(refs)} reference(s) for {len(hr_files)} file(s): give one --reference per --hr file, in order")
    ref_of = {str(f): r for f, r in zip(hr_files, refs)}
    on_grid: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def grid_of(meta: RasterMeta) -> RasterMeta:
        return meta.resized(meta.height // fr * fr, meta.width // fc * fc, meta.transform)

    def check(f: Path) -> None:
        with _env(), RasterReader(f, bands) as reader:
            meta = reader.meta
            _check_model(model, meta)
            if meta.height // fr < model.multiple or meta.width // fc < model.multiple:
                raise RasterFileError(f"{f}: raster {meta.height}x{meta.width} is too small for the model")
            reader.check_has_data()
            if opts.zero_shot is not None:
                check_in_memory(f, model, (meta.height // fr, meta.width // fc), opts.samples)
            elif str(f) in ref_of:
                check_in_memory(f, model, (meta.height // fr, meta.width // fc), opts.samples, why="a reference-guided run")
        if str(f) in ref_of:  # the reference's geometry, before any work
            on_grid[str(f)] = load_reference(ref_of[str(f)], grid_of(meta), operator=op, channels=model.reference_channels)

    out = check_evaluation(hr_files, out_dir, overwrite, check)
    fill = _band_fill(model)
    ranges = list(data_range) if isinstance(data_range, Sequence) else (
        [float(data_range)] * model.channels if data_range is not None else band_data_range(model.normalization, model.channels)
    )
    files: list[dict[str, Any]] = []
    panels: list[tuple[str, dict[str, np.ndarray], tuple[int, int, int, int]]] = []
    seconds = 0.0
    with _env():
        for f in hr_files:
            with RasterReader(f, bands) as reader:  # checked above
                meta = reader.meta
                h, w = meta.height // fr * fr, meta.width // fc * fc
                data, valid = reader.read((slice(0, h), slice(0, w)))
            ref_np, ref_valid = on_grid.get(str(f), (None, None))
            if ref_np is not None and ref_valid is not None:
                valid = valid & ref_valid
                ref_np = _reference_filled(ref_np, ref_valid, model)
            hr = torch.from_numpy(_fill(data, valid, fill))[None].double()
            y = noise(op.A(hr))
            reach = op.A(torch.from_numpy((~valid).astype(np.float64))[None, None].expand(1, meta.count, -1, -1).contiguous())
            valid_lr = reach[0].amax(0) <= 1e-12
            # what degrade_raster would write, with nodata filled as upscale_raster fills it
            y_np = _fill(to_dtype(y[0].numpy(), meta.dtype).astype(np.float32), valid_lr.numpy(), fill)
            y_q = torch.from_numpy(y_np)[None].double()
            t0 = time.perf_counter()
            sr_np = _sr_in_memory(model, y_np, opts, seed, tiling, progress, precision, ref_np)
            seconds += time.perf_counter() - t0
            mask = torch.from_numpy(valid) & torch.repeat_interleave(torch.repeat_interleave(valid_lr, fr, 0), fc, 1)

            sr = _as_written(sr_np, meta, mask)
            bic = _as_written(upsample(y_q, (h, w))[0].numpy(), meta, mask)
            bicp = _as_written(op.project(upsample(y_q, (h, w)), y_q)[0].numpy(), meta, mask)
            if not mask.any():
                raise RasterFileError(f"{f}: no pixel is valid after degradation (too much nodata)")
            baselines: list[tuple[str, torch.Tensor]] = []
            if ref_np is not None:  # classical pansharpening of the bicubic upsampling with the (degraded) pan
                up, pan = upsample(y_q, (h, w)), torch.from_numpy(ref_np[:1].astype(np.float64))[None]
                weights = brovey_weights(meta.descriptions)
                baselines = [
                    ("brovey", _as_written(brovey(up, pan, weights)[0].numpy(), meta, mask)),
                    ("gram_schmidt", _as_written(gram_schmidt(up, pan, weights, valid=mask)[0].numpy(), meta, mask)),
                ]
            result = {
                "file": str(f),
                "shape": [meta.count, h, w],
                "bands": list(meta.bands),
                "descriptions": list(meta.descriptions),
                "valid_fraction": float(mask.double().mean()),
            }
            for name, pred in (("diffsr", sr), ("bicubic", bic), ("bicubic_projected", bicp), *baselines):
                result[name] = _method_metrics(model, pred, hr, y_q, mask[None], valid_lr[None], ranges, max(fr, fc))
            files.append(result)
            if report:
                show = _display_bands(meta)
                truth = hr[0, show].numpy()
                valid_truth = truth[:, mask.numpy()]
                lo, hi = np.percentile(valid_truth, 2, axis=1), np.percentile(valid_truth, 98, axis=1)
                item = {
                    "input": _stretch(y_q[0, show].numpy(), lo, hi),
                    "bicubic": _stretch(bic[0, show].numpy(), lo, hi),
                    "diffsr": _stretch(sr[0, show].numpy(), lo, hi),
                    "truth": _stretch(truth, lo, hi),
                    "error": np.clip(4 * np.abs(sr[0, show].numpy() - truth).mean(0, keepdims=True) / np.maximum(hi - lo, 1e-6).mean(), 0, 1).astype(np.float32),
                }
                err = ((bic[0] - hr[0]) ** 2).mean(0).numpy() * mask.numpy()
                panels.append((Path(f).name, item, _worst_box(err, 96, (fr, fc))))
    methods = {
        m: {
            k: float(np.mean([r[m][k] for r in files]))
            for k in ("psnr", "ssim", "sam_deg", "ergas", "consistency_psnr")
            if all(k in r[m] for r in files)
        }
        for m in ("diffsr", "bicubic", "bicubic_projected", "brovey", "gram_schmidt")
        if all(m in r for r in files)
    }
    result_all = {
        "scale": [fr, fc] if fr != fc else fr,
        "operator": op.spec(),
        "sampler": opts.spec(),
        "seed": seed,
        **run_record(model, opts, seconds, noise),
        "references": [str(r) for r in refs],
        "data_range_per_band": ranges,
        "methods": methods,
        "files": files,
    }
    write_atomic(out / "metrics.json", lambda p: p.write_text(json.dumps(result_all, indent=2)), overwrite=overwrite)
    if report:
        _write_report(out, result_all, panels, (fr, fc), overwrite)
    return result_all


def _worst_box(err: np.ndarray, size: int, factors: tuple[int, int]) -> tuple[int, int, int, int]:
    """The ``size`` window (aligned to the factors) where bicubic errs most."""
    h, w = err.shape
    ch, cw = min(size, h) // factors[0] * factors[0], min(size, w) // factors[1] * factors[1]
    best, box = -1.0, (0, 0)
    for i in range(0, h - ch + 1, max(1, ch // 2)):
        for j in range(0, w - cw + 1, max(1, cw // 2)):
            e = float(err[i : i + ch, j : j + cw].mean())
            if e > best:
                best, box = e, (i - i % factors[0], j - j % factors[1])
    return box[0], box[1], ch, cw


def _write_report(
    out: Path, result: dict[str, Any], panels: list[tuple[str, dict[str, np.ndarray], tuple[int, int, int, int]]],
    factors: tuple[int, int], overwrite: bool, zoom: int = 2,
) -> Path:
    """``out/report.html`` with a table of the metrics and PNG crops (false colour) under ``out/crops/``."""
    from domains.images.io import write_image

    crops = out / "crops"
    crops.mkdir(exist_ok=True)

    def up(img: np.ndarray, fy: int, fx: int) -> np.ndarray:
        return np.repeat(np.repeat(img, fy, axis=1), fx, axis=2)

    rows = []
    for k, (name, item, (i, j, ch, cw)) in enumerate(panels):
        cells = []
        for p, img in item.items():
            if p == "input":
                img = up(img[:, i // factors[0] : (i + ch) // factors[0], j // factors[1] : (j + cw) // factors[1]], *factors)
            else:
                img = img[:, i : i + ch, j : j + cw]
            fname = f"{k:03d}_{p}.png"
            write_image(crops / fname, up(img, zoom, zoom), 8, overwrite=True)
            cells.append(f'<figure><img src="crops/{fname}" alt="{p}"><figcaption>{p}</figcaption></figure>')
        rows.append(f"<h2>{html.escape(name)}</h2><p>crop at ({i}, {j}), {ch}x{cw} px</p><div class=row>{''.join(cells)}</div>")
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ("method", "PSNR (dB)", "SSIM", "SAM (deg)", "ERGAS", "consistency PSNR (dB)"))
    table = "".join(
        f"<tr><td>{html.escape(m)}</td>"
        + "".join(f"<td>{v[k]:.4f}</td>" if k in v else "<td>-</td>" for k in ("psnr", "ssim", "sam_deg", "ergas", "consistency_psnr"))
        + "</tr>"
        for m, v in result["methods"].items()
    )
    band_rows = []
    for f in result["files"]:
        for b, desc in enumerate(f["descriptions"]):
            band_rows.append(
                f"<tr><td>{html.escape(Path(f['file']).name)}</td><td>{f['bands'][b]} {html.escape(desc or '')}</td>"
                + "".join(f"<td>{f[m]['psnr_per_band'][b]:.2f} / {f[m]['ssim_per_band'][b]:.4f}</td>" for m in ("diffsr", "bicubic", "bicubic_projected"))
                + "</tr>"
            )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>diffsr raster evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}} .row{{display:flex;gap:8px}} figure{{margin:0}}
img{{image-rendering:pixelated}} table{{border-collapse:collapse;margin-bottom:1em}} td,th{{border:1px solid #999;padding:4px 8px}}</style>
</head><body><h1>diffsr raster evaluation: x{html.escape(str(result['scale']))}</h1>
<p>operator {html.escape(json.dumps(result['operator']))}; sampler {html.escape(json.dumps(result['sampler']))}; seed {result['seed']}</p>
<table><tr>{head}</tr>{table}</table>
<p>Means over {len(result['files'])} raster(s), valid pixels only. PSNR/SSIM use per-band data ranges
{html.escape(', '.join(f'{r:.0f}' for r in result['data_range_per_band']))} (the model's normalisation span).
bicubic_projected is bicubic made consistent with the input (A x = y).</p>
<table><tr><th>raster</th><th>band</th><th>diffsr PSNR / SSIM</th><th>bicubic</th><th>bicubic projected</th></tr>{''.join(band_rows)}</table>
<p>Crops: false colour, 2-98 percentile stretch of the truth, where bicubic errs most, at {zoom}x (nearest);
"error" is |diffsr - truth| x 4 relative to the stretch.</p>
{''.join(rows)}</body></html>"""
    path = out / "report.html"
    write_atomic(path, lambda p: p.write_text(page), overwrite=overwrite)
    return path
