"""The ``diffsr`` command line.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI (``--config`` YAML with
``class_path``/``init_args``); ``degrade``, ``upscale``, ``evaluate``, ``adapt``, ``demo`` and
``bench`` are plain commands (``adapt`` runs a LightningCLI fit of :class:`toolkit.adapt.AdaptSR`). Errors in the input (a file, an option, a full disk) end with one line on stderr
and exit status 2; SIGINT and SIGTERM end with one line and ``128 + signal`` after every
temporary file is removed (they unwind as exceptions through the writers' clean-up).
``DIFFSR_DEBUG=1`` shows the traceback of an error instead of its line.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import pickle
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
EXIT_INPUT = 2
#: errors that are the input's or the machine's (a file, an option, a full disk), not a bug: one line each
INPUT_ERRORS = (ValueError, OSError, ImportError)
DEBUG_ENV = "DIFFSR_DEBUG"
EPILOG = (
    "fit/validate/test/predict take a LightningCLI config: diffsr fit --config configs/images/sr3_x2.yaml. "
    f"Errors print one line and exit with status 2 ({DEBUG_ENV}=1 shows the traceback instead); "
    "SIGINT/SIGTERM remove every temporary file and exit with 128 + the signal number."
)


class Interrupted(BaseException):
    """SIGTERM as an exception: it unwinds through every ``finally`` (temporary files removed) like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class UsageError(Exception):
    """A command-line option is invalid (argparse's message, with the command's name)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``diffsr COMMAND: error: ...``), without the usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}")


def lightning_main(args: Sequence[str], run: bool = True):  # type: ignore[no-untyped-def]
    """Run LightningCLI on ``args`` (``fit --config ...``); with ``run=False`` only build it.

    The model is any LightningModule named by the config's ``class_path``: ``DiffusionSR``, or
    ``toolkit.autoencoder.AutoencoderModule`` (stage 1 of latent diffusion). The channel count
    flows from the data to the model and the model's size multiple back to the data
    (:mod:`pipelines.lightning_cli`): configs give neither twice.
    """
    import toolkit.autoencoder  # noqa: F401 - the model classes configs name
    import toolkit.lightning  # noqa: F401
    from pipelines.lightning_cli import build_cli

    return build_cli(list(args), run=run)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="diffsr", description="Diffusion super-resolution: fit, upscale, degrade, evaluate, bench, demo.", epilog=EPILOG
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (see 'diffsr {name} --help')", add_help=False)

    d = sub.add_parser("degrade", help="write the low-resolution image or NIfTI volume a model is trained to invert")
    d.add_argument("input", help="image (PNG, JPEG, TIFF) or NIfTI volume (.nii, .nii.gz)")
    d.add_argument("output")
    d.add_argument("--scale", type=_factors, default=2, help="integer factor, or one per axis such as 1,1,4 (default 2)")
    d.add_argument(
        "--operator", choices=["area", "gaussian", "kspace", "slice", "mtf"], default="area",
        help="area (box), gaussian (blur + decimate), kspace (k-space truncation), slice (slice-thickness averaging), "
        "mtf (per-band sensor PSF set by --mtf, then decimation; rasters)",
    )
    d.add_argument("--volume-index", type=_count(0), default=None, help="volume of a 4D NIfTI file to use")
    d.add_argument("--mtf", type=_real(0, 1, above=True), default=0.3, help="MTF at the coarse grid's Nyquist for --operator mtf (default 0.3)")
    d.add_argument("--bands", type=_band_list, default=None, help="raster bands to keep, 1-based, e.g. 2,3,4")
    d.add_argument("--faces", action="store_true", help="apply the seeded blind face degradation (blur, resize, noise, JPEG)")
    d.add_argument("--seed", type=int, default=0, help="seed of the face degradation")
    d.add_argument("--size", type=_count(1), default=None, help="face degradation: model size of the crop")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _max_pixels_arg(d)

    u = sub.add_parser("upscale", help="super-resolve an image with a trained checkpoint")
    u.add_argument("input")
    u.add_argument("output")
    u.add_argument("--checkpoint", required=True, help="checkpoint written by 'diffsr fit'")
    u.add_argument(
        "--scale", type=_factors, default=None,
        help="expected factor (2, or 1,1,4 per axis), refused if the checkpoint's differs; with --zero-shot the operator's factor(s)",
    )
    u.add_argument("--volume-index", type=_count(0), default=None, help="volume of a 4D NIfTI file to use")
    _sampling_args(u)
    u.add_argument("--guidance", type=_real(), default=None, help="classifier-free guidance weight (1 = none)")
    u.add_argument("--eta", type=_real(0), default=None, help="DDIM eta (0 deterministic); with --zero-shot also DDRM's and DDNM+'s eta")
    _zero_shot_args(u, "the input's noise std, a fraction of the signal's span (what the normalisation maps onto [-1, 1]), told to the method")
    _guided_args(u, "co-registered high-resolution reference on the output grid (a reference-guided checkpoint: e.g. the panchromatic band)")
    u.add_argument(
        "--adapt-steps", type=_count(0), default=0,
        help="test-time adaptation: fine-tune a copy of the model on this input for K steps first (HR-free: the input degraded once more)",
    )
    u.add_argument("--uncertainty", default=None, metavar="FILE", help="write the per-pixel std over --samples (16-bit)")
    u.add_argument("--bands", type=_band_list, default=None, help="raster bands, 1-based (default: the checkpoint's)")
    u.add_argument("--whole-photo", action="store_true", help="face checkpoints: find faces in a photo, restore and paste them back")
    u.add_argument("--background-checkpoint", default=None, help="with --whole-photo: image checkpoint for the rest (default bicubic)")
    u.add_argument("--workdir", default=None, help="folder for the on-disk sampling state of large rasters")
    u.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _max_pixels_arg(u)

    e = sub.add_parser("evaluate", help="degrade, upscale and compare with bicubic; writes metrics.json and report.html")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--hr", nargs="+", required=True, metavar="FILE", help="high-resolution reference files")
    e.add_argument("--out", required=True, metavar="DIR", help="output folder")
    e.add_argument("--bands", type=_band_list, default=None, help="raster bands, 1-based (default: the checkpoint's)")
    e.add_argument("--degradation-seed", type=int, default=0, help="seed of the faces' blind degradations and of the --sigma-y noise")
    e.add_argument("--holdout", type=_count(1), default=None, help="faces: evaluate the held-back people of a portrait folder")
    e.add_argument("--overwrite", action="store_true", help="replace an existing metrics.json and report")
    _sampling_args(e)
    e.add_argument("--scale", type=_factors, default=None, help="with --zero-shot: the operator's factor (2, or 1,1,4 per axis)")
    e.add_argument("--eta", type=_real(0), default=None, help="DDIM eta (0 deterministic); with --zero-shot also DDRM's and DDNM+'s eta")
    _zero_shot_args(e, "Gaussian noise added to each degraded input (seed --degradation-seed), std a fraction of the signal's span")
    _guided_args(e, "references on the output grid, one per --hr file in the same order (a reference-guided checkpoint)", many=True)
    _max_pixels_arg(e)

    a = sub.add_parser(
        "adapt", help="fine-tune a trained checkpoint on a target domain (fresh optimiser; --hr-free: from low-resolution data only)",
        description="Fine-tune CHECKPOINT on the target's data and write OUT/last.ckpt, an ordinary checkpoint. "
        "Arguments after '--' go to the LightningCLI fit (e.g. -- --data.init_args.batch_size 4 --trainer.devices 2).",
    )
    a.add_argument("--checkpoint", required=True, help="the trained source checkpoint (only read)")
    a.add_argument(
        "--data", nargs="+", required=True, metavar="DATA",
        help="a datamodule config (YAML with a 'data:' section, e.g. a fit config of the target), or data files/folders (MRI: NIfTI scans)",
    )
    a.add_argument("--out", required=True, metavar="DIR", help="run folder; the adapted checkpoint is DIR/last.ckpt")
    a.add_argument(
        "--hr-free", action="store_true",
        help="the data are the target's low-resolution images: learn them degraded once more by the model's operator "
        "(ZSSR; a thick-slice NIfTI with a slice-wise model: SMORE, from the scan itself)",
    )
    a.add_argument("--freeze", choices=["none", "encoder", "all-but-norm"], default="none", help="parts of the network kept fixed (default none)")
    a.add_argument("--lora", type=_count(0), default=0, metavar="RANK", help="train rank-RANK adapters only (LoRA, merged into the saved weights)")
    a.add_argument("--lora-alpha", type=_real(0, above=True), default=None, help="LoRA alpha (default the rank)")
    a.add_argument("--keep-normalization", action="store_true", help="keep the source's normalisation (default: re-estimated on the target)")
    a.add_argument("--lr", type=_real(0, above=True), default=5e-4, help="AdamW learning rate (default 5e-4; warm-up, then cosine to 10%% with --max-steps)")
    a.add_argument("--warmup-steps", type=_count(0), default=20)
    a.add_argument("--max-steps", type=_count(1), default=None, help="training steps (default 500 unless --max-time)")
    a.add_argument("--max-time", default=None, metavar="DD:HH:MM:SS", help="wall-clock budget, e.g. 00:00:05:00")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--overwrite", action="store_true", help="replace an existing DIR/last.ckpt")
    a.add_argument("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    s = sub.add_parser(
        "distill", help="distil a trained Gaussian/ResShift checkpoint into a one-step student (SinSR)",
        description="Train a student that maps the start state to the end point of TEACHER's deterministic sampler and write "
        "OUT/last.ckpt, an ordinary checkpoint. Arguments after '--' go to the LightningCLI fit.",
    )
    s.add_argument("--teacher", required=True, help="the trained checkpoint (only read)")
    s.add_argument("--config", "--data", dest="data", nargs="+", required=True, metavar="DATA",
                   help="a datamodule config (YAML with a 'data:' section), or data files/folders")
    s.add_argument("--out", required=True, metavar="DIR", help="run folder; the student is DIR/last.ckpt")
    s.add_argument("--teacher-steps", type=_count(1), default=None, help="teacher DDIM steps (default: the checkpoint's)")
    s.add_argument("--student-steps", type=int, choices=[1, 2], default=1)
    s.add_argument("--lambda-denoise", type=_real(0), default=0.0, help="weight of the ordinary denoising loss (default 0)")
    s.add_argument("--lr", type=_real(0, above=True), default=1e-4)
    s.add_argument("--max-steps", type=_count(1), default=None, help="training steps (default 500 unless --max-time)")
    s.add_argument("--max-time", default=None, metavar="DD:HH:MM:SS")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace an existing DIR/last.ckpt")
    s.add_argument("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    m = sub.add_parser("demo", help="train a small model on the shipped photos, evaluate it on held-back ones")
    m.add_argument("--minutes", type=_real(0, above=True), default=10.0, help="total time budget (training gets what evaluation leaves)")
    m.add_argument("--out", default="runs/demo", help="output folder")
    m.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("bench", help="time one engine sampling step against the bare network and MONAI's inferer")
    b.add_argument("--size", type=_count(1), nargs="+", default=[128, 128], help="high-resolution spatial size (2 or 3 sizes)")
    b.add_argument("--batch", type=_count(1), default=1)
    b.add_argument("--channels", type=_count(1), default=3)
    b.add_argument("--steps", type=_count(1), default=10, help="sampling steps per timed run")
    b.add_argument("--repeats", type=_count(1), default=5)
    b.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, mps")
    return p


def _factors(text: str) -> int | tuple[int, ...]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if not parts or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: factors must be positive integers, e.g. 2 or 1,1,4")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _count(low: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= low``."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {low}")
        return n

    return parse


def _real(low: float = -math.inf, high: float = math.inf, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[low, high]`` (``low`` itself excluded when ``above``)."""
    need = [f"{'>' if above else '>='} {low:g}"] * math.isfinite(low) + [f"<= {high:g}"] * math.isfinite(high)

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and (v > low if above else v >= low) and v <= high):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number {' and '.join(need)}".rstrip())
        return v

    return parse


