"""Domains as plug-ins: the contract ``pipelines/`` sees, the requests it passes, and the registry.

A domain (images, mri, satellite, faces, or one another package installs) is one :class:`Domain`
object declared in the entry-point group ``diffsr.domains`` (``pyproject.toml``)::

    [project.entry-points."diffsr.domains"]
    mri = "domains.mri.plugin:DOMAIN"

It says which requests it takes (:meth:`Domain.owns`, :meth:`Domain.accepts`) and carries them
out (:meth:`Domain.degrade`, :meth:`Domain.upscale`, :meth:`Domain.evaluate`). ``pipelines/``
loops over :func:`registered` and names no domain.

Precedence (:func:`select`), checkpoint first, then input:

1. the first domain, in :attr:`Domain.order`, that *owns* the request: the checkpoint was
   trained for it (``spec["domain"]["kind"]``, or a domain's mark on older checkpoints), or an
   option only it understands asks for it (``--faces``, ``--whole-photo``, ``--operator mtf``);
2. a checkpoint of a kind no installed domain owns is refused;
3. else the first domain that *accepts* the input file (for ``evaluate``: any of the files).

Orders: faces 10, mri 20, satellite 30, images 90 (images reads any other file, so it is last).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from domains.files import atomic_target, check_decoded_size

if TYPE_CHECKING:
    import torch

    from toolkit.checkpoint import SRModel
    from toolkit.engine import SamplerOptions
    from toolkit.tiling import Tiling
    from toolkit.zeroshot import ZeroShotOptions

#: the entry-point group domains are declared in
GROUP = "diffsr.domains"


class InputError(ValueError):
    """Input that cannot be processed: the message names the file and the problem."""


@dataclass(kw_only=True)
class Request:
    """What every request carries; the checkpoint's plain data (if any) is read once, on first use."""

    overwrite: bool = False
    seed: int = 0

    @property
    def inputs(self) -> list[Path]:
        """The input files the domain is chosen by."""
        raise NotImplementedError

    @property
    def checkpoint_data(self) -> dict[str, Any]:
        """The checkpoint's plain-data entries (``"diffsr"``: the model description); ``{}`` without one."""
        return {}

    @property
    def spec(self) -> dict[str, Any]:
        """The checkpoint's model description (``{}`` without a checkpoint)."""
        return self.checkpoint_data.get("diffsr") or {}

    @property
    def kind(self) -> str | None:
        """The domain the checkpoint was trained for (``spec["domain"]["kind"]``), ``None`` when unmarked."""
        return (self.spec.get("domain") or {}).get("kind")


@dataclass(kw_only=True)
class DegradeRequest(Request):
    """``diffsr degrade``: write the low-resolution version of ``src`` to ``dst``."""

    src: Path
    dst: Path
    scale: int | Sequence[int] = 2
    operator: str = "area"
    volume_index: int | None = None
    bands: Sequence[int] | None = None
    mtf: float = 0.3
    faces: bool = False
    size: int | None = None

    def __post_init__(self) -> None:
        self.src, self.dst = Path(self.src), Path(self.dst)

    @property
    def inputs(self) -> list[Path]:
        return [self.src]


#: the zero-shot method's parameters a request carries, by request field and :class:`toolkit.zeroshot.ZeroShotOptions` field
ZERO_SHOT_PARAMETERS = {
    "zeta": "zeta", "gdp_scale": "scale", "jumps": "jumps", "eta_b": "eta_b",
    "travel_length": "travel_length", "travel_repeat": "travel_repeat",
}
#: the command-line option of each zero-shot field (named in errors)
ZERO_SHOT_OPTIONS = {
    "operator": "--operator", "mtf": "--mtf", "zeta": "--zeta", "gdp_scale": "--gdp-scale", "jumps": "--jumps",
    "eta_b": "--eta-b", "travel_length": "--travel-length", "travel_repeat": "--travel-repeat",
}


