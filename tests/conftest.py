"""Shared fixtures: small crops of the real photos the project ships (data/)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """The chelsea photo (RGB, 300x451) as (3, H, W) float32 in [0, 1]."""
    from domains.images.io import read_image

    return read_image(DATA / "natural" / "holdout" / "skimage_chelsea.png")[0]


@pytest.fixture(scope="session")
def gray_photo() -> np.ndarray:
    """The camera photo (grey, 512x512) as (1, H, W) float32 in [0, 1]."""
    from domains.images.io import read_image

    return read_image(DATA / "natural" / "train" / "skimage_camera.png")[0]


@pytest.fixture
def x2d(photo: np.ndarray) -> torch.Tensor:
    """A non-square real RGB crop (1, 3, 24, 36) in float64."""
    return torch.from_numpy(photo[:, 100:124, 150:186].copy())[None].double()


@pytest.fixture
def x3d(gray_photo: np.ndarray) -> torch.Tensor:
    """A non-cubic 3D block (2, 1, 12, 16, 20) built from stacked rows of a real photo, float64."""
    block = np.stack([gray_photo[0, 200 + k : 216 + k, 100:120] for k in range(0, 24, 2)])
    return torch.from_numpy(np.stack([block, block[::-1].copy()]))[:, None].double()


CliFails = Callable[..., None]


@pytest.fixture
def cli_fails(capsys: pytest.CaptureFixture[str]) -> CliFails:
    """``cli_fails(args, *needles)``: the CLI exits non-zero with one stderr line containing every needle."""
    from pipelines.cli import main

    def check(args: list[str], *needles: str) -> None:
        capsys.readouterr()  # drop what earlier commands printed
        code = main(args)
        err = capsys.readouterr().err.strip()
        assert code != 0
        assert len(err.splitlines()) == 1, err
        for n in needles:
            assert n in err, err

    return check
