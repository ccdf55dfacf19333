"""Robust intensity normalisation on real MRI volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from domains.mri.io import read_volume
from domains.mri.normalize import foreground_mask, robust_normalization

MRI = Path(__file__).resolve().parents[1] / "data" / "mri"


def test_percentiles_map_to_unit_range_and_back() -> None:
    vols = [read_volume(MRI / n)[0] for n in ("dipy_aniso_vox.nii.gz", "nibabel_someones_anatomy.nii.gz")]
    norm = robust_normalization(vols, low=1, high=99)
    fg = np.concatenate([v[foreground_mask(v)] for v in vols])
    lo, hi = np.percentile(fg, [1, 99])
    t = torch.tensor([[lo, hi]], dtype=torch.float64).reshape(1, 1, 2)
    assert torch.allclose(norm.normalize(t), torch.tensor([[[-1.0, 1.0]]], dtype=torch.float64))
    x = torch.from_numpy(vols[0])[None, None].double()
    assert torch.allclose(norm.denormalize(norm.normalize(x)), x, atol=1e-9)


def test_foreground_excludes_the_background() -> None:
    vol, _ = read_volume(MRI / "nibabel_someones_anatomy.nii.gz")
    mask = foreground_mask(vol)
    assert 0.05 < mask.mean() < 0.95
    assert vol[~mask].mean() < 0.2 * vol[mask].mean()
    with_bg = robust_normalization([vol], foreground_fraction=None)
    fg_only = robust_normalization([vol])
    assert fg_only.offset[0] > with_bg.offset[0]  # the air no longer drags the statistics down


def test_constant_volume_is_refused() -> None:
    with pytest.raises(ValueError, match="intensity range is empty"):
        robust_normalization([np.full((4, 4, 4), 3.0)], foreground_fraction=None)
    with pytest.raises(ValueError, match="no volumes"):
        robust_normalization([])