@dataclass(kw_only=True)
class ModelRequest(Request):
    """A request that runs a checkpoint (``checkpoint``, or the already loaded ``model``).

    Zero-shot SR (:mod:`toolkit.zeroshot`): with ``zero_shot`` (a method name) the model runs
    unconditionally, told the degradation ``operator`` (a name of
    :data:`toolkit.operators.OPERATOR_NAMES`) at ``scale`` (one factor, or one per axis; ``mtf``
    for the sensor model) and the input's noise ``sigma_y`` (a fraction of the signal's span:
    the data units the checkpoint's normalisation maps onto [-1, 1]). A prior (``spec["prior"]``) runs only so; a conditional checkpoint whose state space
    does not use the input (pixel) runs with its null condition; one whose space does (residual)
    is refused. ``eta`` is the sampler's eta and, given, also DDRM's / DDNM+'s; ``zeta`` (DPS),
    ``gdp_scale`` (GDP), ``jumps`` (RePaint), ``eta_b`` (DDRM), ``travel_length`` and
    ``travel_repeat`` (DDNM+) are the methods' parameters (``None``: the method's default).
    """

    checkpoint: str | Path | None = None
    model: SRModel | None = None
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    eta: float | None = None
    samples: int | None = None
    device: str = "cpu"
    progress: bool = True
    tiling: Tiling | None | Literal["auto"] = "auto"
    precision: str = "32"
    bands: Sequence[int] | None = None
    scale: int | Sequence[int] | None = None
    zero_shot: str | None = None
    operator: str | None = None
    mtf: float | None = None
    sigma_y: float = 0.0
    zeta: float | None = None
    gdp_scale: float | None = None
    jumps: int | None = None
    eta_b: float | None = None
    travel_length: int | None = None
    travel_repeat: int | None = None
    #: none, final or every_step (``None``: the checkpoint's)
    consistency: str | None = None
    #: reference-guided SR: a co-registered high-resolution file on the output grid (evaluate: one per file)
    reference: str | Path | Sequence[str | Path] | None = None
    #: classifier guidance: a noise-aware classifier checkpoint, the class to steer to, the scale
    classifier: str | Path | None = None
    class_label: str | int | None = None
    classifier_scale: float | None = None

    def __post_init__(self) -> None:
        self.check_zero_shot()
        if self.classifier is None and (self.class_label is not None or self.classifier_scale is not None):
            raise InputError(f"{self.source}: --class and --classifier-scale need --classifier CKPT")
        if self.classifier is not None and self.class_label is None:
            raise InputError(f"{self.source}: --classifier {self.classifier} needs --class LABEL (the class to steer towards)")

    @property
    def source(self) -> str:
        """The checkpoint as errors name it."""
        return str(self.checkpoint if self.checkpoint is not None else getattr(self.model, "source", "the model"))

    def check_zero_shot(self) -> None:
        """Refuse zero-shot options that do not fit together, before any work (one line naming the checkpoint)."""
        from toolkit.operators import OPERATOR_NAMES
        from toolkit.zeroshot import method_names

        if self.zero_shot is None:
            given = [flag for name, flag in ZERO_SHOT_OPTIONS.items() if getattr(self, name) is not None]
            if given:
                raise InputError(f"{self.source}: {', '.join(given)}: zero-shot option(s), given without --zero-shot METHOD")
            return
        if self.zero_shot not in method_names():
            raise InputError(f"{self.source}: unknown zero-shot method {self.zero_shot!r} ({', '.join(method_names())})")
        missing = [flag for flag, value in (("--operator", self.operator), ("--scale", self.scale)) if value is None]
        if missing:
            raise InputError(
                f"{self.source}: --zero-shot {self.zero_shot} needs {' and '.join(missing)} "
                f"(the degradation the input went through, e.g. --operator area --scale 2)"
            )
        if self.operator not in OPERATOR_NAMES:
            raise InputError(f"{self.source}: unknown operator {self.operator!r} ({', '.join(OPERATOR_NAMES)})")
        if self.guidance is not None and self.guidance != 1:
            raise InputError(f"{self.source}: --guidance does not apply with --zero-shot (the model runs unconditionally)")
        if self.mtf is not None and self.operator != "mtf":
            raise InputError(f"{self.source}: --mtf applies to --operator mtf, not {self.operator}")

    def refuse_prior(self, prior: bool | None = None) -> None:
        """Refuse a prior (``prior``, default: the checkpoint's spec says so) without ``zero_shot``: one line naming it."""
        if self.zero_shot is None and (self.spec.get("prior") if prior is None else prior):
            raise InputError(
                f"{self.source}: an unconditional prior runs zero-shot only "
                "(--zero-shot ddnm|ddrm|... --operator area|gaussian|slice|kspace|mtf --scale S)"
            )

    def zero_shot_options(self) -> ZeroShotOptions:
        """The method and its parameters (``sigma_y`` a fraction of the signal's span; the unit is set by the model)."""
        from toolkit.zeroshot import ZeroShotOptions

        params = {field: getattr(self, name) for name, field in ZERO_SHOT_PARAMETERS.items()}
        try:
            return ZeroShotOptions(self.zero_shot or "ddnm").updated(sigma_y=float(self.sigma_y), eta=self.eta, **params)
        except ValueError as exc:
            raise InputError(f"{self.source}: {exc}") from None

    @functools.cached_property
    def checkpoint_data(self) -> dict[str, Any]:
        if self.model is not None:
            return {"diffsr": self.model.spec}
        from toolkit.checkpoint import read_checkpoint

        ckpt = read_checkpoint(self.checkpoint)  # type: ignore[arg-type]
        return {k: v for k, v in ckpt.items() if isinstance(v, dict) and k != "state_dict"}

    def load(
        self, operator_scale: Callable[[SRModel, int | Sequence[int]], int | Sequence[int]] | None = None
    ) -> tuple[SRModel, SamplerOptions]:
        """The model (loaded on ``device`` unless given) and its sampler defaults with this request's overrides.

        With ``zero_shot`` the model is :meth:`toolkit.checkpoint.SRModel.zero_shot` for the
        operator :func:`toolkit.operators.operator_by_name` builds from ``operator`` and ``scale``
        (``operator_scale(model, scale)``: the factors on the model's axes, for a domain whose
        model sees fewer axes than its files, as slice-wise MRI), so ``model.operator`` and
        ``model.scale`` are those of a conditional checkpoint.

        Raises:
            InputError: a prior without ``zero_shot``; an operator that does not fit the model's
                axes; a checkpoint whose state space depends on the input, with ``zero_shot``.
        """
        from toolkit.checkpoint import load_model
        from toolkit.operators import operator_by_name

        model = self.model or load_model(self.checkpoint, self.device)  # type: ignore[arg-type]
        if self.zero_shot is None:
            self.refuse_prior(model.prior)
        else:
            scale = self.scale if operator_scale is None else operator_scale(model, self.scale)  # type: ignore[arg-type]
            try:
                op = operator_by_name(self.operator, scale, model.spatial_dims, 0.3 if self.mtf is None else self.mtf)  # type: ignore[arg-type]
            except ValueError as exc:
                raise InputError(f"{self.source}: {exc}") from None
            model = model.zero_shot(op, self.zero_shot_options())  # ValueError (names the checkpoint): a residual space
        try:
            options = model.options.updated(
                steps=self.steps, sampler=self.sampler, guidance_scale=self.guidance, eta=self.eta, samples=self.samples,
                consistency=self.consistency,
            )
        except ValueError as exc:
            raise InputError(f"{self.source}: {exc}") from None
        if self.classifier is not None:
            from toolkit.classifier import load_guide

            guide = load_guide(self.classifier, self.class_label, 1.0 if self.classifier_scale is None else self.classifier_scale, model)
            model = dataclasses.replace(model, guide=guide)
        return model, options

    def tiles(self, default: Tiling | None) -> Tiling | None:
        """The requested tiling, or the domain's ``default`` for ``"auto"``."""
        return default if self.tiling == "auto" else self.tiling


