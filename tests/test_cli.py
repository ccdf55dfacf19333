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
from toolkit.engine import SamplerOptions

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
        "--model.init_args.sampling.steps", "2",
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
    for cmd in (["--help"], *([c, "--help"] for c in ("degrade", "upscale", "evaluate", "adapt", "demo", "bench"))):
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
    assert spec["sampler"]["samples"] == 4 and spec["sampler"]["flip_ensemble"]  # the rest of the config's block
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


# --- configs: one typed sampling block; channels and size multiples linked, not repeated ----------------
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))
#: configs whose fast_dev_run smoke test lives beside the code it exercises (file that runs it)
SMOKE_TESTED_ELSEWHERE = {
    "images/sr3_x2": "test_cli.py",
    "images/autoencoder_x2": "test_latent.py", "images/latent_x2": "test_latent.py",
    "mri/autoencoder_slice": "test_latent.py", "mri/latent_sr2d_slice_x4": "test_latent.py",
    "satellite/autoencoder_x2": "test_latent.py", "satellite/latent_x2": "test_latent.py",
    "faces/autoencoder_128": "test_latent.py", "faces/latent_128": "test_latent.py",
    "images/wavelet_x2": "test_wavelets.py", "mri/wavelet_sr2d_slice_x4": "test_wavelets.py",
    "mri/wavelet_sr3d_slice_x4": "test_wavelets.py", "satellite/wavelet_x2": "test_wavelets.py",
    "faces/wavelet_128": "test_wavelets.py",
    "mri/sr2d_slice_x4": "test_mri_pipeline.py", "mri/sr3d_slice_x4": "test_mri_pipeline.py",
    "satellite/sr_x2": "test_satellite_data.py",
    "faces/restore_128": "test_faces_pipeline.py",
    "satellite/pan_guided_x2": "test_reference.py",
    "satellite/prior_pucallpa": "test_classifier.py", "satellite/classifier_pucallpa": "test_classifier.py",
    "images/resshift_x2": "test_resshift.py", "mri/resshift_sr2d_slice_x4": "test_resshift.py",
    "mri/resshift_sr3d_slice_x4": "test_resshift.py", "satellite/resshift_x2": "test_resshift.py",
    "faces/resshift_128": "test_resshift.py",
    "images/indi_x2": "test_processes.py", "satellite/indi_x2": "test_processes.py",
    "images/cold_x2": "test_processes.py",
}  # fmt: skip
#: the rest, run here: tiny data and network per domain
SMOKE_TESTED_HERE = {
    "mri/sr3d_iso_x2": [
        "--data.init_args.train", str(ROOT / "data" / "mri" / "mni152_09a_t1_crop64.nii.gz"),
        "--data.init_args.val", str(ROOT / "data" / "mri" / "nibabel_someones_anatomy.nii.gz"),
        "--data.init_args.patch_size", "[16, 16, 16]", "--data.init_args.val_patch_size", "[16, 16, 16]",
        "--data.init_args.voxel_sizes", "[2.0]", "--data.init_args.batch_size", "2",
        "--data.init_args.samples_per_epoch", "4", *TINY_NET,
    ],
    "satellite/sr_x4": [
        "--data.init_args.crop_size", "32", "--data.init_args.val_crop_size", "32", "--data.init_args.batch_size", "2",
        "--data.init_args.samples_per_epoch", "4", *TINY_NET,
    ],
    # the zero-shot priors (validation runs them zero-shot with their config's operator)
    "images/prior_128": [
        "--data.init_args.crop_size", "32", "--data.init_args.val_crop_size", "32", "--data.init_args.batch_size", "2",
        "--data.init_args.samples_per_epoch", "4", *TINY_NET,
    ],
    "satellite/pucallpa_x2": [
        "--data.init_args.crop_size", "32", "--data.init_args.val_crop_size", "32", "--data.init_args.batch_size", "2",
        "--data.init_args.samples_per_epoch", "4", *TINY_NET,
    ],
    "satellite/prior_64": [
        "--data.init_args.crop_size", "32", "--data.init_args.val_crop_size", "32", "--data.init_args.batch_size", "2",
        "--data.init_args.samples_per_epoch", "4", *TINY_NET,
    ],
    "mri/prior_3d": [
        "--data.init_args.train", str(ROOT / "data" / "mri" / "mni152_09a_t1_crop64.nii.gz"),
        "--data.init_args.val", str(ROOT / "data" / "mri" / "nibabel_someones_anatomy.nii.gz"),
        "--data.init_args.patch_size", "[16, 16, 16]", "--data.init_args.val_patch_size", "[16, 16, 16]",
        "--data.init_args.voxel_sizes", "[2.0]", "--data.init_args.batch_size", "2",
        "--data.init_args.samples_per_epoch", "4", *TINY_NET,
    ],
    "mri/prior_2d": [
        "--data.init_args.train", str(ROOT / "data" / "mri" / "mni152_09a_t1_crop64.nii.gz"),
        "--data.init_args.val", str(ROOT / "data" / "mri" / "nibabel_someones_anatomy.nii.gz"),
        "--data.init_args.patch_size", "[16, 3, 16]", "--data.init_args.val_patch_size", "[16, 3, 16]",
        "--data.init_args.voxel_sizes", "[2.0]", "--data.init_args.batch_size", "2",
        "--data.init_args.samples_per_epoch", "4", *TINY_NET,
    ],
    "faces/prior_128": [
        "--data.init_args.root", str(ROOT / "data" / "faces" / "congress_portraits"), "--data.init_args.size", "32",
        "--data.init_args.val_count", "4", "--data.init_args.val_samples", "2", "--data.init_args.batch_size", "2",
        "--data.init_args.samples_per_epoch", "4", *TINY_NET,
    ],
}  # fmt: skip


