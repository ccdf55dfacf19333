"""MRI end to end on the shipped volumes: fit (3D and slice-wise), degrade, upscale, evaluate, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pytest
import torch

from domains.mri.data import VolumeDataModule
from domains.mri.io import MRIFileError, read_volume
from pipelines.cli import main
from toolkit.checkpoint import load_model
from toolkit.operators import SliceAverage

if TYPE_CHECKING:
    from conftest import CliFails

ROOT = Path(__file__).resolve().parents[1]
MRI = ROOT / "data" / "mri"
VOLUMES_3D = ["dipy_aniso_vox.nii.gz", "nibabel_someones_anatomy.nii.gz", "mni152_09a_t1_crop64.nii.gz", "mni152_09a_t1_1mm.nii.gz"]
TINY_NET = [
    "--model.init_args.denoiser.init_args.num_channels=[8, 16]",
    "--model.init_args.denoiser.init_args.attention_levels=[false, false]",
    "--model.init_args.denoiser.init_args.norm_num_groups=8",
    "--model.init_args.denoiser.init_args.num_head_channels=8",
]


def _fit(tmp: Path, config: str, patch: str, extra: list[str] | None = None) -> Path:
    os.chdir(tmp)
    main([
        "fit", "--config", str(ROOT / "configs" / "mri" / config),
        "--trainer.default_root_dir", str(tmp),
        "--trainer.max_steps", "2", "--trainer.max_time", "null", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
        "--data.init_args.train", str(MRI / "mni152_09a_t1_crop64.nii.gz"),
        "--data.init_args.val", str(MRI / "nibabel_someones_anatomy.nii.gz"),
        "--data.init_args.patch_size", patch, "--data.init_args.val_patch_size", patch,
        "--data.init_args.voxel_sizes", "[2.0]",
        "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "4",
        "--model.init_args.sampling.steps", "2", "--model.init_args.sampling.samples", "2",
        *TINY_NET, *(extra or []),
    ])
    ckpt = tmp / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def ckpt3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fit(tmp_path_factory.mktemp("fit3d"), "sr3d_slice_x4.yaml", "[16, 16, 16]")


@pytest.fixture(scope="module")
def ckpt2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fit(tmp_path_factory.mktemp("fit2d"), "sr2d_slice_x4.yaml", "[16, 3, 16]")


def _centres(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _fov(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3], affine[:3, :3] @ (np.asarray(shape) - 0.5) + affine[:3, 3]])


def test_checkpoint_carries_the_mri_description(ckpt3d: Path, ckpt2d: Path) -> None:
    m3, m2 = load_model(ckpt3d), load_model(ckpt2d)
    assert m3.spatial_dims == 3 and m3.scale == (1, 1, 4)
    assert m3.spec["domain"]["intensity"] == {"type": "robust_percentile", "low": 0.5, "high": 99.5, "foreground_fraction": 0.5}
    assert m3.spec["domain"]["slicewise"] is None
    assert m2.spatial_dims == 2 and m2.channels == 3 and m2.scale == (1, 4)
    assert m2.spec["domain"]["slicewise"] == {"neighbours": 1, "plane_axes": [0, 1]}
    assert m3.normalization.spec() == {"offset": [0.0], "scale": [1.0]}


@pytest.mark.parametrize("name", VOLUMES_3D + ["nibabel_example4d.nii.gz"])
def test_degrade_then_upscale_keeps_geometry(name: str, ckpt3d: Path, ckpt2d: Path, tmp_path: Path) -> None:
    """Voxel centres and field of view of the output equal those of the (cropped) original, to 1e-4 mm."""
    src = MRI / name
    index = ["--volume-index", "1"] if "4d" in name else []
    lr, out = tmp_path / "lr.nii.gz", tmp_path / "sr.nii.gz"
    assert main(["degrade", str(src), str(lr), "--scale", "1,1,4", "--operator", "slice", *index]) == 0
    # one volume through the slice-wise model, the others through the 3D one (fully convolutional, fast)
    ckpt = ckpt2d if "someones" in name else ckpt3d
    tile = "0" if "1mm" in name else "64"  # the large template in one pass: fewer voxels than overlapping patches
    assert main(["upscale", str(lr), str(out), "--checkpoint", str(ckpt), "--steps", "1", "--samples", "1", "--tile", tile, "--scale", "1,1,4"]) == 0
    hr, meta = read_volume(src, 1 if index else None)
    shape = (hr.shape[0], hr.shape[1], hr.shape[2] // 4 * 4)
    img, src_img = nib.load(str(out)), nib.load(str(src))
    assert img.shape == shape
    assert np.abs(_centres(img.affine, shape) - _centres(meta.affine, shape)).max() < 1e-4
    assert np.abs(_fov(img.affine, shape) - _fov(meta.affine, shape)).max() < 1e-4
    assert np.allclose(img.header.get_zooms()[:3], meta.zooms, atol=1e-5)
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(src_img.affine)
    assert img.get_data_dtype() == src_img.get_data_dtype()
    assert img.header.get_xyzt_units() == src_img.header.get_xyzt_units()
    assert int(img.header["qform_code"]) == int(src_img.header["qform_code"]) or int(src_img.header["qform_code"]) == 0
    # the output explains its input: thick slices of the output are the input, up to the dtype's
    # rounding (0.5) where no voxel of the slab was clipped to the dtype's range
    sr = np.asarray(img.dataobj, dtype=np.float64)
    y = np.asarray(nib.load(str(lr)).dataobj, dtype=np.float64)
    op = SliceAverage(4)
    ay = op.A(torch.from_numpy(sr)[None, None])[0, 0].numpy()
    dtype = src_img.get_data_dtype()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        clipped = op.A(torch.from_numpy(((sr <= info.min) | (sr >= info.max)).astype(np.float64))[None, None])[0, 0].numpy() > 0
        head = y > 0.2 * y.max()  # clipping at the dtype's range happens in the air around the head
        assert (~clipped[head]).mean() > 0.9
        assert np.abs(ay - y)[~clipped].max() <= 0.5 + 1e-6
    else:
        assert np.abs(ay - y).max() <= 1e-4 * float(np.abs(y).max())


def test_streamed_3d_upscale_with_uncertainty_and_seed(ckpt3d: Path, tmp_path: Path) -> None:
    lr = tmp_path / "lr.nii.gz"
    main(["degrade", str(MRI / "mni152_09a_t1_crop64.nii.gz"), str(lr), "--scale", "1,1,4", "--operator", "slice"])
    args = ["--checkpoint", str(ckpt3d), "--steps", "2", "--samples", "2", "--tile", "32", "--overlap", "8"]
    assert main(["upscale", str(lr), str(tmp_path / "a.nii.gz"), *args, "--uncertainty", str(tmp_path / "std.nii.gz")]) == 0
    assert main(["upscale", str(lr), str(tmp_path / "b.nii.gz"), *args]) == 0
    a, b = (np.asarray(nib.load(str(tmp_path / f"{k}.nii.gz")).dataobj) for k in "ab")
    np.testing.assert_array_equal(a, b)
    std = nib.load(str(tmp_path / "std.nii.gz"))
    assert std.shape == a.shape and std.get_data_dtype() == np.float32 and np.asarray(std.dataobj).max() > 0


def test_evaluate_volumes_reports_masked_metrics(ckpt2d: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(ckpt2d), "--hr", str(MRI / "nibabel_someones_anatomy.nii.gz"), "--out", str(out), "--steps", "1", "--samples", "2"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["methods"]) == {"diffsr", "trilinear", "cubic"}
    assert report["methods"]["diffsr"]["consistency_psnr"] > 60  # the final projection makes A(sr) = y
    assert report["methods"]["cubic"]["psnr"] > report["methods"]["trilinear"]["psnr"]
    assert (out / "report.html").is_file() and (out / "nibabel_someones_anatomy_diffsr.png").is_file()
    assert (out / "nibabel_someones_anatomy_diffsr.nii.gz").is_file()


def test_bad_volumes_give_one_line_and_no_output(cli_fails: CliFails, ckpt3d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.nii.gz"
    ck = ["--checkpoint", str(ckpt3d), "--steps", "1", "--samples", "1"]
    cli_fails(["upscale", str(MRI / "nibabel_example4d.nii.gz"), str(out), *ck], "example4d", "4D", "volume index")
    data, meta = read_volume(MRI / "dipy_aniso_vox.nii.gz")
    data[3, 4, 5] = np.nan
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, meta.affine), str(nan))
    # a reference with a NaN cannot be degraded into a training or evaluation pair (an input to upscale can:
    # its NaN voxels are missing data, see tests/test_reliability_inputs.py)
    cli_fails(["degrade", str(nan), str(tmp_path / "lr.nii.gz"), "--scale", "1,1,4", "--operator", "slice"], "nan.nii.gz", "NaN")
    text = tmp_path / "notes.nii.gz"
    text.write_text("not a volume")
    cli_fails(["upscale", str(text), str(out), *ck], "notes.nii.gz", "cannot read NIfTI")
    cli_fails(["upscale", str(MRI / "dipy_aniso_vox.nii.gz"), str(out), *ck, "--scale", "2"], "x1x1x4", "x2")
    cli_fails(["upscale", str(MRI / "dipy_aniso_vox.nii.gz"), str(out), *ck, "--scale", "1,2,4"], "x1x1x4")
    photo = ROOT / "data" / "natural" / "holdout" / "skimage_chelsea.png"
    cli_fails(["upscale", str(photo), str(tmp_path / "out.png"), *ck], "chelsea", "3D")
    assert not out.exists() and not (tmp_path / "out.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_image_checkpoint_refuses_a_volume(cli_fails: CliFails, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_cli import _tiny_fit

    os.chdir(tmp_path)
    main(_tiny_fit(tmp_path))
    out = tmp_path / "out.nii.gz"
    cli_fails(["upscale", str(MRI / "dipy_aniso_vox.nii.gz"), str(out), "--checkpoint", str(tmp_path / "last.ckpt")], "dipy_aniso_vox", "2D")
    assert not out.exists()


def test_datamodule_splits_by_subject_and_patches(tmp_path: Path) -> None:
    with pytest.raises(MRIFileError, match="both the training and the validation"):
        VolumeDataModule(train=str(MRI / "dipy_aniso_vox.nii.gz"), val=[str(MRI / "dipy_aniso_vox.nii.gz")]).setup("fit")
    dm = VolumeDataModule(train=str(MRI / "mni152_09a_t1_crop64.nii.gz"), val=str(MRI / "dipy_aniso_vox.nii.gz"), patch_size=[16, 16, 24], voxel_sizes=[2.0], seed=3)
    dm.setup("fit")
    assert dm.train_set is not None and len(dm.train_set.volumes) == 2  # native and 2 mm
    a, b = dm.train_set[5]["hr"], dm.train_set[5]["hr"]
    assert a.shape == (1, 16, 16, 24) and torch.equal(a, b)
    assert not torch.equal(a, dm.train_set[6]["hr"])
    assert float(a.abs().max()) < 3  # per-volume normalised intensities
    sw = VolumeDataModule(train=str(MRI / "mni152_09a_t1_crop64.nii.gz"), patch_size=[16, 16, 24], slicewise_neighbours=2)
    sw.setup("fit")
    assert sw.train_set is not None and sw.train_set[0]["hr"].shape == (5, 16, 24)
    assert sw.domain_spec["slicewise"] == {"neighbours": 2, "plane_axes": [0, 1]}


def test_iso_x2_config_fits_and_upscales(tmp_path: Path) -> None:
    ckpt = _fit(tmp_path, "sr3d_iso_x2.yaml", "[16, 16, 16]")
    assert load_model(ckpt).scale == (2, 2, 2)
    lr, out = tmp_path / "lr.nii.gz", tmp_path / "sr.nii.gz"
    assert main(["degrade", str(MRI / "dipy_aniso_vox.nii.gz"), str(lr), "--scale", "2"]) == 0
    assert main(["upscale", str(lr), str(out), "--checkpoint", str(ckpt), "--steps", "1", "--samples", "1", "--scale", "2"]) == 0
    src, img = nib.load(str(MRI / "dipy_aniso_vox.nii.gz")), nib.load(str(out))
    assert img.shape == (58, 58, 24)
    assert np.abs(img.affine - src.affine).max() < 1e-4
