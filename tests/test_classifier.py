"""Classifier guidance (Dhariwal & Nichol 2021): the gradient, the exact identities, a closed form, checkpoints, the CLI.

The closed form: a two-class Gaussian mixture ``x ~ N(mu_c, s^2 I)`` (equal weights). Noised by the
process, ``z_t ~ N(alpha mu_c, v I)`` with ``v = alpha^2 s^2 + sigma^2``, so the Bayes classifier
``p(c | z_t)`` and the mixture's denoiser are exact; guidance at scale 1 then gives exactly the
class-conditional denoiser (``grad log p(z) + grad log p(c | z) = grad log p(z | c)``), and
sampling with it lands in the class.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from domains.images.io import read_image, write_image
from domains.satellite.normalize import raster_normalization
from pipelines.cli import main
from toolkit.checkpoint import SRModel
from toolkit.classifier import (
    CLASSIFIER_KEY,
    ClassifierCheckpointError,
    ClassifierGuidance,
    NoisyClassifier,
    NoisyClassifierNet,
    load_classifier,
    load_guide,
)
from toolkit.denoiser import UNetDenoiser
from toolkit.engine import SamplerOptions, sample_sr_with_uncertainty
from toolkit.lightning import DiffusionSR
from toolkit.normalization import Normalization
from toolkit.operators import AreaDownsample
from toolkit.process import GaussianProcess
from toolkit.spaces import PixelSpace, ResidualSpace
from toolkit.zeroshot import ZeroShotOptions

if TYPE_CHECKING:
    from conftest import CliFails

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "data" / "natural" / "holdout" / "skimage_chelsea.png"
L8 = ROOT / "data" / "satellite" / "landsat8_ms_30m_7band_128.tif"
SHAPES = {2: (6, 10), 3: (4, 6, 8)}


def tiny_net(d: int, channels: int = 2, classes: int = 2, seed: int = 0) -> NoisyClassifierNet:
    torch.manual_seed(seed)
    return NoisyClassifierNet(d, channels, classes, num_channels=[8, 8], attention_levels=[False, False], norm_num_groups=4)


def tiny_unet(d: int, channels: int, seed: int = 0) -> UNetDenoiser:
    """An unconditional UNet with every weight drawn (MONAI's zero-initialised output would make it output zeros)."""
    net = UNetDenoiser(d, channels, cond_channels=0, num_channels=[8, 8], attention_levels=[False, False], norm_num_groups=4,
                       num_head_channels=8, mid_attention=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval().requires_grad_(False)


# --- 1. the gradient and the exact identities ---------------------------------------------------------------
@pytest.mark.parametrize("d", [2, 3])
def test_gradient_matches_finite_differences(d: int) -> None:
    """grad_z log p(c | z, t) per item against central differences along random directions (float64)."""
    guide = ClassifierGuidance(tiny_net(d).double().eval(), 1, 2.0)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 2, *SHAPES[d], generator=g, dtype=torch.float64)
    t = torch.tensor([100.0, 700.0])
    grad = guide.gradient(z, t)
    assert grad.shape == z.shape and grad.dtype == torch.float64 and grad.abs().max() > 0
    h = 1e-5
    for _ in range(3):
        v = torch.randn(z.shape, generator=g, dtype=torch.float64)
        fd = (guide.log_prob(z + h * v, t) - guide.log_prob(z - h * v, t)) / (2 * h)
        exact = (grad * v).flatten(1).sum(1)
        torch.testing.assert_close(fd, exact, rtol=1e-6, atol=1e-9)
    # each item's gradient is its own: moving item 1 leaves item 0's gradient unchanged
    z2 = z.clone()
    z2[1] += 1.0
    torch.testing.assert_close(guide.gradient(z2, t)[0], grad[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", [2, 3])
def test_wrap_shifts_eps_by_the_scaled_gradient(d: int) -> None:
    """eps' = eps - s sigma g and x0' = (z - sigma eps') / alpha, under no_grad as the sampler runs it."""
    process = GaussianProcess(parameterization="eps")
    guide = ClassifierGuidance(tiny_net(d).double().eval(), 0, 3.0)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 2, *SHAPES[d], generator=g, dtype=torch.float64)
    eps = torch.randn(z.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([5.0, 400.0, 990.0])

    def model_fn(zz: torch.Tensor, tt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return process.predict(eps, zz, tt)

    with torch.no_grad():
        x0_g, eps_g = guide.wrap(model_fn, process)(z, t)
    alpha, sigma = process.coefficients(t, z)
    want = eps - 3.0 * sigma * guide.gradient(z, t)
    torch.testing.assert_close(eps_g, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x0_g, (z - sigma * want) / alpha, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(process.eps_from_x0(z, x0_g, t), eps_g, rtol=1e-9, atol=1e-9)  # what the engine recovers


@pytest.mark.parametrize("d", [2, 3])
def test_scale_zero_is_the_unguided_sampler_exactly(d: int) -> None:
    """sample_sr_with_uncertainty with a scale-0 guide equals the run without one (torch.equal); scale 5 moves it."""
    process = GaussianProcess(parameterization="v")
    denoiser = tiny_unet(d, 2)
    classifier = tiny_net(d).eval().requires_grad_(False)
    op = AreaDownsample(2, spatial_dims=d)
    hr = tuple(2 * n for n in ((4, 4) if d == 2 else (2, 4, 4)))
    x = torch.randn(2, 2, *hr, generator=torch.Generator().manual_seed(3))
    y = op.A(x)
    zs = ZeroShotOptions("ddnm").updated(unit=2.0)
    for opts in (SamplerOptions(steps=4, consistency="none"), SamplerOptions(steps=4, zero_shot=zs, eta=0.5)):
        def run(guide: ClassifierGuidance | None, opts: SamplerOptions = opts) -> torch.Tensor:
            return sample_sr_with_uncertainty(
                denoiser, process, PixelSpace(), op, y, opts, torch.Generator().manual_seed(0), guide=guide
            )[0]

        plain = run(None)
        assert torch.equal(run(ClassifierGuidance(classifier, 1, 0.0)), plain)
        assert not torch.allclose(run(ClassifierGuidance(classifier, 1, 5.0)), plain)


def test_scale_zero_wraps_nothing() -> None:
    def fn(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z, z

    assert ClassifierGuidance(tiny_net(2), 0, 0.0).wrap(fn, GaussianProcess()) is fn
    with pytest.raises(ValueError, match="finite"):
        ClassifierGuidance(tiny_net(2), 0, float("nan"))


# --- 2. closed form: a two-class Gaussian mixture ---------------------------------------------------------------
S = 0.3  # each class's standard deviation


def class_means(d: int) -> torch.Tensor:
    """``(2, 1, *S)`` float64: two opposite non-constant patterns."""
    shape = (8, 12) if d == 2 else (4, 4, 6)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=torch.float64) for n in shape], indexing="ij"))
    pattern = 0.6 * torch.cos(2.0 * grid.sum(0)) + 0.2
    return torch.stack([pattern, -pattern])[:, None]


class ExactClassifier(nn.Module):
    """The Bayes classifier of the noised mixture: logits ``-|z - alpha mu_c|^2 / (2 v)``."""

    def __init__(self, mu: torch.Tensor, process: GaussianProcess) -> None:
        super().__init__()
        self.mu, self.process = mu, process
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.process.coefficients(t, z)
        v = a**2 * S**2 + s**2
        d2 = torch.stack([((z - a * m) ** 2 / v).flatten(1).sum(1) for m in self.mu], dim=1)
        return -0.5 * d2


class MixtureDenoiser(nn.Module):
    """The exact eps of the mixture (``-sigma grad log p(z_t)``) or of one class alone (``label``)."""

    def __init__(self, mu: torch.Tensor, process: GaussianProcess, label: int | None = None) -> None:
        super().__init__()
        self.mu, self.process, self.label = mu, process, label
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        a, s = self.process.coefficients(t, z)
        v = a**2 * S**2 + s**2
        if self.label is None:
            w = torch.softmax(ExactClassifier(self.mu, self.process)(z, t), dim=1)  # p(c | z)
            mean = sum(w[:, k].reshape(-1, *[1] * (z.ndim - 1)) * self.mu[k] for k in range(len(self.mu)))
        else:
            mean = self.mu[self.label]
        return s * (z - a * mean) / v


@pytest.mark.parametrize("d", [2, 3])
def test_exact_classifier_turns_the_mixture_into_the_class(d: int) -> None:
    """Scale 1 with the Bayes classifier is the class-conditional denoiser, to round-off, at every level."""
    process = GaussianProcess(parameterization="eps")
    mu = class_means(d)
    mixture = MixtureDenoiser(mu, process)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(4, 1, *mu.shape[2:], generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 300.0, 800.0, 999.0])

    def model_fn(zz: torch.Tensor, tt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return process.predict(mixture(zz, tt), zz, tt)

    for label in (0, 1):
        guided = ClassifierGuidance(ExactClassifier(mu, process), label, 1.0).wrap(model_fn, process)
        _, eps = guided(z, t)
        torch.testing.assert_close(eps, MixtureDenoiser(mu, process, label)(z, t), rtol=1e-9, atol=1e-9)


def test_guided_samples_land_in_the_class() -> None:
    """DDIM from pure noise with the exact mixture denoiser: unguided, both classes; guided (scale 1),
    every sample in the class, with the class's mean and spread; scale 4 stays in the class, tighter."""
    process = GaussianProcess(parameterization="eps")
    mu = class_means(2)
    op = AreaDownsample(2)
    n = 200
    y = torch.zeros(n, 1, 4, 6, dtype=torch.float64)
    opts = SamplerOptions(steps=50, consistency="none")

    def sample(guide: ClassifierGuidance | None) -> torch.Tensor:
        return sample_sr_with_uncertainty(
            MixtureDenoiser(mu, process), process, PixelSpace(), op, y, opts, torch.Generator().manual_seed(5), guide=guide
        )[0]

    def label_of(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([((x - m) ** 2).flatten(1).sum(1) for m in mu], 1).argmin(1)

    plain = sample(None)
    share = label_of(plain).float().mean().item()
    assert 0.3 < share < 0.7  # the mixture: both classes
    for c in (0, 1):
        x = sample(ClassifierGuidance(ExactClassifier(mu, process), c, 1.0))
        assert bool((label_of(x) == c).all())
        err = (x.mean(0) - mu[c]).abs().mean().item()
        assert err < 0.05, err  # the class mean (the Monte Carlo error of a pixel's mean is 0.3 / sqrt(200) = 0.02)
        spread = (x - mu[c]).std(0).mean().item()
        assert abs(spread - S) < 0.05, spread  # the class's own spread: p(x | c), not a collapse
        sharp = sample(ClassifierGuidance(ExactClassifier(mu, process), c, 4.0))
        assert bool((label_of(sharp) == c).all())
        assert (sharp - mu[c]).std(0).mean().item() < spread  # s > 1 sharpens p(c | z)^s


# --- 3. training and checkpoints ----------------------------------------------------------------------------------
class TwoTextures(torch.utils.data.Dataset):
    """Class 0: smooth horizontal stripes; class 1: vertical ones (crops of 16 x 16, 1 channel, data units [0, 1])."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        k = i % 2
        phase = torch.rand((), generator=g) * 6.28
        ramp = torch.linspace(0, 6.28, 16)
        wave = 0.5 + 0.4 * torch.sin(2 * ramp + phase)
        img = wave[:, None].expand(16, 16) if k == 0 else wave[None, :].expand(16, 16)
        return {"hr": img[None].contiguous(), "label": torch.tensor(k)}


class TextureData(__import__("lightning.pytorch", fromlist=["LightningDataModule"]).LightningDataModule):
    class_names = ["rows", "cols"]
    normalization = Normalization(0.5, 0.5)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(TwoTextures(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(TwoTextures(), batch_size=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NoisyClassifier, dict[str, float]]:
    """A tiny classifier trained with Lightning for 40 steps on two textures; its checkpoint."""
    import lightning.pytorch as pl

    torch.manual_seed(0)
    module = NoisyClassifier(tiny_net(2, 1), channels=1, lr=3e-3, warmup_steps=1)
    trainer = pl.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=2, num_sanity_val_steps=0, accelerator="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=TextureData())
        metrics = {k: float(v) for k, v in trainer.validate(module, datamodule=TextureData(), verbose=False)[0].items()}
    path = tmp_path_factory.mktemp("clf") / "clf.ckpt"
    trainer.save_checkpoint(str(path))
    return path, module, metrics


def test_training_learns_the_classes_and_logs_accuracy(trained: tuple[Path, NoisyClassifier, dict[str, float]]) -> None:
    _, module, metrics = trained
    assert module.classes == ["rows", "cols"] and module.network.num_classes == 2
    assert {"val/loss", "val/acc", "val/acc_t0", "val/acc_t250", "val/acc_t500", "val/acc_t750"} <= set(metrics)
    assert metrics["val/acc_t0"] >= 0.9, metrics  # clean stripes: orientation is easy


def test_checkpoint_round_trip(trained: tuple[Path, NoisyClassifier, dict[str, float]]) -> None:
    """Read back with weights_only (no code): the same classes, description and outputs."""
    path, module, _ = trained
    ckpt = torch.load(path, weights_only=True)
    spec = ckpt[CLASSIFIER_KEY]
    assert spec["format"] == 1 and spec["classes"] == ["rows", "cols"] and spec["spatial_dims"] == 2 and spec["channels"] == 1
    assert spec["normalization"] == {"offset": [0.5], "scale": [0.5]} and spec["process"]["schedule"] == "cosine"
    loaded = load_classifier(path)
    z = torch.randn(3, 1, 16, 24, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 200.0, 900.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(z, t), module.network.eval()(z, t), rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.network.parameters())


def prior_model(channels: int = 1, d: int = 2, space: str = "pixel", schedule: str = "cosine",
                normalization: Normalization | None = None) -> SRModel:
    proc = GaussianProcess(schedule, parameterization="v")  # type: ignore[arg-type]
    sp = PixelSpace() if space == "pixel" else ResidualSpace()
    return SRModel(tiny_unet(d, channels), None, sp, proc, normalization or Normalization(0.5, 0.5), SamplerOptions(),
                   {"prior": True}, "prior.ckpt")


def one_line(exc: pytest.ExceptionInfo[BaseException], *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def test_load_guide_checks_the_class_and_the_model(trained: tuple[Path, NoisyClassifier, dict[str, float]]) -> None:
    path, _, _ = trained
    model = prior_model()
    assert load_guide(path, "cols", 2.5, model).label_index == 1
    assert load_guide(path, "0", 1.0, model).label_index == 0 and load_guide(path, 1, 1.0, model).label_index == 1
    guide = load_guide(path, "rows", 2.5, model)
    assert guide.scale == 2.5 and guide.normalization is not None and guide.normalization.spec() == {"offset": [0.5], "scale": [0.5]}
    assert guide.spec() == {"classifier": str(path), "class": "rows", "class_index": 0, "scale": 2.5}
    with pytest.raises(ClassifierCheckpointError) as e:
        load_guide(path, "diagonal", 1.0, model)
    one_line(e, str(path), "diagonal", "0: rows, 1: cols")
    with pytest.raises(ClassifierCheckpointError) as e:
        load_guide(path, "2", 1.0, model)
    one_line(e, "unknown class '2'")
    cases = [
        (prior_model(channels=3), "1 channel(s)"),
        (prior_model(d=3), "2D classifier"),
        (prior_model(space="residual"), "pixel-space state only"),
        (prior_model(schedule="linear"), "cosine schedule"),
        (prior_model(normalization=Normalization(0.4, 0.5)), "normalisation"),
    ]
    for bad, needle in cases:
        with pytest.raises(ClassifierCheckpointError) as e:
            load_guide(path, "rows", 1.0, bad)
        one_line(e, str(path), needle)


class Boom:
    """Unpickling this would run code (``__reduce__``): the weights-only loader must refuse it."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path("/nonexistent/ran").mkdir, ())


def test_malformed_checkpoints_are_refused(trained: tuple[Path, NoisyClassifier, dict[str, float]], tmp_path: Path) -> None:
    path, _, _ = trained
    good = torch.load(path, weights_only=True)
    spec = good[CLASSIFIER_KEY]
    model = prior_model()
    cases = {
        "garbage": (b"not a checkpoint", "not a readable checkpoint"),
        "code": (Boom(), "not a readable checkpoint"),
        "model": ({"diffsr": {}, "state_dict": {}}, "not a diffsr classifier checkpoint"),
        "list": ({CLASSIFIER_KEY: [1], "state_dict": {}}, "is a list"),
        "format": ({CLASSIFIER_KEY: {**spec, "format": 2}, "state_dict": good["state_dict"]}, "format 2"),
        "classes": ({CLASSIFIER_KEY: {**spec, "classes": ["a"]}, "state_dict": good["state_dict"]}, "'classes'"),
        "missing": ({CLASSIFIER_KEY: {k: v for k, v in spec.items() if k != "network"}, "state_dict": {}}, "missing network"),
        "network": ({CLASSIFIER_KEY: {**spec, "network": {**spec["network"], "bogus": 1}}, "state_dict": good["state_dict"]}, "bogus"),
        "weights": ({CLASSIFIER_KEY: spec, "state_dict": {"network.head.weight": torch.zeros(2, 8)}}, "do not match"),
        "nan": ({CLASSIFIER_KEY: spec, "state_dict": {**good["state_dict"], "network.head.bias": torch.full((2,), float("nan"))}}, "NaN"),
        "no_state": ({CLASSIFIER_KEY: spec}, "state_dict"),
    }
    for name, (content, needle) in cases.items():
        bad = tmp_path / f"{name}.ckpt"
        if isinstance(content, bytes):
            bad.write_bytes(content)
        else:
            torch.save(content, bad)
        with pytest.raises(ClassifierCheckpointError) as e:
            load_guide(bad, "rows", 1.0, model)
        one_line(e, str(bad), needle)
    assert not Path("/nonexistent/ran").exists()
    with pytest.raises(ClassifierCheckpointError) as e:
        load_guide(tmp_path / "absent.ckpt", "rows", 1.0, model)
    one_line(e, "absent.ckpt", "not found")


# --- 4. through the command line ------------------------------------------------------------------------------------
def save_prior(path: Path, channels: int, normalization: Normalization, domain: dict | None, data_range: float = 1.0) -> Path:
    module = DiffusionSR(
        tiny_unet(2, channels), AreaDownsample(2), PixelSpace(), GaussianProcess(parameterization="v"), normalization,
        sampling=SamplerOptions(steps=2), data_range=data_range, prior=True,
    )
    module.domain = domain
    with torch.no_grad():
        for p in module.denoiser.parameters():  # an "trained" network with every weight non-zero
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    module.ema.load_state_dict(module.denoiser.state_dict())
    torch.save({"diffsr": module.inference_spec(), "state_dict": module.state_dict()}, path)
    return path


def save_classifier(path: Path, channels: int, normalization: Normalization) -> Path:
    module = NoisyClassifier(tiny_net(2, channels), channels=channels, classes=["a", "b"], normalization=normalization)
    torch.save({CLASSIFIER_KEY: module.classifier_spec(), "state_dict": module.state_dict()}, path)
    return path


def test_upscale_cli_with_classifier_guidance(tmp_path: Path, cli_fails: CliFails) -> None:
    """`diffsr upscale --zero-shot ddnm ... --classifier CKPT --class b`: scale 0 writes the unguided file byte for byte; a
    large scale another one; a residual conditional model and an unknown class are refused in one line."""
    prior = save_prior(tmp_path / "prior.ckpt", 3, Normalization(), None)
    clf = save_classifier(tmp_path / "clf.ckpt", 3, Normalization())
    lr = tmp_path / "lr.png"
    write_image(lr, read_image(PHOTO)[0][:, 100:116, 150:174], 8)
    base = ["--checkpoint", str(prior), "--zero-shot", "ddnm", "--operator", "area", "--scale", "2", "--steps", "3", "--eta", "0.5"]
    outs = {}
    for name, extra in {"plain": [], "zero": ["--classifier-scale", "0"], "strong": ["--classifier-scale", "3000"]}.items():
        outs[name] = tmp_path / f"{name}.png"
        guide = [] if name == "plain" else ["--classifier", str(clf), "--class", "b"]
        assert main(["upscale", str(lr), str(outs[name]), *base, *guide, *extra]) == 0
    assert outs["plain"].read_bytes() == outs["zero"].read_bytes()
    assert not np.array_equal(read_image(outs["plain"])[0], read_image(outs["strong"])[0])
    cli_fails(["upscale", str(lr), str(tmp_path / "x.png"), *base, "--classifier", str(clf), "--class", "c"], str(clf), "unknown class 'c'", "0: a, 1: b")
    cond = DiffusionSR(tiny_unet(2, 3), AreaDownsample(2), ResidualSpace(), GaussianProcess(), Normalization(), sampling=SamplerOptions(steps=2))
    cond_path = tmp_path / "cond.ckpt"
    torch.save({"diffsr": cond.inference_spec(), "state_dict": cond.state_dict()}, cond_path)
    cli_fails(["upscale", str(lr), str(tmp_path / "y.png"), "--checkpoint", str(cond_path), "--steps", "2", "--classifier", str(clf), "--class", "a"],
              str(clf), "pixel-space state only", "'residual'")
    cli_fails(["upscale", str(lr), str(tmp_path / "z.png"), *base, "--classifier", str(prior), "--class", "a"], str(prior), "not a diffsr classifier")


def test_evaluate_raster_cli_passes_the_guide_through(tmp_path: Path) -> None:
    """Satellite `evaluate --zero-shot ddnm --classifier`: scale 0 scores as unguided; a large scale changes the output."""
    norm = raster_normalization(L8)
    prior = save_prior(tmp_path / "prior.ckpt", 7, norm, {"kind": "satellite", "bands": None}, 8000.0)
    clf = save_classifier(tmp_path / "clf.ckpt", 7, norm)
    hr = tmp_path / "hr.tif"
    with rasterio.open(L8) as src:
        profile = {**src.profile, "width": 32, "height": 24, "transform": src.transform, "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(hr, "w", **profile) as dst:
            dst.write(src.read(window=((0, 24), (0, 32))))
    base = ["evaluate", "--checkpoint", str(prior), "--hr", str(hr), "--zero-shot", "ddnm", "--operator", "area", "--scale", "2",
            "--steps", "3", "--eta", "0.5"]
    scores = {}
    for name, extra in {"plain": [], "zero": ["--classifier", str(clf), "--class", "a", "--classifier-scale", "0"],
                        "strong": ["--classifier", str(clf), "--class", "a", "--classifier-scale", "3000"]}.items():
        assert main([*base, "--out", str(tmp_path / name), *extra]) == 0
        scores[name] = json.loads((tmp_path / name / "metrics.json").read_text())["methods"]["diffsr"]
    assert scores["zero"] == scores["plain"]
    assert scores["strong"]["psnr"] != scores["plain"]["psnr"]


# --- 5. the configs ---------------------------------------------------------------------------------------------------
def test_pucallpa_configs_fast_dev_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/satellite/prior_pucallpa.yaml and classifier_pucallpa.yaml fit (fast_dev_run, tiny networks), and the
    classifier guides the prior: same normalisation (same files, grid, held-back block, percentiles), schedule, bands."""
    from toolkit.checkpoint import load_model

    monkeypatch.chdir(ROOT)  # the configs name data/ relative to the repository
    common = ["--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.accelerator", "cpu", "--data.init_args.crop_size", "32", "--data.init_args.val_crop_size", "32",
              "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "4"]
    prior_dir, clf_dir = tmp_path / "prior", tmp_path / "clf"
    assert main(["fit", "--config", str(ROOT / "configs" / "satellite" / "prior_pucallpa.yaml"), *common,
                 "--trainer.default_root_dir", str(prior_dir), "--model.init_args.sampling.steps", "2",
                 "--model.init_args.denoiser.init_args.num_channels=[8, 16]", "--model.init_args.denoiser.init_args.norm_num_groups=8",
                 "--model.init_args.denoiser.init_args.num_head_channels=8",
                 "--model.init_args.denoiser.init_args.attention_levels=[false, false]"]) == 0
    assert main(["fit", "--config", str(ROOT / "configs" / "satellite" / "classifier_pucallpa.yaml"), *common,
                 "--trainer.default_root_dir", str(clf_dir), "--model.init_args.network.init_args.num_channels=[8, 16]",
                 "--model.init_args.network.init_args.norm_num_groups=8",
                 "--model.init_args.network.init_args.num_head_channels=8",
                 "--model.init_args.network.init_args.attention_levels=[false, false]"]) == 0
    clf = load_classifier(clf_dir / "last.ckpt")
    assert clf.classes == ["tm", "oli_etm"] and clf.spec["channels"] == 4
    guide = load_guide(clf_dir / "last.ckpt", "tm", 3.0, load_model(prior_dir / "last.ckpt"))
    assert guide.label_index == 0 and guide.scale == 3.0


def test_streamed_conditional_raster_honours_the_guide(tmp_path: Path) -> None:
    """A conditional pixel-space satellite model streams its raster: a large guidance scale must still change the output."""
    norm = raster_normalization(L8)
    den = UNetDenoiser(2, 7, num_channels=[8, 8], attention_levels=[False, False], norm_num_groups=4, num_head_channels=8,
                       mid_attention=False)
    module = DiffusionSR(den, AreaDownsample(2), PixelSpace(), GaussianProcess(), norm, sampling=SamplerOptions(steps=3, eta=0.5))
    with torch.no_grad():
        for p in module.denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    module.ema.load_state_dict(module.denoiser.state_dict())
    module.domain = {"kind": "satellite", "bands": None}
    ckpt = tmp_path / "cond.ckpt"
    torch.save({"diffsr": module.inference_spec(), "state_dict": module.state_dict()}, ckpt)
    clf = save_classifier(tmp_path / "clf.ckpt", 7, norm)
    lr = tmp_path / "lr.tif"
    assert main(["degrade", str(L8), str(lr), "--scale", "2"]) == 0
    outs = []
    for s in ("0", "3000"):
        outs.append(tmp_path / f"s{s}.tif")
        assert main(["upscale", str(lr), str(outs[-1]), "--checkpoint", str(ckpt), "--steps", "3",
                     "--classifier", str(clf), "--class", "a", "--classifier-scale", s]) == 0
    with rasterio.open(outs[0]) as a, rasterio.open(outs[1]) as b:
        assert not np.array_equal(a.read(), b.read())
