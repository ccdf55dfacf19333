"""Pixel, residual, wavelet and latent state spaces side by side, per domain, on the same budget.

For each domain the four spaces train from the domain's configs (same data, operator, network
width and sampler; only ``model.space`` differs), each for the same wall-clock budget on one CPU
thread, two runs at a time; the latent space's stage-1 autoencoder trains first, for the same
budget again (reported separately). Then every model is evaluated on the domain's held-back
data at the same number of sampling steps (one sample each), timed, and compared with bicubic.

    python scripts/compare_spaces.py --domains images satellite mri faces --minutes 5 --steps 10

Writes ``OUT/<domain>/<space>/`` (checkpoint, logs, evaluation report) and ``OUT/results.json``
and prints one Markdown table per domain. The budget is wall time, so each space gets the number
of steps it can afford: that is the comparison a user with a fixed CPU budget faces.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: per domain: the base (residual) config, the wavelet config, the autoencoder and latent configs
DOMAINS: dict[str, dict[str, str]] = {
    "images": {
        "residual": "configs/images/sr3_x2.yaml",
        "wavelet": "configs/images/wavelet_x2.yaml",
        "autoencoder": "configs/images/autoencoder_x2.yaml",
        "latent": "configs/images/latent_x2.yaml",
    },
    "satellite": {
        "residual": "configs/satellite/sr_x2.yaml",
        "wavelet": "configs/satellite/wavelet_x2.yaml",
        "autoencoder": "configs/satellite/autoencoder_x2.yaml",
        "latent": "configs/satellite/latent_x2.yaml",
    },
    "mri": {
        "residual": "configs/mri/sr2d_slice_x4.yaml",
        "wavelet": "configs/mri/wavelet_sr2d_slice_x4.yaml",
        "autoencoder": "configs/mri/autoencoder_slice.yaml",
        "latent": "configs/mri/latent_sr2d_slice_x4.yaml",
    },
    "faces": {
        "residual": "configs/faces/restore_128.yaml",
        "wavelet": "configs/faces/wavelet_128.yaml",
        "autoencoder": "configs/faces/autoencoder_128.yaml",
        "latent": "configs/faces/latent_128.yaml",
    },
}
SPACES = ["pixel", "residual", "wavelet", "latent"]


def _fit_args(domain: str, space: str, out: Path, minutes: float) -> list[str]:
    cfg = DOMAINS[domain]
    config = cfg["residual" if space == "pixel" else space]
    args = [
        "fit", "--config", str(ROOT / config),
        "--trainer.default_root_dir", str(out / domain / space),
        "--trainer.max_time", f"00:00:{int(minutes):02d}:{int(round(minutes % 1 * 60)):02d}",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    if space != "autoencoder":
        args += ["--trainer.limit_val_batches", "0"]  # validation would spend the budget unequally
    if space == "pixel":
        args += ["--model.init_args.space", "toolkit.spaces.PixelSpace"]
    if space == "latent":
        args += ["--model.init_args.space.init_args.autoencoder_checkpoint", str(out / domain / "autoencoder" / "last.ckpt")]
    return args


def _evaluate(domain: str, config: str, ckpt: Path, out: Path, steps: int) -> dict[str, Any]:
    """The domain's held-back evaluation at ``steps`` steps, one sample: metrics and sampling seconds."""
    import yaml

    import domains.satellite.operators  # noqa: F401 - registers the sensor MTF operator checkpoints name
    from toolkit.checkpoint import load_model

    model = load_model(ckpt)
    options = model.options.updated(steps=steps, samples=1)
    t0 = time.perf_counter()
    if domain == "faces":
        from domains.faces.pipeline import evaluate_faces

        data = yaml.safe_load((ROOT / config).read_text())["data"]["init_args"]
        r = evaluate_faces(
            model, ROOT / data["root"], out, degradation_seed=0, holdout=int(data["val_count"]), steps=steps, samples=1,
            overwrite=True,
        )
        items = int(r["files_evaluated"])
        methods = {"model": r["methods"]["restored"], "bicubic": r["methods"]["bicubic"]}
    elif domain == "satellite":
        from domains.satellite.data import RasterDataModule
        from domains.satellite.pipeline import evaluate_rasters
        from toolkit.tiling import Tiling

        dm = RasterDataModule(**yaml.safe_load((ROOT / config).read_text())["data"]["init_args"])
        blocks = dm.write_validation_rasters(out / "blocks", overwrite=True)
        t0 = time.perf_counter()
        r = evaluate_rasters(model, blocks, out, options, 0, Tiling(128, 32), report=False)
        items = len(blocks)
        methods = {"model": r["methods"]["diffsr"], "bicubic": r["methods"]["bicubic"]}
    else:
        from pipelines.api import evaluate

        data = yaml.safe_load((ROOT / config).read_text())["data"]["init_args"]
        val = data["val"] if isinstance(data["val"], list) else [data["val"]]
        files = [p for v in val for p in (sorted((ROOT / v).iterdir()) if (ROOT / v).is_dir() else [ROOT / v])]
        r = evaluate(ckpt, files, out, steps=steps, samples=1, progress=False, model=model, overwrite=True)
        items = len(files)
        base = "cubic" if domain == "mri" else "bicubic"
        methods = {"model": r["methods"]["diffsr"], "bicubic": r["methods"][base]}
    seconds = time.perf_counter() - t0
    return {"methods": methods, "sampling_seconds_per_item": seconds / max(1, items), "items": items}


