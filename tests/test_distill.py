"""One-step distillation (:mod:`toolkit.distill`, ``diffsr distill``) of a tiny trained teacher.

The student starts as the teacher's EMA weights exactly; distillation lowers its loss on fixed
batches; its checkpoint is ordinary, loads with ``load_model`` and upscales in one network call;
the one-step sampler returns the student's ``x0`` prediction exactly; the teacher file is only read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from domains.base import InputError
from domains.images.data import ImageDataModule
from pipelines.cli import main
from pipelines.distill import run_distill
from toolkit.checkpoint import load_model, read_checkpoint
from toolkit.distill import DistillSR
from toolkit.engine import sample_sr
from toolkit.guidance import classifier_free
from toolkit.utils import upsample

ROOT = Path(__file__).resolve().parents[1]
NATURAL = ROOT / "data" / "natural"
TINY_NET = [
    "--model.init_args.denoiser.init_args.num_channels=[8, 16]",
    "--model.init_args.denoiser.init_args.attention_levels=[false, false]",
    "--model.init_args.denoiser.init_args.norm_num_groups=8",
    "--model.init_args.denoiser.init_args.num_head_channels=8",
]
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.accelerator", "cpu"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny x2 SR3 image model trained 20 steps on the natural photos (DDIM, 3 steps)."""
    tmp = tmp_path_factory.mktemp("teacher")
    os.chdir(tmp)
    main([
        "fit", "--config", str(ROOT / "configs" / "images" / "sr3_x2.yaml"), "--trainer.default_root_dir", str(tmp),
        "--trainer.max_steps", "20", "--trainer.max_time", "null", *QUIET,
        "--data.init_args.train", str(NATURAL / "train"), "--data.init_args.val", "null",
        "--data.init_args.batch_size", "4", "--data.init_args.crop_size", "32", "--data.init_args.samples_per_epoch", "400",
        "--model.init_args.sampling.steps", "3", "--model.init_args.sampling.samples", "1", *TINY_NET,
    ])
    return tmp / "last.ckpt"


def _data() -> ImageDataModule:
    dm = ImageDataModule(train=str(NATURAL / "train"), val=None, channels=3, crop_size=32, batch_size=2, samples_per_epoch=40, multiple=4)
    dm.setup("fit")
    return dm


def _loss(module: DistillSR, batches: list[dict[str, torch.Tensor]]) -> float:
    with torch.no_grad():
        return sum(float(module.distillation_loss(*module._pair(b), torch.Generator().manual_seed(i)))
                   for i, b in enumerate(batches)) / len(batches)


