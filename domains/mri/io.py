"""NIfTI volumes in and out with nibabel, keeping the geometry to the last decimal.

Geometry convention (the same for every operator in ``toolkit.operators``): a low-resolution
voxel covers a block of ``s`` high-resolution voxels along each axis and sits at the block's
centre. Going from a grid to one ``s`` times finer, the voxel size divides by ``s`` and the first
voxel centre moves by ``(1 - s) / (2 s)`` of an old voxel along each axis (towards the corner of
the field of view), so the field of view is unchanged. Orientation, qform/sform codes, units and
the data type travel with the volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domains.files import check_decoded_size, silenced, write_atomic

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class MRIFileError(ValueError):
    """A volume file is missing, unreadable, not 3D, or holds non-finite values (message names the file)."""


@dataclass
class VolumeMeta:
    """What is needed to write a result like its input: the affine and the header it came with."""

    affine: np.ndarray  # (4, 4) float64, voxel indices -> world millimetres
    header: object  # nibabel Nifti1Header / Nifti2Header
    dtype: np.dtype

    @property
    def zooms(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def is_nifti(path: str | Path) -> bool:
    """Whether ``path`` is named like a NIfTI file (``.nii``, ``.nii.gz``)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def read_volume(
    path: str | Path, volume_index: int | None = None, missing_ok: bool = False
) -> tuple[np.ndarray, VolumeMeta]:
    """Read a 3D NIfTI volume (or one volume of a 4D file) as float32 ``(X, Y, Z)`` and its geometry.

    ``missing_ok``: NaN/infinite voxels are missing data the caller handles (an input to upscale);
    otherwise (training data, evaluation references) they are refused.

    Raises:
        MRIFileError: missing or non-NIfTI file, unreadable content, 4D without ``volume_index``,
            an index out of range, more than 4 dimensions, NaN/infinite values (unless ``missing_ok``), a voxel size not
            positive and finite, or a singular or non-finite affine.
        ValueError: more voxels than :func:`domains.files.max_pixels` (checked from the header).
    """
    path = Path(path)
    img = _load(path, volume_index)
    try:
        data = np.asanyarray(img.dataobj if len(img.shape) == 3 else img.dataobj[..., volume_index])
    except Exception as exc:  # noqa: BLE001 - any reader failure is one clear message
        raise MRIFileError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    data = np.asarray(data, dtype=np.float32)
    if not missing_ok and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise MRIFileError(f"{path}: {bad} voxel(s) are NaN or infinite")
    meta = VolumeMeta(affine=np.asarray(img.affine, dtype=np.float64), header=img.header.copy(), dtype=img.get_data_dtype())
    return data, meta


def volume_shape(path: str | Path, volume_index: int | None = None) -> tuple[int, int, int]:
    """The ``(X, Y, Z)`` shape of a volume from its header alone, after the checks of :func:`read_volume` that need no voxel."""
    return tuple(_load(Path(path), volume_index).shape[:3])  # type: ignore[return-value]


