"""Load a trained model for inference from a checkpoint, validated and without executing code from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from toolkit.denoiser import UNetDenoiser, denoiser_from_config
from toolkit.engine import Guide, Precision, SamplerOptions, sample_sr_with_uncertainty
from toolkit.noise import NoiseField
from toolkit.normalization import Normalization
from toolkit.operators import Operator, operator_from_spec
from toolkit.process import Process, process_from_spec
from toolkit.samplers import Callback
from toolkit.spaces import StateSpace, space_from_spec
from toolkit.tiling import Tiling
from toolkit.utils import load_weights_only
from toolkit.zeroshot import ZeroShotOptions

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not a diffsr model."""


@dataclass
class SRModel:
    """A trained super-resolution model ready for inference (EMA weights).

    A prior (an unconditional model, ``spec["prior"]``) has no operator until
    :meth:`zero_shot` is told one.
    """

    denoiser: UNetDenoiser
    operator: Operator | None
    space: StateSpace
    process: Process
    normalization: Normalization
    options: SamplerOptions
    spec: dict[str, Any] = field(default_factory=dict)
    #: the checkpoint the model came from (named in errors)
    source: str = "the model"
    #: wraps the model function while sampling (classifier guidance, :mod:`toolkit.classifier`)
    guide: Guide | None = None

    @property
    def reference_channels(self) -> int:
        """Channels of the high-resolution reference the model was trained with (0: none)."""
        ref = self.spec.get("reference") or {}
        return int(ref.get("channels", 0))

    @property
    def reference_normalization(self) -> Normalization | None:
        """The reference's own data-to-network normalisation (``None`` without a reference)."""
        ref = self.spec.get("reference") or {}
        return Normalization(**ref["normalization"]) if ref.get("normalization") else None

    def check_reference(self, y: torch.Tensor, reference: torch.Tensor | None) -> None:
        """Refuse a missing, unexpected or misshapen reference (one line naming the checkpoint).

        Raises:
            ValueError: the model needs a reference and got none, takes none and got one, or the
                reference's channels or grid (batch and output grid of ``y``) do not match.
        """
        want = self.reference_channels
        if want and reference is None:
            raise ValueError(f"{self.source} is reference-guided: it needs a reference on the output grid (--reference)")
        if reference is None:
            return
        if not want:
            raise ValueError(f"{self.source} was trained without a reference: --reference cannot be used with it")
        hr = tuple(self.require_operator().hr_shape(y.shape[2:]))
        if reference.shape[1] != want or reference.shape[0] != y.shape[0] or tuple(reference.shape[2:]) != hr:
            raise ValueError(
                f"reference has shape {tuple(reference.shape)}; {self.source} needs "
                f"({y.shape[0]}, {want}, {', '.join(map(str, hr))}) for this input (its channels on the output grid)"
            )

    @property
    def channels(self) -> int:
        return self.denoiser.channels

    @property
    def prior(self) -> bool:
        """An unconditional model (trained with no low-resolution input): it runs only zero-shot."""
        return bool(self.spec.get("prior", False))

    def zero_shot(self, operator: Operator, options: ZeroShotOptions) -> SRModel:
        """This model as a zero-shot super-resolver for ``operator`` (a prior, or a conditional model's null condition).

        ``options.sigma_y`` is a fraction of the signal's range (the span the normalisation maps
        onto [-1, 1]); the copy's sampling options carry the method.

        Raises:
            ValueError: the state space depends on the input or is not linear, or the operator's
                axes do not match the model's.
        """
        if self.space.uses_input or not self.space.linear:
            kind = self.space.spec().get("type")
            raise ValueError(
                f"{self.source}: zero-shot SR needs a state space independent of the input (pixel, or a 'full' "
                f"wavelet space); this checkpoint's is {kind!r}: train a prior (configs/<domain>/prior_*.yaml)"
            )
        if operator.spatial_dims != self.spatial_dims:
            raise ValueError(f"{self.source}: a {self.spatial_dims}D model, a {operator.spatial_dims}D operator")
        zs = options.updated(unit=2.0)  # sigma_y is a fraction of the span mapped onto [-1, 1]
        return replace(self, operator=operator, options=self.options.updated(zero_shot=zs, guidance_scale=1.0))

    def require_operator(self) -> Operator:
        """The operator, or a clear error for a prior that was given none."""
        if self.operator is None:
            raise ValueError(
                f"{self.source} is an unconditional prior: it runs zero-shot only "
                "(--zero-shot ddnm|ddrm|... --operator area|gaussian|slice|kspace|mtf --scale S)"
            )
        return self.operator

    @property
    def spatial_dims(self) -> int:
        return self.denoiser.spatial_dims

    @property
    def scale(self) -> tuple[int, ...]:
        return self.require_operator().factors

    @property
    def multiple(self) -> int:
        """Output sizes must be multiples of this: the network's downsampling times the space's stride."""
        return self.denoiser.multiple * self.space.stride

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SRModel:
        self.denoiser.to(device=device, dtype=dtype)
        if isinstance(self.space, torch.nn.Module):
            self.space.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def upscale(
        self,
        y: torch.Tensor,
        generator: torch.Generator | NoiseField,
        options: SamplerOptions | None = None,
        callback: Callback | None = None,
        tiling: Tiling | None = None,
    ) -> torch.Tensor:
        """Super-resolve ``y`` ``(B, C, *spatial)`` in data units; returns data units.

        ``generator`` is the source of every random draw: a ``torch.Generator``, or a positional
        :class:`toolkit.noise.NoiseField` (the streamed path's noise).
        """
        return self.upscale_with_uncertainty(y, generator, options, callback, tiling)[0]

    @torch.no_grad()
    def upscale_with_uncertainty(
        self,
        y: torch.Tensor,
        generator: torch.Generator | NoiseField,
        options: SamplerOptions | None = None,
        callback: Callback | None = None,
        tiling: Tiling | None = None,
        precision: Precision = "32",
        reference: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean and per-pixel standard deviation (data units) over ``options.samples`` samples.

        ``precision`` ``bf16`` or ``fp16`` runs the network under autocast (the sampler's
        arithmetic, the decoding and the projection stay float32). ``reference`` ``(B, R,
        *spatial_hr)`` in its data units: the co-registered high-resolution reference of a
        reference-guided model.
        """
        operator = self.require_operator()
        if y.shape[1] != self.channels:
            raise ValueError(f"input has {y.shape[1]} channels but the model was trained on {self.channels}")
        if y.ndim - 2 != self.spatial_dims:
            raise ValueError(f"input has {y.ndim - 2} spatial dims but the model is {self.spatial_dims}D")
        p = next(self.denoiser.parameters())
        yn = self.normalization.normalize(y.to(device=p.device, dtype=p.dtype))
        self.check_reference(y, reference)
        ref = None
        if reference is not None:
            if not bool(torch.isfinite(reference).all()):
                raise ValueError("the reference has NaN or Inf values")
            ref_norm = self.reference_normalization or Normalization()
            ref = ref_norm.normalize(reference.to(device=p.device, dtype=p.dtype))
        opts = options or self.options
        if not all(math.isfinite(v) for v in (opts.guidance_scale, opts.eta)):
            raise ValueError(f"guidance {opts.guidance_scale} and eta {opts.eta} must be finite")
        if self.prior and opts.zero_shot is None:
            self.require_operator()
            raise ValueError(f"{self.source} is an unconditional prior: it runs zero-shot only (--zero-shot METHOD)")
        x, std = sample_sr_with_uncertainty(
            self.denoiser, self.process, self.space, operator, yn, opts, generator, callback, tiling, precision,
            ref, self.guide,
        )
        if not bool(torch.isfinite(x).all()) or (std is not None and not bool(torch.isfinite(std).all())):
            if not bool(torch.isfinite(yn).all()):
                cause = "the input must be finite"
            elif opts.zero_shot is not None and opts.zero_shot.method in ("dps", "gdp"):
                cause = f"the {opts.zero_shot.method} guidance step diverged: lower --zeta / --gdp-scale"
            else:
                cause = "the weights or the normalisation must be finite"
            raise ValueError(f"{self.source}: the output has NaN or Inf values ({cause}); nothing written")
        scale = torch.tensor(self.normalization.scale, dtype=x.dtype, device=x.device).reshape(1, -1, *([1] * self.spatial_dims))
        return self.normalization.denormalize(x), None if std is None else std * scale


def upscale_any_size(
    model: SRModel,
    y: torch.Tensor,
    options: SamplerOptions,
    generator: torch.Generator | NoiseField,
    callback: Callback | None = None,
    tiling: Tiling | None = None,
    precision: Precision = "32",
    reference: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Super-resolve ``y`` ``(B, C, *spatial)`` (data units) of any size: mean and std, float32 on the CPU.

    The input is padded (edge replication) so the output is a multiple of :attr:`SRModel.multiple`,
    sampled, and the padding cropped off again. ``precision`` ``bf16`` or ``fp16`` runs the
    network under autocast (the sampler's arithmetic stays float32). ``reference`` (on the output
    grid, data units) is padded by the same number of output pixels.
    """
    multiple = model.multiple
    lr_shape = y.shape[2:]
    pads: list[int] = []
    for n, f in reversed(list(zip(lr_shape, model.scale))):
        step = multiple // math.gcd(multiple, f)
        pads += [0, (-n) % step]
    yp = F.pad(y, pads, mode="replicate") if any(pads) else y
    operator = model.require_operator()
    model.check_reference(y, reference)
    ref = reference
    if reference is not None and any(pads):
        hr_pads = [p * f for p, f in zip(pads, [f for f in reversed(model.scale) for _ in (0, 1)])]
        ref = F.pad(reference, hr_pads, mode="replicate")
    x, std = model.upscale_with_uncertainty(yp, generator, options, callback, tiling, precision, ref)
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in operator.hr_shape(lr_shape))
    x = x[crop].float().cpu()
    opts = options or model.options
    if any(pads) and opts.final_projection and not operator.block_local:
        # the padded input was matched exactly; a blur reaches across the crop, so match the true one
        # (in data units: the normalisation is affine per channel, the operator keeps constants)
        x = operator.project(x.double(), y.detach().cpu().double()).float()
    return x, None if std is None else std[crop].float().cpu()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain data only, no code."""
    path = Path(path)
    ckpt = load_weights_only(path, CheckpointError)
    if not isinstance(ckpt, dict) or "diffsr" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a diffsr checkpoint (no 'diffsr' model description)")
    spec = ckpt["diffsr"]
    fmt = spec.get("format") if isinstance(spec, dict) else None
    if isinstance(spec, dict) and fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {fmt!r} is not supported (expected {CHECKPOINT_FORMAT})")
    problem = _description_problem(spec) or (None if isinstance(ckpt["state_dict"], dict) else "'state_dict' is not a dict")
    if problem:
        raise CheckpointError(f"{path}: invalid model description ({problem})")
    return ckpt


def _is_int(value: Any, low: int = 1) -> bool:
    """Whether ``value`` is an ``int >= low`` (not a bool, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_real(value: Any) -> bool:
    """Whether ``value`` is a finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _description_problem(spec: Any) -> str | None:
    """What is wrong with the types of a model description (a tampered or foreign checkpoint), or ``None``."""
    if not isinstance(spec, dict):
        return f"the 'diffsr' entry is a {type(spec).__name__}, not a dict"
    for key in ("denoiser", "operator", "space", "process", "normalization", "sampler", "domain"):
        if not isinstance(spec.get(key, {}), dict) and not (key in ("domain", "operator") and spec[key] is None):
            return f"{key!r} is a {type(spec[key]).__name__}, not a dict"
    if "prior" in spec and not isinstance(spec["prior"], bool):
        return f"'prior' is a {type(spec['prior']).__name__}, not a bool"
    sampler, norm = spec.get("sampler", {}), spec.get("normalization", {})
    op = spec.get("operator") or {}
    if spec.get("prior") and spec.get("operator") is not None:
        return "a prior carries no operator"
    if not spec.get("prior") and not isinstance(spec.get("operator", {}), dict):
        return "'operator' is missing (only a prior has none)"
    factors = [("scale", spec.get("scale") or 1), ("operator factors", op.get("factors", 1)), ("operator factor", op.get("factor", 1))]
    ints = [(k, spec.get(k, 1), 1) for k in ("channels", "spatial_dims")]
    ints += [(f"sampler {k}", sampler.get(k, 1), 1) for k in ("steps", "samples")]
    ints += [("sampler t_start", sampler["t_start"], 0)] if sampler.get("t_start") is not None else []
    ints += [(name, v, 1) for name, value in factors for v in _values(value)]
    for name, value, low in ints:
        if not _is_int(value, low):
            return f"{name} {value!r}: expected an integer >= {low}"
    ref = spec.get("reference")
    if ref is not None:
        if not isinstance(ref, dict):
            return f"'reference' is a {type(ref).__name__}, not a dict"
        if spec.get("prior"):
            return "a prior takes no reference"
        if not _is_int(ref.get("channels"), 1):
            return f"reference channels {ref.get('channels')!r}: expected an integer >= 1"
        ref_norm = ref.get("normalization", {})
        if not isinstance(ref_norm, dict):
            return f"reference normalization is a {type(ref_norm).__name__}, not a dict"
        for k in ("offset", "scale"):
            for v in _values(ref_norm.get(k, [])):
                if not _is_real(v) or (k == "scale" and v <= 0):
                    return f"reference normalization {k} {v!r}: expected a finite number{' > 0' if k == 'scale' else ''}"
            if len(_values(ref_norm.get(k, []))) not in (0, 1, ref["channels"]):
                return f"reference normalization {k} has {len(_values(ref_norm[k]))} values for {ref['channels']} channel(s)"
    reals = [(f"sampler {k}", sampler[k]) for k in ("eta", "guidance_scale") if k in sampler]
    reals += [("data_range", spec.get("data_range", 1.0))]
    reals += [(f"normalization {k}", v) for k in ("offset", "scale") for v in _values(norm.get(k, []))]
    for name, value in reals:
        if not _is_real(value):
            return f"{name} {value!r}: expected a finite number"
    return None


def load_model(path: str | Path, device: torch.device | str = "cpu") -> SRModel:
    """Build an :class:`SRModel` from a checkpoint written by ``DiffusionSR`` (EMA weights)."""
    ckpt = read_checkpoint(path)
    spec = ckpt["diffsr"]
    try:
        denoiser = denoiser_from_config(spec["denoiser"])
        operator = None if spec.get("prior") else operator_from_spec(spec["operator"])
        space = space_from_spec(spec["space"])
        process = process_from_spec(spec["process"])
        normalization = Normalization(**spec["normalization"])
        options = SamplerOptions(**spec["sampler"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: invalid model description ({exc})") from None
    weights = ckpt["state_dict"]
    _load_frozen(denoiser, _prefixed(weights, "ema.") or _prefixed(weights, "denoiser."), path, "weights")
    if isinstance(space, torch.nn.Module):  # a space with weights of its own (a latent space's autoencoder)
        _load_frozen(space, _prefixed(weights, "space."), path, "state-space weights")
    return SRModel(denoiser, operator, space, process, normalization, options, spec, str(path)).to(device)


def _prefixed(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _load_frozen(module: torch.nn.Module, state: dict[str, Any], path: str | Path, what: str) -> None:
    """Load ``state`` strictly into ``module`` and freeze it for inference; refuse NaN or Inf weights."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            kind = "NaN" if bool(torch.isnan(value).any()) else "Inf"
            raise CheckpointError(f"{path}: {what} contain {kind} ({name}; a diverged run?)")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: {what} do not match the model description ({str(exc).splitlines()[0]})") from None
    module.eval().requires_grad_(False)
