"""Stage 1 of latent diffusion (Rombach et al., 2022, LDM): an autoencoder trained on the high-resolution data.

MONAI's ``AutoencoderKL`` (KL-regularised, default) or ``VQVAE`` (vector-quantised), 2D or 3D, any
channel count. The checkpoint carries a plain-data description under ``"diffsr_autoencoder"``:
the MONAI constructor kwargs, the normalisation, LDM's latent ``scale_factor`` and the
validation PSNR, so :func:`load_autoencoder` rebuilds the network without executing code.

Conventions shared with :class:`toolkit.latent.LatentSpace`: the latent of a KL autoencoder is
its posterior mean; that of a VQ autoencoder is the encoder output before quantisation, and
decoding quantises first (LDM's choice: the diffusion model produces continuous latents and the
quantiser, part of the decoder, snaps them onto the codebook the decoder was trained on).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from monai.networks.nets import VQVAE, AutoencoderKL
from torch import nn

from toolkit.metrics import psnr
from toolkit.normalization import Normalization
from toolkit.utils import load_weights_only, make_generator, randn

AutoencoderKind = Literal["kl", "vq"]
AUTOENCODER_FORMAT = 1
CHECKPOINT_KEY = "diffsr_autoencoder"
_CLASSES: dict[str, type[nn.Module]] = {"kl": AutoencoderKL, "vq": VQVAE}


class AutoencoderCheckpointError(ValueError):
    """A stage-1 autoencoder file is missing, unreadable, or not a diffsr autoencoder."""


# --- the network and its geometry --------------------------------------------------------------
def autoencoder_config(
    kind: AutoencoderKind,
    spatial_dims: int,
    channels: int,
    num_channels: Sequence[int],
    latent_channels: int,
    num_res_blocks: int = 1,
    norm_num_groups: int = 32,
    attention: bool = False,
    num_embeddings: int = 256,
    commitment_cost: float = 0.25,
) -> dict[str, Any]:
    """MONAI constructor kwargs (plain data) for ``len(num_channels)`` levels, one halving between levels.

    Both kinds downsample ``2**(levels - 1)`` times per axis: ``VQVAE``'s first level keeps the
    resolution (a stride-1 convolution) so its geometry matches ``AutoencoderKL``'s.
    """
    levels = [int(c) for c in num_channels]
    common = {
        "spatial_dims": int(spatial_dims),
        "in_channels": int(channels),
        "out_channels": int(channels),
        "channels": levels,
    }
    if kind == "kl":
        return {
            **common,
            "latent_channels": int(latent_channels),
            "num_res_blocks": int(num_res_blocks),
            "attention_levels": [False] * len(levels),
            "norm_num_groups": int(norm_num_groups),
            "with_encoder_nonlocal_attn": bool(attention),
            "with_decoder_nonlocal_attn": bool(attention),
        }
    if kind == "vq":
        n = len(levels) - 1
        return {
            **common,
            "num_res_layers": int(num_res_blocks),
            "num_res_channels": levels,
            "downsample_parameters": [[1, 3, 1, 1]] + [[2, 4, 1, 1]] * n,
            "upsample_parameters": [[2, 4, 1, 1, 0]] * n + [[1, 3, 1, 1, 0]],
            "num_embeddings": int(num_embeddings),
            "embedding_dim": int(latent_channels),
            "commitment_cost": float(commitment_cost),
        }
    raise ValueError(f"unknown autoencoder kind {kind!r}; known: kl, vq")


def build_autoencoder(kind: str, config: dict[str, Any]) -> nn.Module:
    """An (untrained) MONAI ``AutoencoderKL`` (``kl``) or ``VQVAE`` (``vq``) from its constructor kwargs."""
    if kind not in _CLASSES:
        raise ValueError(f"unknown autoencoder kind {kind!r}; known: {sorted(_CLASSES)}")
    if config.get("in_channels") != config.get("out_channels"):
        raise ValueError("the autoencoder must output the channels it takes (in_channels == out_channels)")
    return _CLASSES[kind](**config)


def autoencoder_stride(ae: nn.Module) -> int:
    """Image pixels per latent pixel along every axis."""
    if autoencoder_kind(ae) == "kl":
        return 2 ** (len(ae.encoder.channels) - 1)
    return math.prod(int(p[0]) for p in ae.encoder.downsample_parameters)


def latent_channels(ae: nn.Module) -> int:
    """Channels of the latent."""
    return int(ae.latent_channels if autoencoder_kind(ae) == "kl" else ae.embedding_dim)


def autoencoder_kind(ae: nn.Module) -> AutoencoderKind:
    """``kl`` or ``vq`` from the network's class."""
    if isinstance(ae, AutoencoderKL):
        return "kl"
    if isinstance(ae, VQVAE):
        return "vq"
    raise TypeError(f"{type(ae).__name__} is not a MONAI AutoencoderKL or VQVAE")