def _name(config: Path) -> str:
    return f"{config.parent.name}/{config.stem}"


def _build(args: list[str]):  # type: ignore[no-untyped-def]
    """The LightningCLI of ``args`` built, not run (model and datamodule instantiated, links applied)."""
    from pipelines.cli import lightning_main

    return lightning_main([*args, "--trainer.logger=false"], run=False)


def test_every_config_is_smoke_tested() -> None:
    names = {_name(c) for c in CONFIGS}
    assert names == set(SMOKE_TESTED_ELSEWHERE) | set(SMOKE_TESTED_HERE), "add the new config to a fast_dev_run test"
    for name, test in SMOKE_TESTED_ELSEWHERE.items():
        assert Path(name).name in (ROOT / "tests" / test).read_text() or "wavelet_" in name, (name, test)


@pytest.mark.parametrize("name", sorted(SMOKE_TESTED_HERE))
def test_config_fast_dev_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the configs name data/ relative to the repository
    main([
        "fit", "--config", str(ROOT / "configs" / f"{name}.yaml"), "--trainer.fast_dev_run", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
        "--model.init_args.sampling.steps", "2", "--model.init_args.sampling.samples", "1",
        *SMOKE_TESTED_HERE[name],
    ])  # fmt: skip
    assert load_model(tmp_path / "last.ckpt").options.steps == 2


