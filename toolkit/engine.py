"""The sampling engine: one loop that super-resolves a normalised low-resolution input.

:func:`sample_canvas` is the only sampling loop. It asks a :class:`Canvas` where the state lives
and how its parts are seen, and drives the parts every path shares: the process's schedule and
prior, the stepper it binds (:meth:`toolkit.process.Process.stepper`: a registered sampler of
:mod:`toolkit.samplers`, or the process's own steps), the truncated starts, classifier-free
guidance, DDNM data consistency and the zero-shot methods' hooks (:mod:`toolkit.zeroshot`: a
correction of ``x0_hat``, a replaced step, a correction of the next state, jumps back to noisier
levels; in memory only). Two canvases exist:

* :class:`MemoryCanvas` (here): the whole batch as one tensor on the device; the network runs on
  it whole or tile by tile (:class:`toolkit.tiling.TiledDenoiser`);
* :class:`toolkit.streaming.StreamCanvas`: a raster or volume larger than memory, its state in
  float32 arrays (in memory or on disk) updated cell by cell, the network run on overlapping tiles,
  noise drawn from a positional field (:class:`toolkit.noise.NoiseField`).

:func:`ensemble_flips` makes the ensemble of ``options.samples`` samples (optionally mirrored:
the flip self-ensemble) for both; its mean is the output and its spread the uncertainty.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np
import torch

from toolkit.guidance import classifier_free, require_linear
from toolkit.noise import NoiseField
from toolkit.operators import Operator
from toolkit.process import Process, Schedule, timesteps_like
from toolkit.samplers import Callback, ModelFn, SamplerName, make_sampler
from toolkit.spaces import StateSpace
from toolkit.tiling import Tiling
from toolkit.utils import upsample
from toolkit.zeroshot import ZeroShot, ZeroShotOptions, bind, jump_back, method_plan

Consistency = Literal["none", "final", "every_step"]
Start = Literal["interpolation", "regression"]
Precision = Literal["32", "bf16", "fp16"]
Region = tuple[slice, ...]

AUTOCAST = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Guide(Protocol):
    """Something that reshapes the model function the sampler sees (classifier guidance)."""

    def wrap(self, model_fn: ModelFn, process: Process) -> ModelFn:
        """``model_fn`` ``(z, t) -> (x0_hat, eps_hat)`` guided."""
        ...


def network_precision(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """Autocast for the network at ``precision`` (``32``: none)."""
    dtype = AUTOCAST[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class SamplerOptions:
    """How to sample. Stored in checkpoints as the defaults for inference; one typed argument in configs.

    Attributes:
        sampler: a registered sampler (:func:`toolkit.samplers.sampler_names`): ``ddim`` (with
            ``eta``), ``ddpm`` (ancestral), ``dpmpp`` (DPM-Solver++ 2M), ...
        steps: number of network evaluations.
        eta: DDIM stochasticity (0 deterministic, 1 ancestral).
        guidance_scale: classifier-free guidance weight ``w`` (1 = conditional model only).
        consistency: data consistency with the operator: none, a final projection onto
            ``{x : A x = y}``, or DDNM's projection of ``x0_hat`` at every step (and the final one;
            needs a linear state space).
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
        zero_shot: run an unconditional model (a prior, or a conditional model with its null
            condition) as a zero-shot method told the operator (:mod:`toolkit.zeroshot`).
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
    zero_shot: ZeroShotOptions | None = None

    def __post_init__(self) -> None:
        if isinstance(self.zero_shot, dict):  # from a checkpoint's plain data
            object.__setattr__(self, "zero_shot", ZeroShotOptions(**self.zero_shot))
        make_sampler(self.sampler)  # an unknown name is an error here, not a silent default
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if int(self.samples) < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.consistency not in ("none", "final", "every_step"):
            raise ValueError(f"unknown consistency {self.consistency!r}; choose none, final or every_step")
        if self.start not in ("interpolation", "regression"):
            raise ValueError(f"unknown start {self.start!r}; choose interpolation or regression")

    def updated(self, **kwargs: Any) -> SamplerOptions:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    @property
    def final_projection(self) -> bool:
        """Whether the output is projected onto ``{x : A x = y}`` (never onto a noisy measurement)."""
        noisy = self.zero_shot is not None and self.zero_shot.sigma_y > 0
        return self.consistency != "none" and not noisy

    @property
    def regression_start(self) -> bool:
        return self.t_start is not None and self.start == "regression"

    def spec(self) -> dict[str, Any]:
        return asdict(self)


