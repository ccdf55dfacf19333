"""NIfTI geometry on the shipped real volumes: voxel centres and field of view exact, codes and dtype kept."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from domains.mri.io import MRIFileError, read_volume, reduced_affine, scaled_affine, write_volume
from toolkit.operators import AreaDownsample, FourierCrop, SliceAverage

MRI = Path(__file__).resolve().parents[1] / "data" / "mri"
VOLUMES_3D = ["dipy_aniso_vox.nii.gz", "nibabel_someones_anatomy.nii.gz", "mni152_09a_t1_crop64.nii.gz", "mni152_09a_t1_1mm.nii.gz"]
FACTORS = [(1, 1, 4), (2, 2, 2), (2, 1, 3)]


def _centres(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _fov_corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World positions of the outer corners of the first and last voxels (the field of view)."""
    lo = np.full(3, -0.5)
    hi = np.asarray(shape, dtype=np.float64) - 0.5
    return np.stack([affine[:3, :3] @ lo + affine[:3, 3], affine[:3, :3] @ hi + affine[:3, 3]])


@pytest.mark.parametrize("name", VOLUMES_3D)
@pytest.mark.parametrize("factors", FACTORS, ids=str)
def test_degrade_then_upscale_geometry(name: str, factors: tuple[int, int, int], tmp_path: Path) -> None:
    data, meta = read_volume(MRI / name)
    hr_shape = tuple(n - n % f for n, f in zip(data.shape, factors))
    lr_shape = tuple(n // f for n, f in zip(hr_shape, factors))
    lr_aff = reduced_affine(meta.affine, factors)
    # each low-resolution voxel centre is the mean of the centres of the block it covers
    hr_c = _centres(meta.affine, hr_shape).reshape(*hr_shape, 3)
    blocks = hr_c.reshape(lr_shape[0], factors[0], lr_shape[1], factors[1], lr_shape[2], factors[2], 3).mean((1, 3, 5))
    assert np.abs(blocks.reshape(-1, 3) - _centres(lr_aff, lr_shape)).max() < 1e-4
    # same field of view, voxel sizes multiplied by the factors, orientation kept
    assert np.abs(_fov_corners(lr_aff, lr_shape) - _fov_corners(meta.affine, hr_shape)).max() < 1e-4
    zooms = np.sqrt((lr_aff[:3, :3] ** 2).sum(0))
    assert np.allclose(zooms, np.asarray(meta.zooms) * factors, atol=1e-6)
    assert nib.aff2axcodes(lr_aff) == nib.aff2axcodes(meta.affine)
    # and back: the upscaled grid is the original grid
    assert np.abs(scaled_affine(lr_aff, factors) - meta.affine).max() < 1e-9

    # through files: the written low-resolution volume reloads with that geometry, codes, units and dtype
    op = AreaDownsample(factors)
    x = torch.from_numpy(data[: hr_shape[0], : hr_shape[1], : hr_shape[2]].copy())[None, None].double()
    out = tmp_path / "lr.nii.gz"
    write_volume(out, op.A(x)[0, 0].numpy(), meta, lr_aff)
    img = nib.load(str(out))
    assert img.shape == lr_shape
    assert np.abs(img.affine - lr_aff).max() < 1e-4
    assert img.get_data_dtype() == meta.dtype
    src = nib.load(str(MRI / name))
    assert int(img.header["sform_code"]) == int(src.header["sform_code"]) or int(src.header["sform_code"]) == 0
    assert img.header.get_xyzt_units() == src.header.get_xyzt_units()
    assert np.allclose(img.header.get_zooms(), zooms, atol=1e-5)


@pytest.mark.parametrize("op", [SliceAverage(4, axis=-1), FourierCrop((1, 1, 4)), AreaDownsample((1, 1, 4))], ids=lambda o: o.spec()["type"])
def test_mri_operators_on_a_real_volume(op, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every MRI operator runs on a real volume and keeps A(A^+ y) = y there."""
    data, meta = read_volume(MRI / "mni152_09a_t1_crop64.nii.gz")
    x = torch.from_numpy(data)[None, None].double()
    y = op.A(x)
    assert y.shape == (1, 1, 64, 64, 16)
    assert torch.allclose(op.A(op.A_pinv(y)), y, atol=1e-8)


def test_4d_needs_a_volume_index() -> None:
    with pytest.raises(MRIFileError, match=r"4D volume of shape \(128, 96, 24, 2\).*volume index"):
        read_volume(MRI / "nibabel_example4d.nii.gz")
    data, meta = read_volume(MRI / "nibabel_example4d.nii.gz", volume_index=1)
    assert data.shape == (128, 96, 24) and np.allclose(meta.zooms, (2.0, 2.0, 2.2), atol=1e-5)
    with pytest.raises(MRIFileError, match="out of range"):
        read_volume(MRI / "nibabel_example4d.nii.gz", volume_index=2)


def test_bad_volumes(tmp_path: Path) -> None:
    nan = tmp_path / "nan.nii.gz"
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(nan))
    with pytest.raises(MRIFileError, match="nan.nii.gz: 1 voxel"):
        read_volume(nan)
    txt = tmp_path / "notes.nii.gz"
    txt.write_text("not a volume")
    with pytest.raises(MRIFileError, match="notes.nii.gz: cannot read"):
        read_volume(txt)
    with pytest.raises(MRIFileError, match="not a NIfTI"):
        read_volume(Path(__file__))
    data, meta = read_volume(MRI / "mni152_09a_t1_crop64.nii.gz")
    out = tmp_path / "exists.nii.gz"
    out.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_volume(out, data, meta)
    assert out.read_bytes() == b"keep"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("operator,scale", [("slice", "1,1,4"), ("kspace", "2"), ("area", "2,2,1")])
def test_degrade_cli_on_nifti(operator: str, scale: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    src = MRI / "dipy_aniso_vox.nii.gz"
    out = tmp_path / "lr.nii.gz"
    assert main(["degrade", str(src), str(out), "--scale", scale, "--operator", operator]) == 0
    factors = [int(v) for v in scale.split(",")] * (3 if "," not in scale else 1)
    img, ref = nib.load(str(out)), nib.load(str(src))
    assert img.shape == tuple(n // f for n, f in zip(ref.shape, factors))
    assert np.abs(img.affine - reduced_affine(ref.affine, factors)).max() < 1e-4
    assert img.get_data_dtype() == ref.get_data_dtype()
    code = main(["degrade", str(MRI / "nibabel_example4d.nii.gz"), str(tmp_path / "x.nii.gz")])
    assert code != 0 and "volume index" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()
