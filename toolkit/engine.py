"""The sampling engine: super-resolve a normalised low-resolution batch with the parts of a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch

from toolkit.denoiser import UNetDenoiser
from toolkit.guidance import classifier_free, range_null_space
from toolkit.operators import Operator
from toolkit.process import GaussianProcess
from toolkit.samplers import Callback, SamplerName, run_sampler
from toolkit.spaces import StateSpace
from toolkit.tiling import Tiling
from toolkit.utils import upsample

Consistency = Literal["none", "final", "every_step"]
Start = Literal["interpolation", "regression"]


@dataclass(frozen=True)
class SamplerOptions:
    """How to sample. Stored in checkpoints as the defaults for inference.

    Attributes:
        sampler: ``ddpm`` (ancestral), ``ddim`` (with ``eta``) or ``dpmpp`` (DPM-Solver++ 2M).
        steps: number of network evaluations.
        eta: DDIM stochasticity (0 deterministic, 1 ancestral).
        guidance_scale: classifier-free guidance weight ``w`` (1 = conditional model only).
        consistency: data consistency with the operator: none, a final projection onto
            ``{x : A x = y}``, or DDNM's projection of ``x0_hat`` at every step (and the final one).
        t_start: start from this timestep instead of ``T - 1`` (truncated start).
        start: with ``t_start``, the estimate that is noised to ``t_start``: the interpolated
            input (SDEdit), or the network's own prediction from pure noise at ``T`` (the
            regression estimate ``E[x0 | y]``; a deterministic start as in CCDF, Chung et al.
            2022, and DifFace), which takes one of the ``steps``.
        samples: draw this many samples per input and return their mean (a Monte Carlo
            estimate of the posterior mean, the PSNR-optimal output) and their standard
            deviation (the uncertainty: where the model is unsure, it may hallucinate).
        flip_ensemble: give sample ``k`` the input mirrored along the spatial axes set in the
            bits of ``k`` and mirror its output back (geometric self-ensemble, as EDSR+), so
            the mean also averages out the network's orientation bias.
    """

    sampler: SamplerName = "ddim"
    steps: int = 20
    eta: float = 0.0
    guidance_scale: float = 1.0
    consistency: Consistency = "final"
    t_start: int | None = None
    start: Start = "interpolation"
    samples: int = 1
    flip_ensemble: bool = False

    def updated(self, **kwargs: Any) -> SamplerOptions:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    def spec(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def sample_sr_with_uncertainty(
    denoiser: UNetDenoiser,
    process: GaussianProcess,
    space: StateSpace,
    operator: Operator,
    y: torch.Tensor,
    options: SamplerOptions,
    generator: torch.Generator,
    callback: Callback | None = None,
    tiling: Tiling | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean and standard deviation (``None`` for one sample) over ``options.samples`` samples per input.

    The samples run as one batch of ``K * B`` items (sample ``k`` of item ``b`` at ``k * B + b``).
    """
    k = max(1, int(options.samples))
    if k == 1:
        return sample_sr(denoiser, process, space, operator, y, options, generator, callback, tiling), None
    flips = [_flip_dims(i, y.ndim - 2) if options.flip_ensemble else () for i in range(k)]
    batch = torch.cat([y.flip(f) if f else y for f in flips])
    x = sample_sr(denoiser, process, space, operator, batch, options, generator, callback, tiling)
    x = torch.stack([xi.flip(f) if f else xi for xi, f in zip(x.chunk(k), flips)])
    return x.mean(0), x.std(0)


def _flip_dims(k: int, spatial_dims: int) -> tuple[int, ...]:
    """Spatial dims (of a ``(B, C, *spatial)`` tensor) to mirror for ensemble member ``k``."""
    return tuple(2 + d for d in range(spatial_dims) if (k % 2**spatial_dims) >> d & 1)


@torch.no_grad()
def sample_sr(
    denoiser: UNetDenoiser,
    process: GaussianProcess,
    space: StateSpace,
    operator: Operator,
    y: torch.Tensor,
    options: SamplerOptions,
    generator: torch.Generator,
    callback: Callback | None = None,
    tiling: Tiling | None = None,
) -> torch.Tensor:
    """Draw one super-resolved sample per item of ``y`` (``options.samples`` is not looked at here).

    Args:
        y: ``(B, C, *spatial_lr)`` normalised low-resolution batch.
        generator: source of every random draw (the prior and stochastic steps).
        callback: called after every step with ``(i, z, x0_hat)``.
        tiling: run the network tile by tile, blending inside every step.

    Returns:
        ``(B, C, *spatial_hr)`` normalised high-resolution sample.
    """
    hr_shape = operator.hr_shape(y.shape[2:])
    cond = space.condition(y, hr_shape)
    net = tiling.wrap(denoiser) if tiling is not None else denoiser
    model_fn = classifier_free(net, process, cond, options.guidance_scale)
    if options.consistency == "every_step":
        model_fn = range_null_space(model_fn, process, space, operator, y, hr_shape)
    shape = (y.shape[0], *space.state_shape(y.shape[1], hr_shape))
    z = process.prior(shape, generator, y.device, y.dtype)
    steps = options.steps
    if options.t_start is not None:
        # truncated start: noise an estimate of x0 to t_start and sample from there
        if options.start == "regression":
            t_top = torch.full((y.shape[0],), float(process.timesteps - 1), device=y.device)
            estimate, _ = model_fn(z, t_top)
            steps = max(1, steps - 1)
            if callback is not None:
                callback(-1, z, estimate)
        else:
            estimate = space.encode(upsample(y, hr_shape), y)
        timesteps, alpha_bars = process.sampling_schedule(steps, options.t_start)
        a, s = process.coefficients(timesteps[:1].expand(y.shape[0]), z)
        noise = process.prior(shape, generator, y.device, y.dtype)
        z = a * estimate + s * noise
    else:
        timesteps, alpha_bars = process.sampling_schedule(steps)
    z = run_sampler(options.sampler, model_fn, z, timesteps, alpha_bars, options.eta, generator, callback)
    x = space.decode(z, y, hr_shape)
    if options.consistency != "none":
        x = operator.project(x, y)
    return x
