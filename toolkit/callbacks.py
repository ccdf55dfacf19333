"""Lightning callbacks of the engine, and the atomic checkpoint writer they install."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | Path) -> Path:
    """Where a checkpoint bound for ``path`` is written before it is renamed into place."""
    p = Path(path)
    return p.with_name(f".{p.name}{PARTIAL_SUFFIX}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint beside its target, flushes it to disk and renames it into place.

    A save that fails or is killed midway leaves the previous file at the path intact (and, after
    a kill, a hidden ``.NAME.partial`` that :class:`FinalCheckpoint` removes on the next run).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path(target)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class FinalCheckpoint(pl.Callback):
    """Keep the run's checkpoint at ``path``: every ``every_n_train_steps`` steps and when training ends.

    The periodic saves let a killed fit resume (``diffsr fit ... --ckpt_path PATH``) and reach
    the weights of an uninterrupted run; the final one is also written when training stops on
    ``max_time``. A relative ``path`` is taken inside the trainer's ``default_root_dir``.

    At setup every checkpoint of the run (this callback's and any ``ModelCheckpoint``'s) is made
    to go through :class:`AtomicCheckpointIO`, so an interrupted save never replaces a good file
    with half a file, and partial files an earlier killed run left in those folders are removed.

    Args:
        path: the checkpoint file.
        every_n_train_steps: steps between saves during training (0: only at the end).
    """

    def __init__(self, path: str = "last.ckpt", every_n_train_steps: int = 500) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.path, self.every_n_train_steps = path, every_n_train_steps
        self.written: Path | None = None
        self._saved_step = 0

    def _target(self, trainer: pl.Trainer) -> Path:
        target = Path(self.path)
        return target if target.is_absolute() else Path(trainer.default_root_dir) / target

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if not trainer.is_global_zero:
            return
        folders = {self._target(trainer).parent}
        folders.update(Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath)
        for folder in folders:
            for stale in folder.glob(f".*{PARTIAL_SUFFIX}") if folder.is_dir() else ():
                stale.unlink(missing_ok=True)
                warnings.warn(f"{stale}: removed a partial checkpoint left by an interrupted run", stacklevel=1)

    def _save(self, trainer: pl.Trainer) -> Path:
        target = self._target(trainer)
        trainer.save_checkpoint(str(target))
        return target

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        n, step = self.every_n_train_steps, trainer.global_step
        if n and step and step % n == 0 and step != self._saved_step:  # once per step (gradient accumulation)
            self._saved_step = step
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written = self._save(trainer)
        if trainer.is_global_zero:
            print(f"diffsr: checkpoint written to {self.written}")
