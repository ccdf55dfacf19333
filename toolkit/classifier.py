"""Classifier guidance (Dhariwal & Nichol, 2021): a noise-aware classifier ``p(c | z_t, t)`` steers a sampler.

Three parts, as in guided-diffusion (``scripts/classifier_train.py``, ``scripts/classifier_sample.py``):

* :class:`NoisyClassifierNet`: MONAI's ``DiffusionModelEncoder`` (the diffusion UNet's encoder with
  its timestep embedding, 2D or 3D) followed by guided-diffusion's ``adaptive`` head (GroupNorm,
  SiLU, global average pooling, linear), so it takes any spatial size;
* :class:`NoisyClassifier`: the LightningModule that trains it on the state at noise level ``t``:
  the clean image, normalised as the diffusion model normalises it (the datamodule's
  ``normalization``), corrupted by the same :class:`~toolkit.process.Process` at a uniformly drawn
  ``t``; cross-entropy, AdamW. Its checkpoint carries the plain-data ``"diffsr_classifier"``
  description and is read with ``torch.load(weights_only=True)`` (:func:`read_classifier`);
* :class:`ClassifierGuidance`: the :class:`toolkit.engine.Guide` that wraps the model function
  ``(z, t) -> (x0_hat, eps_hat)``: ``eps' = eps_hat - s sigma_t grad_z log p(c | z_t, t)`` (the
  score of ``p(z_t) p(c | z_t)^s``, guided-diffusion's ``condition_score``) and
  ``x0' = (z - sigma_t eps') / alpha_t``. :func:`load_guide` builds it from a checkpoint for a
  given model and refuses a classifier that does not fit that model.

The classifier sees the diffusion state itself, so it guides a pixel-space model only (a prior,
or a conditional model whose state is the normalised image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from monai.networks.nets.diffusion_model_unet import DiffusionModelEncoder, get_timestep_embedding
from torch import nn

from toolkit.normalization import Normalization
from toolkit.process import GaussianProcess, Process, process_from_spec
from toolkit.samplers import ModelFn
from toolkit.utils import load_weights_only, make_generator

if TYPE_CHECKING:
    from toolkit.checkpoint import SRModel

CLASSIFIER_FORMAT = 1
#: the key of a classifier checkpoint's plain-data description
CLASSIFIER_KEY = "diffsr_classifier"


class ClassifierCheckpointError(ValueError):
    """A classifier checkpoint is missing, unreadable, malformed, or does not fit the model it should guide."""


class NoisyClassifierNet(nn.Module):
    """Noise-aware classifier ``(z_t, t) -> logits``: MONAI ``DiffusionModelEncoder`` with a pooled head.

    The encoder is the diffusion UNet's down path (residual blocks with the sinusoidal timestep
    embedding added, every level halving the size); the head is guided-diffusion's
    ``EncoderUNetModel(pool="adaptive")``: GroupNorm, SiLU, the mean over space, a linear layer.
    Any spatial size works (a classifier trained on crops scores a whole block).

    Args:
        spatial_dims: 2 or 3.
        channels: channels of the state (the image's bands).
        num_classes: number of classes ``K``.
        num_channels: feature channels per level.
        attention_levels: self-attention at each level.
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups (divides every ``num_channels``).
        num_head_channels: channels per attention head.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        channels: int = 3,
        num_classes: int = 2,
        num_channels: Sequence[int] = (16, 32, 64),
        attention_levels: Sequence[bool] = (False, False, False),
        num_res_blocks: int = 1,
        norm_num_groups: int = 16,
        num_head_channels: int = 16,
    ) -> None:
        super().__init__()
        if int(spatial_dims) not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if int(num_classes) < 2:
            raise ValueError(f"a classifier needs 2 or more classes, got {num_classes}")
        self.spatial_dims, self.channels, self.num_classes = int(spatial_dims), int(channels), int(num_classes)
        self.config: dict[str, Any] = {
            "spatial_dims": self.spatial_dims,
            "channels": self.channels,
            "num_classes": self.num_classes,
            "num_channels": [int(c) for c in num_channels],
            "attention_levels": [bool(a) for a in attention_levels],
            "num_res_blocks": int(num_res_blocks),
            "norm_num_groups": int(norm_num_groups),
            "num_head_channels": int(num_head_channels),
        }
        self.encoder = DiffusionModelEncoder(
            spatial_dims=self.spatial_dims,
            in_channels=self.channels,
            out_channels=self.num_classes,
            input_shape=(1,) * self.spatial_dims,  # its flattening head is replaced by the pooled one below
            num_res_blocks=int(num_res_blocks),
            channels=tuple(int(c) for c in num_channels),
            attention_levels=tuple(bool(a) for a in attention_levels),
            norm_num_groups=int(norm_num_groups),
            num_head_channels=int(num_head_channels),
        )
        self.encoder.out = nn.Identity()
        width = int(num_channels[-1])
        self.norm = nn.GroupNorm(int(norm_num_groups), width)
        self.head = nn.Linear(width, self.num_classes)

    @property
    def multiple(self) -> int:
        """Every level halves the size: sizes that are multiples of this are never padded."""
        return 2 ** len(self.config["num_channels"])

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of state ``z`` ``(B, C, *S)`` at float timesteps ``t`` ``(B,)``."""
        enc = self.encoder
        emb = enc.time_embed(get_timestep_embedding(t, enc.block_out_channels[0]).to(z.dtype))
        h = enc.conv_in(z)
        for block in enc.down_blocks:
            h, _ = block(hidden_states=h, temb=emb, context=None)
        h = F.silu(self.norm(h)).flatten(2).mean(2)
        return self.head(h)


def classifier_from_config(config: dict[str, Any]) -> NoisyClassifierNet:
    """Rebuild a :class:`NoisyClassifierNet` from its ``config`` (a checkpoint's plain data; unknown keys refused)."""
    return NoisyClassifierNet(**config)


# --- guidance -----------------------------------------------------------------------------------------------
class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol, 2021, Algorithm 2 / ``condition_score``) as a model-function wrapper.

    Given the model function ``(z, t) -> (x0_hat, eps_hat)`` of a Gaussian process with
    ``z_t = alpha_t x0 + sigma_t eps``, the guided one returns

    ``eps' = eps_hat - scale * sigma_t * g``, ``x0' = (z - sigma_t eps') / alpha_t``, with
    ``g = grad_z log p(c | z, t)``,

    the score of ``p(z_t) p(c | z_t)^scale`` (``eps = -sigma_t grad log p``). The gradient is
    taken per item with autograd (under ``torch.enable_grad``: samplers run without gradients);
    it is a constant to any outer gradient (DPS differentiates through ``x0'`` without it).
    ``scale == 0`` returns the model function itself: no arithmetic at all.

    Args:
        classifier: ``(z, t) -> logits (B, K)`` on the state (its parameters are not trained here).
        label_index: the class ``c`` to steer towards (0-based).
        scale: guidance scale ``s`` (1: the class-conditional score for an exact classifier;
            larger sharpens towards the class; negative steers away from it).
        normalization: the data normalisation the classifier was trained on (the guided model's
            state must be the image normalised so: :func:`load_guide` checks it).
    """

    def __init__(
        self, classifier: nn.Module, label_index: int, scale: float = 1.0, normalization: Normalization | None = None
    ) -> None:
        if not math.isfinite(float(scale)):
            raise ValueError(f"classifier guidance scale {scale} must be finite")
        self.classifier, self.label_index, self.scale = classifier, int(label_index), float(scale)
        self.normalization = normalization
        #: where the classifier came from and the class's name (set by :func:`load_guide`; for records)
        self.source: str | None = None
        self.class_name: str | None = None

    def spec(self) -> dict[str, Any]:
        """What an evaluation records of the guidance (plain data)."""
        return {"classifier": self.source, "class": self.class_name, "class_index": self.label_index, "scale": self.scale}

    def log_prob(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log p(c | z, t)`` per item ``(B,)``."""
        p = next(self.classifier.parameters(), None)
        dtype = p.dtype if p is not None else z.dtype
        logits = self.classifier(z.to(dtype), t)
        return F.log_softmax(logits.to(dtype), dim=1)[:, self.label_index]

    def gradient(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``grad_z log p(c | z, t)`` ``(B, C, *S)`` in ``z``'s dtype (each item's own gradient)."""
        with torch.enable_grad():
            z_in = z.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(z_in, t).sum(), z_in)
        return grad.detach().to(z.dtype)

    def wrap(self, model_fn: ModelFn, process: Process) -> ModelFn:
        """``model_fn`` guided towards the class (itself when ``scale == 0``).

        Raises:
            ValueError: ``process`` is not Gaussian (``z_t = alpha x0 + sigma eps``).
        """
        if self.scale == 0:
            return model_fn
        if not isinstance(process, GaussianProcess):
            raise ValueError(f"classifier guidance needs a Gaussian process (z = alpha x0 + sigma eps), not {process.kind!r}")

        def guided(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            _, eps = model_fn(z, t)
            g = self.gradient(z, t)
            alpha, sigma = process.coefficients(t, z)
            eps = eps.to(z.dtype) - self.scale * sigma * g
            return (z - sigma * eps) / alpha, eps

        return guided


# --- training ------------------------------------------------------------------------------------------------
class NoisyClassifier(pl.LightningModule):
    """Trains a noise-aware classifier on the diffusion state at a uniformly drawn noise level (Dhariwal & Nichol, 2021).

    Batches are dicts with ``"hr"`` ``(B, C, *S)`` in data units and ``"label"`` ``(B,)`` class
    indexes (:class:`domains.satellite.classes.RasterClassDataModule`). The image is normalised
    (the datamodule's ``normalization``, as the diffusion model's), noised by ``process`` at
    ``t ~ U{0, .., T-1}`` and classified; the loss is the cross-entropy.

    Validation logs the loss and accuracy at a drawn ``t`` (``val/loss``, ``val/acc``, seeded per
    batch) and the accuracy at fixed levels (``val/acc_t0``, ``val/acc_t250``, ... for
    ``T = 1000``): how far into the noise the class is still seen.

    Args:
        network: the classifier; its ``channels`` and ``num_classes`` are set from ``channels``
            and ``classes`` (a network that does not fit is rebuilt, untrained, with the same widths).
        channels: channels of the images (linked from the data by ``diffsr fit``).
        classes: class names; default: the datamodule's ``class_names``.
        process: the diffusion model's process (only its schedule and ``T`` matter here);
            default cosine Gaussian with ``T = 1000``.
        normalization: data units to network units; a datamodule's ``normalization`` overrides it.
        lr: AdamW learning rate (linear warm-up over ``warmup_steps``, then constant).
        weight_decay: AdamW weight decay (guided-diffusion: 0.05).
        warmup_steps: linear learning-rate warm-up.
        val_seed: seed of the validation noise.
    """

    def __init__(
        self,
        network: NoisyClassifierNet | None = None,
        channels: int = 3,
        classes: list[str] | None = None,
        process: Process | None = None,
        normalization: Normalization | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 50,
        val_seed: int = 0,
    ) -> None:
        super().__init__()
        self.classes = None if classes is None else [str(c) for c in classes]
        self.network = network or NoisyClassifierNet(channels=channels)
        self.network = self._fit(self.network, int(channels), len(self.classes) if self.classes else None)
        self.process = process or GaussianProcess()
        if not isinstance(self.process, GaussianProcess):
            raise ValueError(f"a noise-aware classifier is trained on a Gaussian process, not {self.process.kind!r}")
        self.normalization = normalization or Normalization()
        self.lr, self.weight_decay, self.warmup_steps, self.val_seed = lr, weight_decay, warmup_steps, val_seed

    @staticmethod
    def _fit(net: NoisyClassifierNet, channels: int, num_classes: int | None) -> NoisyClassifierNet:
        want = {"channels": channels, "num_classes": num_classes or net.num_classes}
        if all(net.config[k] == v for k, v in want.items()):
            return net
        return NoisyClassifierNet(**{**net.config, **want})

    @property
    def stride(self) -> int:
        """Sizes the network takes without padding (``diffsr fit`` links it to the data's ``multiple``)."""
        return self.network.multiple

    # --- data ---------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        norm = getattr(dm, "normalization", None)
        if isinstance(norm, Normalization):
            self.normalization = norm
        names = getattr(dm, "class_names", None)
        if names is not None:
            names = [str(n) for n in names]
            if self.classes is not None and self.classes != names:
                raise ValueError(f"the model's classes {self.classes} are not the data's {names}")
            if self.classes is None:
                self.classes = names
                self.network = self._fit(self.network, self.network.channels, len(names))
        if self.classes is None:
            raise ValueError("NoisyClassifier needs class names: give classes, or a datamodule with class_names")

    def _noised(self, batch: dict[str, torch.Tensor], t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = self.normalization.normalize(batch["hr"])
        return self.process.q_sample(x, t, noise)

    def _check(self, batch: dict[str, torch.Tensor]) -> None:
        if batch["hr"].shape[1] != self.network.channels:
            raise ValueError(f"batch has {batch['hr'].shape[1]} channels, the classifier {self.network.channels}")

    # --- training -----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self._check(batch)
        hr, label = batch["hr"], batch["label"].long()
        b = hr.shape[0]
        t = torch.randint(0, self.process.timesteps, (b,), device=hr.device)
        logits = self.network(self._noised(batch, t, torch.randn_like(hr)), t.float())
        loss = F.cross_entropy(logits, label)
        acc = (logits.argmax(1) == label).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True, batch_size=b)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.network.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        warm = max(1, self.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- validation ---------------------------------------------------------------------------------
    @property
    def val_levels(self) -> list[int]:
        """The fixed noise levels of the per-level validation accuracy: 0, T/4, T/2, 3T/4."""
        return [round(f * self.process.timesteps) for f in (0.0, 0.25, 0.5, 0.75)]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._check(batch)
        hr, label = batch["hr"], batch["label"].long()
        b = hr.shape[0]
        g = make_generator(self.val_seed + batch_idx)
        t = torch.randint(0, self.process.timesteps, (b,), generator=g).to(hr.device)
        draws = {"val": t, **{f"val_t{lv}": torch.full((b,), lv, device=hr.device) for lv in self.val_levels}}
        metrics: dict[str, torch.Tensor] = {}
        for name, tt in draws.items():
            noise = torch.randn(hr.shape, generator=g, dtype=torch.float32).to(hr)
            logits = self.network(self._noised(batch, tt, noise), tt.float())
            acc = (logits.argmax(1) == label).float().mean()
            if name == "val":
                metrics["val/loss"] = F.cross_entropy(logits, label)
                metrics["val/acc"] = acc
            else:
                metrics[f"val/acc_t{name[5:]}"] = acc
        self.log_dict(metrics, prog_bar=False, batch_size=b)

    test_step = validation_step

    # --- checkpoints --------------------------------------------------------------------------------
    def classifier_spec(self) -> dict[str, Any]:
        """Everything guidance needs, as plain data (no code is pickled)."""
        if self.classes is None:
            raise ValueError("NoisyClassifier has no class names yet")
        return {
            "format": CLASSIFIER_FORMAT,
            "classes": list(self.classes),
            "network": dict(self.network.config),
            "process": self.process.spec(),
            "normalization": self.normalization.spec(),
            "spatial_dims": self.network.spatial_dims,
            "channels": self.network.channels,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CLASSIFIER_KEY] = self.classifier_spec()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        spec = checkpoint.get(CLASSIFIER_KEY, {})
        if isinstance(spec, dict) and "normalization" in spec:
            self.normalization = Normalization(**spec["normalization"])


# --- loading -------------------------------------------------------------------------------------------------
@dataclass
class LoadedClassifier:
    """A noise-aware classifier read from a checkpoint (frozen, eval mode) and its description."""

    network: NoisyClassifierNet
    classes: list[str]
    process: GaussianProcess
    normalization: Normalization
    spec: dict[str, Any]
    source: str

    def class_index(self, label: str | int) -> int:
        """The index of ``label`` (a class name, or an index as an int or a string of digits).

        Raises:
            ClassifierCheckpointError: an unknown class (the message lists the classes).
        """
        names = self.classes
        if isinstance(label, str) and label in names:
            return names.index(label)
        text = str(label).strip()
        if not isinstance(label, bool) and text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
            return int(text)
        listed = ", ".join(f"{k}: {n}" for k, n in enumerate(names))
        raise ClassifierCheckpointError(f"{self.source}: unknown class {label!r}; the classifier's classes are {listed}")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _description_problem(spec: Any) -> str | None:
    """What is wrong with a classifier description's types, or ``None``."""
    if not isinstance(spec, dict):
        return f"the {CLASSIFIER_KEY!r} entry is a {type(spec).__name__}, not a dict"
    if spec.get("format") != CLASSIFIER_FORMAT:
        return f"format {spec.get('format')!r} is not supported (expected {CLASSIFIER_FORMAT})"
    missing = [k for k in ("classes", "network", "process", "normalization", "spatial_dims", "channels") if k not in spec]
    if missing:
        return f"missing {', '.join(missing)}"
    classes = spec["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        return f"'classes' {classes!r}: expected a list of 2 or more names"
    if len(set(classes)) != len(classes):
        return f"'classes' {classes!r} repeat a name"
    for key in ("network", "process", "normalization"):
        if not isinstance(spec[key], dict):
            return f"{key!r} is a {type(spec[key]).__name__}, not a dict"
    if spec["spatial_dims"] not in (2, 3) or isinstance(spec["spatial_dims"], bool):
        return f"spatial_dims {spec['spatial_dims']!r}: expected 2 or 3"
    if not _is_int(spec["channels"], 1):
        return f"channels {spec['channels']!r}: expected an integer >= 1"
    net = spec["network"]
    if (net.get("spatial_dims"), net.get("channels"), net.get("num_classes")) != (spec["spatial_dims"], spec["channels"], len(classes)):
        return "the network's spatial_dims, channels or num_classes differ from the description's"
    for name in ("offset", "scale"):
        values = spec["normalization"].get(name, [])
        values = values if isinstance(values, list) else [values]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            return f"normalization {name} {values!r}: expected finite numbers"
    return None


def read_classifier(path: str | Path) -> dict[str, Any]:
    """Read a classifier checkpoint with ``torch.load(weights_only=True)`` and check its description.

    Raises:
        ClassifierCheckpointError: missing or unreadable file, or not a valid diffsr classifier
            (one line naming the file).
    """
    path = Path(path)
    ckpt = load_weights_only(path, ClassifierCheckpointError, "classifier checkpoint")
    if not isinstance(ckpt, dict) or CLASSIFIER_KEY not in ckpt:
        hint = " (a diffusion model? --classifier takes a checkpoint of configs/*/classifier_*.yaml)" if isinstance(ckpt, dict) and "diffsr" in ckpt else ""
        raise ClassifierCheckpointError(f"{path}: not a diffsr classifier checkpoint (no {CLASSIFIER_KEY!r} description){hint}")
    problem = _description_problem(ckpt[CLASSIFIER_KEY])
    if problem is None and not isinstance(ckpt.get("state_dict"), dict):
        problem = "no 'state_dict' dict"
    if problem:
        raise ClassifierCheckpointError(f"{path}: invalid classifier description ({problem})")
    return ckpt


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> LoadedClassifier:
    """The classifier of a checkpoint written by :class:`NoisyClassifier`, frozen, on ``device``.

    Raises:
        ClassifierCheckpointError: see :func:`read_classifier`; weights that do not match the
            description or hold NaN/Inf.
    """
    ckpt = read_classifier(path)
    spec = ckpt[CLASSIFIER_KEY]
    try:
        network = classifier_from_config(spec["network"])
        process = process_from_spec(spec["process"])
        normalization = Normalization(**spec["normalization"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ClassifierCheckpointError(f"{path}: invalid classifier description ({exc})") from None
    if not isinstance(process, GaussianProcess):
        raise ClassifierCheckpointError(f"{path}: the classifier's process is {process.kind!r}; guidance needs a Gaussian one")
    state = {k[len("network.") :]: v for k, v in ckpt["state_dict"].items() if isinstance(k, str) and k.startswith("network.")}
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ClassifierCheckpointError(f"{path}: classifier weights contain NaN or Inf ({name}; a diverged run?)")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ClassifierCheckpointError(f"{path}: classifier weights do not match its description ({str(exc).splitlines()[0]})") from None
    network.eval().requires_grad_(False).to(device)
    return LoadedClassifier(network, list(spec["classes"]), process, normalization, spec, str(path))


def _same_normalization(a: Normalization, b: Normalization, channels: int) -> bool:
    def full(values: list[float]) -> list[float]:
        return values * channels if len(values) == 1 else values

    pairs = list(zip(full(a.offset), full(b.offset))) + list(zip(full(a.scale), full(b.scale)))
    sizes = {len(full(a.offset)), len(full(b.offset)), len(full(a.scale)), len(full(b.scale))}
    return sizes == {channels} and all(math.isclose(u, v, rel_tol=1e-5, abs_tol=1e-6 * max(abs(u), abs(v), 1.0)) for u, v in pairs)


def check_fits(classifier: LoadedClassifier, model: SRModel) -> None:
    """Refuse a classifier that cannot guide ``model`` (one line naming both files).

    The classifier must see what the model's state is: the same channels and spatial dims, the
    pixels normalised the same way (a pixel state space), noised by the same schedule.

    Raises:
        ClassifierCheckpointError: a mismatch, or a model whose state is not the image.
    """
    src, spec = classifier.source, classifier.spec
    space = model.space.spec().get("type")
    if space != "pixel":
        raise ClassifierCheckpointError(
            f"{src}: a classifier of pixels guides a pixel-space state only; {model.source}'s state space is {space!r}"
        )
    if spec["channels"] != model.channels or spec["spatial_dims"] != model.spatial_dims:
        raise ClassifierCheckpointError(
            f"{src}: a {spec['spatial_dims']}D classifier of {spec['channels']} channel(s) cannot guide "
            f"{model.source} ({model.spatial_dims}D, {model.channels} channel(s))"
        )
    mp, cp = model.process, classifier.process
    if not isinstance(mp, GaussianProcess) or (mp.schedule, mp.timesteps) != (cp.schedule, cp.timesteps):
        theirs = f"{mp.schedule} schedule, T = {mp.timesteps}" if isinstance(mp, GaussianProcess) else f"a {mp.kind!r} process"
        raise ClassifierCheckpointError(
            f"{src}: trained on the {cp.schedule} schedule with T = {cp.timesteps}; {model.source} has {theirs}"
        )
    if not _same_normalization(classifier.normalization, model.normalization, model.channels):
        raise ClassifierCheckpointError(
            f"{src}: normalisation {classifier.normalization.spec()} differs from {model.source}'s "
            f"{model.normalization.spec()} (train both on the same data, grid and percentiles)"
        )


def load_guide(path: str | Path, label: str | int | None, scale: float, model: SRModel) -> ClassifierGuidance:
    """Classifier guidance of ``model`` towards class ``label`` (a name or an index) with scale ``scale``.

    Raises:
        ClassifierCheckpointError: the checkpoint is unusable or does not fit ``model``
            (:func:`check_fits`), the class is unknown (the message lists the classes), or the
            scale is not finite.
    """
    if label is None:
        raise ClassifierCheckpointError(f"{path}: classifier guidance needs a class (--class LABEL)")
    if not math.isfinite(float(scale)):
        raise ClassifierCheckpointError(f"{path}: classifier guidance scale {scale} must be finite")
    p = next(model.denoiser.parameters())
    classifier = load_classifier(path, p.device)
    check_fits(classifier, model)
    index = classifier.class_index(label)
    classifier.network.to(dtype=p.dtype)
    guide = ClassifierGuidance(classifier.network, index, float(scale), classifier.normalization)
    guide.source, guide.class_name = str(path), classifier.classes[index]
    return guide
