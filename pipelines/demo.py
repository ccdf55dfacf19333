"""``diffsr demo``: train a small x2 model on the shipped photos within a time budget, evaluate it on held-back ones."""

from __future__ import annotations

import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "images" / "sr3_x2.yaml"
TRAIN = [ROOT / "data" / "natural" / "train", ROOT / "data" / "portraits"]
HOLDOUT = sorted((ROOT / "data" / "natural" / "holdout").iterdir())
#: seconds kept back from the budget for start-up and the evaluation of the held-back photos
EVAL_RESERVE_S = 200.0
#: sampling steps of the demo's evaluation (the checkpoint's default is 20; 10 halves the time)
EVAL_STEPS = 10


def _hms(seconds: float) -> str:
    s = max(60, int(seconds))
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_demo(out: str | Path = "runs/demo", minutes: float = 10.0, seed: int = 0) -> dict:
    """Fit ``configs/images/sr3_x2.yaml`` for what the budget leaves, then ``evaluate`` on the held-back photos."""
    from pipelines.api import evaluate
    from pipelines.cli import lightning_main

    if not math.isfinite(minutes) or minutes <= 0:
        raise ValueError(f"--minutes {minutes}: the time budget must be a positive number of minutes")
    t0 = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_s = minutes * 60 - EVAL_RESERVE_S
    print(f"diffsr demo: training for {train_s / 60:.1f} min on {', '.join(str(p.relative_to(ROOT)) for p in TRAIN)}")
    cli = lightning_main(
        [
            "--config", str(CONFIG),
            "--seed_everything", str(seed),
            "--trainer.default_root_dir", str(out),
            "--trainer.max_time", _hms(train_s),
            "--data.init_args.train", "[" + ", ".join(str(p) for p in TRAIN) + "]",
            "--data.init_args.val", "[" + ", ".join(str(p) for p in HOLDOUT) + "]",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = out / "last.ckpt"
    print(f"diffsr demo: evaluating on held-back photos: {', '.join(p.name for p in HOLDOUT)}")
    report = evaluate(ckpt, HOLDOUT, out / "eval", steps=EVAL_STEPS, seed=seed, overwrite=True)
    m = report["methods"]
    print()
    print(f"{'method':<10}{'PSNR (dB)':>12}{'SSIM':>10}{'consistency PSNR (dB)':>24}")
    for name in ("bicubic", "diffsr"):
        print(f"{name:<10}{m[name]['psnr']:>12.2f}{m[name]['ssim']:>10.4f}{m[name]['consistency_psnr']:>24.2f}")
    for f in report["files"]:
        print(f"  {Path(f['file']).name}: diffsr {f['diffsr']['psnr']:.2f} dB, bicubic {f['bicubic']['psnr']:.2f} dB")
    print(f"\ncheckpoint: {ckpt}\nreport:     {out / 'eval' / 'report.html'}\nmetrics:    {out / 'eval' / 'metrics.json'}")
    print(f"total time: {(time.monotonic() - t0) / 60:.1f} min")
    return report
