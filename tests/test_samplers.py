"""Samplers against a denoiser with a closed-form answer: Gaussian data x0 ~ N(mu, s^2).

For Gaussian data the optimal denoiser is E[x0 | z_t] = mu + sqrt(ab) s^2 / (ab s^2 + 1 - ab) (z_t - sqrt(ab) mu),
and the probability-flow ODE maps z_T to x0 = mu + s (z_T - sqrt(ab_T) mu) / sqrt(ab_T s^2 + 1 - ab_T).
"""

from __future__ import annotations

import math

import pytest
import torch

from toolkit.engine import SamplerOptions
from toolkit.process import GaussianProcess
from toolkit.samplers import make_sampler, run_sampler, sampler_names

MU, S = 0.3, 0.5


def gaussian_model(proc: GaussianProcess):  # type: ignore[no-untyped-def]
    def model_fn(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, s = proc.coefficients(t, z)
        x0 = MU + a * S**2 / (a**2 * S**2 + s**2) * (z - a * MU)
        return x0, proc.eps_from_x0(z, x0, t)

    return model_fn


def exact_ode(z_T: torch.Tensor, ab_T: float) -> torch.Tensor:
    return MU + S * (z_T - math.sqrt(ab_T) * MU) / math.sqrt(ab_T * S**2 + 1 - ab_T)


@pytest.mark.parametrize(
    "sampler,order,final",
    [("ddim", 1.0, 0.03), ("dpmpp", 2.0, 0.006), ("dpmpp_3m", 2.7, 0.003)],
    ids=["ddim", "dpmpp", "dpmpp_3m"],
)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ode_samplers_converge_to_exact_solution(sampler: str, order: float, final: float, schedule: str) -> None:
    """The error falls as steps grow, at the solver's order (1 for DDIM, 2 for DPM-Solver++ 2M, about 3 for 3M).

    (A third-order multistep solver is erratic below ~50 steps of these schedules, so 3M starts there.)
    """
    proc = GaussianProcess(schedule)
    model_fn = gaussian_model(proc)
    z_T = torch.randn(4, 1, 8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (50, 100, 200) if sampler == "dpmpp_3m" else (20, 50, 100, 200):
        sch = proc.sampling_schedule(steps)
        out = run_sampler(sampler, model_fn, z_T, sch)
        errors.append(float((out - exact_ode(z_T, sch.alpha[0] ** 2)).abs().max()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < final, errors
    observed_order = math.log2(errors[-2] / errors[-1])
    assert observed_order > order - 0.3, (observed_order, errors)


def test_dpmpp_beats_ddim_at_equal_steps() -> None:
    proc = GaussianProcess("linear")
    model_fn = gaussian_model(proc)
    z_T = torch.randn(4, 1, 8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sch = proc.sampling_schedule(100)
    exact = exact_ode(z_T, sch.alpha[0] ** 2)
    e_ddim = (run_sampler("ddim", model_fn, z_T, sch) - exact).abs().max()
    e_dpm = (run_sampler("dpmpp", model_fn, z_T, sch) - exact).abs().max()
    assert e_dpm < 0.5 * e_ddim
    e_3m = (run_sampler("dpmpp_3m", model_fn, z_T, sch) - exact).abs().max()
    assert e_3m < 0.9 * e_dpm


@pytest.mark.parametrize("name,eta", [("ddpm", 1.0), ("ddim", 0.5)])
def test_stochastic_samplers_match_the_data_distribution(name: str, eta: float) -> None:
    proc = GaussianProcess("cosine")
    model_fn = gaussian_model(proc)
    stats = []
    for steps in (10, 250):
        g = torch.Generator().manual_seed(1)
        z_T = torch.randn(10000, 1, 2, generator=g, dtype=torch.float64)
        out = run_sampler(make_sampler(name, eta), model_fn, z_T, proc.sampling_schedule(steps), generator=g)
        stats.append((abs(float(out.mean()) - MU), abs(float(out.std()) - S)))
    assert stats[-1][0] < 0.01 and stats[-1][1] < 0.01, stats
    assert stats[-1][1] < stats[0][1]


def test_seeded_sampling_is_reproducible() -> None:
    proc = GaussianProcess()
    model_fn = gaussian_model(proc)
    sch = proc.sampling_schedule(10)
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        z = torch.randn(2, 1, 4, 4, generator=g)
        runs.append(run_sampler("ddpm", model_fn, z, sch, generator=g))
    assert torch.equal(runs[0], runs[1])


def test_unknown_sampler_is_an_error_everywhere() -> None:
    """One registry: the engine, the options (configs, checkpoints) and the CLI refuse an unknown name."""
    proc = GaussianProcess()
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        run_sampler("euler", gaussian_model(proc), torch.zeros(1, 1, 2), proc.sampling_schedule(2))
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        SamplerOptions(sampler="euler")
    from pipelines.cli import _parser

    upscale = next(a for a in _parser()._subparsers._group_actions[0].choices["upscale"]._actions if a.dest == "sampler")  # type: ignore[union-attr]
    assert sorted(upscale.choices) == sampler_names()
