"""``diffsr distill``: a one-step student from a trained checkpoint (:class:`toolkit.distill.DistillSR`, SinSR).

The run is a LightningCLI ``fit`` of ``DistillSR`` on a datamodule config's ``data:`` section (every
other section is replaced), as ``diffsr adapt`` runs. The student is written to ``OUT/last.ckpt``,
an ordinary checkpoint that ``diffsr upscale`` and ``evaluate`` take; the teacher is only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from domains.base import InputError
from pipelines.adapt import checked_output, data_section, fit_from_checkpoint


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
    src, target = checked_output(teacher, out, overwrite, "the student checkpoint would replace its teacher")
    if int(student_steps) not in (1, 2):
        raise InputError(f"--student-steps {student_steps}: expected 1 or 2")
    section = data_section(src, data, False)
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
    return fit_from_checkpoint("distill", model, section, target, max_steps, max_time, seed, extra, {"limit_val_batches": 0})
