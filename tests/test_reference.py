"""Reference-guided SR (issue 14.3): grid checks and alignment, the conditioned model, pansharpening, CLI end to end.

The config smoke test of ``configs/satellite/pan_guided_x2.yaml`` lives here (``test_pan_guided_cli``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from domains.base import InputError
from domains.satellite.io import RasterMeta, RasterReader
from domains.satellite.operators import SensorMTFDownsample
from domains.satellite.reference import (
    brovey,
    brovey_weights,
    cubic_shift_resample,
    gram_schmidt,
    grid_offset,
    load_reference,
)
from toolkit.checkpoint import CheckpointError, load_model, read_checkpoint
from toolkit.denoiser import UNetDenoiser
from toolkit.lightning import DiffusionSR
from toolkit.normalization import Normalization
from toolkit.spaces import ResidualSpace, WaveletSpace

ROOT = Path(__file__).resolve().parents[1]
MS = ROOT / "data" / "satellite" / "landsat8_ms_30m_7band_scene.tif"
PAN = ROOT / "data" / "satellite" / "landsat8_pan_15m_scene.tif"
TINY: dict[str, Any] = dict(num_channels=(8, 16), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8)


def _write(path: Path, data: np.ndarray, transform: object, crs: str | None = "EPSG:32616", descriptions: tuple | None = None) -> Path:
    import rasterio

    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=c, dtype=data.dtype, crs=crs, transform=transform) as ds:
        ds.write(data)
        for k, d in enumerate(descriptions or ()):
            ds.set_band_description(k + 1, d)
    return path


def _meta(path: Path) -> RasterMeta:
    with RasterReader(path) as r:
        return r.meta


def _ramp(h: int, w: int, x0: float, y0: float, px: float) -> np.ndarray:
    """A linear function of the CRS coordinates sampled at pixel centres of a grid (origin ``x0, y0``, pixel ``px``)."""
    xs = x0 + px * (np.arange(w) + 0.5)
    ys = y0 - px * (np.arange(h) + 0.5)
    return (3.0 * xs[None, :] - 2.0 * ys[:, None] + 1000.0)[None]


# --- geometry ----------------------------------------------------------------------------------------------
@pytest.fixture
def usgs_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A 30 m 2-band raster and a 15 m 'pan' whose grid sits half a pan pixel up-left (USGS), holding a linear ramp."""
    from affine import Affine

    ms = np.ones((2, 8, 10), dtype=np.float32) * 100
    ms_path = _write(tmp_path / "ms.tif", ms, Affine(30, 0, 1000, 0, -30, 5000), descriptions=("B3", "B4"))
    x0, y0 = 1000 - 7.5, 5000 + 7.5
    pan = _ramp(17, 21, x0, y0, 15.0).astype(np.float32)
    pan_path = _write(tmp_path / "pan.tif", pan, Affine(15, 0, x0, 0, -15, y0))
    return ms_path, pan_path


def test_usgs_half_pixel_offset_is_measured_and_resampled_away(usgs_pair: tuple[Path, Path]) -> None:
    ms_path, pan_path = usgs_pair
    grid = _meta(ms_path).rescaled((2, 2))  # the exact 2x grid of the 30 m footprint
    assert grid_offset(_meta(pan_path), grid) == pytest.approx((0.5, 0.5), abs=1e-9)
    ref, valid = load_reference(pan_path, grid)
    assert ref.shape == (1, 16, 20) and valid.all()
    truth = _ramp(16, 20, 1000, 5000, 15.0)
    # cubic convolution reproduces a linear function exactly where all four taps are inside the pan
    np.testing.assert_allclose(ref[:, 1:-1, 1:-1], truth[:, 1:-1, 1:-1], rtol=0, atol=1e-2)
    # the last column's centres lie half a pan pixel beyond the pan's last centre: edge taps, not refused
    assert np.abs(ref - truth).max() < 25


