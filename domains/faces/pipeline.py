"""Face restoration from files: crops, whole photos, evaluation on held-back faces, sampling comparisons.

A face model is a :class:`toolkit.lightning.DiffusionSR` checkpoint trained by
``configs/faces/restore_128.yaml``: conditional diffusion on the degraded face *already on the
output grid* (``S x S``, bicubic-upsampled), so its operator is the identity (``AreaDownsample``
with factor 1) and sampling never projects (a projection onto ``{x : x = y}`` would return the
input). A face of any size is brought to ``S x S`` the way the training degradation does it
(bicubic up, antialiased bicubic down), restored, and written.

Every output is written to a temporary file and renamed (:func:`domains.files.write_atomic`), and
every input is checked before any sampling, so an error never leaves a partial output.

Zero-shot (a face prior, ``configs/faces/prior_128.yaml``, told a known operator): a face crop is
the measurement ``y = A x + n`` and is upscaled on the grid ``A`` implies
(:func:`domains.images.pipeline.upscale_image`); :func:`evaluate_faces_zero_shot` degrades each
held-back face with the known operator (plus seeded noise) instead of the blind degradation.
"""

from __future__ import annotations

import html
import json
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from domains.base import InputError, MeasurementNoise, check_evaluation, run_record
from domains.faces.data import PORTRAIT_CENTER, PORTRAIT_SIDE, crop_box, crop_square, load_face, resize, split_by_person
from domains.faces.degradations import FaceDegradation, Output, evaluation_degradation
from domains.faces.detect import FACE_MARGIN, FaceBox, detect_faces
from domains.faces.plugin import face_state
from domains.files import atomic_target, check_decoded_size, write_atomic
from domains.images.data import list_images
from domains.images.io import ImageInfo, image_size, read_image, write_image
from toolkit.checkpoint import CheckpointError, SRModel, load_model, read_checkpoint, upscale_any_size
from toolkit.engine import SamplerOptions
from toolkit.metrics import consistency_psnr, psnr, ssim
from toolkit.tiling import Tiling
from toolkit.utils import make_generator, upsample

#: the smallest face side accepted, as a fraction of the model size (x8 is the largest training factor)
MIN_FACE_FRACTION = 1 / 8
#: the smallest photo side accepted in whole-photo mode
MIN_PHOTO_SIDE = 32
#: a truncated start's timestep, "noise" for sampling from pure noise, None for the checkpoint's default
TStart = int | Literal["noise"] | None


class FaceInputError(ValueError):
    """Input a face model cannot take: the message names the file and the problem."""


@dataclass
class FaceModel:
    """A face restoration model: the diffusion model, its face size ``S`` and the framing it was trained on."""

    model: SRModel
    size: int = 128
    crop_center: tuple[float, float] = PORTRAIT_CENTER
    crop_side: float = PORTRAIT_SIDE
    source: str = "model"

    @property
    def channels(self) -> int:
        return self.model.channels

    @property
    def min_face(self) -> int:
        return max(8, math.ceil(self.size * MIN_FACE_FRACTION))

    def options(self, t_start: TStart = None, **overrides: Any) -> SamplerOptions:
        """The checkpoint's sampling defaults with ``overrides`` (``None`` ignored), never projecting.

        ``t_start="noise"`` samples from pure noise (no truncated start): with ``steps=1`` that is
        the regression estimate ``E[x0 | y]`` alone; an int is the truncated start's timestep.
        """
        opts = self.model.options.updated(**overrides).updated(consistency="none")
        if t_start == "noise":
            return replace(opts, t_start=None)
        return opts.updated(t_start=t_start)

    @torch.no_grad()
    def restore(self, faces: torch.Tensor, generator: torch.Generator, options: SamplerOptions | None = None) -> torch.Tensor:
        """Restore ``(B, C, S, S)`` faces on the model grid (data units [0, 1]); returns ``(B, C, S, S)`` in [0, 1]."""
        if faces.shape[1] != self.channels:
            raise FaceInputError(f"faces have {faces.shape[1]} channel(s), the model {self.channels}")
        p = next(self.model.denoiser.parameters())
        out = self.model.upscale(faces.to(device=p.device, dtype=p.dtype), generator, options or self.options())
        return out.float().cpu().clamp(0, 1)


