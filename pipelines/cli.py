"""The ``diffsr`` command line.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI (``--config`` YAML with
``class_path``/``init_args``); ``degrade``, ``upscale``, ``evaluate``, ``demo`` and ``bench`` are
plain commands. Errors in the input end with one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
EXIT_INPUT = 2


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
    p = argparse.ArgumentParser(
        prog="diffsr",
        description="Diffusion super-resolution: fit, upscale, degrade, evaluate, bench, demo.",
        epilog="fit/validate/test/predict take a LightningCLI config: diffsr fit --config configs/images/sr3_x2.yaml",
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
    d.add_argument("--volume-index", type=int, default=None, help="volume of a 4D NIfTI file to use")
    d.add_argument("--mtf", type=float, default=0.3, help="MTF at the coarse grid's Nyquist for --operator mtf (default 0.3)")
    d.add_argument("--bands", type=_band_list, default=None, help="raster bands to keep, 1-based, e.g. 2,3,4")
    d.add_argument("--faces", action="store_true", help="apply the seeded blind face degradation (blur, resize, noise, JPEG)")
    d.add_argument("--seed", type=int, default=0, help="seed of the face degradation")
    d.add_argument("--size", type=int, default=None, help="face degradation: model size of the crop")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output")

    u = sub.add_parser("upscale", help="super-resolve an image with a trained checkpoint")
    u.add_argument("input")
    u.add_argument("output")
    u.add_argument("--checkpoint", required=True, help="checkpoint written by 'diffsr fit'")
    u.add_argument("--scale", type=_factors, default=None, help="expected factor (2, or 1,1,4 per axis); refused if the checkpoint's differs")
    u.add_argument("--volume-index", type=int, default=None, help="volume of a 4D NIfTI file to use")
    _sampling_args(u)
    u.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight (1 = none)")
    u.add_argument("--eta", type=float, default=None, help="DDIM eta (0 deterministic)")
    u.add_argument("--uncertainty", default=None, metavar="FILE", help="write the per-pixel std over --samples (16-bit)")
    u.add_argument("--bands", type=_band_list, default=None, help="raster bands, 1-based (default: the checkpoint's)")
    u.add_argument("--whole-photo", action="store_true", help="face checkpoints: find faces in a photo, restore and paste them back")
    u.add_argument("--background-checkpoint", default=None, help="with --whole-photo: image checkpoint for the rest (default bicubic)")
    u.add_argument("--workdir", default=None, help="folder for the on-disk sampling state of large rasters")
    u.add_argument("--overwrite", action="store_true", help="replace an existing output")

    e = sub.add_parser("evaluate", help="degrade, upscale and compare with bicubic; writes metrics.json and report.html")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--hr", nargs="+", required=True, metavar="FILE", help="high-resolution reference files")
    e.add_argument("--out", required=True, metavar="DIR", help="output folder")
    e.add_argument("--bands", type=_band_list, default=None, help="raster bands, 1-based (default: the checkpoint's)")
    e.add_argument("--degradation-seed", type=int, default=0, help="faces: seed of the blind degradations")
    e.add_argument("--holdout", type=int, default=None, help="faces: evaluate the held-back people of a portrait folder")
    _sampling_args(e)

    m = sub.add_parser("demo", help="train a small model on the shipped photos, evaluate it on held-back ones")
    m.add_argument("--minutes", type=float, default=10.0, help="total time budget (training gets what evaluation leaves)")
    m.add_argument("--out", default="runs/demo", help="output folder")
    m.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("bench", help="time one engine sampling step against the bare network and MONAI's inferer")
    b.add_argument("--size", type=int, nargs="+", default=[128, 128], help="high-resolution spatial size")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--channels", type=int, default=3)
    b.add_argument("--steps", type=int, default=10, help="sampling steps per timed run")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--device", default="cpu")
    return p


def _factors(text: str) -> int | tuple[int, ...]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if not parts or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: factors must be positive integers, e.g. 2 or 1,1,4")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _band_list(text: str) -> list[int]:
    try:
        bands = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: bands are 1-based integers, e.g. 2,3,4") from None
    if not bands or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: bands are 1-based integers, e.g. 2,3,4")
    return bands


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's)")
    from toolkit.samplers import sampler_names

    p.add_argument("--sampler", choices=sampler_names(), default=None, help="sampler (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--samples", type=int, default=None, help="average this many samples (posterior mean); default: the checkpoint's")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", choices=["32", "bf16", "fp16"], default="32", help="network precision (autocast)")
    p.add_argument("--tile", type=int, default=None, help="tile (patch) size for the network, 0 for one pass (default 128 in 2D, 64 in 3D)")
    p.add_argument("--overlap", type=int, default=None, help="overlap between tiles, with --tile (default a quarter of the tile)")
    p.add_argument("--tile-batch", type=int, default=4, help="tiles per network call")


def _tiling(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from toolkit.tiling import Tiling

    if args.tile is None:
        return "auto"  # the domain's default (128/32 for images, 64/16 for volumes)
    return Tiling(args.tile, args.tile // 4 if args.overlap is None else args.overlap, args.tile_batch) if args.tile > 0 else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        lightning_main(argv)
        return 0
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_INPUT
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError, ImportError) as exc:
        print(f"diffsr {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT


def _run(args: argparse.Namespace) -> int:
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
            args.seed, args.overwrite, args.device, tiling=_tiling(args), scale=args.scale,
            samples=args.samples, uncertainty=args.uncertainty, precision=args.precision, volume_index=args.volume_index,
            bands=args.bands, whole_photo=args.whole_photo, background=args.background_checkpoint, workdir=args.workdir,
        )
        print(f"wrote {out}")
    elif args.command == "evaluate":
        report = api.evaluate(
            args.checkpoint, args.hr, args.out, args.steps, args.sampler, args.seed, args.device, tiling=_tiling(args),
            samples=args.samples, precision=args.precision, bands=args.bands,
            degradation_seed=args.degradation_seed, holdout=args.holdout,
        )
        print(json.dumps(report.get("methods", report), indent=2))
        print(f"report: {args.out}/report.html")
    elif args.command == "demo":
        from pipelines.demo import run_demo

        run_demo(args.out, args.minutes, args.seed)
    elif args.command == "bench":
        from pipelines.bench import run_bench

        print(json.dumps(run_bench(args.size, args.batch, args.channels, args.steps, args.repeats, args.device), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
