"""The command line end to end on real photos: fit, degrade, upscale, evaluate, bench, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from domains.images.io import read_image, write_image
from pipelines.cli import main
from toolkit.checkpoint import CheckpointError, load_model, read_checkpoint

if TYPE_CHECKING:
    from conftest import CliFails

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "images" / "sr3_x2.yaml"
TINY_NET = [
    "--model.init_args.denoiser.init_args.num_channels=[8, 16]",
    "--model.init_args.denoiser.init_args.attention_levels=[false, false]",
    "--model.init_args.denoiser.init_args.norm_num_groups=8",
    "--model.init_args.denoiser.init_args.num_head_channels=8",
]


def _tiny_fit(tmp: Path, extra: list[str] | None = None) -> list[str]:
    return [
        "fit",
        "--config", str(CONFIG),
        "--trainer.default_root_dir", str(tmp),
        "--trainer.max_steps", "3",
        "--trainer.max_time", "null",
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu",
        "--data.init_args.train", str(ROOT / "data" / "natural" / "train"),
        "--data.init_args.val", str(ROOT / "data" / "natural" / "holdout" / "skimage_chelsea.png"),
        "--data.init_args.val_crop_size", "32",
        "--data.init_args.batch_size", "2",
        "--data.init_args.crop_size", "32",
        "--data.init_args.samples_per_epoch", "6",
        "--model.init_args.sampling_steps", "2",
        *TINY_NET,
        *(extra or []),
    ]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fit")
    os.chdir(tmp)  # LightningCLI writes config.yaml into the log dir; keep the repo clean
    main(_tiny_fit(tmp))
    ckpt = tmp / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photo: np.ndarray, gray_photo: np.ndarray) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("img")
    out = {
        "rgb8": d / "rgb8.png",
        "rgb16": d / "rgb16.png",
        "rgb16tif": d / "rgb16.tif",
        "gray8": d / "gray8.png",
        "jpg": d / "rgb.jpg",
    }
    crop = photo[:, 100:148, 160:224]
    write_image(out["rgb8"], crop, 8)
    write_image(out["rgb16"], crop, 16)
    write_image(out["rgb16tif"], crop, 16)
    write_image(out["gray8"], gray_photo[:, 200:248, 200:264], 8)
    write_image(out["jpg"], crop, 8)
    return out


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (["--help"], ["degrade", "--help"], ["upscale", "--help"], ["evaluate", "--help"], ["demo", "--help"], ["bench", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "fit", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--trainer" in r.stdout


def test_checkpoint_round_trip(checkpoint: Path) -> None:
    ckpt = read_checkpoint(checkpoint)  # weights_only load: plain data and tensors
    spec = ckpt["diffsr"]
    assert spec["scale"] == [2, 2] and spec["channels"] == 3 and spec["spatial_dims"] == 2
    assert spec["operator"] == {"type": "area", "factors": [2, 2]}
    assert spec["space"]["type"] == "residual" and spec["sampler"]["steps"] == 2
    model = load_model(checkpoint)
    ema = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.")}
    for k, v in model.denoiser.state_dict().items():
        assert torch.equal(v, ema[k])
    # the EMA differs from the raw weights after training steps
    raw = {k[9:]: v for k, v in ckpt["state_dict"].items() if k.startswith("denoiser.")}
    assert any(not torch.equal(raw[k], ema[k]) for k in ema)


def test_bad_checkpoints(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_model(junk)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a diffsr checkpoint"):
        load_model(other)

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.ckpt"
    torch.save({"diffsr": {"format": 1}, "state_dict": {}, "x": Evil()}, evil)
    with pytest.raises(CheckpointError):
        load_model(evil)
    assert not (tmp_path / "pwned").exists()
    bad_weights = read_checkpoint(checkpoint)
    bad_weights["state_dict"] = {k: v for k, v in bad_weights["state_dict"].items() if "null_cond" not in k}
    torch.save(bad_weights, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_model(tmp_path / "partial.ckpt")


@pytest.mark.parametrize("key,depth", [("rgb8", 8), ("rgb16", 16), ("rgb16tif", 16), ("gray8", 8)])
def test_degrade_keeps_channels_and_depth(key: str, depth: int, images: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / f"lr{images[key].suffix}"
    assert main(["degrade", str(images[key]), str(out), "--scale", "2"]) == 0
    hr, info_hr = read_image(images[key])
    lr, info = read_image(out)
    assert info.bit_depth == depth and info.channels == info_hr.channels
    assert lr.shape[1:] == (hr.shape[1] // 2, hr.shape[2] // 2)
    expected = hr.reshape(hr.shape[0], hr.shape[1] // 2, 2, hr.shape[2] // 2, 2).mean(axis=(2, 4))
    assert np.abs(lr - expected).max() <= 0.5 / (2**depth - 1) + 1e-6  # only rounding to the bit depth
    out_g = tmp_path / f"lr_gauss{images[key].suffix}"
    assert main(["degrade", str(images[key]), str(out_g), "--scale", "4", "--operator", "gaussian"]) == 0
    assert read_image(out_g)[0].shape[1:] == (hr.shape[1] // 4, hr.shape[2] // 4)


@pytest.mark.parametrize("key,depth", [("rgb8", 8), ("rgb16", 16), ("jpg", 8)])
def test_upscale_keeps_channels_and_depth(key: str, depth: int, images: dict[str, Path], checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / ("sr.png" if key != "rgb16tif" else "sr.tif")
    args = ["upscale", str(images[key]), str(out), "--checkpoint", str(checkpoint), "--steps", "2", "--seed", "1", "--tile", "32", "--overlap", "8"]
    assert main(args) == 0
    lr, _ = read_image(images[key])
    sr, info = read_image(out)
    assert info.bit_depth == depth and sr.shape == (3, lr.shape[1] * 2, lr.shape[2] * 2)
    # the default final projection makes the output explain its input (up to rounding)
    y = torch.from_numpy(sr)[None].reshape(1, 3, lr.shape[1], 2, lr.shape[2], 2).mean((3, 5))[0].numpy()
    assert np.abs(y - lr).mean() < 2.0 / 255
    again = tmp_path / "again.png"
    assert main([*args[:2], str(again), *args[3:]]) == 0
    assert np.array_equal(read_image(again)[0], sr)  # same seed, same output


def test_upscale_odd_size_is_padded_and_cropped(images: dict[str, Path], checkpoint: Path, tmp_path: Path, photo: np.ndarray) -> None:
    src = tmp_path / "odd.png"
    write_image(src, photo[:, 10:47, 20:61], 8)  # 37 x 41
    out = tmp_path / "odd_sr.png"
    assert main(["upscale", str(src), str(out), "--checkpoint", str(checkpoint), "--steps", "1", "--tile", "0"]) == 0
    assert read_image(out)[0].shape == (3, 74, 82)


def test_bad_input_gives_one_line_and_no_output(cli_fails: CliFails, images: dict[str, Path], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.png"
    ck = ["--checkpoint", str(checkpoint), "--steps", "1"]
    cli_fails(["upscale", str(tmp_path / "missing.png"), str(out), *ck], "missing.png", "not found")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    cli_fails(["upscale", str(text), str(out), *ck], "notes.png", "cannot read image")
    cli_fails(["upscale", str(tmp_path / "x.txt"), str(out), *ck], "x.txt")
    cli_fails(["upscale", str(images["gray8"]), str(out), *ck], "gray8.png", "1 channel(s)", "3")
    cli_fails(["upscale", str(images["rgb8"]), str(out), *ck, "--scale", "4"], "x2", "4")
    cli_fails(["upscale", str(images["rgb8"]), str(out), "--checkpoint", str(text)], "notes.png", "checkpoint")
    cli_fails(["degrade", str(text), str(out)], "notes.png")
    cli_fails(["evaluate", "--checkpoint", str(checkpoint), "--hr", str(images["gray8"]), "--out", str(tmp_path / "ev")], "gray8.png")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary leftovers


def test_existing_output_is_not_overwritten(cli_fails: CliFails, images: dict[str, Path], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exists.png"
    out.write_bytes(b"precious")
    cli_fails(["upscale", str(images["rgb8"]), str(out), "--checkpoint", str(checkpoint), "--steps", "1"], "exists.png", "--overwrite")
    cli_fails(["degrade", str(images["rgb8"]), str(out)], "exists.png", "--overwrite")
    assert out.read_bytes() == b"precious"
    assert main(["degrade", str(images["rgb8"]), str(out), "--overwrite"]) == 0
    assert read_image(out)[0].shape == (3, 24, 32)


def test_evaluate_writes_metrics_and_report(images: dict[str, Path], checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--hr", str(images["rgb8"]), str(images["jpg"]), "--out", str(out), "--steps", "2", "--tile", "32", "--overlap", "8"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["scale"] == 2
    for method in ("diffsr", "bicubic"):
        assert set(m["methods"][method]) == {"psnr", "ssim", "consistency_psnr"}
    assert len(m["files"]) == 2 and m["files"][0]["file"].endswith("rgb8.png")
    assert np.isclose(m["methods"]["bicubic"]["psnr"], np.mean([f["bicubic"]["psnr"] for f in m["files"]]))
    # the final projection: diffsr explains its input far better than bicubic does
    assert m["methods"]["diffsr"]["consistency_psnr"] > m["methods"]["bicubic"]["consistency_psnr"] + 10
    html = (out / "report.html").read_text()
    assert "bicubic" in html and "crops/000_diffsr.png" in html
    assert (out / "crops" / "001_truth.png").is_file()


def test_bench_reports_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--size", "32", "32", "--steps", "2", "--repeats", "1", "--channels", "1"]) == 0
    r = json.loads(capsys.readouterr().out)
    for k in ("network_forward_ms", "engine_step_ms", "monai_step_ms", "engine_over_forward", "engine_over_monai"):
        assert r[k] > 0
