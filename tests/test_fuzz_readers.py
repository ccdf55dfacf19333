"""Fuzzing the readers through the command line: mutated PNG, NIfTI, GeoTIFF and checkpoint bytes.

Each example flips bits in, truncates or splices random bytes into a small valid file the test
writes, and runs ``degrade`` (or ``upscale`` for a checkpoint) in-process. Whatever the bytes,
no exception escapes :func:`pipelines.cli.main`; a refused file exits 2 with one line on
stderr and leaves nothing in the output folder. Bounded: ``HYPOTHESIS_PROFILE=fuzz-long`` runs
more examples.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.cli import main

settings.register_profile(
    "fuzz", max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
settings.register_profile("fuzz-long", parent=settings.get_profile("fuzz"), max_examples=2000, derandomize=False)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz").replace("default", "fuzz"))


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with 1-3 bit flips, truncations or splices, half of them in the first 512 bytes (headers)."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if not b:
            break
        i = draw(st.integers(0, min(len(b), 512) - 1) | st.integers(0, len(b) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "splice"]))
        if kind == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del b[i:]
        else:
            b[i : i + draw(st.integers(0, 16))] = draw(st.binary(min_size=1, max_size=16))
    return bytes(b)


def _png() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _nifti() -> bytes:
    nib = pytest.importorskip("nibabel")
    vol = np.random.default_rng(1).random((8, 8, 6), dtype=np.float32)
    return nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])).to_bytes()


def _geotiff() -> bytes:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    data = np.random.default_rng(2).random((4, 16, 16), dtype=np.float32)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.tif"
        profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 4, "dtype": "float32", "crs": "EPSG:32633"}
        with rasterio.open(p, "w", transform=from_origin(500000, 4000000, 10, 10), **profile) as dst:
            dst.write(data)
        return p.read_bytes()


def _checkpoint() -> bytes:
    from toolkit.denoiser import UNetDenoiser
    from toolkit.engine import SamplerOptions
    from toolkit.lightning import DiffusionSR

    torch.manual_seed(0)
    net = UNetDenoiser(
        spatial_dims=2, channels=3, num_channels=[8, 16], attention_levels=[False, False], num_res_blocks=1, norm_num_groups=8,
        num_head_channels=8,
    )
    m = DiffusionSR(net, sampling=SamplerOptions(steps=1, samples=1))
    buf = io.BytesIO()
    torch.save({"state_dict": m.state_dict(), "diffsr": m.inference_spec(), "global_step": 0}, buf)
    return buf.getvalue()


def _run_cli(capsys: pytest.CaptureFixture[str], name: str, data: bytes, command: Callable[[Path, Path], list[str]]) -> None:
    """Run ``command(input, output)`` on ``data`` written as ``name``; check the contract."""
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "in" / name, Path(d) / "out"
        src.parent.mkdir()
        out.mkdir()
        src.write_bytes(data)
        capsys.readouterr()
        status = main(command(src, out / f"result{Path(name).suffix}"))
        err = capsys.readouterr().err
        assert isinstance(status, int)
        if status == 0:
            assert any(out.iterdir())
        else:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert status == 2 and len(lines) == 1, err
            assert not list(out.iterdir()), sorted(p.name for p in out.iterdir())
            assert sorted(p.name for p in src.parent.iterdir()) == [name]


def _degrade(src: Path, dst: Path) -> list[str]:
    return ["degrade", str(src), str(dst), "--scale", "2"]


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    return {}


def _seed(seeds: dict[str, bytes], name: str, make: Callable[[], bytes]) -> bytes:
    if name not in seeds:
        seeds[name] = make()
    return seeds[name]


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("photo.png", _png),
        ("head.nii", _nifti),
        ("scene.tif", _geotiff),
    ],
)
def test_degrade_survives_mutated_inputs(
    name: str, make: Callable[[], bytes], seeds: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    valid = _seed(seeds, name, make)

    @PROFILE
    @given(data=mutations(valid))
    def check(data: bytes) -> None:
        _run_cli(capsys, name, data, _degrade)

    _run_cli(capsys, name, valid, _degrade)  # the unmutated file works
    check()


def test_upscale_survives_mutated_checkpoints(seeds: dict[str, bytes], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    valid = _seed(seeds, "model.ckpt", _checkpoint)
    photo = tmp_path / "small.png"
    photo.write_bytes(_png())

    def upscale(ckpt: Path, dst: Path) -> list[str]:
        return ["upscale", str(photo), str(dst.with_suffix(".png")), "--checkpoint", str(ckpt), "--steps", "1", "--samples", "1"]

    @settings(PROFILE, max_examples=min(PROFILE.max_examples, 30))
    @given(data=mutations(valid))
    def check(data: bytes) -> None:
        _run_cli(capsys, "model.ckpt", data, upscale)

    _run_cli(capsys, "model.ckpt", valid, upscale)
    check()
