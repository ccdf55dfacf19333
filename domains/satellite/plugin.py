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
    So do a reference-guided checkpoint (``--reference PAN.tif``: the reference's geometry is
    checked and aligned, :mod:`domains.satellite.reference`) and test-time adaptation
    (``--adapt-steps K``), which the streamed canvas does not take.
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
        if isinstance(r.reference, (list, tuple)):
            raise InputError(f"{r.src}: upscale takes one --reference file, not {len(r.reference)}")
        adapt = (lambda m, y: r.adapted(m, y, seed=r.seed)) if r.adapt_steps else None
        return upscale_raster(
            r.src, r.dst, model, options, r.seed, _tiles(r), r.overwrite,
            _bands(r, model.spec), r.progress, r.precision, r.workdir, uncertainty=r.uncertainty,
            reference=r.reference, adapt=adapt,  # type: ignore[arg-type]
        )

    def evaluate(self, request: EvaluateRequest) -> dict[str, Any]:
        from domains.satellite.pipeline import evaluate_rasters

        r = request
        model, options = r.load()
        return evaluate_rasters(
            model, r.hr_files, r.out_dir, options, r.seed, _tiles(r),
            _bands(r, model.spec), r.progress, r.precision, overwrite=r.overwrite, noise=r.noise(model),
            references=_references(r.reference),
        )


def _references(reference: Any) -> list[Any] | None:
    """``evaluate --reference``: one file per ``--hr`` file (a single path counts as a list of one)."""
    if reference is None:
        return None
    return [reference] if isinstance(reference, (str, Path)) else list(reference)


def _tiles(request: UpscaleRequest | EvaluateRequest) -> Any:
    """The requested tiling, the default raster tiles for ``"auto"``, one pass (the whole raster) for ``None``."""
    from domains.satellite.pipeline import ONE_PASS, RASTER_TILING

    return request.tiles(RASTER_TILING) or ONE_PASS


def _bands(request: UpscaleRequest | EvaluateRequest, spec: dict[str, Any]) -> Any:
    """The requested bands, else the checkpoint's (its datamodule's selection)."""
    return request.bands if request.bands is not None else (spec.get("domain") or {}).get("bands")


DOMAIN = SatelliteDomain()
