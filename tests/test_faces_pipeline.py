"""Face restoration from files: whole photos (astronaut), crops, evaluation, the recipe through the CLI, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cv2", reason="face detection needs the 'faces' extra (opencv-python-headless<5)")

from domains.faces.detect import FaceBox, detect_faces  # noqa: E402
from domains.faces.pipeline import (  # noqa: E402
    FaceInputError,
    compare_starts,
    degrade_face,
    evaluate_faces,
    feather_mask,
    is_face_checkpoint,
    load_face_model,
    restore_faces,
    restore_photo,
)
from domains.images.io import read_image, write_image  # noqa: E402
from toolkit.checkpoint import CheckpointError, SRModel  # noqa: E402
from toolkit.denoiser import UNetDenoiser  # noqa: E402
from toolkit.engine import SamplerOptions  # noqa: E402
from toolkit.normalization import Normalization  # noqa: E402
from toolkit.operators import AreaDownsample  # noqa: E402
from toolkit.process import GaussianProcess  # noqa: E402
from toolkit.spaces import ResidualSpace  # noqa: E402
from toolkit.utils import upsample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "data" / "natural" / "train" / "skimage_astronaut.png"
FACES = ROOT / "data" / "faces"
CONFIG = ROOT / "configs" / "faces" / "restore_128.yaml"


def _model(factor: int = 1) -> SRModel:
    """A tiny restoration model whose (seeded, untrained) network changes its input visibly."""
    g = torch.Generator().manual_seed(0)
    # four levels: MONAI's middle block always has self-attention, cheap only at a coarse level (16x16 here)
    net = UNetDenoiser(2, 3, num_channels=(8, 8, 16, 16), attention_levels=(False,) * 4, norm_num_groups=8, num_head_channels=8)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():  # MONAI zero-initialises the output convolution
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    net.eval().requires_grad_(False)
    opts = SamplerOptions(steps=2, t_start=200, start="regression", consistency="none")
    return SRModel(net, AreaDownsample(factor), ResidualSpace(0.2), GaussianProcess(), Normalization(), opts)


@pytest.fixture(scope="module")
def model() -> SRModel:
    return _model()


def test_whole_photo_astronaut(model: SRModel, tmp_path: Path) -> None:
    img = read_image(ASTRONAUT)[0]
    faces = detect_faces(img)
    assert len(faces) == 1
    cy, cx = faces[0].center
    assert 90 < cy < 140 and 200 < cx < 250  # Eileen Collins' face in the 512x512 photo
    out = tmp_path / "astronaut_x2.png"
    res = restore_photo(ASTRONAUT, out, model, scale=2)
    assert res.output == out and res.faces == faces and res.scale == 2
    got = read_image(out)[0]
    assert got.shape == (3, 1024, 1024)
    # the rest of the photo is exactly the bicubic upscaling (after the same 8-bit rounding)
    bicubic = upsample(torch.from_numpy(img)[None], (1024, 1024)).clamp(0, 1)[0].numpy()
    write_image(tmp_path / "bicubic.png", bicubic, 8)
    ref = read_image(tmp_path / "bicubic.png")[0]
    top, left, side = res.squares[0]
    outside = np.ones((1024, 1024), dtype=bool)
    outside[max(0, top) : top + side, max(0, left) : left + side] = False
    assert outside.mean() > 0.8
    assert np.array_equal(got[:, outside], ref[:, outside])
    # ... and the face was restored (changed) inside its square
    inner = (slice(None), slice(top + side // 4, top + 3 * side // 4), slice(left + side // 4, left + 3 * side // 4))
    assert np.abs(got[inner] - ref[inner]).mean() > 1e-3


def test_whole_photo_with_an_image_model_for_the_rest(model: SRModel, tmp_path: Path) -> None:
    """The background comes from an x2 image checkpoint; a face square that leaves the photo is padded and clipped."""
    img = read_image(ASTRONAUT)[0][:, 50:242, 120:328]  # 192x208 around the face, which touches the top edge
    src = tmp_path / "astronaut_crop.png"
    write_image(src, img, 8)
    res = restore_photo(src, tmp_path / "out.png", model, background=_model(factor=2), scale=3)
    assert res.scale == 2 and res.squares[0][0] < 0  # the image model's factor wins; the square starts above the photo
    assert read_image(tmp_path / "out.png")[0].shape == (3, 384, 416)


def test_feather_mask_is_smooth() -> None:
    m = feather_mask(100, 0.15)
    assert m.shape == (100, 100) and float(m[50, 50]) == 1.0
    assert float(m[0, 50]) < 0.01 and float(m.min()) > 0
    assert float((m[1:] - m[:-1]).abs().max()) < 0.12  # no step: 15 px of raised cosine


def test_restore_crops_folder_and_file(model: SRModel, tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    crops.mkdir()
    for f in sorted(FACES.glob("*.png")):  # three 256x256 face crops, shrunk to 40x40 (a small face)
        x = torch.from_numpy(read_image(f)[0])[None]
        small = torch.nn.functional.interpolate(x, size=(40, 40), mode="area")[0].numpy()
        write_image(crops / f.name, small, 8)
    outs = restore_faces(crops, tmp_path / "restored", model, batch_size=2)
    assert [p.name for p in outs] == sorted(p.name for p in crops.iterdir())
    assert all(read_image(p)[0].shape == (3, 128, 128) for p in outs)
    one = restore_faces(crops / "obama_official_256.png", tmp_path / "one.png", model, out_size=64)
    assert read_image(one[0])[0].shape == (3, 64, 64)
    # seeded: the same call gives the same file
    again = restore_faces(crops / "obama_official_256.png", tmp_path / "again.png", model, out_size=64)
    assert np.array_equal(read_image(one[0])[0], read_image(again[0])[0])


def test_bad_input_names_the_file_and_writes_nothing(model: SRModel, tmp_path: Path) -> None:
    coffee = ROOT / "data" / "natural" / "train" / "skimage_coffee.png"
    with pytest.raises(FaceInputError, match="skimage_coffee.png: no face found"):
        restore_photo(coffee, tmp_path / "coffee.png", model)
    camera = ROOT / "data" / "natural" / "train" / "skimage_camera.png"
    with pytest.raises(FaceInputError, match="skimage_camera.png: greyscale"):
        restore_photo(camera, tmp_path / "camera.png", model)
    with pytest.raises(FaceInputError, match="skimage_camera.png: greyscale"):
        restore_faces(camera, tmp_path / "camera_crop.png", model)
    tiny = tmp_path / "tiny.png"
    write_image(tiny, read_image(FACES / "obama_official_256.png")[0][:, ::32, ::32], 8)  # 8x8 px
    with pytest.raises(FaceInputError, match="tiny.png: image is 8x8 px, too small"):
        restore_faces(tiny, tmp_path / "tiny_out.png", model)
    with pytest.raises(FaceInputError, match="tiny.png: image is 8x8 px, too small"):
        restore_photo(tiny, tmp_path / "tiny_photo.png", model)
    bad_folder = tmp_path / "folder"
    bad_folder.mkdir()
    write_image(bad_folder / "a_good.png", read_image(FACES / "obama_official_256.png")[0][:, ::4, ::4], 8)
    write_image(bad_folder / "b_tiny.png", read_image(FACES / "obama_official_256.png")[0][:, ::32, ::32], 8)
    with pytest.raises(FaceInputError, match="b_tiny.png"):
        restore_faces(bad_folder, tmp_path / "folder_out", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "tiny.png"]  # no output, no temporary file
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        restore_photo(ASTRONAUT, existing, model)
    assert existing.read_bytes() == b"keep"


def test_super_resolution_checkpoint_is_refused() -> None:
    with pytest.raises(CheckpointError, match="not a face restoration model"):
        load_face_model(_model(factor=2))


def test_degrade_face_file(tmp_path: Path) -> None:
    src = FACES / "biden_official_256.png"
    p1 = degrade_face(src, tmp_path / "a.png", seed=3, size=128)
    p2 = degrade_face(src, tmp_path / "b.png", seed=3, size=128)
    assert p1 == p2
    a = read_image(tmp_path / "a.png")[0]
    assert np.array_equal(a, read_image(tmp_path / "b.png")[0])
    assert a.shape[1:] == tuple(p1["stages"][-1]["size"])


def test_recipe_through_the_cli_then_evaluate(tmp_path: Path) -> None:
    """configs/faces/restore_128.yaml fits (2 steps, tiny net, 32 px) and its checkpoint evaluates on held-back people."""
    from pipelines.cli import main

    main([
        "fit", "--config", str(CONFIG),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2", "--trainer.max_time", "null",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu", "--trainer.limit_val_batches", "0",
        "--model.init_args.denoiser.init_args.num_channels=[8, 16]",
        "--model.init_args.denoiser.init_args.attention_levels=[false, false]",
        "--model.init_args.denoiser.init_args.norm_num_groups=8",
        "--model.init_args.denoiser.init_args.num_head_channels=8",
        "--data.init_args.root", str(FACES / "congress_portraits"),
        "--data.init_args.size", "32", "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "4",
    ])
    ckpt = tmp_path / "last.ckpt"
    fm = load_face_model(ckpt)
    assert fm.size == 32 and fm.model.scale == (1, 1) and fm.options().consistency == "none"
    assert fm.options().t_start == 200 and fm.options(steps=1, t_start="noise").t_start is None
    report = evaluate_faces(ckpt, FACES / "congress_portraits", tmp_path / "eval", degradation_seed=1, holdout=40, limit=2,
                            panels=2, steps=2)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["files_evaluated"] == report["files_evaluated"] == 2
    assert set(saved["methods"]) == {"restored", "bicubic"}
    assert saved["lpips"]["available"] in (True, False)
    m = saved["methods"]["bicubic"]
    assert 10 < m["psnr"] < 40 and 0 < m["ssim"] < 1 and np.isfinite(m["consistency_psnr"])
    assert saved["truth_consistency_psnr"] > 20
    panel = read_image(tmp_path / "eval" / "panel.png")[0]
    assert panel.shape == (3, 2 * 32 + 4, 4 * 32 + 3 * 4)
    assert "panel.png" in (tmp_path / "eval" / "report.html").read_text()
    # the evaluation's degradation is seeded by file name: the same seed gives the same bicubic scores
    again = evaluate_faces(fm, FACES / "congress_portraits", tmp_path / "eval2", degradation_seed=1, holdout=40, limit=2, steps=2)
    assert again["methods"]["bicubic"] == report["methods"]["bicubic"]
    assert is_face_checkpoint(ckpt) and not is_face_checkpoint(tmp_path / "eval" / "metrics.json")
    cmp = compare_starts(fm, FACES / "congress_portraits", tmp_path / "cmp", 1, holdout=40, nfe=(1, 2), t_starts=(100,),
                         full_steps=3, limit=2)
    assert [r["nfe"] for r in cmp["runs"]] == [1, 2, 2, 3]
    assert cmp["bicubic"] == {"psnr": m["psnr"], "ssim": m["ssim"]}
    assert (tmp_path / "cmp" / "compare.md").read_text().count("\n") == 7


def test_face_box_square() -> None:
    assert FaceBox(10, 20, 50, 50).square(1.6) == (-5, 5, 80)
