"""Degrade NIfTI volumes, super-resolve them with a trained checkpoint, and evaluate against interpolation.

:func:`degrade_volume` writes ``A(x)`` on the coarser grid (block-centred voxels). Two kinds of
checkpoint upscale:

* 3D (``spatial_dims == 3``): the volume is sampled patch by patch by the streaming tiler
  (:func:`toolkit.streaming.stream_upscale`): overlapping patches blended with Gaussian weights
  inside every step, the same noise across patches, the state on disk for large volumes, so
  peak memory follows the patch size.
* 2D slice-wise (``domain.slicewise``): planes through the thick axis with their neighbouring
  planes as channels, in batches of planes; with two plane orientations (coronal and sagittal)
  the two results are averaged (both satisfy ``A x = y``, so their mean does too).

Intensities are normalised per volume (the checkpoint's ``domain.intensity``), from the
low-resolution input, and restored on output.

Zero-shot (a model told its operator, :meth:`domains.base.ModelRequest.load`): the streamed path
refuses zero-shot methods, so a 3D model samples the whole volume in memory
(:func:`toolkit.checkpoint.upscale_any_size`: one state for the volume, so a global operator such
as k-space truncation, whose halo is ``None``, is exact), the network still run patch by patch
with the same tiling. A slice-wise model runs plane by plane as above, each plane's operator
the volume operator restricted to it.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domains.base import InputError, MeasurementNoise, check_evaluation, run_record
from domains.files import NonFiniteWarning, atomic_target, write_atomic
from domains.images.pipeline import crop_to_multiple, make_operator, upscale_array
from domains.mri.data import volume_normalization
from domains.mri.io import (
    MRIFileError,
    VolumeMeta,
    is_nifti,
    read_volume,
    reduced_affine,
    scaled_affine,
    volume_shape,
    write_volume,
)
from domains.mri.metrics import cubic_spline, masked_psnr, masked_ssim, trilinear
from domains.mri.normalize import foreground_mask
from toolkit.checkpoint import SRModel
from toolkit.engine import SamplerOptions
from toolkit.normalization import Normalization
from toolkit.streaming import stream_upscale
from toolkit.tiling import Tiling

#: default patches of a 3D volume (memory follows the patch size)
VOLUME_TILING = Tiling(64, 16, 2)


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
    dst = Path(dst)
    atomic_target(dst, overwrite)
    op = make_operator(operator, scale, spatial_dims=3)
    data, meta = read_volume(src, volume_index)
    data = crop_to_multiple(data[None], op.factors)[0]
    if min(data.shape) == 0:
        raise InputError(f"{src}: volume {data.shape} is smaller than the factors {op.factors}")
    y = op.A(torch.from_numpy(np.ascontiguousarray(data))[None, None].double())[0, 0].numpy()
    write_volume(dst, y, meta, reduced_affine(meta.affine, op.factors), overwrite=overwrite)
    return dst


def check_volume_model(model: SRModel, source: str | Path) -> dict[str, Any]:
    """The checkpoint's MRI description; refuses a checkpoint that cannot take a 3D volume."""
    domain = model.spec.get("domain") or {}
    slicewise = domain.get("slicewise")
    if model.spatial_dims == 3:
        if model.channels != 1:
            raise MRIFileError(f"{source}: the checkpoint takes {model.channels} channels per voxel, a volume has 1")
    elif model.spatial_dims != 2 or not slicewise:
        raise MRIFileError(
            f"{source}: a 3D volume cannot go through this {model.spatial_dims}D checkpoint (trained on 2D images, not slice-wise MRI)"
        )
    return domain


def _intensity(model: SRModel, lr: np.ndarray) -> Normalization:
    spec = (model.spec.get("domain") or {}).get("intensity")
    if spec is None:
        return Normalization(offset=[0.0], scale=[1.0])
    return volume_normalization(lr, spec)