# --- maths ---------------------------------------------------------------------------------------
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` ``(B, C, *S)`` padded at the end of every spatial axis by edge replication to multiples of ``multiple``."""
    pads: list[int] = []
    for n in reversed(x.shape[2:]):
        pads += [0, (-int(n)) % multiple]
    return F.pad(x, pads, mode="replicate") if any(pads) else x


def encode_latent(ae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Latent ``(B, C_z, *S / stride)`` of ``x`` ``(B, C, *S)``: KL posterior mean, VQ pre-quantisation encoding."""
    return ae.encode(x)[0] if autoencoder_kind(ae) == "kl" else ae.encode(x)


def decode_latent(ae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Image ``(B, C, *S_z * stride)`` from a latent (VQ: quantised onto the codebook first)."""
    return ae.decode(z) if autoencoder_kind(ae) == "kl" else ae.decode(ae.quantize(z)[0])


def reconstruct(ae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``decode(encode(x))`` for any spatial size (edge-padded to the stride, cropped back)."""
    out = decode_latent(ae, encode_latent(ae, pad_to_multiple(x, autoencoder_stride(ae))))
    return out[(slice(None), slice(None), *(slice(0, n) for n in x.shape[2:]))]


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, 1))`` per sample ``(B,)``, summed over channels and space (Kingma & Welling)."""
    var = sigma.pow(2)
    return 0.5 * (mu.pow(2) + var - torch.log(var.clamp(min=1e-12)) - 1).flatten(1).sum(1)


def autoencoder_loss(
    ae: nn.Module, x: torch.Tensor, kl_weight: float, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """L1 reconstruction loss plus ``kl_weight`` * KL (kl) or the quantisation loss (vq).

    Args:
        x: ``(B, C, *S)`` normalised images, ``S`` multiples of the autoencoder's stride.
        generator: source of the posterior sample (kl).

    Returns:
        The loss, its parts (for logging) and the latent (``(B, C_z, *S / stride)``, detached).
    """
    if autoencoder_kind(ae) == "kl":
        mu, sigma = ae.encode(x)
        z = mu + sigma * randn(mu.shape, generator, mu.device, mu.dtype)
        rec = ae.decode(z)
        reg = kl_divergence(mu, sigma).mean()
        weight, latent = kl_weight, mu
    else:
        latent = ae.encode(x)
        q, reg = ae.quantize(latent)
        rec = ae.decode(q)
        weight = 1.0
    l1 = F.l1_loss(rec, x)
    return l1 + weight * reg, {"l1": l1.detach(), "reg": reg.detach()}, latent.detach()


def update_moments(moments: torch.Tensor, latent: torch.Tensor, max_weight: float = 0.01) -> None:
    """Running ``(count, mean, mean square)`` of every latent element, in place.

    The first ``1 / max_weight`` batches are averaged exactly; later ones with weight
    ``max_weight``, so the estimate follows the encoder as it trains.
    """
    n = float(moments[0])
    w = max(1.0 / (n + 1.0), max_weight)
    lat = latent.detach().double()
    moments[1].lerp_(lat.mean(), w)
    moments[2].lerp_(lat.pow(2).mean(), w)
    moments[0] += 1


def scale_factor_from_moments(moments: torch.Tensor) -> float | None:
    """LDM's scale factor ``1 / std`` of the latents (``None`` before any batch)."""
    if float(moments[0]) == 0:
        return None
    var = float(moments[2] - moments[1] ** 2)
    return 1.0 / math.sqrt(max(var, 1e-12))


@torch.no_grad()
def reconstruction_psnr(
    ae: nn.Module,
    data: torch.Tensor | Iterable[torch.Tensor | dict[str, torch.Tensor]],
    normalization: Normalization,
    data_range: float = 1.0,
) -> float:
    """Mean per-image PSNR (dB, data units) of the autoencoder's reconstruction.

    Args:
        ae: a MONAI ``AutoencoderKL`` or ``VQVAE`` (run in eval mode).
        data: ``(B, C, *S)`` images in data units, or batches of them (tensors or dicts with ``"hr"``),
            e.g. a validation dataloader.
        normalization: data units to the autoencoder's units (its checkpoint's ``normalization``).
        data_range: data units spanned by the signal.
    """
    was_training = ae.training
    ae.eval()
    p = next(ae.parameters())
    values: list[torch.Tensor] = []
    for batch in [data] if isinstance(data, torch.Tensor) else data:
        x = (batch["hr"] if isinstance(batch, dict) else batch).to(device=p.device, dtype=p.dtype)
        rec = normalization.denormalize(reconstruct(ae, normalization.normalize(x)))
        values.append(psnr(rec, x, data_range).cpu())
    ae.train(was_training)
    if not values:
        raise ValueError("no images to measure the reconstruction PSNR on")
    return float(torch.cat(values).mean())


# --- stage-1 training ----------------------------------------------------------------------------
class AutoencoderModule(pl.LightningModule):
    """Trains the stage-1 autoencoder of latent diffusion on the datamodule's ``"hr"`` images.

    Loss: L1 plus ``kl_weight`` * KL (kl) or the VQ quantisation loss (vq); AdamW. The latent
    ``scale_factor`` (LDM: ``1 / std`` of the encoded latents) is a running estimate over the
    training batches. Validation logs ``val/psnr`` of the reconstruction in data units.

    Args:
        kind: ``kl`` (MONAI ``AutoencoderKL``) or ``vq`` (MONAI ``VQVAE``).
        spatial_dims: 2 or 3.
        channels: image channels (bands, colours, modalities).
        num_channels: feature channels per level; the latent grid is ``2**(levels - 1)`` times coarser.
        latent_channels: channels of the latent (``embedding_dim`` for vq).
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups (kl).
        attention: self-attention in the middle blocks (kl). Without it the network is
            convolutional and tiles see the same context as one pass.
        num_embeddings: codebook size (vq).
        commitment_cost: VQ commitment cost (vq).
        normalization: data units to network units; default [0, 1] -> [-1, 1]. A datamodule with
            a ``normalization`` attribute overrides it at fit time (as ``DiffusionSR``).
        kl_weight: weight of the KL term.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        data_range: data units spanned by the signal, for PSNR.
        seed: seed of the posterior samples.
    """

    def __init__(
        self,
        kind: AutoencoderKind = "kl",
        spatial_dims: int = 2,
        channels: int = 3,
        num_channels: Sequence[int] = (32, 64),
        latent_channels: int = 4,
        num_res_blocks: int = 1,
        norm_num_groups: int = 32,
        attention: bool = False,
        num_embeddings: int = 256,
        commitment_cost: float = 0.25,
        normalization: Normalization | None = None,
        kl_weight: float = 1e-6,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        data_range: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.config = autoencoder_config(
            kind,
            spatial_dims,
            channels,
            num_channels,
            latent_channels,
            num_res_blocks,
            norm_num_groups,
            attention,
            num_embeddings,
            commitment_cost,
        )
        self.autoencoder = build_autoencoder(kind, self.config)
        self.stride = autoencoder_stride(self.autoencoder)
        self.normalization = normalization or Normalization()
        self.kl_weight, self.lr, self.weight_decay = float(kl_weight), float(lr), float(weight_decay)
        self.data_range, self.seed = float(data_range), int(seed)
        self.register_buffer("latent_moments", torch.zeros(3, dtype=torch.float64))
        self.val_psnr: float | None = None
        self._val: list[torch.Tensor] = []
        self._generator: torch.Generator | None = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        norm = getattr(dm, "normalization", None)
        if isinstance(norm, Normalization):
            self.normalization = norm

    def _images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hr = batch["hr"]
        if hr.shape[1] != self.config["in_channels"]:
            raise ValueError(f"batch has {hr.shape[1]} channels, the autoencoder {self.config['in_channels']}")
        return self.normalization.normalize(hr)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._generator is None or self._generator.device != self.device:
            self._generator = make_generator(self.seed, self.device)
        x = pad_to_multiple(self._images(batch), self.stride)
        loss, parts, latent = autoencoder_loss(self.autoencoder, x, self.kl_weight, self._generator)
        update_moments(self.latent_moments, latent)
        b = x.shape[0]
        self.log_dict(
            {"train/loss": loss, "train/l1": parts["l1"], "train/reg": parts["reg"]}, prog_bar=True, batch_size=b
        )
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.autoencoder.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x = self._images(batch)
        rec = reconstruct(self.autoencoder, x)
        to_data = self.normalization.denormalize
        values = psnr(to_data(rec), to_data(x), self.data_range)
        self._val.append(values.detach().cpu())
        self.log("val/psnr", values.mean(), prog_bar=True, batch_size=x.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self._val:
            self.val_psnr = float(torch.cat(self._val).mean())
        self._val = []

    @property
    def scale_factor(self) -> float | None:
        """LDM's latent scale factor ``1 / std`` (running estimate; ``None`` before training)."""
        return scale_factor_from_moments(self.latent_moments)

    def autoencoder_spec(self) -> dict[str, Any]:
        """What :func:`load_autoencoder` and the latent space need, as plain data."""
        return {
            "format": AUTOENCODER_FORMAT,
            "kind": self.kind,
            "config": self.config,
            "normalization": self.normalization.spec(),
            "scale_factor": self.scale_factor,
            **({"val_psnr": self.val_psnr} if self.val_psnr is not None else {}),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.autoencoder_spec()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        spec = checkpoint.get(CHECKPOINT_KEY, {})
        self.val_psnr = spec.get("val_psnr", self.val_psnr)
        if "normalization" in spec:
            self.normalization = Normalization(**spec["normalization"])


# --- loading -------------------------------------------------------------------------------------
def load_autoencoder(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained autoencoder (eval mode, frozen) and its description from a stage-1 checkpoint.

    Read with ``torch.load(weights_only=True)``: tensors and plain data only, no code.

    Returns:
        The network and the ``"diffsr_autoencoder"`` description (``kind``, ``config``,
        ``normalization``, ``scale_factor``, ``val_psnr`` when known).

    Raises:
        AutoencoderCheckpointError: the file is missing, unreadable, not a diffsr autoencoder
            checkpoint, of another format, or its weights do not match its description.
    """
    path = Path(path)
    ckpt = load_weights_only(path, AutoencoderCheckpointError, "autoencoder checkpoint")
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        what = " (it is a diffusion model checkpoint)" if isinstance(ckpt, dict) and "diffsr" in ckpt else ""
        raise AutoencoderCheckpointError(
            f"{path}: not a diffsr autoencoder checkpoint{what}; write one with 'diffsr fit' and an autoencoder config"
        )
    info = ckpt[CHECKPOINT_KEY]
    fmt = info.get("format") if isinstance(info, dict) else None
    if fmt != AUTOENCODER_FORMAT:
        raise AutoencoderCheckpointError(
            f"{path}: autoencoder format {fmt!r} is not supported (expected {AUTOENCODER_FORMAT})"
        )
    try:
        ae = build_autoencoder(info["kind"], dict(info["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AutoencoderCheckpointError(f"{path}: invalid autoencoder description ({exc})") from None
    state = {k[len("autoencoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("autoencoder.")}
    try:
        ae.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise AutoencoderCheckpointError(
            f"{path}: weights do not match the autoencoder description ({first})"
        ) from None
    return ae.eval().requires_grad_(False), dict(info)
