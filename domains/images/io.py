"""Read and write 2D images as ``(C, H, W)`` float32 arrays in [0, 1], keeping the bit depth.

PNG goes through pypng (8 and 16 bit, grey, grey+alpha, RGB, RGBA), TIFF through tifffile,
JPEG and other formats through Pillow. Writing goes to a temporary file in the target folder
and is renamed into place, so a failure never leaves a partial or changed output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from domains.files import atomic_target, check_decoded_size, max_pixels, silenced, write_atomic

__all__ = ["ImageFileError", "ImageInfo", "atomic_target", "image_size", "read_image", "write_atomic", "write_image"]

PNG_SUFFIXES = {".png"}
TIFF_SUFFIXES = {".tif", ".tiff"}
PIL_SUFFIXES = {".jpg", ".jpeg", ".bmp", ".webp"}
IMAGE_SUFFIXES = PNG_SUFFIXES | TIFF_SUFFIXES | PIL_SUFFIXES
T = TypeVar("T")


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
        ValueError: more pixels than :func:`domains.files.max_pixels` (checked from the header, before decoding).
    """
    path = Path(path)
    height, width, _ = image_size(path)
    check_decoded_size(path, height * width)
    suffix = path.suffix.lower()
    reader = _read_png if suffix in PNG_SUFFIXES else _read_tiff if suffix in TIFF_SUFFIXES else _read_pil
    arr = _reading(path, reader)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ImageFileError(f"{path}: expected a 2D grey or colour image, got array of shape {arr.shape}")
    if arr.shape[2] in (2, 4):  # drop alpha (image_size counts the same channels)
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


def image_size(path: str | Path) -> tuple[int, int, int]:
    """``(height, width, channels)`` of an image (as :func:`read_image` gives it) from its header alone.

    Raises:
        ImageFileError: missing file, unknown suffix, or an unreadable header.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageFileError(f"{path}: not an image file (expected one of {sorted(IMAGE_SUFFIXES)})")
    return _reading(path, _png_size if suffix in PNG_SUFFIXES else _tiff_size if suffix in TIFF_SUFFIXES else _pil_size)


def _reading(path: Path, reader: Callable[[Path], T]) -> T:
    """``reader(path)``, every reader error as one :class:`ImageFileError` naming the file."""
    try:
        with silenced("tifffile", "PIL"):
            return reader(path)
    except (ImageFileError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - every reader error becomes one clear message
        name = type(exc).__name__
        detail = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"  # pypng's messages name their class
        raise ImageFileError(f"{path}: cannot read image ({detail})") from None


def _png_size(path: Path) -> tuple[int, int, int]:
    import png

    reader = png.Reader(filename=str(path))
    try:
        reader.preamble()
        return reader.height, reader.width, 3 if reader.colormap else reader.color_planes
    finally:
        reader.file.close()


def _tiff_layout(shape: tuple[int, ...]) -> tuple[int, int, bool]:
    """``(height, width, planar)`` of a TIFF page array of ``shape``."""
    planar = len(shape) == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4)
    return (shape[1], shape[2], True) if planar else (shape[0], shape[1] if len(shape) > 1 else 1, False)


def _tiff_size(path: Path) -> tuple[int, int, int]:
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        shape = tuple(tif.series[0].shape)
    height, width, planar = _tiff_layout(shape)
    channels = shape[0] if planar else shape[2] if len(shape) == 3 else 1
    return height, width, channels - 1 if channels in (2, 4) else channels


def _pil_size(path: Path) -> tuple[int, int, int]:
    import warnings

    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS = max_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:  # lazy: reads the header only
                return im.height, im.width, 1 if im.mode in ("L", "I;16") else 3
        except Image.DecompressionBombError:  # above twice the limit: Pillow refuses before we see the size
            raise ImageFileError(f"{path}: image has over {2 * limit} pixels, more than the limit {limit} (raise it with --max-pixels)") from None


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
    return arr.transpose(1, 2, 0) if _tiff_layout(arr.shape)[2] else arr  # planar: channels last


def _read_pil(path: Path) -> np.ndarray:
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels()
    with warnings.catch_warnings():  # the size was checked by image_size
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
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
