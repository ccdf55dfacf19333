"""Residual shifting (ResShift): the forward marginal, the posterior steps, the oracle end point, checkpoints, configs.

Closed forms: ``q(x_t | x0, y) = N(x0 + eta_t (y - x0), kappa^2 eta_t)``; the posterior
``q(x_s | x_t, x0)`` as the normalised product of ``q(x_t | x_s, x0, y)`` and ``q(x_s | x0, y)``.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipelines.cli import main
from toolkit.callbacks import FinalCheckpoint
from toolkit.checkpoint import load_model
from toolkit.denoiser import UNetDenoiser
from toolkit.engine import SamplerOptions, sample_sr
from toolkit.lightning import DiffusionSR
from toolkit.operators import AreaDownsample
from toolkit.process import GaussianProcess, process_from_spec, process_names
from toolkit.process_indi import InDIProcess
from toolkit.process_resshift import ResShiftProcess
from toolkit.samplers import ShiftStepper
from toolkit.spaces import PixelSpace, ResidualSpace, WaveletSpace
from toolkit.zeroshot import ZeroShotOptions

ROOT = Path(__file__).resolve().parents[1]


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the schedule -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kappa", [1.0, 2.0])
def test_schedule_endpoints(kappa: float) -> None:
    proc = ResShiftProcess(kappa=kappa)
    assert proc.timesteps == 15 and proc.eta.dtype == torch.float64
    assert math.isclose(float(proc.sqrt_eta[0]), min(0.04 / kappa, 0.04), rel_tol=1e-12)
    assert math.isclose(float(proc.sqrt_eta[-1]), 0.99, rel_tol=1e-12)
    assert bool((proc.eta[1:] > proc.eta[:-1]).all())
    # geometric in (t / (T - 1))^p: log sqrt(eta) is affine in it
    u = torch.linspace(0, 1, 15, dtype=torch.float64) ** 0.3
    log = proc.sqrt_eta.log()
    torch.testing.assert_close(log, log[0] + (log[-1] - log[0]) * u, rtol=0, atol=1e-12)
    full = proc.sampling_schedule(15)
    assert full.t == tuple(float(t) for t in range(14, -1, -1))
    assert full.alpha[-1] == 1.0 and full.sigma[-1] == 0.0
    assert math.isclose(full.sigma[0], kappa * 0.99, rel_tol=1e-12)
    assert math.isclose(full.alpha[0], 1 - 0.99**2, rel_tol=1e-12)
    assert proc.sampling_schedule(40).t == full.t  # no more levels than T
    four = proc.sampling_schedule(4)
    assert four.t == (14.0, 9.0, 5.0, 0.0) and len(four.alpha) == 5
    assert proc.sampling_schedule(1).t == (14.0,)
    assert proc.sampling_schedule(3, t_start=6).t == (6.0, 3.0, 0.0)
    with pytest.raises(ValueError, match="t_start must be in"):
        proc.sampling_schedule(4, t_start=200)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="kappa"):
        ResShiftProcess(kappa=0.0)
    with pytest.raises(ValueError, match="etas_end"):
        ResShiftProcess(etas_end=0.01)
    with pytest.raises(ValueError, match="loss weighting"):
        ResShiftProcess(loss_weighting="snr")  # type: ignore[arg-type]
    proc = ResShiftProcess()
    sch = proc.sampling_schedule(4)
    with pytest.raises(ValueError, match="its own steps.*'ddpm'"):
        proc.stepper("dpmpp", 0.0, sch)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        proc.stepper("ddim", 1.5, sch)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="needs the interpolated input"):
        proc.q_sample(x, torch.zeros(1, dtype=torch.long), x)
    with pytest.raises(ValueError, match="needs the interpolated input"):
        proc.prior(x)


# --- the forward marginal ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)], ids=["2d", "3d"])
def test_q_sample_marginal_mean_and_variance(shape: tuple[int, ...]) -> None:
    """Monte Carlo over N = 20000 seeded draws: mean within 5 standard errors, variance within 5 % (~5 sigma)."""
    proc = ResShiftProcess(kappa=1.5)
    n = 20000
    x0 = torch.rand(1, 2, *shape, generator=_g(0), dtype=torch.float64) * 2 - 1
    y = torch.rand(1, 2, *shape, generator=_g(1), dtype=torch.float64) * 2 - 1
    for t in (0, 5, 14):
        noise = torch.randn(n, 2, *shape, generator=_g(10 + t), dtype=torch.float64)
        tt = torch.full((n,), t, dtype=torch.long)
        xt = proc.q_sample(x0.expand(n, -1, *[-1] * len(shape)), tt, noise, y.expand_as(noise))
        eta = float(proc.eta[t])
        var = proc.kappa**2 * eta
        mean = x0 + eta * (y - x0)
        assert float((xt.mean(0) - mean[0]).abs().max()) < 5 * math.sqrt(var / n)
        assert float((xt.var(0) / var - 1).abs().max()) < 0.05


# --- the posterior steps ----------------------------------------------------------------------------------
def _product_posterior(x0, y, xt, eta_s, eta_t, kappa):  # type: ignore[no-untyped-def]
    """``q(x_s | x_t, x0) ∝ q(x_t | x_s) q(x_s | x0)``: the product of two Gaussians in ``x_s``."""
    m_s, v_s = x0 + eta_s * (y - x0), kappa**2 * eta_s  # q(x_s | x0, y)
    shift, v_ts = (eta_t - eta_s) * (y - x0), kappa**2 * (eta_t - eta_s)  # q(x_t | x_s) = N(x_s + shift, v_ts)
    precision = 1 / v_s + 1 / v_ts
    return (m_s / v_s + (xt - shift) / v_ts) / precision, 1 / precision


@pytest.mark.parametrize("steps", [15, 4])
def test_posterior_mean_and_variance_match_the_gaussian_product(steps: int) -> None:
    proc = ResShiftProcess(kappa=2.0)
    sch = proc.sampling_schedule(steps)
    stepper = proc.stepper("ddpm", 0.0, sch)  # ddpm ignores eta: always the posterior
    x0 = torch.rand(2, 1, 4, 3, generator=_g(0), dtype=torch.float64)
    y = torch.rand(2, 1, 4, 3, generator=_g(1), dtype=torch.float64)
    xt = torch.randn(2, 1, 4, 3, generator=_g(2), dtype=torch.float64)
    eps = torch.full_like(x0, math.nan)  # the posterior never looks at eps
    zero = torch.zeros_like(x0)
    for i in range(len(sch) - 1):
        t, s = int(sch.t[i]), int(sch.t[i + 1])
        eta_t, eta_s = float(proc.eta[t]), float(proc.eta[s])
        mean, var = _product_posterior(x0, y, xt, eta_s, eta_t, proc.kappa)
        assert stepper.needs_noise(i)
        got_mean = stepper.step(xt, x0, eps, i, zero)
        torch.testing.assert_close(got_mean, mean, rtol=0, atol=1e-6)
        noise = torch.ones_like(x0)
        got_std = stepper.step(xt, x0, eps, i, noise) - got_mean
        torch.testing.assert_close(got_std**2, torch.full_like(x0, var), rtol=1e-6, atol=1e-12)
        if steps == proc.timesteps:  # the paper's eq. 7 for adjacent levels
            alpha = eta_t - eta_s
            torch.testing.assert_close(mean, eta_s / eta_t * xt + alpha / eta_t * x0, rtol=0, atol=1e-12)
            assert math.isclose(var, proc.kappa**2 * eta_s / eta_t * alpha, rel_tol=1e-12)
    last = len(sch) - 1
    assert not stepper.needs_noise(last)
    assert torch.equal(stepper.step(xt, x0, eps, last), x0)  # the last step is deterministic


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_family_keeps_the_marginals(eta: float) -> None:
    """With the true ``x0`` and ``eps``, ``x_s - x0 - eta_s (y - x0) = (r sigma + c) eps + s n``: variance ``sigma_s^2``."""
    proc = ResShiftProcess(kappa=1.0)
    sch = proc.sampling_schedule(6)
    stepper = proc.stepper("ddim", eta, sch)
    assert isinstance(stepper, ShiftStepper)
    for i in range(len(sch) - 1):
        r, c, s = stepper.coefficients[i]
        assert math.isclose((r * sch.sigma[i] + c) ** 2 + s**2, sch.sigma[i + 1] ** 2, rel_tol=1e-12)
        assert stepper.needs_noise(i) == (eta > 0)
    # and one step on tensors: the state at level i of a known (x0, eps) goes to level i + 1 of the same eps
    x0 = torch.rand(1, 2, 3, 3, generator=_g(3), dtype=torch.float64)
    y = torch.rand(1, 2, 3, 3, generator=_g(4), dtype=torch.float64)
    e = torch.randn(1, 2, 3, 3, generator=_g(5), dtype=torch.float64)
    t = torch.tensor([int(sch.t[1])])
    xt = proc.q_sample(x0, t, e, y)
    torch.testing.assert_close(proc.eps_from_x0(xt, x0, t, y), e, rtol=0, atol=1e-12)
    if eta == 0:
        nxt = stepper.step(xt, x0, e, 1)
        torch.testing.assert_close(nxt, proc.q_sample(x0, torch.tensor([int(sch.t[2])]), e, y), rtol=0, atol=1e-12)


# --- the engine: an oracle denoiser lands on x0 -----------------------------------------------------------
class Oracle(nn.Module):
    """Returns the true clean state whatever it is given (an x0-predicting network that is always right)."""

    spatial_dims = 2

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, drop: torch.Tensor | None = None) -> torch.Tensor:
        return self.x0


@pytest.mark.parametrize(("sampler", "eta", "steps"), [("ddpm", 0.0, 15), ("ddpm", 0.0, 4), ("ddim", 0.0, 4), ("ddim", 0.5, 3), ("ddpm", 0.0, 1)])
def test_oracle_denoiser_lands_on_x0(sampler: str, eta: float, steps: int) -> None:
    op = AreaDownsample(2)
    x = torch.rand(2, 3, 8, 6, generator=_g(0)) * 2 - 1
    y = op.A(x)
    calls = []

    def cb(i, z, x0):  # type: ignore[no-untyped-def]
        calls.append(i)

    opts = SamplerOptions(sampler=sampler, eta=eta, steps=steps, consistency="none")
    out = sample_sr(Oracle(x), ResShiftProcess(), PixelSpace(), op, y, opts, _g(1), callback=cb)
    assert torch.equal(out, x)
    assert len(calls) == steps
    # in residual space the input's state is 0; in a wavelet space it is the input's transform: both land on x0
    for space in (ResidualSpace(0.25), WaveletSpace("haar", 1)):
        out = sample_sr(Oracle(space.encode(x, y)), ResShiftProcess(), space, op, y, opts, _g(1))
        torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_seeds_reproduce_and_differ() -> None:
    torch.manual_seed(0)
    net = UNetDenoiser(2, 1, num_channels=(8, 8), attention_levels=(False, False), norm_num_groups=4,
                       num_head_channels=8, mid_attention=False).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=_g(p.numel())))
    y = torch.rand(1, 1, 6, 5, generator=_g(2)) * 2 - 1
    opts = SamplerOptions(sampler="ddpm", steps=5, consistency="none")
    run = lambda seed: sample_sr(net, ResShiftProcess(), PixelSpace(), AreaDownsample(2), y, opts, _g(seed))  # noqa: E731
    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    det = opts.updated(sampler="ddim", eta=0.0)
    d1 = sample_sr(net, ResShiftProcess(), PixelSpace(), AreaDownsample(2), y, det, _g(3))
    assert torch.isfinite(d1).all()


def test_zero_shot_is_refused() -> None:
    x = torch.zeros(1, 1, 4, 4)
    opts = SamplerOptions(steps=2, zero_shot=ZeroShotOptions("ddnm"))
    with pytest.raises(ValueError, match="zero-shot methods assume z = alpha x0 \\+ sigma eps; the 'resshift'"):
        sample_sr(Oracle(x), ResShiftProcess(), PixelSpace(), AreaDownsample(2), AreaDownsample(2).A(x), opts, _g(0))


# --- the Gaussian process is unchanged by the hook ---------------------------------------------------------
#: (sampler, space, options) -> (sum, weighted sum) of the output, computed before the process's stepper
#: hook existed (commit f05b870), on the tiny network below
GAUSSIAN_PINNED = {
    ("ddim", "residual", "noise"): (-42.1268456173, 17.8936078491),
    ("ddim", "pixel", "regression"): (-43.5699952282, 18.6524446613),
    ("ddpm", "residual", "noise"): (-42.1267709476, 17.8935132209),
    ("ddpm", "pixel", "noise"): (4.5940418012, -1.7384513674),
    ("dpmpp", "pixel", "noise"): (4.5940833073, -1.7379933083),
    ("dpmpp_3m", "residual", "regression"): (-43.5699937083, 18.7738314289),
    ("dpmpp_3m", "pixel", "noise"): (4.5941216850, -1.7379072081),
}


@pytest.mark.parametrize("key", sorted(GAUSSIAN_PINNED), ids=str)
def test_gaussian_outputs_are_pinned(key: tuple[str, str, str]) -> None:
    sampler, space_name, variant = key
    torch.manual_seed(0)
    net = UNetDenoiser(2, 2, num_channels=(8, 8), attention_levels=(False, False), norm_num_groups=4,
                       num_head_channels=8, mid_attention=False).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.05, generator=_g(p.numel()))
    y = torch.rand(2, 2, 6, 5, generator=_g(3)) * 2 - 1
    space = ResidualSpace(0.25) if space_name == "residual" else PixelSpace()
    kw = (
        {"steps": 4, "eta": 0.5, "consistency": "none"} if variant == "noise"
        else {"steps": 3, "t_start": 300, "start": "regression", "consistency": "every_step"}
    )
    opts = SamplerOptions(sampler=sampler, **kw)  # type: ignore[arg-type]
    out = sample_sr(net, GaussianProcess(parameterization="x0"), space, AreaDownsample(2), y, opts, _g(5)).double()
    w = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
    total, weighted = GAUSSIAN_PINNED[key]
    assert abs(out.sum().item() - total) < 2e-6 and abs((out * w).sum().item() - weighted) < 2e-6


# --- spec, checkpoints, training ---------------------------------------------------------------------------
def test_network_input_scaling() -> None:
    """The reference code's ``_scale_input``: ``std`` divides by ``sqrt(kappa^2 eta + 1)``, ``max`` by ``3 kappa sqrt(eta) + 1``."""
    z = torch.randn(3, 2, 4, 4, generator=_g(0), dtype=torch.float64)
    t = torch.tensor([0.0, 7.0, 14.0])
    assert torch.equal(ResShiftProcess().network_input(z, t), z)
    assert torch.equal(GaussianProcess().network_input(z, t), z)
    for mode in ("std", "max"):
        proc = ResShiftProcess(kappa=2.0, normalize_input=mode)  # type: ignore[arg-type]
        eta = proc.eta[t.long()].reshape(-1, 1, 1, 1)
        div = (4 * eta + 1).sqrt() if mode == "std" else 6 * eta.sqrt() + 1
        torch.testing.assert_close(proc.network_input(z, t), z / div, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="normalize_input"):
        ResShiftProcess(normalize_input="unit")  # type: ignore[arg-type]


