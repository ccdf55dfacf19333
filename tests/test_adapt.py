"""Domain adaptation (``diffsr adapt``, :mod:`toolkit.adapt`) on the shipped photos and MRI volumes.

A tiny source model is trained on the natural photos for a few steps; adapting it to the
portraits must lower the loss on the portraits and leave the source file untouched; frozen parts
stay fixed; LoRA starts as the source exactly and saves an ordinary checkpoint; HR-free pairs are
made by the model's operator; SMORE learns from a thick-slice scan itself; test-time adaptation
is seeded and leaves the loaded model as it was.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import pytest
import torch

from domains.images.data import ImageDataModule
from domains.mri.data import smore_arrangements
from pipelines.cli import main
from toolkit.adapt import AdaptSR, LowRank, adapt_to_input, add_lora, freeze_parts, merged
from toolkit.checkpoint import load_model, read_checkpoint
from toolkit.denoiser import UNetDenoiser
from toolkit.normalization import Normalization

if TYPE_CHECKING:
    from conftest import CliFails

ROOT = Path(__file__).resolve().parents[1]
NATURAL = ROOT / "data" / "natural"
PORTRAITS = ROOT / "data" / "portraits"
MRI = ROOT / "data" / "mri"
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
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny x2 image model trained 30 steps on the natural photos."""
    tmp = tmp_path_factory.mktemp("source")
    os.chdir(tmp)
    main([
        "fit", "--config", str(ROOT / "configs" / "images" / "sr3_x2.yaml"), "--trainer.default_root_dir", str(tmp),
        "--trainer.max_steps", "30", "--trainer.max_time", "null", *QUIET,
        "--data.init_args.train", str(NATURAL / "train"), "--data.init_args.val", "null",
        "--data.init_args.batch_size", "4", "--data.init_args.crop_size", "32", "--data.init_args.samples_per_epoch", "400",
        "--model.init_args.sampling.steps", "2", "--model.init_args.sampling.samples", "1", *TINY_NET,
    ])
    return tmp / "last.ckpt"


def _target() -> ImageDataModule:
    dm = ImageDataModule(train=str(PORTRAITS), val=None, channels=3, crop_size=32, batch_size=4, samples_per_epoch=400, multiple=4)
    dm.setup("fit")
    return dm


def _target_loss(module: AdaptSR, batches: list[dict[str, torch.Tensor]]) -> float:
    """The loss of the module's raw weights on fixed portrait batches, at fixed noise levels (those
    the truncated sampler visits, t <= 400) with fixed noise: what fine-tuning must lower."""
    g = torch.Generator().manual_seed(1)
    losses = []
    with torch.no_grad():
        for b in batches:
            x, y = module._pair(b)
            z0 = module.space.encode(x, y)
            for level in (20, 100, 200, 400):
                t = torch.full((x.shape[0],), level)
                noise = torch.randn(z0.shape, generator=g)
                out = module.denoiser(module.process.q_sample(z0, t, noise), t.float(), module.space.condition(y, x.shape[2:]))
                losses.append(float(torch.nn.functional.mse_loss(out, module.process.target(z0, noise, t))))
    return float(np.mean(losses))


def _fit(module: AdaptSR, steps: int, tmp: Path) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        accelerator="cpu", default_root_dir=str(tmp), limit_val_batches=0,
    )
    trainer.fit(module, datamodule=_target())
    return trainer


def test_adapting_lowers_the_target_loss_and_leaves_the_source_untouched(source: Path, tmp_path: Path) -> None:
    before_hash = _sha(source)
    dm = _target()
    batches = [next(iter(dm.train_dataloader())) for _ in range(4)]
    pl.seed_everything(0)
    module = AdaptSR(str(source), lr=1e-3, warmup_steps=2)
    start = _target_loss(module, batches)
    trainer = _fit(module, 40, tmp_path)
    after = _target_loss(module, batches)
    assert after < 0.95 * start, (start, after)  # measured: 0.0106 -> 0.0095
    # a fresh optimiser and schedule: the adaptation counts its own steps from zero
    assert trainer.global_step == 40
    out = tmp_path / "adapted.ckpt"
    trainer.save_checkpoint(str(out))
    assert _sha(source) == before_hash
    model = load_model(out)  # an ordinary checkpoint
    spec = read_checkpoint(out)["diffsr"]
    assert spec["adapted_from"]["source"] == str(source) and spec["adapted_from"]["freeze"] == "none"
    assert spec["scale"] == [2, 2] and model.channels == 3


