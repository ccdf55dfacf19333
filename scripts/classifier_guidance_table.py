"""Classifier guidance measured: zero-shot SR of held-back Landsat blocks by a multi-sensor prior, with and without guidance.

For each target year and its class (1985: ``tm``, 2020: ``oli_etm``), each factor and each guidance
scale, this runs the commands a user would run::

    diffsr evaluate --checkpoint PRIOR --hr BLOCK --out DIR --zero-shot ddnm --operator area --scale F \
        [--classifier CLF --class LABEL --classifier-scale S]
    diffsr degrade BLOCK LR --operator area --scale F
    diffsr upscale LR SR --checkpoint PRIOR --zero-shot ddnm --operator area --scale F [--classifier ...]

and records PSNR / SSIM / consistency / SAM / ERGAS (from ``evaluate``'s metrics.json) and the
classifier's probability of the target class on the clean output (``p(c | x_sr, t=0)``, from the
upscaled file): whether guidance moved the sample towards the class, and what that did to fidelity.
A wrong-class control (the other class at the largest scale) shows what steering does when the
class is wrong. It also scores the classifier on the clean held-back blocks of every year.

    python scripts/classifier_guidance_table.py --prior runs/prior_pucallpa/last.ckpt \
        --classifier runs/classifier_pucallpa/last.ckpt --work runs/classifier_guidance --out docs/classifier_guidance
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

from domains.satellite.data import RasterDataModule
from pipelines.cli import main as cli
from toolkit.classifier import load_classifier

DATA = Path("data/satellite/pucallpa_landsat")
YEARS = [1985, 1990, 1995, 2000, 2005, 2010, 2015, 2020]
TARGETS = {1985: "tm", 2020: "oli_etm"}
OTHER = {"tm": "oli_etm", "oli_etm": "tm"}


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args: list[str]) -> str:
    """Run one diffsr command in this process; its command line as text."""
    line = "diffsr " + shlex.join(args)
    print(line, flush=True)
    code = cli(args)
    if code != 0:
        raise SystemExit(f"failed ({code}): {line}")
    return line


def held_back_blocks(work: Path) -> dict[int, Path]:
    """Block [1, 3] of the 2x4 grid of every year (the configs' held-back block) as GeoTIFFs."""
    dm = RasterDataModule(train=[str(DATA / f"{y}.tif") for y in YEARS], grid=(2, 4), val_blocks=[(1, 3)], gap=8, crop_size=64)
    paths = dm.write_validation_rasters(work / "blocks", overwrite=True)
    return {int(p.stem.split("_")[0]): p for p in paths}


def class_probabilities(clf: Any, path: Path, levels: list[int], seed: int = 0) -> dict[str, list[float]]:
    """``p(class | x_t, t)`` of a raster (its classes' order) at each level ``t`` (noise seeded)."""
    with rasterio.open(path) as src:
        x = torch.from_numpy(src.read().astype(np.float32))[None]
    z0 = clf.normalization.normalize(x)
    out = {}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in levels:
            tt = torch.full((1,), t, dtype=torch.long)
            z = clf.process.q_sample(z0, tt, torch.randn(z0.shape, generator=g))
            out[str(t)] = [round(float(v), 4) for v in torch.softmax(clf.network(z, tt.float()), 1)[0]]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--work", default="runs/classifier_guidance")
    p.add_argument("--out", default="docs/classifier_guidance")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0])
    p.add_argument("--factors", type=int, nargs="+", default=[2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="ddnm", help="zero-shot method (default ddnm)")
    p.add_argument("--name", default="x2", help="this table's name: OUT/metrics_NAME.json, OUT/table_NAME.md, WORK/NAME/")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more sampling options for every run (e.g. --sigma-y 0.05)")
    a = p.parse_args()
    work, out = Path(a.work) / a.name, Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    clf = load_classifier(a.classifier)
    blocks = held_back_blocks(work)
    levels = [0, 100, 250, 500]
    record: dict[str, Any] = {
        "prior": a.prior, "classifier": a.classifier, "classes": clf.classes, "seed": a.seed,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores (shared), {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "method": a.method, "options": a.extra,
        "classifier_on_held_back_blocks": {str(y): class_probabilities(clf, blocks[y], levels) for y in YEARS},
        "runs": [],
    }
    for year, label in TARGETS.items():
        block = blocks[year]
        hr_p = class_probabilities(clf, block, [0])["0"][clf.classes.index(label)]
        for f in a.factors:
            lr = work / f"{year}_x{f}_lr.tif"
            degrade = run(["degrade", str(block), str(lr), "--operator", "area", "--scale", str(f), "--overwrite"])
            settings: list[tuple[str, float | None]] = [(label, None)] + [(label, s) for s in a.scales] + [(OTHER[label], max(a.scales))]
            for cls, s in settings:
                tag = f"{year}_x{f}_" + ("unguided" if s is None else f"{cls}_s{s:g}")
                zs = ["--zero-shot", a.method, "--operator", "area", "--scale", str(f), "--seed", str(a.seed), *a.extra]
                guide = [] if s is None else ["--classifier", a.classifier, "--class", cls, "--classifier-scale", f"{s:g}"]
                t0 = time.perf_counter()
                ev = run(["evaluate", "--checkpoint", a.prior, "--hr", str(block), "--out", str(work / tag), "--overwrite", *zs, *guide])
                seconds = time.perf_counter() - t0
                sr = work / f"{tag}_sr.tif"
                up = run(["upscale", str(lr), str(sr), "--checkpoint", a.prior, "--overwrite", *zs, *guide])
                m = json.loads((work / tag / "metrics.json").read_text())
                probs = class_probabilities(clf, sr, [0])["0"]
                row = {
                    "year": year, "target_class": label, "factor": f, "guided_class": None if s is None else cls, "scale": s,
                    **{k: m["methods"]["diffsr"][k] for k in ("psnr", "ssim", "consistency_psnr", "sam_deg", "ergas")},
                    "bicubic_psnr": m["methods"]["bicubic"]["psnr"], "bicubic_projected_psnr": m["methods"]["bicubic_projected"]["psnr"],
                    "bicubic_projected_ssim": m["methods"]["bicubic_projected"]["ssim"],
                    "p_target_class_sr": probs[clf.classes.index(label)], "p_target_class_hr": hr_p,
                    "evaluate_seconds": round(seconds, 1), "commands": [degrade, ev, up],
                }
                record["runs"].append(row)
                (out / f"metrics_{a.name}.json").write_text(json.dumps(record, indent=1))
    lines = ["| year (class) | x | guidance | PSNR | SSIM | consistency | SAM ° | p(class \\| SR) |", "|---|---|---|---|---|---|---|---|"]
    for r in record["runs"]:
        g = "none" if r["scale"] is None else f"{r['guided_class']} s={r['scale']:g}"
        lines.append(
            f"| {r['year']} ({r['target_class']}) | {r['factor']} | {g} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
            f"{r['consistency_psnr']:.1f} | {r['sam_deg']:.2f} | {r['p_target_class_sr']:.3f} |"
        )
    print("\n".join(lines))
    (out / f"table_{a.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
