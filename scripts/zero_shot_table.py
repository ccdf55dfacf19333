"""Zero-shot SR results table: one prior per domain, each operator, each method, beside the baselines.

Runs ``diffsr evaluate --zero-shot METHOD --operator OP --scale S [--sigma-y s]`` for every entry
of a plan (JSON, kept in the repository so the table can be rerun), keeps each run's
``metrics.json`` under ``--docs``, and writes ``table.md`` and ``results.json`` there: per domain x
operator x method, PSNR, SSIM, consistency PSNR, network calls per sample and seconds, beside
interpolation (bicubic / cubic), interpolation projected onto ``{x : A x = y}``, and the
conditional model of the same training budget where the plan names its metrics file.

    python scripts/zero_shot_table.py --plan docs/zero_shot/plan.json --out runs/zero_shot --docs docs/zero_shot
    python scripts/zero_shot_table.py --plan docs/zero_shot/plan.json --docs docs/zero_shot --table-only

A plan is a list of entries::

    {"domain": "images", "checkpoint": "runs/prior_images/last.ckpt", "hr": ["data/natural/holdout/a.png"],
     "operator": "area", "scale": "2", "methods": ["ddnm", "ddrm"], "sigma_y": [0.0],
     "steps": 25, "args": ["--jumps", "3"], "conditional": {"label": "sr3_x2 (15 min)", "metrics": "docs/eval_sr3_x2/metrics.json"}}

``"tag"`` (with a ``"label"`` for the table) repeats runs under another name, e.g. with other ``args``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: the diffusion output's key in a domain's metrics, first found wins
MODEL_KEYS = ("diffsr", "restored")
#: baselines shown, first found of each group
BASELINES = (("interpolation", ("bicubic", "cubic")), ("interp. + projection", ("bicubic_projected", "cubic_projected")))


def prepare(entry: dict[str, Any], out: Path) -> list[str]:
    """The entry's reference files: as given, or made once under ``out/data`` (``entry["prepare"]``).

    * ``{"kind": "crops", "src": [...], "size": [h, w]}``: the centre ``h x w`` of each image (PNG);
    * ``{"kind": "satellite_blocks", "config": C}``: the validation blocks config ``C`` held back;
    * ``{"kind": "held_back_faces", "root": R, "val_count": n, "limit": k}``: the first ``k`` of
      the people the face datamodule holds back with ``val_count = n``.
    """
    spec = entry.get("prepare")
    if spec is None:
        return list(entry["hr"])
    sys.path.insert(0, str(ROOT))
    dst = out / "data" / entry["domain"]
    if spec["kind"] == "crops":
        import numpy as np
        from PIL import Image

        dst.mkdir(parents=True, exist_ok=True)
        files = []
        for src in spec["src"]:
            a = np.asarray(Image.open(ROOT / src).convert("RGB"))
            h, w = spec["size"]
            top, left = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
            path = dst / (Path(src).stem + f"_{h}x{w}.png")
            Image.fromarray(a[top : top + h, left : left + w]).save(path)
            files.append(str(path))
        return files
    if spec["kind"] == "satellite_blocks":
        import yaml

        from domains.satellite.data import RasterDataModule

        init = dict(yaml.safe_load((ROOT / spec["config"]).read_text())["data"]["init_args"])
        return [str(p) for p in RasterDataModule(**init).write_validation_rasters(dst, overwrite=True)]
    if spec["kind"] == "held_back_faces":
        from domains.faces.data import split_by_person

        files = sorted(p for p in (ROOT / spec["root"]).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        return [str(p) for p in split_by_person(files, int(spec["val_count"]))[1][: int(spec["limit"])]]
    raise ValueError(f"unknown prepare kind {spec['kind']!r}")


def run_name(entry: dict[str, Any], method: str, sigma_y: float) -> str:
    scale = str(entry["scale"]).replace(",", "x")
    tag = f"_{entry['tag']}" if entry.get("tag") else ""
    return f"{entry['domain']}/{entry['operator']}_x{scale}/{method}" + (f"_sy{sigma_y:g}" if sigma_y else "") + tag


def run(entry: dict[str, Any], hr: list[str], method: str, sigma_y: float, out: Path, docs: Path, diffsr: str) -> None:
    name = run_name(entry, method, sigma_y)
    target = out / name
    cmd = [
        diffsr, "evaluate", "--checkpoint", entry["checkpoint"], "--hr", *hr, "--out", str(target), "--overwrite",
        "--zero-shot", method, "--operator", entry["operator"], "--scale", str(entry["scale"]), "--sigma-y", str(sigma_y),
        "--seed", str(entry.get("seed", 0)),
    ]
    if entry.get("steps"):
        cmd += ["--steps", str(entry["steps"])]
    cmd += [str(a) for a in entry.get("args", [])]
    cmd += [str(a) for a in entry.get("method_args", {}).get(method, [])]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    dst = docs / f"{name}.json"
    dst.parent.mkdir(parents=True, exist_ok=True)
    metrics = json.loads((target / "metrics.json").read_text())
    metrics["command"] = " ".join(cmd[1:])
    dst.write_text(json.dumps(metrics, indent=1))


def _model_metrics(m: dict[str, Any]) -> dict[str, Any]:
    methods = m.get("methods", {})
    for k in MODEL_KEYS:
        if k in methods:
            return methods[k]
    raise KeyError(f"no model metrics in {sorted(methods)}")


def _baseline(m: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, dict[str, Any]] | None:
    for k in keys:
        if k in m.get("methods", {}):
            return k, m["methods"][k]
    return None


def _fmt(v: Any, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(plan: list[dict[str, Any]], docs: Path) -> str:
    rows: list[str] = []
    results: list[dict[str, Any]] = []
    head = "| domain | operator | method | sigma_y | PSNR | SSIM | consistency | calls | seconds |\n|---|---|---|---|---|---|---|---|---|"
    for entry in plan:
        for sigma_y in entry.get("sigma_y", [0.0]):
            first: dict[str, Any] | None = None
            for method in entry["methods"]:
                path = docs / f"{run_name(entry, method, sigma_y)}.json"
                if not path.exists():
                    continue
                m = json.loads(path.read_text())
                first = first or m
                d = _model_metrics(m)
                label = f"{method} ({entry.get('label', entry['tag'])})" if entry.get("tag") else method
                row = {
                    "domain": entry["domain"], "operator": f"{entry['operator']} x{entry['scale']}", "method": label,
                    "sigma_y": sigma_y, "psnr": d.get("psnr"), "ssim": d.get("ssim"), "consistency_psnr": d.get("consistency_psnr"),
                    "network_calls": m.get("network_calls"), "seconds": m.get("seconds"), "file": str(path.relative_to(docs)),
                }
                results.append(row)
                rows.append(
                    f"| {row['domain']} | {row['operator']} | {label} | {sigma_y:g} | {_fmt(row['psnr'])} | {_fmt(row['ssim'], 3)} "
                    f"| {_fmt(row['consistency_psnr'], 1)} | {row['network_calls'] or '–'} | {_fmt(row['seconds'], 1)} |"
                )
            if first is None or entry.get("tag"):  # a tagged entry repeats an untagged one's baselines
                continue
            for _label, keys in BASELINES:
                found = _baseline(first, keys)
                if found:
                    k, d = found
                    results.append({"domain": entry["domain"], "operator": f"{entry['operator']} x{entry['scale']}", "method": k,
                                    "sigma_y": sigma_y, "psnr": d.get("psnr"), "ssim": d.get("ssim"),
                                    "consistency_psnr": d.get("consistency_psnr")})
                    rows.append(f"| {entry['domain']} | {entry['operator']} x{entry['scale']} | *{k}* | {sigma_y:g} | {_fmt(d.get('psnr'))} "
                                f"| {_fmt(d.get('ssim'), 3)} | {_fmt(d.get('consistency_psnr'), 1)} | 0 | – |")
            cond = entry.get("conditional")
            if cond and not sigma_y and (ROOT / cond["metrics"]).exists():
                d = _model_metrics(json.loads((ROOT / cond["metrics"]).read_text()))
                rows.append(f"| {entry['domain']} | {entry['operator']} x{entry['scale']} | *conditional: {cond['label']}* | 0 "
                            f"| {_fmt(d.get('psnr'))} | {_fmt(d.get('ssim'), 3)} | {_fmt(d.get('consistency_psnr'), 1)} | – | – |")
    (docs / "results.json").write_text(json.dumps(results, indent=1))
    return head + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", required=True, help="JSON list of runs (see the module docstring)")
    p.add_argument("--out", default="runs/zero_shot", help="evaluation folders (reports, images)")
    p.add_argument("--docs", default="docs/zero_shot", help="where metrics, table.md and results.json are kept")
    p.add_argument("--only", default=None, help="run only this domain")
    p.add_argument("--methods", default=None, help="comma-separated methods to run (default: the plan's)")
    p.add_argument("--tag", default=None, help="run only the entries with this tag ('' for the untagged ones)")
    p.add_argument("--table-only", action="store_true", help="rebuild the table from the kept metrics")
    args = p.parse_args(argv)
    plan = json.loads(Path(args.plan).read_text())
    docs, out = Path(args.docs), Path(args.out)
    diffsr = shutil.which("diffsr") or str(Path(sys.executable).parent / "diffsr")
    if not args.table_only:
        wanted = set(args.methods.split(",")) if args.methods else None
        for entry in plan:
            if args.only and entry["domain"] != args.only:
                continue
            if args.tag is not None and entry.get("tag", "") != args.tag:
                continue
            hr = prepare(entry, out)
            for sigma_y in entry.get("sigma_y", [0.0]):
                for method in entry["methods"]:
                    if wanted is None or method in wanted:
                        run(entry, hr, method, float(sigma_y), out, docs, diffsr)
    text = table(plan, docs)
    (docs / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