def test_whole_pixel_offsets_are_a_plain_crop() -> None:
    data = np.random.default_rng(0).normal(size=(2, 9, 11))
    np.testing.assert_array_equal(cubic_shift_resample(data, (2.0, 3.0), (5, 6)), data[:, 2:7, 3:9])
    half = cubic_shift_resample(data, (0.5, 0.0), (4, 11))
    w = np.array([-1, 9, 9, -1]) / 16  # Keys (a = -0.5) at a half-pixel shift
    np.testing.assert_allclose(half[:, 1, :], np.tensordot(w, data[:, 0:4, :], axes=(0, 1)), atol=1e-12)


def test_wald_reference_is_the_operator_of_the_aligned_pan_and_windows_agree(usgs_pair: tuple[Path, Path]) -> None:
    ms_path, pan_path = usgs_pair
    op = SensorMTFDownsample(2, 0.3)
    whole, _ = load_reference(pan_path, _meta(ms_path), operator=op)
    fine, _ = load_reference(pan_path, _meta(ms_path).rescaled((2, 2)))
    np.testing.assert_allclose(whole, op.A(torch.from_numpy(fine).double()[None])[0].numpy(), atol=1e-3)
    # a window of the target gets what the whole target gets there (the operator's context is read)
    from affine import Affine

    m = _meta(ms_path)
    window = m.resized(4, 5, m.transform @ Affine.translation(3, 2))
    part, _ = load_reference(pan_path, window, operator=op)
    np.testing.assert_allclose(part, whole[:, 2:6, 3:8], atol=1e-3)


def test_a_reference_on_the_wrong_grid_is_refused(tmp_path: Path, usgs_pair: tuple[Path, Path]) -> None:
    from affine import Affine

    ms_path, _ = usgs_pair
    grid = _meta(ms_path).rescaled((2, 2))
    pan = np.ones((1, 16, 20), dtype=np.float32)
    cases = {
        "other_crs.tif": (Affine(15, 0, 1000, 0, -15, 5000), "EPSG:32617", "reproject"),
        "coarse.tif": (Affine(30, 0, 1000, 0, -30, 5000), "EPSG:32616", "15 x 15"),
        "shifted.tif": (Affine(15, 0, 1100, 0, -15, 5000), "EPSG:32616", "does not hold"),
        "rotated.tif": (Affine(15, 1, 1000, 1, -15, 5000), "EPSG:32616", "rotated"),
    }
    for name, (transform, crs, words) in cases.items():
        path = _write(tmp_path / name, pan, transform, crs)
        with pytest.raises(InputError, match=words) as err:
            load_reference(path, grid)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="1 band"):
        load_reference(_write(tmp_path / "ok.tif", pan, Affine(15, 0, 1000, 0, -15, 5000)), grid, channels=2)


def test_the_shipped_pan_sits_half_a_pixel_up_left() -> None:
    """The shipped pan's offset from the 2x grid of the 30 m scene is USGS's half pan pixel on both axes."""
    assert grid_offset(_meta(PAN), _meta(MS).rescaled((2, 2))) == pytest.approx((0.5, 0.5), abs=1e-9)


