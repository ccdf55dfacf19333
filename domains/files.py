"""File safety shared by every domain: never overwrite by surprise, never leave a partial file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing ``path`` unless ``overwrite``; make sure its folder exists."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output exists (use --overwrite to replace it)")
    if not path.parent.exists():
        raise FileNotFoundError(f"{path.parent}: output folder does not exist")


def write_atomic(path: Path, write: Callable[[Path], None], overwrite: bool = False, suffix: str | None = None) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` and rename it into place.

    ``suffix`` is the temporary file's ending (default ``path.suffix``), for writers that pick
    the format from the name (``.nii.gz``).
    """
    atomic_target(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
