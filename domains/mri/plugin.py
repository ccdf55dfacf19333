"""The MRI domain as a plug-in: NIfTI volumes, and the checkpoints marked ``kind: mri`` (3D or slice-wise)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from domains.base import DegradeRequest, Domain, EvaluateRequest, InputError, UpscaleRequest
from domains.mri.io import NIFTI_SUFFIXES, is_nifti, volume_shape


class MRIDomain(Domain):
    """NIfTI volumes (``.nii``, ``.nii.gz``) through :mod:`domains.mri.pipeline`."""

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
        model, options = r.load()
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
        model, options = r.load()
        return evaluate_volumes(
            model, r.hr_files, r.out_dir, options, r.seed, r.tiles(VOLUME_TILING), r.progress, r.precision, r.overwrite
        )


DOMAIN = MRIDomain()
