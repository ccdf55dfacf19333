"""Guidance: wrappers around a model function ``(z, t) -> (x0_hat, eps_hat)``.

* :func:`classifier_free` (Ho & Salimans, 2022): ``(1 - w) * uncond + w * cond`` on the network output.
* :func:`range_null_space` (DDNM, Wang et al., 2023): replace the range-space part of ``x0_hat`` with
  ``A^+ y`` at every step, so the prediction satisfies ``A x0_hat = y`` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from toolkit.denoiser import UNetDenoiser
from toolkit.operators import Operator
from toolkit.process import GaussianProcess
from toolkit.samplers import ModelFn
from toolkit.spaces import StateSpace
from toolkit.utils import append_dims


def classifier_free(
    denoiser: UNetDenoiser | nn.Module,
    process: GaussianProcess,
    cond: torch.Tensor,
    guidance_scale: float = 1.0,
) -> ModelFn:
    """Model function for ``denoiser`` conditioned on ``cond``, with classifier-free guidance.

    ``guidance_scale = 1`` is the plain conditional model (one network call per step); any other
    ``w`` runs the conditional and the null-conditioned passes in one batch and returns
    ``(1 - w) * uncond + w * cond``.
    """
    # looked up on the device (no host sync per step); MPS has no float64
    alpha_bar = process.alpha_bar.to(cond.device, torch.float32 if cond.device.type == "mps" else torch.float64)
    w = float(guidance_scale)

    def model_fn(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = alpha_bar[t.long()]
        if w == 1.0:
            out = denoiser(z, t, cond)
        else:
            drop = torch.cat([torch.zeros(z.shape[0], dtype=torch.bool), torch.ones(z.shape[0], dtype=torch.bool)])
            both = denoiser(torch.cat([z, z]), torch.cat([t, t]), torch.cat([cond, cond]), drop.to(z.device))
            out_c, out_u = both.chunk(2)
            out = (1 - w) * out_u + w * out_c
        return process.predict(out, z, ab)

    return model_fn


def range_null_space(
    model_fn: ModelFn,
    process: GaussianProcess,
    space: StateSpace,
    operator: Operator,
    y: torch.Tensor,
    hr_shape: Sequence[int] | None = None,
) -> ModelFn:
    """DDNM data consistency: ``x0 <- x0 + A^+(y - A x0)`` in image space, then back to the state space.

    ``eps_hat`` is recomputed from the corrected ``x0_hat`` so the sampler's update stays on the
    same noise level. Needs a linear state space for the correction to be exact.
    """

    def guided(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0, eps = model_fn(z, t)
        x = space.decode(x0, y, hr_shape)
        x0_new = space.encode(operator.project(x, y), y)
        # z = a x0 + s eps  =>  eps' = eps + a / s (x0 - x0')
        ab = process.alpha_bar.to(t.device)[t.long()]
        a = append_dims(ab.sqrt().to(z.dtype).to(z.device).reshape(-1), z.ndim)
        s = append_dims((1 - ab).sqrt().to(z.dtype).to(z.device).reshape(-1), z.ndim)
        return x0_new, eps + a / s * (x0 - x0_new)

    return guided
