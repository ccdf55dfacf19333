"""The MRI domain as a plug-in: NIfTI volumes, and the checkpoints marked ``kind: mri`` (3D or slice-wise)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domains.base import DegradeRequest, Domain, EvaluateRequest, InputError, Request, UpscaleRequest
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
        if r.adapt_steps:  # test-time adaptation on the scan itself (SMORE for a slice-wise model, ZSSR in 3D)
            from domains.mri.pipeline import adaptation_input

            model = r.adapted(model, adaptation_input(model, r.src, r.volume_index), r.seed)
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


    def adaptation_data(self, request: Request, hr_free: bool) -> dict[str, Any]:
        """Thick-slice or high-resolution NIfTI scans as the adaptation's training data (no validation set).

        A slice-wise model with ``hr_free`` learns SMORE-style from the scans themselves: their
        thick axis (the largest voxel size, which must be the model's factor times the in-plane
        size within 10 %) lies across the planes, an in-plane axis where the thick one is
        (:func:`domains.mri.data.smore_arrangements`). A 3D model with ``hr_free`` learns ZSSR-style
        from the scan degraded once more.
        """
        from domains.mri.data import list_volumes
        from domains.mri.io import read_volume

        spec = request.spec
        files = list_volumes([str(p) for p in request.inputs])
        if not files:
            raise InputError(f"{request.inputs[0]}: no NIfTI volumes")
        domain = spec.get("domain") or {}
        slicewise = domain.get("slicewise")
        intensity = domain.get("intensity") or {}
        shapes = []
        smore_axis = None
        for f in files:
            vol, meta = read_volume(f, None)
            shapes.append(vol.shape)
            if hr_free and slicewise:
                zooms = [float(z) for z in meta.zooms[:3]]
                thick = max(range(3), key=lambda a: zooms[a])
                inplane = min(zooms[a] for a in range(3) if a != thick)
                factor = int(max(spec.get("scale") or [1]))
                if abs(zooms[thick] / inplane - factor) > 0.1 * factor:
                    raise InputError(
                        f"{f}: voxel sizes {tuple(round(z, 3) for z in zooms)} mm: a thick axis {factor}x the in-plane size is needed "
                        f"to learn the model's x{factor} from the scan itself (SMORE)"
                    )
                if smore_axis is not None and thick != smore_axis:
                    raise InputError(f"{f}: its thick axis ({thick}) differs from the other scans' ({smore_axis})")
                smore_axis = thick
        args: dict[str, Any] = {
            "train": [str(f) for f in files],
            "val": None,
            "batch_size": 8,
            "samples_per_epoch": 400,
            "voxel_sizes": None,
        }
        for key in ("low", "high", "foreground_fraction"):
            if key in intensity:
                args[key] = intensity[key]
        net = spec.get("denoiser") or {}
        step = math.lcm(2 ** (len(net.get("num_channels", [0])) - 1), *[int(f) for f in spec.get("scale") or [1]])
        sides = [n for shape in shapes for a, n in enumerate(shape) if a != smore_axis]
        if slicewise:
            n = int(slicewise.get("neighbours", 0))
            side = min(64, *sides) // step * step
            args.update({"slicewise_neighbours": n, "swap_axes": list(slicewise.get("plane_axes") or [0, 1])})
            args["patch_size"] = [side, 2 * n + 1, side]
            if smore_axis is not None:
                args["smore_axis"] = smore_axis
        else:
            side = min(32, *sides) // step * step
            args["patch_size"] = side
        if side < step:
            raise InputError(f"{files[0]}: too small to adapt on (patches must be multiples of {step} voxels)")
        return {"class_path": "domains.mri.data.VolumeDataModule", "init_args": args}


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
