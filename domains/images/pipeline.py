"""Plain 2D images from files: degrade, upscale and evaluate PNG, JPEG and TIFF (8 or 16 bit, any channels).

* :func:`degrade_image` writes ``A(x)`` with the named operator (:func:`make_operator`).
* :func:`upscale_image` super-resolves an image of any size (:func:`upscale_array`: padded to the
  network's multiple, tiled, cropped back), same channels and bit depth.
* :func:`evaluate_images` degrades references with the checkpoint's operator (a zero-shot
  model's: the one it was told), optionally adds seeded measurement noise, upscales them and
  scores PSNR, SSIM and consistency against bicubic and bicubic projected onto ``{x : A x = y}``,
  with an HTML report of crops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domains.base import InputError, MeasurementNoise, check_evaluation, run_record
from domains.files import atomic_target, check_decoded_size, write_atomic
from domains.images.io import image_size, read_image, write_image
from domains.images.report import write_report
from toolkit.checkpoint import SRModel, upscale_any_size
from toolkit.engine import SamplerOptions, network_calls
from toolkit.metrics import consistency_psnr, psnr, ssim
from toolkit.operators import Operator, operator_by_name
from toolkit.tiling import Tiling
from toolkit.utils import make_generator, upsample

#: default network tiles of a 2D image
IMAGE_TILING = Tiling(128, 32, 4)


def make_operator(kind: str, scale: int | Sequence[int], spatial_dims: int = 2) -> Operator:
    """Operator by name, as the ``--operator`` option takes it (:func:`toolkit.operators.operator_by_name`)."""
    try:
        return operator_by_name(kind, scale, spatial_dims)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def crop_to_multiple(x: np.ndarray, multiple: Sequence[int]) -> np.ndarray:
    """``x`` ``(C, *spatial)`` cropped at the high-index end of each axis to a multiple of ``multiple``."""
    sl = tuple(slice(0, n - n % m) for n, m in zip(x.shape[1:], multiple))
    return x[(slice(None),) + sl]


def degrade_image(
    src: str | Path, dst: str | Path, scale: int | Sequence[int] = 2, operator: str = "area", overwrite: bool = False
) -> Path:
    """Write the low-resolution image ``A(x)`` of ``src`` (same channels and bit depth) to ``dst``.

    Sizes not divisible by ``scale`` are cropped at the bottom/right to the nearest multiple.
    """
    dst = Path(dst)
    atomic_target(dst, overwrite)
    op = make_operator(operator, scale)
    data, info = read_image(src)
    data = crop_to_multiple(data, op.factors)
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
    """Super-resolve ``y`` ``(B, C, *spatial)`` in data units of any size (:func:`toolkit.checkpoint.upscale_any_size`).

    Returns:
        The output in data units, and the per-pixel standard deviation over the samples
        (``None`` when ``options.samples`` is 1).
    """
    device = next(model.denoiser.parameters()).device
    bar = _progress(network_calls(model.process, options), desc, progress)
    try:
        return upscale_any_size(
            model, y, options, make_generator(seed, device), lambda i, z, x0: bar.update(1), tiling, precision
        )
    finally:
        bar.close()


def check_image_model(model: SRModel, source: str | Path, channels: int | None = None) -> None:
    """Refuse a checkpoint that cannot take a 2D image (of ``channels`` channels, when given)."""
    if model.spatial_dims != 2 or (model.spec.get("domain") or {}).get("slicewise"):
        kind = "slice-wise MRI" if model.spatial_dims == 2 else f"{model.spatial_dims}D"
        raise InputError(f"{source}: a 2D image cannot go through a {kind} checkpoint")
    if channels is not None and channels != model.channels:
        raise InputError(f"{source}: image has {channels} channel(s) but the checkpoint was trained on {model.channels}")


#: the smallest side SSIM takes (its Gaussian window of 11 px is reflected by 5 at the borders)
SSIM_MIN_SIDE = 6


def check_image_size(source: str | Path, shape: Sequence[int], model: SRModel, least: int = 1) -> None:
    """Refuse an output grid ``shape`` ``(H, W)`` under ``least`` px a side, or that ``model``'s network cannot take.

    Padded to the network's multiple ``m``, an output within ``m`` px on every side reaches the
    network's coarsest level as one pixel, which its group normalisation refuses.
    """
    m = model.multiple
    if min(shape) < least or max(shape) <= m:
        raise InputError(
            f"{source}: image too small for this checkpoint: its output grid would be {shape[-1]}x{shape[-2]} px "
            f"(at least {least} px a side after cropping to the scale x{'x'.join(map(str, model.scale))}, "
            f"and over {m} px, the network's multiple, on one side)"
        )


def upscale_image(
    src: str | Path,
    dst: str | Path,
    model: SRModel,
    options: SamplerOptions,
    seed: int = 0,
    tiling: Tiling | None = IMAGE_TILING,
    overwrite: bool = False,
    progress: bool = True,
    precision: str = "32",
    uncertainty: str | Path | None = None,
) -> Path:
    """Super-resolve an image into ``dst`` (same channels and bit depth).

    With ``options.samples`` > 1 the output is their mean and ``uncertainty``, when given,
    receives their per-pixel standard deviation (a 16-bit image in [0, 1] units).
    """
    dst = Path(dst)
    check_image_model(model, src)
    data, info = read_image(src)
    check_image_model(model, src, info.channels)
    check_image_size(src, [n * f for n, f in zip(data.shape[1:], model.scale)], model)
    x, std = upscale_array(model, torch.from_numpy(data)[None], options, seed, progress, Path(src).name, tiling, precision)
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


def evaluate_images(
    model: SRModel,
    hr_files: Sequence[str | Path],
    out_dir: str | Path,
    options: SamplerOptions,
    seed: int = 0,
    tiling: Tiling | None = IMAGE_TILING,
    progress: bool = True,
    precision: str = "32",
    overwrite: bool = False,
    noise: MeasurementNoise | None = None,
) -> dict[str, Any]:
    """Degrade each image with the model's operator, upscale it, compare with bicubic and projected bicubic.

    ``noise`` (:class:`domains.base.MeasurementNoise`) is added to each degraded input (in file
    order); the input is not clipped to [0, 1] (the measurement model ``y = A x + n``). Methods:
    ``diffsr``, ``bicubic`` and ``bicubic_projected`` (bicubic moved onto ``{x : A x = y}``:
    what data consistency alone gives); the model's output and the baselines are clipped to
    [0, 1] before scoring. ``metrics.json`` also holds :func:`domains.base.run_record`.

    Writes ``out_dir/metrics.json`` and ``out_dir/report.html`` (with PNG crops) and returns the
    metrics. Every reference (its header and size) and the output folder are checked before any
    work (:func:`domains.base.check_evaluation`); the folder is made only then.
    """
    check_image_model(model, hr_files[0] if hr_files else "image")

    def check(f: Path) -> None:
        height, width, channels = image_size(f)
        check_decoded_size(f, height * width)
        check_image_model(model, f, channels)
        check_image_size(f, [n - n % s for n, s in zip((height, width), model.scale)], model, max(SSIM_MIN_SIDE, *model.scale))

    out = check_evaluation(hr_files, out_dir, overwrite, check)
    noise = noise or MeasurementNoise(0.0)
    op = model.require_operator()
    results: list[FileResult] = []
    seconds = 0.0
    for f in hr_files:
        data, info = read_image(f)
        check_image_model(model, f, info.channels)
        hr = torch.from_numpy(crop_to_multiple(data, model.scale))[None]
        y = noise(op.A(hr))
        t0 = time.perf_counter()
        sr, std = upscale_array(model, y, options, seed, progress, Path(f).name, tiling, precision)
        seconds += time.perf_counter() - t0
        sr = sr.clamp(0, 1)
        bic_raw = upsample(y, hr.shape[2:])
        bic = bic_raw.clamp(0, 1)
        bicp = op.project(bic_raw.double(), y.double()).float().clamp(0, 1)
        panels = {"input": y[0].clamp(0, 1).numpy(), "bicubic": bic[0].numpy(), "diffsr": sr[0].numpy(), "truth": hr[0].numpy()}
        panels["error"] = (sr - hr).abs()[0].mean(0, keepdim=True).numpy()
        if std is not None:
            panels["uncertainty"] = std[0].mean(0, keepdim=True).numpy()
        metrics = {
            "diffsr": _metrics(op, sr, hr, y), "bicubic": _metrics(op, bic, hr, y), "bicubic_projected": _metrics(op, bicp, hr, y),
        }
        if std is not None:
            # does the spread of the samples predict the error? (a hallucination check)
            err = (sr - hr).abs().flatten()
            metrics["diffsr"]["uncertainty_error_corr"] = float(torch.corrcoef(torch.stack([std.flatten(), err]))[0, 1])
        results.append(FileResult(file=str(f), metrics=metrics, panels=panels))
    methods = {
        m: {k: float(np.mean([r.metrics[m][k] for r in results])) for k in ("psnr", "ssim", "consistency_psnr")}
        for m in ("diffsr", "bicubic", "bicubic_projected")
    }
    report = {
        "scale": model.scale[0] if len(set(model.scale)) == 1 else list(model.scale),
        "operator": op.spec(),
        "sampler": options.spec(),
        "seed": seed,
        **run_record(model, options, seconds, noise),
        "methods": methods,
        "files": [{"file": r.file, **r.metrics} for r in results],
    }
    write_atomic(out / "metrics.json", lambda p: p.write_text(json.dumps(report, indent=2)), overwrite=overwrite)
    write_report(out, report, [(Path(r.file).name, r.panels) for r in results], model.scale, overwrite=overwrite)
    return report
