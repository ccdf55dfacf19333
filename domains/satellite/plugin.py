"""The satellite domain as a plug-in: GeoTIFF/COG rasters (and multiband TIFFs without a CRS), and the checkpoints marked ``kind: satellite``.

Older checkpoints carry no kind; their ``sensor_mtf`` operator marks them as satellite ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domains.base import DegradeRequest, Domain, EvaluateRequest, InputError, Request, UpscaleRequest
from domains.satellite.io import RASTER_SUFFIXES, is_raster


class SatelliteDomain(Domain):
    """Multispectral rasters through :mod:`domains.satellite.pipeline`, georeferencing kept.

    Zero-shot (``--zero-shot``, e.g. ``--operator mtf --scale 4``) samples a raster whole in
    memory (the streamed path refuses it); one too large for memory is refused before any work.
    """

    name = "satellite"
    order = 30
    uncertainty_suffixes = RASTER_SUFFIXES  # a float32 GeoTIFF

    def owns(self, request: Request) -> bool:
        if isinstance(request, DegradeRequest):  # options only rasters take
            return request.operator == "mtf" or request.bands is not None
        legacy = request.kind is None and (request.spec.get("operator") or {}).get("type") == "sensor_mtf"
        return super().owns(request) or legacy

    def accepts(self, path: Path) -> bool:
        """GeoTIFFs, and TIFFs without a CRS whose bands no picture has (more than 4, or not 8/16-bit unsigned)."""
        return is_raster(path)

    def degrade(self, request: DegradeRequest) -> Path:
        from domains.satellite.pipeline import degrade_raster

        r = request
        if r.operator not in ("area", "mtf"):
            raise InputError(f"{r.src}: rasters are degraded with --operator area or mtf, not {r.operator}")
        return degrade_raster(r.src, r.dst, r.scale, r.operator, r.overwrite, r.bands, r.mtf)  # type: ignore[arg-type]

    def upscale(self, request: UpscaleRequest) -> Path:
        from domains.satellite.pipeline import upscale_raster

        r = request
        model, options = r.load()
        r.check_scale(model.scale)
        return upscale_raster(
            r.src, r.dst, model, options, r.seed, _tiles(r), r.overwrite,
            _bands(r, model.spec), r.progress, r.precision, r.workdir, uncertainty=r.uncertainty,
        )

    def evaluate(self, request: EvaluateRequest) -> dict[str, Any]:
        from domains.satellite.pipeline import evaluate_rasters

        r = request
        model, options = r.load()
        return evaluate_rasters(
            model, r.hr_files, r.out_dir, options, r.seed, _tiles(r),
            _bands(r, model.spec), r.progress, r.precision, overwrite=r.overwrite, noise=r.noise(model),
        )


def _tiles(request: UpscaleRequest | EvaluateRequest) -> Any:
    """The requested tiling, the default raster tiles for ``"auto"``, one pass (the whole raster) for ``None``."""
    from domains.satellite.pipeline import ONE_PASS, RASTER_TILING

    return request.tiles(RASTER_TILING) or ONE_PASS


def _bands(request: UpscaleRequest | EvaluateRequest, spec: dict[str, Any]) -> Any:
    """The requested bands, else the checkpoint's (its datamodule's selection)."""
    return request.bands if request.bands is not None else (spec.get("domain") or {}).get("bands")


DOMAIN = SatelliteDomain()