@dataclass(kw_only=True)
class UpscaleRequest(ModelRequest):
    """``diffsr upscale``: super-resolve ``src`` into ``dst``."""

    src: Path
    dst: Path
    uncertainty: str | Path | None = None
    volume_index: int | None = None
    whole_photo: bool = False
    background: str | Path | None = None
    workdir: str | Path | None = None
    #: test-time adaptation: fine-tune a copy of the model on the input itself for this many steps
    adapt_steps: int = 0

    def __post_init__(self) -> None:
        """Refuse the options and the output paths before any work: zero-shot options that do not fit, an
        output existing without ``overwrite``, a missing folder, the map on the output."""
        self.src, self.dst = Path(self.src), Path(self.dst)
        if self.zero_shot is None and self.sigma_y:
            raise InputError(f"{self.source}: --sigma-y (the input's noise level) is told to a zero-shot method: give --zero-shot METHOD")
        super().__post_init__()
        if not self.src.is_dir():  # a folder of face crops goes to a folder, made when written
            atomic_target(self.dst, self.overwrite)
        if self.uncertainty is not None:
            self.uncertainty = Path(self.uncertainty)
            if self.uncertainty.resolve() in (self.dst.resolve(), self.src.resolve()):
                raise InputError(f"{self.uncertainty}: the uncertainty map must be a file of its own, not the input or the output")
            atomic_target(self.uncertainty, self.overwrite)

    @property
    def inputs(self) -> list[Path]:
        return [self.src]

    def adapted(self, model: SRModel, y: Any, seed: int = 0) -> SRModel:
        """``model`` fine-tuned on the input ``y`` ``(B, C, *spatial)`` (data units) itself for ``adapt_steps``
        steps (test-time adaptation, :func:`toolkit.adapt.adapt_to_input`); ``model`` unchanged when 0."""
        if not self.adapt_steps:
            return model
        if self.zero_shot is not None or model.prior:
            raise InputError(f"{self.source}: --adapt-steps fine-tunes a conditional model; a zero-shot run has no pairs to learn")
        from toolkit.adapt import adapt_to_input

        try:
            return adapt_to_input(model, y, self.adapt_steps, seed=seed, progress=self.progress)
        except ValueError as exc:
            raise InputError(f"{self.src}: {exc}") from None

    def check_uncertainty(self, suffixes: Sequence[str] | None) -> None:
        """Refuse an uncertainty map the domain cannot write (``suffixes``: its formats; ``None``: the domain checks)."""
        if self.uncertainty is None or suffixes is None:
            return
        if not suffixes:
            raise InputError(f"{self.uncertainty}: this checkpoint's domain writes no uncertainty map")
        if not str(self.uncertainty).lower().endswith(tuple(suffixes)):
            raise InputError(f"{self.uncertainty}: an uncertainty map is written as {' or '.join(suffixes)}")

    def check_output_size(self, pixels: int, factors: Sequence[int]) -> None:
        """Refuse an output of ``pixels`` input pixels times ``factors`` above the limit on decoded pixels."""
        check_decoded_size(self.src, pixels * math.prod(factors), "the output")

    def load(
        self, operator_scale: Callable[[SRModel, int | Sequence[int]], int | Sequence[int]] | None = None
    ) -> tuple[SRModel, SamplerOptions]:
        model, options = super().load(operator_scale)
        if self.uncertainty is not None and options.samples < 2:
            raise InputError(f"{self.uncertainty}: an uncertainty map needs --samples 2 or more")
        return model, options

    def check_scale(self, factors: Sequence[int]) -> None:
        """Refuse a checkpoint whose ``factors`` are not the requested ``scale`` (one int: every upscaled axis).

        With ``zero_shot`` the factors are the operator's, made from ``scale``: nothing to refuse.
        """
        scale = self.scale
        if scale is None or self.zero_shot is not None:
            return
        want = [f for f in factors if f > 1] if isinstance(scale, int) else list(scale)
        ok = all(f == scale for f in want) if isinstance(scale, int) else list(factors) == want
        if not ok or not want:
            asked = scale if isinstance(scale, int) else "x".join(map(str, scale))
            raise InputError(f"{self.checkpoint}: checkpoint upscales x{'x'.join(map(str, factors))}, not the requested x{asked}")


