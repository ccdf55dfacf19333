"""Few-step sampling from a regression estimate (DifFace) against sampling from noise, at equal network evaluations.

    python scripts/faces_compare_starts.py --checkpoint runs/faces_128/last.ckpt \
        --faces data/faces/congress_portraits --holdout 40 --degradation-seed 0 --out runs/faces_128/compare

Writes OUT/compare.json and OUT/compare.md (PSNR, SSIM and wall time of each way of sampling).
"""

from __future__ import annotations

import argparse

from domains.faces.pipeline import compare_starts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--faces", default="data/faces/congress_portraits", help="folder of face photos")
    p.add_argument("--holdout", type=int, default=40, help="evaluate the people held back with this val_count (0: all files)")
    p.add_argument("--degradation-seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8], help="network-evaluation budgets")
    p.add_argument("--t-start", type=int, nargs="+", default=[100, 200, 400], help="noise levels of the regression start")
    p.add_argument("--full-steps", type=int, default=50, help="steps of the reference run from noise")
    p.add_argument("--limit", type=int, default=None, help="only the first N faces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    report = compare_starts(
        a.checkpoint, a.faces, a.out, a.degradation_seed, a.scale, a.holdout or None, a.nfe, a.t_start, a.full_steps,
        a.seed, limit=a.limit, device=a.device,
    )
    print(open(f"{a.out}/compare.md").read())
    print(f"{report['files_evaluated']} faces; {a.out}/compare.json")


if __name__ == "__main__":
    main()
