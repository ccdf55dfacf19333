"""Orthonormal discrete wavelet packet transform in 1, 2 and 3 spatial dimensions, in PyTorch.

Mallat's fast wavelet transform with periodic extension ("periodization", as PyWavelets'
``mode="periodization"``): for an orthogonal wavelet and an even length the analysis matrix is
orthogonal, so the transform keeps energy exactly and its transpose is its inverse. Every level
splits every band along every spatial axis (the wavelet *packet* transform), so all subbands of
``levels`` levels have the same size and stack as channels: ``(B, C, *S)`` becomes
``(B, C * 2**(d * levels), *S / 2**levels)``. Channel ``c * 2**(d * levels)`` is the all-low band
of image channel ``c``; the band index's bits say low (0) or high (1) per axis and level, the first
level's bits being the most significant.

Inputs whose sizes are not multiples of ``2**levels`` are zero-padded at the far end of each axis
first: zero-padding is an isometric embedding, so energy is still kept and
``idwt(dwt(x), shape=x.shape[2:])`` returns ``x`` exactly (to float rounding).

Filters come from PyWavelets (any orthogonal family: ``haar``, ``dbN``, ``symN``, ``coifN``);
the transform itself is differentiable torch code that runs on any device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=32)
def wavelet_filters(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Low- and high-pass filters ``(h, g)`` of an orthogonal wavelet (PyWavelets' reconstruction filters).

    Raises:
        ValueError: unknown or non-orthogonal (e.g. biorthogonal) wavelet.
    """
    import pywt

    try:
        w = pywt.Wavelet(name)
    except ValueError:
        raise ValueError(f"unknown wavelet {name!r} (try haar, db2, db4, sym4, coif1)") from None
    if not w.orthogonal:
        raise ValueError(f"wavelet {name!r} is not orthogonal: the transform would not keep energy")
    return tuple(float(v) for v in w.rec_lo), tuple(float(v) for v in w.rec_hi)


def _bank(name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    h, g = wavelet_filters(name)
    return torch.tensor([h, g], device=device, dtype=dtype).unsqueeze(1)  # (2, 1, L)


def _analysis_1d(x: torch.Tensor, axis: int, bank: torch.Tensor) -> torch.Tensor:
    """One level along ``axis`` (>= 2) of ``(B, C, *S)``: ``(B, 2C, ...)`` with the axis halved (even length)."""
    n = x.shape[axis]
    length = bank.shape[-1]
    moved = x.movedim(axis, -1)
    lead = moved.shape[:-1]
    flat = moved.reshape(-1, 1, n)
    idx = torch.arange(n + length - 2, device=x.device) % n  # periodic extension
    out = F.conv1d(flat[..., idx], bank, stride=2)  # (N, 2, n/2): a[k] = sum_j h[j] x[2k + j]
    # (B, C, *others, 2, n/2) -> halved axis back in place, band axis next to the channels
    out = out.reshape(*lead, 2, n // 2).movedim(-1, axis).movedim(-1, 2)
    return out.reshape(x.shape[0], x.shape[1] * 2, *out.shape[3:])


def _synthesis_1d(z: torch.Tensor, axis: int, bank: torch.Tensor) -> torch.Tensor:
    """Inverse (= transpose) of :func:`_analysis_1d`."""
    b, c2 = z.shape[:2]
    m = z.shape[axis]
    n, length = 2 * m, bank.shape[-1]
    # (B, C, 2, *S') -> (B, C, *others, 2, m)
    bands = z.reshape(b, c2 // 2, 2, *z.shape[2:]).movedim(2, -1).movedim(axis, -1)
    lead = bands.shape[:-2]
    full = F.conv_transpose1d(bands.reshape(-1, 2, m), bank, stride=2)  # (N, 1, n + L - 2)
    idx = torch.arange(n + length - 2, device=z.device) % n
    x = torch.zeros(full.shape[0], 1, n, device=z.device, dtype=z.dtype).index_add_(-1, idx, full)
    return x.reshape(*lead, n).movedim(-1, axis)


def padded_shape(shape: Sequence[int], levels: int) -> tuple[int, ...]:
    """``shape`` rounded up to multiples of ``2**levels``."""
    m = 2**levels
    return tuple(-(-int(n) // m) * m for n in shape)


def dwt(x: torch.Tensor, wavelet: str = "haar", levels: int = 1) -> torch.Tensor:
    """Orthonormal wavelet packet transform of ``(B, C, *S)`` (1 to 3 spatial axes).

    Returns:
        ``(B, C * 2**(d * levels), *ceil(S / 2**levels))``.
    """
    if levels < 1:
        raise ValueError("levels must be >= 1")
    nd = x.ndim - 2
    target = padded_shape(x.shape[2:], levels)
    pads: list[int] = []
    for n, t in reversed(list(zip(x.shape[2:], target))):
        pads += [0, t - n]
    z = F.pad(x, pads) if any(pads) else x
    bank = _bank(wavelet, x.device, x.dtype)
    for _ in range(levels):
        for axis in range(2, 2 + nd):
            z = _analysis_1d(z, axis, bank)
    return z


def idwt(z: torch.Tensor, wavelet: str = "haar", levels: int = 1, shape: Sequence[int] | None = None) -> torch.Tensor:
    """Inverse of :func:`dwt`: ``(B, C * 2**(d * levels), *S')`` to ``(B, C, *shape)``.

    Args:
        shape: the image's spatial shape before padding (default: ``S' * 2**levels``).
    """
    nd = z.ndim - 2
    bank = _bank(wavelet, z.device, z.dtype)
    x = z
    for _ in range(levels):
        for axis in reversed(range(2, 2 + nd)):
            x = _synthesis_1d(x, axis, bank)
    if shape is not None:
        x = x[(slice(None), slice(None)) + tuple(slice(0, int(n)) for n in shape)]
    return x


def bands(spatial_dims: int, levels: int) -> int:
    """Subbands per image channel: ``2**(spatial_dims * levels)``."""
    return 2 ** (spatial_dims * levels)


def lowpass_gain(spatial_dims: int, levels: int) -> float:
    """The all-low band of a constant image ``v`` is ``v * lowpass_gain`` (``sqrt(2)`` per axis and level)."""
    return math.sqrt(2.0) ** (spatial_dims * levels)
