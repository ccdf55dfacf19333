"""Samplers as steppers over the schedule a process gives (k-diffusion / EDM style).

A :class:`Sampler` is configuration only; :meth:`Sampler.init` binds it to a
:class:`~toolkit.process.Schedule` and returns a :class:`Stepper`, whose
``step(z, x0_hat, eps_hat, i, noise, previous)`` maps the state at level ``i`` to level ``i + 1``.
A step is a pure function of its arguments: every scalar comes from the schedule, the only state
carried between steps is ``previous`` (the last :attr:`Stepper.history` data predictions, newest
first), and noise is handed in (``None`` where :meth:`Stepper.needs_noise` says the step draws
none). So one loop (:mod:`toolkit.engine`) drives every sampler whether the state is one tensor in
memory or cells of a raster streamed from disk.

Samplers are registered by name in :data:`SAMPLERS`; the command line's choices come from
:func:`sampler_names` and an unknown name is an error everywhere (:func:`make_sampler`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from toolkit.process import Schedule, timesteps_like

ModelFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: called once per network evaluation with the step index (-1 for a start's evaluation) and, when
#: the state is one tensor, the state and the data prediction (``None`` when streamed)
Callback = Callable[[int, "torch.Tensor | None", "torch.Tensor | None"], None]
#: a sampler's registered name (see :func:`sampler_names`)
SamplerName = str


class Stepper:
    """A sampler bound to one schedule."""

    #: data predictions of earlier steps that :meth:`step` uses (newest first)
    history: int = 0

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def needs_noise(self, i: int) -> bool:
        """Whether step ``i`` takes fresh standard normal noise."""
        return False

    def step(
        self,
        z: torch.Tensor,
        x0: torch.Tensor,
        eps: torch.Tensor,
        i: int,
        noise: torch.Tensor | None = None,
        previous: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """The state at level ``i + 1`` from the state ``z`` at level ``i`` and the predictions there."""
        raise NotImplementedError


class Sampler:
    """A sampler's configuration; :meth:`init` binds it to a schedule. Subclasses set :attr:`name`."""

    name: ClassVar[str]
    #: one line for ``--help``
    summary: ClassVar[str] = ""

    def __init__(self, eta: float = 0.0) -> None:
        self.eta = float(eta)

    def init(self, schedule: Schedule) -> Stepper:
        raise NotImplementedError


# --- DDIM / DDPM ------------------------------------------------------------------------------------
class DDIMStepper(Stepper):
    """DDIM (Song et al., 2021): ``z' = alpha' x0 + sqrt(sigma'^2 - s^2) eps + s n``.

    ``s = eta * (sigma' / sigma) * sqrt(1 - alpha^2 / alpha'^2)``; ``eta = 0`` is the deterministic
    probability-flow discretisation, ``eta = 1`` DDPM's ancestral step (the posterior
    ``q(z' | z, x0)``, Ho et al. 2020; respaced as in Nichol & Dhariwal 2021).
    """

    def __init__(self, schedule: Schedule, eta: float) -> None:
        super().__init__(schedule)
        self.coefficients = [ddim_coefficients(schedule, i, eta) for i in range(len(schedule))]

    def needs_noise(self, i: int) -> bool:
        return self.coefficients[i][2] > 0

    def step(self, z, x0, eps, i, noise=None, previous=()):  # type: ignore[no-untyped-def]
        c_x0, c_eps, s = self.coefficients[i]
        z = c_x0 * x0 + c_eps * eps
        if s > 0:
            if noise is None:
                raise ValueError(f"step {i} of a stochastic sampler needs noise")
            z = z + s * noise
        return z


def ddim_coefficients(schedule: Schedule, i: int, eta: float) -> tuple[float, float, float]:
    """``(c_x0, c_eps, s)`` of the DDIM step from level ``i`` to ``i + 1``."""
    ab, ab_next = schedule.alpha[i] ** 2, schedule.alpha[i + 1] ** 2
    s = eta * math.sqrt(max((1 - ab_next) / (1 - ab) * (1 - ab / ab_next), 0.0)) if eta > 0 else 0.0
    return math.sqrt(ab_next), math.sqrt(max(1 - ab_next - s**2, 0.0)), s


