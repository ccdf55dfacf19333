"""InDI (Inversion by Direct Iteration, Delbracio & Milanfar 2023): restoration in small steps from the input itself.

The forward process is the straight line from the high-resolution state to the input, plus a
small noise:

    x_t = (1 - t) x0 + t y + t eps_t noise,        t = (k + 1) / T for k = 0 .. T - 1

with ``y`` the interpolated input in the state space (the process is
:attr:`~toolkit.process.Process.conditional`, as residual shifting). ``eps_t`` is the noise level:
``constant`` (``eps_t = eps_0``: the paper's plain InDI) or ``brownian`` (``eps_t = eps_0 /
sqrt(t)``: the perturbation is a Brownian motion, the paper's noisy variant). The network learns
``E[x0 | x_t]`` (an x0 prediction; the paper's ``F(x_t, t)``) and sampling starts at
``x_1 = y + eps_1 noise``.

InDI's iteration (the paper's Algorithm 1, with its noise) from ``t`` to ``t' < t``:

    x_t' = (1 - t'/t) F(x_t, t) + (t'/t) x_t + t' sqrt(eps_t'^2 - eps_t^2) noise

is :class:`toolkit.samplers.ShiftStepper` with ``a = t`` and ``sigma = t eps_t`` (sampler ``ddpm``;
``ddim`` with ``eta`` scales the fresh noise and carries the rest from the predicted noise; with
constant noise both are the plain iteration). Its last step returns ``F``.

Spaces: pixel (the paper's), latent and linear wavelet spaces shift towards the input's state; in
residual space the input's state is 0 and ``x_t = (1 - t) x0 + t eps_t noise`` only shrinks the
residual (it trains and samples, but prefer pixel space).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from toolkit.process import InputStartProcess, Schedule, register_process
from toolkit.samplers import ShiftStepper, Stepper
from toolkit.utils import append_dims, device_table

NoiseKind = Literal["constant", "brownian"]


class InDIProcess(InputStartProcess):
    """InDI (Delbracio & Milanfar, 2023): ``x_t = (1 - t) x0 + t y + t eps_t noise`` on ``t = 1/T .. 1``.

    In the input's frame ``x_t - y = (1 - t)(x0 - y) + t eps_t noise``: the sampling schedule's
    ``alpha = 1 - t`` and ``sigma = t eps_t``.

    Args:
        timesteps: ``T``, the training grid of ``t`` (the network sees the index ``k``, ``t = (k + 1) / T``).
        noise: the noise level at ``t = 1`` (``eps_0``); 0 is the noise-free InDI.
        noise_kind: ``constant`` (``eps_t = eps_0``) or ``brownian`` (``eps_t = eps_0 / sqrt(t)``).
    """

    kind = "indi"
    title = "InDI"

    def __init__(self, timesteps: int = 100, noise: float = 0.01, noise_kind: NoiseKind = "constant") -> None:
        if int(timesteps) < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if noise_kind not in ("constant", "brownian"):
            raise ValueError(f"unknown noise kind {noise_kind!r}; choose constant or brownian")
        self.timesteps, self.noise, self.noise_kind = int(timesteps), float(noise), noise_kind
        #: ``t_k = (k + 1) / T``, float64 on the CPU
        self.t = torch.arange(1, self.timesteps + 1, dtype=torch.float64) / self.timesteps
        eps = torch.full_like(self.t, self.noise) if noise_kind == "constant" else self.noise / self.t.sqrt()
        #: the noise's standard deviation ``t eps_t`` per timestep
        self.sigma = self.t * eps
        self._tables: dict[torch.device, torch.Tensor] = {}

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``t`` and ``t eps_t`` for timestep indices ``t`` ``(B,)``, shaped to broadcast on ``like``."""
        if like.device not in self._tables:
            self._tables[like.device] = device_table(torch.stack([self.t, self.sigma]), like.device)
        coef = self._tables[like.device][:, t.to(like.device).long()].to(like.dtype)
        return append_dims(coef[0], like.ndim), append_dims(coef[1], like.ndim)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = (1 - t) x0 + t y + t eps_t noise``."""
        y = self._need(y, "q_sample")
        tt, sigma = self.coefficients(t, x0)
        return x0 + tt * (y - x0) + sigma * noise

    def prior(self, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x_1 = y + eps_1 noise``."""
        y = self._need(y, "the prior")
        return y + float(self.sigma[-1]) * noise

    def eps_from_x0(
        self, z_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(x_t - x0 - t (y - x0)) / (t eps_t)``; 0 for the noise-free process (there is no noise)."""
        y = self._need(y, "eps_from_x0")
        tt, sigma = self.coefficients(t, z_t)
        if self.noise == 0:
            return torch.zeros_like(z_t)
        return (z_t - x0 - tt * (y - x0)) / sigma

    def sampling_schedule(self, steps: int, t_start: int | None = None) -> Schedule:
        """The levels ``t_start .. 0`` and the clean state: ``alpha = 1 - t``, ``sigma = t eps_t`` (1 and 0 at the end)."""
        ks = self.timestep_grid(steps, t_start)
        return Schedule(
            t=tuple(float(k) for k in ks),
            alpha=tuple(1 - float(self.t[k]) for k in ks) + (1.0,),
            sigma=tuple(float(self.sigma[k]) for k in ks) + (0.0,),
        )

    def stepper(self, sampler: str, eta: float, schedule: Schedule) -> Stepper:
        """``ddpm``: InDI's iteration with its noise (the paper's); ``ddim``: the same marginals, ``eta`` of the fresh noise."""
        if sampler == "ddpm":
            return ShiftStepper(schedule, 1.0)
        if sampler == "ddim":
            return ShiftStepper(schedule, eta)
        raise ValueError(
            f"the InDI process samples with its own iteration: sampler 'ddpm' (the paper's, with its noise) "
            f"or 'ddim' (eta 0..1), not {sampler!r}"
        )

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "timesteps": self.timesteps, "noise": self.noise, "noise_kind": self.noise_kind}


register_process(InDIProcess.kind, InDIProcess)