@pytest.mark.parametrize("config", CONFIGS, ids=[_name(c) for c in CONFIGS])
def test_configs_write_nothing_twice(config: Path) -> None:
    """No config repeats a linked value or flattens the sampling options."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert "multiple" not in data
    assert "channels" not in model and "channels" not in model.get("denoiser", {}).get("init_args", {})
    assert not {"sampler", "sampling_steps", "samples", "t_start", "consistency"} & set(model)
    if cfg["model"]["class_path"] == "toolkit.lightning.DiffusionSR":
        assert set(model["sampling"]) <= {f for f in SamplerOptions.__dataclass_fields__}


def test_print_config_shows_the_sampling_block(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(CONFIG), "--model.init_args.sampling.steps", "7", "--print_config"])
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["sampling"] == {
        "sampler": "ddim", "steps": 7, "eta": 0.0, "guidance_scale": 1.0, "consistency": "final",
        "t_start": 200, "start": "regression", "samples": 4, "flip_ensemble": True, "zero_shot": None,
    }  # fmt: skip


def test_channels_flow_from_data_and_multiple_from_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Channels given on the data side only size the network; the datamodule gets the model's multiple."""
    monkeypatch.chdir(ROOT)
    wavelet = str(ROOT / "configs" / "images" / "wavelet_x2.yaml")
    cli = _build(["--config", wavelet, "--data.init_args.channels", "1"])
    den = cli.model.denoiser
    assert den.channels == 1 and den.state_channels == cli.model.space.state_channels(1, 2) == 3  # high subbands
    assert isinstance(cli.model.options, SamplerOptions) and cli.model.options.steps == 20
    # UNet [16, 32, 64]: 4, times the wavelet's stride 2 (the x2 scale divides it)
    assert cli.datamodule.multiple == 8 == 2 ** (len(den.config["num_channels"]) - 1) * cli.model.space.stride
    cli = _build(["--config", wavelet, *TINY_NET])
    assert cli.model.denoiser.channels == 3 and cli.datamodule.multiple == 4  # 2 levels: 2 x stride 2
    # satellite: the band selection sets the channels; x4 makes the multiple lcm(4, 4)
    sat = ROOT / "configs" / "satellite"
    cli = _build(["--config", str(sat / "sr_x2.yaml"), "--data.init_args.bands=[2, 3, 4]"])
    assert cli.model.denoiser.channels == 3 and cli.datamodule.multiple == 4
    cli = _build(["--config", str(sat / "sr_x4.yaml")])
    assert cli.model.denoiser.channels == 7 and cli.datamodule.multiple == 4  # every band of the scene
    cli = _build(["--config", str(sat / "wavelet_x2.yaml"), "--data.init_args.bands=[4]"])
    assert cli.model.denoiser.channels == 1 and cli.datamodule.multiple == 8
    # MRI slice-wise: 2n+1 neighbouring planes are the channels; the thick-slab axis keeps multiple 1
    cli = _build(["--config", str(ROOT / "configs" / "mri" / "sr2d_slice_x4.yaml"), "--data.init_args.slicewise_neighbours", "2"])
    assert cli.model.denoiser.channels == 5 and cli.datamodule.multiple == (4, 1, 4)
    # faces: the face size must suit the model (16 for the wavelet config's 8 x stride 2)
    cli = _build(["--config", str(ROOT / "configs" / "faces" / "wavelet_128.yaml")])
    assert cli.model.denoiser.channels == 3 and cli.datamodule.multiple == 16
    # a stage-1 autoencoder takes the data's channels and gives its stride
    cli = _build(["--config", str(ROOT / "configs" / "satellite" / "autoencoder_x2.yaml"), "--data.init_args.bands=[1, 2]"])
    assert cli.model.config["in_channels"] == 2 and cli.datamodule.multiple == cli.model.stride == 2


def test_linked_values_cannot_be_given(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    for arg, needle in [
        ("--model.init_args.denoiser.init_args.channels=1", "linked from the data"),
        ("--data.init_args.multiple=8", "linked from the model"),
    ]:
        with pytest.raises(SystemExit) as e:
            _build(["--config", str(CONFIG), arg])
        assert e.value.code == 2 and needle in capsys.readouterr().err
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  init_args:\n    denoiser:\n      init_args:\n        channels: 1\n")
    with pytest.raises(SystemExit):
        _build(["--config", str(CONFIG), "--config", str(extra)])
    assert "extra.yaml" in capsys.readouterr().err
    # a crop the model cannot take is refused when the datamodule is built
    with pytest.raises(ValueError, match="multiple of 8"):
        _build(["--config", str(ROOT / "configs" / "images" / "wavelet_x2.yaml"), "--data.init_args.crop_size", "36"])