@dataclass(kw_only=True)
class EvaluateRequest(ModelRequest):
    """``diffsr evaluate``: degrade the references ``hr_files``, upscale them, score against baselines in ``out_dir``."""

    hr_files: Sequence[str | Path] = ()
    out_dir: str | Path = "."
    degradation_seed: int = 0
    holdout: int | None = None

    def __post_init__(self) -> None:
        if self.zero_shot is None and self.scale is not None:
            raise InputError(f"{self.source}: --scale is the zero-shot operator's factor: give --zero-shot METHOD (a conditional checkpoint evaluates at its own)")
        super().__post_init__()

    def noise(self, model: SRModel) -> MeasurementNoise:
        """The ``sigma_y`` measurement noise of this evaluation (seed ``degradation_seed``) in ``model``'s data units."""
        return MeasurementNoise.for_model(self.sigma_y, model, self.degradation_seed)

    @property
    def inputs(self) -> list[Path]:
        return [Path(f) for f in self.hr_files]

    def validate(self, check: Callable[[Path], object], outputs: Sequence[str] = ()) -> None:
        """Refuse the whole request before any work (see :func:`check_evaluation`)."""
        check_evaluation(self.hr_files, self.out_dir, self.overwrite, check, outputs)


class MeasurementNoise:
    """Seeded Gaussian noise added to each low-resolution input of an evaluation: ``y <- A x + n``.

    ``n`` has standard deviation ``sigma_y`` times the signal's span in each channel: the data
    units the model's normalisation maps onto [-1, 1] (``2 * scale`` per channel: 1 for [0, 1]
    images, each band's percentile span for rasters, the volume's for MRI), the unit in which
    :class:`toolkit.zeroshot.ZeroShotOptions` takes ``sigma_y``, so a zero-shot method is told the
    noise the input has. One ``torch.Generator`` seeded with ``seed`` (``diffsr evaluate
    --degradation-seed``) draws for every input in turn, in file order, in float64 on the CPU:
    an evaluation is reproducible and its inputs' noise independent. ``sigma_y`` 0 adds nothing
    and draws nothing.

    Args:
        sigma_y: the fraction of the span, ``>= 0``.
        span: data units per channel that the normalisation maps onto [-1, 1] (one for all, or one per channel).
        seed: the generator's seed.
    """

    def __init__(self, sigma_y: float, span: float | Sequence[float] = 1.0, seed: int = 0) -> None:
        if not (math.isfinite(sigma_y) and sigma_y >= 0):
            raise InputError(f"--sigma-y {sigma_y}: expected a finite number >= 0")
        self.sigma_y, self.seed = float(sigma_y), int(seed)
        self.span = [float(span)] if isinstance(span, (int, float)) else [float(v) for v in span]
        self.generator: torch.Generator | None = None
        if self.sigma_y > 0:
            import torch

            self.generator = torch.Generator().manual_seed(self.seed)

    @classmethod
    def for_model(cls, sigma_y: float, model: SRModel, seed: int = 0) -> MeasurementNoise:
        """The noise of ``sigma_y`` in ``model``'s data units: the span of its normalisation, ``2 * scale`` per channel."""
        return cls(sigma_y, [2.0 * v for v in model.normalization.scale], seed)

    def std(self, unit: float = 1.0) -> list[float]:
        """The standard deviation per channel in units of which one model data unit is ``unit`` (MRI: scanner units)."""
        return [self.sigma_y * v * float(unit) for v in self.span]

    def __call__(self, y: Any, unit: float = 1.0) -> Any:
        """``y`` (a tensor or array, channels on axis 1 unless every channel has the same span) plus the next draw, same type and dtype."""
        if self.generator is None:
            return y
        import numpy as np
        import torch

        std = self.std(unit)
        n = torch.randn(tuple(y.shape), generator=self.generator, dtype=torch.float64)
        if len(set(std)) == 1:
            n = n * std[0]
        else:
            if y.ndim < 2 or y.shape[1] != len(std):
                raise ValueError(f"noise of {len(std)} channels for an input of shape {tuple(y.shape)}")
            n = n * torch.tensor(std, dtype=torch.float64).reshape(1, -1, *([1] * (y.ndim - 2)))
        if isinstance(y, torch.Tensor):
            return (y.double() + n.to(y.device)).to(y.dtype)
        return (np.asarray(y, dtype=np.float64) + n.numpy()).astype(np.asarray(y).dtype)

    def spec(self) -> dict[str, Any]:
        """``sigma_y``, the standard deviation per channel in the model's data units, and the seed."""
        return {"sigma_y": self.sigma_y, "std_data_units": self.std(), "seed": self.seed}