# --- classical pansharpening -----------------------------------------------------------------------------
def test_brovey_and_gram_schmidt_closed_forms() -> None:
    g = torch.Generator().manual_seed(0)
    ms = 100 + 10 * torch.rand(2, 4, 6, 7, generator=g, dtype=torch.float64)
    w = [0.0, 1.0, 1.0, 0.2]
    wn = torch.tensor(w, dtype=torch.float64).reshape(1, -1, 1, 1) / sum(w)
    pseudo = (ms * wn).sum(1, keepdim=True)
    # the pan equal to the pseudo-pan changes nothing; Brovey's pseudo-pan of the output is the pan
    torch.testing.assert_close(brovey(ms, pseudo, w), ms)
    pan = pseudo * (1 + 0.1 * torch.rand(pseudo.shape, generator=g, dtype=torch.float64))
    torch.testing.assert_close((brovey(ms, pan, w) * wn).sum(1, keepdim=True), pan)
    torch.testing.assert_close(gram_schmidt(ms, pseudo, w), ms)
    # GS: the output's simulated pan is the pan matched to the intensity's mean and std (sum_k w_k g_k = 1)
    out = gram_schmidt(ms, pan, w)
    i_out = (out * wn).sum(1, keepdim=True)
    pc = pan - pan.mean(dim=(2, 3), keepdim=True)
    matched = pc * pseudo.std(dim=(2, 3), keepdim=True) / pc.std(dim=(2, 3), keepdim=True) + pseudo.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(i_out, matched)
    assert brovey_weights(["B1", "B2", "B3", "B4", "B5"]) == [0.0, 0.2, 1.0, 1.0, 0.0]
    assert brovey_weights([None, None]) == [1.0, 1.0]


# --- the conditioned model -----------------------------------------------------------------------------------
def _model(reference_channels: int, space: object | None = None, channels: int = 3) -> DiffusionSR:
    return DiffusionSR(
        UNetDenoiser(2, channels, **TINY), SensorMTFDownsample(2, 0.3), space or ResidualSpace(0.25),  # type: ignore[arg-type]
        reference_channels=reference_channels, reference_normalization=Normalization([1.0, 2.0], [2.0, 4.0]),
        cond_drop_prob=0.0,
    )


def test_reference_channels_widen_the_condition() -> None:
    assert _model(0).denoiser.cond_channels == 3
    assert _model(2).denoiser.cond_channels == 5
    assert _model(2, WaveletSpace("haar", 1, "residual")).denoiser.cond_channels == 3 * 4 + 2 * 4
    with pytest.raises(ValueError, match="prior"):
        DiffusionSR(UNetDenoiser(2, 3, **TINY), prior=True, reference_channels=1)


def test_the_network_sees_the_normalised_reference() -> None:
    torch.manual_seed(0)
    m = _model(2)
    with torch.no_grad():  # MONAI zero-initialises the output: give the network a voice
        for p in m.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hr = torch.rand(2, 3, 16, 16)
    ref = torch.rand(2, 2, 16, 16)
    x, y = m._pair({"hr": hr})
    ref_n = m._reference({"hr": hr, "ref": ref}, hr.shape[2:])
    assert ref_n is not None
    torch.testing.assert_close(ref_n, (ref - torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1)) / torch.tensor([2.0, 4.0]).reshape(1, 2, 1, 1))
    cond = m._condition(y, ref_n, hr.shape[2:])
    assert cond.shape == (2, 5, 16, 16)
    z, t = torch.randn(2, 3, 16, 16), torch.full((2,), 300.0)
    out_a = m.denoiser(z, t, cond)
    out_b = m.denoiser(z, t, m._condition(y, ref_n.flip(-1), hr.shape[2:]))
    assert not torch.allclose(out_a, out_b)  # the reference reaches the network
    dropped = m.denoiser(z, t, cond, torch.tensor([True, True]))
    torch.testing.assert_close(dropped, m.denoiser(z, t, None))  # condition dropout drops the reference too
    assert torch.isfinite(m.training_step({"hr": hr, "ref": ref}, 0))
    with pytest.raises(ValueError, match="'ref'"):
        m.training_step({"hr": hr}, 0)
    with pytest.raises(ValueError, match="output grid"):
        m.training_step({"hr": hr, "ref": ref[..., :8]}, 0)
    spec = m.inference_spec()
    assert spec["reference"] == {"channels": 2, "normalization": {"offset": [1.0, 2.0], "scale": [2.0, 4.0]}}
    assert "reference" not in _model(0).inference_spec()


