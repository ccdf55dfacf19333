"""Lightning callbacks of the engine."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl


class FinalCheckpoint(pl.Callback):
    """Save the model to ``path`` when training ends (also when it ends on ``max_time``).

    A relative ``path`` is taken inside the trainer's ``default_root_dir``. The file is written
    beside its target and renamed into place, so an interrupted save never leaves half a file.
    """

    def __init__(self, path: str = "last.ckpt") -> None:
        self.path = path
        self.written: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        target = Path(self.path)
        if not target.is_absolute():
            target = Path(trainer.default_root_dir) / target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        trainer.save_checkpoint(str(tmp))
        if trainer.is_global_zero:
            tmp.replace(target)
            print(f"diffsr: checkpoint written to {target}")
        self.written = target
