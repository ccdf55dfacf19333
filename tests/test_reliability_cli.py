"""Reliability of the command line (issue 12): one line and status 2 for every bad option, checkpoint
or full disk; SIGTERM/SIGINT end with one line and leave nothing behind; outputs get the umask's
mode; a non-finite output is an error, never a file."""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

from domains.files import max_pixels
from domains.images.io import write_image
from pipelines.cli import main
from toolkit.checkpoint import CheckpointError, load_model, read_checkpoint
from toolkit.denoiser import denoiser_from_config
from toolkit.engine import SamplerOptions

if TYPE_CHECKING:
    from conftest import CliFails

ROOT = Path(__file__).resolve().parents[1]


def _spec(spatial_dims: int = 2, channels: int = 3, steps: int = 2) -> dict[str, Any]:
    """The model description of a tiny untrained x2 model (what ``DiffusionSR`` writes)."""
    factors = [2] * spatial_dims
    return {
        "format": 1,
        "spatial_dims": spatial_dims,
        "channels": channels,
        "scale": factors,
        "operator": {"type": "area", "factors": factors},
        "space": {"type": "residual", "residual_scale": 0.25},
        "process": {"type": "gaussian", "schedule": "cosine", "parameterization": "x0", "timesteps": 1000},
        "denoiser": {
            "spatial_dims": spatial_dims, "channels": channels, "state_channels": channels, "cond_channels": channels,
            "num_channels": [8, 8], "attention_levels": [False, False], "num_res_blocks": 1,
            "num_head_channels": 8, "norm_num_groups": 8, "mid_attention": False,
        },
        "normalization": {"offset": [0.5], "scale": [0.5]},
        "sampler": {"sampler": "ddim", "steps": steps, "samples": 1},
        "data_range": 1.0,
        **({"domain": {"kind": "mri"}} if spatial_dims == 3 else {}),
    }


def _save(path: Path, spec: Any, weights: dict[str, torch.Tensor] | None = None) -> Path:
    if weights is None and isinstance(spec, dict) and isinstance(spec.get("denoiser"), dict):
        torch.manual_seed(0)
        weights = {f"ema.{k}": v for k, v in denoiser_from_config(spec["denoiser"]).state_dict().items()}
    torch.save({"diffsr": spec, "state_dict": weights or {}}, path)
    return path


