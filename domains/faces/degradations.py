"""Blind face degradation (GFPGAN / Real-ESRGAN family): blur, random downsampling, noise, JPEG, optionally twice.

One :class:`FaceDegradation` object makes the training pairs of the face datamodule, the
held-back evaluation inputs and the ``degrade`` output, so the three cannot drift apart. Every
random draw comes from the generator the caller passes, so the same seed gives the same
degraded image on any machine.

Order of one stage (Wang et al., Real-ESRGAN, 2021; GFPGAN, 2021):

1. blur with a Gaussian kernel, isotropic or anisotropic (independent ``sigma_y``, ``sigma_x``;
   axis-aligned, so the blur stays a separable linear map with an exact adjoint), half-sample
   symmetric boundaries;
2. resize to ``round(H / f)`` x ``round(W / f)`` for a random factor ``f`` in ``scale_range``
   (``area``, antialiased ``bilinear`` or antialiased ``bicubic``, drawn per image);
3. additive Gaussian noise, colour or grey (the same draw on every channel);
4. JPEG compression at a random quality (Pillow, in memory, 8-bit).

The second order repeats the stage with its own ranges: the first stage goes to an
intermediate size ``H / f**u`` (``u`` uniform in [0.3, 0.7]) and the second to the final size.

Output grid: the restoration model is conditional diffusion on the degraded input *interpolated
to the output grid* (SR3 conditioning on a bicubic upsampling). The degradation therefore returns
both the low-resolution image (``lr``, its natural size) and the same image upsampled by
:func:`toolkit.utils.upsample` (bicubic) back to the input size (``grid``); ``output`` picks what
``__call__`` returns. The inference pipeline upsamples a real low-resolution face the same way.

The known part: with an integer factor, the ``area`` resize and one stage, the linear part of
the degradation (blur, then area downsampling) is exactly :class:`BlurDownsample`, a separable
toolkit :class:`~toolkit.operators.Operator` with a true adjoint and pseudo-inverse; the noise
and the JPEG step are the unknown part. :meth:`DegradationParams.known_operator` returns it, and
consistency is scored as ``PSNR(A(restored), lr)``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.operators import SeparableOperator
from toolkit.utils import upsample

ResizeMode = Literal["area", "bilinear", "bicubic"]
Output = Literal["grid", "lr"]
GeneratorLike = np.random.Generator | torch.Generator | int


def as_numpy_generator(generator: GeneratorLike) -> np.random.Generator:
    """A numpy ``Generator`` from a seed, a numpy generator (returned as is) or a torch generator.

    A torch generator is advanced by one draw, which seeds the numpy generator, so a seeded
    torch generator still gives a reproducible sequence.
    """
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        return np.random.default_rng(seed)
    if isinstance(generator, (int, np.integer)):
        return np.random.default_rng(int(generator))
    raise TypeError(f"expected a seed, a numpy Generator or a torch Generator, got {type(generator).__name__}")


#: Gaussian kernels reach ``truncate * sigma`` samples
TRUNCATE = 4.0


def gaussian_blur_matrix(n: int, sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """``(n, n)`` float64 matrix of a 1D Gaussian blur with half-sample symmetric boundaries.

    Row ``i`` holds the weights ``exp(-(j - i)^2 / (2 sigma^2))`` for ``|j - i| <= truncate *
    sigma``, taps outside ``[0, n)`` mirrored back in, normalised to sum to one. ``sigma <= 0``
    gives the identity.
    """
    if sigma <= 0:
        return np.eye(n)
    radius = max(1, math.ceil(truncate * sigma))
    offsets = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (offsets / sigma) ** 2)
    rows = np.repeat(np.arange(n), offsets.size)
    cols = (np.arange(n)[:, None] + offsets[None, :]).ravel()
    period = 2 * n
    cols %= period
    cols = np.where(cols < n, cols, period - 1 - cols)
    m = np.zeros((n, n))
    np.add.at(m, (rows, cols), np.tile(w, n))
    return m / m.sum(axis=1, keepdims=True)


class BlurDownsample(SeparableOperator):
    """Gaussian blur (axis-aligned, mirrored boundaries) then area downsampling by an integer factor.

    The linear part of one stage of :class:`FaceDegradation` with the ``area`` resize: per axis
    ``M_i = Area_f @ Blur_sigma``, so ``A``, ``A^T`` and ``A^+`` are exact (see
    :class:`toolkit.operators.SeparableOperator`). With factor 1 it is a pure blur.

    Args:
        factors: integer factor per spatial axis (or one for all).
        sigma: blur standard deviation in high-resolution samples, per axis or one for all
            (0: no blur along that axis).
        spatial_dims: number of spatial axes when ``factors`` is an int.
    """

    def __init__(self, factors: int | Sequence[int] = 4, sigma: float | Sequence[float] = 1.0, spatial_dims: int = 2) -> None:
        if isinstance(factors, int):
            factors = (factors,) * spatial_dims
        self.factors = tuple(int(f) for f in factors)
        if min(self.factors) < 1:
            raise ValueError(f"factors must be >= 1, got {self.factors}")
        sig = (float(sigma),) * len(self.factors) if isinstance(sigma, (int, float)) else tuple(float(s) for s in sigma)
        if len(sig) != len(self.factors):
            raise ValueError("one sigma per spatial axis is needed")
        if min(sig) < 0:
            raise ValueError(f"sigma must be >= 0, got {sig}")
        self.sigma = sig

    def axis_matrix(self, axis: int, n: int) -> torch.Tensor | None:
        f, s = self.factors[axis], self.sigma[axis]
        if f == 1 and s <= 0:
            return None
        m = gaussian_blur_matrix(n, s)
        if f > 1:
            m = m[: n // f * f].reshape(n // f, f, n).mean(axis=1)
        return torch.from_numpy(m)

    @property
    def halo(self) -> int:
        """The blur's radius (taps of :func:`gaussian_blur_matrix`): the area step stays inside each block."""
        return max((max(1, math.ceil(TRUNCATE * s)) for s in self.sigma if s > 0), default=0)

    def spec(self) -> dict[str, Any]:
        """Plain data; the type ``blur_area`` is declared in the ``diffsr.operators`` entry points, so checkpoints load it."""
        return {"type": "blur_area", "factors": list(self.factors), "sigma": list(self.sigma)}


