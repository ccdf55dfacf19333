"""State spaces: where diffusion runs. ``encode(x, y) -> z`` and ``decode(z, y) -> x``, exact inverses."""

from __future__ import annotations

from typing import Any

import torch

from toolkit.utils import build_from_spec, upsample


class StateSpace:
    """Maps a high-resolution image ``x`` (given its low-resolution input ``y``) to a state ``z`` and back."""

    #: ``decode`` is affine in ``z`` for fixed ``y``, so data consistency can be exact in this space
    linear: bool = True

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_channels(self, channels: int) -> int:
        """Channels of ``z`` for an image with ``channels`` channels."""
        return channels

    def reconstruction_error(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Max absolute error of ``decode(encode(x, y), y)`` against ``x``."""
        return float((self.decode(self.encode(x, y), y) - x).abs().max())

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError


class PixelSpace(StateSpace):
    """Diffusion on the (normalised) pixels themselves: ``z = x`` (SR3)."""

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
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

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return z * self.residual_scale + upsample(y, z.shape[2:])

    def spec(self) -> dict[str, Any]:
        return {"type": "residual", "residual_scale": self.residual_scale}


_SPACES: dict[str, type[StateSpace]] = {"pixel": PixelSpace, "residual": ResidualSpace}


def register_space(name: str, cls: type[StateSpace]) -> None:
    """Allow checkpoints to rebuild state space ``cls`` from a spec whose ``type`` is ``name``."""
    _SPACES[name] = cls


def space_from_spec(spec: dict[str, Any]) -> StateSpace:
    """Rebuild a state space from :meth:`StateSpace.spec` data (only known, registered types)."""
    return build_from_spec(_SPACES, spec, "state space")