@pytest.fixture
def png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "in.png"
    write_image(path, rng.random((3, 8, 12)).astype(np.float32), 8)
    return path


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-3"], "--steps"),
        (["--samples", "0"], "--samples"),
        (["--tile", "-8"], "--tile"),
        (["--tile-batch", "0"], "--tile-batch"),
        (["--overlap", "-1", "--tile", "16"], "--overlap"),
        (["--overlap", "16", "--tile", "16"], "--overlap"),
        (["--eta", "-1"], "--eta"),
        (["--guidance", "nan"], "--guidance"),
        (["--guidance", "inf"], "--guidance"),
        (["--device", "tpu:0"], "--device"),
        (["--max-pixels", "0"], "--max-pixels"),
    ],
)
def test_invalid_numeric_options_are_refused(args: list[str], needle: str, cli_fails: CliFails, tmp_path: Path) -> None:
    cli_fails(["upscale", "in.png", str(tmp_path / "out.png"), "--checkpoint", "c.ckpt", *args], needle, "diffsr upscale: error:")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args,needle",
    [
        (["demo", "--minutes", "-1"], "--minutes"),
        (["demo", "--minutes", "0"], "--minutes"),
        (["bench", "--size", "0"], "--size"),
        (["bench", "--steps", "0"], "--steps"),
        (["bench", "--size", "6", "6"], "--size 6 6"),
        (["degrade", "a.png", "b.png", "--size", "0"], "--size"),
        (["evaluate", "--checkpoint", "c", "--hr", "a.png", "--out", "o", "--samples", "0"], "--samples"),
    ],
)
def test_other_commands_refuse_invalid_values(args: list[str], needle: str, cli_fails: CliFails) -> None:
    cli_fails(args, needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_build_is_one_line(cli_fails: CliFails) -> None:
    cli_fails(["upscale", "a.png", "b.png", "--checkpoint", "c.ckpt", "--device", "cuda"], "--device", "CUDA is not available")


def test_help_documents_debug_and_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (["--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit):
            main(cmd)
    out = capsys.readouterr().out
    assert "DIFFSR_DEBUG" in out and "--overwrite" in out and "--max-pixels" in out


def test_max_pixels_is_applied_then_reset(cli_fails: CliFails, png: Path, tmp_path: Path) -> None:
    cli_fails(["degrade", str(png), str(tmp_path / "lr.png"), "--max-pixels", "50"], str(png), "--max-pixels")
    assert max_pixels() > 50
    assert main(["degrade", str(png), str(tmp_path / "lr.png")]) == 0


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda s: [s], "'diffsr' entry is a list"),
        (lambda s: {**s, "domain": "mri"}, "'domain' is a str"),
        (lambda s: {**s, "sampler": {**s["sampler"], "steps": "lots"}}, "sampler steps 'lots'"),
        (lambda s: {**s, "sampler": {**s["sampler"], "steps": -5}}, "sampler steps -5"),
        (lambda s: {**s, "sampler": {**s["sampler"], "samples": 0}}, "sampler samples 0"),
        (lambda s: {**s, "scale": [2.5, 2.5]}, "scale 2.5"),
        (lambda s: {**s, "operator": {"type": "area", "factors": [2.5, 2]}}, "operator factors 2.5"),
        (lambda s: {**s, "operator": "area"}, "'operator' is a str"),
        (lambda s: {**s, "normalization": {"offset": [float("nan")], "scale": [0.5]}}, "normalization offset nan"),
        (lambda s: {**s, "sampler": {**s["sampler"], "guidance_scale": float("inf")}}, "sampler guidance_scale inf"),
    ],
)
def test_tampered_descriptions_are_refused(change: Any, needle: str, tmp_path: Path, cli_fails: CliFails, png: Path) -> None:
    ckpt = _save(tmp_path / "bad.ckpt", change(_spec()), {})
    with pytest.raises(CheckpointError, match="invalid model description") as e:
        read_checkpoint(ckpt)
    assert needle in str(e.value) and str(ckpt) in str(e.value)
    cli_fails(["upscale", str(png), str(tmp_path / "out.png"), "--checkpoint", str(ckpt)], "invalid model description", needle)
    assert not (tmp_path / "out.png").exists()


def test_nan_weights_and_non_finite_outputs_are_errors(tmp_path: Path, png: Path, cli_fails: CliFails) -> None:
    good = _save(tmp_path / "good.ckpt", _spec())
    ckpt = torch.load(good, weights_only=True)
    key = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] * float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    cli_fails(["upscale", str(png), str(tmp_path / "out.png"), "--checkpoint", str(tmp_path / "nan.ckpt")], "weights contain NaN", "diverged")
    assert not (tmp_path / "out.png").exists()
    # in memory (every domain's path): NaN weights or a non-finite guidance never give an output
    model = load_model(good)
    y = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="must be finite"):
        model.upscale(y, torch.Generator().manual_seed(0), SamplerOptions(steps=1, guidance_scale=math.nan))
    for w in model.denoiser.parameters():
        w.data.fill_(math.nan)
    with pytest.raises(ValueError, match=f"{good}: the output has NaN or Inf"):
        model.upscale(y, torch.Generator().manual_seed(0), SamplerOptions(steps=1))


