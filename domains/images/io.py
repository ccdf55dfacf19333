"""Read and write 2D images as ``(C, H, W)`` float32 arrays in [0, 1], keeping the bit depth.

PNG goes through pypng (8 and 16 bit, grey, grey+alpha, RGB, RGBA), TIFF through tifffile,
JPEG and other formats through Pillow. Writing goes to a temporary file in the target folder
and is renamed into place, so a failure never leaves a partial or changed output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domains.files import atomic_target, write_atomic

__all__ = ["ImageFileError", "ImageInfo", "atomic_target", "read_image", "write_atomic", "write_image"]

PNG_SUFFIXES = {".png"}
TIFF_SUFFIXES = {".tif", ".tiff"}
PIL_SUFFIXES = {".jpg", ".jpeg", ".bmp", ".webp"}
IMAGE_SUFFIXES = PNG_SUFFIXES | TIFF_SUFFIXES | PIL_SUFFIXES


class ImageFileError(ValueError):
    """An image file is missing, unreadable or of an unsupported kind (the message names the file)."""


@dataclass(frozen=True)
class ImageInfo:
    """What is needed to write a result like its input."""

    bit_depth: int  # 8 or 16
    channels: int


def _max_value(bit_depth: int) -> float:
    return float(2**bit_depth - 1)


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Read an image as ``(C, H, W)`` float32 in [0, 1]; alpha is dropped.

    Raises:
        ImageFileError: missing file, unknown suffix, unreadable content, or unsupported dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageFileError(f"{path}: not an image file (expected one of {sorted(IMAGE_SUFFIXES)})")
    try:
        arr = _read_png(path) if suffix in PNG_SUFFIXES else _read_tiff(path) if suffix in TIFF_SUFFIXES else _read_pil(path)
    except ImageFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader error becomes one clear message
        raise ImageFileError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ImageFileError(f"{path}: expected a 2D grey or colour image, got array of shape {arr.shape}")
    if arr.shape[2] in (2, 4):  # drop alpha
        arr = arr[:, :, :-1]
    if arr.dtype == np.uint8:
        depth = 8
    elif arr.dtype == np.uint16:
        depth = 16
    else:
        raise ImageFileError(f"{path}: unsupported sample type {arr.dtype} (8- or 16-bit integers only)")
    if min(arr.shape[:2]) < 1:
        raise ImageFileError(f"{path}: empty image")
    data = np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32) / _max_value(depth)
    return data, ImageInfo(bit_depth=depth, channels=data.shape[0])


def _read_png(path: Path) -> np.ndarray:
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    depth = info["bitdepth"]
    dtype = np.uint16 if depth > 8 else np.uint8
    arr = np.vstack([np.asarray(r, dtype=dtype) for r in rows]).reshape(height, width, planes)
    if depth not in (8, 16):  # 1, 2, 4 bit grey: rescale to 8 bit
        arr = (arr.astype(np.float64) * 255 / (2**depth - 1)).round().astype(np.uint8)
    return arr


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    arr = tifffile.imread(str(path))
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # planar
    return arr


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "RGB", "I;16"):
            im = im.convert("RGB")
        return np.asarray(im)


def write_image(path: str | Path, data: np.ndarray, bit_depth: int = 8, overwrite: bool = False) -> None:
    """Write ``(C, H, W)`` data in [0, 1] (clipped, rounded) as an 8- or 16-bit image, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageFileError(f"{path}: cannot write this format (use one of {sorted(IMAGE_SUFFIXES)})")
    if bit_depth not in (8, 16):
        raise ValueError("bit_depth must be 8 or 16")
    if bit_depth == 16 and suffix in PIL_SUFFIXES:
        raise ImageFileError(f"{path}: {suffix} cannot hold 16-bit samples; use .png or .tif")
    c = data.shape[0]
    if c not in (1, 3):
        raise ImageFileError(f"{path}: cannot write {c} channels as an image (1 or 3)")
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    arr = (np.clip(data, 0.0, 1.0) * _max_value(bit_depth)).round().astype(dtype).transpose(1, 2, 0)

    def write(tmp: Path) -> None:
        if suffix in PNG_SUFFIXES:
            import png

            h, w = arr.shape[:2]
            with tmp.open("wb") as fh:
                png.Writer(w, h, greyscale=c == 1, bitdepth=bit_depth).write(fh, arr.reshape(h, w * c))
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(str(tmp), arr[:, :, 0] if c == 1 else arr, photometric="minisblack" if c == 1 else "rgb")
        else:
            from PIL import Image

            Image.fromarray(arr[:, :, 0] if c == 1 else arr).save(tmp, quality=95)

    write_atomic(path, write, overwrite)