def test_freeze_modes_train_only_what_they_say(source: Path, tmp_path: Path) -> None:
    for mode in ("encoder", "all-but-norm"):
        pl.seed_everything(0)
        module = AdaptSR(str(source), freeze=mode, lr=1e-3, warmup_steps=1)
        before = {k: v.clone() for k, v in module.denoiser.state_dict().items()}
        _fit(module, 5, tmp_path / mode)
        changed = {k for k, v in module.denoiser.state_dict().items() if not torch.equal(v, before[k])}
        assert changed, mode
        if mode == "encoder":
            assert not any(k.startswith(("net.conv_in", "net.time_embed", "net.down_blocks")) for k in changed)
            assert any(k.startswith(("net.up_blocks", "net.out")) for k in changed)
        else:
            norm_names = {n for n, m in module.denoiser.named_modules() if isinstance(m, torch.nn.GroupNorm)}
            assert all(k.rsplit(".", 1)[0] in norm_names for k in changed), sorted(changed)[:3]
    with pytest.raises(ValueError, match="freeze"):
        freeze_parts(UNetDenoiser(2, 1, num_channels=(8, 16), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8), "decoder")  # type: ignore[arg-type]


def test_lora_starts_as_the_source_and_saves_an_ordinary_checkpoint(source: Path, tmp_path: Path) -> None:
    plain = AdaptSR(str(source))
    module = AdaptSR(str(source), lora_rank=2, lr=1e-3, warmup_steps=1)
    z, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10.0, 500.0])
    cond = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(module.denoiser(z, t, cond), plain.denoiser(z, t, cond))  # B = 0: exactly the source
    total, trainable = module.trainable[1], module.trainable[0]
    assert 0 < trainable < total / 3  # adapters only
    _fit(module, 5, tmp_path)
    with torch.no_grad():
        guided = module.denoiser(z, t, cond)
        folded = merged(module.denoiser)(z, t, cond)
    torch.testing.assert_close(folded, guided, rtol=1e-5, atol=1e-5)
    assert not torch.equal(guided, plain.denoiser(z, t, cond))
    out = tmp_path / "lora.ckpt"
    module.trainer.save_checkpoint(str(out))
    state = read_checkpoint(out)["state_dict"]
    source_keys = set(read_checkpoint(source)["state_dict"])
    assert {k for k in state if k.startswith(("denoiser.", "ema."))} == {k for k in source_keys if k.startswith(("denoiser.", "ema."))}
    load_model(out)
    with pytest.raises(ValueError, match="freeze"):
        AdaptSR(str(source), lora_rank=2, freeze="encoder")


def test_lowrank_parametrisation_is_seeded_and_zero_at_start() -> None:
    conv = torch.nn.Conv2d(4, 6, 3)
    a = LowRank(conv.weight.detach(), 2, 2.0, torch.Generator().manual_seed(5))
    b = LowRank(conv.weight.detach(), 2, 2.0, torch.Generator().manual_seed(5))
    assert torch.equal(a.A, b.A) and torch.equal(a(conv.weight), conv.weight)
    lin = torch.nn.Sequential(torch.nn.Linear(5, 3))
    assert add_lora(lin, 1) == 5 + 3  # A (1 x 5) and B (3 x 1)
    with pytest.raises(ValueError, match="rank"):
        add_lora(lin, 0)


def test_normalisation_target_or_source(source: Path) -> None:
    dm = SimpleNamespace(normalization=Normalization(offset=[0.1, 0.2, 0.3], scale=[0.7, 0.6, 0.5]))  # the target's statistics
    for keep, expected in ((False, dm.normalization), (True, load_model(source).normalization)):
        module = AdaptSR(str(source), normalization="source" if keep else "target")
        module._trainer = SimpleNamespace(datamodule=dm)  # type: ignore[assignment]
        module.setup("fit")
        assert module.normalization.spec() == expected.spec()
    assert expected.spec() != dm.normalization.spec()


def test_hr_free_pairs_come_from_the_models_operator(source: Path) -> None:
    module = AdaptSR(str(source), hr_free=True)
    hr = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    other = torch.zeros(2, 3, 8, 8)  # a datamodule's own degradation is ignored
    x, y = module._pair({"hr": hr, "lr": other})
    torch.testing.assert_close(y, module.operator.A(x))
    plain = AdaptSR(str(source))
    assert torch.equal(plain._pair({"hr": hr, "lr": other})[1], plain.normalization.normalize(other))


