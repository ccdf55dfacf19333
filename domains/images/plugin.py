"""The images domain as a plug-in: plain 2D photos, and any file no other domain reads (the reader says what is wrong)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domains.base import DegradeRequest, Domain, EvaluateRequest, UpscaleRequest
from domains.images.io import image_size


class ImagesDomain(Domain):
    """PNG, JPEG and TIFF images through :mod:`domains.images.pipeline`; unmarked 2D checkpoints are theirs.

    Zero-shot (``--zero-shot``) runs through the same functions: the request's model carries the
    operator it was told (:meth:`domains.base.ModelRequest.load`).
    """

    name = "images"
    order = 90
    uncertainty_suffixes = (".png", ".tif", ".tiff")  # 16-bit

    def accepts(self, path: Path) -> bool:
        return True

    def degrade(self, request: DegradeRequest) -> Path:
        from domains.images.pipeline import degrade_image

        return degrade_image(request.src, request.dst, request.scale, request.operator, request.overwrite)

    def upscale(self, request: UpscaleRequest) -> Path:
        from domains.images.pipeline import IMAGE_TILING, upscale_image

        height, width, _ = image_size(request.src)
        model, options = request.load()
        request.check_scale(model.scale)
        request.check_output_size(height * width, model.scale)
        if request.adapt_steps:  # test-time adaptation on the image itself (ZSSR)
            import torch

            from domains.images.io import read_image

            model = request.adapted(model, torch.from_numpy(read_image(request.src)[0])[None], request.seed)
        return upscale_image(
            request.src, request.dst, model, options, request.seed, request.tiles(IMAGE_TILING), request.overwrite,
            request.progress, request.precision, request.uncertainty,
        )

    def evaluate(self, request: EvaluateRequest) -> dict[str, Any]:
        from domains.images.pipeline import IMAGE_TILING, evaluate_images

        model, options = request.load()
        return evaluate_images(
            model, request.hr_files, request.out_dir, options, request.seed, request.tiles(IMAGE_TILING), request.progress,
            request.precision, request.overwrite, request.noise(model),
        )


DOMAIN = ImagesDomain()
