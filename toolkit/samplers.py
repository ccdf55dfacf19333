"""Samplers as pure functions over a schedule (k-diffusion style).

Each takes ``model_fn(z, t) -> (x0_hat, eps_hat)`` where ``t`` is a ``(B,)`` float tensor of
timesteps, a starting state ``z``, the decreasing ``timesteps`` (N,) and their ``alpha_bars``
(N + 1,) ending with 1.0 (the clean state), and returns the final state. Nothing is stored
between calls; every random draw comes from ``generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]
SamplerName = Literal["ddpm", "ddim", "dpmpp"]


def _t(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return t.to(device=z.device, dtype=torch.float32).expand(z.shape[0])


@torch.no_grad()
def sample_ddim(
    model_fn: ModelFn,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    alpha_bars: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM (Song et al., 2021): ``z' = sqrt(ab') x0 + sqrt(1 - ab' - s^2) eps + s n``.

    ``s = eta * sqrt((1 - ab') / (1 - ab)) * sqrt(1 - ab / ab')``; ``eta = 0`` is the
    deterministic probability-flow discretisation, ``eta = 1`` the DDPM ancestral sampler.
    """
    ab_all = alpha_bars.tolist()
    for i, t in enumerate(timesteps):
        x0, eps = model_fn(z, _t(t, z))
        c_x0, c_eps, sigma = ddim_coefficients(ab_all[i], ab_all[i + 1], eta)
        z = c_x0 * x0 + c_eps * eps
        if sigma > 0:
            if generator is None:
                raise ValueError("a stochastic sampler needs a generator")
            noise = torch.randn(z.shape, generator=generator, device=generator.device, dtype=torch.float32)
            z = z + sigma * noise.to(device=z.device, dtype=z.dtype)
        if callback is not None:
            callback(i, z, x0)
    return z


def ddim_coefficients(ab: float, ab_prev: float, eta: float) -> tuple[float, float, float]:
    """One DDIM step from ``ab`` to ``ab_prev``: ``z' = c_x0 * x0 + c_eps * eps + sigma * n``."""
    sigma = eta * math.sqrt(max((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev), 0.0)) if eta > 0 else 0.0
    return math.sqrt(ab_prev), math.sqrt(max(1 - ab_prev - sigma**2, 0.0)), sigma


def dpmpp_2m_update(
    z: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor | None, ab: float, ab_next: float, h_prev: float
) -> tuple[torch.Tensor, float]:
    """One DPM-Solver++(2M) step from ``ab`` to ``ab_next``; returns the new state and the step ``h``.

    ``x0_prev`` and ``h_prev`` are the previous step's data prediction and step (``None``/0 on
    the first step, which is then first order).
    """
    if ab_next >= 1.0:
        return x0, 0.0  # the clean end point (sigma' = 0): first-order update gives x0 exactly
    alpha, sigma = math.sqrt(ab), math.sqrt(1 - ab)
    alpha_n, sigma_n = math.sqrt(ab_next), math.sqrt(1 - ab_next)
    h = math.log(alpha_n / sigma_n) - math.log(alpha / sigma)
    d = x0
    if x0_prev is not None:
        r = h_prev / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    return (sigma_n / sigma) * z - alpha_n * math.expm1(-h) * d, h


def sample_ddpm(
    model_fn: ModelFn,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    alpha_bars: torch.Tensor,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al., 2020) over the given timesteps.

    Each step draws from the posterior ``q(z_{t'} | z_t, x0_hat)`` with variance
    ``(1 - ab') / (1 - ab) * (1 - ab / ab')`` (the "beta tilde" of DDPM); on a strided schedule
    this is the respaced DDPM of Nichol & Dhariwal. It equals DDIM with ``eta = 1``.
    """
    return sample_ddim(model_fn, z, timesteps, alpha_bars, eta=1.0, generator=generator, callback=callback)


@torch.no_grad()
def sample_dpmpp_2m(
    model_fn: ModelFn,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    alpha_bars: torch.Tensor,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022), the multistep second-order data-prediction solver.

    With ``lambda = log(alpha / sigma)`` and step ``h = lambda' - lambda``:
    ``z' = (sigma' / sigma) z - alpha' (e^{-h} - 1) D`` where ``D = x0`` on the first and last
    step and ``D = (1 + 1 / (2 r)) x0 - 1 / (2 r) x0_prev`` with ``r = h_prev / h`` otherwise.
    """
    del generator  # deterministic
    ab_all = alpha_bars.tolist()
    x0_prev: torch.Tensor | None = None
    h_prev = 0.0
    for i, t in enumerate(timesteps):
        x0, _ = model_fn(z, _t(t, z))
        z, h = dpmpp_2m_update(z, x0, x0_prev, ab_all[i], ab_all[i + 1], h_prev)
        h_prev = h or h_prev
        x0_prev = x0
        if callback is not None:
            callback(i, z, x0)
    return z


def run_sampler(
    name: SamplerName,
    model_fn: ModelFn,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    alpha_bars: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Dispatch to a sampler by name (``ddpm``, ``ddim`` with ``eta``, ``dpmpp``)."""
    if name == "ddim":
        return sample_ddim(model_fn, z, timesteps, alpha_bars, eta=eta, generator=generator, callback=callback)
    if name == "ddpm":
        return sample_ddpm(model_fn, z, timesteps, alpha_bars, generator=generator, callback=callback)
    if name == "dpmpp":
        return sample_dpmpp_2m(model_fn, z, timesteps, alpha_bars, generator=generator, callback=callback)
    raise ValueError(f"unknown sampler {name!r}; choose ddpm, ddim or dpmpp")
