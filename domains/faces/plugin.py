"""The faces domain as a plug-in: face restoration checkpoints, ``--faces`` degradation and ``--whole-photo``.

A face checkpoint is marked ``spec["domain"]["kind"] == "faces"`` with its face size and crop
framing (:attr:`domains.faces.data.FaceDataModule.domain_spec`); older ones are known by the
face datamodule's state stored beside the model (a dict with ``face_size``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from domains.base import DegradeRequest, Domain, EvaluateRequest, InputError, MeasurementNoise, Request, UpscaleRequest


def face_state(checkpoint_data: Mapping[str, Any]) -> dict[str, Any]:
    """The face size and framing a checkpoint's plain data stores (``{}``: not a face checkpoint).

    ``checkpoint_data`` is the checkpoint's dict (or ``{"diffsr": model.spec}``).
    """
    domain = (checkpoint_data.get("diffsr") or {}).get("domain") or {}
    if domain.get("kind") == "faces":
        return dict(domain)
    for value in checkpoint_data.values():  # checkpoints written before the kind: the datamodule's state
        if isinstance(value, dict) and "face_size" in value:
            return value
    return {}


class FacesDomain(Domain):
    """Faces through :mod:`domains.faces.pipeline`: crops restored on the model grid, or whole photos.

    With ``--zero-shot`` (a face prior told a known operator) a crop is upscaled on the operator's
    grid and ``evaluate`` degrades each face with that operator (plus ``--sigma-y`` noise), not
    the blind degradation.
    """

    name = "faces"
    order = 10
    uncertainty_suffixes = ()  # restoration writes no uncertainty map

    def owns(self, request: Request) -> bool:
        if isinstance(request, DegradeRequest):
            return request.faces
        if isinstance(request, UpscaleRequest) and request.whole_photo:
            return True  # refused below unless the checkpoint restores faces
        return bool(face_state(request.checkpoint_data))

    def degrade(self, request: DegradeRequest) -> Path:
        from domains.faces.pipeline import degrade_face

        r = request
        degrade_face(r.src, r.dst, seed=r.seed, size=r.size, overwrite=r.overwrite)
        return r.dst

    def upscale(self, request: UpscaleRequest) -> Path:
        if request.adapt_steps:
            raise InputError(f"{request.src}: --adapt-steps is not supported for faces (blind degradations: no known operator to learn from the input)")
        from domains.faces.pipeline import restore_faces, restore_photo

        r = request
        if not face_state(r.checkpoint_data):
            raise InputError(f"{r.checkpoint}: --whole-photo needs a face restoration checkpoint")
        if r.zero_shot is not None:
            return self._upscale_zero_shot(r)
        r.refuse_prior()  # a prior restores nothing without --zero-shot
        model = r.model or r.checkpoint
        sampling: dict[str, Any] = {"steps": r.steps, "samples": r.samples, "seed": r.seed, "overwrite": r.overwrite, "device": r.device}
        if r.whole_photo:
            from domains.images.io import image_size

            height, width, _ = image_size(r.src)
            scale = r.scale if isinstance(r.scale, int) else 2
            r.check_output_size(height * width, (scale, scale))
            restore_photo(r.src, r.dst, model, True, scale, r.background, **sampling)  # type: ignore[arg-type]
        else:
            restore_faces(r.src, r.dst, model, **sampling)  # type: ignore[arg-type]
        return r.dst

    def evaluate(self, request: EvaluateRequest) -> dict[str, Any]:
        from domains.faces.pipeline import evaluate_faces, evaluate_faces_zero_shot
        from domains.images.pipeline import IMAGE_TILING

        r = request
        if r.zero_shot is not None:  # the known operator, not the blind degradation
            model, options = r.load()
            return evaluate_faces_zero_shot(
                model, list(r.hr_files), r.out_dir, options, r.noise(model), holdout=r.holdout, seed=r.seed,
                overwrite=r.overwrite, tiling=r.tiles(IMAGE_TILING), precision=r.precision, progress=r.progress,
            )
        r.refuse_prior()  # a prior restores nothing without --zero-shot
        span = [2.0 * v for v in (r.spec.get("normalization") or {}).get("scale", [0.5])]  # MeasurementNoise.for_model, unloaded
        return evaluate_faces(
            r.model or r.checkpoint, list(r.hr_files), r.out_dir, r.degradation_seed, holdout=r.holdout,  # type: ignore[arg-type]
            steps=r.steps, samples=r.samples, seed=r.seed, overwrite=r.overwrite, device=r.device,
            noise=MeasurementNoise(r.sigma_y, span, r.degradation_seed),
        )

    def _upscale_zero_shot(self, r: UpscaleRequest) -> Path:
        from domains.faces.pipeline import upscale_face_zero_shot
        from domains.images.pipeline import IMAGE_TILING

        if r.whole_photo:
            raise InputError(f"{r.checkpoint}: --whole-photo restores with a face restoration checkpoint; with --zero-shot upscale a face crop")
        model, options = r.load()
        if not r.src.is_dir():
            from domains.images.io import image_size

            height, width, _ = image_size(r.src)
            r.check_output_size(height * width, model.scale)
        return upscale_face_zero_shot(
            r.src, r.dst, model, options, r.seed, r.tiles(IMAGE_TILING), r.overwrite, r.progress, r.precision
        )


DOMAIN = FacesDomain()
