"""Image-quality metrics for ``(B, C, *spatial)`` tensors in 2D and 3D (torchmetrics underneath)."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from toolkit.operators import Operator


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample PSNR in dB, ``(B,)``."""
    return peak_signal_noise_ratio(
        pred.float(), target.float(), data_range=data_range, reduction="none", dim=tuple(range(1, pred.ndim))
    )


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample SSIM (Gaussian window 11, sigma 1.5) in 2D or 3D, ``(B,)``."""
    kernel = min(11, *pred.shape[2:])
    kernel -= 1 - kernel % 2  # odd
    return structural_similarity_index_measure(
        pred.float(), target.float(), data_range=data_range, reduction="none", kernel_size=kernel
    )


def consistency_psnr(operator: Operator, sr: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR between ``A(sr)`` and the low-resolution input ``y``, ``(B,)``: how well the output explains its input."""
    return psnr(operator.A(sr.float()), y.float(), data_range)
