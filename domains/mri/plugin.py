"""The MRI domain as a plug-in: NIfTI volumes, and the checkpoints marked ``kind: mri`` (3D or slice-wise)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domains.base import DegradeRequest, Domain, EvaluateRequest, InputError, UpscaleRequest
from domains.mri.io import NIFTI_SUFFIXES, is_nifti, volume_shape

if TYPE_CHECKING:
    from toolkit.checkpoint import SRModel


class MRIDomain(Domain):
    """NIfTI volumes (``.nii``, ``.nii.gz``) through :mod:`domains.mri.pipeline`.

    Zero-shot: a 3D prior takes any operator on the volume's axes (``--operator area --scale 2``,
    ``slice --scale 1,1,4``, ``kspace --scale 2``); a slice-wise 2D prior only factors within its
    planes (:func:`_zero_shot_scale`).
    """

    name = "mri"
    order = 20
    uncertainty_suffixes = NIFTI_SUFFIXES

    def accepts(self, path: Path) -> bool:
        return is_nifti(path)

    def degrade(self, request: DegradeRequest) -> Path:
        from domains.mri.pipeline import degrade_volume

        r = request
        return degrade_volume(r.src, r.dst, r.scale, r.operator, r.overwrite, r.volume_index)

    def upscale(self, request: UpscaleRequest) -> Path:
        from domains.mri.pipeline import VOLUME_TILING, check_volume_model, upscale_volume, volume_factors

        r = request
        model, options = r.load(_zero_shot_scale(r))
        if not is_nifti(r.src):
            from domains.images.pipeline import check_image_model

            check_image_model(model, r.src)  # a 3D or slice-wise checkpoint refuses a 2D image
        check_volume_model(model, r.src)
        factors = volume_factors(model)
        r.check_scale(factors)
        r.check_output_size(math.prod(volume_shape(r.src, r.volume_index)), factors)
        return upscale_volume(
            r.src, r.dst, model, options, r.seed, r.tiles(VOLUME_TILING), r.overwrite, r.volume_index, r.progress,
            r.precision, r.uncertainty,
        )

    def evaluate(self, request: EvaluateRequest) -> dict[str, Any]:
        from domains.mri.pipeline import VOLUME_TILING, evaluate_volumes

        r = request
        if not all(is_nifti(f) for f in r.inputs):
            raise InputError("evaluate takes either NIfTI volumes or images, not both")
        model, options = r.load(_zero_shot_scale(r))
        return evaluate_volumes(
            model, r.hr_files, r.out_dir, options, r.seed, r.tiles(VOLUME_TILING), r.progress, r.precision, r.overwrite,
            r.noise(model),
        )


def _zero_shot_scale(request: UpscaleRequest | EvaluateRequest) -> Callable[[SRModel, int | Sequence[int]], int | Sequence[int]]:
    """``--scale`` (per volume axis) as the factors of the operator a model is told (:meth:`domains.base.ModelRequest.load`).

    A 3D model takes them as they are. A slice-wise 2D model sees planes that contain the
    thick axis, in two orientations (across ``plane_axes``): it is told the factors within the
    plane, so the factors on both ``plane_axes`` must be 1 (``--operator slice --scale 4``, or
    ``--scale 1,1,4`` with any operator); isotropic factors need a 3D prior.
    """

    def scale_for(model: SRModel, scale: int | Sequence[int]) -> int | Sequence[int]:
        slicewise = (model.spec.get("domain") or {}).get("slicewise")
        if model.spatial_dims != 2 or not slicewise:
            return scale
        axes = [int(a) for a in slicewise["plane_axes"]]
        if isinstance(scale, int):
            factors = [1, 1, scale] if request.operator == "slice" else [scale] * 3
        else:
            factors = list(scale)
        if len(factors) != 3 or any(factors[a] != 1 for a in axes):
            given = "x".join(map(str, factors))
            raise InputError(
                f"{request.source}: a slice-wise 2D checkpoint upscales within its planes (axes {axes} across them): "
                f"--scale {given} needs factor 1 on axes {axes[0]} and {axes[1]} (e.g. 1,1,4); use a 3D prior for other factors"
            )
        return tuple(f for a, f in enumerate(factors) if a != axes[1])

    return scale_for


DOMAIN = MRIDomain()