def test_refused_pickle_gives_no_dangerous_advice(tmp_path: Path, cli_fails: CliFails, png: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.ckpt"
    torch.save({"diffsr": {"format": 1}, "state_dict": {}, "x": Evil()}, evil)
    cli_fails(["upscale", str(png), str(tmp_path / "out.png"), "--checkpoint", str(evil)], str(evil), "GLOBAL posix.system")
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(evil)
    assert "weights_only" not in str(e.value) and "succeed" not in str(e.value)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.png").exists()


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, png: Path, cli_fails: CliFails, monkeypatch: pytest.MonkeyPatch) -> None:
    import png as pypng

    def full(self: Any, fh: Any, rows: Any) -> None:
        fh.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pypng.Writer, "write", full)
    out = tmp_path / "out" / "lr.png"
    out.parent.mkdir()
    cli_fails(["degrade", str(png), str(out)], f"{out}: no space left on device")
    assert not any(out.parent.iterdir())


def test_full_disk_during_a_report_leaves_no_partial_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate writes metrics, crops and a page: a full disk part-way through leaves none of them."""
    import png as pypng

    ref = tmp_path / "ref.png"
    write_image(ref, np.random.default_rng(0).random((3, 24, 24)).astype(np.float32), 8)
    ckpt = _save(tmp_path / "model.ckpt", _spec(steps=1))
    real, calls = pypng.Writer.write, []

    def full_after_two(self: Any, fh: Any, rows: Any) -> None:
        calls.append(1)
        if len(calls) > 2:  # the third crop of the report
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, fh, rows)

    monkeypatch.setattr(pypng.Writer, "write", full_after_two)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--hr", str(ref), "--out", str(out), "--steps", "1", "--samples", "1"]) == 2
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]  # after the progress bar
    assert last == f"diffsr evaluate: error: {out}: no space left on device"
    assert len(calls) == 3 and not out.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_get_the_umask_mode(umask: int, mode: int, tmp_path: Path, png: Path) -> None:
    out = tmp_path / "lr.png"
    old = os.umask(umask)
    try:
        assert main(["degrade", str(png), str(out)]) == 0
        assert out.stat().st_mode & 0o777 == mode
        out.chmod(0o600)
        assert main(["degrade", str(png), str(out), "--overwrite"]) == 0
        assert out.stat().st_mode & 0o777 == mode
    finally:
        os.umask(old)


def test_data_error_in_fit_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no-such-folder"
    args = [
        "fit", "--config", str(ROOT / "configs" / "images" / "sr3_x2.yaml"), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "1",
        "--data.init_args.train", str(missing), "--data.init_args.val", str(missing),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()  # Lightning's INFO lines, then the error: no traceback
    assert not any("Traceback" in line for line in err)
    assert err[-1].startswith("diffsr fit: error: ") and str(missing) in err[-1]
    monkeypatch.setenv("DIFFSR_DEBUG", "1")  # the traceback instead of the line
    with pytest.raises((FileNotFoundError, ValueError)):
        main(["degrade", str(missing / "a.png"), str(tmp_path / "b.png")])


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_resuming_from_a_malicious_checkpoint_executes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fit --ckpt_path`` loads weights only, as every diffsr load does: the payload never runs."""
    monkeypatch.chdir(tmp_path)
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Payload(marker), "epoch": 0, "global_step": 0}, evil)
    args = [
        "fit", "--config", str(ROOT / "configs" / "images" / "sr3_x2.yaml"), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "1",
        "--data.init_args.train", str(ROOT / "data" / "natural" / "train"), "--ckpt_path", str(evil),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"diffsr fit: error: {evil}: checkpoint refused (") and "weights_only=False" not in err[-1]
    assert not marker.exists()


def _interrupt(args: list[str], folder: Path, sig: int) -> tuple[int, list[str]]:
    """Run ``diffsr`` in a subprocess, send ``sig`` once sampling has started; status and stderr lines (no progress bar)."""
    err = folder.parent / f"stderr-{sig}.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with err.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, stderr=fh, stdout=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while "/500" not in err.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the progress bar (N/500 steps) shows sampling has started
        proc.send_signal(sig)
        code = proc.wait(60)
    segments = [seg.strip() for seg in err.read_text().replace("\r", "\n").split("\n")]
    return code, [seg for seg in segments if seg and "/500" not in seg]  # without the progress bar


