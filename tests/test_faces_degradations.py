"""The blind face degradation: seeded reproducibility, ranges, the known linear part as an exact operator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from domains.faces.data import resize
from domains.faces.degradations import (
    BlurDownsample,
    FaceDegradation,
    evaluation_degradation,
    gaussian_blur_matrix,
    jpeg,
)
from domains.images.io import read_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """Two real faces (Obama, Biden official portraits) at 64x64, (2, 3, 64, 64) in [0, 1]."""
    imgs = [torch.from_numpy(read_image(ROOT / "data" / "faces" / f)[0]) for f in ("obama_official_256.png", "biden_official_256.png")]
    return resize(torch.stack(imgs), 64)


def test_same_seed_same_output_different_seeds_differ(faces: torch.Tensor) -> None:
    deg = FaceDegradation(second_order_prob=0.5)
    a, b, c = deg(faces, 7), deg(faces, 7), deg(faces, 8)
    assert a.shape == faces.shape and torch.equal(a, b)
    assert not torch.equal(a, c)
    # a numpy generator and a torch generator seeded alike give the same draws too
    assert torch.equal(deg(faces, np.random.default_rng(3)), deg(faces, np.random.default_rng(3)))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(deg(faces, g1), deg(faces, g2))
    # the two items of one batch get different draws
    p = deg.degrade(faces, 7).params
    assert p[0] != p[1]


def test_draws_respect_the_ranges() -> None:
    deg = FaceDegradation(blur_sigma=(0.5, 2.0), scale_range=(2.0, 6.0), noise_range=(0.01, 0.02),
                          jpeg_range=(50, 60), second_order_prob=0.5, jpeg_prob=0.5)
    rng = np.random.default_rng(0)
    orders, jpegs = set(), set()
    for _ in range(300):
        p = deg.sample_params((96, 80), rng)
        assert 2.0 <= p.scale <= 6.0
        assert p.lr_size == (round(96 / p.scale), round(80 / p.scale))
        s1 = p.stages[0]
        assert all(0.5 <= s <= 2.0 for s in s1.sigma) and 0.01 <= s1.noise_sigma <= 0.02
        assert s1.jpeg_quality is None or 50 <= s1.jpeg_quality <= 60
        jpegs.add(s1.jpeg_quality is None)
        orders.add(len(p.stages))
        if len(p.stages) == 2:
            mid, last = p.stages
            assert mid.size[0] >= last.size[0] and mid.size[1] >= last.size[1]
            assert all(0.2 <= s <= 1.5 for s in last.sigma)  # blur_sigma2's default range
    assert orders == {1, 2} and jpegs == {True, False}


def test_output_sizes_and_range(faces: torch.Tensor) -> None:
    d = FaceDegradation(scale_range=(4, 4)).degrade(faces, 0)
    assert d.grid.shape == faces.shape and all(t.shape == (3, 16, 16) for t in d.lr)
    assert 0 <= float(d.grid.min()) and float(d.grid.max()) <= 1
    lr = FaceDegradation(scale_range=(4, 4), output="lr")(faces, 0)
    assert lr.shape == (2, 3, 16, 16) and torch.equal(lr, torch.stack(d.lr))
    with pytest.raises(ValueError, match="different sizes"):
        FaceDegradation(scale_range=(2, 8), output="lr")(faces, 1)


def test_known_part_is_exactly_the_operator(faces: torch.Tensor) -> None:
    """Without noise and JPEG, the degradation's output is A(x) for its known operator."""
    deg = evaluation_degradation(4, noise_range=(0.0, 0.0), jpeg_prob=0.0)
    d = deg.degrade(faces, 11)
    for x, lr, p in zip(faces, d.lr, d.params):
        op = p.known_operator()
        assert isinstance(op, BlurDownsample) and op.factors == (4, 4)
        assert torch.allclose(op.A(x[None].double()).float()[0], lr, atol=1e-6)
    # non-integer factors, other resize kernels and the second order have no exact operator
    assert FaceDegradation(scale_range=(3.5, 3.5)).sample_params((64, 64), 0).known_operator() is None
    assert FaceDegradation(scale_range=(4, 4), resize_modes=("bicubic",)).sample_params((64, 64), 0).known_operator() is None


@pytest.mark.parametrize("factors,sigma", [((4, 2), (1.5, 0.7)), ((1, 3), (0.0, 2.0))])
def test_blur_downsample_adjoint_and_pinv(factors: tuple[int, int], sigma: tuple[float, float]) -> None:
    op = BlurDownsample(factors, sigma)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 18, generator=g, dtype=torch.float64)
    y = torch.rand(2, 3, 24 // factors[0], 18 // factors[1], generator=g, dtype=torch.float64)
    assert torch.allclose((op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum(), rtol=1e-10)
    assert torch.allclose(op.A(op.A_pinv(y)), y, atol=1e-8)


def test_blur_matrix_rows_sum_to_one_and_identity_at_zero() -> None:
    m = gaussian_blur_matrix(9, 2.5)
    assert np.allclose(m.sum(1), 1) and (m >= 0).all()
    assert np.array_equal(gaussian_blur_matrix(5, 0.0), np.eye(5))


def test_jpeg_is_lossy_but_close(faces: torch.Tensor) -> None:
    x = faces[:1]
    low, high = jpeg(x, 10), jpeg(x, 95)
    assert low.shape == x.shape
    assert (high - x).abs().mean() < (low - x).abs().mean() < 0.1
    grey = jpeg(x[:, :1], 50)
    assert grey.shape == (1, 1, 64, 64)


@pytest.mark.parametrize(
    "kwargs",
    [{"scale_range": (0.5, 2.0)}, {"jpeg_range": (0, 50)}, {"noise_range": (0.1, 0.0)}, {"resize_modes": ("nearest",)},
     {"second_order_prob": 1.5}, {"output": "both"}],
)
def test_bad_options_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FaceDegradation(**kwargs)
