"""Domains and their operators are plug-ins: the import layering holds, and checkpoints load from a fresh interpreter."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domains.base import DegradeRequest, Domain, EvaluateRequest, InputError, UpscaleRequest, registered, select
from domains.faces.degradations import BlurDownsample
from domains.satellite.operators import SensorMTFDownsample
from toolkit.normalization import Normalization
from toolkit.operators import Operator, operator_from_spec

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved), anywhere in the file."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from domains import mri` names domains.mri
    return names


def _offenders(package: str, allowed: object) -> dict[str, list[str]]:
    """Modules of ``package`` and the imports ``allowed(name)`` rejects."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = sorted(n for n in _imports(path) if not allowed(n))  # type: ignore[operator]
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def _under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_dependencies_point_one_way() -> None:
    """pipelines -> domains -> toolkit: toolkit imports neither, domains never import pipelines."""
    assert _offenders("toolkit", lambda n: not _under(n, "domains", "pipelines")) == {}
    assert _offenders("domains", lambda n: not _under(n, "pipelines")) == {}


def test_pipelines_name_no_domain() -> None:
    """pipelines/ sees the domains only through the plug-in contract and the shared file helpers."""
    shared = ("domains", "domains.base", "domains.files")
    assert _offenders("pipelines", lambda n: not _under(n, "domains") or n in shared or _under(n, *shared[1:])) == {}


def test_the_four_domains_are_registered_in_order() -> None:
    domains = registered()
    assert [d.name for d in domains] == ["faces", "mri", "satellite", "images"]
    assert all(isinstance(d, Domain) for d in domains)


def _degrade(src: str, **kw: object) -> str:
    return select(DegradeRequest(src=Path(src), dst=Path("out"), **kw)).name  # type: ignore[arg-type]


def test_precedence_for_inputs_and_options() -> None:
    """An option only one domain takes comes first, then the input's type; images read anything else."""
    assert _degrade("a.png") == "images"
    assert _degrade("a.png", faces=True) == "faces"
    assert _degrade("v.nii.gz") == "mri" and _degrade("V.NII") == "mri"
    assert _degrade(str(DATA / "satellite" / "landsat8_ms_30m_7band_128.tif")) == "satellite"  # georeferenced
    assert _degrade("plain.tif") == "images"  # not (readable and) georeferenced
    assert _degrade("a.png", operator="mtf") == "satellite" and _degrade("a.png", bands=[1]) == "satellite"


def _upscale(src: str, data: dict[str, object], **kw: object) -> str:
    request = UpscaleRequest(src=Path(src), dst=Path("out"), checkpoint="m.ckpt", **kw)  # type: ignore[arg-type]
    request.__dict__["checkpoint_data"] = data  # as read from the checkpoint (cached property)
    return select(request).name


def test_precedence_checkpoint_first_then_input() -> None:
    plain = {"diffsr": {"operator": {"type": "area"}}}
    assert _upscale("a.png", plain) == "images" and _upscale("v.nii", plain) == "mri"
    for kind in ("mri", "satellite", "faces", "images"):
        assert _upscale("a.png", {"diffsr": {"domain": {"kind": kind}}}) == kind
    # checkpoints written before the one mark: the sensor operator, the face datamodule's state
    assert _upscale("a.png", {"diffsr": {"operator": {"type": "sensor_mtf"}}}) == "satellite"
    assert _upscale("a.png", {**plain, "FaceDataModule": {"face_size": 32}}) == "faces"
    assert _upscale("a.png", plain, whole_photo=True) == "faces"  # which refuses a checkpoint that is not a face one
    with pytest.raises(InputError, match="m.ckpt: checkpoint trained for the domain 'lidar', which is not installed"):
        _upscale("a.png", {"diffsr": {"domain": {"kind": "lidar"}}})
    request = EvaluateRequest(checkpoint="m.ckpt", hr_files=["a.png", "v.nii.gz"])
    request.__dict__["checkpoint_data"] = plain
    assert select(request).name == "mri"  # which refuses the mix with one line


def test_whole_photo_needs_a_face_checkpoint(tmp_path: Path) -> None:
    from test_satellite_pipeline import make_checkpoint

    from toolkit.operators import AreaDownsample

    ckpt = make_checkpoint(tmp_path / "m.ckpt", 3, AreaDownsample(2), Normalization())
    from pipelines.api import upscale

    with pytest.raises(InputError, match="m.ckpt: --whole-photo needs a face restoration checkpoint"):
        upscale(DATA / "faces" / "obama_official_256.png", tmp_path / "o.png", ckpt, whole_photo=True)


@pytest.mark.parametrize("sigma", [[0.0, 0.0], [0.6, 0.0], [1.3, 2.2]])
def test_blur_downsample_halo_makes_windows_exact(sigma: list[float]) -> None:
    """A of a window widened by the declared halo equals the whole-array A inside it (non-square, 2 channels)."""
    op = BlurDownsample((2, 3), sigma)
    x = torch.randn(1, 2, 40, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole = op.A(x)
    h = op.halo
    (fr, fc), pr, pc = op.factors, -(-h // 2) * 2, -(-h // 3) * 3  # halo rounded up to whole blocks
    r0, r1, c0, c1 = 8, 14, 6, 12  # a low-resolution window away from the borders
    part = op.A(x[:, :, r0 * fr - pr : r1 * fr + pr, c0 * fc - pc : c1 * fc + pc])
    inner = part[:, :, pr // fr : pr // fr + r1 - r0, pc // fc : pc // fc + c1 - c0]
    torch.testing.assert_close(inner, whole[:, :, r0:r1, c0:c1], rtol=0, atol=1e-12)
    assert h == max([math.ceil(4 * s) for s in sigma if s > 0] or [0])  # the blur's radius, 0 without blur


@pytest.mark.parametrize(
    ("operator", "kind"), [(SensorMTFDownsample(2, mtf=[0.3, 0.25, 0.3]), "sensor_mtf"), (BlurDownsample(2, [1.0, 0.5]), "blur_area")]
)
def test_domain_operators_load_from_a_fresh_interpreter(operator: Operator, kind: str, tmp_path: Path) -> None:
    """load_model finds the operators of domains/ through entry points, with only toolkit.checkpoint imported."""
    from test_satellite_pipeline import make_checkpoint

    assert operator.spec()["type"] == kind
    ckpt = make_checkpoint(tmp_path / f"{kind}.ckpt", 3, operator, Normalization())
    code = (
        "import sys\n"
        "import toolkit.checkpoint as c\n"
        "assert not [m for m in sys.modules if m == 'domains' or m.startswith('domains.')], 'domains imported'\n"
        f"m = c.load_model({str(ckpt)!r})\n"
        "print(m.operator.spec()['type'], type(m.operator).__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [kind, type(operator).__module__]
    rebuilt = operator_from_spec(operator.spec())
    assert type(rebuilt) is type(operator) and rebuilt.spec() == operator.spec()
