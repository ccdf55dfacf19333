"""Residual shifting (ResShift, Yue et al. 2023): a short Markov chain from the high-resolution state to the input.

The forward marginal shifts the residual ``y - x0`` into the state while adding noise:

    x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise,        t = 0 .. T - 1 (T = 15 by default)

with ``y`` the interpolated input in the state space (``space.encode(up(y), y)``; the engine and
the training loss hand it to :meth:`ResShiftProcess.q_sample` because the process is
:attr:`~toolkit.process.Process.conditional`). ``eta`` grows from ``eta_1`` near 0 to ``eta_T``
near 1, so the chain starts at ``p(x_T) = N(y, kappa^2 eta_T I)``: around the input, not at pure
noise, which is why a few steps suffice.

Which state spaces it makes sense in:

* pixel space (the paper's image-space variant; ``configs/*/resshift_*.yaml``): ``y = up(y)``;
* latent space (the paper's main variant): ``y`` is the encoded interpolated input;
* a linear wavelet space: ``y`` is the transform of ``up(y)``;
* residual space (``x - up(y)``): the encoded input is 0, so ``x_t = (1 - eta_t) x0 + kappa
  sqrt(eta_t) noise`` is a plain noise schedule whose signal shrinks to ``1 - eta_T`` (0.02 by
  default): it trains and samples, but there is no shift left (prefer the pixel space).

Sampling (:class:`toolkit.samplers.ShiftStepper`, returned by :meth:`ResShiftProcess.stepper`): between two
levels ``s < t`` of the schedule, ``q(x_s | x_t, x0)`` is

    N( (eta_s / eta_t) x_t + (1 - eta_s / eta_t) x0,  kappa^2 (eta_s / eta_t) (eta_t - eta_s) I )

(the paper's eq. 7 for ``s = t - 1``: the product of ``q(x_t | x_s) = N(x_s + (eta_t - eta_s)(y -
x0), kappa^2 (eta_t - eta_s))`` and ``q(x_s | x0)``; ``y`` cancels), sampled with the predicted
``x0`` (sampler ``ddpm``, the paper's). The sampler ``ddim`` with ``eta`` in ``[0, 1]`` is the
DDIM family with the same marginals: the posterior's noise scaled by ``eta`` and the rest taken
from the predicted noise (``eta = 1`` is ``ddpm``; ``eta = 0`` is deterministic, as SinSR's
teacher trajectories). The last step lands on the predicted ``x0``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from toolkit.process import InputStartProcess, Schedule, register_process
from toolkit.samplers import ShiftStepper, Stepper
from toolkit.utils import append_dims, device_table

LossWeighting = Literal["none", "kl"]
InputScaling = Literal["none", "std", "max"]


def resshift_sqrt_etas(timesteps: int, min_noise_level: float, etas_end: float, kappa: float, power: float) -> torch.Tensor:
    """``sqrt(eta_t)`` for ``t = 0 .. T - 1`` (float64): ResShift's exponential schedule.

    ``sqrt(eta)`` is geometric in ``(t / (T - 1))^power (T - 1)`` from ``min(min_noise_level / kappa,
    min_noise_level)`` (so the first level's noise ``kappa sqrt(eta_1)`` is at most
    ``min_noise_level``) to ``etas_end`` (as the reference code's ``get_named_eta_schedule``).
    """
    if timesteps < 2:
        raise ValueError(f"timesteps must be >= 2, got {timesteps}")
    if kappa <= 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    start = min(min_noise_level / kappa, min_noise_level)
    if not 0 < start < etas_end <= 1:
        raise ValueError(
            f"need 0 < min(min_noise_level / kappa, min_noise_level) < etas_end <= 1; got {start} and {etas_end}"
        )
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    exponent = torch.linspace(0, 1, timesteps, dtype=torch.float64) ** power * (timesteps - 1)
    growth = math.log(etas_end / start) / (timesteps - 1)
    return start * torch.exp(growth * exponent)


class ResShiftProcess(InputStartProcess):
    """Residual shifting (Yue et al., 2023): ``x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise``.

    The network predicts ``x0`` (the paper's choice). :meth:`Schedule.alpha` and ``sigma`` of its
    sampling schedule are those of the input's frame, ``x_t - y = (1 - eta_t)(x0 - y) + kappa
    sqrt(eta_t) noise``: ``alpha = 1 - eta``, ``sigma = kappa sqrt(eta)``.

    Args:
        timesteps: ``T`` (15 in the paper; 4 in its journal version).
        kappa: noise scale ``kappa`` (the paper: 2.0 for x4 SR, 1.0 for other restoration).
        min_noise_level: bounds the first level's noise: ``sqrt(eta_1) = min(min_noise_level /
            kappa, min_noise_level)`` (0.04).
        etas_end: ``sqrt(eta_T)`` (0.99).
        power: the schedule's power ``p`` (0.3; smaller spends more levels near the input).
        loss_weighting: ``none`` (plain MSE on ``x0``, the paper's SR setting) or ``kl`` (the
            reference code's ``WEIGHTED_MSE``: ``(alpha_t / eta_t)^2 / (2 posterior variance)``,
            the variational bound's weight; the first level takes the second's variance).
        normalize_input: how :meth:`network_input` scales the state for the network (the reference
            code's ``normalize_input``): ``none``; ``std``: by ``sqrt(kappa^2 eta_t + 1)``, the
            state's standard deviation for unit-variance data (its latent-space setting); ``max``:
            by ``3 kappa sqrt(eta_t) + 1``, the range of ``[-1, 1]`` data plus three noise standard
            deviations (its pixel-space setting).
    """

    kind = "resshift"
    title = "residual-shifting"

    def __init__(
        self,
        timesteps: int = 15,
        kappa: float = 2.0,
        min_noise_level: float = 0.04,
        etas_end: float = 0.99,
        power: float = 0.3,
        loss_weighting: LossWeighting = "none",
        normalize_input: InputScaling = "none",
    ) -> None:
        if loss_weighting not in ("none", "kl"):
            raise ValueError(f"unknown loss weighting {loss_weighting!r}; choose none or kl")
        if normalize_input not in ("none", "std", "max"):
            raise ValueError(f"unknown normalize_input {normalize_input!r}; choose none, std or max")
        self.normalize_input = normalize_input
        self.timesteps = int(timesteps)
        self.kappa, self.min_noise_level = float(kappa), float(min_noise_level)
        self.etas_end, self.power, self.loss_weighting = float(etas_end), float(power), loss_weighting
        self.sqrt_eta = resshift_sqrt_etas(self.timesteps, self.min_noise_level, self.etas_end, self.kappa, self.power)
        #: ``eta_t`` for ``t = 0 .. T - 1``, float64 on the CPU
        self.eta = self.sqrt_eta**2
        self._tables: dict[torch.device, torch.Tensor] = {}

    # --- coefficients ---------------------------------------------------------------------
    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``eta_t`` and ``kappa sqrt(eta_t)`` for timesteps ``t`` ``(B,)``, shaped to broadcast on ``like``."""
        if like.device not in self._tables:
            self._tables[like.device] = device_table(torch.stack([self.eta, self.kappa * self.sqrt_eta]), like.device)
        coef = self._tables[like.device][:, t.to(like.device).long()].to(like.dtype)
        return append_dims(coef[0], like.ndim), append_dims(coef[1], like.ndim)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise`` (the paper's eq. 4)."""
        y = self._need(y, "q_sample")
        eta, std = self.coefficients(t, x0)
        return x0 + eta * (y - x0) + std * noise

    def prior(self, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x_T = y + kappa sqrt(eta_T) noise`` (the reference code's ``prior_sample``)."""
        y = self._need(y, "the prior")
        return y + self.kappa * float(self.sqrt_eta[-1]) * noise

    def network_input(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``z_t`` scaled as :attr:`normalize_input` says (unchanged for ``none``)."""
        if self.normalize_input == "none":
            return z_t
        eta, std = self.coefficients(t, z_t)
        return z_t / ((eta * self.kappa**2 + 1).sqrt() if self.normalize_input == "std" else 3 * std + 1)

    # --- parameterization --------------------------------------------------------------------
    def eps_from_x0(
        self, z_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(x_t - x0 - eta_t (y - x0)) / (kappa sqrt(eta_t))``."""
        y = self._need(y, "eps_from_x0")
        eta, std = self.coefficients(t, z_t)
        return (z_t - x0 - eta * (y - x0)) / std

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        if self.loss_weighting == "none":
            return torch.ones(t.shape, device=t.device)
        eta_prev = torch.cat([torch.zeros(1, dtype=torch.float64), self.eta[:-1]])
        alpha = self.eta - eta_prev
        var = self.kappa**2 * eta_prev / self.eta * alpha
        var = torch.cat([var[1:2], var[1:]])  # the first level's is 0: clipped as the reference code
        w = 0.5 / var * (alpha / self.eta) ** 2
        return w[t.long().cpu()].float().to(t.device)

    # --- sampling ---------------------------------------------------------------------------
    def sampling_schedule(self, steps: int, t_start: int | None = None) -> Schedule:
        """The levels ``t_start .. 0`` (``steps <= T`` of them; fewer subsample) and the clean state.

        ``alpha = 1 - eta`` and ``sigma = kappa sqrt(eta)`` (the input's frame), ``1`` and ``0`` at the end.
        """
        ts = self.timestep_grid(steps, t_start)
        return Schedule(
            t=tuple(float(t) for t in ts),
            alpha=tuple(1 - float(self.eta[t]) for t in ts) + (1.0,),
            sigma=tuple(self.kappa * float(self.sqrt_eta[t]) for t in ts) + (0.0,),
        )

    def stepper(self, sampler: str, eta: float, schedule: Schedule) -> Stepper:
        """``ddpm``: the posterior steps (the paper's); ``ddim``: the same marginals with ``eta`` of the posterior's noise."""
        if sampler == "ddpm":
            return ShiftStepper(schedule, 1.0)
        if sampler == "ddim":
            return ShiftStepper(schedule, eta)
        raise ValueError(
            f"the residual-shifting process samples with its own steps: sampler 'ddpm' (its posterior, "
            f"the paper's) or 'ddim' (eta 0..1), not {sampler!r}"
        )

    def spec(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "timesteps": self.timesteps,
            "kappa": self.kappa,
            "min_noise_level": self.min_noise_level,
            "etas_end": self.etas_end,
            "power": self.power,
            "loss_weighting": self.loss_weighting,
            "normalize_input": self.normalize_input,
        }


register_process(ResShiftProcess.kind, ResShiftProcess)
