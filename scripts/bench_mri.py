"""Benchmark: time and peak memory of streamed 3D NIfTI upscaling as the volume grows.

The input is the shipped MNI152 T1 template resampled (trilinear) to 256 x 256 x Z and thick-sliced
x4 along the last axis (slice averaging), written as NIfTI: 256 x 256 x 64 -> 256 x 256 x 256 and,
doubled, 256 x 256 x 128 -> 256 x 256 x 512. A fresh Python process per size upscales it through
:func:`domains.mri.pipeline.upscale_volume` (the ``diffsr upscale`` path) with a small untrained
3D model (UNet channels 8, 16, 32, no attention; weights perturbed so its output is not zero),
2 DDIM steps from pure noise, one sample, 64^3 patches overlapping by 16, state on disk; it reports
its peak resident memory (``VmHWM``), the peak before upscaling (imports, model, input), and
the time per output megavoxel. Each size runs in its own process, so one cannot hide another's peak.

    OMP_NUM_THREADS=2 python scripts/bench_mri.py --depths 64 128 --out runs/bench_mri
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _bench_common import hwm_kb, save_untrained_checkpoint  # noqa: E402

TEMPLATE = ROOT / "data" / "mri" / "mni152_09a_t1_1mm.nii.gz"


def make_input(path: Path, depth: int) -> Path:
    """A 256 x 256 x ``depth`` thick-slice (x4) volume made from the template."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from domains.mri.io import read_volume, reduced_affine, scaled_affine, write_volume
    from toolkit.operators import SliceAverage

    if path.exists():
        return path
    data, meta = read_volume(TEMPLATE)
    hr_shape = (256, 256, 4 * depth)
    t = torch.from_numpy(data)[None, None]
    hr = F.interpolate(t, size=hr_shape, mode="trilinear", align_corners=False)
    lr = SliceAverage(4).A(hr)[0, 0].numpy()
    zoom = np.asarray(data.shape, dtype=np.float64) / np.asarray(hr_shape)
    affine = scaled_affine(meta.affine, 1.0 / zoom)  # the same field of view on the resampled grid
    write_volume(path, lr.astype(np.float32), meta, reduced_affine(affine, (1, 1, 4)), overwrite=True)
    return path


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    from domains.mri.data import intensity_spec
    from toolkit.normalization import Normalization
    from toolkit.operators import SliceAverage

    domain = {"kind": "mri", "intensity": intensity_spec(0.5, 99.5, 0.5), "slicewise": None}
    return save_untrained_checkpoint(path, 3, 1, SliceAverage(4), Normalization([0.0], [1.0]), domain, seed)


def worker(src: Path, ckpt: Path, dst: Path, steps: int, tile: int, overlap: int) -> dict:
    import nibabel as nib
    import torch

    from domains.mri.pipeline import upscale_volume
    from toolkit.checkpoint import load_model
    from toolkit.tiling import Tiling

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = load_model(ckpt)
    options = model.options.updated(steps=steps)
    rss_before = hwm_kb()
    t0 = time.perf_counter()
    upscale_volume(src, dst, model, options, seed=0, tiling=Tiling(tile, overlap, 2), overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    peak = hwm_kb()
    lr_shape, hr_shape = nib.load(str(src)).shape, nib.load(str(dst)).shape
    mvox = float(torch.tensor(hr_shape).prod()) / 1e6
    return {
        "input": list(lr_shape), "output": list(hr_shape), "steps": steps, "tile": tile, "overlap": overlap,
        "threads": torch.get_num_threads(), "seconds": round(seconds, 1), "seconds_per_megavoxel": round(seconds / mvox, 2),
        "peak_rss_mb": round(peak / 1024, 1), "rss_before_upscale_mb": round(rss_before / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[64, 128], help="low-resolution slice counts (256 x 256 x D)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--out", default="runs/bench_mri")
    p.add_argument("--worker", nargs=3, metavar=("SRC", "CKPT", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), Path(args.worker[1]), Path(args.worker[2]), args.steps, args.tile, args.overlap)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(out / "small3d.ckpt")
    rows = []
    for depth in args.depths:
        src = make_input(out / f"lr_256x256x{depth}.nii.gz", depth)
        cmd = [sys.executable, __file__, "--worker", str(src), str(ckpt), str(out / f"sr_{depth}.nii.gz"),
               "--steps", str(args.steps), "--tile", str(args.tile), "--overlap", str(args.overlap)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(rows) > 1:
        summary = {"peak_rss_ratio_largest_to_smallest": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)}
        print(json.dumps(summary))
        rows.append(summary)
    (out / "bench_mri.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
