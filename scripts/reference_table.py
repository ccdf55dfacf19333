"""Reference-guided SR (issue 14.3): the held-back block, the MRI synthetic-pair run, and the measured table.

    # the held-back block (3, 1) of configs/satellite/sr_x2.yaml as a GeoTIFF
    python scripts/reference_table.py block --out runs/reference
    # after `diffsr evaluate` of the guided and the unguided checkpoints (docs/reference/README.md)
    python scripts/reference_table.py table --guided docs/reference/pan_guided_x2/metrics.json \
        --unguided docs/reference/sr_x2/metrics.json [--guided-steps N --unguided-steps M]
    # MRI: a T2-like contrast synthesised from the T1 template, thick-slice x4, guided by the T1 or not
    python scripts/reference_table.py mri --minutes 4 --out docs/reference/mri
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MS = ROOT / "data" / "satellite" / "landsat8_ms_30m_7band_scene.tif"
KEYS = ("psnr", "ssim", "sam_deg", "ergas", "consistency_psnr")


def block(out: Path) -> Path:
    """Write block (3, 1) of the 4x4 grid of the Landsat 8 scene (sr_x2.yaml's held-back block)."""
    from domains.satellite.data import RasterDataModule

    dm = RasterDataModule(str(MS), grid=(4, 4), val_blocks=[(3, 1)])
    (path,) = dm.write_validation_rasters(out, overwrite=True)
    return path


def _row(name: str, m: dict[str, Any], seconds: float | None = None) -> str:
    cells = [f"{m[k]:.4f}" if k in m and k == "ssim" else f"{m[k]:.3f}" if k in m else "-" for k in KEYS]
    return f"| {name} | " + " | ".join(cells) + f" | {'-' if seconds is None else f'{seconds:.1f}'} |"


def table(guided: Path, unguided: Path, guided_steps: int | None, unguided_steps: int | None) -> str:
    """The markdown table of the two evaluations (the baselines from the guided one's run)."""
    g, u = json.loads(guided.read_text()), json.loads(unguided.read_text())
    gm, um = g["methods"], u["methods"]
    head = "| method | PSNR (dB) | SSIM | SAM (deg) | ERGAS | consistency PSNR (dB) | seconds |\n|---|---|---|---|---|---|---|"
    steps = lambda n: "" if n is None else f", {n} training steps"  # noqa: E731
    rows = [
        _row(f"pan-guided diffsr (pan_guided_x2{steps(guided_steps)})", gm["diffsr"], g.get("seconds")),
        _row(f"unguided diffsr (sr_x2{steps(unguided_steps)})", um["diffsr"], u.get("seconds")),
        _row("bicubic", gm["bicubic"]),
        _row("bicubic projected onto A x = y", gm["bicubic_projected"]),
        _row("Brovey (weighted, rio-pansharpen)", gm["brovey"]),
        _row("Gram-Schmidt", gm["gram_schmidt"]),
    ]
    if abs(gm["bicubic"]["psnr"] - um["bicubic"]["psnr"]) > 1e-9:
        raise SystemExit("the two evaluations saw different blocks or degradations (their bicubic rows differ)")
    return "\n".join([head, *rows])


def mri(minutes: float, out: Path, seed: int = 0) -> dict[str, Any]:
    """Train a guided and an unguided 2D thick-slice x4 model for ``minutes`` each on the synthetic pair; evaluate both."""
    import lightning.pytorch as pl

    from domains.mri.reference import ContrastPairSliceDataModule, evaluate_planes
    from toolkit.checkpoint import load_model
    from toolkit.denoiser import UNetDenoiser
    from toolkit.engine import SamplerOptions
    from toolkit.lightning import DiffusionSR
    from toolkit.operators import SliceAverage
    from toolkit.process import GaussianProcess
    from toolkit.spaces import ResidualSpace

    volume = ROOT / "data" / "mri" / "mni152_09a_t1_1mm.nii.gz"
    results: dict[str, Any] = {"volume": str(volume.relative_to(ROOT)), "minutes_each": minutes, "seed": seed, "runs": {}}
    for name, refs in (("t1_guided", 1), ("unguided", 0)):
        pl.seed_everything(seed)
        dm = ContrastPairSliceDataModule(str(volume), crop_size=(48, 48), batch_size=8, samples_per_epoch=8000, val_planes=4, with_reference=bool(refs))
        model = DiffusionSR(
            UNetDenoiser(2, 1, num_channels=(16, 32, 64), attention_levels=(False, False, False), norm_num_groups=16),
            SliceAverage(4, axis=-1, spatial_dims=2), ResidualSpace(0.25), GaussianProcess(parameterization="x0"),
            sampling=SamplerOptions(steps=20, t_start=200, start="regression", samples=4, flip_ensemble=True, consistency="final"),
            lr=0.002, warmup_steps=100, data_range=2.0, reference_channels=refs,
        )
        trainer = pl.Trainer(
            max_time=timedelta(minutes=minutes), max_epochs=-1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            default_root_dir=str(ROOT / "runs" / "reference" / f"mri_{name}"),
        )
        t0 = time.perf_counter()
        trainer.fit(model, dm)
        ckpt = ROOT / "runs" / "reference" / f"mri_{name}.ckpt"
        trainer.save_checkpoint(ckpt)
        loaded = load_model(ckpt)
        report = evaluate_planes(loaded, dm.held_back_planes(), seed=seed, use_reference=bool(refs))
        report.update(training_steps=int(trainer.global_step), training_seconds=time.perf_counter() - t0)
        results["runs"][name] = report
        print(name, json.dumps(report["methods"]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    results["command"] = f"python scripts/reference_table.py mri --minutes {minutes:g} --out {out}"
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("block")
    b.add_argument("--out", type=Path, default=ROOT / "runs" / "reference")
    t = sub.add_parser("table")
    t.add_argument("--guided", type=Path, required=True)
    t.add_argument("--unguided", type=Path, required=True)
    t.add_argument("--guided-steps", type=int, default=None)
    t.add_argument("--unguided-steps", type=int, default=None)
    m = sub.add_parser("mri")
    m.add_argument("--minutes", type=float, default=4.0)
    m.add_argument("--out", type=Path, default=ROOT / "docs" / "reference" / "mri")
    m.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.command == "block":
        print(block(args.out))
    elif args.command == "table":
        print(table(args.guided, args.unguided, args.guided_steps, args.unguided_steps))
    else:
        mri(args.minutes, args.out, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
