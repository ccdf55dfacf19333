"""Small tensor helpers shared by the engine."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

T = TypeVar("T")


def build_from_spec(
    known: Mapping[str, type[T]], spec: Mapping[str, Any], what: str, group: str | None = None
) -> T:
    """Instantiate ``known[spec["type"]](**rest)``: only allow-listed classes, so a checkpoint never names code.

    A ``type`` not in ``known`` is looked up among the installed packages' entry points of ``group``
    (``diffsr.operators``, ``diffsr.spaces``, ``diffsr.processes``): a plug-in (a domain's operator)
    declares its classes there, so loading finds them from a fresh interpreter without importing the
    plug-in first. Only installed, declared names can load; a checkpoint cannot name a module.
    """
    rest = dict(spec)
    kind = rest.pop("type", None)
    cls = known.get(kind) if isinstance(kind, str) else None
    if cls is None and group is not None and isinstance(kind, str):
        cls = plugin(group, kind)
    if cls is None:
        names = sorted({*known, *plugin_names(group)}) if group else sorted(known)
        raise ValueError(f"unknown {what} type {kind!r}; known: {names}")
    return cls(**rest)


def plugin_names(group: str | None) -> list[str]:
    """Names declared in the entry-point ``group`` by the installed packages."""
    if group is None:
        return []
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group=group))


def plugin(group: str, name: str) -> Any:
    """The object that entry point ``name`` of ``group`` declares, or ``None`` when none does."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=group, name=name):
        return ep.load()
    return None


def load_weights_only(path: str | Path, error: type[Exception], what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain data only, never code.

    Raises:
        error: the file is missing or cannot be read that way (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle (weights only) means an unusable file
        raise error(f"{path}: not a readable checkpoint ({load_problem(exc)})") from None


#: the lines of torch's refusal that advise or explain instead of naming the problem (the advice to
#: re-run with ``weights_only=False`` executes a malicious file's code: never repeat it)
_TORCH_ADVICE = ("weights only load failed", "please file an issue", "check the documentation", "please use")


def load_problem(exc: BaseException) -> str:
    """The first sentence of ``exc`` that names what is wrong with the file, without torch's advice."""
    for line in str(exc).splitlines():
        sentence = re.split(r"(?<=\.)\s", line.strip())[0]
        if sentence and not sentence.lower().startswith(_TORCH_ADVICE) and "weights_only" not in sentence:
            return sentence
    return f"{type(exc).__name__}: refused by the weights-only loader"


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample ``(B,)`` tensor broadcasts (k-diffusion style)."""
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_ndim is {target_ndim}")
    return x[(...,) + (None,) * missing]


def spatial_shape(x: torch.Tensor) -> tuple[int, ...]:
    """Spatial shape of a ``(B, C, *spatial)`` tensor."""
    return tuple(x.shape[2:])


def as_factors(factors: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Expand a scalar factor to one per spatial axis, checking the count."""
    if isinstance(factors, int):
        return (factors,) * spatial_dims
    f = tuple(int(v) for v in factors)
    if len(f) != spatial_dims:
        raise ValueError(f"{len(f)} factors given for {spatial_dims} spatial dims")
    return f


def upsample(y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Smooth interpolation to ``size``: bicubic in 2D, trilinear in 3D, linear in 1D.

    Args:
        y: ``(B, C, *spatial)`` low-resolution tensor.
        size: target spatial shape.

    Returns:
        ``(B, C, *size)``.
    """
    nd = y.ndim - 2
    size = [int(n) for n in size]
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[nd]
    return F.interpolate(y, size=size, mode=mode, align_corners=False)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def has_float64(device: torch.device | str) -> bool:
    """Whether ``device`` computes in float64 (Apple MPS does not)."""
    return torch.device(device).type != "mps"


def device_table(table: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A float64 CPU table copied to ``device``: float64 where the device has it, float32 elsewhere."""
    device = torch.device(device)
    return table.to(device=device, dtype=torch.float64 if has_float64(device) else torch.float32)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (0 when ``None``)."""
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g


def randn(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal draw from ``generator`` (drawn on the generator's device, moved to ``device``)."""
    z = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return z.to(device=device, dtype=dtype)