def adaptation_input(model: SRModel, src: str | Path, volume_index: int | None = None) -> list[torch.Tensor]:
    """What a model learns from a scan itself (``upscale --adapt-steps``), normalised like its input.

    A slice-wise model: the scan's planes across its thick axis (the axis the model upscales),
    each with its neighbours as channels, ``(B, 2n+1, a, b)``: high-resolution along both in-plane
    axes, the model's operator then degrades ``b`` as a thick slice would (SMORE, Zhao et al.
    2020; both in-plane axes take the thick one's place in turn: one tensor per orientation). A 3D
    model: the scan ``(1, 1, X, Y, Z)`` (ZSSR: learnt degraded once more).
    """
    from domains.mri.data import smore_arrangements

    check_volume_model(model, src)
    lr, _ = read_volume(src, volume_index)
    norm = _intensity(model, lr)
    x = (np.asarray(lr, dtype=np.float32) - np.float32(norm.offset[0])) / np.float32(norm.scale[0])
    if model.spatial_dims == 3:
        return [torch.from_numpy(x)[None, None]]
    factors = volume_factors(model)
    thick = max(range(3), key=lambda a: factors[a])
    n = int((model.spec.get("domain") or {})["slicewise"]["neighbours"])
    stacks = []
    for v in smore_arrangements(x, thick, slab_axis=0, model_thick_axis=2):  # (thick, a, b)
        count = v.shape[0]
        idx = np.clip(np.arange(count)[:, None] + np.arange(-n, n + 1)[None], 0, count - 1)
        stacks.append(torch.from_numpy(np.ascontiguousarray(v[idx])))  # (count, 2n+1, a, b)
    return stacks


def volume_factors(model: SRModel) -> tuple[int, int, int]:
    """The checkpoint's factor per volume axis (a slice-wise model's planes exclude one axis)."""
    domain = model.spec.get("domain") or {}
    if model.spatial_dims == 3:
        return tuple(model.scale)  # type: ignore[return-value]
    across = domain["slicewise"]["plane_axes"][1]
    f = list(model.scale)
    f.insert(across, 1)
    return tuple(f)  # type: ignore[return-value]