@dataclass(frozen=True)
class StageParams:
    """The draws of one degradation stage (sizes in pixels, noise in data units, JPEG quality 1-100)."""

    sigma: tuple[float, float]
    size: tuple[int, int]
    resize_mode: str
    noise_sigma: float
    grey_noise: bool
    jpeg_quality: int | None


@dataclass(frozen=True)
class DegradationParams:
    """Everything drawn for one image: the total factor and one or two stages."""

    hr_size: tuple[int, int]
    scale: float
    stages: tuple[StageParams, ...]

    @property
    def lr_size(self) -> tuple[int, int]:
        return self.stages[-1].size

    def known_operator(self) -> BlurDownsample | None:
        """The linear part as a toolkit operator, where it is exactly one (else ``None``).

        That is: one stage, the ``area`` resize and an integer factor that divides the size.
        """
        if len(self.stages) != 1 or self.stages[0].resize_mode != "area":
            return None
        f = round(self.scale)
        if abs(self.scale - f) > 1e-9 or any(n % f for n in self.hr_size):
            return None
        return BlurDownsample(f, self.stages[0].sigma)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Degraded:
    """A degraded batch: ``lr`` per item (sizes may differ), ``grid`` ``(B, C, H, W)``, the draws."""

    lr: list[torch.Tensor]
    grid: torch.Tensor
    params: list[DegradationParams]