def test_checkpoint_round_trip_and_tampered_reference(tmp_path: Path) -> None:
    m = _model(1)
    m.reference_normalization = Normalization(5.0, 3.0)
    path = tmp_path / "guided.ckpt"
    torch.save({"diffsr": m.inference_spec(), "state_dict": m.state_dict()}, path)
    loaded = load_model(path)
    ref_norm = loaded.reference_normalization
    assert loaded.reference_channels == 1 and ref_norm is not None and ref_norm.spec() == {"offset": [5.0], "scale": [3.0]}
    y = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="needs a reference"):
        loaded.upscale_with_uncertainty(y, torch.Generator().manual_seed(0))
    for bad in ({"channels": 0}, {"channels": 1, "normalization": {"scale": [0.0]}}, "pan", {"channels": 1, "normalization": {"offset": [1, 2, 3]}}):
        spec = {**m.inference_spec(), "reference": bad}
        torch.save({"diffsr": spec, "state_dict": m.state_dict()}, path)
        with pytest.raises(CheckpointError, match="reference"):
            read_checkpoint(path)


# --- MRI: the synthetic contrast pair -----------------------------------------------------------------------
def test_mri_synthetic_pair_trains_and_evaluates_with_the_t1(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from domains.mri.reference import ContrastPairSliceDataModule, evaluate_planes, synthetic_t2
    from toolkit.operators import SliceAverage

    u = np.linspace(0, 1, 11)[None, None]
    t1 = np.concatenate([np.zeros((1, 1, 5)), u, np.ones((1, 1, 4))], axis=2).repeat(4, 0).repeat(4, 1) * 1000
    t2 = synthetic_t2(t1)
    assert t2.argmax() != t1.argmax() and t2[0, 0, 0] < t2.max()  # non-monotone: background and white matter dark

    dm = ContrastPairSliceDataModule(
        str(ROOT / "data" / "mri" / "mni152_09a_t1_crop64.nii.gz"), crop_size=(16, 16), batch_size=2, samples_per_epoch=2,
        val_planes=1, val_range=(0.5, 0.6),
    )
    dm.setup("fit")
    item = dm.train_set[0]  # type: ignore[index]
    assert item["hr"].shape == item["ref"].shape == (1, 16, 16)
    model = DiffusionSR(UNetDenoiser(2, 1, **TINY), SliceAverage(4, axis=-1, spatial_dims=2), ResidualSpace(0.25), reference_channels=1)
    model.options = model.options.updated(steps=2, samples=1)
    trainer = pl.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    path = tmp_path / "mri.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_model(path)
    assert loaded.reference_channels == 1
    planes = dm.held_back_planes()
    report = evaluate_planes(loaded, planes)
    assert set(report["methods"]) == {"diffsr", "bicubic", "bicubic_projected"}
    assert report["methods"]["diffsr"]["consistency_psnr"] > 60  # the final projection
    with pytest.raises(ValueError, match="trained without"):
        unguided = dataclasses.replace(loaded, spec={k: v for k, v in loaded.spec.items() if k != "reference"})
        evaluate_planes(unguided, planes)


# --- the command line, end to end (and the config's smoke test) ------------------------------------------
TINY_NET = [
    "--model.init_args.denoiser.init_args.num_channels=[8, 16]",
    "--model.init_args.denoiser.init_args.attention_levels=[false, false]",
    "--model.init_args.denoiser.init_args.norm_num_groups=8",
    "--model.init_args.denoiser.init_args.num_head_channels=8",
]


def test_pan_guided_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``configs/satellite/pan_guided_x2.yaml`` through ``diffsr fit``, then ``upscale`` and ``evaluate`` with ``--reference``."""
    from domains.satellite.io import crop_raster
    from pipelines.cli import main

    monkeypatch.chdir(ROOT)  # the config names data/ relative to the repository
    main([
        "fit", "--config", str(ROOT / "configs" / "satellite" / "pan_guided_x2.yaml"), "--trainer.fast_dev_run", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
        "--model.init_args.sampling.steps", "2", "--model.init_args.sampling.samples", "1",
        "--data.init_args.crop_size", "32", "--data.init_args.val_crop_size", "32", "--data.init_args.batch_size", "2",
        "--data.init_args.samples_per_epoch", "4", *TINY_NET,
    ])  # fmt: skip
    ckpt = tmp_path / "last.ckpt"
    model = load_model(ckpt)
    assert model.reference_channels == 1 and model.options.steps == 2
    ms = crop_raster(MS, tmp_path / "ms.tif", (slice(100, 124), slice(200, 232)))
    out = tmp_path / "out.tif"
    run = ["--checkpoint", str(ckpt), "--steps", "2", "--samples", "1"]
    assert main(["upscale", str(ms), str(out), "--reference", str(PAN), *run]) == 0
    meta = _meta(out)
    assert meta.shape == (48, 64) and abs(meta.transform.a - 15) < 1e-9
    capsys.readouterr()
    # refused, one line naming the file: no reference, a reference on the wrong grid (30 m), wrong bands
    for extra, words in (([], "reference-guided"), (["--reference", str(ms)], "band")):
        assert main(["upscale", str(ms), str(tmp_path / "x.tif"), *extra, *run]) == 2
        assert words in capsys.readouterr().err
    pan30 = crop_raster(MS, tmp_path / "b1.tif", (slice(0, 603), slice(0, 627)), bands=[1])
    assert main(["upscale", str(ms), str(tmp_path / "x.tif"), "--reference", str(pan30), *run]) == 2
    err = capsys.readouterr().err
    assert str(pan30) in err and "15 x 15" in err and not (tmp_path / "x.tif").exists()
    # evaluate on a block with the whole pan scene (cropped, aligned and degraded to 30 m)
    block = crop_raster(MS, tmp_path / "block.tif", (slice(452, 484), slice(157, 189)))
    assert main(["evaluate", "--hr", str(block), "--reference", str(PAN), "--out", str(tmp_path / "ev"), *run]) == 0
    import json

    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"diffsr", "bicubic", "bicubic_projected", "brovey", "gram_schmidt"}
    assert all(np.isfinite(v["psnr"]) and "sam_deg" in v and "ergas" in v for v in metrics["methods"].values())
    # a model trained without a reference refuses one
    from pipelines.api import upscale

    unguided = dataclasses.replace(model, spec={k: v for k, v in model.spec.items() if k != "reference"})
    with pytest.raises(InputError, match="trained without a reference"):
        upscale(ms, tmp_path / "y.tif", None, model=unguided, reference=PAN, steps=2, samples=1, progress=False)  # type: ignore[arg-type]


def test_adaptation_hook_gets_the_whole_input(tmp_path: Path) -> None:
    """upscale_raster's in-memory path hands the whole input (data units) to ``adapt`` and samples the model it returns."""
    from domains.satellite.io import crop_raster
    from domains.satellite.pipeline import upscale_raster
    from toolkit.checkpoint import SRModel
    from toolkit.engine import SamplerOptions
    from toolkit.process import GaussianProcess

    den = UNetDenoiser(2, 7, **TINY)
    options = SamplerOptions(steps=1, samples=1)
    model = SRModel(den, SensorMTFDownsample(2, 0.3), ResidualSpace(0.25), GaussianProcess(parameterization="x0"), Normalization(8000.0, 3000.0), options)
    ms = crop_raster(MS, tmp_path / "ms.tif", (slice(0, 16), slice(0, 24)))
    seen: list[torch.Tensor] = []

    def adapt(m: SRModel, y: torch.Tensor) -> SRModel:
        seen.append(y)
        return m

    upscale_raster(ms, tmp_path / "out.tif", model, adapt=adapt, progress=False)
    assert len(seen) == 1 and seen[0].shape == (1, 7, 16, 24)
    with RasterReader(ms) as r:
        np.testing.assert_array_equal(seen[0][0].numpy(), r.read()[0])