def is_face_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a face restoration checkpoint (written with :class:`~domains.faces.data.FaceDataModule`)."""
    try:
        return bool(face_state(read_checkpoint(path)))
    except CheckpointError:
        return False


def load_face_model(
    checkpoint: str | Path | SRModel | FaceModel, device: str = "cpu", size: int | None = None
) -> FaceModel:
    """A :class:`FaceModel` from a checkpoint path (or an already loaded model).

    The face size and framing come from the checkpoint (:func:`domains.faces.plugin.face_state`,
    stored by :class:`~domains.faces.data.FaceDataModule`); ``size`` overrides them.

    Raises:
        CheckpointError: unreadable checkpoint, or not a face restoration model (its scale is not 1).
    """
    if isinstance(checkpoint, FaceModel):
        return checkpoint if size is None else FaceModel(checkpoint.model, size, checkpoint.crop_center, checkpoint.crop_side)
    if isinstance(checkpoint, SRModel):
        model, name = checkpoint, "model"
        state = face_state({"diffsr": model.spec})
    else:
        model, name = load_model(checkpoint, device), str(checkpoint)
        state = face_state(read_checkpoint(checkpoint))
    if model.spatial_dims != 2 or any(f != 1 for f in model.scale):
        raise CheckpointError(
            f"{name}: an x{'x'.join(map(str, model.scale))} {model.spatial_dims}D super-resolution model, not a face "
            "restoration model (faces are restored on the output grid: scale 1, see configs/faces/restore_128.yaml)"
        )
    s = int(size or state.get("face_size", 128))
    center = tuple(state.get("crop_center", PORTRAIT_CENTER))
    return FaceModel(model, s, (float(center[0]), float(center[1])), float(state.get("crop_side", PORTRAIT_SIDE)), name)


# --- reading and checking ------------------------------------------------------------------------
def _read_face_input(path: Path, fm: FaceModel, min_side: int) -> tuple[torch.Tensor, ImageInfo]:
    """Read an image for ``fm``: ``(C, H, W)`` in [0, 1], refusing wrong channels and tiny images."""
    data, info = read_image(path)
    if info.channels != fm.channels:
        kind = "greyscale" if info.channels == 1 else f"{info.channels}-channel"
        raise FaceInputError(
            f"{path}: {kind} image ({info.channels} channel(s)) but the face model restores {fm.channels}-channel images"
        )
    h, w = data.shape[1:]
    if min(h, w) < min_side:
        raise FaceInputError(f"{path}: image is {w}x{h} px, too small (at least {min_side} px a side)")
    return torch.from_numpy(data), info


def to_model_grid(face: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """``(B, C, h, w)`` to the model grid as the degradation does: bicubic up, antialiased bicubic down."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if all(n <= s for n, s in zip(face.shape[2:], size)):
        return upsample(face, size).clamp(0, 1)
    return resize(face, size)


def _grid_shape(h: int, w: int, size: int, multiple: int) -> tuple[int, int]:
    """Model-grid shape of an ``h x w`` crop: shorter side ``size``, each side a multiple of ``multiple``."""
    k = size / min(h, w)
    return tuple(max(multiple, int(round(n * k / multiple)) * multiple) for n in (h, w))  # type: ignore[return-value]


def _targets(src: Path, dst: Path, files: list[Path]) -> list[Path]:
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            raise FaceInputError(f"{dst}: the input is a folder, so the output must be a folder")
        return [dst / (f.stem + ".png") for f in files]
    return [dst]


# --- crops ---------------------------------------------------------------------------------------
def restore_faces(
    src: str | Path,
    dst: str | Path,
    model: str | Path | SRModel | FaceModel,
    steps: int | None = None,
    t_start: TStart = None,
    samples: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    out_size: int | None = None,
    overwrite: bool = False,
    device: str = "cpu",
) -> list[Path]:
    """Restore face crops: one file to one file, or a folder of crops to a folder of PNGs, in batches.

    Each crop is brought to the model grid (shorter side ``S``, bicubic), restored, and written
    at that size (or with the shorter side ``out_size``), same bit depth as its input. Batches
    hold crops of the same grid shape; the noise is drawn per batch from ``seed``.

    Raises:
        FaceInputError: a greyscale image for an RGB model, an image smaller than ``S / 8``.
        FileExistsError: an output exists and ``overwrite`` is false. Nothing is written then.
    """
    fm = load_face_model(model, device)
    src, dst = Path(src), Path(dst)
    files = list_images(src)
    targets = _targets(src, dst, files)
    for t in targets:
        if t.exists() and not overwrite:
            raise FileExistsError(f"{t}: output exists (use --overwrite to replace it)")
    if not src.is_dir():
        atomic_target(dst, overwrite)
    inputs = [_read_face_input(f, fm, fm.min_face) for f in files]  # every input is checked before anything is written
    multiple = fm.model.multiple
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (x, _) in enumerate(inputs):
        groups.setdefault(_grid_shape(x.shape[1], x.shape[2], fm.size, multiple), []).append(i)
    options = fm.options(steps=steps, t_start=t_start, samples=samples)
    results: dict[int, torch.Tensor] = {}
    for shape, idx in sorted(groups.items()):
        for k in range(0, len(idx), batch_size):
            chunk = idx[k : k + batch_size]
            batch = torch.cat([to_model_grid(inputs[i][0][None], shape) for i in chunk])
            out = fm.restore(batch, make_generator(seed + k), options)
            for i, o in zip(chunk, out):
                results[i] = o
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(targets):
        out = results[i][None]
        if out_size is not None:
            out = resize(out, _grid_shape(out.shape[2], out.shape[3], out_size, 1))
        write_image(t, out[0].numpy(), inputs[i][1].bit_depth, overwrite=overwrite)
    return targets