def check_options(options: SamplerOptions, space: StateSpace) -> None:
    """Refuse combinations that would run but give a wrong answer."""
    if options.consistency == "every_step":
        require_linear(space)


# --- the canvas: where the state of one run lives ------------------------------------------------------
class Canvas:
    """Where the state of one sampling run lives, and how its parts are seen.

    Named fields (``"z"``: the state, ``"x0"``: the blended data prediction, ``"prev0"``, ...: a
    multistep sampler's history) are read and written by cell, each ``(B, C_z, *cell)`` on the
    device. The cells partition the state.
    """

    cells: Sequence[Region]

    def allocate(self, names: Sequence[str]) -> None:
        """Make room for the named fields (zeros)."""
        raise NotImplementedError

    def read(self, name: str, cell: Region) -> torch.Tensor:
        raise NotImplementedError

    def write(self, name: str, cell: Region, value: torch.Tensor) -> None:
        raise NotImplementedError

    def noise(self, draw: int, cell: Region) -> torch.Tensor:
        """Standard normal noise over ``cell`` for draw ``draw`` (0: prior, 1: start, ``2 + i``: step ``i``)."""
        raise NotImplementedError

    def predict(self, t: float, loss: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """The guided network's data prediction at timestep ``t`` for state ``"z"``, into ``"x0"``.

        With ``loss`` (per item, of the data prediction) also its gradient with respect to the
        state through the network, into ``"grad"`` (DPS).
        """
        raise NotImplementedError

    def interpolated(self, cell: Region) -> torch.Tensor:
        """The interpolated input in the state space over ``cell`` (SDEdit's start estimate)."""
        raise NotImplementedError

    def consistent(self, x0: torch.Tensor, cell: Region) -> torch.Tensor:
        """DDNM: ``x0`` over ``cell`` with its image projected onto ``{x : A x = y}``, in the state space."""
        raise NotImplementedError

    def emit(self, cell: Region, z: torch.Tensor) -> None:
        """Decode the final state over ``cell`` (projected when asked) and hand the image on."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called once after every cell was emitted."""

    def zero_shot(self, schedule: Schedule) -> ZeroShot | None:
        """The zero-shot method of the options bound to this canvas's measurement (``None`` without one)."""
        options: SamplerOptions = self.options
        if options.zero_shot is not None:
            raise ValueError("zero-shot methods need the whole array in memory (this canvas streams it)")
        return None

    def peek(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The state and data prediction as whole tensors for a callback (``None`` when streamed)."""
        return None, None


def schedule_for(process: Process, options: SamplerOptions) -> Schedule:
    """The schedule ``options`` walk (a regression start takes one of the ``steps``)."""
    steps = max(1, options.steps - 1) if options.regression_start else options.steps
    return process.sampling_schedule(steps, options.t_start)


def network_calls(process: Process, options: SamplerOptions) -> int:
    """Network evaluations of one sample (for progress bars)."""
    plan = method_plan(options.zero_shot, len(schedule_for(process, options)))
    return sum(a[0] == "step" for a in plan) + int(options.regression_start)


@torch.no_grad()
def sample_canvas(
    canvas: Canvas, process: Process, options: SamplerOptions, callback: Callback | None = None
) -> None:
    """Draw one sample on ``canvas``: prior, optional truncated start, the sampler's steps, decode.

    Every random draw comes from ``canvas.noise``; every network evaluation from ``canvas.predict``.
    """
    schedule = schedule_for(process, options)
    if options.zero_shot is not None and not process.gaussian_marginals:
        raise ValueError(
            f"zero-shot methods assume z = alpha x0 + sigma eps; the {process.kind!r} process is not so "
            "(use a Gaussian-process checkpoint)"
        )
    stepper = process.stepper(options.sampler, options.eta, schedule)
    history = [f"prev{j}" for j in range(stepper.history)]
    canvas.allocate(["z", "x0", *history])
    def condition(cell: Region) -> torch.Tensor | None:
        return canvas.interpolated(cell) if process.conditional else None

    for cell in canvas.cells:
        canvas.write("z", cell, process.prior(canvas.noise(0, cell), condition(cell)))
    if options.t_start is not None:
        # truncated start: noise an estimate of x0 to the schedule's first level and sample from there
        if options.regression_start:
            canvas.predict(float(process.timesteps - 1))
            if callback is not None:
                callback(-1, None, None)
        for cell in canvas.cells:
            if options.regression_start:
                estimate = canvas.read("x0", cell)
                if options.consistency == "every_step":  # DDNM corrects every data prediction
                    estimate = canvas.consistent(estimate, cell)
            else:
                estimate = canvas.interpolated(cell)
            t0 = timesteps_like(schedule.t[0], estimate)
            canvas.write("z", cell, process.q_sample(estimate, t0, canvas.noise(1, cell), condition(cell)))
    method = canvas.zero_shot(schedule)
    if method is not None:
        method.check(stepper)
    plan = method_plan(options.zero_shot, len(schedule))
    for a, action in enumerate(plan):
        if action[0] == "jump":  # back to a noisier level (RePaint's resampling, DDNM+'s time travel)
            _, i, j = action
            for cell in canvas.cells:
                canvas.write("z", cell, jump_back(canvas.read("z", cell), schedule, i, j, canvas.noise(2 + a, cell)))
            continue
        i = action[1]
        t = schedule.t[i]
        canvas.predict(t, method.loss if method is not None and method.needs_grad else None)
        for cell in canvas.cells:
            z, x0 = canvas.read("z", cell), canvas.read("x0", cell)
            if options.consistency == "every_step":
                x0 = canvas.consistent(x0, cell)
            if method is not None:
                x0 = method.x0(x0, z, i)
            eps = process.eps_from_x0(z, x0, timesteps_like(t, z), condition(cell))
            draws = method.needs_noise(stepper, i) if method is not None else stepper.needs_noise(i)
            noise = canvas.noise(2 + a, cell) if draws else None
            previous = [canvas.read(name, cell) for name in history[: min(i, stepper.history)]]
            if method is None:
                z_next = stepper.step(z, x0, eps, i, noise, previous)
            else:
                z_next = method.step(stepper, z, x0, eps, i, noise, previous)
                extra = canvas.noise(2 + len(plan) + a, cell) if method.after_noise else None
                z_next = method.after(z_next, x0, i, extra, canvas.read("grad", cell) if method.needs_grad else None)
            canvas.write("z", cell, z_next)
            for j in range(min(i, stepper.history - 1), 0, -1):  # shift the history, newest first
                canvas.write(history[j], cell, previous[j - 1])
            if history:
                canvas.write(history[0], cell, x0)
        if callback is not None:
            callback(i, *canvas.peek())
    for cell in canvas.cells:
        canvas.emit(cell, canvas.read("z", cell))
    canvas.finish()


def flip_dims(k: int, spatial_dims: int) -> tuple[int, ...]:
    """Spatial axes (0-based) to mirror for ensemble member ``k``: the bits of ``k``."""
    return tuple(d for d in range(spatial_dims) if (k % 2**spatial_dims) >> d & 1)


def ensemble_flips(options: SamplerOptions, spatial_dims: int) -> list[tuple[int, ...]]:
    """The ensemble: one entry per sample, the spatial axes its input is mirrored along (none without ``flip_ensemble``).

    The mean of the samples is the output and their (unbiased) standard deviation the uncertainty;
    in memory the members run as one batch, streamed one after another (a running mean and spread).
    """
    return [flip_dims(k, spatial_dims) if options.flip_ensemble else () for k in range(max(1, int(options.samples)))]


def mirror(x: Any, flips: tuple[int, ...], first_spatial: int = 2) -> Any:
    """``x`` (tensor or array) mirrored along the spatial ``flips`` (axes counted from ``first_spatial``)."""
    if not flips:
        return x
    axes = tuple(first_spatial + d for d in flips)
    return x.flip(axes) if isinstance(x, torch.Tensor) else np.ascontiguousarray(np.flip(x, axes))


# --- in memory -----------------------------------------------------------------------------------------
class MemoryCanvas(Canvas):
    """The whole batch as one tensor on the device: one cell, the network run whole or tile by tile.

    Args:
        denoiser: the network ``(z, t, cond, drop) -> out``.
        process, space, operator: the model's parts.
        y: ``(B, C, *spatial_lr)`` normalised low-resolution batch.
        options: sampling options (guidance, consistency).
        noise: a ``torch.Generator`` (draws in call order) or a positional :class:`NoiseField`
            (draws by position and key, as the streamed path does).
        members: ensemble members in the batch: item ``j`` is member ``j // (B / members)``
            (the positional noise key ``(member, draw)``, plus the item's index when above 0).
        tiling: run the network tile by tile, blending inside every step.
        precision: ``bf16`` or ``fp16`` runs the network under autocast (the sampler's arithmetic
            stays float32).
        reference: ``(B, R, *spatial_hr)`` normalised reference on the output grid (reference-guided
            SR: a sharper co-registered image, seen by the network as extra condition channels).
        guide: wraps the model function ``(z, t) -> (x0_hat, eps_hat)`` (classifier guidance:
            :class:`toolkit.classifier.ClassifierGuidance`); it may take gradients through its own
            network.
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        process: Process,
        space: StateSpace,
        operator: Operator,
        y: torch.Tensor,
        options: SamplerOptions,
        noise: torch.Generator | NoiseField,
        members: int = 1,
        tiling: Tiling | None = None,
        precision: Precision = "32",
        reference: torch.Tensor | None = None,
        guide: Guide | None = None,
    ) -> None:
        self.process, self.space, self.operator, self.y, self.options = process, space, operator, y, options
        self.hr_shape = operator.hr_shape(y.shape[2:])
        self.state_shape = (y.shape[0], *space.state_shape(y.shape[1], self.hr_shape))
        self.cells = [tuple(slice(0, n) for n in self.state_shape[2:])]
        self.source, self.precision = noise, precision
        self.per_member = max(1, y.shape[0] // max(1, members))
        net = tiling.wrap(denoiser) if tiling is not None else denoiser
        if options.zero_shot is None:
            cond = space.condition(y, self.hr_shape)
            if reference is not None:
                cond = torch.cat([cond, space.condition(reference.to(cond), self.hr_shape)], dim=1)
            self.model_fn = classifier_free(net, process, cond, options.guidance_scale)
        else:  # an unconditional model: a prior, or a conditional model's null condition
            if reference is not None:
                raise ValueError("a reference conditions a trained model; zero-shot methods take none")
            self.model_fn = classifier_free(net, process, None, 1.0)
        if guide is not None:
            self.model_fn = guide.wrap(self.model_fn, process)
        self.fields: dict[str, torch.Tensor] = {}
        self.output: torch.Tensor | None = None

    def allocate(self, names: Sequence[str]) -> None:
        self.fields = {n: torch.zeros(self.state_shape, device=self.y.device, dtype=self.y.dtype) for n in names}

    def read(self, name: str, cell: Region) -> torch.Tensor:
        return self.fields[name]

    def write(self, name: str, cell: Region, value: torch.Tensor) -> None:
        self.fields[name] = value

    def noise(self, draw: int, cell: Region) -> torch.Tensor:
        if isinstance(self.source, torch.Generator):
            n = torch.randn(self.state_shape, generator=self.source, device=self.source.device, dtype=torch.float32)
        else:
            spatial = self.state_shape[2:]
            keys = [divmod(j, self.per_member) for j in range(self.state_shape[0])]
            n = torch.stack([
                torch.from_numpy(self.source.region((k, draw, *((b,) if b else ())), [0] * len(spatial), spatial))
                for k, b in keys
            ])
        return n.to(device=self.y.device, dtype=self.y.dtype)

    def predict(self, t: float, loss: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        z = self.fields["z"]
        if loss is None:
            with network_precision(z.device, self.precision):
                x0, _ = self.model_fn(z, timesteps_like(t, z))
        else:
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                with network_precision(z.device, self.precision):
                    x0, _ = self.model_fn(z, timesteps_like(t, z))
                (grad,) = torch.autograd.grad(loss(x0.to(z.dtype)).sum(), z)
            self.fields["grad"] = grad.detach()
            x0 = x0.detach()
        self.fields["x0"] = x0.to(z.dtype)

    def zero_shot(self, schedule: Schedule) -> ZeroShot | None:
        zs = self.options.zero_shot
        if zs is None:
            return None
        return bind(zs, self.operator, self.space, self.y, zs.sigma_y * zs.unit, schedule)

    def peek(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.fields.get("z"), self.fields.get("x0")

    def interpolated(self, cell: Region) -> torch.Tensor:
        return self.space.encode(upsample(self.y, self.hr_shape), self.y)

    def consistent(self, x0: torch.Tensor, cell: Region) -> torch.Tensor:
        x = self.space.decode(x0, self.y, self.hr_shape)
        return self.space.encode(self.operator.project(x, self.y), self.y)

    def emit(self, cell: Region, z: torch.Tensor) -> None:
        x = self.space.decode(z, self.y, self.hr_shape)
        self.output = self.operator.project(x, self.y) if self.options.final_projection else x


@torch.no_grad()
def sample_sr_with_uncertainty(
    denoiser: torch.nn.Module,
    process: Process,
    space: StateSpace,
    operator: Operator,
    y: torch.Tensor,
    options: SamplerOptions,
    generator: torch.Generator | NoiseField,
    callback: Callback | None = None,
    tiling: Tiling | None = None,
    precision: Precision = "32",
    reference: torch.Tensor | None = None,
    guide: Guide | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean and standard deviation (``None`` for one sample) over ``options.samples`` samples per input.

    Args:
        y: ``(B, C, *spatial_lr)`` normalised low-resolution batch.
        generator: source of every random draw: a ``torch.Generator`` (drawn in order), or a
            positional :class:`NoiseField` (the streamed path's noise: same seed, same result).
        callback: called after every network evaluation with ``(i, z, x0_hat)``.
        tiling: run the network tile by tile, blending inside every step.
        precision: network precision (autocast).
        reference: ``(B, R, *spatial_hr)`` normalised reference on the output grid, for a model
            trained with one (mirrored with the input in the flip ensemble).
        guide: wraps the model function (classifier guidance).

    Returns:
        ``(B, C, *spatial_hr)`` normalised mean and standard deviation.
    """
    check_options(options, space)
    flips = ensemble_flips(options, y.ndim - 2)
    batch = torch.cat([mirror(y, f) for f in flips])  # sample k of item b at k * B + b
    ref = None if reference is None else torch.cat([mirror(reference, f) for f in flips])
    canvas = MemoryCanvas(
        denoiser, process, space, operator, batch, options, generator, len(flips), tiling, precision, ref, guide
    )
    sample_canvas(canvas, process, options, callback)
    assert canvas.output is not None
    if len(flips) == 1:
        return canvas.output, None
    x = torch.stack([mirror(xk, f) for xk, f in zip(canvas.output.chunk(len(flips)), flips)])
    return x.mean(0), x.std(0)


@torch.no_grad()
def sample_sr(
    denoiser: torch.nn.Module,
    process: Process,
    space: StateSpace,
    operator: Operator,
    y: torch.Tensor,
    options: SamplerOptions,
    generator: torch.Generator | NoiseField,
    callback: Callback | None = None,
    tiling: Tiling | None = None,
    precision: Precision = "32",
    reference: torch.Tensor | None = None,
    guide: Guide | None = None,
) -> torch.Tensor:
    """One super-resolved sample per item of ``y`` (the mean over ``options.samples`` when above 1)."""
    return sample_sr_with_uncertainty(
        denoiser, process, space, operator, y, options, generator, callback, tiling, precision, reference, guide
    )[0]
