#!/usr/bin/env bash
# Create or reuse the project environment at .venv/ (repo root). Idempotent: a second run only
# checks a stamp and returns in about a second.
#
# Torch policy (never install a second torch):
#   * If the base python already has a working torch (e.g. a CUDA build on a GPU machine), the venv
#     is created with --system-site-packages and that torch is kept.
#   * Otherwise `pip install torch==$LABELGEN_TORCH` (default 2.13.0), which on these machines is
#     the local CPU wheel.
#   * Whatever torch is present is then pinned with a constraints file (.venv/constraints.txt), so
#     no later dependency can pull another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${LABELGEN_TORCH:-2.13.0}
VENV=.venv
EXTRAS=${1:-dev}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] base python has torch $("$PY" -c 'import torch;print(torch.__version__)'): reusing it"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
# pip, quiet; the machine's pip.conf names local index folders that may be absent, and pip warns
# about each one: filter those lines but keep pip's exit status.
pip_install() {
  local log; log=$(mktemp)
  if ! "$VPY" -m pip --disable-pip-version-check -q install "$@" >"$log" 2>&1; then
    grep -v "is ignored" "$log" >&2; rm -f "$log"; echo "[setup] error: pip install $* failed" >&2; return 1
  fi
  grep -v "is ignored" "$log" || true; rm -f "$log"
}

if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==$TORCH_VERSION"
  pip_install "torch==$TORCH_VERSION"
fi
"$VPY" -c "import torch" || { echo "[setup] error: torch could not be installed" >&2; exit 1; }
echo "torch==$("$VPY" -W ignore -c 'import torch;print(torch.__version__.split("+")[0])' 2>/dev/null)" > "$VENV/constraints.txt"

# Re-install only when the package metadata changed.
STAMP="$VENV/.labelgen-$EXTRAS-$(cat pyproject.toml setup.py scripts/setup_venv.sh | sha1sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "[setup] installing labelgen[$EXTRAS] (editable) with torch pinned by $VENV/constraints.txt"
  pip_install -c "$VENV/constraints.txt" -e ".[$EXTRAS]"
  # The pretrained DCGAN face generator: only its weights file is used, so its heavy
  # run-time requirements (wandb, matplotlib, ...) are not installed.
  pip_install -c "$VENV/constraints.txt" --no-deps "gan-face-generate==1.1.1"
  "$VPY" -c "import labelgen, labelgen.student, labelgen.app, labelgen.data" || { echo "[setup] error: labelgen failed to import" >&2; exit 1; }
  rm -f "$VENV"/.labelgen-"$EXTRAS"-*
  touch "$STAMP"
fi
echo "[setup] environment ready: $VENV ($("$VPY" -W ignore -c 'import torch;print("torch", torch.__version__)' 2>/dev/null))"