# --- whole photos --------------------------------------------------------------------------------
def feather_mask(side: int, feather: float = 0.15) -> torch.Tensor:
    """``(side, side)`` paste mask: 1 inside, a raised-cosine ramp to 0 over the outer ``feather`` of each edge."""
    n = max(1, int(round(feather * side)))
    r = torch.ones(side, dtype=torch.float64)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n)
    r[:n] = torch.minimum(r[:n], ramp)
    r[side - n :] = torch.minimum(r[side - n :], ramp.flip(0))
    return (r[:, None] * r[None, :]).float()


def _crop_padded(img: torch.Tensor, top: int, left: int, side: int) -> torch.Tensor:
    """``(C, side, side)`` window of ``(C, H, W)`` at ``(top, left)``, edge-replicated where it leaves the image."""
    h, w = img.shape[1:]
    pads = [max(0, -left), max(0, left + side - w), max(0, -top), max(0, top + side - h)]
    x = F.pad(img[None], pads, mode="replicate")[0] if any(pads) else img
    t, lft = top + pads[2], left + pads[0]
    return x[:, t : t + side, lft : lft + side]


@dataclass
class PhotoResult:
    """What :func:`restore_photo` did: the output, the faces (input pixels) and the paste squares (output pixels)."""

    output: Path
    faces: list[FaceBox] = field(default_factory=list)
    squares: list[tuple[int, int, int]] = field(default_factory=list)
    scale: int = 1


