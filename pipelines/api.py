"""The Python API behind the command line: degrade, upscale and evaluate image files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from domains.images.io import ImageFileError, read_image, write_atomic, write_image
from toolkit.checkpoint import SRModel, load_model, upscale_any_size
from toolkit.engine import SamplerOptions
from toolkit.metrics import consistency_psnr, psnr, ssim
from toolkit.operators import AreaDownsample, FourierCrop, GaussianDownsample, Operator, SliceAverage
from toolkit.tiling import Tiling
from toolkit.utils import as_factors, make_generator, upsample

#: default tiles: 2D images, and 3D volumes (patches; memory follows the patch size)
IMAGE_TILING = Tiling(128, 32, 4)
VOLUME_TILING = Tiling(64, 16, 2)


try:  # registers the sensor_mtf operator, so satellite checkpoints load (needs the satellite extra)
    import domains.satellite  # noqa: F401
except ImportError:  # pragma: no cover - rasterio missing
    pass


class InputError(ValueError):
    """Input that cannot be processed: the message names the file and the problem."""


def make_operator(kind: str, scale: int | Sequence[int], spatial_dims: int = 2) -> Operator:
    """Operator by name, as the ``--operator`` option takes it.

    ``area`` and ``gaussian`` take a factor per axis; ``kspace`` (k-space truncation) too;
    ``slice`` (slice-thickness averaging) takes the slice axis from the one factor above 1.
    """
    if kind == "area":
        return AreaDownsample(scale, spatial_dims=spatial_dims)
    if kind == "gaussian":
        return GaussianDownsample(scale, spatial_dims=spatial_dims)
    if kind == "kspace":
        return FourierCrop(scale, spatial_dims=spatial_dims)
    if kind == "slice":
        factors = as_factors(scale, spatial_dims) if isinstance(scale, int) else tuple(scale)
        thick = [a for a, f in enumerate(factors) if f > 1]
        if len(thick) != 1:
            raise ValueError(f"--operator slice needs a factor above 1 on exactly one axis, got {factors} (e.g. 1,1,4)")
        return SliceAverage(factors[thick[0]], axis=thick[0], spatial_dims=spatial_dims)
    raise ValueError(f"unknown operator {kind!r} (area, gaussian, kspace or slice)")


def _is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def _is_georeferenced(path: str | Path) -> bool:
    """A TIFF that carries a coordinate reference system (a GeoTIFF/COG, not a plain image)."""
    if not str(path).lower().endswith((".tif", ".tiff")) or not Path(path).is_file():
        return False
    try:
        import rasterio

        with rasterio.open(path) as src:
            return src.crs is not None
    except Exception:  # noqa: BLE001 - unreadable here means "not a GeoTIFF"; the reader says why later
        return False


def model_kind(model: SRModel) -> str | None:
    """The domain a checkpoint was trained for (``mri``, ``satellite``, ``faces``), ``None`` for plain images."""
    kind = (model.spec.get("domain") or {}).get("kind")
    if kind is None and model.operator.spec().get("type") == "sensor_mtf":
        kind = "satellite"
    return kind


def _bands(model: SRModel, bands: Sequence[int] | None) -> Sequence[int] | None:
    return bands if bands is not None else (model.spec.get("domain") or {}).get("bands")


def degrade_volume(
    src: str | Path,
    dst: str | Path,
    scale: int | Sequence[int] = 2,
    operator: str = "area",
    overwrite: bool = False,
    volume_index: int | None = None,
) -> Path:
    """Write the low-resolution NIfTI ``A(x)`` of ``src`` with the matching geometry (block-centred voxels).

    Sizes not divisible by the factors are cropped at the high-index end of each axis first
    (which leaves the affine's origin where it is).
    """
    from domains.mri.io import read_volume, reduced_affine, write_volume

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: output exists (use --overwrite to replace it)")
    data, meta = read_volume(src, volume_index)
    op = make_operator(operator, scale, spatial_dims=3)
    data = _crop_to_multiple(data[None], op.factors)[0]
    if min(data.shape) == 0:
        raise InputError(f"{src}: volume {data.shape} is smaller than the factors {op.factors}")
    y = op.A(torch.from_numpy(np.ascontiguousarray(data))[None, None].double())[0, 0].numpy()
    write_volume(dst, y, meta, reduced_affine(meta.affine, op.factors), overwrite=overwrite)
    return dst


def _crop_to_multiple(x: np.ndarray, multiple: Sequence[int]) -> np.ndarray:
    sl = tuple(slice(0, n - n % m) for n, m in zip(x.shape[1:], multiple))
    return x[(slice(None),) + sl]


def degrade(
    src: str | Path,
    dst: str | Path,
    scale: int | Sequence[int] = 2,
    operator: str = "area",
    overwrite: bool = False,
    volume_index: int | None = None,
    bands: Sequence[int] | None = None,
    mtf: float = 0.3,
    faces: bool = False,
    seed: int = 0,
    size: int | None = None,
) -> Path:
    """Write the low-resolution image ``A(x)`` of ``src`` (same channels and bit depth) to ``dst``.

    Sizes not divisible by ``scale`` are cropped at the bottom/right to the nearest multiple.
    NIfTI volumes (``.nii``, ``.nii.gz``) go through :func:`degrade_volume`; GeoTIFFs (or any
    raster with ``bands`` or the ``mtf`` operator) through
    :func:`domains.satellite.pipeline.degrade_raster`, georeferenced; with ``faces`` the seeded
    blind face degradation of :mod:`domains.faces` is applied instead of an operator.
    """
    if faces:
        from domains.faces.pipeline import degrade_face

        degrade_face(src, dst, seed=seed, size=size, overwrite=overwrite)
        return Path(dst)
    if _is_nifti(src):
        return degrade_volume(src, dst, scale, operator, overwrite, volume_index)
    if operator == "mtf" or bands is not None or _is_georeferenced(src):
        from domains.satellite.pipeline import degrade_raster

        if operator not in ("area", "mtf"):
            raise InputError(f"{src}: rasters are degraded with --operator area or mtf, not {operator}")
        return degrade_raster(src, dst, scale, operator, overwrite, bands, mtf)  # type: ignore[arg-type]
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: output exists (use --overwrite to replace it)")
    data, info = read_image(src)
    op = make_operator(operator, scale)
    data = _crop_to_multiple(data, op.factors)
    if min(data.shape[1:]) == 0:
        raise InputError(f"{src}: image is smaller than the scale factor {scale}")
    y = op.A(torch.from_numpy(data)[None].double())[0].numpy()
    write_image(dst, y, info.bit_depth, overwrite=overwrite)
    return dst


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="step")


def upscale_array(
    model: SRModel,
    y: torch.Tensor,
    options: SamplerOptions,
    seed: int = 0,
    progress: bool = False,
    desc: str = "sampling",
    tiling: Tiling | None = None,
    precision: str = "32",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Super-resolve ``y`` ``(B, C, *spatial)`` in data units of any size.

    The input is padded (edge replication) so the output is a multiple of the network's
    downsampling, sampled, and the padding cropped off again. ``precision`` ``bf16`` or
    ``fp16`` runs the network under autocast (the sampler's arithmetic stays float32).

    Returns:
        The output in data units, and the per-pixel standard deviation over the samples
        (``None`` when ``options.samples`` is 1).
    """
    device = next(model.denoiser.parameters()).device
    bar = _progress(options.steps, desc, progress)
    try:
        return upscale_any_size(
            model, y, options, make_generator(seed, device), lambda i, z, x0: bar.update(1), tiling, precision
        )
    finally:
        bar.close()


def _check_scale(model: SRModel, scale: int | Sequence[int] | None, checkpoint: str | Path | None, factors: Sequence[int]) -> None:
    """Refuse a checkpoint whose factors are not the requested ``scale`` (one int: every upscaled axis)."""
    if scale is None:
        return
    want = [f for f in factors if f > 1] if isinstance(scale, int) else list(scale)
    ok = all(f == scale for f in want) if isinstance(scale, int) else list(factors) == want
    if not ok or not want:
        raise InputError(f"{checkpoint}: checkpoint upscales x{'x'.join(map(str, factors))}, not the requested x{scale if isinstance(scale, int) else 'x'.join(map(str, scale))}")


def upscale(
    src: str | Path,
    dst: str | Path,
    checkpoint: str | Path,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    eta: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    model: SRModel | None = None,
    tiling: Tiling | None | Literal["auto"] = "auto",
    scale: int | Sequence[int] | None = None,
    samples: int | None = None,
    uncertainty: str | Path | None = None,
    precision: str = "32",
    volume_index: int | None = None,
    bands: Sequence[int] | None = None,
    whole_photo: bool = False,
    background: str | Path | None = None,
    workdir: str | Path | None = None,
) -> Path:
    """Upscale an image, a NIfTI volume, a GeoTIFF or a face with a trained checkpoint.

    Images keep their channels and bit depth; volumes keep their header and dtype and get the
    finer grid's affine (see :mod:`domains.mri.pipeline`). ``scale``, when given, must be the
    checkpoint's factor (a guard against using the wrong model). With ``samples`` > 1 the output
    is the mean of that many samples and ``uncertainty``, when given, receives their per-pixel
    standard deviation (a 16-bit image in [0, 1] units, or a float32 NIfTI in scanner units).
    """
    dst = Path(dst)
    for target in (dst, uncertainty):
        if target is not None and Path(target).exists() and not overwrite:
            raise FileExistsError(f"{target}: output exists (use --overwrite to replace it)")
    if model is None:
        from domains.faces.pipeline import is_face_checkpoint, restore_faces, restore_photo

        if is_face_checkpoint(checkpoint):
            if whole_photo:
                face_scale = scale if isinstance(scale, int) else 2
                restore_photo(src, dst, checkpoint, True, face_scale, background, steps=steps, samples=samples, seed=seed, overwrite=overwrite, device=device)
            else:
                restore_faces(src, dst, checkpoint, steps=steps, samples=samples, seed=seed, overwrite=overwrite, device=device)
            return dst
    if whole_photo:
        raise InputError(f"{checkpoint}: --whole-photo needs a face restoration checkpoint")
    model = model or load_model(checkpoint, device)
    options = model.options.updated(steps=steps, sampler=sampler, guidance_scale=guidance, eta=eta, samples=samples)
    if uncertainty is not None and options.samples < 2:
        raise InputError(f"{uncertainty}: an uncertainty map needs --samples 2 or more")
    if _is_nifti(src):
        from domains.mri.pipeline import check_volume_model, upscale_volume, volume_factors

        check_volume_model(model, src)
        _check_scale(model, scale, checkpoint, volume_factors(model))
        tiles = VOLUME_TILING if tiling == "auto" else tiling
        return upscale_volume(src, dst, model, options, seed, tiles, overwrite, volume_index, progress, precision, uncertainty)
    _check_scale(model, scale, checkpoint, model.scale)
    if model_kind(model) == "satellite" or _is_georeferenced(src):
        from domains.satellite.pipeline import upscale_raster

        tiles = IMAGE_TILING if tiling == "auto" else (tiling or Tiling(1 << 16, 0, 1))
        return upscale_raster(
            src, dst, model, options, seed, tiles, overwrite, _bands(model, bands), progress, precision, workdir, uncertainty=uncertainty
        )
    if model.spatial_dims != 2 or (model.spec.get("domain") or {}).get("slicewise"):
        kind = "slice-wise MRI" if model.spatial_dims == 2 else f"{model.spatial_dims}D"
        raise InputError(f"{src}: a 2D image cannot go through a {kind} checkpoint")
    data, info = read_image(src)
    if info.channels != model.channels:
        raise InputError(f"{src}: image has {info.channels} channel(s) but the checkpoint was trained on {model.channels}")
    tiles = IMAGE_TILING if tiling == "auto" else tiling
    x, std = upscale_array(model, torch.from_numpy(data)[None], options, seed, progress, Path(src).name, tiles, precision)
    write_image(dst, x[0].numpy(), info.bit_depth, overwrite=overwrite)
    if uncertainty is not None and std is not None:
        write_image(uncertainty, std[0].numpy(), 16, overwrite=overwrite)
    return dst


@dataclass
class FileResult:
    file: str
    metrics: dict[str, dict[str, float]]
    panels: dict[str, np.ndarray]


def _metrics(op: Operator, pred: torch.Tensor, hr: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred = pred.clamp(0, 1)
    return {
        "psnr": float(psnr(pred, hr)[0]),
        "ssim": float(ssim(pred, hr)[0]),
        "consistency_psnr": float(consistency_psnr(op, pred, y)[0].clamp(max=100.0)),
    }


def evaluate(
    checkpoint: str | Path,
    hr_files: Sequence[str | Path],
    out_dir: str | Path,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    model: SRModel | None = None,
    overwrite: bool = True,
    tiling: Tiling | None | Literal["auto"] = "auto",
    samples: int | None = None,
    precision: str = "32",
    bands: Sequence[int] | None = None,
    degradation_seed: int = 0,
    holdout: int | None = None,
) -> dict[str, Any]:
    """Degrade each high-resolution file with the checkpoint's operator, upscale it, compare with bicubic.

    NIfTI volumes, GeoTIFFs and face checkpoints go to their domain's evaluation
    (:mod:`domains.mri.pipeline`, :mod:`domains.satellite.pipeline`, :mod:`domains.faces.pipeline`).

    Writes ``out_dir/metrics.json`` and ``out_dir/report.html`` (with PNG crops) and returns the metrics.
    """
    from pipelines.report import write_report

    if not hr_files:
        raise InputError("no high-resolution files given")
    if model is None:
        from domains.faces.pipeline import evaluate_faces, is_face_checkpoint

        if is_face_checkpoint(checkpoint):
            return evaluate_faces(
                checkpoint, list(hr_files), out_dir, degradation_seed, holdout=holdout, steps=steps, samples=samples,
                seed=seed, overwrite=overwrite, device=device,
            )
    model = model or load_model(checkpoint, device)
    if model_kind(model) == "satellite" or any(_is_georeferenced(f) for f in hr_files):
        from domains.satellite.pipeline import evaluate_rasters

        opts = model.options.updated(steps=steps, sampler=sampler, samples=samples)
        tiles = IMAGE_TILING if tiling == "auto" else (tiling or Tiling(1 << 16, 0, 1))
        return evaluate_rasters(model, hr_files, out_dir, opts, seed, tiles, _bands(model, bands), progress, precision, overwrite=overwrite)
    if any(_is_nifti(f) for f in hr_files):
        from domains.mri.pipeline import evaluate_volumes

        if not all(_is_nifti(f) for f in hr_files):
            raise InputError("evaluate takes either NIfTI volumes or images, not both")
        opts = model.options.updated(steps=steps, sampler=sampler, samples=samples)
        tiles = VOLUME_TILING if tiling == "auto" else tiling
        return evaluate_volumes(model, hr_files, out_dir, opts, seed, tiles, progress, precision, overwrite)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = model.options.updated(steps=steps, sampler=sampler, samples=samples)
    results: list[FileResult] = []
    for f in hr_files:
        data, info = read_image(f)
        if info.channels != model.channels:
            raise InputError(f"{f}: image has {info.channels} channel(s) but the checkpoint was trained on {model.channels}")
        hr = torch.from_numpy(_crop_to_multiple(data, model.scale))[None]
        y = model.operator.A(hr)
        sr, std = upscale_array(model, y, options, seed, progress, Path(f).name, IMAGE_TILING if tiling == "auto" else tiling, precision)
        sr = sr.clamp(0, 1)
        bic = upsample(y, hr.shape[2:]).clamp(0, 1)
        panels = {"input": y[0].numpy(), "bicubic": bic[0].numpy(), "diffsr": sr[0].numpy(), "truth": hr[0].numpy()}
        panels["error"] = (sr - hr).abs()[0].mean(0, keepdim=True).numpy()
        if std is not None:
            panels["uncertainty"] = std[0].mean(0, keepdim=True).numpy()
        metrics = {"diffsr": _metrics(model.operator, sr, hr, y), "bicubic": _metrics(model.operator, bic, hr, y)}
        if std is not None:
            # does the spread of the samples predict the error? (a hallucination check)
            err = (sr - hr).abs().flatten()
            metrics["diffsr"]["uncertainty_error_corr"] = float(torch.corrcoef(torch.stack([std.flatten(), err]))[0, 1])
        results.append(FileResult(file=str(f), metrics=metrics, panels=panels))
    methods = {
        m: {k: float(np.mean([r.metrics[m][k] for r in results])) for k in ("psnr", "ssim", "consistency_psnr")}
        for m in ("diffsr", "bicubic")
    }
    report = {
        "scale": model.scale[0] if len(set(model.scale)) == 1 else list(model.scale),
        "operator": model.operator.spec(),
        "sampler": options.spec(),
        "seed": seed,
        "methods": methods,
        "files": [{"file": r.file, **r.metrics} for r in results],
    }
    metrics_path = out / "metrics.json"
    write_atomic(metrics_path, lambda p: p.write_text(json.dumps(report, indent=2)), overwrite=overwrite)
    write_report(out, report, [(Path(r.file).name, r.panels) for r in results], model.scale, overwrite=overwrite)
    return report


__all__ = ["ImageFileError", "InputError", "degrade", "evaluate", "make_operator", "upscale", "upscale_array"]