@pytest.mark.parametrize("kind,sig", [("png", signal.SIGINT), ("nifti", signal.SIGTERM)])
def test_signals_end_with_one_line_and_leave_nothing(kind: str, sig: int, tmp_path: Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    if kind == "png":
        src = folder / "in.png"
        write_image(src, np.random.default_rng(0).random((3, 16, 16)).astype(np.float32), 8)
        ckpt = _save(folder / "model.ckpt", _spec(steps=500))
    else:
        import nibabel as nib

        src = folder / "in.nii.gz"
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), np.eye(4)), src)
        ckpt = _save(folder / "model.ckpt", _spec(3, 1, steps=500))
    before = sorted(folder.iterdir())
    out = folder / f"out{''.join(src.suffixes)}"
    code, lines = _interrupt(["upscale", str(src), str(out), "--checkpoint", str(ckpt)], folder, sig)
    assert code == 128 + sig, lines
    assert lines == ["diffsr upscale: interrupted"]
    assert sorted(folder.iterdir()) == before


def test_sigterm_during_a_write_removes_the_temporary(
    tmp_path: Path, png: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import png as pypng

    def killed(self: Any, fh: Any, rows: Any) -> None:
        fh.write(b"\x89PNG partial")
        os.kill(os.getpid(), signal.SIGTERM)  # raised here as an exception by the CLI's handler
        time.sleep(5)

    monkeypatch.setattr(pypng.Writer, "write", killed)
    out = tmp_path / "out" / "lr.png"
    out.parent.mkdir()
    handler = signal.getsignal(signal.SIGTERM)
    assert main(["degrade", str(png), str(out)]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "diffsr degrade: interrupted"
    assert not any(out.parent.iterdir())
    assert signal.getsignal(signal.SIGTERM) == handler  # main's handler is gone again


STREAM_SCRIPT = """
import sys, numpy as np
sys.path[:0] = [{tests!r}, {root!r}]
from test_streaming import _model
from pipelines.cli import _signals_as_exceptions
from toolkit.engine import SamplerOptions
from toolkit.operators import AreaDownsample
from toolkit.streaming import stream_upscale
from toolkit.tiling import Tiling

model = _model(AreaDownsample(2), 2, 1)
y = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
with _signals_as_exceptions():
    stream_upscale(model, lambda r: y[(slice(None), *r)], (32, 32), lambda r, v: None, SamplerOptions(steps=100000),
                   tiling=Tiling(16, 4), state="disk", workdir={work!r})
"""


def test_sigterm_during_a_streamed_upscale_removes_its_state(tmp_path: Path) -> None:
    """The on-disk sampling state of a streamed run (a folder the size of the scene) goes with a SIGTERM."""
    work = tmp_path / "state"
    work.mkdir()
    script = STREAM_SCRIPT.format(tests=str(ROOT / "tests"), root=str(ROOT), work=str(work))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(work.glob("diffsr-stream-*/z")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(work.glob("diffsr-stream-*/z")), "the run never wrote its state"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert list(work.iterdir()) == []


def test_a_killed_runs_temporary_is_removed_on_the_next_run(tmp_path: Path) -> None:
    from domains.files import StaleFileWarning, _owner, write_atomic

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = _owner().rsplit("-", 1)[0]
    stale = tmp_path / f".out.{host}-{gone.pid}.abcd.png"
    live = tmp_path / f".out.{_owner()}.efgh.png"  # this process: a write in progress
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    with pytest.warns(StaleFileWarning, match="left by an interrupted run"):
        write_atomic(tmp_path / "out.png", lambda p: p.write_bytes(b"done"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "out.png"])