def _background_upscaler(background: str | Path | SRModel | None, scale: int, device: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """The upscaler of everything but the faces: bicubic x``scale``, or an image checkpoint (its own scale)."""
    if background is None:
        return (lambda y: upsample(y, [n * scale for n in y.shape[2:]]).clamp(0, 1)), scale
    bg = background if isinstance(background, SRModel) else load_model(background, device)
    if bg.spatial_dims != 2 or len(set(bg.scale)) != 1 or bg.scale[0] < 2:
        raise CheckpointError(f"{background}: the background model must be a 2D super-resolution model with one factor >= 2")
    s = bg.scale[0]
    multiple = bg.multiple // math.gcd(bg.multiple, s)

    def run(y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[2:]
        yp = F.pad(y, [0, (-w) % multiple, 0, (-h) % multiple], mode="replicate")
        x = bg.upscale(yp, make_generator(0), tiling=Tiling())
        return x[:, :, : h * s, : w * s].float().cpu().clamp(0, 1)

    return run, s


def restore_photo(
    src: str | Path,
    dst: str | Path,
    model: str | Path | SRModel | FaceModel,
    whole_photo: bool = True,
    scale: int = 2,
    background: str | Path | SRModel | None = None,
    margin: float = FACE_MARGIN,
    feather: float = 0.15,
    min_face: int = 24,
    steps: int | None = None,
    t_start: TStart = None,
    samples: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    device: str = "cpu",
) -> PhotoResult:
    """Restore the faces of a photo and upscale the rest (``--whole-photo``).

    The photo is upscaled x``scale`` by bicubic interpolation (or by the image checkpoint
    ``background``, whose factor then replaces ``scale``). Each face found by the Haar detector
    is cut as a square ``margin`` times its box (the training framing), restored at the model
    size, resized to its place in the output and pasted with a raised-cosine feathered mask, so
    pixels outside the squares are the upscaled photo, unchanged. With ``whole_photo=False`` the
    input is one face crop (:func:`restore_faces`).

    Raises:
        FaceInputError: no face found, a greyscale photo for an RGB model, a photo under 32 px.
        FileExistsError: ``dst`` exists and ``overwrite`` is false. Nothing is written then.
    """
    src, dst = Path(src), Path(dst)
    if not whole_photo:
        return PhotoResult(restore_faces(src, dst, model, steps, t_start, samples, seed, overwrite=overwrite, device=device)[0])
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    atomic_target(dst, overwrite)
    fm = load_face_model(model, device)
    img, info = _read_face_input(src, fm, MIN_PHOTO_SIDE)
    faces = detect_faces(img.numpy(), min_size=min_face)
    if not faces:
        raise FaceInputError(f"{src}: no face found (Haar frontal-face detector, faces of at least {min_face} px)")
    upscaler, s = _background_upscaler(background, scale, device)
    out = upscaler(img[None])[0]
    h, w = out.shape[1:]
    options = fm.options(steps=steps, t_start=t_start, samples=samples)
    crops = torch.stack([to_model_grid(_crop_padded(img, *f.square(margin))[None], fm.size)[0] for f in faces])
    restored = fm.restore(crops, make_generator(seed), options)
    squares = []
    for face, rest in zip(reversed(faces), reversed(list(restored))):  # largest last: on top
        top, left, side = face.square(margin)
        top, left, side = top * s, left * s, side * s
        patch = to_model_grid(rest[None], side)[0] if side != fm.size else rest
        mask = feather_mask(side, feather)
        t0, l0, t1, l1 = max(0, top), max(0, left), min(h, top + side), min(w, left + side)
        if t1 <= t0 or l1 <= l0:
            continue
        m = mask[t0 - top : t1 - top, l0 - left : l1 - left]
        region = out[:, t0:t1, l0:l1]
        out[:, t0:t1, l0:l1] = m * patch[:, t0 - top : t1 - top, l0 - left : l1 - left] + (1 - m) * region
        squares.append((top, left, side))
    write_image(dst, out.clamp(0, 1).numpy(), info.bit_depth, overwrite=overwrite)
    return PhotoResult(dst, faces, squares[::-1], s)


# --- the degradation as a file operation ---------------------------------------------------------
def degrade_face(
    src: str | Path,
    dst: str | Path,
    seed: int = 0,
    degradation: FaceDegradation | None = None,
    output: Output = "lr",
    size: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the blind degradation of a face image (``diffsr degrade --faces``); returns its draws.

    ``output`` ``lr`` writes the low-resolution image, ``grid`` the same upsampled back to the input
    size. ``size`` first resizes the input to ``size x size`` (the model grid).
    """
    src, dst = Path(src), Path(dst)
    if size is not None and not size >= 1:
        raise FaceInputError(f"--size {size}: the face size must be a positive number of pixels")
    atomic_target(dst, overwrite)
    data, info = read_image(src)
    if info.channels not in (1, 3):
        raise FaceInputError(f"{src}: {info.channels} channels; faces are grey or RGB")
    x = torch.from_numpy(data)[None]
    if size is not None:
        x = resize(x, size)
    if min(x.shape[2:]) < 8:
        raise FaceInputError(f"{src}: image is {x.shape[3]}x{x.shape[2]} px, too small to degrade (at least 8 px a side)")
    deg = degradation or FaceDegradation()
    d = deg.degrade(x, np.random.default_rng(seed))
    out = d.lr[0] if output == "lr" else d.grid[0]
    write_image(dst, out.numpy(), info.bit_depth, overwrite=overwrite)
    return d.params[0].to_dict()


# --- evaluation ----------------------------------------------------------------------------------
def lpips_status() -> dict[str, Any]:
    """LPIPS needs torchvision's pretrained backbone; never downloaded here, so usually unavailable."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means unavailable
        return {"available": False, "reason": "torchvision is not installed (LPIPS needs its pretrained AlexNet/VGG backbone)"}
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        return {"available": False, "reason": f"no AlexNet weights in {hub} (nothing is downloaded at run time)"}
    return {"available": True, "reason": ""}


def _lpips(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover - needs weights
    from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity

    return torch.stack([learned_perceptual_image_patch_similarity(p[None], t[None], net_type="alex", normalize=True)
                        for p, t in zip(pred, target)])


def face_seed(degradation_seed: int, name: str) -> np.random.Generator:
    """The evaluation degradation's generator for one file: by name, so it does not depend on the folder."""
    return np.random.default_rng((int(degradation_seed), zlib.crc32(name.encode())))


@dataclass
class _Prepared:
    files: list[Path]
    hr: torch.Tensor  # (N, C, S, S)
    grid: torch.Tensor  # (N, C, S, S)
    lr: list[torch.Tensor]
    ops: list[Any]


def _prepare(
    fm: FaceModel,
    folder: str | Path | Sequence[str | Path],
    degradation_seed: int,
    degradation: FaceDegradation,
    holdout: int | None,
    crop_center: Sequence[float] | None,
    crop_side: float | None,
    limit: int | None,
    noise: MeasurementNoise | None = None,
) -> _Prepared:
    """The references cut and degraded; ``noise`` is added to each degraded face (its grid is the noisy one upsampled)."""
    files = _reference_files(folder, holdout, limit)
    hrs, grids, lrs, ops = [], [], [], []
    for f, hr in zip(files, _reference_crops(fm, files, crop_center, crop_side)):
        d = degradation.degrade(hr, face_seed(degradation_seed, f.name))
        lr, grid = d.lr[0][None], d.grid
        if noise is not None and noise.sigma_y > 0:
            lr = noise(lr)
            grid = upsample(lr, hr.shape[2:]).clamp(0, 1).to(hr.dtype)
        hrs.append(hr)
        grids.append(grid)
        lrs.append(lr)
        ops.append(d.params[0].known_operator())
    return _Prepared(files, torch.cat(hrs), torch.cat(grids), lrs, ops)


def _reference_files(folder: str | Path | Sequence[str | Path], holdout: int | None, limit: int | None) -> list[Path]:
    """The evaluated files: all, or the people a portrait folder holds back (``holdout``), the first ``limit``."""
    files = list_images(folder if isinstance(folder, (str, Path)) else list(folder))
    if holdout is not None:
        files = split_by_person(files, holdout)[1]
    return files if limit is None else files[:limit]


def _reference_crops(
    fm: FaceModel, files: Sequence[Path], crop_center: Sequence[float] | None = None, crop_side: float | None = None
) -> list[torch.Tensor]:
    """Each file cut with the model's framing (or ``crop_center``/``crop_side``) and resized to ``(1, C, S, S)``."""
    center = tuple(crop_center) if crop_center is not None else fm.crop_center
    side = crop_side if crop_side is not None else fm.crop_side
    out = []
    for f in files:
        # references are converted like the training photos (a greyscale portrait becomes grey RGB)
        img = load_face(f, fm.model.channels)
        out.append(crop_square(img, crop_box(img.shape[1:], center, side), fm.size)[None])
    return out


def _restore_all(fm: FaceModel, grid: torch.Tensor, options: SamplerOptions, seed: int, batch_size: int) -> tuple[torch.Tensor, float]:
    """Restore ``(N, C, S, S)`` in batches; returns the output and the wall time in seconds."""
    t0 = time.perf_counter()
    outs = [fm.restore(grid[k : k + batch_size], make_generator(seed + k), options) for k in range(0, len(grid), batch_size)]
    return torch.cat(outs), time.perf_counter() - t0


def _scores(pred: torch.Tensor, prep: _Prepared) -> dict[str, list[float]]:
    cons = []
    for i, op in enumerate(prep.ops):
        cons.append(float("nan") if op is None else float(consistency_psnr(op, pred[i : i + 1].double(), prep.lr[i].double())[0].clamp(max=100)))
    return {"psnr": psnr(pred, prep.hr).tolist(), "ssim": ssim(pred, prep.hr).tolist(), "consistency_psnr": cons}


def _mean(values: list[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def _check_reference(path: Path) -> None:
    """Refuse a reference face from its header: unreadable, over the size limit, neither grey nor RGB."""
    height, width, channels = image_size(path)
    check_decoded_size(path, height * width)
    if channels not in (1, 3):
        raise FaceInputError(f"{path}: {channels} channels; faces are grey or RGB")


def evaluate_faces(
    model: str | Path | SRModel | FaceModel,
    folder: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    degradation_seed: int = 0,
    scale: int = 4,
    holdout: int | None = None,
    degradation: FaceDegradation | None = None,
    steps: int | None = None,
    t_start: TStart = None,
    samples: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    panels: int = 4,
    crop_center: Sequence[float] | None = None,
    crop_side: float | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    noise: MeasurementNoise | None = None,
) -> dict[str, Any]:
    """Degrade face crops blindly (seeded), restore them, and compare with bicubic upsampling of the degraded input.

    Each face is cut with the model's framing (or ``crop_center``/``crop_side``), resized to
    ``S``, degraded by ``degradation`` (default: x``scale``, one stage, area resize, training's
    blur/noise/JPEG ranges) from a generator seeded by ``(degradation_seed, crc32(file name))``,
    and restored. Scores: PSNR and SSIM against the crop; consistency ``PSNR(A(x), lr)`` under
    the known linear part ``A`` of each face's degradation (:class:`BlurDownsample`), also for the
    truth itself (the level the noise and JPEG leave); LPIPS where its weights are present.

    Args:
        steps, t_start, samples: sampling overrides (``t_start="noise"``: from pure noise; with
            ``steps=1`` the regression estimate alone).
        holdout: evaluate only the people the datamodule holds back with ``val_count=holdout``.
        panels: faces shown in ``panel.png`` (degraded, bicubic, restored, truth).
        limit: evaluate only the first ``limit`` files (after the split).
        noise: Gaussian noise added to each degraded face after the blind degradation
            (:class:`domains.base.MeasurementNoise`; the restored grid is the noisy face upsampled).

    Writes ``out_dir/metrics.json`` (with :func:`domains.base.run_record`), ``out_dir/panel.png``
    and ``out_dir/report.html``; returns the metrics.
    """
    fm = load_face_model(model, device)
    files = list_images(folder if isinstance(folder, (str, Path)) else list(folder))
    out = check_evaluation(files, out_dir, overwrite, _check_reference, ["panel.png"])
    deg = degradation or evaluation_degradation(scale)
    prep = _prepare(fm, folder, degradation_seed, deg, holdout, crop_center, crop_side, limit, noise)
    options = fm.options(steps=steps, t_start=t_start, samples=samples)
    restored, wall = _restore_all(fm, prep.grid, options, seed, batch_size)
    bicubic = prep.grid
    head = {
        "model": fm.source,
        "face_size": fm.size,
        "files_evaluated": len(prep.files),
        "degradation": deg.spec(),
        "degradation_seed": degradation_seed,
        "sampler": options.spec(),
        "seed": seed,
        **run_record(fm.model, options, wall, noise),
    }
    return _score_and_write(out, head, prep, {"restored": restored, "bicubic": bicubic}, wall, panels, overwrite)


def _score_and_write(
    out: Path, head: dict[str, Any], prep: _Prepared, preds: dict[str, torch.Tensor], wall: float, panels: int, overwrite: bool
) -> dict[str, Any]:
    """Score each of ``preds`` (``restored`` and ``bicubic`` first) against ``prep``'s truth, and write
    ``metrics.json`` (``head`` first), ``panel.png`` (``panels`` faces) and ``report.html`` in ``out``."""
    per = {name: _scores(pred, prep) for name, pred in preds.items()}
    truth_cons = _scores(prep.hr, prep)["consistency_psnr"]
    lp = lpips_status()
    if lp["available"]:  # pragma: no cover - needs weights
        for name, pred in preds.items():
            per[name]["lpips"] = _lpips(pred, prep.hr).tolist()
    methods = {m: {k: _mean(v) for k, v in sc.items()} for m, sc in per.items()}
    report: dict[str, Any] = {
        **head,
        "restore_seconds": wall,
        "methods": methods,
        "psnr_gain_db": methods["restored"]["psnr"] - methods["bicubic"]["psnr"],
        "truth_consistency_psnr": _mean(truth_cons),
        "lpips": lp,
        "files": [
            {"file": str(f), **{m: {k: v[i] for k, v in per[m].items()} for m in per}, "truth_consistency_psnr": truth_cons[i]}
            for i, f in enumerate(prep.files)
        ],
    }
    write_atomic(out / "metrics.json", lambda p: p.write_text(json.dumps(report, indent=2)), overwrite=overwrite)
    n = min(panels, len(prep.files))
    if n:
        write_panel(out / "panel.png", prep, preds["bicubic"], preds["restored"], n, overwrite)
    _write_report(out, report, n, overwrite)
    return report


def face_framing(model: SRModel) -> FaceModel:
    """A zero-shot face model (a prior told its operator) with the face size and framing its checkpoint stores.

    Unlike :func:`load_face_model` it takes any scale: the operator's, not a restoration model's 1.
    """
    state = face_state({"diffsr": model.spec})
    center = tuple(state.get("crop_center", PORTRAIT_CENTER))
    return FaceModel(
        model, int(state.get("face_size", 128)), (float(center[0]), float(center[1])), float(state.get("crop_side", PORTRAIT_SIDE)),
        model.source,
    )


def upscale_face_zero_shot(
    src: str | Path, dst: str | Path, model: SRModel, options: SamplerOptions, seed: int = 0, tiling: Tiling | None = None,
    overwrite: bool = False, progress: bool = True, precision: str = "32",
) -> Path:
    """Upscale one face crop zero-shot: the crop is the measurement ``y`` of the model's operator, the output ``A``'s grid.

    The prior was trained on ``S x S`` crops with its framing, so a crop of ``S / scale`` px a
    side framed the same way matches it best; any size goes (the network is convolutional).

    Raises:
        FaceInputError: a folder (one crop at a time), a greyscale crop for an RGB model.
    """
    from domains.images.pipeline import upscale_image

    if Path(src).is_dir():
        raise FaceInputError(f"{src}: zero-shot upscales one face crop at a time, not a folder")
    return upscale_image(src, dst, model, options, seed, tiling, overwrite, progress, precision)


def evaluate_faces_zero_shot(
    model: SRModel,
    folder: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    options: SamplerOptions,
    noise: MeasurementNoise | None = None,
    holdout: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    panels: int = 4,
    limit: int | None = None,
    overwrite: bool = False,
    tiling: Tiling | None = None,
    precision: str = "32",
    progress: bool = False,
) -> dict[str, Any]:
    """Degrade each face with the model's KNOWN operator (plus ``noise``), upscale it zero-shot, compare with bicubic.

    Each face is cut with the checkpoint's framing at ``S x S`` (as :func:`evaluate_faces`), degraded
    to ``y = A x + n`` (``A``: the operator the model was told, e.g. x4 area; ``n``: seeded
    Gaussian noise, :class:`domains.base.MeasurementNoise`), and super-resolved back to ``S x S``
    in batches (generator ``seed + k`` for the batch from face ``k``). Methods: ``restored``,
    ``bicubic`` and ``bicubic_projected`` (bicubic moved onto ``{x : A x = y}``), all clipped to
    [0, 1]; PSNR, SSIM and consistency ``PSNR(A x, y)`` (the truth's own, the noise level, as
    ``truth_consistency_psnr``). Writes ``metrics.json`` (with :func:`domains.base.run_record`),
    ``panel.png`` and ``report.html`` in ``out_dir``; returns the metrics.

    Raises:
        InputError: a face size the operator's factors do not divide.
    """
    fm = face_framing(model)
    op = model.require_operator()
    if any(fm.size % f for f in op.factors):
        raise InputError(f"{model.source}: face size {fm.size} is not divisible by the operator's factors {op.factors}")
    files = _reference_files(folder, holdout, limit)
    out = check_evaluation(files, out_dir, overwrite, _check_reference, ["panel.png"])
    noise = noise or MeasurementNoise(0.0)
    hr = torch.cat(_reference_crops(fm, files))
    lrs = [noise(op.A(h[None].double()).float()) for h in hr]
    y = torch.cat(lrs)
    device = next(model.denoiser.parameters()).device
    t0 = time.perf_counter()
    restored = torch.cat([
        upscale_any_size(model, y[k : k + batch_size], options, make_generator(seed + k, device), tiling=tiling, precision=precision)[0]
        for k in range(0, len(y), batch_size)
    ]).clamp(0, 1)
    wall = time.perf_counter() - t0
    bic_raw = upsample(y, hr.shape[2:])
    bicubic = bic_raw.clamp(0, 1)
    projected = op.project(bic_raw.double(), y.double()).float().clamp(0, 1)
    prep = _Prepared(files, hr, bicubic, lrs, [op] * len(files))
    head = {
        "model": fm.source,
        "face_size": fm.size,
        "files_evaluated": len(files),
        "degradation": {"type": "known_operator", "operator": op.spec(), **noise.spec()},
        "degradation_seed": noise.seed,
        "scale": list(op.factors),
        "operator": op.spec(),
        "sampler": options.spec(),
        "seed": seed,
        **run_record(model, options, wall, noise),
    }
    preds = {"restored": restored, "bicubic": bicubic, "bicubic_projected": projected}
    return _score_and_write(out, head, prep, preds, wall, panels, overwrite)


def write_panel(path: Path, prep: _Prepared, bicubic: torch.Tensor, restored: torch.Tensor, n: int, overwrite: bool = True) -> None:
    """PNG grid: one row per face, columns degraded (low-resolution, nearest zoom), bicubic, restored, truth."""
    s = prep.hr.shape[-1]
    gap = 4
    rows = []
    for i in range(n):
        lr = prep.lr[i]
        zoom = F.interpolate(lr, size=(s, s), mode="nearest")
        cells = [zoom[0], bicubic[i], restored[i], prep.hr[i]]
        sep = torch.ones(prep.hr.shape[1], s, gap)
        rows.append(torch.cat([c for cell in cells for c in (cell, sep)][:-1], dim=2))
    hsep = torch.ones(prep.hr.shape[1], gap, rows[0].shape[2])
    grid = torch.cat([r for row in rows for r in (row, hsep)][:-1], dim=1)
    write_image(path, grid.clamp(0, 1).numpy(), 8, overwrite=overwrite)


def _write_report(out: Path, report: dict[str, Any], panels: int, overwrite: bool) -> None:
    m = report["methods"]
    keys = [k for k in ("psnr", "ssim", "consistency_psnr", "lpips") if k in m["restored"]]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{m[name][k]:.4f}</td>" for k in keys) + "</tr>" for name in m
    )
    files = "".join(
        f"<tr><td>{html.escape(Path(f['file']).name)}</td><td>{f['restored']['psnr']:.2f}</td><td>{f['bicubic']['psnr']:.2f}</td>"
        f"<td>{f['restored']['ssim']:.4f}</td><td>{f['bicubic']['ssim']:.4f}</td></tr>"
        for f in report["files"]
    )
    lp = report["lpips"]
    lp_text = "LPIPS: computed." if lp["available"] else f"LPIPS: unavailable ({html.escape(lp['reason'])})."
    panel = '<p><img src="panel.png" alt="panel"><br>columns: degraded (low resolution, nearest zoom), bicubic, restored, truth</p>' if panels else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>diffsr face evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #999;padding:4px 8px}}
img{{image-rendering:pixelated}}</style></head><body>
<h1>diffsr face restoration: {report['files_evaluated']} faces at {report['face_size']} px</h1>
<p>model {html.escape(report['model'])}; degradation seed {report['degradation_seed']}; degradation {html.escape(json.dumps(report['degradation']))}</p>
<p>sampler {html.escape(json.dumps(report['sampler']))}; seed {report['seed']}; restoring took {report['restore_seconds']:.1f} s</p>
<table><tr><th>method</th>{''.join(f'<th>{k}</th>' for k in keys)}</tr>{rows}</table>
<p>PSNR gain over bicubic: {report['psnr_gain_db']:+.2f} dB. Consistency is PSNR(A(x), lr) under the known linear part A
of each face's degradation; the truth itself scores {report['truth_consistency_psnr']:.2f} dB
(the noise, and JPEG, it cannot explain). {lp_text}</p>
{panel}
<h2>per face</h2><table><tr><th>file</th><th>PSNR restored</th><th>PSNR bicubic</th><th>SSIM restored</th><th>SSIM bicubic</th></tr>{files}</table>
</body></html>"""
    write_atomic(out / "report.html", lambda p: p.write_text(page), overwrite=overwrite)


def compare_starts(
    model: str | Path | SRModel | FaceModel,
    folder: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    degradation_seed: int = 0,
    scale: int = 4,
    holdout: int | None = None,
    nfe: Sequence[int] = (1, 2, 4, 8),
    t_starts: Sequence[int] = (100, 200, 400),
    full_steps: int = 50,
    seed: int = 0,
    batch_size: int = 8,
    limit: int | None = None,
    overwrite: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Few steps from a regression estimate (DifFace) against sampling from noise, at equal network evaluations.

    For each budget ``k`` in ``nfe``: (a) ``k`` DDIM steps from pure noise; (b) for each ``t_start``
    in ``t_starts``, the regression estimate (one evaluation at ``T``) noised to ``t_start``, then
    ``k - 1`` DDIM steps; ``k = 1`` is the regression estimate itself. All cost ``k`` network
    evaluations, so the same wall time (each run's wall time is measured and reported);
    ``full_steps`` from noise is the reference.

    Writes ``out_dir/compare.json`` and ``out_dir/compare.md`` (a table) and returns the report.
    """
    fm = load_face_model(model, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prep = _prepare(fm, folder, degradation_seed, evaluation_degradation(scale), holdout, None, None, limit)
    runs: list[dict[str, Any]] = []

    def run(name: str, k: int, opts: SamplerOptions) -> None:
        pred, wall = _restore_all(fm, prep.grid, opts, seed, batch_size)
        sc = _scores(pred, prep)
        runs.append({"name": name, "nfe": k, "seconds": wall, "psnr": _mean(sc["psnr"]), "ssim": _mean(sc["ssim"]),
                     "options": opts.spec()})

    base = fm.options(samples=1, sampler="ddim", eta=0.0)
    for k in nfe:
        if k == 1:  # one step from pure noise at T is the regression estimate E[x0 | y]
            run("regression estimate (1 step from noise)", 1, replace(base, steps=1, t_start=None))
            continue
        run(f"noise, {k} steps", k, replace(base, steps=k, t_start=None))
        for t_start in t_starts:
            run(f"regression + {k - 1} steps from t={t_start}", k, replace(base, steps=k, t_start=t_start, start="regression"))
    run(f"noise, {full_steps} steps (reference)", full_steps, replace(base, steps=full_steps, t_start=None))
    bic = _scores(prep.grid, prep)
    report = {"model": fm.source, "files_evaluated": len(prep.files), "degradation_seed": degradation_seed, "scale": scale,
              "bicubic": {"psnr": _mean(bic["psnr"]), "ssim": _mean(bic["ssim"])}, "runs": runs}
    write_atomic(out / "compare.json", lambda p: p.write_text(json.dumps(report, indent=2)), overwrite=overwrite)
    lines = ["| sampling | network evaluations | seconds | PSNR (dB) | SSIM |", "|---|---|---|---|---|",
             f"| bicubic of the degraded input | 0 | 0 | {report['bicubic']['psnr']:.2f} | {report['bicubic']['ssim']:.4f} |"]
    lines += [f"| {r['name']} | {r['nfe']} | {r['seconds']:.1f} | {r['psnr']:.2f} | {r['ssim']:.4f} |" for r in runs]
    write_atomic(out / "compare.md", lambda p: p.write_text("\n".join(lines) + "\n"), overwrite=overwrite)
    return report