class DDIM(Sampler):
    name = "ddim"
    summary = "DDIM (eta: 0 deterministic, 1 ancestral)"

    def init(self, schedule: Schedule) -> Stepper:
        return DDIMStepper(schedule, self.eta)


class DDPM(Sampler):
    name = "ddpm"
    summary = "ancestral DDPM (DDIM with eta = 1)"

    def init(self, schedule: Schedule) -> Stepper:
        return DDIMStepper(schedule, 1.0)


# --- DPM-Solver++ ------------------------------------------------------------------------------------
class DPMSolverPP2MStepper(Stepper):
    """DPM-Solver++(2M) (Lu et al., 2022), the multistep second-order data-prediction solver.

    With ``lambda = log(alpha / sigma)`` and ``h = lambda' - lambda``:
    ``z' = (sigma' / sigma) z - alpha' (e^{-h} - 1) D`` where ``D = x0`` on the first and last
    step and ``D = (1 + 1 / (2 r)) x0 - 1 / (2 r) x0_prev`` with ``r = h_prev / h`` otherwise.
    """

    history = 1

    def _h(self, i: int) -> float:
        return self.schedule.log_snr(i + 1) - self.schedule.log_snr(i)

    def step(self, z, x0, eps, i, noise=None, previous=()):  # type: ignore[no-untyped-def]
        sch = self.schedule
        if sch.sigma[i + 1] == 0:
            return x0  # the clean end point: the first-order update gives x0 exactly
        h = self._h(i)
        d = x0
        if previous:
            r = self._h(i - 1) / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous[0]
        return (sch.sigma[i + 1] / sch.sigma[i]) * z - sch.alpha[i + 1] * math.expm1(-h) * d


class DPMSolverPP2M(Sampler):
    name = "dpmpp"
    summary = "DPM-Solver++(2M), deterministic second order"

    def init(self, schedule: Schedule) -> Stepper:
        return DPMSolverPP2MStepper(schedule)


class DPMSolverPP3MStepper(DPMSolverPP2MStepper):
    """DPM-Solver++(3M) (Lu et al., 2022; the multistep third-order form of k-diffusion's ``dpmpp_3m_sde`` at ``eta = 0``).

    ``z' = (sigma' / sigma) z + alpha' [(1 - e^{-h}) x0 + phi_2 D1 - phi_3 D2]`` with
    ``phi_2 = (e^{-h} - 1) / h + 1``, ``phi_3 = phi_2 / h - 1/2`` and divided differences ``D1``,
    ``D2`` of the last three data predictions over ``lambda`` (second order on the second step,
    first order on the first and the last).
    """

    history = 2

    def step(self, z, x0, eps, i, noise=None, previous=()):  # type: ignore[no-untyped-def]
        sch = self.schedule
        if sch.sigma[i + 1] == 0:
            return x0
        h = self._h(i)
        out = (sch.sigma[i + 1] / sch.sigma[i]) * z - math.expm1(-h) * sch.alpha[i + 1] * x0
        if not previous:
            return out
        phi_2 = math.expm1(-h) / h + 1
        r0 = self._h(i - 1) / h
        d1_0 = (x0 - previous[0]) / r0
        if len(previous) == 1:
            return out + sch.alpha[i + 1] * phi_2 * d1_0
        r1 = self._h(i - 2) / h
        d1_1 = (previous[0] - previous[1]) / r1
        d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_3 = phi_2 / h - 0.5
        return out + sch.alpha[i + 1] * (phi_2 * d1 - phi_3 * d2)


class DPMSolverPP3M(Sampler):
    name = "dpmpp_3m"
    summary = "DPM-Solver++(3M), deterministic third order"

    def init(self, schedule: Schedule) -> Stepper:
        return DPMSolverPP3MStepper(schedule)


