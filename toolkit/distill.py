"""One-step distillation of a trained SR diffusion model on its deterministic trajectories (SinSR, Wang et al. 2024).

:class:`DistillSR` starts a student from a teacher checkpoint's EMA weights (built as
:class:`toolkit.adapt.AdaptSR` builds a model from its source) and keeps a frozen copy of the
teacher. Each training step draws a start state ``z_T`` from the teacher's prior, runs the teacher's
deterministic sampler (DDIM, ``eta = 0``; for ResShift its ``ddim`` with ``eta = 0``) from that
same start to its end point ``x_teacher`` (no gradient), and trains the student to map
``(z_T, T)`` to ``x_teacher`` in one network call through the process's ``predict``.

Sharing the start state: the engine's in-memory canvas makes its prior from the generator's first
draw (``torch.randn(state_shape, generator=g)``), and a deterministic sampler without a truncated
start draws nothing else. So the start noise is drawn here from a copy of a per-step generator, and
the engine is given a generator in the same state: its prior noise equals ours, bit for bit.

The saved checkpoint is an ordinary ``DiffusionSR`` checkpoint whose sampling defaults are the
student's (``steps = student_steps``, DDIM ``eta = 0``, no truncated start, one sample, no flip
ensemble), with ``"distilled_from"`` added. With one step the engine's schedule goes from
``T - 1`` straight to the clean state, and the DDIM / ResShift step to the clean state returns
``x0_hat``: sampling the student gives its one-call prediction exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from toolkit.adapt import AdaptSR
from toolkit.engine import SamplerOptions, sample_sr
from toolkit.guidance import classifier_free
from toolkit.lightning import denoising_loss
from toolkit.utils import upsample


def teacher_options(options: SamplerOptions, steps: int) -> SamplerOptions:
    """The teacher's deterministic sampler: DDIM ``eta = 0``, ``steps`` steps from ``T - 1``, one sample, no projection."""
    return dataclasses.replace(
        options, sampler="ddim", eta=0.0, steps=int(steps), t_start=None, start="interpolation", samples=1,
        flip_ensemble=False, consistency="none", zero_shot=None,
    )


def student_options(options: SamplerOptions, steps: int) -> SamplerOptions:
    """The student's sampling defaults: DDIM ``eta = 0`` in ``steps`` (1 or 2) steps, the teacher's consistency."""
    return dataclasses.replace(
        options, sampler="ddim", eta=0.0, steps=int(steps), t_start=None, start="interpolation", samples=1,
        flip_ensemble=False, zero_shot=None,
    )


class DistillSR(AdaptSR):
    """SinSR-style distillation (Wang et al. 2024) of a Gaussian or ResShift checkpoint into a one-step student.

    Args:
        teacher: the trained checkpoint (never written).
        teacher_steps: steps of the teacher's deterministic sampler (default: the checkpoint's).
        student_steps: the student's sampling steps stored in its checkpoint (1 or 2; it is
            trained for the one-step map from ``T - 1``).
        lambda_denoise: weight of the ordinary denoising loss added to the distillation loss.
        lr, warmup_steps, ema_decay: as :class:`toolkit.adapt.AdaptSR`.
        seed: seed of the per-step generators of the start noise (step ``k`` uses ``seed + k``).
    """

    def __init__(
        self,
        teacher: str,
        teacher_steps: int | None = None,
        student_steps: int = 1,
        lambda_denoise: float = 0.0,
        lr: float = 1e-4,
        warmup_steps: int = 20,
        ema_decay: float = 0.99,
        seed: int = 0,
    ) -> None:
        super().__init__(
            source=teacher, normalization="source", lr=lr, warmup_steps=warmup_steps, ema_decay=ema_decay,
            cond_drop_prob=0.0, seed=seed,
        )
        if self.prior:
            raise ValueError(f"{teacher} is an unconditional prior: distillation needs a conditional SR model")
        if self.process.kind not in ("gaussian", "resshift"):
            raise ValueError(f"{teacher}: the {self.process.kind!r} process has no deterministic DDIM sampler to distil")
        if int(student_steps) not in (1, 2):
            raise ValueError(f"student_steps {student_steps}: expected 1 or 2")
        self.teacher_path = str(teacher)
        self.teacher_steps = int(teacher_steps or self.options.steps)
        if self.teacher_steps < 1:
            raise ValueError(f"teacher_steps {teacher_steps}: expected an integer >= 1")
        self.student_steps, self.lambda_denoise, self.seed = int(student_steps), float(lambda_denoise), int(seed)
        self.teacher_sampling = teacher_options(self.options, self.teacher_steps)
        self.teacher = copy.deepcopy(self.ema).requires_grad_(False).eval()
        self.options = student_options(self.options, self.student_steps)

    def train(self, mode: bool = True) -> DistillSR:
        super().train(mode)
        self.teacher.eval()  # frozen: never in training mode
        return self

    def distillation_loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """MSE between the student's one-call ``x0`` from ``z_T`` and the teacher's deterministic end point from the same ``z_T``.

        Args:
            x: ``(B, C, *S)`` normalised high resolution (only its grid is used).
            y: ``(B, C, *S_lr)`` normalised input.
            generator: a CPU generator; its first draw is the start noise (it is not advanced).
        """
        hr_shape = x.shape[2:]
        state_shape = (y.shape[0], *self.space.state_shape(y.shape[1], hr_shape))
        start = torch.Generator(device=generator.device).set_state(generator.get_state())
        noise = torch.randn(state_shape, generator=generator, device=generator.device, dtype=torch.float32).to(y)
        with torch.no_grad():
            x_teacher = sample_sr(self.teacher, self.process, self.space, self.operator, y, self.teacher_sampling, start)
        y_state = self.space.encode(upsample(y, hr_shape), y) if self.process.conditional else None
        z_T = self.process.prior(noise, y_state)
        t = torch.full((y.shape[0],), float(self.process.timesteps - 1), device=y.device)
        model_fn = classifier_free(self.denoiser, self.process, self.space.condition(y, hr_shape), self.options.guidance_scale)
        x0, _ = model_fn(z_T, t)
        return F.mse_loss(self.space.decode(x0, y, hr_shape), x_teacher)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = self._pair(batch)
        g = torch.Generator().manual_seed(self.seed + int(self.global_step))
        loss = self.distillation_loss(x, y, g)
        self.log("train/distill", loss, prog_bar=True, batch_size=x.shape[0], sync_dist=False)
        if self.lambda_denoise:
            loss = loss + self.lambda_denoise * denoising_loss(self.denoiser, self.process, self.space, x, y, g)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}
        checkpoint["diffsr"].pop("adapted_from", None)
        checkpoint["diffsr"]["distilled_from"] = {
            "teacher": self.teacher_path,
            "teacher_steps": self.teacher_steps,
            "student_steps": self.student_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        raise ValueError("a distillation starts from its teacher checkpoint: resume the student with 'diffsr fit' instead")