def _device(text: str) -> str:
    """An argparse type: a torch device that this machine and this PyTorch build have."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available in this PyTorch build")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise argparse.ArgumentTypeError(f"{text}: no such CUDA device ({count} visible)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text}: unsupported device (cpu, cuda, cuda:1, mps)")
    return text


def _max_pixels_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-pixels", type=_count(1), default=None, metavar="N",
        help="refuse inputs and outputs of more than N decoded pixels (voxels); default $DIFFSR_MAX_PIXELS or 2**28",
    )


def _band_list(text: str) -> list[int]:
    try:
        bands = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: bands are 1-based integers, e.g. 2,3,4") from None
    if not bands or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: bands are 1-based integers, e.g. 2,3,4")
    return bands


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_count(1), default=None, help="sampling steps (default: the checkpoint's)")
    from toolkit.samplers import sampler_names

    p.add_argument("--sampler", choices=sampler_names(), default=None, help="sampler (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--samples", type=_count(1), default=None, help="average this many samples (posterior mean); default: the checkpoint's")
    p.add_argument(
        "--consistency", choices=["none", "final", "every_step"], default=None,
        help="data consistency: none, a final projection onto {A x = y} (never onto a noisy input), DDNM every step; default: the checkpoint's",
    )
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", choices=["32", "bf16", "fp16"], default="32", help="network precision (autocast)")
    p.add_argument("--tile", type=_count(0), default=None, help="tile (patch) size for the network, 0 for one pass (default 128 in 2D, 64 in 3D)")
    p.add_argument("--overlap", type=_count(0), default=None, help="overlap between tiles, with --tile (default a quarter of the tile)")
    p.add_argument("--tile-batch", type=_count(1), default=4, help="tiles per network call")


def _zero_shot_args(p: argparse.ArgumentParser, sigma_help: str) -> None:
    """The zero-shot options (:mod:`toolkit.zeroshot`): the method, the operator it is told, and the methods' parameters."""
    from toolkit.operators import OPERATOR_NAMES
    from toolkit.zeroshot import ZeroShotOptions, method_names

    d = ZeroShotOptions()  # the methods' defaults

    p.add_argument(
        "--zero-shot", choices=method_names(), default=None, metavar="METHOD",
        help=f"{'|'.join(method_names())}: run unconditionally, told --operator and --scale (a prior; a conditional pixel-space checkpoint uses its null condition)",
    )
    p.add_argument("--operator", choices=OPERATOR_NAMES, default=None, help="with --zero-shot: the degradation A told to the method (evaluate degrades each reference with it)")
    p.add_argument("--mtf", type=_real(0, 1, above=True), default=None, help="MTF at the coarse grid's Nyquist for --operator mtf (default 0.3)")
    p.add_argument("--sigma-y", type=_real(0), default=0.0, help=f"{sigma_help} (default 0)")
    p.add_argument("--zeta", type=_real(0), default=None, help=f"DPS: step on the gradient of the residual norm (default {d.zeta:g})")
    p.add_argument("--gdp-scale", type=_real(0), default=None, help=f"GDP: guidance scale (default {d.scale:g})")
    p.add_argument("--jumps", type=_count(1), default=None, help=f"RePaint: resamplings per step (default {d.jumps}; 1 = ILVR)")
    p.add_argument("--eta-b", type=_real(0), default=None, help=f"DDRM: weight of the measurement on measured components (default {d.eta_b:g})")
    p.add_argument("--travel-length", type=_count(0), default=None, help=f"DDNM+: time travel, levels to jump back (default {d.travel_length}: none)")
    p.add_argument("--travel-repeat", type=_count(1), default=None, help=f"DDNM+: time travel, times each travel is repeated (default {d.travel_repeat})")