def test_smore_arrangements_put_an_in_plane_axis_where_the_thick_one_is() -> None:
    v = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2)  # thick axis 2
    a, b = smore_arrangements(v, 2)
    assert a.shape == (5, 2, 6) and b.shape == (6, 2, 5)
    assert a[3, 1, 4] == v[3, 4, 1] and b[4, 1, 3] == v[3, 4, 1]


def test_adapt_cli_smore_on_one_thick_scan_then_upscales_it(tmp_path: Path, cli_fails: CliFails) -> None:
    os.chdir(tmp_path)
    main([
        "fit", "--config", str(ROOT / "configs" / "mri" / "sr2d_slice_x4.yaml"), "--trainer.default_root_dir", str(tmp_path / "src"),
        "--trainer.max_steps", "2", "--trainer.max_time", "null", *QUIET,
        "--data.init_args.train", str(MRI / "mni152_09a_t1_crop64.nii.gz"), "--data.init_args.val", "null",
        "--data.init_args.patch_size", "[16, 1, 16]", "--data.init_args.voxel_sizes", "null", "--data.init_args.slicewise_neighbours", "0",
        "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "4",
        "--model.init_args.sampling.steps", "2", "--model.init_args.sampling.samples", "1", *TINY_NET,
    ])
    src = tmp_path / "src" / "last.ckpt"
    thick = tmp_path / "thick.nii.gz"
    assert main(["degrade", str(MRI / "nibabel_someones_anatomy.nii.gz"), str(thick), "--operator", "slice", "--scale", "1,1,4"]) == 0
    before = _sha(src)
    assert main(["adapt", "--checkpoint", str(src), "--data", str(thick), "--hr-free", "--out", str(tmp_path / "smore"),
                 "--max-steps", "3", "--", *QUIET]) == 0
    adapted = tmp_path / "smore" / "last.ckpt"
    spec = read_checkpoint(adapted)["diffsr"]
    assert spec["adapted_from"]["hr_free"] and spec["domain"]["kind"] == "mri" and _sha(src) == before
    out = tmp_path / "up.nii.gz"
    assert main(["upscale", str(thick), str(out), "--checkpoint", str(adapted)]) == 0
    img, lr = nib.load(str(out)), nib.load(str(thick))
    assert img.shape == (57, 67, 56)
    np.testing.assert_allclose(img.header.get_zooms()[:3], (2.75, 2.75, 2.75), rtol=1e-6)
    np.testing.assert_allclose(img.affine[:3, 3] - lr.affine[:3, 3], img.affine[:3, :3] @ [0, 0, -1.5], atol=1e-5)
    # an isotropic scan has no thick axis to learn from; the output is never the source
    cli_fails(["adapt", "--checkpoint", str(src), "--data", str(MRI / "nibabel_someones_anatomy.nii.gz"), "--hr-free",
               "--out", str(tmp_path / "iso")], "someones_anatomy", "SMORE")
    cli_fails(["adapt", "--checkpoint", str(src), "--data", str(thick), "--out", str(tmp_path / "smore")], "exists", "--overwrite")
    cli_fails(["adapt", "--checkpoint", str(adapted), "--data", str(thick), "--out", str(tmp_path / "smore"), "--overwrite"],
              "replace its source")
    cli_fails(["adapt", "--checkpoint", str(src), "--data", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x")], "missing.yaml")


def test_test_time_adaptation_is_seeded_and_leaves_the_model(source: Path, tmp_path: Path) -> None:
    model = load_model(source)
    weights = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    x = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    a = adapt_to_input(model, x, 4, seed=3)
    b = adapt_to_input(model, x, 4, seed=3)
    for k, v in model.denoiser.state_dict().items():
        assert torch.equal(v, weights[k])
    sa, sb = a.denoiser.state_dict(), b.denoiser.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], weights[k]) for k in sa)
    assert a.spec["adapted_to_input"]["steps"] == 4
    with pytest.raises(ValueError, match="too small"):
        adapt_to_input(model, torch.rand(1, 3, 1, 1), 1)


def test_upscale_adapt_steps_cli(source: Path, tmp_path: Path, cli_fails: CliFails) -> None:
    from domains.images.io import read_image, write_image

    lr = tmp_path / "lr.png"
    write_image(lr, read_image(NATURAL / "holdout" / "skimage_chelsea.png")[0][:, 100:148, 150:214], 8)
    outs = []
    for name, steps in (("a.png", "3"), ("b.png", "3"), ("c.png", "0")):
        assert main(["upscale", str(lr), str(tmp_path / name), "--checkpoint", str(source), "--adapt-steps", steps, "--seed", "1"]) == 0
        outs.append(read_image(tmp_path / name)[0])
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