def test_student_starts_as_teacher_and_distillation_lowers_its_loss(teacher: Path, tmp_path: Path) -> None:
    before_hash = _sha(teacher)
    pl.seed_everything(0)
    module = DistillSR(str(teacher), lr=1e-3, warmup_steps=1)
    ema = {k[4:]: v for k, v in read_checkpoint(teacher)["state_dict"].items() if k.startswith("ema.")}
    for name, state in (("denoiser", module.denoiser), ("teacher", module.teacher)):
        got = state.state_dict()
        assert all(torch.equal(got[k], ema[k]) for k in ema), name
    assert module.teacher_steps == 3 and module.options.steps == 1
    dm = _data()
    batches = [next(iter(dm.train_dataloader())) for _ in range(3)]
    start = _loss(module, batches)
    trainer = pl.Trainer(max_steps=30, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", default_root_dir=str(tmp_path), limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    after = _loss(module, batches)
    assert after < 0.9 * start, (start, after)
    assert all(not p.requires_grad for p in module.teacher.parameters())
    assert all(torch.equal(module.teacher.state_dict()[k], ema[k]) for k in ema)  # the teacher stays frozen
    out = tmp_path / "student.ckpt"
    trainer.save_checkpoint(str(out))
    assert _sha(teacher) == before_hash
    ckpt = read_checkpoint(out)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    spec = ckpt["diffsr"]
    assert spec["distilled_from"] == {"teacher": str(teacher), "teacher_steps": 3, "student_steps": 1}
    assert spec["sampler"]["steps"] == 1 and spec["sampler"]["t_start"] is None and spec["sampler"]["samples"] == 1
    assert "adapted_from" not in spec
    # (b) an ordinary checkpoint: it loads and upscales in one network call
    model = load_model(out)
    calls = []
    y = torch.rand(1, 3, 8, 12)
    x = model.upscale(y, torch.Generator().manual_seed(0), callback=lambda i, z, x0: calls.append(i))
    assert x.shape == (1, 3, 16, 24) and torch.isfinite(x).all()
    assert len(calls) == 1


def test_one_step_sampling_returns_the_x0_prediction_exactly(teacher: Path) -> None:
    """(c) The engine's 1-step schedule goes from T - 1 to the clean state; DDIM eta 0 returns x0_hat."""
    module = DistillSR(str(teacher)).eval()
    opts = module.options.updated(consistency="none")
    y = torch.randn(2, 3, 8, 12)
    hr = (16, 24)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn((2, *module.space.state_shape(3, hr)), generator=torch.Generator().manual_seed(3))
    out = sample_sr(module.ema, module.process, module.space, module.operator, y, opts, g)
    y_state = module.space.encode(upsample(y, hr), y) if module.process.conditional else None
    z_T = module.process.prior(noise, y_state)
    t = torch.full((2,), float(module.process.timesteps - 1))
    with torch.no_grad():
        x0, _ = classifier_free(module.ema, module.process, module.space.condition(y, hr), 1.0)(z_T, t)
    assert torch.equal(out, module.space.decode(x0, y, hr))
    # and the teacher's deterministic sampler from the same start state is reproducible (the shared first draw)
    x_teacher = sample_sr(module.teacher, module.process, module.space, module.operator, y, module.teacher_sampling,
                          torch.Generator().manual_seed(3))
    again = sample_sr(module.teacher, module.process, module.space, module.operator, y, module.teacher_sampling,
                      torch.Generator().manual_seed(3))
    assert torch.equal(x_teacher, again)


def test_run_distill_end_to_end(teacher: Path, tmp_path: Path) -> None:
    before_hash = _sha(teacher)
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  class_path: domains.images.data.ImageDataModule\n  init_args:\n"
        f"    train: {NATURAL / 'train'}\n    val: null\n    channels: 3\n    crop_size: 32\n    batch_size: 2\n"
        "    samples_per_epoch: 40\n"
    )
    out = run_distill(teacher, [config], tmp_path / "run", max_steps=3, teacher_steps=2, student_steps=2,
                      extra=["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"])
    assert out == tmp_path / "run" / "last.ckpt" and out.is_file()
    spec = read_checkpoint(out)["diffsr"]
    assert spec["distilled_from"] == {"teacher": str(teacher), "teacher_steps": 2, "student_steps": 2}
    assert spec["sampler"]["steps"] == 2
    assert _sha(teacher) == before_hash
    with pytest.raises(FileExistsError):
        run_distill(teacher, [config], tmp_path / "run", max_steps=1)
    with pytest.raises(InputError, match="replace its teacher"):
        run_distill(teacher, [config], teacher.parent, max_steps=1, overwrite=True)


@pytest.mark.parametrize("kind", ["gaussian", "resshift"])
def test_one_step_ddim_to_the_clean_state_outputs_x0(kind: str) -> None:
    """(c) for both processes a student can be distilled from: the 1-step schedule ends at the clean
    state and the deterministic step onto it returns ``x0_hat`` bit for bit."""
    from toolkit.process import process_from_spec

    process = process_from_spec({"type": kind})
    schedule = process.sampling_schedule(1)
    assert schedule.t == (float(process.timesteps - 1),)
    stepper = process.stepper("ddim", 0.0, schedule)
    g = torch.Generator().manual_seed(0)
    z, x0, eps = (torch.randn(2, 3, 6, 10, generator=g) for _ in range(3))
    assert not stepper.needs_noise(0)
    assert torch.equal(stepper.step(z, x0, eps, 0, None, []), x0)
