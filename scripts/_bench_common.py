"""Pieces the benchmark scripts share: peak memory of this process, a small untrained checkpoint."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any


def hwm_kb() -> int:
    """Peak resident memory of this process (``VmHWM``, kB). Unlike ``ru_maxrss``, it is not
    inherited from the parent across fork and exec, so the parent's inputs do not count."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def save_untrained_checkpoint(
    path: Path,
    spatial_dims: int,
    channels: int,
    operator: Any,
    normalization: Any,
    domain: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A small untrained model (UNet 8/16/32, no attention; weights perturbed so its output is not zero).

    Benchmarks time and measure the sampler, not a model's quality, so the weights need only be
    realistic in size and non-degenerate.
    """
    import torch

    from toolkit.denoiser import UNetDenoiser
    from toolkit.engine import SamplerOptions
    from toolkit.lightning import DiffusionSR

    den = UNetDenoiser(
        spatial_dims, channels, num_channels=[8, 16, 32], attention_levels=[False] * 3, norm_num_groups=8,
        num_head_channels=8, mid_attention=False,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    module = DiffusionSR(den, operator, normalization=normalization, sampling=SamplerOptions(steps=2))
    module.domain = domain
    module.ema.load_state_dict(den.state_dict())
    torch.save({"diffsr": module.inference_spec(), "state_dict": module.state_dict()}, path)
    return path