# --- processes that shift the input into the state (residual shifting, InDI) -----------------------------
class ShiftStepper(Stepper):
    """The DDIM family of a process with marginals ``z_t = x0 + a_t (y - x0) + sigma_t eps`` (Song et al., 2021).

    Processes that move the clean state towards the input ``y`` (residual shifting, Yue et al.
    2023: ``a = eta``; InDI, Delbracio & Milanfar 2023: ``a = t``) give their schedule in the
    input's frame, ``z - y = alpha (x0 - y) + sigma eps`` with ``alpha = 1 - a``. From level ``i``
    to ``i + 1``, with ``r = a' / a``:

        ``z' = x0 + r (z - x0) + c eps + s noise``, ``s = eta sqrt(sigma'^2 - r^2 sigma^2)``,
        ``c = sqrt(sigma'^2 - s^2) - r sigma``,

    which keeps ``z'`` at the next level's marginal for the true ``(x0, eps)`` (``y`` cancels).
    ``eta = 1``: ``c = 0``, a draw from the posterior ``q(z' | z, x0)`` (ResShift's eq. 7; InDI's
    noisy iteration, whose fresh noise tops the level's noise up); ``eta = 0``: deterministic.
    Where ``sigma'^2 = r^2 sigma^2`` (InDI with constant noise) every ``eta`` is InDI's plain
    iteration ``z' = (1 - r) x0 + r z``. The last step (``a' = 0``) returns ``x0``.
    """

    def __init__(self, schedule: Schedule, eta: float) -> None:
        super().__init__(schedule)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1] for this process's steps, got {eta}")
        self.eta = float(eta)
        self.coefficients = [self._coefficients(i) for i in range(len(schedule))]

    def _coefficients(self, i: int) -> tuple[float, float, float]:
        """``(r, c, s)`` of step ``i``."""
        a, a_next = 1 - self.schedule.alpha[i], 1 - self.schedule.alpha[i + 1]
        sigma, sigma_next = self.schedule.sigma[i], self.schedule.sigma[i + 1]
        if a_next <= 0:
            return 0.0, 0.0, 0.0
        r = a_next / a
        top_up = sigma_next**2 - (r * sigma) ** 2
        # none where the level's noise is the carried noise to rounding (InDI with constant noise,
        # whose r = a' / a comes from ``1 - alpha``)
        top_up = top_up if top_up > 1e-10 * sigma_next**2 else 0.0
        s = self.eta * math.sqrt(top_up)
        c = 0.0 if self.eta == 1.0 else math.sqrt(max(sigma_next**2 - s**2, 0.0)) - r * sigma
        return r, c, s

    def needs_noise(self, i: int) -> bool:
        return self.coefficients[i][2] > 0

    def step(self, z, x0, eps, i, noise=None, previous=()):  # type: ignore[no-untyped-def]
        r, c, s = self.coefficients[i]
        if r == 0:
            return x0
        out = x0 + r * (z - x0)
        if c != 0:
            out = out + c * eps
        if s > 0:
            if noise is None:
                raise ValueError(f"step {i} of a stochastic sampler needs noise")
            out = out + s * noise
        return out


# --- registry ---------------------------------------------------------------------------------------
SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (DDIM, DDPM, DPMSolverPP2M, DPMSolverPP3M)}


def sampler_names() -> list[str]:
    """The registered samplers' names (the command line's choices)."""
    return sorted(SAMPLERS)


def make_sampler(name: str, eta: float = 0.0) -> Sampler:
    """The sampler registered as ``name``.

    Raises:
        ValueError: no sampler has that name.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(sampler_names())}")
    return SAMPLERS[name](eta)


@torch.no_grad()
def run_sampler(
    sampler: Sampler | str,
    model_fn: ModelFn,
    z: torch.Tensor,
    schedule: Schedule,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Sample from state ``z`` at the schedule's first level down to the clean state.

    The plain loop over one tensor (for tests and research code); the engine's loop
    (:func:`toolkit.engine.sample_sr`) adds guidance, starts, tiling and streaming around the same
    steppers. ``model_fn(z, t) -> (x0_hat, eps_hat)`` takes network timesteps ``t`` ``(B,)``.
    """
    stepper = (make_sampler(sampler) if isinstance(sampler, str) else sampler).init(schedule)
    previous: list[torch.Tensor] = []
    for i, t in enumerate(schedule.t):
        x0, eps = model_fn(z, timesteps_like(t, z))
        noise = None
        if stepper.needs_noise(i):
            if generator is None:
                raise ValueError("a stochastic sampler needs a generator")
            noise = torch.randn(z.shape, generator=generator, device=generator.device, dtype=torch.float32)
            noise = noise.to(device=z.device, dtype=z.dtype)
        z = stepper.step(z, x0, eps, i, noise, previous)
        previous = [x0, *previous][: stepper.history]
        if callback is not None:
            callback(i, z, x0)
    return z