def _guided_args(p: argparse.ArgumentParser, reference_help: str, many: bool = False) -> None:
    """A high-resolution reference (reference-guided SR) and classifier guidance (:mod:`toolkit.classifier`)."""
    p.add_argument("--reference", nargs="+" if many else None, default=None, metavar="FILE", help=reference_help)
    p.add_argument("--classifier", default=None, metavar="CKPT", help="noise-aware classifier checkpoint: classifier guidance towards --class")
    p.add_argument("--class", dest="class_label", default=None, metavar="LABEL", help="with --classifier: the class to steer towards (name or index)")
    p.add_argument(
        "--classifier-scale", type=_real(0), default=None,
        help="with --classifier: guidance scale s in eps - s sigma grad log p(class | z_t) (default 1; 0 = unguided)",
    )


def _guided(args: argparse.Namespace) -> dict[str, Any]:
    """The reference and classifier-guidance options of ``args`` as the API's keyword arguments."""
    return {name: getattr(args, name) for name in ("reference", "classifier", "class_label", "classifier_scale")}


def _zero_shot(args: argparse.Namespace) -> dict[str, Any]:
    """The zero-shot options of ``args`` as the API's keyword arguments."""
    names = ("zero_shot", "operator", "mtf", "sigma_y", "zeta", "gdp_scale", "jumps", "eta_b", "travel_length", "travel_repeat", "consistency")
    return {name: getattr(args, name) for name in names}


