"""Per-channel affine intensity normalisation stored in checkpoints and undone on output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Normalization:
    """``x_norm = (x - offset) / scale`` per channel, for data in physical or [0, 1] units.

    The default maps [0, 1] images to [-1, 1].

    Args:
        offset: one value per channel, or one for all channels.
        scale: one value per channel, or one for all channels (must be > 0).
    """

    def __init__(self, offset: float | Sequence[float] = 0.5, scale: float | Sequence[float] = 0.5) -> None:
        self.offset = [float(offset)] if isinstance(offset, (int, float)) else [float(v) for v in offset]
        self.scale = [float(scale)] if isinstance(scale, (int, float)) else [float(v) for v in scale]
        if min(self.scale) <= 0:
            raise ValueError("normalisation scale must be > 0")

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        off, sc = self.offset, self.scale
        if len(off) not in (1, c) or len(sc) not in (1, c):
            raise ValueError(f"normalisation has {max(len(off), len(sc))} channels, data has {c}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        o = torch.tensor(off, dtype=x.dtype, device=x.device).reshape(shape)
        s = torch.tensor(sc, dtype=x.dtype, device=x.device).reshape(shape)
        return o, s

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        o, s = self._params(x)
        return (x - o) / s

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        o, s = self._params(x)
        return x * s + o

    def spec(self) -> dict[str, Any]:
        return {"offset": list(self.offset), "scale": list(self.scale)}
