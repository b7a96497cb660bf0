#!/usr/bin/env bash
# The GPU check on a fresh GPU machine: install what it lacks from a folder of wheels (no index, no
# network), then run bench/gpu_check.py (every argument is passed on). How to make the wheel folder:
# docs/benchmarks.md, "GPU check".
#
#   bench/gpu_check.sh --ccp CCP96 [--minutes 2]          # output: $OUT (or ./gpu_check_out)
#
# Environment: WHEELS (default REPO/.gpu-wheels), PYTHON (default python3), OUT.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WHEELS=${WHEELS:-$REPO/.gpu-wheels}
PY=$(command -v "${PYTHON:-python3}") || { echo "error: ${PYTHON:-python3}: no such Python" >&2; exit 2; }
[[ "$PY" = /* ]] || PY="$PWD/$PY"  # absolute (not resolved: a venv's python is a link that must stay one)
export OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT/logs"
# installed by name: a package the machine already has is left as it is (pip: "already satisfied")
PACKAGES="diffusers segmentation-models-pytorch albumentations albucore pydantic pydantic-core annotated-types
typing-inspection stringzilla simsimd webdataset braceexpand importlib-metadata zipp lazy-importer labelgen"

start=$(date +%s.%N)
if ! "$PY" -c "import labelgen.student.train, diffusers, segmentation_models_pytorch, albumentations, webdataset" \
    >/dev/null 2>&1; then
  if [ ! -d "$WHEELS" ]; then
    echo "error: $WHEELS: no wheel folder (docs/benchmarks.md, GPU check, says how to make it)" >&2
    exit 2
  fi
  # shellcheck disable=SC2086
  if ! "$PY" -m pip install --no-deps --no-index --find-links "$WHEELS" $PACKAGES >"$OUT/logs/setup.log" 2>&1; then
    echo "error: installing the wheels failed (see $OUT/logs/setup.log)" >&2
    tail -5 "$OUT/logs/setup.log" >&2
    exit 2
  fi
  "$PY" -c "import labelgen.student.train, diffusers, segmentation_models_pytorch, albumentations, webdataset" \
    >>"$OUT/logs/setup.log" 2>&1 || { echo "error: imports still fail after installing (see $OUT/logs/setup.log)" >&2;
                                      tail -5 "$OUT/logs/setup.log" >&2; exit 2; }
fi
GPU_CHECK_SETUP_S=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
export GPU_CHECK_SETUP_S
echo "[gpu_check] setup: ok in ${GPU_CHECK_SETUP_S} s"
cd "$OUT"  # not the repository root: `python -m labelgen...` must import the installed package
exec "$PY" "$REPO/bench/gpu_check.py" --out "$OUT" "$@"
