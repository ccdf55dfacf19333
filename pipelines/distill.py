"""``diffsr distill``: a one-step student from a trained checkpoint (:class:`toolkit.distill.DistillSR`, SinSR).

The run is a LightningCLI ``fit`` of ``DistillSR`` on a datamodule config's ``data:`` section (every
other section is replaced), as ``diffsr adapt`` runs. The student is written to ``OUT/last.ckpt``,
an ordinary checkpoint that ``diffsr upscale`` and ``evaluate`` take; the teacher is only read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from domains.base import InputError
from pipelines.adapt import data_section


def run_distill(
    teacher: str | Path,
    data: Sequence[str | Path],
    out: str | Path,
    max_steps: int | None = None,
    max_time: str | None = None,
    lr: float = 1e-4,
    teacher_steps: int | None = None,
    student_steps: int = 1,
    lambda_denoise: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    extra: Sequence[str] = (),
) -> Path:
    """Distil ``teacher`` into a one-step student on ``data``; write and return ``out/last.ckpt``.

    Args:
        teacher: the trained Gaussian or ResShift checkpoint (read only).
        data: a datamodule config (YAML with a ``data:`` section), or data files/folders its domain
            builds a datamodule from (as ``diffsr adapt``).
        out: the run's folder.
        max_steps, max_time: the budget (``max_time`` as ``DD:HH:MM:SS``); default 500 steps.
        lr, teacher_steps, student_steps, lambda_denoise: :class:`toolkit.distill.DistillSR`.
        seed: ``seed_everything`` and the start-noise seed.
        overwrite: replace an existing ``out/last.ckpt``.
        extra: more LightningCLI arguments (``--data.init_args.batch_size 4``).
    """
    from pipelines.cli import lightning_main
    from toolkit.checkpoint import read_checkpoint

    src = Path(teacher)
    read_checkpoint(src)  # validated before any work: one line naming the file
    out = Path(out)
    target = out / "last.ckpt"
    if target.resolve() == src.resolve():
        raise InputError(f"{target}: the student checkpoint would replace its teacher")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: output exists (use --overwrite to replace it)")
    if int(student_steps) not in (1, 2):
        raise InputError(f"--student-steps {student_steps}: expected 1 or 2")
    section = data_section(src, data, False)
    trainer: dict[str, Any] = {
        "accelerator": "auto",
        "devices": 1,
        "max_epochs": -1,
        "max_steps": int(max_steps) if max_steps else (-1 if max_time else 500),
        "log_every_n_steps": 10,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "enable_checkpointing": False,
        "default_root_dir": str(out),
        "callbacks": [{"class_path": "toolkit.callbacks.FinalCheckpoint", "init_args": {"path": "last.ckpt", "every_n_train_steps": 0}}],
    }
    if max_time:
        trainer["max_time"] = max_time
    model = {
        "class_path": "toolkit.distill.DistillSR",
        "init_args": {
            "teacher": str(src),
            "teacher_steps": None if teacher_steps is None else int(teacher_steps),
            "student_steps": int(student_steps),
            "lambda_denoise": float(lambda_denoise),
            "lr": float(lr),
            "seed": int(seed),
        },
    }
    config = {"seed_everything": int(seed), "trainer": trainer, "model": model, "data": section}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=out, prefix=".distill-", delete=False) as f:
        yaml.safe_dump(config, f, sort_keys=False)
        path = Path(f.name)
    try:
        import toolkit.distill  # noqa: F401 - the model class the config names

        lightning_main(["fit", "--config", str(path), *extra])
    finally:
        path.unlink(missing_ok=True)
    (out / "distill_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if not target.is_file():
        raise InputError(f"{target}: the distillation wrote no checkpoint (a budget of zero steps?)")
    return target
