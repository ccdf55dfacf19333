"""The Python API behind the command line: degrade, upscale and evaluate files, each by the domain that takes it.

The domains are plug-ins found through the entry points ``diffsr.domains`` (:mod:`domains.base`):
images (PNG/JPEG/TIFF), mri (NIfTI), satellite (GeoTIFF/COG), faces, and any other installed.
:func:`domains.base.select` picks one per call, the checkpoint's domain first, then the input's;
this module names none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from domains.base import DegradeRequest, EvaluateRequest, InputError, UpscaleRequest, select
from domains.files import removed_on_error

if TYPE_CHECKING:
    from toolkit.checkpoint import SRModel
    from toolkit.tiling import Tiling


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
    """Write the low-resolution version ``A(x)`` of ``src`` (same channels, bit depth, geometry) to ``dst``.

    Sizes not divisible by ``scale`` are cropped at the high-index end to the nearest multiple.
    ``operator`` is ``area``, ``gaussian``, ``kspace`` or ``slice`` (NIfTI volumes: slice-thickness
    averaging), or ``mtf`` (rasters: the sensor model set by ``mtf``); ``volume_index`` picks a
    volume of a 4D NIfTI file, ``bands`` the (1-based) bands of a raster; with ``faces`` the seeded
    blind face degradation (seed ``seed``, input resized to ``size`` first) is applied instead.
    """
    request = DegradeRequest(**locals())  # the arguments above, by name
    return select(request).degrade(request)


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
    zero_shot: str | None = None,
    operator: str | None = None,
    mtf: float | None = None,
    sigma_y: float = 0.0,
    zeta: float | None = None,
    gdp_scale: float | None = None,
    jumps: int | None = None,
    eta_b: float | None = None,
    travel_length: int | None = None,
    travel_repeat: int | None = None,
    consistency: str | None = None,
    reference: str | Path | None = None,
    classifier: str | Path | None = None,
    class_label: str | int | None = None,
    classifier_scale: float | None = None,
    adapt_steps: int = 0,
) -> Path:
    """Upscale an image, a NIfTI volume, a GeoTIFF or a face with a trained checkpoint (or ``model``).

    Outputs keep their input's channels, dtype and geometry (a volume gets the finer grid's
    affine, a raster its CRS and scaled transform). ``scale``, when given, must be the
    checkpoint's factor (a guard against using the wrong model). With ``samples`` > 1 the output
    is the mean of that many samples and ``uncertainty``, when given, receives their per-pixel
    standard deviation. ``tiling`` ``"auto"`` is the domain's default tiles. ``whole_photo``
    (face checkpoints) restores the faces of a photo and upscales the rest (bicubic, or the image
    checkpoint ``background``).

    Zero-shot (:mod:`toolkit.zeroshot`): ``zero_shot`` names the method (ddnm, ddnm+, ddrm, ilvr,
    repaint, dps, gdp); the model runs unconditionally, told that ``src`` is ``A x`` plus noise of
    std ``sigma_y`` (a fraction of the signal's span, the data units the checkpoint's
    normalisation maps onto [-1, 1]), ``A`` the ``operator`` (area,
    gaussian, slice, kspace, mtf with ``mtf``) at ``scale`` (then the operator's factor(s), needed).
    A prior (an unconditional checkpoint) runs only so; a conditional pixel-space checkpoint runs
    with its null condition; a residual-space one is refused. ``zeta``, ``gdp_scale``, ``jumps``,
    ``eta_b``, ``travel_length``, ``travel_repeat`` are the methods' parameters (``None``: their
    defaults) and ``eta``, given, is also DDRM's and DDNM+'s; ``consistency`` (none, final,
    every_step) overrides the checkpoint's data consistency. Zero-shot runs hold the whole
    input in memory (the network may still be tiled): a raster too large for that is refused.

    ``reference``: a co-registered high-resolution file on the output grid, for a checkpoint
    trained with one (reference-guided SR; its geometry is checked against the input's).
    ``classifier`` (a noise-aware classifier checkpoint, :mod:`toolkit.classifier`) steers the
    sampler towards ``class_label`` with scale ``classifier_scale`` (classifier guidance).
    ``adapt_steps`` > 0 fine-tunes a copy of the model on ``src`` itself first (test-time
    adaptation, HR-free: the input degraded once more by the model's operator, :mod:`toolkit.adapt`).
    """
    request = UpscaleRequest(**locals())  # the arguments above, by name (checks the output paths first)
    return select(request).upscale(request)


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
    overwrite: bool = False,
    tiling: Tiling | None | Literal["auto"] = "auto",
    samples: int | None = None,
    precision: str = "32",
    bands: Sequence[int] | None = None,
    degradation_seed: int = 0,
    holdout: int | None = None,
    scale: int | Sequence[int] | None = None,
    eta: float | None = None,
    zero_shot: str | None = None,
    operator: str | None = None,
    mtf: float | None = None,
    sigma_y: float = 0.0,
    zeta: float | None = None,
    gdp_scale: float | None = None,
    jumps: int | None = None,
    eta_b: float | None = None,
    travel_length: int | None = None,
    travel_repeat: int | None = None,
    consistency: str | None = None,
    reference: Sequence[str | Path] | None = None,
    classifier: str | Path | None = None,
    class_label: str | int | None = None,
    classifier_scale: float | None = None,
) -> dict[str, Any]:
    """Degrade each high-resolution file with the checkpoint's operator, upscale it, and score it against baselines.

    Writes ``out_dir/metrics.json`` and ``out_dir/report.html`` (an existing one only with
    ``overwrite``) and returns the metrics. Every file and the folder are checked before any work. Face
    checkpoints degrade blindly (seed ``degradation_seed``; ``holdout``: the people a portrait
    folder holds back).

    ``zero_shot`` (with ``operator``, ``scale`` and the methods' parameters, as :func:`upscale`)
    degrades every reference with that known operator instead (faces too) and runs the model
    zero-shot. ``sigma_y`` adds Gaussian noise to each degraded input, of std ``sigma_y`` times
    the signal's span (the data units the checkpoint's normalisation maps onto [-1, 1], per
    channel), drawn from one generator seeded with ``degradation_seed`` in file order
    (:class:`domains.base.MeasurementNoise`); a zero-shot method is told the same level. Every
    domain's ``metrics.json`` records per method (the model, interpolation, and interpolation
    projected onto ``{x : A x = y}``: always for images and rasters, in zero-shot runs for
    volumes and faces) PSNR, SSIM and consistency PSNR, and the run's ``prior``,
    ``zero_shot`` (method, parameters, operator), ``sigma_y``, ``network_calls`` per sample and
    ``seconds`` of the diffusion upscaling (:func:`domains.base.run_record`).

    ``reference`` (one file per ``hr_files`` item, same order), ``classifier``, ``class_label``
    and ``classifier_scale`` as in :func:`upscale`.
    """
    request = EvaluateRequest(**locals())  # the arguments above, by name
    if not hr_files:
        raise InputError("no high-resolution files given")
    with removed_on_error(Path(out_dir)):  # a failure (a full disk, an interrupt) leaves no partial report
        return select(request).evaluate(request)


def adapt(
    checkpoint: str | Path,
    data: Sequence[str | Path],
    out: str | Path,
    hr_free: bool = False,
    freeze: str = "none",
    lora: int = 0,
    keep_normalization: bool = False,
    lr: float = 5e-4,
    max_steps: int | None = None,
    max_time: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    extra: Sequence[str] = (),
) -> Path:
    """Fine-tune ``checkpoint`` on a target domain; returns the adapted checkpoint ``out/last.ckpt``.

    ``data`` is a datamodule config (YAML with a ``data:`` section) or data files (MRI: NIfTI
    scans; with ``hr_free`` a thick-slice scan teaches a slice-wise model from itself, SMORE).
    See :func:`pipelines.adapt.run_adapt` for every option; ``extra`` are LightningCLI arguments.
    """
    from pipelines.adapt import run_adapt

    return run_adapt(
        checkpoint, data, out, hr_free=hr_free, freeze=freeze, lora=lora, keep_normalization=keep_normalization, lr=lr,
        max_steps=max_steps, max_time=max_time, seed=seed, overwrite=overwrite, extra=extra,
    )


__all__ = ["InputError", "adapt", "degrade", "evaluate", "upscale"]
