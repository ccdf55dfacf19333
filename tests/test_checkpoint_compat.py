"""Checkpoints name their process's type, and checkpoints written before that still load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from toolkit.checkpoint import CheckpointError, load_model
from toolkit.denoiser import UNetDenoiser
from toolkit.engine import SamplerOptions
from toolkit.lightning import DiffusionSR
from toolkit.process import GaussianProcess
from toolkit.utils import make_generator


def _save(module: DiffusionSR, spec: dict, path: Path) -> Path:  # type: ignore[type-arg]
    torch.save({"diffsr": spec, "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def module() -> DiffusionSR:
    net = UNetDenoiser(2, channels=3, num_channels=(8, 8), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8)
    m = DiffusionSR(
        net, process=GaussianProcess("linear", parameterization="v"),
        sampling=SamplerOptions(sampler="dpmpp", steps=3, consistency="final"),
    )
    with torch.no_grad():  # MONAI zero-initialises the output layer: give the EMA weights values
        for p in m.ema.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    return m


def test_process_type_is_stored_and_old_layout_loads(module: DiffusionSR, tmp_path: Path) -> None:
    spec = module.inference_spec()
    assert spec["process"]["type"] == "gaussian" and spec["sampler"]["sampler"] == "dpmpp"
    new = load_model(_save(module, spec, tmp_path / "new.ckpt"))
    # the layout of checkpoints written before processes had a type: the Gaussian arguments alone
    old_spec = copy.deepcopy(spec)
    del old_spec["process"]["type"]
    old = load_model(_save(module, old_spec, tmp_path / "old.ckpt"))
    assert type(old.process) is GaussianProcess and old.process.spec() == new.process.spec()
    y = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    a = new.upscale(y, make_generator(0))
    b = old.upscale(y, make_generator(0))
    assert torch.equal(a, b) and a.abs().max() > 0


def test_unknown_types_are_refused_by_name(module: DiffusionSR, tmp_path: Path) -> None:
    spec = module.inference_spec()
    for part, bad in (("process", "bridge_v9"), ("operator", "os.system")):
        broken = copy.deepcopy(spec)
        broken[part]["type"] = bad
        with pytest.raises(CheckpointError, match=f"unknown {part} type '{bad}'"):
            load_model(_save(module, broken, tmp_path / f"{part}.ckpt"))
    broken = copy.deepcopy(spec)
    broken["sampler"]["sampler"] = "euler"
    with pytest.raises(CheckpointError, match="unknown sampler 'euler'"):
        load_model(_save(module, broken, tmp_path / "sampler.ckpt"))
