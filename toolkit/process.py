"""Gaussian diffusion process (DDPM / VP) with linear or cosine schedules and eps / x0 / v outputs."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from toolkit.utils import append_dims

Schedule = Literal["linear", "cosine"]
Parameterization = Literal["eps", "x0", "v"]
Weighting = Literal["none", "min_snr"]


def alpha_bar_schedule(kind: Schedule, timesteps: int) -> torch.Tensor:
    """Cumulative signal fraction ``alpha_bar[t]`` for ``t = 0 .. T-1`` in float64.

    ``linear``: DDPM (Ho et al., 2020), betas from 1e-4 to 0.02 scaled to ``T = 1000``.
    ``cosine``: improved DDPM (Nichol & Dhariwal, 2021) with ``s = 0.008``, betas clipped at 0.999.
    """
    if timesteps < 2:
        raise ValueError("timesteps must be >= 2")
    if kind == "linear":
        scale = 1000.0 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    elif kind == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    return torch.cumprod(1 - betas, dim=0)


class GaussianProcess:
    """Variance-preserving forward process ``z_t = sqrt(ab_t) z_0 + sqrt(1 - ab_t) eps`` (DDPM).

    Args:
        schedule: ``linear`` (DDPM) or ``cosine`` (iDDPM).
        timesteps: number of discrete training timesteps ``T``.
        parameterization: what the network predicts: ``eps`` (noise), ``x0`` (clean state) or
            ``v`` (Salimans & Ho, 2022: ``v = sqrt(ab) eps - sqrt(1 - ab) z_0``).
        loss_weighting: ``none`` (plain MSE on the network target) or ``min_snr`` (Hang et al.,
            2023: the x0-equivalent weight ``min(SNR, gamma)``).
        min_snr_gamma: the ``gamma`` of ``min_snr``.
    """

    def __init__(
        self,
        schedule: Schedule = "cosine",
        timesteps: int = 1000,
        parameterization: Parameterization = "x0",
        loss_weighting: Weighting = "none",
        min_snr_gamma: float = 5.0,
    ) -> None:
        if parameterization not in ("eps", "x0", "v"):
            raise ValueError(f"unknown parameterization {parameterization!r}")
        self.schedule = schedule
        self.timesteps = int(timesteps)
        self.parameterization = parameterization
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.alpha_bar = alpha_bar_schedule(schedule, self.timesteps)

    # --- coefficients ---------------------------------------------------------------------
    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(ab_t)`` and ``sqrt(1 - ab_t)`` for integer timesteps ``t`` (B,), shaped to broadcast on ``like``."""
        ab = self.alpha_bar.to(t.device)[t.long()]
        a = append_dims(ab.sqrt().to(like.dtype), like.ndim)
        s = append_dims((1 - ab).sqrt().to(like.dtype), like.ndim)
        return a, s

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``z_t ~ q(z_t | z_0)`` for integer timesteps ``t`` (B,) with the given ``noise``."""
        a, s = self.coefficients(t, z0)
        return a * z0 + s * noise

    def prior(self, shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A draw from ``p(z_T) = N(0, I)``."""
        z = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return z.to(device=device, dtype=dtype)

    # --- parameterizations ---------------------------------------------------------------
    def target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output."""
        if self.parameterization == "eps":
            return noise
        if self.parameterization == "x0":
            return z0
        a, s = self.coefficients(t, z0)
        return a * noise - s * z0

    def predict(self, out: torch.Tensor, z_t: torch.Tensor, alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a network output into ``(x0_hat, eps_hat)``.

        Args:
            out: network output, same shape as ``z_t``.
            z_t: noisy state.
            alpha_bar: ``(B,)`` or scalar ``ab_t`` (any float dtype).
        """
        ab = append_dims(torch.as_tensor(alpha_bar, device=z_t.device, dtype=torch.float64).reshape(-1), z_t.ndim)
        a = ab.sqrt().to(z_t.dtype)
        s = (1 - ab).sqrt().to(z_t.dtype)
        if self.parameterization == "eps":
            return (z_t - s * out) / a, out
        if self.parameterization == "x0":
            return out, (z_t - a * out) / s
        return a * z_t - s * out, s * z_t + a * out

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights (B,) in the network-target units."""
        if self.loss_weighting == "none":
            return torch.ones(t.shape, device=t.device)
        ab = self.alpha_bar.to(t.device)[t.long()]
        snr = ab / (1 - ab)
        w = snr.clamp(max=self.min_snr_gamma)
        if self.parameterization == "eps":
            w = w / snr
        elif self.parameterization == "v":
            w = w / (snr + 1)
        return w.float()

    # --- sampling schedule ----------------------------------------------------------------
    def sampling_schedule(self, steps: int, t_start: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Evenly spaced timesteps from ``t_start`` (default ``T - 1``) down to 0 and their ``alpha_bar``.

        Returns:
            ``timesteps`` (N,) long, decreasing, and ``alpha_bars`` (N + 1,) float64 with a final 1.0
            (the clean state) appended.
        """
        top = self.timesteps - 1 if t_start is None else int(t_start)
        if not 0 <= top < self.timesteps:
            raise ValueError(f"t_start must be in [0, {self.timesteps - 1}]")
        steps = max(1, min(int(steps), top + 1))
        ts = torch.linspace(top, 0, steps, dtype=torch.float64).round().long()
        ts = torch.unique_consecutive(ts)
        abs_ = torch.cat([self.alpha_bar[ts], torch.ones(1, dtype=torch.float64)])
        return ts, abs_

    def spec(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "timesteps": self.timesteps,
            "parameterization": self.parameterization,
            "loss_weighting": self.loss_weighting,
            "min_snr_gamma": self.min_snr_gamma,
        }
