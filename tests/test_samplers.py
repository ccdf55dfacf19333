"""Samplers against a denoiser with a closed-form answer: Gaussian data x0 ~ N(mu, s^2).

For Gaussian data the optimal denoiser is E[x0 | z_t] = mu + sqrt(ab) s^2 / (ab s^2 + 1 - ab) (z_t - sqrt(ab) mu),
and the probability-flow ODE maps z_T to x0 = mu + s (z_T - sqrt(ab_T) mu) / sqrt(ab_T s^2 + 1 - ab_T).
"""

from __future__ import annotations

import math

import pytest
import torch

from toolkit.process import GaussianProcess
from toolkit.samplers import run_sampler, sample_ddim, sample_dpmpp_2m

MU, S = 0.3, 0.5


def gaussian_model(proc: GaussianProcess):  # type: ignore[no-untyped-def]
    def model_fn(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = proc.alpha_bar[t.long()].to(z.dtype).reshape(-1, *([1] * (z.ndim - 1)))
        x0 = MU + ab.sqrt() * S**2 / (ab * S**2 + 1 - ab) * (z - ab.sqrt() * MU)
        eps = (z - ab.sqrt() * x0) / (1 - ab).sqrt()
        return x0, eps

    return model_fn


def exact_ode(z_T: torch.Tensor, ab_T: float) -> torch.Tensor:
    return MU + S * (z_T - math.sqrt(ab_T) * MU) / math.sqrt(ab_T * S**2 + 1 - ab_T)


@pytest.mark.parametrize(
    "sampler,order,final",
    [(sample_ddim, 1.0, 0.03), (sample_dpmpp_2m, 2.0, 0.006)],
    ids=["ddim", "dpmpp"],
)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ode_samplers_converge_to_exact_solution(sampler, order: float, final: float, schedule: str) -> None:  # type: ignore[no-untyped-def]
    """The error falls as steps grow, at the solver's order (1 for DDIM, 2 for DPM-Solver++ 2M)."""
    proc = GaussianProcess(schedule)
    model_fn = gaussian_model(proc)
    z_T = torch.randn(4, 1, 8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (20, 50, 100, 200):
        ts, ab = proc.sampling_schedule(steps)
        out = sampler(model_fn, z_T, ts, ab)
        errors.append(float((out - exact_ode(z_T, float(ab[0]))).abs().max()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < final, errors
    observed_order = math.log2(errors[-2] / errors[-1])
    assert observed_order > order - 0.3, (observed_order, errors)


def test_dpmpp_beats_ddim_at_equal_steps() -> None:
    proc = GaussianProcess("linear")
    model_fn = gaussian_model(proc)
    z_T = torch.randn(4, 1, 8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts, ab = proc.sampling_schedule(100)
    exact = exact_ode(z_T, float(ab[0]))
    e_ddim = (sample_ddim(model_fn, z_T, ts, ab) - exact).abs().max()
    e_dpm = (sample_dpmpp_2m(model_fn, z_T, ts, ab) - exact).abs().max()
    assert e_dpm < 0.5 * e_ddim


@pytest.mark.parametrize("name,eta", [("ddpm", 1.0), ("ddim", 0.5)])
def test_stochastic_samplers_match_the_data_distribution(name: str, eta: float) -> None:
    proc = GaussianProcess("cosine")
    model_fn = gaussian_model(proc)
    stats = []
    for steps in (10, 250):
        g = torch.Generator().manual_seed(1)
        z_T = torch.randn(10000, 1, 2, generator=g, dtype=torch.float64)
        ts, ab = proc.sampling_schedule(steps)
        out = run_sampler(name, model_fn, z_T, ts, ab, eta=eta, generator=g)
        stats.append((abs(float(out.mean()) - MU), abs(float(out.std()) - S)))
    assert stats[-1][0] < 0.01 and stats[-1][1] < 0.01, stats
    assert stats[-1][1] < stats[0][1]


def test_seeded_sampling_is_reproducible() -> None:
    proc = GaussianProcess()
    model_fn = gaussian_model(proc)
    ts, ab = proc.sampling_schedule(10)
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        z = torch.randn(2, 1, 4, 4, generator=g)
        runs.append(run_sampler("ddpm", model_fn, z, ts, ab, generator=g))
    assert torch.equal(runs[0], runs[1])


def test_unknown_sampler() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        run_sampler("euler", gaussian_model(GaussianProcess()), torch.zeros(1), torch.tensor([1]), torch.tensor([0.5, 1.0]))  # type: ignore[arg-type]
