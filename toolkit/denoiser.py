"""Denoisers: one call signature ``(z_t, t, cond) -> output`` for every network (SR3 conditioning)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from toolkit.utils import append_dims


class UNetDenoiser(nn.Module):
    """MONAI ``DiffusionModelUNet`` with the upsampled low-resolution input concatenated (SR3).

    The condition can be dropped per sample (classifier-free guidance, Ho & Salimans, 2022): a
    dropped condition is replaced by a learned null embedding, one value per condition channel
    broadcast over space. MONAI zero-initialises the output convolution, so an untrained network
    outputs zeros: in residual space with x0 prediction that is exactly the interpolated input.

    Args:
        spatial_dims: 2 or 3.
        channels: channels of the image (bands, colours, modalities).
        state_channels: channels of the diffusion state; defaults to ``channels``.
        cond_channels: channels of the condition; defaults to ``channels``; 0 makes an
            unconditional network (a prior for zero-shot SR): ``cond`` is ignored.
        num_channels: feature channels per UNet level.
        attention_levels: self-attention at each level.
        num_res_blocks: residual blocks per level.
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups.
        mid_attention: keep the self-attention of MONAI's middle block. Without it the network
            is fully convolutional (each output depends on a bounded neighbourhood), so tiles of
            a large input see the same context as one pass, and 3D patches skip an attention
            over every voxel of the bottom level (4096 tokens for a 64^3 patch).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        channels: int = 3,
        state_channels: int | None = None,
        cond_channels: int | None = None,
        num_channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        mid_attention: bool = True,
    ) -> None:
        super().__init__()
        self.spatial_dims = int(spatial_dims)
        self.channels = int(channels)
        self.state_channels = int(state_channels or channels)
        #: 0 for an unconditional prior (zero-shot SR): the network sees the state alone
        self.cond_channels = int(channels if cond_channels is None else cond_channels)
        self.config: dict[str, Any] = {
            "spatial_dims": self.spatial_dims,
            "channels": self.channels,
            "state_channels": self.state_channels,
            "cond_channels": self.cond_channels,
            "num_channels": [int(c) for c in num_channels],
            "attention_levels": [bool(a) for a in attention_levels],
            "num_res_blocks": int(num_res_blocks),
            "num_head_channels": int(num_head_channels),
            "norm_num_groups": int(norm_num_groups),
            "mid_attention": bool(mid_attention),
        }
        self.net = DiffusionModelUNet(
            spatial_dims=self.spatial_dims,
            in_channels=self.state_channels + self.cond_channels,
            out_channels=self.state_channels,
            num_res_blocks=int(num_res_blocks),
            channels=tuple(num_channels),
            attention_levels=tuple(attention_levels),
            num_head_channels=int(num_head_channels),
            norm_num_groups=int(norm_num_groups),
        )
        if not mid_attention:
            self.net.middle_block.attention = nn.Identity()
        self.null_cond = nn.Parameter(torch.zeros(self.cond_channels))

    @property
    def multiple(self) -> int:
        """Spatial sizes must be divisible by this (one halving per level after the first)."""
        return 2 ** (len(self.config["num_channels"]) - 1)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Network output for state ``z_t`` (B, C_z, *S) at float timesteps ``t`` (B,).

        Args:
            cond: ``(B, C_c, *S)`` condition, or ``None`` for the null condition everywhere.
            drop: optional ``(B,)`` bool, True where the condition is replaced by the null one.
        """
        if self.cond_channels == 0:
            return self.net(z_t, t)
        null = self.null_cond.to(z_t.dtype).reshape(1, -1, *([1] * self.spatial_dims))
        if cond is None:
            cond = null.expand(z_t.shape[0], -1, *z_t.shape[2:])
        elif drop is not None:
            keep = append_dims((~drop).to(z_t.dtype), z_t.ndim)
            cond = keep * cond + (1 - keep) * null
        return self.net(torch.cat([z_t, cond.to(z_t.dtype)], dim=1), t)


def denoiser_from_config(config: dict[str, Any]) -> UNetDenoiser:
    """Rebuild a :class:`UNetDenoiser` from its ``config`` (stored in checkpoints)."""
    return UNetDenoiser(**config)


def fit_denoiser_to_space(denoiser: UNetDenoiser, space: Any, prior: bool = False, reference_channels: int = 0) -> UNetDenoiser:
    """The denoiser with the state and condition channels that ``space`` needs.

    A wavelet space of ``levels`` levels holds ``C * 2**(d * levels)`` channels, a latent space
    its autoencoder's latent channels, a prior (``prior``) no condition at all; the config then names only the image's channels and the
    space, and a (still untrained) network of the same width is rebuilt with the right inputs
    and outputs. A denoiser that already fits is returned as is. ``reference_channels`` R > 0
    (reference-guided SR) adds the channels the space makes of an R-channel reference on the
    output grid (``space.cond_channels(R, d)``) after the input's condition channels.
    """
    d = denoiser.spatial_dims
    want_state = int(space.state_channels(denoiser.channels, d))
    want_cond = 0 if prior else int(space.cond_channels(denoiser.channels, d))
    if reference_channels and not prior:
        want_cond += int(space.cond_channels(int(reference_channels), d))
    if (denoiser.state_channels, denoiser.cond_channels) == (want_state, want_cond):
        return denoiser
    return UNetDenoiser(**{**denoiser.config, "state_channels": want_state, "cond_channels": want_cond})
