"""Domain adaptation of a trained model: fine-tuning, frozen parts, LoRA, and internal learning.

Transfer learning as torchgeo's trainers do it (a trained network, a fresh optimiser and schedule
on the target's data), for diffusion SR:

* :class:`AdaptSR` fine-tunes a checkpoint written by :class:`toolkit.lightning.DiffusionSR` on a
  target domain's datamodule, with a fresh AdamW and warm-up, optionally with parts of the network
  frozen (:func:`freeze_parts`) or only low-rank adapters trained (:func:`add_lora`, Hu et al. 2022),
  the normalisation re-estimated on the target (default) or kept. With ``hr_free`` the data are
  the target's *low-resolution* images: they are degraded once more by the model's operator and
  that pair is learnt (the internal learning of ZSSR, Shocher et al. 2018; for thick-slice MRI the
  in-plane planes of the scan itself, as SMORE does, Zhao et al. 2020:
  :class:`domains.mri.data.VolumeDataModule` ``smore``). The result is an ordinary checkpoint:
  LoRA is merged into the weights when it is saved.
* :func:`adapt_to_input` does the same for one input at inference (test-time adaptation,
  ``diffsr upscale --adapt-steps K``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from toolkit.checkpoint import SRModel, read_checkpoint
from toolkit.denoiser import UNetDenoiser, denoiser_from_config
from toolkit.engine import SamplerOptions
from toolkit.lightning import DiffusionSR, denoising_loss
from toolkit.normalization import Normalization
from toolkit.operators import Operator, operator_from_spec
from toolkit.process import process_from_spec
from toolkit.spaces import space_from_spec
from toolkit.utils import make_generator

Freeze = Literal["none", "encoder", "all-but-norm"]
NORM_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def freeze_parts(denoiser: UNetDenoiser, mode: Freeze) -> None:
    """Freeze parts of ``denoiser`` in place (``requires_grad = False``).

    Args:
        mode: ``none`` trains everything; ``encoder`` freezes the UNet's input convolution, time
            embedding and down-sampling path (the features of the source domain) and trains the
            middle, the decoder and the output; ``all-but-norm`` trains only the normalisation
            layers' scales and shifts (a few thousand parameters: the statistics of a new scanner
            or sensor, as in AdaBN-style adaptation).

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "none":
        denoiser.requires_grad_(True)
        return
    net = denoiser.net
    if mode == "encoder":
        denoiser.requires_grad_(True)
        for part in (net.conv_in, net.time_embed, net.down_blocks):
            part.requires_grad_(False)
    elif mode == "all-but-norm":
        denoiser.requires_grad_(False)
        for module in denoiser.modules():
            if isinstance(module, NORM_LAYERS):
                module.requires_grad_(True)
    else:
        raise ValueError(f"freeze {mode!r}: expected none, encoder or all-but-norm")


class LowRank(nn.Module):
    """LoRA (Hu et al. 2022) as a parametrisation: ``W + (alpha / r) * reshape(B @ A)``.

    For a convolution weight ``(out, in, *k)``, ``A`` is ``(r, in * prod(k))`` and ``B``
    ``(out, r)`` (peft's convolution LoRA: an ``r``-channel convolution followed by a 1x1 one).
    ``B`` starts at zero, so the adapted network starts as the source network exactly.
    """

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        out, fan_in = weight.shape[0], weight[0].numel()
        a = torch.empty(rank, fan_in, dtype=weight.dtype)
        bound = 1.0 / math.sqrt(fan_in)  # kaiming-uniform with a = sqrt(5), as nn.Linear and peft
        a.uniform_(-bound, bound, generator=generator)
        self.A = nn.Parameter(a.to(weight.device))
        self.B = nn.Parameter(torch.zeros(out, rank, dtype=weight.dtype, device=weight.device))
        self.scaling = float(alpha) / int(rank)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scaling * (self.B @ self.A).reshape(weight.shape)