def test_spec_round_trip_and_registry() -> None:
    proc = ResShiftProcess(timesteps=4, kappa=1.0, power=0.5, loss_weighting="kl", normalize_input="max")
    back = process_from_spec(proc.spec())
    assert isinstance(back, ResShiftProcess) and back.spec() == proc.spec()
    assert torch.equal(back.eta, proc.eta)
    assert "resshift" in process_names()
    w = proc.loss_weights(torch.arange(4))
    assert bool(torch.isfinite(w).all() and (w > 0).all())
    # a fresh interpreter finds the process from plain data, without importing its module first
    code = (
        "from toolkit.process import process_from_spec; "
        "print(type(process_from_spec({'type': 'resshift', 'kappa': 1.0})).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "ResShiftProcess"


def test_trains_and_its_checkpoint_upscales(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = UNetDenoiser(2, 1, num_channels=(8, 8), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8)
    module = DiffusionSR(
        net, AreaDownsample(2), space=PixelSpace(), process=ResShiftProcess(timesteps=6, kappa=1.0),
        sampling=SamplerOptions(sampler="ddpm", steps=3, consistency="none"), cond_drop_prob=0.0,
    )
    data = [{"hr": torch.rand(1, 16, 16, generator=_g(i))} for i in range(4)]
    trainer = pl.Trainer(
        max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=str(tmp_path), callbacks=[FinalCheckpoint("last.ckpt", every_n_train_steps=0)],
        limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu",
    )
    trainer.fit(module, DataLoader(data, batch_size=2), DataLoader(data[:2], batch_size=2))  # type: ignore[arg-type]
    assert "val/psnr" in trainer.callback_metrics
    model = load_model(tmp_path / "last.ckpt")
    assert isinstance(model.process, ResShiftProcess) and model.process.spec() == module.process.spec()
    assert model.options.sampler == "ddpm"
    y = torch.rand(1, 1, 8, 8, generator=_g(9))
    a = model.upscale(y, _g(0))
    assert a.shape == (1, 1, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, model.upscale(y, _g(0)))
    one = model.upscale(y, _g(0), model.options.updated(steps=1, sampler="ddim"))
    assert torch.isfinite(one).all()
    with pytest.raises(ValueError, match="its own steps"):
        model.upscale(y, _g(0), model.options.updated(sampler="dpmpp"))


# --- configs ------------------------------------------------------------------------------------------------
TINY_NET = [
    "--model.init_args.denoiser.init_args.num_channels=[8, 16]",
    "--model.init_args.denoiser.init_args.attention_levels=[false, false]",
    "--model.init_args.denoiser.init_args.norm_num_groups=8",
    "--model.init_args.denoiser.init_args.num_head_channels=8",
]
SMALL = ["--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "4", *TINY_NET]
#: every configs/*/resshift_*.yaml and its tiny-run arguments
CONFIGS = {
    "images/resshift_x2": ["--data.init_args.crop_size", "32", "--data.init_args.val_crop_size", "32", *SMALL],
    "satellite/resshift_x2": ["--data.init_args.crop_size", "32", "--data.init_args.val_crop_size", "32", *SMALL],
    "mri/resshift_sr2d_slice_x4": [
        "--data.init_args.train", str(ROOT / "data" / "mri" / "mni152_09a_t1_crop64.nii.gz"),
        "--data.init_args.patch_size", "[16, 3, 16]", "--data.init_args.val_patch_size", "[16, 3, 16]",
        "--data.init_args.voxel_sizes", "[2.0]", *SMALL,
    ],
    "mri/resshift_sr3d_slice_x4": [
        "--data.init_args.train", str(ROOT / "data" / "mri" / "mni152_09a_t1_crop64.nii.gz"),
        "--data.init_args.patch_size", "[16, 16, 16]", "--data.init_args.val_patch_size", "[16, 16, 16]",
        "--data.init_args.voxel_sizes", "[2.0]", *SMALL,
    ],
    "faces/resshift_128": [
        "--data.init_args.root", str(ROOT / "data" / "faces" / "congress_portraits"), "--data.init_args.size", "32",
        "--data.init_args.val_count", "4", "--data.init_args.val_samples", "2", *SMALL,
    ],
}  # fmt: skip


def test_every_resshift_config_is_listed() -> None:
    found = {f"{p.parent.name}/{p.stem}" for p in (ROOT / "configs").glob("*/resshift_*.yaml")}
    assert found == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_fast_dev_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the configs name data/ relative to the repository
    main([
        "fit", "--config", str(ROOT / "configs" / f"{name}.yaml"), "--trainer.fast_dev_run", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
        "--model.init_args.sampling.steps", "2", *CONFIGS[name],
    ])  # fmt: skip
    model = load_model(tmp_path / "last.ckpt")
    assert isinstance(model.process, ResShiftProcess) and model.options.steps == 2


# --- the streamed path --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sampler", "eta", "spatial_dims"), [("ddpm", 0.0, 2), ("ddim", 0.0, 2), ("ddim", 0.5, 3)])
def test_memory_and_streamed_paths_agree(sampler: str, eta: float, spatial_dims: int) -> None:
    """The streamed path (tiles, positional noise) hands each cell its own interpolated input: same result as in memory."""
    import numpy as np
    from test_streaming import PointwiseDenoiser, _run

    from toolkit.checkpoint import SRModel
    from toolkit.noise import NoiseField
    from toolkit.normalization import Normalization
    from toolkit.operators import SliceAverage
    from toolkit.tiling import Tiling

    channels = 2 if spatial_dims == 2 else 1
    op = AreaDownsample(2) if spatial_dims == 2 else SliceAverage(2, axis=-1, spatial_dims=3)
    opts = SamplerOptions(sampler=sampler, eta=eta, steps=4)
    model = SRModel(
        PointwiseDenoiser(spatial_dims, channels).eval(),  # type: ignore[arg-type]
        op, PixelSpace(), ResShiftProcess(kappa=1.0),
        Normalization([0.5] * channels, [0.5] * channels), opts,
    )
    shape = (channels, 10, 7) if spatial_dims == 2 else (channels, 6, 5, 4)
    y = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    streamed, _ = _run(model, y, opts, Tiling(8, 4, batch=3), "disk", seed=11)
    mem, _ = model.upscale_with_uncertainty(torch.from_numpy(y)[None], NoiseField(11, channels), opts)  # type: ignore[arg-type]
    np.testing.assert_allclose(mem[0].numpy(), streamed, atol=1e-5)


# --- InDI (Delbracio & Milanfar 2023): the same kind of process, a straight line to the input ---------------------
def test_indi_schedule_and_marginal() -> None:
    """``x_t = (1 - t) x0 + t y + t eps_t noise``: the grid, and mean/variance over N = 20000 seeded draws (as above)."""
    proc = InDIProcess(timesteps=10, noise=0.1, noise_kind="brownian")
    assert torch.equal(proc.t, torch.arange(1, 11, dtype=torch.float64) / 10)
    torch.testing.assert_close(proc.sigma, 0.1 * proc.t.sqrt(), rtol=0, atol=1e-15)  # t * eps_0 / sqrt(t)
    sch = proc.sampling_schedule(4)
    assert sch.t == (9.0, 6.0, 3.0, 0.0) and sch.alpha[-1] == 1.0 and sch.sigma[-1] == 0.0
    assert math.isclose(sch.alpha[0], 0.0, abs_tol=1e-15) and math.isclose(sch.alpha[-2], 0.9, rel_tol=1e-12)
    n = 20000
    x0 = torch.rand(1, 2, 3, 4, generator=_g(0), dtype=torch.float64)
    y = torch.rand(1, 2, 3, 4, generator=_g(1), dtype=torch.float64)
    for k in (0, 4, 9):
        t, var = float(proc.t[k]), float(proc.sigma[k]) ** 2
        noise = torch.randn(n, 2, 3, 4, generator=_g(20 + k), dtype=torch.float64)
        xt = proc.q_sample(x0.expand(n, -1, -1, -1), torch.full((n,), k), noise, y.expand_as(noise))
        assert float((xt.mean(0) - ((1 - t) * x0 + t * y)[0]).abs().max()) < 5 * math.sqrt(var / n)
        assert float((xt.var(0) / var - 1).abs().max()) < 0.05
    with pytest.raises(ValueError, match="needs the interpolated input"):
        proc.prior(x0)
    with pytest.raises(ValueError, match="its own iteration.*'ddpm'"):
        proc.stepper("dpmpp_3m", 0.0, sch)


@pytest.mark.parametrize("noise_kind", ["constant", "brownian"])
def test_indi_step_is_the_papers_iteration(noise_kind: str) -> None:
    """``x_t' = (1 - t'/t) F + (t'/t) x_t + t' sqrt(eps_t'^2 - eps_t^2) noise`` (Algorithm 1 with its noise), to 1e-12."""
    proc = InDIProcess(timesteps=20, noise=0.05, noise_kind=noise_kind)  # type: ignore[arg-type]
    sch = proc.sampling_schedule(6)
    stepper = proc.stepper("ddpm", 0.0, sch)
    f = torch.rand(1, 1, 3, 5, generator=_g(0), dtype=torch.float64)
    x = torch.randn(1, 1, 3, 5, generator=_g(1), dtype=torch.float64)
    n = torch.randn(1, 1, 3, 5, generator=_g(2), dtype=torch.float64)
    eps = torch.full_like(f, math.nan)  # the iteration never looks at eps
    eps_of = (lambda t: 0.05) if noise_kind == "constant" else (lambda t: 0.05 / math.sqrt(t))
    for i in range(len(sch) - 1):
        t, t2 = float(proc.t[int(sch.t[i])]), float(proc.t[int(sch.t[i + 1])])
        top_up = t2 * math.sqrt(max(eps_of(t2) ** 2 - eps_of(t) ** 2, 0.0))
        expected = (1 - t2 / t) * f + (t2 / t) * x + top_up * n
        assert stepper.needs_noise(i) == (noise_kind == "brownian")
        got = stepper.step(x, f, eps, i, n if stepper.needs_noise(i) else None)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert torch.equal(stepper.step(x, f, eps, len(sch) - 1), f)
    if noise_kind == "constant":  # nothing to top up: ddim at any eta is the same plain iteration
        det = proc.stepper("ddim", 0.0, sch)
        y = torch.rand_like(f)
        e = proc.eps_from_x0(x, f, torch.tensor([int(sch.t[0])]), y)
        torch.testing.assert_close(det.step(x, f, e, 0), stepper.step(x, f, eps, 0), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("sampler", "eta", "steps", "noise_kind"), [
    ("ddpm", 0.0, 100, "constant"), ("ddpm", 0.0, 5, "brownian"), ("ddim", 0.0, 3, "brownian"), ("ddpm", 0.0, 1, "constant"),
])  # fmt: skip
def test_indi_oracle_denoiser_lands_on_x0(sampler: str, eta: float, steps: int, noise_kind: str) -> None:
    op = AreaDownsample(2)
    x = torch.rand(1, 2, 6, 8, generator=_g(0)) * 2 - 1
    opts = SamplerOptions(sampler=sampler, eta=eta, steps=steps, consistency="none")
    proc = InDIProcess(noise=0.05, noise_kind=noise_kind)  # type: ignore[arg-type]
    out = sample_sr(Oracle(x), proc, PixelSpace(), op, op.A(x), opts, _g(1))
    assert torch.equal(out, x)


def test_indi_spec_round_trip_and_training(tmp_path: Path) -> None:
    proc = InDIProcess(timesteps=8, noise=0.02, noise_kind="brownian")
    back = process_from_spec(proc.spec())
    assert isinstance(back, InDIProcess) and back.spec() == proc.spec() and torch.equal(back.sigma, proc.sigma)
    assert "indi" in process_names()
    code = "from toolkit.process import process_from_spec; print(type(process_from_spec({'type': 'indi'})).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "InDIProcess"
    torch.manual_seed(0)
    net = UNetDenoiser(2, 1, num_channels=(8, 8), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8)
    module = DiffusionSR(net, AreaDownsample(2), space=PixelSpace(), process=proc,
                         sampling=SamplerOptions(sampler="ddpm", steps=4), cond_drop_prob=0.0)
    data = [{"hr": torch.rand(1, 16, 16, generator=_g(i))} for i in range(4)]
    trainer = pl.Trainer(
        max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=str(tmp_path), callbacks=[FinalCheckpoint("last.ckpt", every_n_train_steps=0)],
        limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu",
    )
    trainer.fit(module, DataLoader(data, batch_size=2), DataLoader(data[:2], batch_size=2))  # type: ignore[arg-type]
    model = load_model(tmp_path / "last.ckpt")
    assert isinstance(model.process, InDIProcess) and model.process.spec() == proc.spec()
    y = torch.rand(1, 1, 8, 8, generator=_g(9))
    a = model.upscale(y, _g(0))
    assert a.shape == (1, 1, 16, 16) and torch.isfinite(a).all() and torch.equal(a, model.upscale(y, _g(0)))


def test_the_network_sees_the_scaled_state_in_sampling_and_training() -> None:
    """``normalize_input`` reaches the network on both paths: the sampler's model function and the training loss."""
    from toolkit.guidance import classifier_free
    from toolkit.lightning import denoising_loss

    seen: list[torch.Tensor] = []

    class Recorder(nn.Module):
        def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, drop: torch.Tensor | None = None) -> torch.Tensor:
            seen.append(z.detach().clone())
            return torch.zeros_like(z)

    process = ResShiftProcess(normalize_input="std")
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3.0, 10.0])
    classifier_free(Recorder(), process, torch.zeros_like(z))(z, t)
    torch.testing.assert_close(seen[-1], process.network_input(z, t))
    assert not torch.allclose(seen[-1], z)
    x, y = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 4, 4)
    denoising_loss(Recorder(), process, PixelSpace(), x, y, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the same draws as the loss made
    tt = torch.randint(0, process.timesteps, (2,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    from toolkit.utils import upsample

    z_t = process.q_sample(x, tt, noise, upsample(y, x.shape[2:]))
    torch.testing.assert_close(seen[-1], process.network_input(z_t, tt))