def run_record(model: SRModel, options: SamplerOptions, seconds: float, noise: MeasurementNoise | None = None) -> dict[str, Any]:
    """What an evaluation's ``metrics.json`` records of the run, in every domain.

    ``prior`` (the checkpoint is an unconditional prior), ``zero_shot`` (``None``, or the method
    and its parameters with the operator's spec), ``sigma_y`` (the noise added to each input, a
    fraction of the signal's span), ``noise_std`` (the same per channel in the model's data
    units), ``noise_seed``, ``network_calls`` (network evaluations per sample,
    :func:`toolkit.engine.network_calls`), ``samples`` (samples per input),
    ``seconds`` (the wall time of the diffusion upscaling, all inputs) and ``classifier_guidance``
    (``None``, or the classifier, class and scale).
    """
    from toolkit.engine import network_calls

    zs = options.zero_shot
    noisy = noise is not None and noise.generator is not None
    return {
        "prior": model.prior,
        "zero_shot": None if zs is None else {**zs.spec(), "operator": model.require_operator().spec()},
        "sigma_y": 0.0 if noise is None else noise.sigma_y,
        "noise_std": noise.std() if noisy else None,  # type: ignore[union-attr]
        "noise_seed": noise.seed if noisy else None,  # type: ignore[union-attr]
        "network_calls": network_calls(model.process, options),
        "samples": int(options.samples),
        "seconds": float(seconds),
        "classifier_guidance": None if model.guide is None or not hasattr(model.guide, "spec") else model.guide.spec(),
    }


#: the files every evaluation writes into its folder
REPORT_FILES = ("metrics.json", "report.html")


