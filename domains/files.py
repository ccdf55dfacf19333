"""File safety shared by every domain: never overwrite by surprise, never leave a partial file."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing ``path`` unless ``overwrite``; make sure its folder exists."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output exists (use --overwrite to replace it)")
    if not path.parent.exists():
        raise FileNotFoundError(f"{path.parent}: output folder does not exist")


def _umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux), else as at import."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return _UMASK_AT_IMPORT


_UMASK_AT_IMPORT = os.umask(0o022)
os.umask(_UMASK_AT_IMPORT)


def write_atomic(path: Path, write: Callable[[Path], None], overwrite: bool = False, suffix: str | None = None) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` and rename it into place.

    The output gets the mode the umask gives a new file (``0644`` under ``022``), and the
    temporary is removed on any failure (an exception, SIGINT, SIGTERM turned into an exception).

    ``suffix`` is the temporary file's ending (default ``path.suffix``), for writers that pick
    the format from the name (``.nii.gz``).
    """
    atomic_target(path, overwrite)
    remove_stale_temporaries(path, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temporary_prefix(path)}{_owner()}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> the mode any tool's new file gets
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _temporary_prefix(path: Path) -> str:
    return f".{path.stem}."


def _owner() -> str:
    """``host-pid`` of this process, as it appears in its temporaries' names."""
    return f"{socket.gethostname().replace('.', '_').replace('-', '_')}-{os.getpid()}"


def remove_stale_temporaries(path: Path, suffix: str | None = None) -> list[Path]:
    """Remove the temporaries of ``path`` that a killed run (SIGKILL, power loss) left beside it.

    A temporary names its writer (``.STEM.HOST-PID.XXXX.EXT``); one of this host whose process is
    gone is stale. Each removal is reported as a warning; live writers and other hosts are left alone.
    """
    from toolkit.utils import process_alive

    host, removed = _owner().rsplit("-", 1)[0], []
    for tmp in path.parent.glob(f"{glob.escape(_temporary_prefix(path))}*{glob.escape(suffix or path.suffix)}"):
        owner = tmp.name[len(_temporary_prefix(path)) :].split(".", 1)[0]
        who, _, pid = owner.rpartition("-")
        if who == host and pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
            warnings.warn(f"{tmp}: removed a temporary file left by an interrupted run", StaleFileWarning, stacklevel=2)
    return removed


@contextlib.contextmanager
def removed_on_error(folder: Path) -> Iterator[None]:
    """What appears in ``folder`` during the block (files, sub-folders, the folder itself) is removed if it fails.

    A command that writes several files (an evaluation's metrics, report and crops) leaves none of
    them after an error or an interrupt; files that were there before are left alone.
    """
    folder = Path(folder)
    existed = folder.exists()
    before = set(folder.rglob("*")) if existed else set()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.is_dir():
            for p in sorted(set(folder.rglob("*")) - before, key=lambda q: len(q.parts), reverse=True):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        raise


class NonFiniteWarning(RuntimeWarning):
    """An input holds NaN or Inf pixels or voxels; they are treated as missing (the message says how many)."""


class StaleFileWarning(RuntimeWarning):
    """A file an interrupted run left behind was found (and removed)."""


#: the default largest number of pixels (voxels) one decoded image or volume, or one output, may have
MAX_PIXELS = 2**28
#: the environment variable that sets the limit (``--max-pixels`` and :func:`set_max_pixels` take precedence)
MAX_PIXELS_ENV = "DIFFSR_MAX_PIXELS"
_max_pixels: int | None = None


def _positive(value: object, what: str) -> int:
    try:
        n = int(str(value))
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{what}: the pixel limit must be a positive integer, got {value!r}")
    return n


def set_max_pixels(n: int | None) -> None:
    """Set the limit on decoded pixels per image or volume (``None``: back to the environment or the default)."""
    global _max_pixels
    _max_pixels = None if n is None else _positive(n, "--max-pixels")


def max_pixels() -> int:
    """The limit in force: :func:`set_max_pixels`, else ``$DIFFSR_MAX_PIXELS``, else :data:`MAX_PIXELS`."""
    if _max_pixels is not None:
        return _max_pixels
    env = os.environ.get(MAX_PIXELS_ENV)
    return MAX_PIXELS if env is None else _positive(env, MAX_PIXELS_ENV)


def check_decoded_size(path: str | Path, count: int, what: str = "image") -> None:
    """Refuse ``count`` decoded pixels (voxels) above :func:`max_pixels`, before they are decoded.

    Raises:
        ValueError: ``"{path}: {what} has N pixels, more than the limit M (raise it with --max-pixels)"``.
    """
    limit = max_pixels()
    if count > limit:
        raise ValueError(f"{path}: {what} has {count} pixels, more than the limit {limit} (raise it with --max-pixels)")


@contextlib.contextmanager
def silenced(*loggers: str) -> Iterator[None]:
    """Mute the named libraries' loggers (nibabel, tifffile) for the duration: a broken file gets
    our one-line error, not their log lines before it."""
    saved = [(logging.getLogger(n), logging.getLogger(n).disabled) for n in loggers]
    for log, _ in saved:
        log.disabled = True
    try:
        yield
    finally:
        for log, was in saved:
            log.disabled = was
