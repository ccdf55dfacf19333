"""CUDA-path check (not a test): training steps (fp32 and bf16-mixed), sampling, memory, bench.

Run on a GPU machine: ``python scripts/gpu_check.py OUT_DIR``. Writes OUT_DIR/gpu_check.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(out: Path) -> None:
    import lightning.pytorch as pl

    from domains.images.data import ImageDataModule
    from pipelines.api import evaluate
    from pipelines.bench import run_bench
    from toolkit.checkpoint import load_model
    from toolkit.denoiser import UNetDenoiser
    from toolkit.engine import SamplerOptions
    from toolkit.lightning import DiffusionSR
    from toolkit.operators import AreaDownsample
    from toolkit.spaces import ResidualSpace
    from toolkit.tiling import Tiling

    assert torch.cuda.is_available(), "no CUDA device"
    work = Path("/tmp/diffsr_gpu_check")
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    dev = torch.device("cuda")

    # 1. bench: one engine step vs bare forward vs MONAI inferer, 2D and 3D
    res["bench_2d_256"] = run_bench((256, 256), batch=4, channels=3, steps=20, repeats=5, device="cuda")
    res["bench_3d_64"] = run_bench((64, 64, 64), batch=1, channels=1, steps=10, repeats=3, device="cuda")
    print(json.dumps(res, indent=1), flush=True)

    # 2. training steps through Lightning, fp32 and bf16-mixed
    for precision in ("32-true", "bf16-mixed"):
        pl.seed_everything(0)
        model = DiffusionSR(
            UNetDenoiser(2, channels=3, num_channels=(64, 128, 256), attention_levels=(False, False, True), num_res_blocks=2),
            operator=AreaDownsample(2), space=ResidualSpace(0.25), sampling=SamplerOptions(steps=20),
        )
        dm = ImageDataModule(train=[str(ROOT / "data/natural/train"), str(ROOT / "data/portraits")], channels=3,
                             crop_size=128, batch_size=32, samples_per_epoch=32 * 120, num_workers=4)
        torch.cuda.reset_peak_memory_stats()
        trainer = pl.Trainer(max_steps=120, accelerator="gpu", devices=1, precision=precision, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=str(work / precision))
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        ckpt = work / f"model_{precision}.ckpt"
        trainer.save_checkpoint(str(ckpt))
        res[f"train_{precision}"] = {
            "steps": 120, "batch": 32, "crop": 128, "params": sum(p.numel() for p in model.denoiser.parameters()),
            "wall_s": round(wall, 2), "s_per_step_incl_startup": round(wall / 120, 4),
            "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        }
        print(precision, res[f"train_{precision}"], flush=True)

        # 3. sampling: evaluate on the held-back photos on the GPU, fp32 and bf16 autocast
        m = load_model(ckpt, "cuda")
        holdout = sorted((ROOT / "data/natural/holdout").iterdir())
        for sp in ("32", "bf16"):
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            rep = evaluate(ckpt, holdout, work / f"eval_{precision}_{sp}", steps=20, device="cuda", progress=False,
                           model=m, tiling=Tiling(256, 32, 8), precision=sp)
            torch.cuda.synchronize()
            res[f"eval_{precision}_sample{sp}"] = {
                "wall_s": round(time.perf_counter() - t0, 2), "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                "methods": rep["methods"],
            }
            print(sp, res[f"eval_{precision}_sample{sp}"], flush=True)

    # 4. 3D: a training step of a 3D UNet on 64^3 patches in bf16, peak memory
    net = UNetDenoiser(3, channels=1, num_channels=(32, 64, 64), attention_levels=(False, False, True)).to(dev)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    z = torch.randn(2, 1, 64, 64, 64, device=dev)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = (net(z, torch.rand(2, device=dev) * 999, z) - z).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    res["train3d_64cubed_bf16"] = {"s_per_step": round(sorted(times[1:])[2], 4), "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
