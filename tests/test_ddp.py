"""DDP on the CPU: two processes (gloo) train two steps through the CLI and write one checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_cli import _tiny_fit

from toolkit.checkpoint import load_model


def test_ddp_two_processes_two_steps(tmp_path: Path) -> None:
    args = _tiny_fit(tmp_path, ["--trainer.strategy", "ddp", "--trainer.devices", "2"])
    args[args.index("--trainer.max_steps") + 1] = "2"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "distributed_backend=gloo" in log and "All distributed processes registered" in log
    model = load_model(tmp_path / "last.ckpt")
    assert model.channels == 3
