"""The faces domain as a plug-in: face restoration checkpoints, ``--faces`` degradation and ``--whole-photo``.

A face checkpoint is marked ``spec["domain"]["kind"] == "faces"`` with its face size and crop
framing (:attr:`domains.faces.data.FaceDataModule.domain_spec`); older ones are known by the
face datamodule's state stored beside the model (a dict with ``face_size``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from domains.base import DegradeRequest, Domain, EvaluateRequest, InputError, Request, UpscaleRequest


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
    """Faces through :mod:`domains.faces.pipeline`: crops restored on the model grid, or whole photos."""

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
        from domains.faces.pipeline import restore_faces, restore_photo

        r = request
        if not face_state(r.checkpoint_data):
            raise InputError(f"{r.checkpoint}: --whole-photo needs a face restoration checkpoint")
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
        from domains.faces.pipeline import evaluate_faces

        r = request
        return evaluate_faces(
            r.model or r.checkpoint, list(r.hr_files), r.out_dir, r.degradation_seed, holdout=r.holdout,  # type: ignore[arg-type]
            steps=r.steps, samples=r.samples, seed=r.seed, overwrite=r.overwrite, device=r.device,
        )


DOMAIN = FacesDomain()