def lora_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The convolutions and linear layers of ``module`` (what :func:`add_lora` adapts)."""
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            yield name, sub


def add_lora(module: nn.Module, rank: int, alpha: float | None = None, seed: int = 0) -> int:
    """Freeze ``module`` and give every convolution and linear layer a rank-``rank`` adapter; returns the trainable count.

    Args:
        rank: the adapters' rank ``r`` (>= 1).
        alpha: LoRA's ``alpha`` (default ``r``: a scaling of 1).
        seed: seed of the adapters' ``A`` initialisation.
    """
    if int(rank) < 1:
        raise ValueError(f"LoRA rank {rank}: expected an integer >= 1")
    module.requires_grad_(False)
    g = torch.Generator().manual_seed(int(seed))
    layers = list(lora_layers(module))
    for _, layer in layers:
        parametrize.register_parametrization(layer, "weight", LowRank(layer.weight.detach(), int(rank), alpha or rank, g))
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s weights with every LoRA adapter folded in, under the plain architecture's names."""
    state = {k: v for k, v in module.state_dict().items() if ".parametrizations." not in k}
    for name, layer in lora_layers(module):
        if parametrize.is_parametrized(layer, "weight"):
            state[f"{name}.weight" if name else "weight"] = layer.weight.detach().clone()
    return state


def merged(denoiser: UNetDenoiser) -> UNetDenoiser:
    """A plain copy of ``denoiser`` with every LoRA adapter folded into its weights.

    (Built from the config, not by ``deepcopy``: a copy of a parametrised module shares its
    generated class, and removing a parametrisation from the copy would break the original.)
    """
    out = denoiser_from_config(denoiser.config).to(next(denoiser.parameters()).device)
    out.load_state_dict(merged_state_dict(denoiser), strict=True)
    return out.train(denoiser.training)


