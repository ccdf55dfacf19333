"""Benchmark: peak memory and time of streamed GeoTIFF upscaling as the raster grows.

For each size N, a 4-band uint16 N x N GeoTIFF is made from the shipped Landsat 8 scene (bands
B2-B5, mirrored to cover N x N, real texture and value ranges), written block by block; then a
fresh Python process upscales it x2 with a small untrained model (UNet channels 8, 16, 32, no
attention) and 2 DDIM steps through :func:`domains.satellite.pipeline.upscale_raster`, and
reports its peak resident memory (``VmHWM``: not inherited across fork and exec), the peak
before upscaling started (imports and model), and the time per megapixel. Each size runs in
its own process so one size's peak cannot hide another's.

    OMP_NUM_THREADS=2 python scripts/bench_satellite.py --sizes 512 4096 --out runs/bench_satellite
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _bench_common import hwm_kb, save_untrained_checkpoint  # noqa: E402

SCENE = ROOT / "data" / "satellite" / "landsat8_ms_30m_7band_scene.tif"
BANDS = [2, 3, 4, 5]


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    """Half-sample symmetric reflection of indices into ``[0, n)`` (periodic with period ``2n``)."""
    idx = idx % (2 * n)
    return np.where(idx < n, idx, 2 * n - 1 - idx)


def make_input(path: Path, size: int) -> Path:
    """A 4-band uint16 ``size x size`` GeoTIFF tiled from the Landsat scene, written block by block."""
    from domains.files import write_atomic
    from domains.satellite.io import RasterWriter, block_windows, read_raster

    data, _, meta = read_raster(SCENE, bands=BANDS)
    out_meta = meta.resized(size, size, meta.transform)

    def write(tmp: Path) -> None:
        with RasterWriter(tmp, out_meta) as w:
            for rows, cols in block_windows((size, size), 256):
                r = _mirror(np.arange(rows.start, rows.stop), data.shape[1])
                c = _mirror(np.arange(cols.start, cols.stop), data.shape[2])
                w.write((rows, cols), data[:, r][:, :, c])

    if not path.exists():
        write_atomic(path, write)
    return path


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """A small untrained 4-band x2 model."""
    from domains.satellite.normalize import raster_normalization
    from toolkit.operators import AreaDownsample

    norm = raster_normalization(SCENE, bands=BANDS)
    return save_untrained_checkpoint(path, 2, 4, AreaDownsample(2), norm, None, seed)


def worker(src: Path, ckpt: Path, dst: Path, steps: int, tile: int, overlap: int, state: str, workdir: Path) -> dict:
    """Upscale ``src`` in this process and report time and peak RSS (run in a fresh process)."""
    import torch

    from domains.satellite.pipeline import upscale_raster
    from toolkit.checkpoint import load_model
    from toolkit.tiling import Tiling

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = load_model(ckpt)
    options = model.options.updated(steps=steps)  # the checkpoint: DDIM, 1 sample, from pure noise
    rss_before = hwm_kb()
    t0 = time.perf_counter()
    upscale_raster(src, dst, model, options, seed=0, tiling=Tiling(tile, overlap, 4), overwrite=True,
                   progress=False, state=state, workdir=workdir)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    peak = hwm_kb()
    import rasterio

    with rasterio.open(src) as a:
        n_in = a.width * a.height
    out_mp = 4 * n_in / 1e6
    return {
        "input": f"{int(n_in ** 0.5)}x{int(n_in ** 0.5)}x4 uint16",
        "output_megapixels": out_mp,
        "seconds": round(seconds, 2),
        "seconds_per_output_megapixel": round(seconds / out_mp, 3),
        "seconds_per_input_megapixel": round(seconds / (n_in / 1e6), 3),
        "peak_rss_mb": round(peak / 1024, 1),
        "rss_before_upscaling_mb": round(rss_before / 1024, 1),
        "output_mb": round(dst.stat().st_size / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 4096], help="input raster sides")
    p.add_argument("--out", default="runs/bench_satellite", help="folder for inputs, outputs and bench.json")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--state", choices=["auto", "memory", "disk"], default="auto", help="where the diffusion state lives")
    p.add_argument("--keep", action="store_true", help="keep the inputs and outputs (large)")
    p.add_argument("--worker", nargs=3, metavar=("SRC", "CKPT", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.worker:
        src, ckpt, dst = (Path(v) for v in args.worker)
        print(json.dumps(worker(src, ckpt, dst, args.steps, args.tile, args.overlap, args.state, out)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(out / "bench.ckpt")
    results = []
    for n in args.sizes:
        src = make_input(out / f"in_{n}.tif", n)
        dst = out / f"out_{n}.tif"
        cmd = [sys.executable, __file__, "--worker", str(src), str(ckpt), str(dst), "--out", str(out),
               "--steps", str(args.steps), "--tile", str(args.tile), "--overlap", str(args.overlap), "--state", args.state]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            print(run.stderr, file=sys.stderr)
            return run.returncode
        res = json.loads(run.stdout.strip().splitlines()[-1])
        results.append(res)
        print(json.dumps(res), flush=True)
        if not args.keep:
            dst.unlink(missing_ok=True)
            src.unlink(missing_ok=True)
    peaks = [r["peak_rss_mb"] for r in results]
    summary = {
        "model": "UNet (8, 16, 32), no attention, untrained; x2 area operator; DDIM, 2 steps, 1 sample",
        "tiling": {"size": args.tile, "overlap": args.overlap},
        "state": args.state,
        "results": results,
        "peak_rss_max_over_min": round(max(peaks) / min(peaks), 3),
    }
    (out / "bench.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
