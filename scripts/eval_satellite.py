"""Evaluate a satellite checkpoint on the blocks its config held back from training.

Writes each validation block of the config's ``RasterDataModule`` as a GeoTIFF, then runs
:func:`domains.satellite.pipeline.evaluate_rasters` on them (the model's own operator degrades
them; diffsr is compared with bicubic) and prints the mean metrics as JSON.

    python scripts/eval_satellite.py --config configs/satellite/sr_x2.yaml \
        --checkpoint runs/satellite_sr_x2/last.ckpt --out runs/satellite_sr_x2/eval [--bands 2,3,4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the LightningCLI config the model was trained with")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output folder (blocks, metrics.json, report.html)")
    p.add_argument("--bands", default=None, help="1-based bands, e.g. 2,3,4 (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--samples", type=int, default=None, help="samples averaged (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from domains.satellite.data import RasterDataModule
    from domains.satellite.pipeline import evaluate_rasters
    from toolkit.checkpoint import load_model
    from toolkit.tiling import Tiling

    init = dict(yaml.safe_load(Path(args.config).read_text())["data"]["init_args"])
    if args.bands:
        init["bands"] = [int(b) for b in args.bands.split(",")]
    dm = RasterDataModule(**init)
    out = Path(args.out)
    blocks = dm.write_validation_rasters(out / "blocks", overwrite=True)
    model = load_model(args.checkpoint, args.device)
    options = model.options.updated(steps=args.steps, samples=args.samples)
    report = evaluate_rasters(model, blocks, out, options, args.seed, Tiling(args.tile, args.overlap), progress=True)
    print(json.dumps(report["methods"], indent=2))
    print(f"report: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