def load_source(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The validated model description and the EMA weights (the weights inference uses) of checkpoint ``path``."""
    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    ema = {k[4:]: v for k, v in state.items() if k.startswith("ema.")}
    weights = ema or {k[9:]: v for k, v in state.items() if k.startswith("denoiser.")}
    space = {k[6:]: v for k, v in state.items() if k.startswith("space.")}
    return ckpt["diffsr"], {"denoiser": weights, "space": space}  # type: ignore[dict-item]


class AdaptSR(DiffusionSR):
    """Fine-tune a trained diffusion SR checkpoint on a target domain (a fresh optimiser and schedule).

    The network, operator, state space, process, sampling defaults and domain description come
    from ``source`` (EMA weights; read without executing code); the data, and with
    ``normalization="target"`` the normalisation, from the target's datamodule. The checkpoint it
    writes is an ordinary ``DiffusionSR`` checkpoint (LoRA merged) with ``"adapted_from"`` added.

    Args:
        source: the trained checkpoint (never written).
        freeze: ``none``, ``encoder`` or ``all-but-norm`` (:func:`freeze_parts`).
        lora_rank: train rank-``r`` adapters of every convolution and linear layer instead (0: no LoRA).
        lora_alpha: LoRA's alpha (default the rank).
        normalization: ``target`` re-estimates it from the target's data (stored in the new
            checkpoint); ``source`` keeps the source's.
        hr_free: the datamodule's images are the target's low-resolution data: the model learns
            to invert its operator on them (``y = A(x)`` made here, a datamodule's ``"lr"`` ignored).
        lr: AdamW learning rate (linear warm-up, then cosine decay to 10 % over ``max_steps``
            when the trainer has them).
        warmup_steps: linear warm-up.
        ema_decay: EMA decay (restarted from the source weights).
        cond_drop_prob: condition dropout (default: 0.1, as training).
        val_seed: seed of validation sampling.
        seed: seed of the LoRA initialisation.
    """

    def __init__(
        self,
        source: str,
        freeze: Freeze = "none",
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        normalization: Literal["target", "source"] = "target",
        hr_free: bool = False,
        lr: float = 5e-4,
        warmup_steps: int = 20,
        ema_decay: float = 0.99,
        cond_drop_prob: float = 0.1,
        val_seed: int = 0,
        seed: int = 0,
    ) -> None:
        spec, weights = load_source(source)
        try:
            denoiser = denoiser_from_config(spec["denoiser"])
            operator: Operator | None = None if spec.get("prior") else operator_from_spec(spec["operator"])
            space = space_from_spec(spec["space"])
            process = process_from_spec(spec["process"])
            options = SamplerOptions(**spec["sampler"])
            norm = Normalization(**spec["normalization"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{source}: invalid model description ({exc})") from None
        if spec.get("prior") and hr_free:
            raise ValueError(f"{source} is an unconditional prior: it learns images, not pairs, so --hr-free does not apply")
        if normalization not in ("target", "source"):
            raise ValueError(f"normalization {normalization!r}: expected target or source")
        denoiser.load_state_dict(weights["denoiser"], strict=True)
        if isinstance(space, nn.Module) and weights["space"]:
            space.load_state_dict(weights["space"], strict=True)
            space.requires_grad_(False)
        ref = spec.get("reference") or {}
        ref_norm = Normalization(**ref["normalization"]) if ref.get("normalization") else Normalization()
        extra = {"reference_channels": int(ref["channels"]), "reference_normalization": ref_norm} if ref.get("channels") else {}
        super().__init__(
            denoiser=denoiser, operator=operator, space=space, process=process, normalization=norm, sampling=options,
            lr=lr, warmup_steps=warmup_steps, ema_decay=ema_decay, cond_drop_prob=cond_drop_prob,
            data_range=float(spec.get("data_range", 1.0)), val_seed=val_seed, prior=bool(spec.get("prior", False)),
            **extra,
        )
        self.source, self.freeze_mode, self.lora_rank = str(source), freeze, int(lora_rank)
        self.keep_normalization, self.hr_free = normalization == "source", bool(hr_free)
        self.domain = spec.get("domain")
        self.source_normalization, self.source_reference_normalization = norm, ref_norm
        total = sum(p.numel() for p in self.denoiser.parameters())
        if self.lora_rank:
            if freeze != "none":
                raise ValueError("--lora trains adapters only (the network is frozen): --freeze does not combine with it")
            add_lora(self.denoiser, self.lora_rank, lora_alpha, seed)
        else:
            freeze_parts(self.denoiser, freeze)
        self.ema = copy.deepcopy(self.denoiser).requires_grad_(False)
        #: trainable / total parameters (reported in the checkpoint)
        self.trainable = (sum(p.numel() for p in self.denoiser.parameters() if p.requires_grad), total)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.keep_normalization:
            self.normalization = self.source_normalization
            self.reference_normalization = self.source_reference_normalization

    def _pair(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hr_free and "lr" in batch:  # learn to invert the model's own operator on the target's images
            batch = {k: v for k, v in batch.items() if k != "lr"}
        return super()._pair(batch)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.denoiser.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = int(getattr(self.trainer, "max_steps", -1) or -1) if self._trainer is not None else -1
        warm = max(1, self.warmup_steps)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if total <= warm:
                return 1.0
            progress = min(1.0, (step - warm) / (total - warm))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.lora_rank:  # an ordinary checkpoint: the adapters folded into the weights
            state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(("denoiser.", "ema."))}
            for prefix, module in (("denoiser.", self.denoiser), ("ema.", self.ema)):
                state.update({prefix + k: v for k, v in merged_state_dict(module).items()})
            checkpoint["state_dict"] = state
        checkpoint["diffsr"]["adapted_from"] = {
            "source": self.source,
            "freeze": self.freeze_mode,
            "lora_rank": self.lora_rank,
            "normalization": "source" if self.keep_normalization else "target",
            "hr_free": self.hr_free,
            "trainable_parameters": self.trainable[0],
            "parameters": self.trainable[1],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        raise ValueError("an adaptation starts from its source checkpoint with a fresh optimiser: resume it with 'diffsr fit' instead")


def adaptation_crops(
    xs: Sequence[torch.Tensor], size: int, multiple: int, count: int, generator: torch.Generator
) -> torch.Tensor:
    """``count`` random crops of side ``size`` (rounded down to ``multiple``, at most each axis's
    smallest extent) of the items of ``xs`` (tensors ``(B_k, C, *S_k)``), randomly flipped."""
    items = [x[b : b + 1] for x in xs for b in range(x.shape[0])]
    least = [min(x.shape[2 + d] for x in items) for d in range(items[0].ndim - 2)]
    sides = [min(size, n) // multiple * multiple for n in least]
    if min(sides) < 1:
        raise ValueError(f"the input {tuple(least)} is smaller than the model's size multiple {multiple}: too small to adapt on")
    crops = []
    for _ in range(count):
        x = items[int(torch.randint(0, len(items), (1,), generator=generator))]
        starts = [int(torch.randint(0, n - s + 1, (1,), generator=generator)) for n, s in zip(x.shape[2:], sides)]
        c = x[(slice(None), slice(None), *[slice(o, o + s) for o, s in zip(starts, sides)])]
        flips = [2 + d for d in range(len(sides)) if bool(torch.rand(1, generator=generator) < 0.5)]
        crops.append(c.flip(flips) if flips else c)
    return torch.cat(crops)


def adapt_to_input(
    model: SRModel,
    x: torch.Tensor | Sequence[torch.Tensor],
    steps: int,
    seed: int = 0,
    lr: float = 2e-4,
    batch_size: int = 4,
    crop: int | None = None,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> SRModel:
    """A copy of ``model`` fine-tuned for ``steps`` on ``x`` itself (test-time adaptation, ZSSR-style).

    ``x`` ``(B, C, *S)`` in data units is the input to be super-resolved (or, for a slice-wise MRI
    model, the high-resolution in-plane planes of the scan: SMORE; a list of such tensors when
    their sizes differ): random crops of it are degraded
    once more by the model's operator and the pair ``(crop, A(crop))`` is learnt with the
    training loss. The returned model has its own weights; ``model`` is unchanged.

    Raises:
        ValueError: a prior, a latent or reference-guided model, too small an input, or a loss that
            is not finite.
    """
    if model.prior:
        raise ValueError(f"{model.source} is a prior: test-time adaptation needs a conditional model")
    if model.reference_channels:
        raise ValueError(f"{model.source} is reference-guided: test-time adaptation without the reference is not supported")
    if isinstance(model.space, nn.Module):
        raise ValueError(f"{model.source} runs in a latent space: test-time adaptation is for pixel, residual and wavelet spaces")
    operator = model.require_operator()
    p = next(model.denoiser.parameters())
    xs = [x] if isinstance(x, torch.Tensor) else list(x)
    xn = [model.normalization.normalize(v.to(device=p.device, dtype=p.dtype)) for v in xs]
    g = make_generator(seed, torch.device("cpu"))
    net = copy.deepcopy(model.denoiser).train().requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    multiple = math.lcm(model.multiple, *operator.factors)
    side = crop or (64 if model.spatial_dims == 2 else 32)
    it = range(int(steps))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="adapting to the input", unit="step", leave=False)
    for step in it:
        hr = adaptation_crops(xn, side, multiple, batch_size, g).to(p.device)
        with torch.enable_grad():
            loss = denoising_loss(net, model.process, model.space, hr, operator.A(hr), g, 0.1)
            if not bool(torch.isfinite(loss)):
                raise ValueError(f"test-time adaptation diverged at step {step} (loss {float(loss)}): lower the steps or check the input")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if callback is not None:
            callback(step, float(loss))
    net.eval().requires_grad_(False)
    spec = {**model.spec, "adapted_to_input": {"steps": int(steps), "seed": int(seed), "lr": float(lr)}}
    return SRModel(net, operator, model.space, model.process, model.normalization, model.options, spec, model.source, model.guide)