def upscale_volume_array(
    model: SRModel,
    lr: np.ndarray,
    options: SamplerOptions,
    seed: int = 0,
    tiling: Tiling | None = None,
    progress: bool = False,
    precision: str = "32",
    plane_batch: int = 16,
    out_dtype: np.dtype | type = np.float32,
    name: str = "volume",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Super-resolve a low-resolution volume ``(X, Y, Z)`` in scanner units.

    NaN/infinite voxels are missing: filled for the network and NaN in the output (``name``, the
    file, is named in the warning that counts them).

    ``tiling`` is the 3D patch layout (``None``: one pass), or for a slice-wise model the tiles
    of each plane (``None``: whole planes); ``plane_batch`` planes go through the network at once.
    A 3D model writes each patch region straight into an output of ``out_dtype`` (integers
    rounded and clipped), so the output volume is the only array of its size.

    Returns:
        The volume on the grid ``volume_factors(model)`` times finer (``out_dtype``) and the
        per-voxel standard deviation over the samples (float32, ``None`` for one sample), in
        scanner units.
    """
    domain = check_volume_model(model, "volume")
    lr, missing = _fill_missing(lr, name)
    norm = _intensity(model, lr)
    scale, offset = norm.scale[0], norm.offset[0]
    x = (np.asarray(lr, dtype=np.float32) - np.float32(offset)) / np.float32(scale)
    if model.spatial_dims == 3 and options.zero_shot is not None:
        out, std = _whole_3d(model, x, options, seed, tiling, progress, precision, scale, offset, np.dtype(out_dtype), name)
    elif model.spatial_dims == 3:
        one_pass = Tiling(max(model.operator.hr_shape(x.shape)) + 64, 0, 1)
        out, std = _stream_3d(model, x, options, seed, tiling or one_pass, progress, precision, scale, offset, np.dtype(out_dtype))
    else:
        out, std = _slicewise(model, x, domain["slicewise"], options, seed, tiling, progress, precision, plane_batch)
        out = _to_dtype(out * np.float32(scale) + np.float32(offset), np.dtype(out_dtype))
        std = None if std is None else std * np.float32(scale)
    if missing is not None:  # what was missing stays missing (NaN): the fill is not data
        hr_missing = missing
        for axis, f in enumerate(volume_factors(model)):
            hr_missing = np.repeat(hr_missing, f, axis=axis)
        out[hr_missing] = np.nan
        if std is not None:
            std[hr_missing] = np.nan
    return out, std


def _fill_missing(lr: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Non-finite voxels are missing data: filled with the volume's smallest finite value (background)
    for the network, their mask returned (``None`` when there are none), their count in a warning."""
    missing = ~np.isfinite(lr)
    if not missing.any():
        return lr, None
    if missing.all():
        raise MRIFileError(f"{name}: no voxel is finite")
    warnings.warn(f"{name}: {int(missing.sum())} non-finite voxels treated as missing (NaN in the output)", NonFiniteWarning, stacklevel=3)
    return np.where(missing, np.min(lr[~missing]), lr), missing


def _to_dtype(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(v), info.min, info.max).astype(dtype)
    return v.astype(dtype, copy=False)


def _stream_3d(
    model: SRModel, x: np.ndarray, options: SamplerOptions, seed: int, tiling: Tiling, progress: bool, precision: str,
    scale: float, offset: float, out_dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray | None]:
    hr_shape = model.operator.hr_shape(x.shape)
    out = np.empty(hr_shape, dtype=out_dtype)  # the only array of the output's size
    std = np.empty(hr_shape, dtype=np.float32) if options.samples > 1 else None

    def write(region: tuple[slice, ...], value: np.ndarray) -> None:
        out[region] = _to_dtype(value[0] * np.float32(scale) + np.float32(offset), out_dtype)

    def write_std(region: tuple[slice, ...], value: np.ndarray) -> None:
        assert std is not None
        std[region] = value[0] * np.float32(scale)

    stream_upscale(
        model, lambda r: x[r][None], x.shape, write, options, seed, tiling,
        write_std=None if std is None else write_std, progress=progress, precision=precision,
    )
    return out, std


def _whole_3d(
    model: SRModel, x: np.ndarray, options: SamplerOptions, seed: int, tiling: Tiling | None, progress: bool, precision: str,
    scale: float, offset: float, out_dtype: np.dtype, name: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A 3D model over the whole normalised volume ``x`` in memory (a zero-shot method needs its whole state);
    the network runs in ``tiling``'s patches (``None``: one pass). Returns scanner units."""
    sr, sd = upscale_array(
        model, torch.from_numpy(np.ascontiguousarray(x))[None, None], options, seed, progress, Path(name).name, tiling, precision
    )
    out = _to_dtype(sr[0, 0].numpy() * np.float32(scale) + np.float32(offset), out_dtype)
    return out, None if sd is None else sd[0, 0].numpy() * np.float32(scale)


def _slicewise(
    model: SRModel, x: np.ndarray, slicewise: dict[str, Any], options: SamplerOptions, seed: int,
    tiling: Tiling | None, progress: bool, precision: str, plane_batch: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    n = int(slicewise["neighbours"])
    results, variances = [], []
    for o, across in enumerate(reversed(slicewise["plane_axes"])):
        v = np.moveaxis(x, across, 0)  # planes along axis 0
        count = v.shape[0]
        idx = np.clip(np.arange(count)[:, None] + np.arange(-n, n + 1)[None], 0, count - 1)
        out_planes, std_planes = [], []
        for start in range(0, count, plane_batch):
            stacks = torch.from_numpy(np.ascontiguousarray(v[idx[start : start + plane_batch]]))  # (B, 2n+1, *plane)
            sr, sd = upscale_array(
                model, stacks, options, seed=seed * 1_000_003 + o * 10_007 + start, progress=progress,
                desc=f"planes {start}/{count}", tiling=tiling, precision=precision,
            )
            out_planes.append(sr[:, n].numpy())
            if sd is not None:
                std_planes.append(sd[:, n].numpy())
        results.append(np.moveaxis(np.concatenate(out_planes), 0, across))
        if std_planes:
            variances.append(np.moveaxis(np.concatenate(std_planes), 0, across) ** 2)
    out = np.mean(results, axis=0).astype(np.float32)
    std = np.sqrt(np.mean(variances, axis=0)).astype(np.float32) if variances else None
    return out, std


def upscale_volume(
    src: str | Path,
    dst: str | Path,
    model: SRModel,
    options: SamplerOptions,
    seed: int = 0,
    tiling: Tiling | None = None,
    overwrite: bool = False,
    volume_index: int | None = None,
    progress: bool = True,
    precision: str = "32",
    uncertainty: str | Path | None = None,
) -> Path:
    """Super-resolve a NIfTI volume; the output has the finer grid's affine and the input's header and dtype."""
    dst = Path(dst)
    for target in (dst, uncertainty):
        if target is not None:
            atomic_target(Path(target), overwrite)
    if uncertainty is not None and not is_nifti(uncertainty):
        raise MRIFileError(f"{uncertainty}: an uncertainty map is written as .nii or .nii.gz")
    check_volume_model(model, src)
    lr, meta = read_volume(src, volume_index, missing_ok=True)
    factors = volume_factors(model)
    out, std = upscale_volume_array(model, lr, options, seed, tiling, progress, precision, out_dtype=meta.dtype, name=str(src))
    del lr
    affine = scaled_affine(meta.affine, factors)
    write_volume(dst, out, meta, affine, overwrite=overwrite)
    if uncertainty is not None and std is not None:
        write_volume(uncertainty, std, VolumeMeta(meta.affine, meta.header, np.dtype(np.float32)), affine, overwrite=overwrite)
    return dst


@dataclass
class VolumeResult:
    file: str
    metrics: dict[str, dict[str, float]]


def evaluate_volumes(
    model: SRModel,
    hr_files: Sequence[str | Path],
    out_dir: str | Path,
    options: SamplerOptions,
    seed: int = 0,
    tiling: Tiling | None = None,
    progress: bool = True,
    precision: str = "32",
    overwrite: bool = False,
    noise: MeasurementNoise | None = None,
) -> dict[str, Any]:
    """Degrade each volume with the model's operator, super-resolve it, compare with trilinear and cubic spline.

    PSNR and SSIM are 3D, within the head (voxels above half of Otsu's threshold of the
    reference), with the reference's intensity range as the data range; consistency is the PSNR
    of ``A(sr)`` against the input. Writes ``metrics.json``, ``report.html`` with PNG panels, and
    each super-resolved volume as NIfTI. Every reference (its header) and the output folder are
    checked before any work (:func:`domains.base.check_evaluation`); the folder is made only then.

    ``noise`` (:class:`domains.base.MeasurementNoise`) is added to each degraded volume: its
    standard deviation is in the model's units (the per-volume normalised intensities, whose
    [-1, 1] is the volume's percentile span), so in scanner units it is scaled by the volume's
    intensity normalisation, taken from the noise-free input. A zero-shot run (a model told its operator) also scores ``cubic_projected``
    (the cubic spline moved onto ``{x : A x = y}``; conditional runs keep the three methods
    earlier reports have). ``metrics.json`` also holds :func:`domains.base.run_record`.
    """
    check_volume_model(model, hr_files[0] if hr_files else "volume")
    factors = volume_factors(model)

    def check(f: Path) -> None:
        shape = volume_shape(f)
        if any(n < s for n, s in zip(shape, factors)):
            raise MRIFileError(f"{f}: volume {shape} is smaller than the factors {factors}")

    out = check_evaluation(hr_files, out_dir, overwrite, check, [f"{_stem(f)}_diffsr.nii.gz" for f in hr_files])
    op3d = model.require_operator() if model.spatial_dims == 3 else _volume_operator(model, factors)
    noise = noise or MeasurementNoise(0.0)
    zero_shot = options.zero_shot is not None
    results: list[VolumeResult] = []
    panels: list[tuple[str, dict[str, np.ndarray]]] = []
    seconds = 0.0
    for f in hr_files:
        hr, meta = read_volume(f)
        hr = hr[tuple(slice(0, n - n % s) for n, s in zip(hr.shape, factors))]
        y = op3d.A(torch.from_numpy(hr)[None, None].double())[0, 0].float().numpy()
        y = noise(y, _intensity(model, y).scale[0])
        t0 = time.perf_counter()
        sr, std = upscale_volume_array(model, y, options, seed, tiling, progress, precision)
        seconds += time.perf_counter() - t0
        mask = foreground_mask(hr)
        r = float(hr.max() - hr.min())
        methods = {"diffsr": sr, "trilinear": trilinear(y, factors), "cubic": cubic_spline(y, factors)}
        if zero_shot:
            cubic = torch.from_numpy(methods["cubic"].astype(np.float64))[None, None]
            y64 = torch.from_numpy(y.astype(np.float64))[None, None]
            methods["cubic_projected"] = op3d.project(cubic, y64)[0, 0].float().numpy()
        metrics: dict[str, dict[str, float]] = {}
        for name, pred in methods.items():
            cons = op3d.A(torch.from_numpy(pred)[None, None].double())[0, 0].numpy()
            metrics[name] = {
                "psnr": masked_psnr(pred, hr, mask, r),
                "ssim": masked_ssim(pred, hr, mask, r),
                "consistency_psnr": min(100.0, masked_psnr(cons, y, np.ones(y.shape, bool), r)),
            }
        if std is not None:
            err = np.abs(sr - hr)[mask]
            metrics["diffsr"]["uncertainty_error_corr"] = float(np.corrcoef(std[mask], err)[0, 1])
        stem = _stem(f)
        write_volume(out / f"{stem}_diffsr.nii.gz", sr, meta, meta.affine, overwrite=overwrite)
        results.append(VolumeResult(str(f), metrics))
        panels.append((stem, _panels(hr, y, methods, std, factors)))
    names = ("diffsr", "trilinear", "cubic", *(("cubic_projected",) if zero_shot else ()))
    report = {
        "factors": list(factors),
        "operator": op3d.spec(),
        "sampler": options.spec(),
        "seed": seed,
        **run_record(model, options, seconds, noise),
        "methods": {m: {k: float(np.mean([r.metrics[m][k] for r in results])) for k in ("psnr", "ssim", "consistency_psnr")} for m in names},
        "files": [{"file": r.file, **r.metrics} for r in results],
    }
    write_atomic(out / "metrics.json", lambda p: p.write_text(json.dumps(report, indent=2)), overwrite=overwrite)
    _write_report(out, report, panels, overwrite)
    return report


def _stem(path: str | Path) -> str:
    return Path(path).name.split(".nii")[0]


def _volume_operator(model: SRModel, factors: Sequence[int]):  # type: ignore[no-untyped-def]
    """The 3D operator a slice-wise checkpoint's 2D operator stands for: identity across the planes."""
    from toolkit.operators import operator_from_spec

    across = model.spec["domain"]["slicewise"]["plane_axes"][1]
    spec = dict(model.operator.spec())
    if spec["type"] == "slice_average":
        spec.update(axis=[a for a in range(3) if a != across][spec["axis"]], spatial_dims=3)
    else:
        spec["factors"] = list(factors)
        if "spatial_dims" in spec:
            spec["spatial_dims"] = 3
        if "sigma" in spec:
            sigma = list(spec["sigma"])
            sigma.insert(across, 0.0)  # no blur across the planes
            spec["sigma"] = sigma
    return operator_from_spec(spec)


def _panels(hr: np.ndarray, y: np.ndarray, methods: dict[str, np.ndarray], std: np.ndarray | None, factors: Sequence[int]) -> dict[str, np.ndarray]:
    """Mid planes through the thick axis (where SR shows), scaled to the reference's 0.5-99.5 percentiles."""
    thick = int(np.argmax(factors))
    plane_axis = 1 if thick != 1 else 0  # a plane containing the thick axis
    c = hr.shape[plane_axis] // 2
    lo, hi = np.percentile(hr, [0.5, 99.5])

    def view(v: np.ndarray, index: int = c) -> np.ndarray:
        return np.clip((np.take(v, index, axis=plane_axis) - lo) / (hi - lo), 0, 1)[None]

    inp = np.take(y, c // factors[plane_axis], axis=plane_axis)  # the input's plane at the reference's, nearest-neighbour up
    for i, a in enumerate(a for a in range(3) if a != plane_axis):
        inp = np.repeat(inp, factors[a], axis=i)
    out = {"input": np.clip((inp - lo) / (hi - lo), 0, 1)[None], "truth": view(hr)}
    out.update({name: view(v) for name, v in methods.items()})
    out["error"] = np.clip(np.abs(view(methods["diffsr"]) - view(hr)) * 4, 0, 1)
    if std is not None:
        s = np.take(std, c, axis=plane_axis)
        out["uncertainty"] = np.clip(s / max(float(s.max()), 1e-8), 0, 1)[None]
    return out


def _write_report(out: Path, report: dict[str, Any], panels: list[tuple[str, dict[str, np.ndarray]]], overwrite: bool) -> None:
    import html

    from domains.images.io import write_image

    rows = []
    for stem, p in panels:
        cells = []
        for name, img in p.items():
            png = out / f"{stem}_{name}.png"
            write_image(png, np.ascontiguousarray(np.rot90(img, axes=(1, 2))), 8, overwrite=True)
            cells.append(f"<figure><img src='{html.escape(png.name)}' width='192'><figcaption>{html.escape(name)}</figcaption></figure>")
        rows.append(f"<h2>{html.escape(stem)}</h2><div style='display:flex;gap:8px'>{''.join(cells)}</div>")
    table = "".join(
        f"<tr><td>{m}</td><td>{v['psnr']:.3f}</td><td>{v['ssim']:.4f}</td><td>{v['consistency_psnr']:.1f}</td></tr>"
        for m, v in report["methods"].items()
    )
    body = (
        "<html><head><meta charset='utf-8'><title>diffsr MRI evaluation</title></head><body>"
        f"<h1>MRI super-resolution x{'x'.join(map(str, report['factors']))}</h1>"
        "<p>PSNR and SSIM in 3D within the head; consistency: PSNR of A(sr) against the input. "
        "Panels: a mid plane through the thick axis; error x4; uncertainty = std over samples, scaled to its max.</p>"
        f"<table border='1'><tr><th>method</th><th>PSNR dB</th><th>SSIM</th><th>consistency dB</th></tr>{table}</table>"
        + "".join(rows) + "</body></html>"
    )
    write_atomic(out / "report.html", lambda p: p.write_text(body), overwrite=overwrite)
