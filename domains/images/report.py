"""HTML evaluation report of plain images with side-by-side crops: input, bicubic, diffsr, truth."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from domains.images.io import write_atomic, write_image

PANELS = ("input", "bicubic", "diffsr", "truth", "error", "uncertainty")


def _crop_box(hr_shape: Sequence[int], size: int, scale: Sequence[int], truth: np.ndarray, bic: np.ndarray) -> tuple[int, int, int, int]:
    """The ``size``-square window (aligned to the scale) where bicubic errs most: where SR matters."""
    h, w = hr_shape
    ch, cw = min(size, h) // scale[0] * scale[0], min(size, w) // scale[1] * scale[1]
    err = ((truth - bic) ** 2).mean(axis=0)
    best, box = -1.0, ((h - ch) // 2, (w - cw) // 2)
    for i in range(0, h - ch + 1, max(1, ch // 2)):
        for j in range(0, w - cw + 1, max(1, cw // 2)):
            e = float(err[i : i + ch, j : j + cw].mean())
            if e > best:
                best, box = e, (i, j)
    i, j = box
    i, j = i - i % scale[0], j - j % scale[1]
    return i, j, ch, cw


def _zoom(img: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    for axis, f in enumerate(factors):
        img = np.repeat(img, f, axis=1 + axis)
    return img


def write_report(
    out: Path,
    report: dict[str, Any],
    items: list[tuple[str, dict[str, np.ndarray]]],
    scale: Sequence[int],
    crop: int = 128,
    zoom: int = 2,
    overwrite: bool = True,
) -> Path:
    """Write ``out/report.html`` and its crops under ``out/crops/``."""
    crops = out / "crops"
    crops.mkdir(exist_ok=True)
    rows = []
    for k, (name, panels) in enumerate(items):
        truth = panels["truth"]
        i, j, ch, cw = _crop_box(truth.shape[1:], crop, scale, truth, panels["bicubic"])
        cells = []
        for p in PANELS:
            if p not in panels:
                continue
            if p == "input":
                img = _zoom(panels[p][:, i // scale[0] : (i + ch) // scale[0], j // scale[1] : (j + cw) // scale[1]], scale)
            else:
                img = panels[p][:, i : i + ch, j : j + cw]
            if p in ("error", "uncertainty"):  # |error| and sample spread, x4 so 0.25 is white
                img = np.clip(img * 4, 0, 1)
            fname = f"{k:03d}_{p}.png"
            write_image(crops / fname, _zoom(img, (zoom, zoom)), 8, overwrite=True)
            cells.append(f'<figure><img src="crops/{fname}" alt="{p}"><figcaption>{p}</figcaption></figure>')
        m = next(f for f in report["files"] if Path(f["file"]).name == name)
        caption = ", ".join(f"{meth} PSNR {m[meth]['psnr']:.2f} dB / SSIM {m[meth]['ssim']:.4f}" for meth in ("diffsr", "bicubic"))
        rows.append(f"<h2>{html.escape(name)}</h2><p>{html.escape(caption)}; crop at ({i}, {j})</p><div class=row>{''.join(cells)}</div>")
    table = "".join(
        f"<tr><td>{meth}</td>" + "".join(f"<td>{v:.4f}</td>" for v in vals.values()) + "</tr>"
        for meth, vals in report["methods"].items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>diffsr evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}} .row{{display:flex;gap:8px}} figure{{margin:0}}
img{{image-rendering:pixelated}} table{{border-collapse:collapse}} td,th{{border:1px solid #999;padding:4px 8px}}</style>
</head><body><h1>diffsr evaluation: x{html.escape(str(report['scale']))}</h1>
<p>operator {html.escape(str(report['operator']))}; sampler {html.escape(str(report['sampler']))}; seed {report['seed']}</p>
<table><tr><th>method</th><th>PSNR (dB)</th><th>SSIM</th><th>consistency PSNR (dB)</th></tr>{table}</table>
<p>Means over {len(items)} file(s). Crops are the window where bicubic errs most, shown at {zoom}x (nearest).
"error" is |diffsr - truth| and "uncertainty" the per-pixel standard deviation over the samples (when more than one
was drawn), both times 4: where the samples disagree, the model is guessing.</p>
{''.join(rows)}</body></html>"""
    path = out / "report.html"
    write_atomic(path, lambda p: p.write_text(page), overwrite=overwrite)
    return path
