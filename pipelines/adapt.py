"""``diffsr adapt``: fine-tune a trained checkpoint on a target domain (:class:`toolkit.adapt.AdaptSR`).

The run is a LightningCLI ``fit`` of ``AdaptSR`` on the target's datamodule: the data come from a
config file (its ``data:`` section; every other section is replaced) or, for a domain that builds
one from files (MRI: thick-slice NIfTI scans, learnt from themselves with ``--hr-free``), from
data files. The adapted checkpoint is written to ``OUT/last.ckpt``; the source is only read.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from domains.base import InputError, Request, select

CONFIG_SUFFIXES = (".yaml", ".yml")


class AdaptRequest(Request):
    """The checkpoint and data files of an adaptation, for :func:`domains.base.select`."""

    def __init__(self, checkpoint: str | Path, files: Sequence[str | Path]) -> None:
        super().__init__()
        self.checkpoint, self.files = Path(checkpoint), [Path(f) for f in files]

    @property
    def inputs(self) -> list[Path]:
        return self.files

    @property
    def checkpoint_data(self) -> dict[str, Any]:
        from toolkit.checkpoint import read_checkpoint

        ckpt = read_checkpoint(self.checkpoint)
        return {k: v for k, v in ckpt.items() if isinstance(v, dict) and k != "state_dict"}


def data_section(checkpoint: str | Path, data: Sequence[str | Path], hr_free: bool) -> dict[str, Any]:
    """The ``data`` section (``class_path``, ``init_args``) of the adaptation run.

    One YAML file: its ``data:`` section. Data files or folders: the checkpoint's domain builds it
    (:meth:`domains.base.Domain.adaptation_data`).
    """
    paths = [Path(d) for d in data]
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: not found")
    if len(paths) == 1 and paths[0].suffix.lower() in CONFIG_SUFFIXES:
        cfg = yaml.safe_load(paths[0].read_text())
        section = cfg.get("data") if isinstance(cfg, dict) else None
        if not isinstance(section, dict) or "class_path" not in section:
            raise InputError(f"{paths[0]}: no 'data:' section with a class_path (a datamodule config, e.g. a 'diffsr fit' config)")
        return section
    if any(p.suffix.lower() in CONFIG_SUFFIXES for p in paths):
        raise InputError("--data takes one config file, or data files and folders, not both")
    request = AdaptRequest(checkpoint, paths)
    return select(request).adaptation_data(request, hr_free)


def run_adapt(
    checkpoint: str | Path,
    data: Sequence[str | Path],
    out: str | Path,
    hr_free: bool = False,
    freeze: str = "none",
    lora: int = 0,
    lora_alpha: float | None = None,
    keep_normalization: bool = False,
    lr: float = 5e-4,
    warmup_steps: int = 20,
    max_steps: int | None = None,
    max_time: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    extra: Sequence[str] = (),
) -> Path:
    """Fine-tune ``checkpoint`` on ``data`` and write the adapted checkpoint ``out/last.ckpt`` (returned).

    Args:
        checkpoint: the source checkpoint (read only).
        data: a datamodule config (YAML with a ``data:`` section), or data files/folders.
        out: the run's folder.
        hr_free: the data are the target's low-resolution images (degraded once more by the
            model's operator, ZSSR; MRI files: SMORE from the scan itself).
        freeze, lora, lora_alpha, keep_normalization, lr, warmup_steps: :class:`toolkit.adapt.AdaptSR`.
        max_steps, max_time: the budget (``max_time`` as ``DD:HH:MM:SS``); default 500 steps.
        seed: ``seed_everything``.
        overwrite: replace an existing ``out/last.ckpt``.
        extra: more LightningCLI arguments (``--data.init_args.batch_size 4``, ``--trainer.devices 2``).
    """
    src, target = checked_output(checkpoint, out, overwrite, "the adapted checkpoint would replace its source")
    section = data_section(src, data, hr_free)
    model = {
        "class_path": "toolkit.adapt.AdaptSR",
        "init_args": {
            "source": str(src),
            "freeze": freeze,
            "lora_rank": int(lora),
            "lora_alpha": lora_alpha,
            "normalization": "source" if keep_normalization else "target",
            "hr_free": bool(hr_free),
            "lr": float(lr),
            "warmup_steps": int(warmup_steps),
            "seed": int(seed),
        },
    }
    return fit_from_checkpoint("adapt", model, section, target, max_steps, max_time, seed, extra)


def checked_output(source: str | Path, out: str | Path, overwrite: bool, replaces: str) -> tuple[Path, Path]:
    """The validated source checkpoint and the run's ``out/last.ckpt``, before any work.

    Raises:
        CheckpointError: the source is not a readable diffsr checkpoint (one line naming it).
        InputError: the output would replace the source (``replaces`` says so).
        FileExistsError: the output exists and ``overwrite`` is False.
    """
    from toolkit.checkpoint import read_checkpoint

    src = Path(source)
    read_checkpoint(src)
    target = Path(out) / "last.ckpt"
    if target.resolve() == src.resolve():
        raise InputError(f"{target}: {replaces}")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: output exists (use --overwrite to replace it)")
    return src, target


def fit_from_checkpoint(
    name: str,
    model: dict[str, Any],
    data: dict[str, Any],
    target: Path,
    max_steps: int | None,
    max_time: str | None,
    seed: int,
    extra: Sequence[str] = (),
    trainer_args: dict[str, Any] | None = None,
) -> Path:
    """Run a LightningCLI fit of ``model`` (``class_path``/``init_args``) on ``data`` into ``target`` (``out/last.ckpt``).

    The budget is ``max_steps`` and/or ``max_time`` (default 500 steps); the config is kept as
    ``out/NAME_config.yaml``; ``trainer_args`` add to the trainer's. Returns ``target``.
    """
    from pipelines.cli import lightning_main

    out = target.parent
    trainer: dict[str, Any] = {
        "accelerator": "auto",
        "devices": 1,
        "max_epochs": -1,
        "max_steps": int(max_steps) if max_steps else (-1 if max_time else 500),
        "log_every_n_steps": 10,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        "default_root_dir": str(out),
        "callbacks": [{"class_path": "toolkit.callbacks.FinalCheckpoint", "init_args": {"path": "last.ckpt", "every_n_train_steps": 0}}],
        **(trainer_args or {}),
    }
    if max_time:
        trainer["max_time"] = max_time
    config = {"seed_everything": int(seed), "trainer": trainer, "model": model, "data": data}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=out, prefix=f".{name}-", delete=False) as f:
        yaml.safe_dump(config, f, sort_keys=False)
        path = Path(f.name)
    try:
        importlib.import_module(model["class_path"].rpartition(".")[0])  # the model class the config names
        lightning_main(["fit", "--config", str(path), *extra])
    finally:
        path.unlink(missing_ok=True)
    (out / f"{name}_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if not target.is_file():
        raise InputError(f"{target}: the {name} run wrote no checkpoint (a budget of zero steps?)")
    return target
