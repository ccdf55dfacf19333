"""``DiffusionSR``: the LightningModule that trains and validates any engine configuration.

It orchestrates; the maths is in the toolkit modules it is built from.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from toolkit.checkpoint import CHECKPOINT_FORMAT
from toolkit.denoiser import UNetDenoiser, fit_denoiser_to_space
from toolkit.engine import SamplerOptions, sample_sr_with_uncertainty
from toolkit.metrics import consistency_psnr, psnr, ssim
from toolkit.normalization import Normalization
from toolkit.operators import AreaDownsample, Operator
from toolkit.process import GaussianProcess, Process
from toolkit.spaces import PixelSpace, ResidualSpace, StateSpace
from toolkit.utils import make_generator, upsample
from toolkit.zeroshot import ZeroShotOptions


def denoising_loss(
    denoiser: torch.nn.Module,
    process: Process,
    space: StateSpace,
    x: torch.Tensor,
    y: torch.Tensor | None,
    generator: torch.Generator | None = None,
    cond_drop_prob: float = 0.0,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """The diffusion training loss (Ho et al. 2020, the process's target and weights) on one normalised pair.

    Args:
        x: ``(B, C, *S)`` high resolution.
        y: ``(B, C, *S_lr)`` its degradation (SR3: upsampled as the condition); ``None`` for a
            prior (the network sees the state alone).
        generator: source of the timesteps, noise and condition dropout (drawn on the CPU); the
            global generators (drawn on ``x``'s device) when ``None``.
        cond_drop_prob: probability of the null condition per item (classifier-free guidance).
        reference: ``(B, R, *S)`` normalised reference on ``x``'s grid, after the input's condition.
    """
    z0 = space.encode(x, y if y is not None else x)
    b, dev = z0.shape[0], z0.device
    if generator is None:
        t = torch.randint(0, process.timesteps, (b,), device=dev)
        noise = torch.randn_like(z0)
    else:
        t = torch.randint(0, process.timesteps, (b,), generator=generator).to(dev)
        noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(dev)
    if y is None:
        out = denoiser(process.network_input(process.q_sample(z0, t, noise), t), t.float(), None)
    else:
        cond = space.condition(y, x.shape[2:])
        if reference is not None:
            cond = torch.cat([cond, space.condition(reference.to(cond), x.shape[2:])], dim=1)
        y_state = space.encode(upsample(y, x.shape[2:]), y) if process.conditional else None
        z_t = process.q_sample(z0, t, noise, y_state)
        u = torch.rand(b, device=dev) if generator is None else torch.rand(b, generator=generator).to(dev)
        out = denoiser(process.network_input(z_t, t), t.float(), cond, u < cond_drop_prob)
    per_sample = F.mse_loss(out, process.target(z0, noise, t), reduction="none").flatten(1).mean(1)
    return (per_sample * process.loss_weights(t)).mean()


class DiffusionSR(pl.LightningModule):
    """Conditional diffusion super-resolution (SR3 family) over any operator, state space and process.

    Batches are dicts with ``"hr"`` ``(B, C, *S)`` in data units and optionally ``"lr"``; when
    ``"lr"`` is absent the low-resolution input is made by ``operator`` on the fly, the same
    operator that later constrains sampling and scores consistency.

    Reference-guided SR (``reference_channels`` R > 0): batches also carry ``"ref"`` ``(B, R, *S)``,
    a co-registered sharper image on the output grid in its own data units (a panchromatic band,
    another MRI contrast). It is normalised with ``reference_normalization`` (a datamodule's
    attribute of that name overrides it at fit time), brought onto the state's grid by the state
    space (``space.condition``) and concatenated to the condition channels; classifier-free
    dropout drops it with the input. The checkpoint says ``reference: {channels, normalization}``
    and inference refuses to run it without a reference (:meth:`toolkit.checkpoint.SRModel.check_reference`).

    With ``prior=True`` it trains an unconditional prior for zero-shot SR (:mod:`toolkit.zeroshot`):
    the network sees no low-resolution input (no condition channels), the state space must not use
    one (pixel, or a ``full`` wavelet space), and the checkpoint says ``prior`` and carries no
    operator; ``operator`` then only makes the validation inputs, super-resolved zero-shot with
    ``val_zero_shot`` (default DDNM), so the logged PSNR is what the prior does as a super-resolver.

    Args:
        denoiser: the network.
        operator: the degradation ``y = A(x)``; default area downsampling by 2.
        space: where diffusion runs; default residual over interpolation.
        process: forward process (any :class:`toolkit.process.Process`); default cosine Gaussian
            with x0 prediction.
        normalization: data units to network units; default [0, 1] -> [-1, 1]. A datamodule
            with a ``normalization`` attribute overrides it at fit time.
        sampling: sampling defaults stored in the checkpoint, one typed block in configs
            (:class:`toolkit.engine.SamplerOptions`: sampler, steps, eta, guidance_scale,
            consistency, t_start, start, samples, flip_ensemble).
        lr: AdamW learning rate (linear warm-up over ``warmup_steps``, then constant).
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up.
        ema_decay: EMA decay of the weights used for sampling (warmed up as ``(1+n)/(10+n)``).
        cond_drop_prob: probability of dropping the condition (classifier-free guidance).
        data_range: data units spanned by the signal, for PSNR/SSIM (1 for [0, 1] images).
        val_seed: seed of validation sampling.
        prior: train an unconditional prior (see above).
        val_zero_shot: a prior's validation method (:class:`toolkit.zeroshot.ZeroShotOptions`).
        reference_channels: channels of the high-resolution reference (0: none, plain SR).
        reference_normalization: the reference's data-to-network normalisation (default [0, 1]
            -> [-1, 1]); a datamodule with a ``reference_normalization`` attribute overrides it.
    """

    def __init__(
        self,
        denoiser: UNetDenoiser,
        operator: Operator | None = None,
        space: StateSpace | None = None,
        process: Process | None = None,
        normalization: Normalization | None = None,
        sampling: SamplerOptions | None = None,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        ema_decay: float = 0.999,
        cond_drop_prob: float = 0.1,
        data_range: float = 1.0,
        val_seed: int = 0,
        prior: bool = False,
        val_zero_shot: ZeroShotOptions | None = None,
        reference_channels: int = 0,
        reference_normalization: Normalization | None = None,
    ) -> None:
        super().__init__()
        self.prior = bool(prior)
        self.reference_channels = int(reference_channels)
        if self.reference_channels < 0:
            raise ValueError(f"reference_channels must be >= 0, not {reference_channels}")
        if self.prior and self.reference_channels:
            raise ValueError("a prior is unconditional: it takes no reference (reference_channels must be 0)")
        self.space = space or (PixelSpace() if self.prior else ResidualSpace())
        if self.prior and (self.space.uses_input or not self.space.linear):
            raise ValueError(
                f"a prior needs a state space independent of the input (pixel, or a 'full' wavelet space), "
                f"not {self.space.spec().get('type')!r}"
            )
        denoiser = fit_denoiser_to_space(denoiser, self.space, prior=self.prior, reference_channels=self.reference_channels)
        self.denoiser = denoiser
        self.ema = copy.deepcopy(denoiser).requires_grad_(False)
        self.operator = operator or AreaDownsample(2, spatial_dims=denoiser.spatial_dims)
        if self.operator.spatial_dims != denoiser.spatial_dims:
            raise ValueError(f"operator has {self.operator.spatial_dims} spatial dims, denoiser {denoiser.spatial_dims}")
        # a prior predicts v (Salimans & Ho 2022): x0 = alpha z - sigma v is near z at low noise from
        # the first step on, where an x0-predicting network with a zero-initialised output learns the
        # mean image first and ignores z (measured: 19 dB at t = 5 after 700 steps, eps/v: 42 dB after 300)
        self.process = process or GaussianProcess(parameterization="v" if self.prior else "x0")
        if self.prior and self.process.conditional:
            raise ValueError(f"a prior needs a process that does not start from the input, not {self.process.kind!r}")
        self.normalization = normalization or Normalization()
        self.reference_normalization = reference_normalization or Normalization()
        self.options = sampling or SamplerOptions()
        self.val_zero_shot = val_zero_shot or ZeroShotOptions("ddnm")
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.ema_decay, self.cond_drop_prob = ema_decay, cond_drop_prob
        self.data_range, self.val_seed = data_range, val_seed
        #: what a domain's inference needs beyond the engine (plain data from the datamodule's
        #: ``domain_spec``, e.g. MRI's per-volume intensity normalisation or slice-wise layout)
        self.domain: dict[str, Any] | None = None

    # --- data ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        norm = getattr(dm, "normalization", None)
        if isinstance(norm, Normalization):
            self.normalization = norm
        domain = getattr(dm, "domain_spec", None)
        if isinstance(domain, dict):
            self.domain = domain
        ref_norm = getattr(dm, "reference_normalization", None)
        if isinstance(ref_norm, Normalization):
            self.reference_normalization = ref_norm
        dm_refs = getattr(dm, "reference_channels", None)
        if dm is not None and isinstance(dm_refs, int) and dm_refs != self.reference_channels:
            raise ValueError(
                f"the data carry {dm_refs} reference channel(s), the model expects {self.reference_channels} "
                "(set model.init_args.reference_channels)"
            )

    def _pair(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hr = batch["hr"]
        if hr.shape[1] != self.denoiser.channels:
            raise ValueError(f"batch has {hr.shape[1]} channels, the model {self.denoiser.channels}")
        x = self.normalization.normalize(hr)
        # a prior's validation inputs come from its operator (a datamodule's "lr" is another degradation)
        y = self.normalization.normalize(batch["lr"]) if "lr" in batch and not self.prior else self.operator.A(x)
        return x, y

    def _reference(self, batch: dict[str, torch.Tensor], hr_shape: Sequence[int]) -> torch.Tensor | None:
        """The batch's normalised reference ``(B, R, *S)`` (``None`` for a model without one); refuses a missing or misshapen one."""
        if not self.reference_channels:
            return None
        ref = batch.get("ref")
        if ref is None:
            raise ValueError(f"the model is reference-guided ({self.reference_channels} channel(s)): batches need a 'ref' entry")
        if ref.shape[1] != self.reference_channels or tuple(ref.shape[2:]) != tuple(hr_shape):
            raise ValueError(
                f"batch reference has shape {tuple(ref.shape)}; expected ({ref.shape[0]}, {self.reference_channels}, "
                f"{', '.join(map(str, hr_shape))}) (on the output grid)"
            )
        return self.reference_normalization.normalize(ref)

    def _condition(self, y: torch.Tensor, ref: torch.Tensor | None, hr_shape: Sequence[int]) -> torch.Tensor:
        """What the network sees: the input on the state's grid, and the reference's channels after it."""
        cond = self.space.condition(y, hr_shape)
        return cond if ref is None else torch.cat([cond, self.space.condition(ref.to(cond), hr_shape)], dim=1)

    # --- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = self._pair(batch)
        ref = None if self.prior else self._reference(batch, x.shape[2:])
        loss = denoising_loss(
            self.denoiser, self.process, self.space, x, None if self.prior else y, cond_drop_prob=self.cond_drop_prob, reference=ref
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0], sync_dist=False)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimizer, then the EMA (here, not in ``on_train_batch_end``, so that a checkpoint
        saved by a callback at the end of a batch holds the EMA of that batch's step)."""
        super().optimizer_step(*args, **kwargs)
        n = self.global_step + 1  # steps taken, this one included (the trainer counts it after the hook)
        decay = min(self.ema_decay, (1 + n) / (10 + n))
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.denoiser.parameters()):
                p_ema.lerp_(p.detach(), 1 - decay)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.denoiser.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        warm = max(1, self.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- sampling and validation ------------------------------------------------------------
    @torch.no_grad()
    def super_resolve(
        self, y: torch.Tensor, generator: torch.Generator, reference: torch.Tensor | None = None, **overrides: Any
    ) -> torch.Tensor:
        """Sample with the EMA weights (the mean of ``samples`` draws): normalised ``y`` (and ``reference``) in, normalised out."""
        opts = self.options.updated(**overrides)
        if self.prior and opts.zero_shot is None:
            opts = opts.updated(zero_shot=self.val_zero_shot)
        return sample_sr_with_uncertainty(
            self.ema, self.process, self.space, self.operator, y, opts, generator, reference=reference
        )[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x, y = self._pair(batch)
        g = make_generator(self.val_seed + batch_idx, x.device)
        sr = self.super_resolve(y, g, self._reference(batch, x.shape[2:]))
        bic = upsample(y, x.shape[2:])
        to_data = self.normalization.denormalize
        hr, sr_d, bic_d, y_d = to_data(x), to_data(sr), to_data(bic), to_data(y)
        r = self.data_range
        b = x.shape[0]
        self.log_dict(
            {
                "val/psnr": psnr(sr_d, hr, r).mean(),
                "val/ssim": ssim(sr_d, hr, r).mean(),
                "val/consistency_psnr": consistency_psnr(self.operator, sr_d, y_d, r).clamp(max=100).mean(),
                "val/psnr_bicubic": psnr(bic_d, hr, r).mean(),
            },
            prog_bar=True,
            batch_size=b,
            sync_dist=True,
        )

    test_step = validation_step

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, y = self._pair(batch) if "hr" in batch else (None, self.normalization.normalize(batch["lr"]))
        ref = self._reference(batch, self.operator.hr_shape(y.shape[2:]))
        return self.normalization.denormalize(self.super_resolve(y, make_generator(self.val_seed + batch_idx, y.device), ref))

    # --- checkpoints ---------------------------------------------------------------------------
    def inference_spec(self) -> dict[str, Any]:
        """Everything inference needs, as plain data (no code is pickled)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "spatial_dims": self.denoiser.spatial_dims,
            "channels": self.denoiser.channels,
            "scale": None if self.prior else list(self.operator.factors),
            "operator": None if self.prior else self.operator.spec(),
            "prior": self.prior,
            "space": self.space.spec(),
            "process": self.process.spec(),
            "denoiser": self.denoiser.config,
            "normalization": self.normalization.spec(),
            "sampler": self.options.spec(),
            "data_range": self.data_range,
            **({"domain": self.domain} if self.domain is not None else {}),
            **(
                {"reference": {"channels": self.reference_channels, "normalization": self.reference_normalization.spec()}}
                if self.reference_channels
                else {}
            ),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["diffsr"] = self.inference_spec()
        # the draws of training (timesteps, noise, condition dropout) continue where they stopped
        # on a resume: the same weights as an uninterrupted run with the same seed
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        rng = rng if isinstance(rng, dict) else {}
        if isinstance(rng.get("torch"), torch.Tensor):
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        spec = checkpoint.get("diffsr", {})
        self.domain = spec.get("domain", self.domain)
        if "normalization" in spec:
            self.normalization = Normalization(**spec["normalization"])
        ref = spec.get("reference") or {}
        if ref.get("normalization"):
            self.reference_normalization = Normalization(**ref["normalization"])
