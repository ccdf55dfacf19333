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
        ab, ab_prev = ab_all[i], ab_all[i + 1]
        x0, eps = model_fn(z, _t(t, z))
        sigma = eta * math.sqrt(max((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev), 0.0)) if eta > 0 else 0.0
        dir_coef = math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
        z = math.sqrt(ab_prev) * x0 + dir_coef * eps
        if sigma > 0:
            if generator is None:
                raise ValueError("a stochastic sampler needs a generator")
            noise = torch.randn(z.shape, generator=generator, device=generator.device, dtype=torch.float32)
            z = z + sigma * noise.to(device=z.device, dtype=z.dtype)
        if callback is not None:
            callback(i, z, x0)
    return z


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
        ab, ab_next = ab_all[i], ab_all[i + 1]
        x0, _ = model_fn(z, _t(t, z))
        alpha, sigma = math.sqrt(ab), math.sqrt(1 - ab)
        if ab_next >= 1.0:
            z = x0  # the clean end point (sigma' = 0): first-order update gives x0 exactly
        else:
            alpha_n, sigma_n = math.sqrt(ab_next), math.sqrt(1 - ab_next)
            h = math.log(alpha_n / sigma_n) - math.log(alpha / sigma)
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            z = (sigma_n / sigma) * z - alpha_n * math.expm1(-h) * d
            h_prev = h
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
