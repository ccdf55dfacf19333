"""Domain adaptation measured on real shifts: before / after / target-trained-from-scratch, same budget.

For each domain, a source model is trained on the source data, then (1) evaluated unadapted on a
held-back part of the target, (2) adapted to the target with ``diffsr adapt`` (with its
high-resolution data, and HR-free from its low-resolution data only), (3) compared with a model
trained from scratch on the same target data for the same number of steps as the adaptation:

* mri: template (MNI152, 1 mm) -> another head (nibabel's 2.75 mm anatomy), slice thickness x4,
  slice-wise 2D (no neighbouring planes); target: the head's first 36 coronal rows (HR), or the
  thick-slice scan itself (HR-free, SMORE); evaluated on the remaining 31 rows;
* satellite: Pucallpa 2015 + 2020 (Landsat 7 ETM+ / 8 OLI) -> 1985 (Landsat 5 TM), and the
  Landsat 8 scene (bands 6, 5, 4, 3 = SWIR1, NIR, Red, Green) -> 1985; x2 sensor MTF; evaluated on
  the block every year holds back;
* faces: colour portraits -> greyscale portraits (blind restoration x4); 35 greyscale people to
  adapt on, 20 others to evaluate.

    python scripts/adaptation_table.py --only mri          # runs what is missing, then the table
    python scripts/adaptation_table.py --table-only

Every command is printed and recorded beside its metrics under ``docs/adaptation/``; training
budgets are in steps (``--trainer.max_steps``) so that the comparison does not depend on the load
of the machine; wall-clock seconds are recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "adaptation"
DOCS = ROOT / "docs" / "adaptation"
DIFFSR = str(Path(sys.executable).with_name("diffsr"))
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
PUCALLPA = "data/satellite/pucallpa_landsat"

#: budgets in optimiser steps
SOURCE_STEPS = {"mri": 800, "satellite": 800, "faces": 400}
ADAPT_STEPS = {"mri": 300, "satellite": 300, "faces": 150}


def sh(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` in the repository (stdout to ``log``); the wall-clock seconds it took."""
    print("$", " ".join(cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as f:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    print(f"  {seconds:.0f} s", flush=True)
    return seconds


def fit(name: str, domain: str, config: str, steps: int, args: list[str]) -> dict[str, Any]:
    out = RUNS / domain / name
    return {
        "name": name, "kind": "fit", "ckpt": out / "last.ckpt", "steps": steps,
        "cmd": [DIFFSR, "fit", "--config", config, "--trainer.default_root_dir", str(out), "--trainer.max_steps", str(steps),
                "--trainer.max_time", "null", *QUIET, *args],
    }


def adapt(name: str, domain: str, source: str, data: list[str], steps: int, args: list[str] = (), extra: list[str] = ()) -> dict[str, Any]:
    out = RUNS / domain / name
    src = str(RUNS / domain / source / "last.ckpt")
    return {
        "name": name, "kind": "adapt", "ckpt": out / "last.ckpt", "steps": steps, "source": source,
        "cmd": [DIFFSR, "adapt", "--checkpoint", src, "--data", *data, "--out", str(out), "--max-steps", str(steps),
                "--overwrite", *args, "--", *QUIET, *extra],
    }


def prepare_mri() -> dict[str, str]:
    """The target head split into an adaptation part (HR) and a held-back part; its thick-slice scan."""
    import nibabel as nib
    import numpy as np

    dst = RUNS / "mri" / "data"
    dst.mkdir(parents=True, exist_ok=True)
    img = nib.load(str(ROOT / "data/mri/nibabel_someones_anatomy.nii.gz"))
    a = np.asarray(img.dataobj, dtype=np.float32)
    paths = {}
    for part, sl, start in (("adapt", slice(0, 36), 0), ("heldback", slice(36, None), 36)):
        affine = img.affine.copy()
        affine[:3, 3] = img.affine[:3, :3] @ np.array([0, start, 0]) + img.affine[:3, 3]
        path = dst / f"someone_{part}.nii.gz"
        nib.save(nib.Nifti1Image(a[:, sl, :], affine), str(path))
        paths[part] = str(path)
    thick = dst / "someone_thick_x4.nii.gz"
    subprocess.run([DIFFSR, "degrade", str(ROOT / "data/mri/nibabel_someones_anatomy.nii.gz"), str(thick), "--operator", "slice",
                    "--scale", "1,1,4", "--overwrite"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    paths["thick"] = str(thick)
    return paths


def plan_mri() -> tuple[list[dict[str, Any]], list[tuple[str, str, list[str]]]]:
    p = prepare_mri()
    cfg = "configs/mri/sr2d_slice_x4.yaml"
    n0 = ["--data.init_args.slicewise_neighbours", "0", "--data.init_args.val", "null"]
    s, k = SOURCE_STEPS["mri"], ADAPT_STEPS["mri"]
    runs = [
        fit("source_template", "mri", cfg, s, n0),
        adapt("adapted_hr", "mri", "source_template", [p["adapt"]], k),
        adapt("adapted_smore", "mri", "source_template", [p["thick"]], k, ["--hr-free"]),
        # the adaptation's data as adapt builds them from the file: 36 x 36 planes, batches of 8
        fit("scratch_target", "mri", cfg, k, [*n0, "--data.init_args.train", p["adapt"], "--data.init_args.voxel_sizes", "null",
                                             "--data.init_args.patch_size", "[36, 1, 36]", "--data.init_args.batch_size", "8"]),
    ]
    evals = [(r["name"], str(r["ckpt"]), [p["heldback"]]) for r in runs]
    return runs, evals


def prepare_satellite() -> dict[str, Any]:
    """The 1985 block held back (every year holds it back in training), and 1985 degraded (the HR-free data)."""
    import yaml

    from domains.satellite.data import RasterDataModule

    dst = RUNS / "satellite" / "data"
    init = dict(yaml.safe_load((ROOT / "configs/satellite/pucallpa_x2.yaml").read_text())["data"]["init_args"])
    init["train"] = f"{PUCALLPA}/1985.tif"
    blocks = [str(q) for q in RasterDataModule(**init).write_validation_rasters(dst / "heldback", overwrite=True)]
    lr = dst / "1985_lr_x2.tif"
    subprocess.run([DIFFSR, "degrade", f"{PUCALLPA}/1985.tif", str(lr), "--operator", "mtf", "--scale", "2", "--overwrite"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return {"heldback": blocks, "lr": str(lr)}


def plan_satellite() -> tuple[list[dict[str, Any]], list[tuple[str, str, list[str]]]]:
    p = prepare_satellite()
    cfg = "configs/satellite/pucallpa_x2.yaml"
    s, k = SOURCE_STEPS["satellite"], ADAPT_STEPS["satellite"]
    t1985 = ["--data.init_args.train", f"{PUCALLPA}/1985.tif"]
    # the degraded 1985 raster is half the size: its held-back block is the same ground; 32 px windows
    lr_data = ["--data.init_args.train", p["lr"], "--data.init_args.crop_size", "32", "--data.init_args.val_crop_size", "48"]
    runs = [
        fit("source_recent", "satellite", cfg, s, []),
        fit("source_l8_scene", "satellite", "configs/satellite/sr_x2.yaml", s, ["--data.init_args.bands", "[6, 5, 4, 3]"]),
        adapt("recent_adapted_hr", "satellite", "source_recent", [cfg], k, extra=t1985),
        adapt("recent_adapted_hr_free", "satellite", "source_recent", [cfg], k, ["--hr-free"], extra=lr_data),
        adapt("l8_adapted_hr", "satellite", "source_l8_scene", [cfg], k, extra=t1985),
        fit("scratch_1985", "satellite", cfg, k, t1985),
    ]
    evals = [(r["name"], str(r["ckpt"]), p["heldback"]) for r in runs]
    return runs, evals


def prepare_faces() -> dict[str, list[str]]:
    """Colour portraits (source), greyscale portraits split by person: 35 to adapt on, 20 held back."""
    import numpy as np
    from PIL import Image

    root = ROOT / "data/faces/congress_portraits"
    files = sorted(root.glob("*.jpg"))
    grey, colour = [], []
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB")).astype(np.int16)
        flat = np.abs(a[..., 0] - a[..., 1]).mean() < 2 and np.abs(a[..., 1] - a[..., 2]).mean() < 2
        (grey if flat else colour).append(f)
    out = {"colour": colour, "grey_adapt": grey[::1][:35], "grey_heldback": grey[35:]}
    dirs = {}
    for name, members in out.items():
        d = RUNS / "faces" / "data" / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for f in members:
            os.symlink(f, d / f.name)
        dirs[name] = [str(d)]
    dirs["heldback_files"] = [str(RUNS / "faces" / "data" / "grey_heldback" / f.name) for f in out["grey_heldback"]]
    return dirs


def plan_faces() -> tuple[list[dict[str, Any]], list[tuple[str, str, list[str]]]]:
    p = prepare_faces()
    cfg = "configs/faces/restore_128.yaml"
    s, k = SOURCE_STEPS["faces"], ADAPT_STEPS["faces"]
    grey = ["--data.init_args.root", p["grey_adapt"][0], "--data.init_args.val_count", "5"]
    runs = [
        fit("source_colour", "faces", cfg, s, ["--data.init_args.root", p["colour"][0]]),
        adapt("adapted_grey", "faces", "source_colour", [cfg], k, extra=grey),
        fit("scratch_grey", "faces", cfg, k, grey),
    ]
    evals = [(r["name"], str(r["ckpt"]), p["heldback_files"]) for r in runs]
    return runs, evals


PLANS = {"mri": plan_mri, "satellite": plan_satellite, "faces": plan_faces}
EVAL_ARGS: dict[str, dict[str, list[str]]] = {"satellite": {"source_l8_scene": ["--bands", "1,2,3,4"]}}
SMOKE_EVAL: list[str] = []


def run_domain(domain: str) -> None:
    runs, evals = PLANS[domain]()
    record: dict[str, Any] = {}
    rec_path = DOCS / domain / "runs.json"
    if rec_path.is_file():
        record = json.loads(rec_path.read_text())
    for r in runs:
        if not Path(r["ckpt"]).is_file():
            seconds = sh(r["cmd"], RUNS / domain / f"{r['name']}.log")
            record[r["name"]] = {"command": " ".join(r["cmd"][1:]).replace(str(ROOT) + "/", ""), "steps": r["steps"],
                                 "seconds": round(seconds, 1), "kind": r["kind"], "source": r.get("source")}
            rec_path.parent.mkdir(parents=True, exist_ok=True)
            rec_path.write_text(json.dumps(record, indent=1))
    for name, ckpt, hr in evals:
        dst = DOCS / domain / f"eval_{name}.json"
        if dst.is_file():
            continue
        out = RUNS / domain / "eval" / name
        cmd = [DIFFSR, "evaluate", "--checkpoint", ckpt, "--hr", *hr, "--out", str(out), "--overwrite", "--seed", "0",
               *EVAL_ARGS.get(domain, {}).get(name, []), *SMOKE_EVAL]
        seconds = sh(cmd, RUNS / domain / f"eval_{name}.log")
        metrics = json.loads((out / "metrics.json").read_text())
        metrics["command"] = " ".join(cmd[1:]).replace(str(ROOT) + "/", "")
        metrics["eval_seconds"] = round(seconds, 1)
        dst.write_text(json.dumps(metrics, indent=1))
        for png in out.glob("*.png"):
            shutil.copy(png, DOCS / domain / f"{name}_{png.name}")


MODEL_KEYS = ("diffsr", "restored")
BASE_KEYS = ("bicubic", "cubic")
LABELS = {
    "source_template": "source (template), unadapted", "adapted_hr": "adapted, with HR (36 rows)",
    "adapted_smore": "adapted, HR-free (SMORE, the thick scan itself)", "scratch_target": "from scratch on the target (HR, 36 rows)",
    "source_recent": "source 2015+2020, unadapted", "source_l8_scene": "source Landsat 8 scene (bands 6,5,4,3), unadapted",
    "recent_adapted_hr": "2015+2020 adapted to 1985, with HR", "recent_adapted_hr_free": "2015+2020 adapted to 1985, HR-free (ZSSR)",
    "l8_adapted_hr": "L8 scene adapted to 1985, with HR", "scratch_1985": "from scratch on 1985",
    "source_colour": "source (colour portraits), unadapted", "adapted_grey": "adapted to greyscale (35 people)",
    "scratch_grey": "from scratch on greyscale (35 people)",
}


def common_range(metrics: dict[str, Any], method: str, span: float | None) -> dict[str, float]:
    """The method's metrics, its PSNR on a common per-band range ``span`` where the evaluation scored
    each band against the checkpoint's own span (rasters: checkpoints with other normalisations
    would otherwise not compare)."""
    row = dict(metrics["methods"][method])
    ranges = metrics.get("data_range_per_band")
    if span is None or not ranges:
        return row
    import math

    per_file = []
    for f in metrics["files"]:
        bands = f.get(method, {}).get("psnr_per_band")
        if bands:
            per_file.append(sum(p + 20 * math.log10(span / r) for p, r in zip(bands, ranges)) / len(bands))
    if per_file:
        row["psnr"] = sum(per_file) / len(per_file)
    return row


#: rasters: PSNR over 255 per band (the composites are uint8), whatever the checkpoint's normalisation
SPANS = {"satellite": 255.0}


def table() -> str:
    lines = [
        "# Domain adaptation: before / after / from scratch",
        "",
        "Generated by `python scripts/adaptation_table.py` (commands and seconds: `<domain>/runs.json`, metrics: "
        "`<domain>/eval_<run>.json`). One seed; training budgets in optimiser steps on the 2-core CPU machine, one thread "
        "per run, several runs sharing the cores (the seconds are wall-clock under that load).",
        "",
    ]
    out: dict[str, Any] = {}
    for domain in PLANS:
        runs_path = DOCS / domain / "runs.json"
        if not runs_path.is_file():
            continue
        runs = json.loads(runs_path.read_text())
        span = SPANS.get(domain)
        extra = " SAM (deg) | ERGAS |" if domain == "satellite" else ""
        lines += [f"## {domain}", "", f"| model | training | PSNR | SSIM |{extra} consistency |", "|---|---|---|---|" + ("---|---|" if extra else "") + "---|"]
        base_row = None
        for name, info in runs.items():
            path = DOCS / domain / f"eval_{name}.json"
            if not path.is_file():
                continue
            metrics = json.loads(path.read_text())
            methods = metrics.get("methods", {})
            key = next((k for k in MODEL_KEYS if k in methods), None)
            if key is None:
                continue
            row = common_range(metrics, key, span)
            if base_row is None:
                for b in BASE_KEYS + tuple(f"{k}_projected" for k in BASE_KEYS):
                    if b in methods:
                        base_row = base_row or []
                        base_row.append((b, common_range(metrics, b, span)))
            what = f"{info['steps']} steps" + (f" from {info['source']}" if info.get("source") else "")
            sat = f" {row.get('sam_deg', float('nan')):.2f} | {row.get('ergas', float('nan')):.2f} |" if extra else ""
            lines.append(
                f"| {LABELS.get(name, name)} | {what} ({info['seconds']:.0f} s) | {row['psnr']:.2f} | {row.get('ssim', float('nan')):.4f} |"
                f"{sat} {row.get('consistency_psnr', float('nan')):.1f} |"
            )
            out.setdefault(domain, {})[name] = {"metrics": row, **info}
        for b, row in base_row or []:
            sat = f" {row.get('sam_deg', float('nan')):.2f} | {row.get('ergas', float('nan')):.2f} |" if extra else ""
            lines.append(f"| {b} | - | {row['psnr']:.2f} | {row.get('ssim', float('nan')):.4f} |{sat} {row.get('consistency_psnr', float('nan')):.1f} |")
            out.setdefault(domain, {})[b] = {"metrics": row}
        if span:
            lines += ["", f"PSNR over a span of {span:g} per band (uint8 composites) for every row, whatever the checkpoint's "
                      "normalisation; SSIM and consistency are scored on each checkpoint's own band spans (the Landsat 8 "
                      "scene's DN spans make its unadapted SSIM and consistency look high): compare those between rows "
                      "that share the target's normalisation only. SAM and ERGAS do not depend on the span."]
        lines.append("")
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "results.json").write_text(json.dumps(out, indent=1))
    text = "\n".join(lines)
    (DOCS / "table.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=list(PLANS), nargs="+", default=list(PLANS))
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--smoke", metavar="DIR", default=None, help="2 steps each, outputs under DIR (a check of the plan)")
    args = p.parse_args(argv)
    if args.smoke:
        global RUNS, DOCS
        RUNS, DOCS = Path(args.smoke) / "runs", Path(args.smoke) / "docs"
        for d in SOURCE_STEPS:
            SOURCE_STEPS[d] = ADAPT_STEPS[d] = 2
        for d in PLANS:
            EVAL_ARGS.setdefault(d, {})
        SMOKE_EVAL.extend(["--steps", "2", "--samples", "1"])
    sys.path.insert(0, str(ROOT))
    if not args.table_only:
        for d in args.only:
            run_domain(d)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