def _tiling(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from toolkit.tiling import Tiling

    if args.tile is None:
        if args.overlap is not None:
            raise UsageError(f"diffsr {args.command}: error: argument --overlap: needs --tile")
        return "auto"  # the domain's default (128/32 for images, 64/16 for volumes)
    overlap = args.tile // 4 if args.overlap is None else args.overlap
    if args.tile and overlap >= args.tile:
        raise UsageError(f"diffsr {args.command}: error: argument --overlap: {overlap} must be smaller than --tile {args.tile}")
    return Tiling(args.tile, overlap, args.tile_batch) if args.tile > 0 else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``diffsr`` on ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    0 on success; 2 with one line on stderr for invalid options and for errors in the input or
    the machine (:data:`INPUT_ERRORS`, a full disk included); ``128 + signal`` with one line
    after SIGINT or SIGTERM.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argparse.Namespace(command=argv[0] if argv and argv[0] in LIGHTNING_COMMANDS else None)
    try:
        with _signals_as_exceptions(), _warnings_as_lines(argv[0] if argv else ""):
            if args.command is not None:
                lightning_main(argv)
                return 0
            args = _parser().parse_args(argv)
            if args.command is None:
                _parser().print_help()
                return EXIT_INPUT
            return _run(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INPUT
    except INPUT_ERRORS as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"diffsr {args.command}: error: {_one_line(exc, args)}", file=sys.stderr)
        return EXIT_INPUT
    except pickle.UnpicklingError as exc:  # fit --ckpt_path: Lightning's weights-only load refused the file
        from toolkit.utils import load_problem

        path = next((a.split("=", 1)[1] if "=" in a else b for a, b in zip(argv, [*argv[1:], ""]) if a.startswith("--ckpt_path")), "")
        print(f"diffsr {args.command}: error: {path + ': ' if path else ''}checkpoint refused ({load_problem(exc)})", file=sys.stderr)
        return EXIT_INPUT
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"diffsr {args.command or ''}".rstrip() + ": interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)


@contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """Within the block, a warning prints as one line, ``diffsr COMMAND: warning: ...`` (no source line).

    Only the formatting changes: code that records warnings (``warnings.catch_warnings``) still does.
    """
    previous = warnings.formatwarning

    def one_line(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> str:
        return f"diffsr {command}".rstrip() + f": warning: {' '.join(str(message).split())}\n"

    warnings.formatwarning = one_line  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.formatwarning = previous


@contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` (SIGINT already raises ``KeyboardInterrupt``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(exc: BaseException, args: argparse.Namespace) -> str:
    """``exc`` as one line naming its file: a full disk as ``path: no space left on device``."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = exc.filename or getattr(args, "output", None) or getattr(args, "out", None)
        return f"{str(where) + ': ' if where else ''}{os.strerror(exc.errno).lower()}"
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _run(args: argparse.Namespace) -> int:
    """Run a plain command under its ``--max-pixels`` (``None``: ``$DIFFSR_MAX_PIXELS`` or the default)."""
    from domains.files import set_max_pixels

    tiling = _tiling(args) if hasattr(args, "tile") else None
    set_max_pixels(getattr(args, "max_pixels", None))
    try:
        return _command(args, tiling)
    finally:
        set_max_pixels(None)  # an in-process caller's next call starts from the default again


def _command(args: argparse.Namespace, tiling: Any) -> int:
    from pipelines import api

    if args.command == "degrade":
        out = api.degrade(
            args.input, args.output, args.scale, args.operator, args.overwrite, args.volume_index,
            args.bands, args.mtf, args.faces, args.seed, args.size,
        )
        print(f"wrote {out}")
    elif args.command == "upscale":
        out = api.upscale(
            args.input, args.output, args.checkpoint, args.steps, args.sampler, args.guidance, args.eta,
            args.seed, args.overwrite, args.device, tiling=tiling, scale=args.scale,
            samples=args.samples, uncertainty=args.uncertainty, precision=args.precision, volume_index=args.volume_index,
            bands=args.bands, whole_photo=args.whole_photo, background=args.background_checkpoint, workdir=args.workdir,
            adapt_steps=args.adapt_steps, **_zero_shot(args), **_guided(args),
        )
        print(f"wrote {out}")
    elif args.command == "evaluate":
        report = api.evaluate(
            args.checkpoint, args.hr, args.out, args.steps, args.sampler, args.seed, args.device, overwrite=args.overwrite,
            tiling=tiling,
            samples=args.samples, precision=args.precision, bands=args.bands,
            degradation_seed=args.degradation_seed, holdout=args.holdout, scale=args.scale, eta=args.eta,
            **_zero_shot(args), **_guided(args),
        )
        print(json.dumps(report.get("methods", report), indent=2))
        print(f"report: {args.out}/report.html")
    elif args.command == "adapt":
        from pipelines.adapt import run_adapt

        extra = list(args.extra)
        if extra and extra[0] == "--":
            extra = extra[1:]
        out = run_adapt(
            args.checkpoint, args.data, args.out, args.hr_free, args.freeze, args.lora, args.lora_alpha, args.keep_normalization,
            args.lr, args.warmup_steps, args.max_steps, args.max_time, args.seed, args.overwrite, extra,
        )
        print(f"wrote {out}")
    elif args.command == "distill":
        from pipelines.distill import run_distill

        extra = list(args.extra)
        if extra and extra[0] == "--":
            extra = extra[1:]
        out = run_distill(
            args.teacher, args.data, args.out, args.max_steps, args.max_time, args.lr, args.teacher_steps,
            args.student_steps, args.lambda_denoise, args.seed, args.overwrite, extra,
        )
        print(f"wrote {out}")
    elif args.command == "demo":
        from pipelines.demo import run_demo

        run_demo(args.out, args.minutes, args.seed)
    elif args.command == "bench":
        from pipelines.bench import run_bench

        print(json.dumps(run_bench(args.size, args.batch, args.channels, args.steps, args.repeats, args.device), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
