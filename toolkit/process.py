"""Forward processes: the corruption a model learns to undo, its prior, and the schedule samplers walk.

The :class:`Process` contract is what the rest of the engine sees of a process; nothing outside
this module indexes ``alpha_bar`` or writes its square roots:

* :meth:`Process.sampling_schedule` gives the noise levels a sampler walks (a :class:`Schedule`
  of network timesteps and the ``alpha``, ``sigma`` of ``z_t = alpha x0 + sigma eps``, float64 on
  the CPU, ending at the clean state);
* :meth:`Process.q_sample` corrupts a clean state, :meth:`Process.prior` draws the start state;
* :meth:`Process.target` is what the network learns, :meth:`Process.predict` turns its output
  into ``(x0_hat, eps_hat)``, :meth:`Process.eps_from_x0` keeps the pair consistent when a
  guidance step changes ``x0_hat``, and :meth:`Process.loss_weights` weights the loss;
* :meth:`Process.stepper` binds a sampler to a schedule: the registered sampler of that name,
  or the process's own steps (residual shifting's posterior, :mod:`toolkit.process_resshift`;
  InDI's iteration, :mod:`toolkit.process_indi`);
* :meth:`Process.spec` is plain data with a ``type``; :func:`process_from_spec` rebuilds it
  (processes in modules of their own are imported when a spec names them).

Per-step tables live in float64 on the CPU; what reaches a device is a copy in float64 where the
device has it and float32 where it does not (Apple MPS), made once per device.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from toolkit.utils import append_dims, build_from_spec, device_table

if TYPE_CHECKING:
    from toolkit.samplers import Stepper

Schedule_ = Literal["linear", "cosine"]
Parameterization = Literal["eps", "x0", "v"]
Weighting = Literal["none", "min_snr"]


@dataclass(frozen=True)
class Schedule:
    """The noise levels of one sampling run, from the start to the clean state (float64 on the CPU).

    Attributes:
        t: network timestep of each of the ``N`` steps (decreasing).
        alpha: ``N + 1`` signal coefficients of ``z = alpha x0 + sigma eps``; the last is the clean state's 1.
        sigma: ``N + 1`` noise coefficients; the last is 0.
    """

    t: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.t)

    def log_snr(self, i: int) -> float:
        """``lambda_i = log(alpha_i / sigma_i)`` (DPM-Solver's time variable); ``inf`` at the clean state."""
        return math.inf if self.sigma[i] == 0 else math.log(self.alpha[i] / self.sigma[i])


class Process:
    """The contract of a forward process (see the module docstring). Subclasses set :attr:`kind`."""

    #: the ``type`` of :meth:`spec`
    kind: ClassVar[str]
    #: number of discrete training timesteps ``T``
    timesteps: int
    #: whether :meth:`q_sample` and :meth:`prior` use ``y``: the interpolated input in the state
    #: space (``space.encode(up(y), y)``), as processes that start from the input do (residual
    #: shifting, bridges); the engine computes it only for such processes
    conditional: ClassVar[bool] = False
    #: whether the marginals are ``z_t = alpha_t x0 + sigma_t eps`` with the :class:`Schedule`'s
    #: ``alpha`` and ``sigma`` and nothing else in them: what the generic samplers (DDIM, DDPM,
    #: DPM-Solver++) and the zero-shot methods (:mod:`toolkit.zeroshot`) assume
    gaussian_marginals: ClassVar[bool] = False

    def sampling_schedule(self, steps: int, t_start: int | None = None) -> Schedule:
        """``steps`` noise levels from ``t_start`` (default ``T - 1``) down to the clean state."""
        raise NotImplementedError

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """A draw of ``z_t`` given ``x0`` ``(B, C, *S)``, timesteps ``t`` ``(B,)`` and standard normal ``noise``.

        ``y`` is the interpolated input in the state space (see :attr:`conditional`).
        """
        raise NotImplementedError

    def prior(self, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The start state ``z_T`` made from standard normal ``noise`` (and the condition, for processes that need it)."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output."""
        raise NotImplementedError

    def predict(self, out: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network output ``out`` at state ``z_t`` and timesteps ``t`` ``(B,)`` as ``(x0_hat, eps_hat)``."""
        raise NotImplementedError

    def eps_from_x0(
        self, z_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The ``eps_hat`` that goes with ``x0`` at ``z_t`` (after a guidance step moved ``x0_hat``).

        ``y`` is the interpolated input in the state space, for :attr:`conditional` processes.
        """
        raise NotImplementedError

    def network_input(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network sees of the state ``z_t`` at timesteps ``t`` ``(B,)``: the state itself by default.

        A process whose states grow with the noise (residual shifting) may scale them to a steady range.
        """
        return z_t

    def stepper(self, sampler: str, eta: float, schedule: Schedule) -> Stepper:
        """The sampler named ``sampler`` bound to ``schedule``: the engine's one way to get its steps.

        The default is the registered sampler (:func:`toolkit.samplers.make_sampler`); a process
        with steps of its own (residual shifting's posterior) returns its own
        :class:`~toolkit.samplers.Stepper` and refuses the names it has no steps for.

        Raises:
            ValueError: an unknown sampler, or one this process cannot run.
        """
        from toolkit.samplers import make_sampler  # samplers import this module

        return make_sampler(sampler, eta).init(schedule)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights ``(B,)`` in the network-target units."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError


def alpha_bar_schedule(kind: Schedule_, timesteps: int) -> torch.Tensor:
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


class GaussianProcess(Process):
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

    kind = "gaussian"
    gaussian_marginals = True

    def __init__(
        self,
        schedule: Schedule_ = "cosine",
        timesteps: int = 1000,
        parameterization: Parameterization = "x0",
        loss_weighting: Weighting = "none",
        min_snr_gamma: float = 5.0,
    ) -> None:
        if parameterization not in ("eps", "x0", "v"):
            raise ValueError(f"unknown parameterization {parameterization!r}")
        if loss_weighting not in ("none", "min_snr"):
            raise ValueError(f"unknown loss weighting {loss_weighting!r}")
        self.schedule = schedule
        self.timesteps = int(timesteps)
        self.parameterization = parameterization
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.alpha_bar = alpha_bar_schedule(schedule, self.timesteps)
        #: ``(sqrt(ab), sqrt(1 - ab))`` per timestep, float64 on the CPU; device copies in ``_tables``
        self._coef = torch.stack([self.alpha_bar.sqrt(), (1 - self.alpha_bar).sqrt()])
        self._tables: dict[torch.device, torch.Tensor] = {}

    # --- coefficients ---------------------------------------------------------------------
    def _table(self, device: torch.device) -> torch.Tensor:
        if device not in self._tables:
            self._tables[device] = device_table(self._coef, device)
        return self._tables[device]

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(ab_t)`` and ``sqrt(1 - ab_t)`` for timesteps ``t`` (B,), in ``like``'s dtype, shaped to broadcast on it.

        Looked up on ``like``'s device (no host synchronisation per step).
        """
        coef = self._table(like.device)[:, t.to(like.device).long()].to(like.dtype)
        return append_dims(coef[0], like.ndim), append_dims(coef[1], like.ndim)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        a, s = self.coefficients(t, x0)
        return a * x0 + s * noise

    def prior(self, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``p(z_T) = N(0, I)``: the noise itself."""
        return noise

    # --- parameterizations ---------------------------------------------------------------
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "eps":
            return noise
        if self.parameterization == "x0":
            return x0
        a, s = self.coefficients(t, x0)
        return a * noise - s * x0

    def predict(self, out: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, s = self.coefficients(t, z_t)
        if self.parameterization == "eps":
            return (z_t - s * out) / a, out
        if self.parameterization == "x0":
            return out, (z_t - a * out) / s
        return a * z_t - s * out, s * z_t + a * out

    def eps_from_x0(
        self, z_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        a, s = self.coefficients(t, z_t)
        return (z_t - a * x0) / s

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        if self.loss_weighting == "none":
            return torch.ones(t.shape, device=t.device)
        ab = self.alpha_bar[t.long().cpu()]
        snr = ab / (1 - ab)
        w = snr.clamp(max=self.min_snr_gamma)
        if self.parameterization == "eps":
            w = w / snr
        elif self.parameterization == "v":
            w = w / (snr + 1)
        return w.float().to(t.device)

    # --- sampling schedule ----------------------------------------------------------------
    def timestep_grid(self, steps: int, t_start: int | None = None) -> list[int]:
        """Evenly spaced integer timesteps from ``t_start`` (default ``T - 1``) down to 0, without repeats."""
        top = self.timesteps - 1 if t_start is None else int(t_start)
        if not 0 <= top < self.timesteps:
            raise ValueError(f"t_start must be in [0, {self.timesteps - 1}]")
        steps = max(1, min(int(steps), top + 1))
        ts = torch.linspace(top, 0, steps, dtype=torch.float64).round().long()
        return [int(t) for t in torch.unique_consecutive(ts)]

    def sampling_schedule(self, steps: int, t_start: int | None = None) -> Schedule:
        ts = self.timestep_grid(steps, t_start)
        ab = [float(self.alpha_bar[t]) for t in ts] + [1.0]
        return Schedule(
            t=tuple(float(t) for t in ts),
            alpha=tuple(math.sqrt(a) for a in ab),
            sigma=tuple(math.sqrt(1 - a) for a in ab),
        )

    def spec(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "schedule": self.schedule,
            "timesteps": self.timesteps,
            "parameterization": self.parameterization,
            "loss_weighting": self.loss_weighting,
            "min_snr_gamma": self.min_snr_gamma,
        }


_PROCESSES: dict[str, type[Process]] = {"gaussian": GaussianProcess}
#: processes of this package that live in modules of their own, imported when a spec names them
_BUILTIN_MODULES: dict[str, str] = {
    "resshift": "toolkit.process_resshift",
    "indi": "toolkit.process_indi",
    "cold": "toolkit.process_cold",
}


class InputStartProcess(Process):
    """The shared part of the processes that start from the input (ResShift, InDI, cold diffusion).

    Their states move from ``x0`` towards ``y``, the interpolated input in the state space, so they
    are :attr:`~Process.conditional`; the network predicts ``x0``; their ``T`` timesteps are few and
    sampled on an even grid. Subclasses set :attr:`title` (named in errors) and the forward maths.
    """

    conditional = True
    #: the process as errors name it
    title: ClassVar[str] = "this"

    def _need(self, y: torch.Tensor | None, what: str) -> torch.Tensor:
        """``y``, or a one-line error: these processes cannot run without the input."""
        if y is None:
            raise ValueError(f"the {self.title} process needs the interpolated input y for {what}")
        return y

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0

    def predict(self, out: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)``: the output is ``x0_hat``; ``eps_hat`` needs the input, so it is NaN here
        (the engine computes what it needs with :meth:`eps_from_x0` and the input)."""
        return out, torch.full_like(out, math.nan)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones(t.shape, device=t.device)

    def timestep_grid(self, steps: int, t_start: int | None = None) -> list[int]:
        """``steps`` evenly spaced timesteps from ``t_start`` (default ``T - 1``) down to 0, without repeats."""
        top = self.timesteps - 1 if t_start is None else int(t_start)
        if not 0 <= top < self.timesteps:
            raise ValueError(f"t_start must be in [0, {self.timesteps - 1}] for this {self.timesteps}-step process, got {t_start}")
        steps = max(1, min(int(steps), top + 1))
        ts = torch.linspace(top, 0, steps, dtype=torch.float64).round().long()
        return [int(t) for t in torch.unique_consecutive(ts)]


def register_process(name: str, cls: type[Process]) -> None:
    """Allow checkpoints to rebuild process ``cls`` from a spec whose ``type`` is ``name`` in this process.

    Packages declare processes of their own in the ``diffsr.processes`` entry points instead.
    """
    _PROCESSES[name] = cls


def process_names() -> list[str]:
    """The processes a checkpoint may name."""
    return sorted({*_PROCESSES, *_BUILTIN_MODULES})


def process_from_spec(spec: dict[str, Any]) -> Process:
    """Rebuild a process from :meth:`Process.spec` data (only known, registered types).

    Checkpoints written before processes had a ``type`` stored the Gaussian process's arguments
    alone: a spec without ``type`` is a :class:`GaussianProcess`.
    """
    kind = spec.get("type", "gaussian")
    if kind in _BUILTIN_MODULES and kind not in _PROCESSES:
        importlib.import_module(_BUILTIN_MODULES[kind])  # registers itself (register_process)
    return build_from_spec(_PROCESSES, {"type": "gaussian", **spec}, "process", group="diffsr.processes")


def timesteps_like(t: float | Sequence[float], z: torch.Tensor) -> torch.Tensor:
    """Network timesteps ``(B,)`` float32 on ``z``'s device for a scalar (or per-sample) ``t``."""
    return torch.as_tensor(t, dtype=torch.float32, device=z.device).expand(z.shape[0]).contiguous()