def _autoencoder_ceiling(domain: str, space: str, out: Path, minutes: float, ckpt: Path) -> float:
    """Reconstruction PSNR (data units) of the stage-1 autoencoder on its config's held-back data."""
    from pipelines.cli import lightning_main
    from toolkit.autoencoder import load_autoencoder, reconstruction_psnr
    from toolkit.normalization import Normalization

    cli = lightning_main(_fit_args(domain, space, out, minutes)[1:], run=False)
    dm = cli.datamodule
    dm.setup("validate")
    ae, info = load_autoencoder(ckpt)
    return reconstruction_psnr(ae, dm.val_dataloader(), Normalization(**info["normalization"]), cli.model.data_range)


def job(domain: str, space: str, out: Path, minutes: float, steps: int, eval_only: bool = False) -> dict[str, Any]:
    """Train one space (or the stage-1 autoencoder) and evaluate it; the result is also written as JSON.

    With ``eval_only`` the trained checkpoint and the training figures of an earlier run are kept
    and only the evaluation is made again.
    """
    import torch

    from pipelines.cli import main as cli

    root = out / domain / space
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    ckpt = root / "last.ckpt"
    if eval_only:
        result = json.loads((root / "result.json").read_text())
        if space != "autoencoder":
            cfg = DOMAINS[domain]["residual" if space == "pixel" else space]
            result.update(_evaluate(domain, cfg, ckpt, root / "eval", steps))
            (root / "result.json").write_text(json.dumps(result, indent=2))
        return result
    t0 = time.perf_counter()
    cli(_fit_args(domain, space, out, minutes))
    fit_seconds = time.perf_counter() - t0
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    steps_done = int(state.get("global_step", 0))
    # the training loop ran for the budget (max_time); set-up (imports, data loading) is not a step
    result: dict[str, Any] = {
        "domain": domain, "space": space, "train_minutes": minutes, "train_steps": steps_done,
        "train_seconds_per_step": minutes * 60 / max(1, steps_done), "fit_wall_seconds": fit_seconds,
    }  # fmt: skip
    if space == "autoencoder":
        result["reconstruction_psnr"] = _autoencoder_ceiling(domain, space, out, minutes, ckpt)
    else:
        cfg = DOMAINS[domain]["residual" if space == "pixel" else space]
        result.update(_evaluate(domain, cfg, ckpt, root / "eval", steps))
        result["space"] = space
        result["space_spec"] = state["diffsr"]["space"]
    (root / "result.json").write_text(json.dumps(result, indent=2))
    return result


def _table(domain: str, rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"### {domain}",
        "",
        "| space | PSNR (dB) | SSIM | consistency (dB) | train steps | train s/step | sampling s/item |",
        "|---|---|---|---|---|---|---|",
    ]
    first = next((r for r in rows.values() if "methods" in r), None)
    if first is not None:
        b = first["methods"]["bicubic"]
        lines.append(f"| bicubic | {b['psnr']:.2f} | {b['ssim']:.3f} | {b.get('consistency_psnr', float('nan')):.1f} | | | |")
    for space in SPACES:
        r = rows.get(space)
        if r is None or "methods" not in r:
            continue
        m = r["methods"]["model"]
        lines.append(
            f"| {space} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m.get('consistency_psnr', float('nan')):.1f} | "
            f"{r['train_steps']} | {r['train_seconds_per_step']:.3f} | {r['sampling_seconds_per_item']:.2f} |"
        )
    ae = rows.get("autoencoder")
    if ae is not None:
        lines += ["", f"Stage-1 autoencoder: {ae['train_steps']} steps, reconstruction PSNR on held-back data "
                  f"{ae['reconstruction_psnr']} dB (the latent model's ceiling)."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    p.add_argument("--spaces", nargs="+", default=SPACES, choices=SPACES)
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per run (wall clock)")
    p.add_argument("--steps", type=int, default=10, help="sampling steps for every space")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--eval-only", action="store_true", help="evaluate the checkpoints of an earlier run again")
    p.add_argument("--job", nargs=2, metavar=("DOMAIN", "SPACE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if args.job:
        job(args.job[0], args.job[1], out, args.minutes, args.steps, args.eval_only)
        return 0

    queue = [(d, s) for d in args.domains for s in (["autoencoder"] if "latent" in args.spaces else []) + args.spaces]
    # the stage-1 autoencoders first, so their latent runs are not left waiting at the end
    queue.sort(key=lambda j: (j[1] != "autoencoder", args.domains.index(j[0])))
    running: list[tuple[tuple[str, str], subprocess.Popen[bytes]]] = []
    done: set[tuple[str, str]] = set()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while queue or running:
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                done.add(item[0])
                print(f"done: {item[0]} (exit {item[1].returncode})", flush=True)
        ready = [j for j in queue if j[1] != "latent" or (j[0], "autoencoder") in done or args.eval_only]
        while ready and len(running) < args.jobs:
            d, s = ready.pop(0)
            queue.remove((d, s))
            (out / d / s).mkdir(parents=True, exist_ok=True)
            log = open(out / d / s / "job.log", "wb")  # noqa: SIM115 - closed when the process ends
            cmd = [sys.executable, __file__, "--job", d, s, "--minutes", str(args.minutes), "--steps", str(args.steps), "--out", str(out)]
            cmd += ["--eval-only"] if args.eval_only else []
            running.append(((d, s), subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)))
            print(f"start: {d}/{s}", flush=True)
        time.sleep(5)

    merged = out / "results.json"
    results: dict[str, dict[str, Any]] = json.loads(merged.read_text()) if merged.is_file() else {}
    for d in args.domains:
        results.setdefault(d, {})
        for s in ["autoencoder", *args.spaces]:
            f = out / d / s / "result.json"
            if f.is_file():
                results[d][s] = json.loads(f.read_text())
    (out / "results.json").write_text(json.dumps(results, indent=2))
    for d in args.domains:
        print(_table(d, results[d]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
