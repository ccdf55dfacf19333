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

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from domains.files import atomic_target, check_decoded_size

if TYPE_CHECKING:
    from toolkit.checkpoint import SRModel
    from toolkit.engine import SamplerOptions
    from toolkit.tiling import Tiling

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


@dataclass(kw_only=True)
class ModelRequest(Request):
    """A request that runs a checkpoint (``checkpoint``, or the already loaded ``model``)."""

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

    @functools.cached_property
    def checkpoint_data(self) -> dict[str, Any]:
        if self.model is not None:
            return {"diffsr": self.model.spec}
        from toolkit.checkpoint import read_checkpoint

        ckpt = read_checkpoint(self.checkpoint)  # type: ignore[arg-type]
        return {k: v for k, v in ckpt.items() if isinstance(v, dict) and k != "state_dict"}

    def load(self) -> tuple[SRModel, SamplerOptions]:
        """The model (loaded on ``device`` unless given) and its sampler defaults with this request's overrides."""
        from toolkit.checkpoint import load_model

        model = self.model or load_model(self.checkpoint, self.device)  # type: ignore[arg-type]
        options = model.options.updated(
            steps=self.steps, sampler=self.sampler, guidance_scale=self.guidance, eta=self.eta, samples=self.samples
        )
        return model, options

    def tiles(self, default: Tiling | None) -> Tiling | None:
        """The requested tiling, or the domain's ``default`` for ``"auto"``."""
        return default if self.tiling == "auto" else self.tiling


@dataclass(kw_only=True)
class UpscaleRequest(ModelRequest):
    """``diffsr upscale``: super-resolve ``src`` into ``dst``."""

    src: Path
    dst: Path
    scale: int | Sequence[int] | None = None
    uncertainty: str | Path | None = None
    volume_index: int | None = None
    whole_photo: bool = False
    background: str | Path | None = None
    workdir: str | Path | None = None

    def __post_init__(self) -> None:
        """Refuse the output paths before any work: existing without ``overwrite``, a missing folder, the map on the output."""
        self.src, self.dst = Path(self.src), Path(self.dst)
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

    def load(self) -> tuple[SRModel, SamplerOptions]:
        model, options = super().load()
        if self.uncertainty is not None and options.samples < 2:
            raise InputError(f"{self.uncertainty}: an uncertainty map needs --samples 2 or more")
        return model, options

    def check_scale(self, factors: Sequence[int]) -> None:
        """Refuse a checkpoint whose ``factors`` are not the requested ``scale`` (one int: every upscaled axis)."""
        scale = self.scale
        if scale is None:
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

    @property
    def inputs(self) -> list[Path]:
        return [Path(f) for f in self.hr_files]

    def validate(self, check: Callable[[Path], object], outputs: Sequence[str] = ()) -> None:
        """Refuse the whole request before any work (see :func:`check_evaluation`)."""
        check_evaluation(self.hr_files, self.out_dir, self.overwrite, check, outputs)


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
