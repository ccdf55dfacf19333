"""``diffsr bench``: wall time of one engine sampling step against the bare network and MONAI's inferer."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from toolkit.denoiser import UNetDenoiser
from toolkit.engine import SamplerOptions, sample_sr
from toolkit.operators import AreaDownsample
from toolkit.process import GaussianProcess
from toolkit.spaces import PixelSpace
from toolkit.utils import make_generator, upsample


def _median_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_bench(
    size: Sequence[int] = (128, 128),
    batch: int = 1,
    channels: int = 3,
    steps: int = 10,
    repeats: int = 5,
    device: str = "cpu",
    num_channels: Sequence[int] = (32, 64, 64),
) -> dict[str, Any]:
    """Time ``steps`` sampling steps three ways at the same shape and report per-step medians.

    * network forward: the bare MONAI UNet on a ready concatenated input, ``steps`` times;
    * engine: DDIM through diffsr's sampling loop (:func:`toolkit.engine.sample_sr`: prior, SR3
      conditioning, guidance wrapper, stepper, decoding), pixel space, no projection;
    * MONAI: ``DiffusionInferer.sample`` with the same network, a ``DDIMScheduler`` and concat conditioning.
    """
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    nd = len(size)
    levels = len(num_channels)
    multiple = math.lcm(2, 2 ** (levels - 1))  # the x2 operator's factor and the network's downsampling
    if nd not in (2, 3) or any(int(s) < 1 or int(s) % multiple for s in size):
        raise ValueError(f"--size {' '.join(map(str, size))}: give 2 or 3 sizes, each a positive multiple of {multiple}")
    if min(batch, channels, steps, repeats) < 1:
        raise ValueError("--batch, --channels, --steps and --repeats must be >= 1")
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    net = UNetDenoiser(
        spatial_dims=nd,
        channels=channels,
        num_channels=num_channels,
        attention_levels=[False] * (levels - 1) + [True],
        num_res_blocks=1,
    ).to(dev).eval()
    g = make_generator(0, dev)
    hr = tuple(int(s) for s in size)
    y = torch.randn((batch, channels, *[s // 2 for s in hr]), generator=g, device=dev)
    cond = upsample(y, hr)
    z = torch.randn((batch, channels, *hr), generator=g, device=dev)
    proc = GaussianProcess("linear", parameterization="eps")
    ts_f = torch.tensor(proc.sampling_schedule(steps).t, dtype=torch.float32, device=dev)
    x_in = torch.cat([z, cond], 1)

    def forward() -> None:
        for t in ts_f:
            net.net(x_in, t.expand(batch))

    def engine() -> None:
        opts = SamplerOptions(sampler="ddim", steps=steps, consistency="none")
        sample_sr(net, proc, PixelSpace(), AreaDownsample(2, spatial_dims=nd), y, opts, make_generator(0, dev))

    scheduler = DDIMScheduler(num_train_timesteps=proc.timesteps, schedule="linear_beta", clip_sample=False)
    scheduler.set_timesteps(steps)  # MONAI keeps its timesteps on the CPU (its inferer concatenates with a CPU tensor)
    inferer = DiffusionInferer(scheduler)

    def monai() -> None:
        inferer.sample(z, net.net, scheduler, conditioning=cond, mode="concat", verbose=False)

    with torch.inference_mode():
        t_fwd = _median_time(forward, repeats, sync) / steps
        t_eng = _median_time(engine, repeats, sync) / steps
        t_mon = _median_time(monai, repeats, sync) / len(scheduler.timesteps)
    return {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "shape": [batch, channels, *hr],
        "network_parameters": sum(p.numel() for p in net.parameters()),
        "steps": steps,
        "repeats": repeats,
        "network_forward_ms": round(t_fwd * 1e3, 3),
        "engine_step_ms": round(t_eng * 1e3, 3),
        "monai_step_ms": round(t_mon * 1e3, 3),
        "engine_over_forward": round(t_eng / t_fwd, 4),
        "engine_over_monai": round(t_eng / t_mon, 4),
    }