class FaceDegradation:
    """Blind degradation of face crops, seeded and reproducible (GFPGAN / Real-ESRGAN recipe).

    Call it on a ``(B, C, H, W)`` batch in [0, 1] with a seed or generator; each item gets its own
    draws, taken in order from that one generator.

    Args:
        blur_sigma: range of the blur standard deviation in high-resolution pixels.
        isotropic_prob: probability of an isotropic kernel (else ``sigma_y``, ``sigma_x`` drawn apart).
        scale_range: range of the total downsampling factor ``f`` (uniform; ``(4, 4)`` fixes x4).
        resize_modes: resize kernels to draw from (``area``, ``bilinear``, ``bicubic``).
        noise_range: range of the Gaussian noise standard deviation in data units ([0, 1] images).
        grey_noise_prob: probability that the noise is the same on every channel.
        jpeg_range: range of the JPEG quality (inclusive).
        jpeg_prob: probability of the JPEG step.
        second_order_prob: probability of a second stage (Real-ESRGAN's high-order model).
        blur_sigma2, noise_range2, jpeg_range2: ranges of the second stage.
        output: what ``__call__`` returns: the input upsampled back to the input size (``grid``,
            what the model is conditioned on) or the low-resolution image (``lr``).
    """

    def __init__(
        self,
        blur_sigma: tuple[float, float] = (0.2, 3.0),
        isotropic_prob: float = 0.5,
        scale_range: tuple[float, float] = (1.0, 8.0),
        resize_modes: Sequence[ResizeMode] = ("area", "bilinear", "bicubic"),
        noise_range: tuple[float, float] = (0.0, 0.05),
        grey_noise_prob: float = 0.4,
        jpeg_range: tuple[int, int] = (40, 95),
        jpeg_prob: float = 1.0,
        second_order_prob: float = 0.0,
        blur_sigma2: tuple[float, float] = (0.2, 1.5),
        noise_range2: tuple[float, float] = (0.0, 0.03),
        jpeg_range2: tuple[int, int] = (60, 95),
        output: Output = "grid",
    ) -> None:
        for name, (lo, hi) in {
            "blur_sigma": blur_sigma, "scale_range": scale_range, "noise_range": noise_range, "jpeg_range": jpeg_range,
            "blur_sigma2": blur_sigma2, "noise_range2": noise_range2, "jpeg_range2": jpeg_range2,
        }.items():
            if lo > hi or lo < 0:
                raise ValueError(f"{name} must be an increasing pair of non-negative numbers, got ({lo}, {hi})")
        if scale_range[0] < 1 or scale_range[1] > 16:
            raise ValueError(f"scale_range must lie in [1, 16], got {scale_range}")
        for lo, hi in (jpeg_range, jpeg_range2):
            if not 1 <= lo <= hi <= 100:
                raise ValueError(f"JPEG quality range must lie in [1, 100], got ({lo}, {hi})")
        modes = tuple(resize_modes)
        if not modes or any(m not in ("area", "bilinear", "bicubic") for m in modes):
            raise ValueError(f"resize_modes must be a non-empty subset of area, bilinear, bicubic, got {modes}")
        for name, p in {"isotropic_prob": isotropic_prob, "grey_noise_prob": grey_noise_prob, "jpeg_prob": jpeg_prob,
                        "second_order_prob": second_order_prob}.items():
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability, got {p}")
        if output not in ("grid", "lr"):
            raise ValueError(f"output must be 'grid' or 'lr', got {output!r}")
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.isotropic_prob = float(isotropic_prob)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.resize_modes: tuple[str, ...] = modes
        self.noise_range = (float(noise_range[0]), float(noise_range[1]))
        self.grey_noise_prob = float(grey_noise_prob)
        self.jpeg_range = (int(jpeg_range[0]), int(jpeg_range[1]))
        self.jpeg_prob = float(jpeg_prob)
        self.second_order_prob = float(second_order_prob)
        self.blur_sigma2 = (float(blur_sigma2[0]), float(blur_sigma2[1]))
        self.noise_range2 = (float(noise_range2[0]), float(noise_range2[1]))
        self.jpeg_range2 = (int(jpeg_range2[0]), int(jpeg_range2[1]))
        self.output: Output = output

    # --- draws -----------------------------------------------------------------------------
    def _stage(
        self,
        rng: np.random.Generator,
        size: tuple[int, int],
        blur: tuple[float, float],
        noise: tuple[float, float],
        jpeg: tuple[int, int],
    ) -> StageParams:
        if rng.random() < self.isotropic_prob:
            s = float(rng.uniform(*blur))
            sigma = (s, s)
        else:
            sigma = (float(rng.uniform(*blur)), float(rng.uniform(*blur)))
        mode = self.resize_modes[int(rng.integers(len(self.resize_modes)))]
        noise_sigma = float(rng.uniform(*noise))
        grey = bool(rng.random() < self.grey_noise_prob)
        quality = int(rng.integers(jpeg[0], jpeg[1] + 1)) if rng.random() < self.jpeg_prob else None
        return StageParams(sigma, size, mode, noise_sigma, grey, quality)

    def sample_params(self, hr_size: Sequence[int], generator: GeneratorLike) -> DegradationParams:
        """Draw the degradation of one ``hr_size`` image (``(H, W)``)."""
        rng = as_numpy_generator(generator)
        h, w = (int(n) for n in hr_size)
        f = float(rng.uniform(*self.scale_range))
        final = (max(1, round(h / f)), max(1, round(w / f)))
        if rng.random() < self.second_order_prob:
            f1 = f ** float(rng.uniform(0.3, 0.7))
            mid = (max(final[0], round(h / f1)), max(final[1], round(w / f1)))
            stages = (
                self._stage(rng, mid, self.blur_sigma, self.noise_range, self.jpeg_range),
                self._stage(rng, final, self.blur_sigma2, self.noise_range2, self.jpeg_range2),
            )
        else:
            stages = (self._stage(rng, final, self.blur_sigma, self.noise_range, self.jpeg_range),)
        return DegradationParams((h, w), f, stages)

    # --- application -----------------------------------------------------------------------
    @staticmethod
    def apply_stage(x: torch.Tensor, stage: StageParams, rng: np.random.Generator) -> torch.Tensor:
        """One stage on a ``(1, C, h, w)`` image; the noise is drawn from ``rng``."""
        x = BlurDownsample(1, stage.sigma).A(x.double())
        if tuple(x.shape[2:]) != stage.size:
            kw: dict[str, Any] = {} if stage.resize_mode == "area" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=stage.size, mode=stage.resize_mode, **kw)
        if stage.noise_sigma > 0:
            c = 1 if stage.grey_noise else x.shape[1]
            n = rng.standard_normal((1, c, *stage.size))
            x = x + stage.noise_sigma * torch.from_numpy(n).to(x.dtype)
        x = x.clamp(0, 1)
        if stage.jpeg_quality is not None:
            x = jpeg(x, stage.jpeg_quality)
        return x.float()

    def degrade(self, x: torch.Tensor, generator: GeneratorLike) -> Degraded:
        """Degrade each item of ``x`` ``(B, C, H, W)`` in [0, 1] with its own draws from ``generator``.

        Returns:
            The low-resolution images (one ``(C, h, w)`` per item), the same upsampled back to
            ``(B, C, H, W)`` (bicubic, clamped to [0, 1]) and the draws.
        """
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[1] not in (1, 3):
            raise ValueError(f"JPEG needs 1 or 3 channels, got {x.shape[1]}")
        rng = as_numpy_generator(generator)
        lrs, grids, params = [], [], []
        for item in x:
            p = self.sample_params(item.shape[1:], rng)
            y = item[None]
            for stage in p.stages:
                y = self.apply_stage(y, stage, rng)
            lrs.append(y[0].to(x.dtype))
            grids.append(upsample(y, item.shape[1:]).clamp(0, 1)[0].to(x.dtype))
            params.append(p)
        return Degraded(lrs, torch.stack(grids), params)

    def __call__(self, x: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
        """The degraded batch: ``(B, C, H, W)`` on the input grid, or the low-resolution ``(B, C, h, w)``
        with ``output="lr"`` (every item must then come out the same size)."""
        d = self.degrade(x, generator)
        if self.output == "grid":
            return d.grid
        sizes = {tuple(t.shape) for t in d.lr}
        if len(sizes) > 1:
            raise ValueError(f"items came out at different sizes {sorted(sizes)}; use output='grid' or a fixed scale")
        return torch.stack(d.lr)

    def spec(self) -> dict[str, Any]:
        """The options as plain data (for reports)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress ``(1, C, h, w)`` in [0, 1] (C = 1 or 3) at ``quality`` with Pillow, in memory; 4:2:0 chroma."""
    from PIL import Image

    arr = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        back = np.asarray(im.convert("L" if arr.shape[2] == 1 else "RGB"))
    if back.ndim == 2:
        back = back[:, :, None]
    return torch.from_numpy(back.astype(np.float64) / 255.0).permute(2, 0, 1)[None].to(x.dtype)


def evaluation_degradation(scale: int = 4, **overrides: Any) -> FaceDegradation:
    """The fixed-factor, one-stage degradation of the held-back evaluation: x``scale`` with ``area``
    resizing (so the linear part is exactly :class:`BlurDownsample`), training's blur, noise and
    JPEG ranges otherwise."""
    kw: dict[str, Any] = {"scale_range": (float(scale), float(scale)), "resize_modes": ("area",), "second_order_prob": 0.0}
    kw.update(overrides)
    return FaceDegradation(**kw)
