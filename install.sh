#!/bin/sh
# Installs facesyncd into ./.venv on Debian/Ubuntu (Python 3.11+).
#   ./install.sh            runtime, CPU onnxruntime
#   ./install.sh --test     runtime plus the test tools
#   ./install.sh --cuda     onnxruntime-gpu instead of onnxruntime (NVIDIA)
# insightface is installed with --no-deps: its own metadata pulls opencv-python (needs libGL) and
# onnxruntime (collides with onnxruntime-gpu / -directml); requirements.txt brings what it needs.
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
RUNTIME=requirements-cpu.txt
EXTRA=""
for arg in "$@"; do
  case "$arg" in
    --test) EXTRA="-r requirements-test.txt" ;;
    --cuda) RUNTIME=requirements-cuda.txt ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

missing=""
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
  echo "install.sh: facesyncd needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing="$missing python3-venv"
"$PYTHON" -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null \
  || missing="$missing python3-dev"
command -v g++ >/dev/null 2>&1 || missing="$missing g++"   # hnswlib compiles at install
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  else
    echo "install.sh: missing system packages:$missing" >&2
    echo "  sudo apt-get install -y$missing" >&2
    exit 1
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -r "$RUNTIME" $EXTRA
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps insightface==2.1
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
echo "facesyncd installed in $(pwd)/.venv"
