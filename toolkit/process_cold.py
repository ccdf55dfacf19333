"""Cold diffusion (Bansal et al., 2022): restoration by reversing a deterministic degradation, with TACoS.

The degradation of severity ``t`` is built from the model's own operator through the interpolated
input ``y`` (the state of ``up(A x)``, the condition the sampling loop passes): a blend from the
clean state towards the input,

    D(x0, t) = (1 - s_t) x0 + s_t y,        t = (k + 1) / T for k = 0 .. T - 1,

with ``s_t`` ``linear`` (``s_t = t``) or ``cosine`` (``s_t = sin^2(pi t / 2)``), so ``D(x0, 1) = y``:
the prior is the input itself. ``q_sample`` is ``D`` exactly (plus ``sigma_min`` noise, 0 by
default). The network predicts ``x0`` (the paper's restoration operator ``R``).

Sampling (the process's own steps):

- ``ddpm``: the paper's improved sampler (TACoS, Algorithm 2),
  ``x_{t'} = x_t - D(x0_hat, t) + D(x0_hat, t')``;
- ``ddim``: the paper's naive sampler (Algorithm 1), ``x_{t'} = D(x0_hat, t')``.

The loop hands the step ``eps = x_t - D(x0_hat, t)`` (:meth:`ColdProcess.eps_from_x0`, with ``y``), so
``D(x0_hat, t') = x0_hat + (s'/s)(x_t - x0_hat - eps)`` needs no ``y`` in the step. From ``x_T = y``
TACoS telescopes to ``y + sum_i (s_i - s_{i+1}) (x0_hat_i - y)``: the weighted mean of its
predictions (weights summing to 1), where the naive sampler returns the last prediction.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from toolkit.process import InputStartProcess, Schedule, register_process
from toolkit.samplers import Stepper
from toolkit.utils import append_dims, device_table

BlendSchedule = Literal["linear", "cosine"]


class ColdStepper(Stepper):
    """Cold diffusion's steps (Bansal et al., 2022): TACoS (``tacos=True``) or the naive ``D(x0_hat, t')``.

    The schedule is in the input's frame, ``z - y = alpha (x0 - y) + ...`` with ``alpha = 1 - s``.
    """

    def __init__(self, schedule: Schedule, tacos: bool) -> None:
        super().__init__(schedule)
        self.tacos = bool(tacos)
        self.s = [1 - a for a in schedule.alpha]

    def step(self, z, x0, eps, i, noise=None, previous=()):  # type: ignore[no-untyped-def]
        s, s_next = self.s[i], self.s[i + 1]
        degraded = x0 if s_next <= 0 else x0 + (s_next / s) * (z - x0 - eps)  # D(x0_hat, t')
        return degraded + eps if self.tacos else degraded


class ColdProcess(InputStartProcess):
    """Cold diffusion (Bansal et al., 2022): ``D(x0, t) = (1 - s_t) x0 + s_t y``, deterministic, prior ``y``.

    Args:
        timesteps: ``T``, the grid of severities (the network sees the index ``k``, ``t = (k + 1) / T``).
        schedule: ``linear`` (``s_t = t``) or ``cosine`` (``s_t = sin^2(pi t / 2)``).
        sigma_min: a small noise added in training only (the sampler stays deterministic); 0 by default.
    """

    kind = "cold"
    title = "cold"

    def __init__(self, timesteps: int = 20, schedule: BlendSchedule = "cosine", sigma_min: float = 0.0) -> None:
        if int(timesteps) < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown blend schedule {schedule!r}; choose linear or cosine")
        if sigma_min < 0:
            raise ValueError(f"sigma_min must be >= 0, got {sigma_min}")
        self.timesteps, self.schedule, self.sigma_min = int(timesteps), schedule, float(sigma_min)
        t = torch.arange(1, self.timesteps + 1, dtype=torch.float64) / self.timesteps
        #: the blend weight ``s_t`` per timestep, float64 on the CPU (``s`` at the last index is 1)
        self.s = t if schedule == "linear" else torch.sin(0.5 * math.pi * t) ** 2
        self.s[-1] = 1.0
        self._tables: dict[torch.device, torch.Tensor] = {}

    def blend(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``s_t`` for timestep indices ``t`` ``(B,)``, shaped to broadcast on ``like``."""
        if like.device not in self._tables:
            self._tables[like.device] = device_table(self.s, like.device)
        return append_dims(self._tables[like.device][t.to(like.device).long()].to(like.dtype), like.ndim)

    def degrade(self, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``D(x0, t) = (1 - s_t) x0 + s_t y``, ``(B, C, *spatial)``."""
        return x0 + self.blend(t, x0) * (y - x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``D(x0, t) + sigma_min noise``."""
        out = self.degrade(x0, t, self._need(y, "q_sample"))
        return out + self.sigma_min * noise if self.sigma_min > 0 else out

    def prior(self, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x_T = D(x0, T) = y``: no noise."""
        return self._need(y, "the prior").clone()

    def eps_from_x0(
        self, z_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The residual ``x_t - D(x0, t)`` (unscaled: what the degradation of ``x0`` leaves unexplained)."""
        return z_t - self.degrade(x0, t, self._need(y, "eps_from_x0"))

    def sampling_schedule(self, steps: int, t_start: int | None = None) -> Schedule:
        """The severities ``t_start .. 0`` and the clean state: ``alpha = 1 - s_t``, ``sigma = sigma_min`` (0 at the end)."""
        ks = self.timestep_grid(steps, t_start)
        return Schedule(
            t=tuple(float(k) for k in ks),
            alpha=tuple(1 - float(self.s[k]) for k in ks) + (1.0,),
            sigma=tuple(self.sigma_min for _ in ks) + (0.0,),
        )

    def stepper(self, sampler: str, eta: float, schedule: Schedule) -> Stepper:
        """``ddpm``: TACoS (the paper's improved sampler); ``ddim``: the naive ``x_t' = D(x0_hat, t')``; ``eta`` is unused."""
        if sampler == "ddpm":
            return ColdStepper(schedule, tacos=True)
        if sampler == "ddim":
            return ColdStepper(schedule, tacos=False)
        raise ValueError(
            f"the cold process samples with its own steps: sampler 'ddpm' (TACoS, the paper's improved sampler) "
            f"or 'ddim' (the naive D(x0_hat, t')), not {sampler!r}"
        )

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "timesteps": self.timesteps, "schedule": self.schedule, "sigma_min": self.sigma_min}


register_process(ColdProcess.kind, ColdProcess)
