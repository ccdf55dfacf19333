"""Training survives and resumes: atomic checkpoint writes, and a SIGKILLed fit resumed to the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.cli import main
from toolkit.callbacks import AtomicCheckpointIO, partial_path

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 8  # 3 batches an epoch: the kill lands mid-epoch or on an epoch's end


def _fit_args(tmp: Path, data: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs" / "images" / "sr3_x2.yaml"),
        "--seed_everything", "7",
        "--trainer.default_root_dir", str(tmp),
        "--trainer.max_steps", str(MAX_STEPS), "--trainer.max_time", "null",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
        "--trainer.callbacks.every_n_train_steps", "2",
        "--data.init_args.train", str(data), "--data.init_args.val", "null",
        "--data.init_args.batch_size", "2", "--data.init_args.crop_size", "16",
        "--data.init_args.samples_per_epoch", "6",
        "--model.init_args.warmup_steps", "3", "--model.init_args.ema_decay", "0.5",
        "--model.init_args.denoiser.init_args.num_channels=[8, 16]",
        "--model.init_args.denoiser.init_args.attention_levels=[false, false]",
        "--model.init_args.denoiser.init_args.norm_num_groups=8",
        "--model.init_args.denoiser.init_args.num_head_channels=8",
        *extra,
    ]  # fmt: skip


def _step(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    except (OSError, RuntimeError, KeyError, EOFError):
        return -1


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 20 + 4 * k, 3), dtype=np.uint8)).save(d / f"p{k}.png")
    return d


def test_killed_fit_resumes_to_the_same_weights(tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(_fit_args(full, photos)) == 0
    # the same fit in a subprocess, SIGKILLed once its checkpoint is at step >= 2
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipelines.cli", *_fit_args(killed, photos)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt, deadline = killed / "last.ckpt", time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and _step(ckpt) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    step = _step(ckpt)
    assert step >= 2, err.decode()[-2000:]
    assert main(_fit_args(killed, photos, ("--ckpt_path", str(ckpt)))) == 0
    a = torch.load(full / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(k.startswith("ema.") for k in a["state_dict"])
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6, msg=f"{k} (resumed from step {step})")
    assert not list(killed.glob(".*.partial"))


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, target)
    before = target.read_bytes()

    def dies_midway(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"step": torch.tensor(2)}, target)
    assert target.read_bytes() == before
    assert not partial_path(target).exists() and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_stale_partial_checkpoint_is_removed_on_the_next_run(tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    partial_path(run / "last.ckpt").write_bytes(b"half")  # what a SIGKILL during a save leaves
    with pytest.warns(UserWarning, match="partial checkpoint"):
        assert main([*_fit_args(run, photos), "--trainer.max_steps", "1"]) == 0
    assert (run / "last.ckpt").is_file() and not list(run.glob(".*.partial"))
