#!/bin/sh
# Installs facesyncd into ./.venv on Debian/Ubuntu (Python 3.11+), the same way pip does from
# pyproject.toml (an extra picks the one onnxruntime), with the pinned versions of constraints.txt.
#   ./install.sh            runtime, CPU onnxruntime          (pip install -e ".[cpu]")
#   ./install.sh --cuda     onnxruntime-gpu instead (NVIDIA)  (pip install -e ".[cuda]")
#   ./install.sh --test     runtime plus the test tools (Debian's chromium and chromium-driver among them),
#                           and insightface 2.1 as the tests' reference
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
FLAVOUR=cpu
TEST=""
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    --cuda) FLAVOUR=cuda ;;
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
if [ -n "$TEST" ]; then   # the review page is tested in a real headless browser
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing="$missing chromium"
  command -v chromedriver >/dev/null 2>&1 || command -v chromium.chromedriver >/dev/null 2>&1 \
    || missing="$missing chromium-driver"
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # --no-install-recommends: chromium alone pulled 261 packages with its recommends.
    echo "install.sh: installing system packages:$missing (apt-get, without recommended extras)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
  else
    echo "install.sh: missing system packages:$missing" >&2
    echo "  sudo apt-get install -y$missing" >&2
    exit 1
  fi
fi

say() { echo "install.sh: $*"; }
[ -x .venv/bin/python ] || { say "making the virtual environment .venv"; "$PYTHON" -m venv .venv; }
PIP=".venv/bin/python -m pip --disable-pip-version-check"
# Exactly one onnxruntime: the three flavours share the module name and break each other.
for other in onnxruntime onnxruntime-gpu onnxruntime-directml; do
  case "$FLAVOUR:$other" in cpu:onnxruntime|cuda:onnxruntime-gpu) continue ;; esac
  if $PIP show -q "$other" >/dev/null 2>&1; then $PIP uninstall -q -y "$other"; fi
done
EXTRAS=$FLAVOUR
[ -n "$TEST" ] && EXTRAS="$FLAVOUR,test"
say "installing facesyncd and its Python packages (.[$EXTRAS], pinned by constraints.txt; hnswlib is"
say "  compiled: a few minutes on a small machine; pip names each package as it goes)"
log=$(mktemp)
status=$(mktemp)
# pip's own lines, filtered to one per package as it goes; all of them if it fails (sh has no pipefail).
{ $PIP install --progress-bar off -c constraints.txt -e ".[$EXTRAS]" >"$log" 2>&1; echo $? >"$status"; } &
tail -n +1 -f "$log" --pid=$! 2>/dev/null | grep --line-buffered -E '^(Collecting|Building wheel|Successfully)' \
  | sed 's/^/  /' || true
wait
if [ "$(cat "$status")" != 0 ]; then cat "$log" >&2; rm -f "$log" "$status"; exit 1; fi
rm -f "$log" "$status"
if [ -n "$TEST" ]; then
  # The tests compare facesyncd's detector and recognizer with insightface's. Its metadata asks for
  # opencv-python (libGL) and onnxruntime: --no-deps, its imports are met by the test extra.
  say "installing insightface 2.1 (the tests' reference, without its dependencies)"
  $PIP install -q --no-deps insightface==2.1
fi
echo "facesyncd installed in $(pwd)/.venv"
