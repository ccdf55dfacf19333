"""State spaces: where diffusion runs. ``encode(x, y) -> z`` and ``decode(z, y) -> x``.

A space may hold its state on a coarser grid than the image (``stride`` image pixels per state
pixel along every axis, as the wavelet and latent spaces do); it then also says what the network
is conditioned on (``condition``: the low-resolution input brought onto the state's grid) and
``decode`` takes the image's spatial shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from toolkit import wavelets
from toolkit.utils import build_from_spec, upsample


class StateSpace:
    """Maps a high-resolution image ``x`` (given its low-resolution input ``y``) to a state ``z`` and back."""

    #: ``decode`` is affine in ``z`` for fixed ``y``, so data consistency can be exact in this space
    linear: bool = True
    #: ``encode``/``decode`` read the low-resolution input (a prior's space must not: it has none)
    uses_input: bool = True
    #: image pixels per state pixel along every spatial axis
    stride: int = 1

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor, y: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        """Image ``(B, C, *shape)`` from state ``z`` (``shape`` defaults to ``z``'s grid times ``stride``)."""
        raise NotImplementedError

    def state_channels(self, channels: int, spatial_dims: int) -> int:
        """Channels of ``z`` for an image with ``channels`` channels and ``spatial_dims`` axes."""
        return channels

    def cond_channels(self, channels: int, spatial_dims: int) -> int:
        """Channels of :meth:`condition` for an image with ``channels`` channels and ``spatial_dims`` axes."""
        return channels

    def state_shape(self, channels: int, hr_shape: Sequence[int]) -> tuple[int, ...]:
        """``(C_z, *S_z)`` of the state of an image with ``channels`` channels and spatial ``hr_shape``."""
        return (self.state_channels(channels, len(hr_shape)), *(-(-int(n) // self.stride) for n in hr_shape))

    def condition(self, y: torch.Tensor, hr_shape: Sequence[int]) -> torch.Tensor:
        """What the network sees of ``y``, on the state's grid (SR3: ``y`` interpolated onto the output grid)."""
        return upsample(y, hr_shape)

    def _round_trip_error(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x, y), y, x.shape[2:]) - x

    def reconstruction_error(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Max absolute error of ``decode(encode(x, y), y)`` against ``x``."""
        return float(self._round_trip_error(x, y).abs().max())

    def reconstruction_psnr(self, x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> float:
        """PSNR (dB) of ``decode(encode(x, y), y)`` against ``x`` (normalised units span ``data_range``)."""
        mse = float(self._round_trip_error(x, y).double().pow(2).mean())
        return float("inf") if mse == 0 else 10 * math.log10(data_range**2 / mse)

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError


class PixelSpace(StateSpace):
    """Diffusion on the (normalised) pixels themselves: ``z = x`` (SR3)."""

    uses_input = False

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor, y: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        return z

    def spec(self) -> dict[str, Any]:
        return {"type": "pixel"}


class ResidualSpace(StateSpace):
    """Diffusion on the residual over interpolation: ``z = (x - up(y)) / residual_scale``.

    ``up`` is bicubic (2D) or trilinear (3D) interpolation, as in SR3's residual variant and
    ResShift. The residual is small, so ``residual_scale`` (< 1) brings it near unit variance.

    Args:
        residual_scale: divisor applied to the residual.
    """

    def __init__(self, residual_scale: float = 1.0) -> None:
        if residual_scale <= 0:
            raise ValueError("residual_scale must be > 0")
        self.residual_scale = float(residual_scale)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - upsample(y, x.shape[2:])) / self.residual_scale

    def decode(self, z: torch.Tensor, y: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        return z * self.residual_scale + upsample(y, z.shape[2:])

    def spec(self) -> dict[str, Any]:
        return {"type": "residual", "residual_scale": self.residual_scale}


WaveletMode = Literal["full", "high", "residual"]


class WaveletSpace(StateSpace):
    """Diffusion over an orthonormal wavelet packet transform, subbands as channels (WaveDM, DiWa).

    The state lives on a grid ``2**levels`` times coarser than the image, with
    ``C * 2**(d * levels)`` channels (:mod:`toolkit.wavelets`), so a network step costs about
    ``4**levels`` (2D) or ``8**levels`` (3D) times less than in pixel space at the same width.

    Modes:
        * ``full``: ``z = W x``. With white Gaussian noise and an orthonormal ``W`` this is pixel
          diffusion seen through a lossless space-to-depth change of basis: the same noise, the
          same loss (``||W a - W b|| = ||a - b||``), a cheaper network.
        * ``high``: ``z`` = the high-frequency subbands of ``W x`` only (divided by ``scale``);
          the all-low band is taken from the input: ``2**(d * levels / 2) * y`` when ``y`` is on
          the low band's grid (exact for Haar and area downsampling by ``2**levels``, whose
          low band *is* the scaled block mean, so ``A(decode(z)) = y`` for any ``z``), else the
          low band of ``W up(y)``.
        * ``residual``: ``z = W (x - up(y)) / scale`` (ResShift's residual, in wavelets).

    The network is conditioned on ``W up(y)``: every subband of the interpolated input.

    Args:
        wavelet: an orthogonal PyWavelets family member (``haar``, ``db2``, ``db4``, ``sym4``...).
        levels: packet levels (state grid ``2**levels`` times coarser).
        mode: see above.
        scale: divisor of the high bands (``high``) or of the residual's transform (``residual``).
    """

    def __init__(self, wavelet: str = "haar", levels: int = 1, mode: WaveletMode = "full", scale: float = 1.0) -> None:
        wavelets.wavelet_filters(wavelet)  # validates the name
        if levels < 1:
            raise ValueError("levels must be >= 1")
        if mode not in ("full", "high", "residual"):
            raise ValueError(f"unknown wavelet mode {mode!r}")
        if scale <= 0:
            raise ValueError("scale must be > 0")
        self.wavelet, self.levels, self.mode, self.scale = wavelet, int(levels), mode, float(scale)
        self.stride = 2**self.levels

    @property
    def uses_input(self) -> bool:  # type: ignore[override]
        return self.mode != "full"

    def state_channels(self, channels: int, spatial_dims: int) -> int:
        return self.cond_channels(channels, spatial_dims) - (channels if self.mode == "high" else 0)

    def cond_channels(self, channels: int, spatial_dims: int) -> int:
        return channels * wavelets.bands(spatial_dims, self.levels)

    def _split(self, w: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All-low bands ``(B, C, ...)`` and the rest ``(B, C * (n - 1), ...)`` of a transform."""
        g = w.reshape(w.shape[0], channels, -1, *w.shape[2:])
        return g[:, :, 0], g[:, :, 1:].reshape(w.shape[0], -1, *w.shape[2:])

    def _low_from_input(self, y: torch.Tensor, hr_shape: Sequence[int]) -> torch.Tensor:
        grid = tuple(-(-int(n) // self.stride) for n in hr_shape)
        if tuple(y.shape[2:]) == grid and all(int(n) % self.stride == 0 for n in hr_shape):
            return y * wavelets.lowpass_gain(y.ndim - 2, self.levels)
        return self._split(wavelets.dwt(upsample(y, hr_shape), self.wavelet, self.levels), y.shape[1])[0]

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "full":
            return wavelets.dwt(x, self.wavelet, self.levels)
        if self.mode == "residual":
            return wavelets.dwt(x - upsample(y, x.shape[2:]), self.wavelet, self.levels) / self.scale
        return self._split(wavelets.dwt(x, self.wavelet, self.levels), x.shape[1])[1] / self.scale

    def decode(self, z: torch.Tensor, y: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        shape = tuple(int(n) for n in shape) if shape is not None else tuple(n * self.stride for n in z.shape[2:])
        if self.mode == "full":
            return wavelets.idwt(z, self.wavelet, self.levels, shape)
        if self.mode == "residual":
            return wavelets.idwt(z * self.scale, self.wavelet, self.levels, shape) + upsample(y, shape)
        c = y.shape[1]
        low = self._low_from_input(y, shape)
        high = (z * self.scale).reshape(z.shape[0], c, -1, *z.shape[2:])
        w = torch.cat([low.unsqueeze(2), high], dim=2).reshape(z.shape[0], -1, *z.shape[2:])
        return wavelets.idwt(w, self.wavelet, self.levels, shape)

    def condition(self, y: torch.Tensor, hr_shape: Sequence[int]) -> torch.Tensor:
        return wavelets.dwt(upsample(y, hr_shape), self.wavelet, self.levels)

    def spec(self) -> dict[str, Any]:
        return {"type": "wavelet", "wavelet": self.wavelet, "levels": self.levels, "mode": self.mode, "scale": self.scale}


_SPACES: dict[str, type[StateSpace]] = {"pixel": PixelSpace, "residual": ResidualSpace, "wavelet": WaveletSpace}


def register_space(name: str, cls: type[StateSpace]) -> None:
    """Allow checkpoints to rebuild state space ``cls`` from a spec whose ``type`` is ``name``."""
    _SPACES[name] = cls


def space_from_spec(spec: dict[str, Any]) -> StateSpace:
    """Rebuild a state space from :meth:`StateSpace.spec` data (only known, registered types)."""
    if spec.get("type") == "latent" and "latent" not in _SPACES:
        import toolkit.latent  # noqa: F401 - the latent space (MONAI autoencoders) loads on demand
    return build_from_spec(_SPACES, spec, "state space", group="diffsr.spaces")
