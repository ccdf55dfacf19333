"""Bad inputs to the images, MRI and faces domains end in one line before any work, and leave nothing behind (issue 12)."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import png
import pytest
import torch

from domains.base import EvaluateRequest, InputError
from domains.files import check_decoded_size, max_pixels, set_max_pixels
from domains.images.pipeline import evaluate_images
from domains.mri.io import MRIFileError, read_volume
from pipelines import api
from pipelines.cli import main
from toolkit.checkpoint import load_model
from toolkit.denoiser import UNetDenoiser
from toolkit.engine import SamplerOptions
from toolkit.lightning import DiffusionSR
from toolkit.operators import AreaDownsample

if TYPE_CHECKING:
    from conftest import CliFails


def _checkpoint(path: Path, dims: int, factors: Any, domain: dict[str, Any] | None = None) -> Path:
    """A tiny untrained checkpoint written directly (no training run)."""
    net = UNetDenoiser(dims, channels=1, num_channels=(8, 8), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8)
    module = DiffusionSR(net, operator=AreaDownsample(factors, spatial_dims=dims), sampling=SamplerOptions(steps=1))
    spec = module.inference_spec() | ({"domain": domain} if domain else {})
    torch.save({"diffsr": spec, "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "image.ckpt", 2, 2)


@pytest.fixture(scope="module")
def iso_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An isotropic x2 3D MRI checkpoint, as ``configs/mri/sr3d_iso_x2.yaml`` writes."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "iso.ckpt", 3, (2, 2, 2), {"kind": "mri", "intensity": None, "slicewise": None})


def _png(path: Path, height: int, width: int) -> Path:
    values = (np.arange(height * width).reshape(height, width) * 37 % 256).astype(np.uint8)
    with path.open("wb") as fh:
        png.Writer(width, height, greyscale=True).write(fh, values.tolist())
    return path


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A decompression bomb: ``side``^2 1-bit grey zeros, about 50 KB on disk, 400 M pixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, z = b"\0" * (1 + (side + 7) // 8), zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _nifti(path: Path, affine: np.ndarray | None, shape: tuple[int, ...] = (16, 16, 16), patch: Any = None) -> Path:
    """A random volume with the sform ``affine`` (``None``: none), its ``.nii`` header patched at ``(offset, floats)``."""
    data = np.random.default_rng(0).random(shape).astype(np.float32) * 100
    img = nib.Nifti1Image(data, None)
    img.set_sform(affine, code=0 if affine is None else 2)
    img.set_qform(None, code=0)
    nib.save(img, str(path))
    if patch is not None:  # what nibabel will not write: pixdim[1:4] at offset 80, srow_y at 296
        offset, values = patch
        raw = bytearray(path.read_bytes())
        raw[offset : offset + 4 * len(values)] = struct.pack(f"<{len(values)}f", *values)
        path.write_bytes(bytes(raw))
    return path


def test_decompression_bomb_is_refused_from_the_header(cli_fails: CliFails, image_ckpt: Path, tmp_path: Path) -> None:
    bomb = _bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100_000
    tracemalloc.start()
    try:
        cli_fails(["degrade", str(bomb), str(tmp_path / "lr.png")], "bomb.png", "400000000 pixels", "--max-pixels")
        cli_fails(["upscale", str(bomb), str(tmp_path / "sr.png"), "--checkpoint", str(image_ckpt)], "bomb.png", "--max-pixels")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak  # nothing of the 400 MB was decoded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.png"]


def test_pixel_limit_is_configurable_and_checks_the_output(
    cli_fails: CliFails, image_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _png(tmp_path / "small.png", 8, 8)
    monkeypatch.setenv("DIFFSR_MAX_PIXELS", "100")
    assert max_pixels() == 100
    # the input (64 px) is within the limit, the x2 output (256 px) is not: refused before sampling
    cli_fails(["upscale", str(small), str(tmp_path / "sr.png"), "--checkpoint", str(image_ckpt)], "small.png", "the output has 256 pixels")
    set_max_pixels(10)
    try:
        with pytest.raises(ValueError, match="image has 64 pixels, more than the limit 10"):
            check_decoded_size(small, 64, "image")
    finally:
        set_max_pixels(None)
    with pytest.raises(ValueError, match="positive integer"):
        set_max_pixels(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png"]


@pytest.mark.parametrize(
    ("affine", "patch", "needle"),
    [
        (None, (80, (1.0, 0.0, 1.0)), "voxel size"),
        (None, (80, (1.0, -2.0, 1.0)), "voxel size"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), None, "voxel size"),
        (np.eye(4), (296, (0.0, np.nan)), "voxel size"),
        (np.array([[1.0, 1.0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]]), None, "singular"),
    ],
    ids=["zero-pixdim", "negative-pixdim", "zero-affine", "nan-affine", "singular"],
)
def test_broken_nifti_geometry_is_refused_at_read(
    cli_fails: CliFails, tmp_path: Path, affine: np.ndarray | None, patch: Any, needle: str
) -> None:
    vol = _nifti(tmp_path / "bad.nii", affine, patch=patch)
    with pytest.raises(MRIFileError, match=needle):
        read_volume(vol)
    cli_fails(["degrade", str(vol), str(tmp_path / "lr.nii.gz")], "bad.nii", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nii"]


def test_evaluate_refuses_tiny_images_and_checks_every_file_first(cli_fails: CliFails, image_ckpt: Path, tmp_path: Path) -> None:
    good, out = _png(tmp_path / "good.png", 16, 12), tmp_path / "ev"
    for h, w in ((1, 1), (3, 2)):
        tiny = _png(tmp_path / f"tiny{h}x{w}.png", h, w)
        cli_fails(["evaluate", "--checkpoint", str(image_ckpt), "--hr", str(tiny), "--out", str(out)], tiny.name, "too small")
    # a bad second file is found before the first is processed, and --out is not created
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cli_fails(["evaluate", "--checkpoint", str(image_ckpt), "--hr", str(good), str(tmp_path / "broken.png"), "--out", str(out)], "broken.png")
    cli_fails(["evaluate", "--checkpoint", str(image_ckpt), "--hr", str(good), str(tmp_path / "missing.png"), "--out", str(out)], "missing.png")
    vol = _nifti(tmp_path / "v.nii.gz", np.eye(4))
    cli_fails(["evaluate", "--checkpoint", str(image_ckpt), "--hr", str(vol), "--out", str(out)], "v.nii.gz", "2D checkpoint")
    assert not out.exists()


def test_evaluate_keeps_an_existing_report_without_overwrite(image_ckpt: Path, tmp_path: Path) -> None:
    good, out = _png(tmp_path / "good.png", 16, 12), tmp_path / "ev"
    model = load_model(image_ckpt)
    options = model.options.updated(steps=1)
    evaluate_images(model, [good], out, options, progress=False)
    before = (out / "metrics.json").read_text()
    with pytest.raises(FileExistsError, match="metrics.json"):
        evaluate_images(model, [good], out, options, progress=False)
    request = EvaluateRequest(checkpoint=image_ckpt, hr_files=[good], out_dir=out)
    with pytest.raises(FileExistsError, match="metrics.json"):
        request.validate(lambda f: None)
    assert (out / "metrics.json").read_text() == before
    evaluate_images(model, [good], out, options, progress=False, overwrite=True)


def test_uncertainty_path_is_checked_before_sampling(cli_fails: CliFails, image_ckpt: Path, tmp_path: Path) -> None:
    src, dst = _png(tmp_path / "in.png", 8, 8), tmp_path / "out.png"
    base = ["upscale", str(src), str(dst), "--checkpoint", str(image_ckpt), "--steps", "1", "--samples", "2"]
    (tmp_path / "old_std.png").write_bytes(b"keep")
    cli_fails([*base, "--uncertainty", str(tmp_path / "old_std.png")], "old_std.png", "exists")
    cli_fails([*base, "--uncertainty", str(tmp_path / "no" / "std.png")], "no", "does not exist")
    cli_fails([*base, "--uncertainty", str(dst)], "out.png", "file of its own")
    cli_fails([*base, "--uncertainty", str(tmp_path / "std.jpg")], "std.jpg", ".png or .tif")
    cli_fails([*base, "--uncertainty", str(tmp_path / "std.nii.gz")], "std.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "old_std.png"]
    assert (tmp_path / "old_std.png").read_bytes() == b"keep"


def test_isotropic_mri_evaluate_and_image_checks(iso_ckpt: Path, tmp_path: Path) -> None:
    """Defect 2: the panels of an isotropic x2 checkpoint (the mid plane of the input is half the reference's index)."""
    vol, out = _nifti(tmp_path / "head.nii.gz", np.diag([2.0, 2.0, 2.0, 1.0]), (16, 14, 12)), tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(iso_ckpt), "--hr", str(vol), "--out", str(out), "--steps", "1", "--samples", "1"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["factors"] == [2, 2, 2] and np.isfinite(report["methods"]["diffsr"]["psnr"])
    assert (out / "head_diffsr.nii.gz").is_file() and (out / "head_input.png").is_file()
    with pytest.raises(InputError, match="2D image cannot go through a 3D checkpoint"):
        api.upscale(_png(tmp_path / "x.png", 8, 8), tmp_path / "x_sr.png", iso_ckpt)


def test_faces_size_and_slice_operator_on_an_image(cli_fails: CliFails, tmp_path: Path) -> None:
    src = _png(tmp_path / "face.png", 16, 16)
    for size in (0, -3):
        with pytest.raises(ValueError, match="--size"):
            api.degrade(src, tmp_path / "lr.png", faces=True, size=size)
    cli_fails(["degrade", str(src), str(tmp_path / "lr.png"), "--scale", "1,1,4", "--operator", "slice"], "--scale 1,1,4", "2D")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.png"]


def test_non_finite_voxels_are_missing_not_zeros(iso_ckpt: Path, tmp_path: Path) -> None:
    """NaN/Inf voxels are filled for the network, counted in a warning and NaN again in the output (a
    2x2x2 block each at x2); every other voxel is finite."""
    from domains.files import NonFiniteWarning

    vol = tmp_path / "holes.nii.gz"
    data = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32) * 100
    data[1, 2, 3], data[5, 6, 7] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(vol))
    out = tmp_path / "sr.nii.gz"
    with pytest.warns(NonFiniteWarning, match="2 non-finite voxels treated as missing"):
        api.upscale(vol, out, iso_ckpt, steps=1, samples=1, progress=False)
    sr = np.asarray(nib.load(str(out)).dataobj)
    expected = np.zeros(sr.shape, dtype=bool)
    expected[2:4, 4:6, 6:8] = expected[10:12, 12:14, 14:16] = True
    np.testing.assert_array_equal(np.isnan(sr), expected)
    assert np.isfinite(sr[~expected]).all()
