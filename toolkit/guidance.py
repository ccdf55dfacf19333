"""Guidance: wrappers around a denoiser that shape what the sampler sees.

* :func:`classifier_free` (Ho & Salimans, 2022): ``(1 - w) * uncond + w * cond`` on the network
  output, turned into ``(x0_hat, eps_hat)`` by the process.
* DDNM data consistency (Wang et al., 2023) replaces the range-space part of ``x0_hat`` with
  ``A^+ y`` at every step; the engine's loop applies it per cell
  (:meth:`toolkit.engine.Canvas.consistent`) and :func:`require_linear` guards it.
"""

from __future__ import annotations

import torch
from torch import nn

from toolkit.process import Process
from toolkit.samplers import ModelFn
from toolkit.spaces import StateSpace


def classifier_free(denoiser: nn.Module, process: Process, cond: torch.Tensor, guidance_scale: float = 1.0) -> ModelFn:
    """Model function ``(z, t) -> (x0_hat, eps_hat)`` for ``denoiser`` conditioned on ``cond``, with CFG.

    ``guidance_scale = 1`` is the plain conditional model (one network call per step); any other
    ``w`` runs the conditional and the null-conditioned passes in one batch and returns
    ``(1 - w) * uncond + w * cond``.
    """
    w = float(guidance_scale)

    def model_fn(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zi = process.network_input(z, t)  # what the network sees of the state (the state itself, unless the process scales it)
        if w == 1.0:
            out = denoiser(zi, t, cond)
        else:
            drop = torch.cat([torch.zeros(z.shape[0], dtype=torch.bool), torch.ones(z.shape[0], dtype=torch.bool)])
            both = denoiser(torch.cat([zi, zi]), torch.cat([t, t]), torch.cat([cond, cond]), drop.to(z.device))
            out_c, out_u = both.chunk(2)
            out = (1 - w) * out_u + w * out_c
        return process.predict(out, z, t)

    return model_fn


def require_linear(space: StateSpace) -> None:
    """Every-step data consistency is exact only where decoding is affine in the state.

    Raises:
        ValueError: ``space`` is not linear (a latent space's decoder is a network).
    """
    if not space.linear:
        raise ValueError(
            f"consistency 'every_step' needs a linear state space; {type(space).__name__} is not "
            "(its decoder is not affine in the state): use consistency 'final' or 'none'"
        )
