"""Latent diffusion (LDM): the stage-1 autoencoder, its checkpoint, the latent state space and its tiling."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from toolkit.autoencoder import (
    AutoencoderCheckpointError,
    AutoencoderModule,
    autoencoder_config,
    load_autoencoder,
    pad_to_multiple,
    reconstruction_psnr,
    scale_factor_from_moments,
    update_moments,
)
from toolkit.checkpoint import load_model
from toolkit.denoiser import UNetDenoiser
from toolkit.engine import SamplerOptions
from toolkit.latent import LatentSpace, tiled_apply
from toolkit.lightning import DiffusionSR
from toolkit.normalization import Normalization
from toolkit.utils import make_generator

ROOT = Path(__file__).resolve().parents[1]
TINY_AE = {"num_channels": [8, 16], "latent_channels": 4, "norm_num_groups": 8}


def _space(kind: str = "kl", spatial_dims: int = 2, channels: int = 3, **kw: object) -> LatentSpace:
    torch.manual_seed(0)
    config = autoencoder_config(kind, spatial_dims, channels, [8, 16], 4, 1, 8)  # type: ignore[arg-type]
    return LatentSpace(autoencoder={"kind": kind, "config": config}, scale_factor=1.7, **kw)  # type: ignore[arg-type]


def _batches(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [{"hr": im} for im in images]


def _trainer(steps: int, **kw: object) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def photos(photo: np.ndarray) -> torch.Tensor:
    """Eight 32x32 crops of a real photo, ``(8, 3, 32, 32)`` in [0, 1]."""
    p = torch.from_numpy(photo)
    return torch.stack([p[:, 30 * i + 20 : 30 * i + 52, 40 * i + 30 : 40 * i + 62] for i in range(8)])


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory, photos: torch.Tensor) -> Path:
    """A tiny stage-1 checkpoint: 3 steps on photo crops, validated on two of them."""
    torch.manual_seed(0)
    module = AutoencoderModule(channels=3, **TINY_AE)  # type: ignore[arg-type]
    trainer = _trainer(3, limit_val_batches=1, val_check_interval=3)
    trainer.fit(module, DataLoader(_batches(photos[:6]), batch_size=2), DataLoader(_batches(photos[6:]), batch_size=2))
    path = tmp_path_factory.mktemp("stage1") / "ae.ckpt"
    trainer.save_checkpoint(path)
    return path


# --- stage 1 ---------------------------------------------------------------------------------------
def test_stage1_checkpoint_description(stage1: Path, photos: torch.Tensor) -> None:
    ae, info = load_autoencoder(stage1)
    assert info["format"] == 1 and info["kind"] == "kl" and info["config"]["latent_channels"] == 4
    assert info["normalization"] == {"offset": [0.5], "scale": [0.5]}
    assert 0 < info["scale_factor"] < 100
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())
    # the logged validation PSNR is the one the comparison function measures on the same images
    measured = reconstruction_psnr(ae, photos[6:8], Normalization(), data_range=1.0)
    assert info["val_psnr"] == pytest.approx(measured, abs=1e-3)
    assert reconstruction_psnr(ae, _batches(photos[6:8].split(1)), Normalization()) == pytest.approx(measured, abs=1e-3)


def test_vq_stage1_in_3d(tmp_path: Path) -> None:
    """A VQ autoencoder on 2-channel volumes trains, saves, and serves as a latent space."""
    g = make_generator(2)
    volumes = torch.rand(4, 2, 8, 12, 10, generator=g)
    module = AutoencoderModule("vq", spatial_dims=3, channels=2, num_embeddings=16, **TINY_AE)  # type: ignore[arg-type]
    trainer = _trainer(2, limit_val_batches=0)
    trainer.fit(module, DataLoader(_batches(volumes), batch_size=2))
    trainer.save_checkpoint(tmp_path / "vq.ckpt")
    _, info = load_autoencoder(tmp_path / "vq.ckpt")
    assert info["kind"] == "vq" and info["config"]["embedding_dim"] == 4 and info["scale_factor"] > 0
    space = LatentSpace(str(tmp_path / "vq.ckpt"))
    with torch.no_grad():
        z = space.encode(volumes[:1, :, :7])
        assert z.shape == (1, 4, 4, 6, 5) and space.decode(z, None, (7, 12, 10)).shape == (1, 2, 7, 12, 10)
    with pytest.raises(ValueError, match="vq.ckpt was trained on 2-channel 3D"):
        space.state_channels(3, 3)


def test_scale_factor_is_inverse_std_of_latents() -> None:
    g = make_generator(0)
    latents = [3.0 * torch.randn(2, 4, 5, 6, generator=g) + 0.5 for _ in range(7)]
    moments = torch.zeros(3, dtype=torch.float64)
    assert scale_factor_from_moments(moments) is None
    for z in latents:
        update_moments(moments, z)
    want = 1 / torch.cat(latents).double().std(unbiased=False)
    assert scale_factor_from_moments(moments) == pytest.approx(float(want), rel=1e-9)


def test_bad_stage1_files(tmp_path: Path, stage1: Path) -> None:
    def fails(path: Path, needle: str) -> None:
        with pytest.raises(AutoencoderCheckpointError) as err:
            load_autoencoder(path)
        assert str(path) in str(err.value) and needle in str(err.value), str(err.value)

    fails(tmp_path / "missing.ckpt", "not found")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    fails(tmp_path / "text.ckpt", "not a readable checkpoint")
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "code.ckpt")  # would need code to unpickle
    fails(tmp_path / "code.ckpt", "not a readable checkpoint")
    torch.save({"diffsr": {"format": 1}, "state_dict": {}}, tmp_path / "diffusion.ckpt")
    fails(tmp_path / "diffusion.ckpt", "diffusion model checkpoint")
    ckpt = torch.load(stage1, weights_only=True)
    ckpt["diffsr_autoencoder"]["format"] = 99
    torch.save(ckpt, tmp_path / "format.ckpt")
    fails(tmp_path / "format.ckpt", "format 99")
    ckpt["diffsr_autoencoder"]["format"] = 1
    ckpt["diffsr_autoencoder"]["config"]["latent_channels"] = 5
    torch.save(ckpt, tmp_path / "mismatch.ckpt")
    fails(tmp_path / "mismatch.ckpt", "weights do not match")
    ckpt["diffsr_autoencoder"]["config"]["latent_channels"] = 4
    ckpt["diffsr_autoencoder"]["scale_factor"] = None
    torch.save(ckpt, tmp_path / "untrained.ckpt")
    with pytest.raises(ValueError, match="no scale_factor"):
        LatentSpace(str(tmp_path / "untrained.ckpt"))
    assert LatentSpace(str(tmp_path / "untrained.ckpt"), scale_factor=0.5).scale_factor == 0.5


# --- the latent space ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "channels", "shape"),
    [("kl", 1, (13, 18)), ("kl", 3, (24, 31)), ("vq", 5, (11, 16)), ("kl", 1, (7, 10, 9)), ("vq", 4, (6, 9, 8))],
)
def test_shapes_and_channels(kind: str, channels: int, shape: tuple[int, ...]) -> None:
    space = _space(kind, len(shape), channels)
    g = make_generator(1)
    x = torch.rand(2, channels, *shape, generator=g) * 2 - 1
    y = torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True) if len(shape) == 2 else x[..., ::2, ::2, ::2]
    grid = tuple(-(-n // 2) for n in shape)
    assert space.stride == 2 and space.linear is False
    assert space.state_channels(channels, len(shape)) == space.cond_channels(channels, len(shape)) == 4
    assert space.state_shape(channels, shape) == (4, *grid)
    with torch.no_grad():
        z = space.encode(x, y)
        assert z.shape == (2, 4, *grid)
        assert space.decode(z, y, shape).shape == x.shape
        assert space.decode(z, y).shape == (2, channels, *(2 * n for n in grid))
        assert space.condition(y, shape).shape == z.shape
        # odd sizes are padded by edge replication before encoding
        assert torch.allclose(z, space.encode(pad_to_multiple(x, 2), y))
        if kind == "vq":  # decoding snaps latents onto the codebook (straight through): a nudge changes nothing
            assert torch.allclose(space.decode(z, y), space.decode(z + 1e-4, y), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="trained on"):
        space.state_channels(channels + 1, len(shape))


def test_frozen_weights_and_checkpoint_round_trip(tmp_path: Path, stage1: Path, photos: torch.Tensor) -> None:
    """A DiffusionSR over the latent space trains (AE untouched), saves, and reloads without the stage-1 file."""
    own = tmp_path / "stage1.ckpt"
    shutil.copy(stage1, own)
    torch.manual_seed(0)
    space = LatentSpace(str(own))
    denoiser = UNetDenoiser(
        2, 3, num_channels=[8, 16], attention_levels=[False, False], norm_num_groups=8, num_head_channels=8
    )
    model = DiffusionSR(denoiser, space=space, sampling=SamplerOptions(steps=2), warmup_steps=1, lr=1e-2)
    assert model.denoiser.state_channels == 4 and model.denoiser.cond_channels == 4
    before = {k: v.clone() for k, v in space.autoencoder.state_dict().items()}
    model.train()
    assert not any(m.training for m in space.autoencoder.modules())
    trainer = _trainer(2, limit_val_batches=0)
    trainer.fit(model, DataLoader(_batches(photos[:4]), batch_size=2))
    after = space.autoencoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in space.autoencoder.parameters())
    assert any(p.grad is not None for p in model.denoiser.parameters())  # the denoiser did train
    ckpt = tmp_path / "latent.ckpt"
    trainer.save_checkpoint(ckpt)
    own.unlink()  # the stage-2 checkpoint carries the autoencoder
    loaded = load_model(ckpt)
    assert isinstance(loaded.space, LatentSpace) and loaded.space.scale_factor == space.scale_factor
    assert loaded.multiple == 4
    y = photos[:1, :, ::2, ::2][..., :8, :12]
    out = loaded.upscale(y, make_generator(5))
    model.eval()
    norm = model.normalization
    ref = norm.denormalize(model.super_resolve(norm.normalize(y), make_generator(5)))
    assert out.shape == (1, 3, 16, 24)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(out, loaded.upscale(y, make_generator(5)))


# --- tiling ------------------------------------------------------------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """RMS and max error of ``a`` relative to the RMS and max of ``b``."""
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()), float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tiled_encode_decode_match_one_pass(photo: np.ndarray, spatial_dims: int) -> None:
    """Tiles blended with trimmed Gaussian weights and image-wide GroupNorm statistics give the one-pass result.

    The autoencoder is convolutional (no attention): an output reaches 5 latent pixels each way
    (measured for this network). Tiles overlap by 16 latent pixels and each tile's weight is zero
    within 8 of its borders inside the input, so every blended value comes from a tile that saw
    its whole receptive field; the GroupNorm layers normalise every tile with the statistics of
    the whole input. The result is then one pass's up to float32 rounding (measured about 1e-6
    of the signal); the bound is 1e-5 (RMS) and 1e-4 (max, anywhere: seams included). Each
    tile normalised with its own statistics instead is off by tens of percent, so the check is
    able to fail.
    """
    p = torch.from_numpy(photo) * 2 - 1
    if spatial_dims == 2:
        x = p[None, :, 60:140, 80:206]  # (1, 3, 80, 126): 3 x 6 tiles
    else:  # (1, 1, 56, 58, 24): 2 x 2 x 1 tiles, from 24 shifted crops of the photo
        x = torch.stack([p[:1, 100 + 2 * k : 156 + 2 * k, 120:178] for k in range(24)], dim=-1)[None]
    one = _space("kl", spatial_dims, x.shape[1])
    tiled = _space("kl", spatial_dims, x.shape[1], tile=48, overlap=32)
    tiled.load_state_dict(one.state_dict())
    with torch.no_grad():
        z = one.encode(x)
        z_t = tiled.encode(x)
        x1 = one.decode(z, None, x.shape[2:])
        x_t = tiled.decode(z, None, x.shape[2:])
        naive = tiled_apply(one.autoencoder.decode, z / one.scale_factor, 24, 16, 1, 2)
    for got, want in ((z_t, z), (x_t, x1)):
        rms, peak = _rel(got, want)
        assert rms < 1e-5 and peak < 1e-4, (rms, peak)
    assert _rel(naive, x1)[0] > 0.1


def test_tile_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of the stride"):
        _space(tile=33)
    with pytest.raises(ValueError, match="overlap"):
        _space(tile=32, overlap=32)
    with pytest.raises(ValueError, match="exactly one"):
        LatentSpace()


# --- configs through the command line ---------------------------------------------------------------
CONFIGS = [
    ("images", "autoencoder_x2", "latent_x2"),
    ("mri", "autoencoder_slice", "latent_sr2d_slice_x4"),
    ("satellite", "autoencoder_x2", "latent_x2"),
    ("faces", "autoencoder_128", "latent_128"),
]


@pytest.mark.parametrize(("domain", "stage1_name", "stage2_name"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_configs_fast_dev_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, domain: str, stage1_name: str, stage2_name: str
) -> None:
    """Each domain's pair of configs: stage 1 writes an autoencoder, stage 2 trains over it and loads back."""
    from pipelines.cli import main

    monkeypatch.chdir(ROOT)  # the configs name data/ relative to the repository
    common = [
        "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
    ]  # fmt: skip
    configs = ROOT / "configs" / domain
    main(
        [
            "fit",
            "--config",
            str(configs / f"{stage1_name}.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path / "ae"),
            *common,
        ]
    )
    ae_path = tmp_path / "ae" / "last.ckpt"
    _, info = load_autoencoder(ae_path)
    assert info["scale_factor"] > 0 and "val_psnr" in info
    main([
        "fit", "--config", str(configs / f"{stage2_name}.yaml"), "--trainer.default_root_dir", str(tmp_path / "ldm"),
        *common, "--model.init_args.sampling.steps", "2",
        "--model.space.init_args.autoencoder_checkpoint", str(ae_path),
    ])  # fmt: skip
    model = load_model(tmp_path / "ldm" / "last.ckpt")
    assert isinstance(model.space, LatentSpace) and model.space.scale_factor == info["scale_factor"]
    assert model.normalization.spec() == info["normalization"]  # both stages saw the same data
    assert model.denoiser.state_channels == info["config"]["latent_channels"]


def test_streamed_upscale_tiles_the_autoencoder(photo: np.ndarray) -> None:
    """``stream_upscale`` with a latent space saved as one pass (tile 0) encodes/decodes in the network's
    tiles for an input larger than one tile, gives one pass's result, and leaves the space as it was."""
    from toolkit.checkpoint import SRModel, upscale_any_size
    from toolkit.operators import AreaDownsample
    from toolkit.process import GaussianProcess
    from toolkit.streaming import stream_upscale
    from toolkit.tiling import Tiling

    space = _space()
    torch.manual_seed(1)
    den = UNetDenoiser(
        2, 3, 4, 4, num_channels=[8, 16], attention_levels=[False, False], norm_num_groups=8, num_head_channels=8
    )
    model = SRModel(den.eval(), AreaDownsample(2), space, GaussianProcess(), Normalization(), SamplerOptions(steps=2))
    y = torch.from_numpy(photo[:, 100:140, 150:198].copy())  # (3, 40, 48) -> output 80 x 96, tiles of 64 px
    tiling = Tiling(32, 8)
    calls: list[int] = []
    encode = space.encode

    def spy(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        calls.append(space.tile)
        return encode(x, y)

    space.encode = spy  # type: ignore[method-assign]
    out = np.full((3, 80, 96), np.nan, np.float32)

    def write(region: tuple[slice, ...], value: np.ndarray) -> None:
        out[(slice(None), *region)] = value

    stream_upscale(model, lambda r: y[(slice(None), *r)].numpy(), (40, 48), write, model.options, seed=2, tiling=tiling)
    assert calls and all(t == 64 for t in calls) and space.tile == 0 and space.overlap == 32
    space.encode = encode  # type: ignore[method-assign]
    ref, _ = upscale_any_size(model, y[None], model.options, make_generator(2), tiling=tiling)
    assert not np.isnan(out).any()
    # the tiled autoencoder equals one pass to float rounding (measured 1.9e-6 here)
    assert np.abs(out - ref[0].numpy()).max() < 1e-4