def _raw_pixdim(path: Path) -> tuple[float, ...] | None:
    """The voxel sizes ``pixdim[1:4]`` as the file stores them (``None``: not a NIfTI-1 or NIfTI-2 header)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    for kind in (nib.Nifti1Header, nib.Nifti2Header):
        with ImageOpener(str(path)) as f:
            try:
                header = kind.from_fileobj(f, check=False)
            except Exception:  # noqa: BLE001, S112 - the other header kind, or nibabel's load says what is wrong
                continue
        return tuple(float(v) for v in header["pixdim"][1:4])
    return None


def _load(path: Path, volume_index: int | None) -> Any:
    """The lazily loaded NIfTI image, its header checked: shape, volume index, size limit, voxel sizes, affine."""
    import nibabel as nib

    if not path.is_file():
        raise MRIFileError(f"{path}: file not found")
    if not is_nifti(path):
        raise MRIFileError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        pixdim = _raw_pixdim(path)  # before nibabel's load quietly sets zero voxel sizes to 1
        with silenced("nibabel", "nibabel.global"):
            img = nib.load(str(path))
        shape, affine = img.shape, np.asarray(img.affine, dtype=np.float64)
        zooms = pixdim if pixdim is not None else img.header.get_zooms()[:3]
    except Exception as exc:  # noqa: BLE001 - any reader failure is one clear message
        raise MRIFileError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if len(shape) == 4:
        if volume_index is None:
            raise MRIFileError(f"{path}: 4D volume of shape {shape}; choose one volume with a volume index (0..{shape[3] - 1})")
        if not 0 <= volume_index < shape[3]:
            raise MRIFileError(f"{path}: volume index {volume_index} out of range 0..{shape[3] - 1}")
    elif len(shape) != 3:
        raise MRIFileError(f"{path}: expected a 3D volume, got shape {shape}")
    check_decoded_size(path, math.prod(shape[:3]), "volume")
    sizes = [(float(z), float(a)) for z, a in zip(zooms, np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))]  # header, affine
    if not all(math.isfinite(v) and v > 0 for pair in sizes for v in pair):
        raise MRIFileError(f"{path}: voxel size (header, affine) {sizes} mm is not positive and finite")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12 * max(1.0, float(np.abs(affine[:3, :3]).max()) ** 3):
        raise MRIFileError(f"{path}: the voxel-to-world affine is singular or not finite (the file's geometry is broken)")
    return img


def scaled_affine(affine: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """Affine of the grid ``factors`` times finer along each axis, covering the same field of view."""
    s = np.asarray(factors, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag(1.0 / s)
    m[:3, 3] = (1.0 - s) / (2.0 * s)
    return np.asarray(affine, dtype=np.float64) @ m


def reduced_affine(affine: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """Affine of the grid ``factors`` times coarser (each voxel at the centre of its block): the inverse of :func:`scaled_affine`."""
    s = np.asarray(factors, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag(s)
    m[:3, 3] = (s - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64) @ m


def write_volume(
    path: str | Path,
    data: np.ndarray,
    meta: VolumeMeta,
    affine: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` ``(X, Y, Z)`` as NIfTI with ``affine`` (default ``meta.affine``), atomically.

    The header is the input's (codes, units, description, intent) with the shape, voxel sizes,
    qform and sform updated; integer types are rounded and clipped to their range.
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti(path):
        raise MRIFileError(f"{path}: output must end in .nii or .nii.gz")
    aff = meta.affine if affine is None else np.asarray(affine, dtype=np.float64)
    dtype = np.dtype(meta.dtype)
    arr = np.asarray(data)
    if arr.dtype == dtype:
        pass  # already in the file's type (the upscaler writes it so): no copy
    elif np.issubdtype(dtype, np.integer):
        # round and clip in the data's own float precision (one temporary the size of the volume)
        info = np.iinfo(dtype)
        tmp = np.rint(arr)
        np.clip(tmp, info.min, info.max, out=tmp)
        arr = tmp.astype(dtype)
        del tmp
    else:
        arr = arr.astype(dtype, copy=False)
    header = meta.header.copy()  # type: ignore[attr-defined]
    header.set_data_shape(arr.shape)
    header.set_data_dtype(dtype)
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    img = nib.Nifti1Image(arr, aff, header=header) if isinstance(header, nib.Nifti1Header) else nib.Nifti2Image(arr, aff, header=header)
    img.set_qform(aff, code=qcode or (0 if scode else 1))
    img.set_sform(aff, code=scode if scode or qcode else 2)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_zooms(tuple(float(v) for v in np.sqrt((aff[:3, :3] ** 2).sum(axis=0))))
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"

    def write(tmp: Path) -> None:
        nib.save(img, str(tmp))

    write_atomic(path, write, overwrite=overwrite, suffix=suffix)
    return path