def check_evaluation(
    files: Sequence[str | Path], out_dir: str | Path, overwrite: bool, check: Callable[[Path], object], outputs: Sequence[str] = ()
) -> Path:
    """Refuse an evaluation before any work, and create its folder only then.

    Every file must exist and pass ``check`` (the domain's header reader: readable, the right
    kind, within the size limit); ``out_dir`` must be a folder or not exist yet, and without
    ``overwrite`` hold none of :data:`REPORT_FILES` or ``outputs`` (other names it writes).

    Returns:
        ``out_dir``, created.
    """
    if not files:
        raise InputError("no high-resolution files given")
    for f in map(Path, files):
        if not f.exists():
            raise FileNotFoundError(f"{f}: file not found")
        check(f)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the evaluation's output (--out) must be a folder")
    if not overwrite:
        for name in (*REPORT_FILES, *outputs):
            if (out / name).exists():
                raise FileExistsError(f"{out / name}: output exists (use --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    return out


class Domain:
    """A field's plug-in: which requests it takes, and degrade / upscale / evaluate for them.

    Subclasses set :attr:`name` (the checkpoint kind it owns) and :attr:`order`, and override
    what they support; the defaults own the checkpoints marked with :attr:`name`, accept no
    file, and refuse every action with an :class:`InputError`.
    """

    #: the ``spec["domain"]["kind"]`` of the checkpoints trained for this domain
    name: str = ""
    #: lower asks first (see the module docstring)
    order: int = 50
    #: the formats it writes an uncertainty map in (``()``: none; ``None``: its upscale checks ``--uncertainty``)
    uncertainty_suffixes: tuple[str, ...] | None = None

    def owns(self, request: Request) -> bool:
        """Whether ``request`` is this domain's whatever its input: its checkpoint's kind, or an option only it takes."""
        return request.kind == self.name

    def accepts(self, path: Path) -> bool:
        """Whether this domain reads the input file ``path`` (by its type, not its checkpoint)."""
        return False

    def degrade(self, request: DegradeRequest) -> Path:
        raise InputError(f"{request.src}: the {self.name} domain cannot degrade files")

    def upscale(self, request: UpscaleRequest) -> Path:
        raise InputError(f"{request.src}: the {self.name} domain cannot upscale files")

    def evaluate(self, request: EvaluateRequest) -> dict[str, Any]:
        raise InputError(f"{request.checkpoint}: the {self.name} domain cannot evaluate")

    def adaptation_data(self, request: Request, hr_free: bool) -> dict[str, Any]:
        """The datamodule (``class_path``, ``init_args``) that adapts the request's checkpoint to its data files.

        ``hr_free``: the files are the target's low-resolution data (``diffsr adapt --hr-free``).
        """
        where = request.inputs[0] if request.inputs else "data"
        raise InputError(f"{where}: the {self.name} domain builds no adaptation data from files: give a config with a 'data:' section")


@functools.cache
def registered() -> tuple[Domain, ...]:
    """The installed domains (entry points of :data:`GROUP`), in :attr:`Domain.order`."""
    from importlib.metadata import entry_points

    found = []
    for ep in entry_points(group=GROUP):
        domain = ep.load()
        if not isinstance(domain, Domain):
            raise TypeError(f"entry point {ep.name} = {ep.value} of {GROUP} is not a domains.base.Domain")
        found.append(domain)
    if not found:
        raise ImportError(f"no domains registered in the entry points {GROUP!r}: reinstall the package (pip install -e .)")
    return tuple(sorted(found, key=lambda d: d.order))


def select(request: Request) -> Domain:
    """The domain that takes ``request``: the checkpoint's owner first, then the input's reader (see the module docstring).

    An upscale's ``uncertainty`` path is checked against the chosen domain's formats here, before any work.
    """
    domain = _select(request)
    if isinstance(request, UpscaleRequest):
        request.check_uncertainty(domain.uncertainty_suffixes)
    return domain


def _select(request: Request) -> Domain:
    domains = registered()
    for domain in domains:
        if domain.owns(request):
            return domain
    if request.kind is not None:
        names = ", ".join(d.name for d in domains)
        where = getattr(request, "checkpoint", None) or "model"
        raise InputError(f"{where}: checkpoint trained for the domain {request.kind!r}, which is not installed ({names} are)")
    for domain in domains:
        if any(domain.accepts(p) for p in request.inputs):
            return domain
    raise InputError(f"{request.inputs[0] if request.inputs else 'input'}: no installed domain reads this file")
