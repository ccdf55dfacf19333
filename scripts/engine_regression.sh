#!/usr/bin/env bash
# Does a change to the engine move any evaluation figure? Trains the README's images, satellite and
# MRI configs for a short budget with the code of BASE (a commit), then evaluates those same
# checkpoints with BASE's code and with this tree's, and compares every figure of every metrics.json.
#
#   usage: scripts/engine_regression.sh BASE WORKDIR [MINUTES] [STEPS]
#   e.g.   scripts/engine_regression.sh 9b42b1d /tmp/engine_check 4 10
#
# Writes WORKDIR/base (a git worktree of BASE), WORKDIR/runs/<name>/last.ckpt, WORKDIR/before and
# WORKDIR/after (metrics.json per domain) and prints the comparison (exit 1 if any figure differs).
# Every command runs single-threaded with seed 0; training is bounded by wall clock, so the
# checkpoints differ between runs of this script, but before and after always share them.
set -euo pipefail
BASE=${1:?base commit}; WORK=$(mkdir -p "${2:?work dir}" && cd "$2" && pwd); MINUTES=${3:-4}; STEPS=${4:-10}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -d "$WORK/base" ] || git -C "$HERE" worktree add --detach "$WORK/base" "$BASE"

cli() {  # TREE, then the diffsr arguments: run with that tree's code
  local tree=$1; shift
  (cd "$tree" && PYTHONPATH="$tree" "$PY" -m pipelines.cli "$@")
}

# 1. the checkpoints, trained by the base code
for pair in sr3_x2:configs/images/sr3_x2.yaml satellite_sr_x2:configs/satellite/sr_x2.yaml \
            sr2d_slice_x4:configs/mri/sr2d_slice_x4.yaml; do
  name=${pair%%:*}; cfg=${pair#*:}
  [ -f "$WORK/runs/$name/last.ckpt" ] || cli "$WORK/base" fit --config "$cfg" --seed_everything 0 \
      --trainer.max_time "00:00:$(printf %02d "$MINUTES"):00" --trainer.default_root_dir "$WORK/runs/$name" \
      --trainer.enable_progress_bar false
done
# the satellite config's held-back block, written as scripts/eval_satellite.py does
BLOCK=$WORK/heldout/landsat8_ms_30m_7band_scene_block_r3c1.tif
[ -f "$BLOCK" ] || (cd "$WORK/base" && PYTHONPATH="$WORK/base" "$PY" -c "
import yaml; from pathlib import Path; from domains.satellite.data import RasterDataModule
init = dict(yaml.safe_load(Path('configs/satellite/sr_x2.yaml').read_text())['data']['init_args'])
RasterDataModule(**init).write_validation_rasters(Path('$WORK/heldout'), overwrite=True)")

# 2. the same checkpoints evaluated by both trees
for side in before after; do
  tree=$([ $side = before ] && echo "$WORK/base" || echo "$HERE")
  common=(--steps "$STEPS" --seed 0)
  cli "$tree" evaluate --checkpoint "$WORK/runs/sr3_x2/last.ckpt" "${common[@]}" --out "$WORK/$side/sr3_x2" \
      --hr "$HERE/data/natural/holdout/skimage_chelsea.png" "$HERE/data/natural/holdout/skimage_rocket.jpg"
  cli "$tree" evaluate --checkpoint "$WORK/runs/satellite_sr_x2/last.ckpt" "${common[@]}" \
      --out "$WORK/$side/satellite_sr_x2" --hr "$BLOCK"
  cli "$tree" evaluate --checkpoint "$WORK/runs/sr2d_slice_x4/last.ckpt" "${common[@]}" \
      --out "$WORK/$side/sr2d_slice_x4" --hr "$HERE/data/mri/nibabel_someones_anatomy.nii.gz"
done
"$PY" "$HERE/scripts/compare_metrics.py" "$WORK/before" "$WORK/after"
